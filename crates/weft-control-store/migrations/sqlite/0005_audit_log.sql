-- The audit log of admin actions: one row per state change made through the
-- admin API (REST, the admin socket, the web console). Rows are only ever
-- appended. `outcome` is `ok` or `error`; `detail` says what the error was.
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ms INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    target     TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    status     INTEGER NOT NULL,
    detail     TEXT    NOT NULL
);
CREATE INDEX audit_log_created ON audit_log (created_ms);
