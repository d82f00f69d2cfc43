//! weft-control storage: users, nodes, keys, addresses and policies on SQLite or PostgreSQL.
