//! Weft's access policy, decided by pure code: parse and validate the HuJSON
//! policy file, compile it per destination node into the packet filter and
//! SSH policy that node enforces (`weft_types::filter`), explain any single
//! decision, run the file's own `tests`/`sshTests`, and judge an SSH login
//! against a local user snapshot the caller provides.
//!
//! This crate does no I/O: no files, no clock, no passwd lookups. The
//! control server feeds it the policy text and its view of the tailnet; the
//! node daemon feeds it the compiled SSH policy and a user lookup; the CLI
//! feeds it files for offline checks.
//!
//! ```text
//! Policy::parse(text) ─┐
//!                      ├─ compile_all ─> CompiledTailnet ─ packet_filter(node) / ssh_policy(node) / visible_peers(node)
//! Tailnet::new(..) ────┘   explain(..) / Policy::run_tests(..)
//! ```
//!
//! The policy language, its semantics and how they differ from Tailscale's
//! are documented in `docs/POLICY.md`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bits;
pub mod checks;
pub mod compile;
pub mod error;
mod eval;
pub mod explain;
mod hujson;
pub mod offline;
mod parse;
pub mod policy;
pub mod ssh;
mod syntax;
pub mod tailnet;

pub use checks::{TestReport, TestResult};
pub use compile::{CompiledTailnet, compile, compile_all};
pub use error::{ErrorKind, PolicyError, TailnetError};
pub use explain::{ExplainError, Explanation, Verdict, explain, explain_query};
pub use offline::{CheckReport, ExplainReport, Outcome, Source, offline_check, offline_explain};
pub use policy::{DEFAULT_POLICY, Policy};
pub use ssh::{LocalAccount, RejectReason, SshDecision, authorize_ssh};
pub use syntax::{is_idp_group, proto_name};
pub use tailnet::{Endpoint, Node, NodeId, Role, Tailnet, User};
