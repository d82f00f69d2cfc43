-- MagicDNS settings: one row (id = 1) holding the tailnet's DnsConfig as
-- JSON (weft_types::netmap::DnsConfig). No row means the defaults
-- (MagicDNS on, nothing else).
CREATE TABLE dns_settings (
    id         BIGINT  PRIMARY KEY CHECK (id = 1),
    config     TEXT    NOT NULL,
    updated_ms BIGINT  NOT NULL,
    author     TEXT    NOT NULL
);
