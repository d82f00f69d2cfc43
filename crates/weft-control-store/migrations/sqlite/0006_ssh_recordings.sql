-- SSH session recordings (docs/ARCHITECTURE.md "SSH session recording"): one
-- row per asciicast file a node recorded and uploaded; the file itself lives in
-- control's state directory (recordings/<id>.cast). node_id is the recording
-- (destination) node; the row outlives it (SET NULL) and keeps its name. The
-- source fields are what the node's netmap said, for the audit trail.
-- Keep in step with ../postgres/0006_ssh_recordings.sql.
CREATE TABLE ssh_recordings (
    id          TEXT    PRIMARY KEY CHECK (length(id) = 32),
    node_id     INTEGER REFERENCES nodes (id) ON DELETE SET NULL,
    node_name   TEXT    NOT NULL,
    src_user    TEXT    NOT NULL,
    src_node    TEXT    NOT NULL,
    src_addr    TEXT    NOT NULL,
    ssh_user    TEXT    NOT NULL,
    local_user  TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    command     TEXT,
    input       INTEGER NOT NULL CHECK (input IN (0, 1)),
    started_ms  INTEGER NOT NULL,
    ended_ms    INTEGER,
    size_bytes  INTEGER NOT NULL CHECK (size_bytes >= 0),
    failure     TEXT,
    received_ms INTEGER NOT NULL
);
CREATE INDEX ssh_recordings_started ON ssh_recordings (started_ms);
CREATE INDEX ssh_recordings_node ON ssh_recordings (node_id);
