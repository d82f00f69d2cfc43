//! weft-relay (work in progress).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod proto;
