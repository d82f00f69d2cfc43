-- weft-control schema, SQLite flavour. Keep in step with ../postgres/0001_initial.sql.
-- Conventions (sqlx Any driver): times are INTEGER unix milliseconds, booleans are
-- INTEGER 0/1, keys are their text forms (mkey:/nodekey:/discokey:<hex>), JSON is TEXT.

CREATE TABLE users (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    login_name   TEXT    NOT NULL UNIQUE,
    display_name TEXT    NOT NULL DEFAULT '',
    role         TEXT    NOT NULL CHECK (role IN ('member', 'admin')),
    created_ms   INTEGER NOT NULL
);

CREATE TABLE preauth_keys (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    prefix               TEXT    NOT NULL UNIQUE,
    secret_sha256        TEXT    NOT NULL,
    user_id              INTEGER REFERENCES users (id) ON DELETE CASCADE,
    reusable             INTEGER NOT NULL CHECK (reusable IN (0, 1)),
    ephemeral            INTEGER NOT NULL CHECK (ephemeral IN (0, 1)),
    tags                 TEXT    NOT NULL DEFAULT '[]',
    -- NULL = server default, 0 = never expires, n > 0 = lifetime in ms
    node_key_lifetime_ms INTEGER,
    created_ms           INTEGER NOT NULL,
    expires_ms           INTEGER NOT NULL,
    used_count           INTEGER NOT NULL DEFAULT 0,
    revoked_ms           INTEGER
);
CREATE INDEX preauth_keys_user ON preauth_keys (user_id);

CREATE TABLE nodes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    stable_id      TEXT    NOT NULL UNIQUE,
    machine_key    TEXT    NOT NULL UNIQUE,
    node_key       TEXT    NOT NULL UNIQUE,
    disco_key      TEXT,
    hostname       TEXT    NOT NULL,
    given_name     TEXT    NOT NULL UNIQUE,
    -- NULL for tagged nodes (owned by their tags)
    user_id        INTEGER REFERENCES users (id) ON DELETE RESTRICT,
    registered_by  INTEGER REFERENCES users (id) ON DELETE SET NULL,
    tags           TEXT    NOT NULL DEFAULT '[]',
    ipv4           TEXT    NOT NULL UNIQUE,
    ipv6           TEXT    NOT NULL UNIQUE,
    endpoints      TEXT    NOT NULL DEFAULT '[]',
    host_info      TEXT    NOT NULL DEFAULT '{}',
    created_ms     INTEGER NOT NULL,
    last_seen_ms   INTEGER,
    online         INTEGER NOT NULL DEFAULT 0 CHECK (online IN (0, 1)),
    -- NULL = the node key never expires
    expiry_ms      INTEGER,
    -- device approval: 0 until an administrator authorizes the node
    authorized     INTEGER NOT NULL DEFAULT 1 CHECK (authorized IN (0, 1)),
    ephemeral      INTEGER NOT NULL DEFAULT 0 CHECK (ephemeral IN (0, 1)),
    preauth_key_id INTEGER REFERENCES preauth_keys (id) ON DELETE SET NULL
);
CREATE INDEX nodes_user ON nodes (user_id);
CREATE INDEX nodes_registered_by ON nodes (registered_by);
CREATE INDEX nodes_preauth_key ON nodes (preauth_key_id);
-- the ephemeral garbage collector's query
CREATE INDEX nodes_ephemeral_offline ON nodes (ephemeral, online, last_seen_ms);

CREATE TABLE api_keys (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    prefix        TEXT    NOT NULL UNIQUE,
    secret_sha256 TEXT    NOT NULL,
    description   TEXT    NOT NULL DEFAULT '',
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER,
    revoked_ms    INTEGER,
    last_used_ms  INTEGER
);

CREATE TABLE auth_requests (
    auth_id      TEXT    PRIMARY KEY,
    machine_key  TEXT    NOT NULL,
    node_key     TEXT    NOT NULL,
    disco_key    TEXT,
    hostname     TEXT    NOT NULL,
    host_info    TEXT    NOT NULL DEFAULT '{}',
    endpoints    TEXT    NOT NULL DEFAULT '[]',
    created_ms   INTEGER NOT NULL,
    expires_ms   INTEGER NOT NULL,
    state        TEXT    NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'approved', 'rejected')),
    completed_ms INTEGER,
    user_id      INTEGER REFERENCES users (id) ON DELETE SET NULL,
    node_id      INTEGER REFERENCES nodes (id) ON DELETE SET NULL
);
CREATE INDEX auth_requests_machine_key ON auth_requests (machine_key);
CREATE INDEX auth_requests_expires ON auth_requests (expires_ms);

CREATE TABLE policies (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    text       TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    author     TEXT    NOT NULL
);
