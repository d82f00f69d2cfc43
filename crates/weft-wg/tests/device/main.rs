//! Device-level tests through the public API. One test binary, several
//! modules (ordered by lifecycle: configuration, data path, text protocol,
//! hostile input).
#![allow(clippy::unwrap_used, clippy::unwrap_in_result)]

mod config;
mod data_path;
mod garbage;
mod harness;
mod uapi;
