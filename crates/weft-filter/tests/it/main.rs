//! weft-filter's integration tests, one binary (the allocation test stays apart: it installs a counting allocator).
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;
mod concurrency;
mod flows;
mod lifecycle;
mod model;
mod parsing;
mod policy;
