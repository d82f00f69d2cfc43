//! weft-disco integration tests: disco cores talking to each other on
//! virtual time, in memory and through a simulated network with NATs, a
//! relay and STUN servers.
#![allow(clippy::unwrap_used)]

mod call_me_maybe;
mod model;
mod netcheck;
mod paths;
mod sim;
mod two_peers;
