-- Registration picks a unique DNS label with a prefix query on nodes.given_name
-- (`given_name LIKE 'base%'`, see label::candidate_prefix). SQLite's LIKE is
-- case-insensitive, so it can use an index only if that index is NOCASE; without
-- one every registration scanned the whole table (issue 17). Labels are lower
-- case ASCII, so NOCASE orders them as the unique index does.
-- Keep in step with ../postgres/0007_name_prefix_index.sql.
CREATE INDEX nodes_given_name_prefix ON nodes (given_name COLLATE NOCASE);
