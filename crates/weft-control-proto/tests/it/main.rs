//! weft-control-proto's integration tests, one binary.
#![allow(clippy::unwrap_used)]

mod channel;
mod client;
mod common;
mod encode;
mod map_session;
mod vectors;
