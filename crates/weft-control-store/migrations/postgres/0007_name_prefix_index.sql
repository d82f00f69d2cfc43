-- Registration picks a unique DNS label with a prefix query on nodes.given_name
-- (`given_name LIKE 'base%'`, see label::candidate_prefix). Under a non-C
-- collation PostgreSQL can use a btree index for LIKE only with the pattern
-- operator class; without it every registration scanned the whole table
-- (issue 17). Keep in step with ../sqlite/0007_name_prefix_index.sql.
CREATE INDEX nodes_given_name_prefix ON nodes (given_name text_pattern_ops);
