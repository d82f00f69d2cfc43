//! Weft SSH: the node's built-in SSH server, served on the node's own tailnet
//! addresses and authorized by tailnet policy instead of keys or passwords.
//!
//! What it is. A russh server that weftd embeds. A connection's WireGuard-
//! authenticated source address is its identity ([`Authorizer::identify`]);
//! a connection from the node's own address came from a local program, and
//! may log in only as the local account that opened it, or as anyone if that
//! was root ([`Origin::LocalProcess`]);
//! the node's compiled SSH policy decides the login ([`Authorizer::authorize`]:
//! accept, check, or refuse with a message); `check` logins are held until the
//! user re-authenticates at the control server ([`CheckHook`]). Sessions run
//! as the local user with privileges dropped before any user code: the login
//! shell or `shell -c`, with or without a pty, the built-in SFTP server
//! ([`sftp`], in a helper process per session) for SFTP and so SCP, `-L`/`-W`/`-R` forwarding
//! of TCP ports and of unix sockets (bound and connected as the user), and agent forwarding,
//! each gated by the policy; X11 forwarding (`ssh -X`) when the node allows it. [`SshServer::update_policy`] closes sessions a new
//! policy no longer allows.
//!
//! What it is not. It never reads `/etc/ssh/sshd_config` or `~/.ssh`, never
//! accepts passwords or keys, and never binds anything but what weftd hands
//! it (plus `-R` listeners on loopback or the node's tailnet address, X11
//! displays on loopback, and `-R` unix sockets, which are bound as the user).
//!
//! Driving it:
//! 1. Load keys with [`HostKeys::load_or_generate`] and publish
//!    [`HostKeys::public_lines`] to control.
//! 2. `SshServer::new(config, &keys, authorizer, check_hook)`, then
//!    `serve(listener)` per tailnet address (or `serve_stream` per stream).
//! 3. On every netmap: `update_policy(new_authorizer)`; on exit: `shutdown`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod audit;
mod authz;
mod config;
mod forward;
mod handler;
mod hostkeys;
mod limits;
mod pump;
pub mod recording;
mod server;
mod session;
pub mod sftp;
mod streamlocal;
mod user;
mod usersock;
mod x11;

pub use authz::{
    Authorizer, CheckHook, CheckOutcome, CheckRequest, DEFAULT_ACCEPT_ENV, Decision, Grant, Origin,
    PeerIdentity, PendingCheck, Unidentified, glob_match,
};
pub use config::{SftpCommand, SshConfig};
pub use hostkeys::{HostKeyError, HostKeyOptions, HostKeys, KeySource};
pub use limits::Refusal;
pub use recording::{FinishedRecording, RecordingMeta, RecordingSink};
pub use server::{ConnectionInfo, PolicyUpdate, ServeError, SshServer};
pub use user::{LocalUser, UserError};
pub use x11::{X11Error, X11Request};
