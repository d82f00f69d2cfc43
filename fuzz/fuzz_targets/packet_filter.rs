//! weft-packet's view and weft-filter's judge on arbitrary bytes: a packet
//! from the tunnel (inbound) and from TUN (outbound), then the inbound
//! reply of a flow the outbound packet may have opened.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_filter::{CompiledFilter, Config, Filter, Policy};
use weft_fuzz::base_instant;
use weft_packet::{IpPacket, Transport};
use weft_types::filter::{DstPorts, FilterRule, PortRange};

fn filter() -> &'static Filter {
    static F: OnceLock<Filter> = OnceLock::new();
    F.get_or_init(|| {
        let net = |s: &str| s.parse().expect("valid prefix");
        let me = ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"];
        let rule = |ports: (u16, u16), protos: Vec<u8>| FilterRule {
            src: vec![net("100.64.0.0/10"), net("fd7a:115c:a1e0::/48")],
            dst: me
                .iter()
                .map(|m| DstPorts {
                    net: net(m),
                    ports: PortRange {
                        first: ports.0,
                        last: ports.1,
                    },
                })
                .collect(),
            protos,
            origin: None,
        };
        let f = Filter::new(
            Config {
                max_flows: 256,
                shards: 4,
                max_fragments: 32,
                ..Config::default()
            },
            [42; 32],
        );
        f.set_policy(Policy {
            filter: CompiledFilter::new(&[
                rule((22, 22), vec![6]),
                rule((5000, 5010), vec![17, 132]),
                rule((0, 65535), vec![1, 58]),
            ]),
            local_addrs: vec![
                "100.64.0.1".parse().expect("ip"),
                "fd7a:115c:a1e0::1".parse().expect("ip"),
            ],
            shields_up: false,
        });
        f
    })
}

/// Reads every field of the view, as the filter, GRO and the logs do.
fn read_all(p: &IpPacket<'_>) -> u64 {
    let mut acc = u64::from(p.protocol()) + p.header_len() as u64 + p.total_len() as u64;
    acc += p.as_bytes().len() as u64;
    let _ = (p.version(), p.src(), p.dst(), p.fragment());
    match p.transport() {
        Transport::Tcp(t) => {
            acc += u64::from(t.src_port()) + u64::from(t.dst_port()) + u64::from(t.seq());
            acc += u64::from(t.ack()) + t.header_len() as u64 + u64::from(t.flags());
            acc += (t.options().len() + t.payload().len()) as u64;
        }
        Transport::Udp(u) => {
            acc += u64::from(u.src_port()) + u64::from(u.dst_port()) + u.length() as u64;
            acc += u64::from(u.checksum());
        }
        other => {
            let _ = format!("{other:?}");
        }
    }
    acc
}

fuzz_target!(|data: &[u8]| {
    // Each input is judged at its own virtual time so flows from earlier
    // inputs expire instead of filling the table forever.
    static STEP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let step = STEP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = base_instant() + Duration::from_millis(step * 250);
    let f = filter();
    if let Ok(p) = IpPacket::new(data) {
        std::hint::black_box(read_all(&p));
        assert!(
            p.total_len() <= data.len(),
            "the view stays inside the buffer"
        );
    }
    let _ = f.inbound(data, now);
    let _ = f.outbound(data, now);
    let _ = f.inbound(data, now);
    if step.is_multiple_of(64) {
        f.handle_timeout(now);
    }
});
