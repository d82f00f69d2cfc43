//! weftd's Prometheus text at `GET /localapi/v0/metrics`, rendered by the
//! exporter weft-control uses (`metrics` + `metrics-exporter-prometheus`).
//!
//! weftd's counters live where they are counted (atomics in the filter, the
//! tunnel and the engine). A scrape reads them into a [`Snapshot`], and
//! [`render`] records the snapshot into a recorder made for that scrape
//! (`metrics::with_local_recorder`) rather than a process-wide one: several
//! daemons may share a process (the unit tests), and a snapshot then renders
//! the same whatever ran before it.
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `weftd_filter_dropped_packets_total{reason}` | counter | inbound packets the filter dropped |
//! | `weftd_filter_*` (see [`FILTER_SERIES`](super::filter::FILTER_SERIES)) | counter, gauge | accepted flows, flow table, rules, shields |
//! | `weftd_tunnel_packets_total{direction=tx\|rx}`, `weftd_tunnel_bytes_total{direction}` | counter | IP packets and bytes through the tunnel |
//! | `weftd_udp_*`, `weftd_tun_*` (see [`ENGINE_SERIES`]) | counter | the engine's socket and TUN I/O |
//! | `weftd_udp_dropped_datagrams_total{proto=wireguard\|disco,reason}` | counter | datagrams dropped on receive |
//! | `weftd_dns_queries_total{transport=udp\|tcp}` | counter | queries to the MagicDNS resolver |
//! | `weftd_dns_*` (see [`DNS_SERIES`]) | counter | MagicDNS answers, forwards, errors and drops |

use metrics::{Label, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use weft_filter::FilterStats;
use weft_net::EngineStats;

use super::dns::DnsMetrics;
use super::filter::FILTER_SERIES;
use super::tunnel::{TunnelCounters, UdpDrops};

/// The content type of Prometheus' text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a series only grows or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (until the daemon restarts).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One unlabelled series read from a stats struct `T`: its name, kind, help
/// text and where its value comes from.
#[derive(Debug)]
pub struct Series<T> {
    /// The metric name (`weftd_…`).
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Reads the value from a snapshot.
    pub value: fn(&T) -> u64,
}

/// The engine's I/O counters.
pub const ENGINE_SERIES: &[Series<EngineStats>] = &[
    Series {
        name: "weftd_relay_sent_datagrams_total",
        kind: Kind::Counter,
        help: "WireGuard datagrams handed to a relay instead of the UDP socket.",
        value: |e| e.diverted_datagrams,
    },
    Series {
        name: "weftd_relay_received_datagrams_total",
        kind: Kind::Counter,
        help: "WireGuard datagrams received through a relay and opened.",
        value: |e| e.injected_datagrams,
    },
    Series {
        name: "weftd_relay_receive_queue_dropped_total",
        kind: Kind::Counter,
        help: "WireGuard datagrams received through a relay and dropped: the engine's queue was full.",
        value: |e| e.inject_dropped,
    },
    Series {
        name: "weftd_udp_received_datagrams_total",
        kind: Kind::Counter,
        help: "UDP datagrams received (WireGuard and disco).",
        value: |e| e.udp_recv_datagrams,
    },
    Series {
        name: "weftd_udp_sent_datagrams_total",
        kind: Kind::Counter,
        help: "UDP datagrams sent in batches.",
        value: |e| e.udp_send_datagrams,
    },
    Series {
        name: "weftd_udp_send_errors_total",
        kind: Kind::Counter,
        help: "Batches that failed to send.",
        value: |e| e.udp_send_errors,
    },
    Series {
        name: "weftd_tun_read_errors_total",
        kind: Kind::Counter,
        help: "Malformed reads from TUN.",
        value: |e| e.tun_read_errors,
    },
    Series {
        name: "weftd_tun_write_errors_total",
        kind: Kind::Counter,
        help: "Batch writes to TUN that failed.",
        value: |e| e.tun_write_errors,
    },
];

/// The MagicDNS resolver's counters.
pub const DNS_SERIES: &[Series<DnsMetrics>] = &[
    Series {
        name: "weftd_dns_answered_local_total",
        kind: Kind::Counter,
        help: "DNS queries answered from tailnet names, extra records and PTR (NXDOMAIN under the tailnet domain included).",
        value: |d| d.core.answered_local,
    },
    Series {
        name: "weftd_dns_forwarded_total",
        kind: Kind::Counter,
        help: "DNS queries forwarded to an upstream resolver.",
        value: |d| d.core.forwarded,
    },
    Series {
        name: "weftd_dns_nxdomain_total",
        kind: Kind::Counter,
        help: "DNS answers with NXDOMAIN (local or forwarded).",
        value: |d| d.core.nxdomain,
    },
    Series {
        name: "weftd_dns_servfail_total",
        kind: Kind::Counter,
        help: "DNS answers with SERVFAIL (no upstream, upstream timeouts or garbage, or forwarded).",
        value: |d| d.core.servfail,
    },
    Series {
        name: "weftd_dns_malformed_total",
        kind: Kind::Counter,
        help: "DNS queries that did not parse (answered FORMERR when the header was readable, else dropped).",
        value: |d| d.core.malformed,
    },
    Series {
        name: "weftd_dns_upstream_timeouts_total",
        kind: Kind::Counter,
        help: "Forwarding attempts an upstream did not answer in time.",
        value: |d| d.core.upstream_timeouts,
    },
    Series {
        name: "weftd_dns_upstream_bad_replies_total",
        kind: Kind::Counter,
        help: "Upstream replies that were garbage or answered another question.",
        value: |d| d.core.upstream_bad,
    },
    Series {
        name: "weftd_dns_queue_dropped_total",
        kind: Kind::Counter,
        help: "Packets to the service addresses dropped because the resolver's queue was full.",
        value: |d| d.queue_dropped,
    },
    Series {
        name: "weftd_dns_reply_dropped_total",
        kind: Kind::Counter,
        help: "DNS replies that could not be queued on their socket.",
        value: |d| d.reply_dropped,
    },
];

/// What one scrape reports: the data plane's counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The inbound filter's counters.
    pub filter: FilterStats,
    /// IP packets and bytes through the tunnel.
    pub tunnel: TunnelCounters,
    /// The engine's socket and TUN counters.
    pub engine: EngineStats,
    /// Datagrams dropped on receive.
    pub udp_drops: UdpDrops,
    /// The MagicDNS resolver's counters.
    pub dns: DnsMetrics,
}

