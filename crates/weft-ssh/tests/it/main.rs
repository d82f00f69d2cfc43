//! weft-ssh's integration tests, one binary.
#![allow(clippy::unwrap_used)]

mod abuse;
mod common;
mod forwarding;
mod policy;
mod policy_adapter;
mod sessions;
mod x11;
