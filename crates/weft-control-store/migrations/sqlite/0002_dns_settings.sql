-- MagicDNS settings: one row (id = 1) holding the tailnet's DnsConfig as
-- JSON (weft_types::netmap::DnsConfig). No row means the defaults
-- (MagicDNS on, nothing else).
CREATE TABLE dns_settings (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    config     TEXT    NOT NULL,
    updated_ms INTEGER NOT NULL,
    author     TEXT    NOT NULL
);
