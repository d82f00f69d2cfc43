//! weft-control's integration tests, one binary: the server in process and the real binary.
#![allow(clippy::unwrap_used)]

mod authenticator;
mod cli;
mod common;
mod console;
mod console_browser;
mod dns;
mod durability;
mod install_sh;
mod limits;
mod netmap;
mod openapi;
mod policy;
mod registration;
mod relay;
mod security;
mod serve;
mod ssh_approvals;
mod ssh_check;
mod tls;
