//! `weft-control`: the coordination server and its administration CLI.
//!
//! `weft-control serve` runs the server; every other command administers a
//! server, locally over its admin socket (`<state-dir>/admin.sock`, root
//! only) or remotely over its REST API (`--server URL --api-key KEY`).
//! `policy check --nodes` and `policy explain --policy --nodes` work
//! offline, without a server.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
