//! weft-policy's integration tests, one binary (the allocation test stays apart: it installs a counting allocator).
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;
mod corpus;
mod explain;
mod idp_groups;
mod naive;
mod policy_tests;
mod semantics;
mod ssh;