/// Renders `snapshot` in Prometheus' text format.
#[must_use]
pub fn render(snapshot: &Snapshot) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || record(snapshot));
    handle.render()
}

fn record(s: &Snapshot) {
    const DROPPED: &str = "weftd_filter_dropped_packets_total";
    describe_counter!(DROPPED, "Inbound packets the filter dropped, by reason.");
    for (reason, n) in &s.filter.dropped {
        counter!(DROPPED, "reason" => *reason).absolute(*n);
    }
    record_series(FILTER_SERIES, &s.filter);

    const PACKETS: &str = "weftd_tunnel_packets_total";
    const BYTES: &str = "weftd_tunnel_bytes_total";
    describe_counter!(
        PACKETS,
        "IP packets through the tunnel: tx read from TUN, rx written to TUN."
    );
    describe_counter!(
        BYTES,
        "IP bytes through the tunnel (before encryption, after decryption)."
    );
    let t = &s.tunnel;
    for (direction, packets, bytes) in [
        ("tx", t.tx_packets, t.tx_bytes),
        ("rx", t.rx_packets, t.rx_bytes),
    ] {
        counter!(PACKETS, "direction" => direction).absolute(packets);
        counter!(BYTES, "direction" => direction).absolute(bytes);
    }
    record_series(ENGINE_SERIES, &s.engine);

    const UDP_DROPPED: &str = "weftd_udp_dropped_datagrams_total";
    describe_counter!(
        UDP_DROPPED,
        "UDP datagrams dropped on receive, by protocol and reason \
         (anything that is not disco counts as WireGuard); proto=relay: \
         WireGuard datagrams over a relay dropped before the relay or \
         WireGuard took them."
    );
    let wireguard = s
        .udp_drops
        .wireguard
        .iter()
        .map(|(reason, n)| ("wireguard", crate::wg::stats::reason_name(*reason), *n));
    let disco = s
        .udp_drops
        .disco
        .iter()
        .map(|(reason, n)| ("disco", *reason, *n));
    let relay = s
        .udp_drops
        .relay
        .iter()
        .map(|(reason, n)| ("relay", *reason, *n));
    for (proto, reason, n) in wireguard.chain(disco).chain(relay) {
        let labels = [Label::new("proto", proto), Label::new("reason", reason)];
        counter!(UDP_DROPPED, labels.iter()).absolute(n);
    }

    const DNS_QUERIES: &str = "weftd_dns_queries_total";
    describe_counter!(
        DNS_QUERIES,
        "Queries to the MagicDNS resolver, by transport."
    );
    counter!(DNS_QUERIES, "transport" => "udp").absolute(s.dns.core.queries_udp);
    counter!(DNS_QUERIES, "transport" => "tcp").absolute(s.dns.core.queries_tcp);
    record_series(DNS_SERIES, &s.dns);
}

