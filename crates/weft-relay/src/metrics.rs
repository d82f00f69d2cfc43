//! What the relay counts: per server in [`Stats`] (read with
//! [`crate::RelayServer::stats`]), and process-wide through the `metrics`
//! facade, which whoever installed a recorder exports (weft-control's
//! `/metrics`, or the `weft-relay` binary's `--metrics-listen`).
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `weft_relay_clients` | gauge | connections logged in |
//! | `weft_relay_client_keys` | gauge | distinct node keys logged in |
//! | `weft_relay_accepts_total` | counter | connections upgraded to DERP |
//! | `weft_relay_logins_refused_total{reason}` | counter | logins refused: `not_admitted`, `admission_error`, `bad_login`, `timeout`, `closing` |
//! | `weft_relay_packets_in_total`, `weft_relay_bytes_in_total` | counter | packets (and their bytes) clients sent through the relay |
//! | `weft_relay_packets_out_total`, `weft_relay_bytes_out_total` | counter | packets (and bytes) written to clients |
//! | `weft_relay_packets_dropped_total{reason}` | counter | `unknown_dest`, `duplicate_client`, `queue_full`, `gone`, `write_error` |
//! | `weft_relay_queue_overflows_total` | counter | times a client's send queue overflowed (a run of `queue_full` drops) |
//! | `weft_relay_revocations_total` | counter | connections closed because their key was revoked or no longer admitted |
//! | `weft_relay_admission_errors_total` | counter | admission checks that failed (control unreachable, bad answer) |
//! | `weft_relay_peer_gone_sent_total{reason}` | counter | `PeerGone` frames sent: `disconnected`, `not_here` |
//! | `weft_relay_stun_requests_total` | counter | STUN Binding requests answered |
//! | `weft_relay_stun_dropped_total{reason}` | counter | datagrams the STUN server dropped: `not_stun`, `malformed`, `not_binding` |

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// No client with the destination key.
    UnknownDest,
    /// The destination key has several connections and none is active.
    DuplicateClient,
    /// The destination's send queue was full; the packet was dropped.
    QueueFull,
    /// The destination disconnected before the packet was written.
    Gone,
    /// Writing to the destination failed or timed out.
    WriteError,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::UnknownDest => "unknown_dest",
            DropReason::DuplicateClient => "duplicate_client",
            DropReason::QueueFull => "queue_full",
            DropReason::Gone => "gone",
            DropReason::WriteError => "write_error",
        }
    }
}

/// Why a login was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// Admission said no.
    NotAdmitted,
    /// Admission could not answer.
    AdmissionError,
    /// The `ClientInfo` did not prove the key or was not a `ClientInfo`.
    BadLogin,
    /// No `ClientInfo` in time.
    Timeout,
    /// The server is shutting down.
    Closing,
}

impl RefuseReason {
    fn label(self) -> &'static str {
        match self {
            RefuseReason::NotAdmitted => "not_admitted",
            RefuseReason::AdmissionError => "admission_error",
            RefuseReason::BadLogin => "bad_login",
            RefuseReason::Timeout => "timeout",
            RefuseReason::Closing => "closing",
        }
    }
}

/// A server's counters (monotonic, except `clients`).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub accepts: AtomicU64,
    pub refused: [AtomicU64; 5],
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub dropped: [AtomicU64; 5],
    pub queue_overflows: AtomicU64,
    pub revocations: AtomicU64,
    pub admission_errors: AtomicU64,
    pub peer_gone_disconnected: AtomicU64,
    pub peer_gone_not_here: AtomicU64,
}

/// A copy of a server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connections upgraded to DERP.
    pub accepts: u64,
    /// Logins refused because admission said no.
    pub refused_not_admitted: u64,
    /// Logins refused because admission could not answer.
    pub refused_admission_error: u64,
    /// Logins refused for a bad `ClientInfo`.
    pub refused_bad_login: u64,
    /// Logins that timed out.
    pub refused_timeout: u64,
    /// Packets clients sent that were queued for their destination.
    pub packets_in: u64,
    /// Their bytes (packet bytes, no framing).
    pub bytes_in: u64,
    /// Packets written to clients.
    pub packets_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Drops: unknown destination.
    pub dropped_unknown_dest: u64,
    /// Drops: destination duplicated, none active.
    pub dropped_duplicate_client: u64,
    /// Drops: destination queue full.
    pub dropped_queue_full: u64,
    /// Drops: destination gone before the write.
    pub dropped_gone: u64,
    /// Drops: write failed.
    pub dropped_write_error: u64,
    /// Queue overflows.
    pub queue_overflows: u64,
    /// Connections closed by revocation.
    pub revocations: u64,
    /// Admission checks that failed.
    pub admission_errors: u64,
    /// `PeerGone` frames sent.
    pub peer_gone_sent: u64,
}

