//! Errors of the data-plane drivers. Messages do not repeat their source
//! error; print the chain (`{:#}` with anyhow) to see it.

use std::io;
use std::net::SocketAddr;

/// Why the TUN device could not be created or used.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// `/dev/net/tun` is absent or the `tun` module is not loaded.
    #[error(
        "cannot open /dev/net/tun: the TUN driver is missing; run `modprobe tun` \
         (in a container, pass the device in, e.g. `--device /dev/net/tun`)"
    )]
    NoDriver {
        #[source]
        source: io::Error,
    },
    /// The process may not create network devices.
    #[error(
        "cannot create TUN device {name:?}: permission denied; \
         run as root or grant CAP_NET_ADMIN (e.g. `setcap cap_net_admin+ep <binary>`)"
    )]
    PermissionDenied {
        name: String,
        #[source]
        source: io::Error,
    },
    /// Another process holds a device with that name.
    #[error("cannot create TUN device {name:?}: it exists and is in use by another process")]
    Busy {
        name: String,
        #[source]
        source: io::Error,
    },
    /// The name is not a valid interface name.
    #[error("invalid interface name {name:?}: use 1 to 15 characters, no '/', ':' or whitespace")]
    InvalidName { name: String },
    /// Anything else the kernel refused.
    #[error("cannot create TUN device {name:?}")]
    Other {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Errors of the engine and its sockets.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TUN device failed.
    #[error(transparent)]
    Tun(#[from] TunError),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP socket to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A socket option or other setup step failed.
    #[error("{what}")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// A worker thread could not be spawned.
    #[error("cannot spawn thread {name}")]
    Spawn {
        name: &'static str,
        #[source]
        source: io::Error,
    },
}
