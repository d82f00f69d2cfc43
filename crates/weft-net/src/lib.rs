//! Weft's data-plane drivers: the TUN device, batched UDP, and the engine
//! that joins them to the sans-IO WireGuard core in `weft-wg`.
//!
//! This crate does I/O and nothing else: every protocol decision is made by
//! the core ([`Tunnel`], implemented by [`weft_wg::Device`]); the engine
//! moves packets between the kernel and the core as cheaply as it can.
//!
//! * [`Tun`]: a Linux TUN device with TSO/USO offloads when available.
//! * [`BoundSocket`]: the dual-stack UDP socket with GSO/GRO and `recvmmsg`.
//! * [`Engine`]: three threads (TUN→UDP, UDP→TUN, timers), a rebindable
//!   socket, and a prompt, joined shutdown.
//!
//! Linux only.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod batch;
mod checksum;
mod engine;
mod error;
mod gro;
mod notify;
pub mod tun;
pub mod udp;

pub use engine::{Engine, EngineConfig, EngineStats, INJECT_QUEUE, Injector, Tunnel};
pub use error::{NetError, TunError};
pub use notify::Notify;
pub use tun::{Offload, Tun, TunConfig};
pub use udp::BoundSocket;