fn idx_drop(r: DropReason) -> usize {
    match r {
        DropReason::UnknownDest => 0,
        DropReason::DuplicateClient => 1,
        DropReason::QueueFull => 2,
        DropReason::Gone => 3,
        DropReason::WriteError => 4,
    }
}

fn idx_refuse(r: RefuseReason) -> usize {
    match r {
        RefuseReason::NotAdmitted => 0,
        RefuseReason::AdmissionError => 1,
        RefuseReason::BadLogin => 2,
        RefuseReason::Timeout => 3,
        RefuseReason::Closing => 4,
    }
}

impl Stats {
    pub fn accepted(&self) {
        self.accepts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("weft_relay_accepts_total").increment(1);
    }

    pub fn refused(&self, r: RefuseReason) {
        self.refused[idx_refuse(r)].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("weft_relay_logins_refused_total", "reason" => r.label()).increment(1);
    }

    /// Adds a batch of forwarded packets (once per read, not per packet).
    pub fn packets_in(&self, packets: u64, bytes: u64) {
        if packets == 0 {
            return;
        }
        self.packets_in.fetch_add(packets, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!("weft_relay_packets_in_total").increment(packets);
        metrics::counter!("weft_relay_bytes_in_total").increment(bytes);
    }

    /// Adds a batch of written packets (once per write).
    pub fn packets_out(&self, packets: u64, bytes: u64) {
        if packets == 0 {
            return;
        }
        self.packets_out.fetch_add(packets, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!("weft_relay_packets_out_total").increment(packets);
        metrics::counter!("weft_relay_bytes_out_total").increment(bytes);
    }

    pub fn dropped(&self, r: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped[idx_drop(r)].fetch_add(n, Ordering::Relaxed);
        metrics::counter!("weft_relay_packets_dropped_total", "reason" => r.label()).increment(n);
    }

    pub fn overflowed(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.queue_overflows.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("weft_relay_queue_overflows_total").increment(n);
    }

    pub fn revoked(&self, n: u64) {
        self.revocations.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("weft_relay_revocations_total").increment(n);
    }

    pub fn admission_error(&self) {
        self.admission_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("weft_relay_admission_errors_total").increment(1);
    }

    pub fn peer_gone_sent(&self, not_here: bool) {
        let (a, label) = if not_here {
            (&self.peer_gone_not_here, "not_here")
        } else {
            (&self.peer_gone_disconnected, "disconnected")
        };
        a.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("weft_relay_peer_gone_sent_total", "reason" => label).increment(1);
    }

    pub fn set_clients(&self, connections: usize, keys: usize) {
        metrics::gauge!("weft_relay_clients").set(connections as f64);
        metrics::gauge!("weft_relay_client_keys").set(keys as f64);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            accepts: l(&self.accepts),
            refused_not_admitted: l(&self.refused[0]),
            refused_admission_error: l(&self.refused[1]),
            refused_bad_login: l(&self.refused[2]),
            refused_timeout: l(&self.refused[3]),
            packets_in: l(&self.packets_in),
            bytes_in: l(&self.bytes_in),
            packets_out: l(&self.packets_out),
            bytes_out: l(&self.bytes_out),
            dropped_unknown_dest: l(&self.dropped[0]),
            dropped_duplicate_client: l(&self.dropped[1]),
            dropped_queue_full: l(&self.dropped[2]),
            dropped_gone: l(&self.dropped[3]),
            dropped_write_error: l(&self.dropped[4]),
            queue_overflows: l(&self.queue_overflows),
            revocations: l(&self.revocations),
            admission_errors: l(&self.admission_errors),
            peer_gone_sent: l(&self.peer_gone_disconnected) + l(&self.peer_gone_not_here),
        }
    }
}
