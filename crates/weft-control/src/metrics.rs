//! Prometheus metrics at `/metrics`, through the `metrics` facade.
//!
//! The recorder is process-wide (installed once), so several servers in one
//! test process share it. What is recorded:
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `weft_nodes`, `weft_nodes_online`, `weft_users` | gauge | tailnet size; nodes with an open map stream |
//! | `weft_map_streams`, `weft_control_connections` | gauge | open map streams / control connections |
//! | `weft_map_updates_sent_total{kind=full\|delta}` | counter | map messages written to nodes |
//! | `weft_map_delta_bodies_queued_total`, `weft_map_resyncs_total` | counter | delta bodies queued; streams given a full map instead of their backlog |
//! | `weft_registrations_total{outcome}` | counter | `register` answers by outcome |
//! | `weft_register_duration_seconds{outcome}` | histogram | time to answer `register` |
//! | `weft_http_request_duration_seconds{route}` | histogram | HTTP request latency |
//! | `weft_batch_duration_seconds`, `weft_batch_changes` | histogram | coordinator batches |
//! | `weft_policy_compile_seconds` | histogram | compiling the policy for the whole tailnet (after identity or policy changes) |
//! | `weft_full_map_build_seconds` | histogram | splice + encrypt + write of a full map |
//! | `weft_control_connection_errors_total{reason}` | counter | connections closed by a protocol error |
//! | `weft_control_upgrades_refused_total` | counter | refused upgrades |
//! | `weft_ephemeral_nodes_deleted_total` | counter | ephemeral nodes collected |
//! | `weft_persist_backlog_nodes` | gauge | nodes with runtime state not yet written |
//! | `weft_relay_*` | | the embedded relay and STUN server (docs/RELAY.md § Metrics) |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide recorder (once).
pub(crate) fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .ok()?
            .build_recorder();
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => Some(handle),
            Err(_) => {
                tracing::warn!("another metrics recorder is installed; /metrics stays empty");
                None
            }
        }
    });
}

/// Renders the metrics in the Prometheus text format.
pub(crate) fn render() -> String {
    match HANDLE.get() {
        Some(Some(h)) => h.render(),
        _ => String::new(),
    }
}