fn record_series<T>(table: &[Series<T>], stats: &T) {
    for s in table {
        let value = (s.value)(stats);
        match s.kind {
            Kind::Counter => {
                describe_counter!(s.name, s.help);
                counter!(s.name).absolute(value);
            }
            Kind::Gauge => {
                describe_gauge!(s.name, s.help);
                #[allow(clippy::cast_precision_loss)] // gauges here stay far below 2^53
                gauge!(s.name).set(value as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_wg::DropReason as WgDropReason;

    fn snapshot() -> Snapshot {
        let mut filter = FilterStats {
            flows: 3,
            rules: 1,
            ..FilterStats::default()
        };
        for reason in weft_filter::DropReason::ALL {
            filter.dropped.insert(reason.as_str(), 0);
        }
        filter.dropped.insert("not_allowed", 1);
        let mut udp_drops = UdpDrops::default();
        udp_drops.wireguard.insert(WgDropReason::Malformed, 2);
        udp_drops.disco.insert("unknown_sender", 1);
        udp_drops.disco.insert("wrong_node_key", 0);
        Snapshot {
            filter,
            tunnel: TunnelCounters {
                tx_packets: 3,
                tx_bytes: 300,
                rx_packets: 2,
                rx_bytes: 200,
            },
            engine: EngineStats {
                udp_recv_datagrams: 5,
                ..EngineStats::default()
            },
            udp_drops,
            dns: DnsMetrics {
                core: weft_dns::Stats {
                    queries_udp: 7,
                    forwarded: 2,
                    ..weft_dns::Stats::default()
                },
                queue_dropped: 1,
                ..DnsMetrics::default()
            },
        }
    }

    #[test]
    fn a_snapshot_renders_every_series_with_its_labels_and_type() {
        let text = render(&snapshot());
        for line in [
            "weftd_filter_dropped_packets_total{reason=\"not_allowed\"} 1\n",
            "weftd_filter_dropped_packets_total{reason=\"shields_up\"} 0\n",
            "weftd_filter_flows 3\n",
            "weftd_filter_rules 1\n",
            "weftd_filter_shields_up 0\n",
            "weftd_tunnel_packets_total{direction=\"tx\"} 3\n",
            "weftd_tunnel_bytes_total{direction=\"rx\"} 200\n",
            "weftd_udp_received_datagrams_total 5\n",
            "weftd_tun_write_errors_total 0\n",
            "weftd_udp_dropped_datagrams_total{proto=\"wireguard\",reason=\"malformed\"} 2\n",
            "weftd_udp_dropped_datagrams_total{proto=\"disco\",reason=\"unknown_sender\"} 1\n",
            "weftd_udp_dropped_datagrams_total{proto=\"disco\",reason=\"wrong_node_key\"} 0\n",
            "# TYPE weftd_filter_flows gauge\n",
            "# TYPE weftd_filter_flows_revoked_total counter\n",
            "# HELP weftd_tunnel_packets_total IP packets through the tunnel",
            "weftd_dns_queries_total{transport=\"udp\"} 7\n",
            "weftd_dns_queries_total{transport=\"tcp\"} 0\n",
            "weftd_dns_forwarded_total 2\n",
            "weftd_dns_queue_dropped_total 1\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        // Every sample line is `name{labels} value` or `name value`, with
        // an integer value.
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (name, value) = line.rsplit_once(' ').expect("a sample line has a value");
            assert!(name.starts_with("weftd_"), "{line}");
            value.parse::<u64>().expect("an integer value");
        }
    }

    #[test]
    fn every_table_series_is_rendered_once() {
        let text = render(&Snapshot::default());
        let names = FILTER_SERIES
            .iter()
            .map(|s| s.name)
            .chain(ENGINE_SERIES.iter().map(|s| s.name));
        for name in names {
            let samples = text
                .lines()
                .filter(|l| l.split_once(' ').is_some_and(|(n, _)| n == name))
                .count();
            assert_eq!(samples, 1, "{name} in\n{text}");
        }
    }

    #[test]
    fn two_renders_do_not_share_values() {
        let first = render(&snapshot());
        let second = render(&Snapshot::default());
        assert!(first.contains("weftd_filter_flows 3\n"));
        assert!(second.contains("weftd_filter_flows 0\n"), "{second}");
        assert!(!second.contains("not_allowed"), "{second}");
    }
}
