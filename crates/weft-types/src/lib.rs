//! Weft's shared vocabulary, in the role Tailscale's `tailcfg` plays: keys,
//! identifiers and (as the control protocol grows) every message that passes
//! between weft-control, weftd and the CLI.
//!
//! This crate holds types only: no I/O, no async runtime, no CLI or database
//! dependencies. Validated values deserialize through their `FromStr`, so JSON
//! cannot bypass validation.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod control;
pub mod filter;
pub mod ids;
pub mod key;

pub use key::{
    DiscoPrivate, DiscoPublic, KeyParseError, MachinePrivate, MachinePublic, NodePrivate,
    NodePublic,
};
