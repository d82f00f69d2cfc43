use super::*;

const A: [u8; 4] = [100, 64, 0, 1];
const B: [u8; 4] = [100, 64, 0, 2];
const A6: [u8; 16] = [
    0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];
const B6: [u8; 16] = [
    0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
];

#[derive(Clone)]
struct Tcp {
    sport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    options: Vec<u8>,
    payload: Vec<u8>,
}

fn seg(seq: u32, len: usize) -> Tcp {
    Tcp {
        sport: 40000,
        seq,
        ack: 7,
        flags: tcp::ACK,
        options: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], // NOP NOP timestamps
        payload: (0..len).map(|i| (seq as usize + i) as u8).collect(),
    }
}

fn l4_checksum(src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> u16 {
    let acc = sum16(src, 0);
    let acc = sum16(dst, acc) + u64::from(proto) + l4.len() as u64;
    !fold(sum16(l4, acc))
}

fn tcp_bytes(t: &Tcp) -> Vec<u8> {
    let hl = 20 + t.options.len();
    let mut h = vec![0u8; hl];
    h[0..2].copy_from_slice(&t.sport.to_be_bytes());
    h[2..4].copy_from_slice(&5201u16.to_be_bytes());
    h[4..8].copy_from_slice(&t.seq.to_be_bytes());
    h[8..12].copy_from_slice(&t.ack.to_be_bytes());
    h[12] = ((hl / 4) as u8) << 4;
    h[13] = t.flags;
    h[14..16].copy_from_slice(&512u16.to_be_bytes());
    h[20..].copy_from_slice(&t.options);
    h.extend_from_slice(&t.payload);
    h
}

fn ipv4(proto: u8, mut l4: Vec<u8>, csum_at: Option<usize>) -> Vec<u8> {
    if let Some(at) = csum_at {
        let c = l4_checksum(&A, &B, proto, &l4);
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let total = 20 + l4.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&A);
    p.extend_from_slice(&B);
    let c = !fold(sum16(&p, 0));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&l4);
    p
}

fn tcp4(t: &Tcp) -> Vec<u8> {
    ipv4(proto::TCP, tcp_bytes(t), Some(16))
}

fn tcp6(t: &Tcp) -> Vec<u8> {
    let mut l4 = tcp_bytes(t);
    let c = l4_checksum(&A6, &B6, proto::TCP, &l4);
    l4[16..18].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0, 0, 0, proto::TCP, 64];
    p[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&A6);
    p.extend_from_slice(&B6);
    p.extend_from_slice(&l4);
    p
}

fn udp4(sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; 8];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&5201u16.to_be_bytes());
    l4[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(payload);
    ipv4(proto::UDP, l4, Some(6))
}

/// Runs GRO over `packets`; returns each written packet with its header.
fn run(packets: &[Vec<u8>], udp: bool) -> Vec<(VirtioHeader, Vec<u8>)> {
    let mut slots: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| {
            let mut s = vec![0u8; HEADER_LEN + MAX_IP_LEN];
            s[HEADER_LEN..HEADER_LEN + p.len()].copy_from_slice(p);
            s
        })
        .collect();
    let lens: Vec<usize> = packets.iter().map(Vec::len).collect();
    // What the engine reads from each packet's view as it commits it.
    let metas: Vec<Option<Parsed>> = packets
        .iter()
        .map(|p| Parsed::from_packet(&IpPacket::new(p).ok()?))
        .collect();
    let mut out = Vec::new();
    let mut gro = Gro::new(packets.len(), udp);
    gro.coalesce(&mut slots, &lens, &metas, &mut out);
    out.iter()
        .map(|&i| {
            let s = &slots[i];
            let mut packet = s[HEADER_LEN..HEADER_LEN + lens[i]].to_vec();
            for (j, range) in gro.joined(i) {
                packet.extend_from_slice(&slots[j][range]);
            }
            assert_eq!(packet.len(), gro.total_len(i, lens[i]));
            (read_header(s), packet)
        })
        .collect()
}

/// Completes a CHECKSUM_PARTIAL packet the way the kernel would and checks
/// that the result is the correct checksum of the whole packet.
fn assert_partial_checksum_completes(h: &VirtioHeader, p: &[u8]) {
    let start = usize::from(h.csum_start);
    let at = start + usize::from(h.csum_offset);
    let completed = !fold(sum16(&p[start..], 0));
    let mut zeroed = p.to_vec();
    zeroed[at..at + 2].fill(0);
    let (src, dst, proto): (&[u8], &[u8], u8) = if p[0] >> 4 == 4 {
        (&p[12..16], &p[16..20], p[9])
    } else {
        (&p[8..24], &p[24..40], p[6])
    };
    assert_eq!(completed, l4_checksum(src, dst, proto, &zeroed[start..]));
}

fn plain() -> VirtioHeader {
    VirtioHeader::default()
}

#[test]
fn consecutive_segments_of_one_flow_become_one_gso_packet() {
    let segs: Vec<Tcp> = (0..10).map(|i| seg(1000 + i * 1000, 1000)).collect();
    let out = run(&segs.iter().map(tcp4).collect::<Vec<_>>(), false);
    assert_eq!(out.len(), 1);
    let (h, p) = &out[0];
    assert_eq!(
        *h,
        VirtioHeader {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 20 + 32,
            gso_size: 1000,
            csum_start: 20,
            csum_offset: 16,
        }
    );
    assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
    assert_eq!(p.len(), 20 + 32 + 10_000);
    assert_eq!(fold(sum16(&p[..20], 0)), 0xffff, "IPv4 header checksum");
    let payload: Vec<u8> = segs.iter().flat_map(|s| s.payload.clone()).collect();
    assert_eq!(&p[52..], &payload[..]);
    assert_partial_checksum_completes(h, p);
}

#[test]
fn ipv6_segments_coalesce_too() {
    let segs: Vec<Vec<u8>> = (0..4).map(|i| tcp6(&seg(i * 500, 500))).collect();
    let out = run(&segs, false);
    assert_eq!(out.len(), 1);
    let (h, p) = &out[0];
    assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_TCPV6);
    assert_eq!(h.csum_start, 40);
    assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
    assert_partial_checksum_completes(h, p);
}

#[test]
fn a_gap_in_the_sequence_starts_a_new_packet() {
    let out = run(
        &[
            tcp4(&seg(0, 100)),
            tcp4(&seg(200, 100)),
            tcp4(&seg(300, 100)),
        ],
        false,
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].0, plain());
    assert_eq!(out[1].0.gso_size, 100);
    assert_eq!(out[1].1.len(), 52 + 200);
}

#[test]
fn psh_joins_and_closes_the_packet() {
    let mut last = seg(200, 100);
    last.flags |= tcp::PSH;
    let out = run(
        &[
            tcp4(&seg(0, 100)),
            tcp4(&seg(100, 100)),
            tcp4(&last),
            tcp4(&seg(300, 100)),
        ],
        false,
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].1.len(), 52 + 300);
    assert_ne!(out[0].1[20 + 13] & tcp::PSH, 0, "merged packet carries PSH");
    assert_eq!(out[1].0, plain());
}

#[test]
fn a_short_segment_ends_the_packet() {
    let out = run(
        &[
            tcp4(&seg(0, 100)),
            tcp4(&seg(100, 60)),
            tcp4(&seg(160, 100)),
        ],
        false,
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].1.len(), 52 + 160);
    assert_eq!(out[0].0.gso_size, 100);
    assert_eq!(out[1].0, plain());
}

#[test]
fn a_longer_segment_does_not_join() {
    let out = run(&[tcp4(&seg(0, 100)), tcp4(&seg(100, 200))], false);
    assert_eq!(out.len(), 2);
}

#[test]
fn interleaved_flows_are_coalesced_separately_in_order() {
    let mut b = seg(0, 100);
    b.sport = 40001;
    let mut b2 = seg(100, 100);
    b2.sport = 40001;
    let out = run(
        &[
            tcp4(&seg(0, 100)),
            tcp4(&b),
            tcp4(&seg(100, 100)),
            tcp4(&b2),
        ],
        false,
    );
    assert_eq!(out.len(), 2);
    assert_eq!(u16::from_be_bytes([out[0].1[20], out[0].1[21]]), 40000);
    assert_eq!(u16::from_be_bytes([out[1].1[20], out[1].1[21]]), 40001);
    assert!(
        out.iter()
            .all(|(h, p)| h.gso_size == 100 && p.len() == 52 + 200)
    );
}

#[test]
fn a_segment_with_a_bad_checksum_is_never_merged() {
    let mut bad = tcp4(&seg(100, 100));
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let out = run(
        &[tcp4(&seg(0, 100)), bad.clone(), tcp4(&seg(200, 100))],
        false,
    );
    assert_eq!(out.len(), 3, "bad one alone, and nothing joins it");
    assert_eq!(out[1], (plain(), bad));
}

#[test]
fn a_packet_that_cannot_join_keeps_its_place_in_the_flow() {
    let mut fin = seg(100, 0);
    fin.flags = tcp::ACK | 0x01;
    let out = run(
        &[tcp4(&seg(0, 100)), tcp4(&fin), tcp4(&seg(100, 100))],
        false,
    );
    assert_eq!(out.len(), 3);
    assert_eq!(out[1].1[20 + 13], tcp::ACK | 0x01);
}

#[test]
fn different_acks_or_options_do_not_merge() {
    let mut other_ack = seg(100, 100);
    other_ack.ack = 8;
    let mut other_opts = seg(100, 100);
    other_opts.options[11] = 9;
    for second in [other_ack, other_opts] {
        let out = run(&[tcp4(&seg(0, 100)), tcp4(&second)], false);
        assert_eq!(out.len(), 2);
    }
}

#[test]
fn a_coalesced_packet_stays_under_64_kib() {
    let segs: Vec<Vec<u8>> = (0..60).map(|i| tcp4(&seg(i * 1400, 1400))).collect();
    let out = run(&segs, false);
    assert!(out.len() >= 2);
    assert!(out.iter().all(|(_, p)| p.len() <= MAX_IP_LEN));
    let total: usize = out.iter().map(|(_, p)| p.len() - 52).sum();
    assert_eq!(total, 60 * 1400);
}

#[test]
fn udp_datagrams_coalesce_only_with_uso() {
    let d: Vec<Vec<u8>> = vec![
        udp4(5000, &[1; 300]),
        udp4(5000, &[2; 300]),
        udp4(5000, &[3; 100]),
    ];
    let out = run(&d, true);
    assert_eq!(out.len(), 1);
    let (h, p) = &out[0];
    assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_UDP_L4);
    assert_eq!((h.gso_size, h.hdr_len, h.csum_offset), (300, 28, 6));
    assert_eq!(
        usize::from(u16::from_be_bytes([p[24], p[25]])),
        p.len() - 20
    );
    assert_partial_checksum_completes(h, p);

    let out = run(&d, false);
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|(h, _)| *h == plain()));
}

#[test]
fn garbage_and_non_ip_packets_are_written_untouched() {
    let junk = vec![vec![0xff; 3], vec![0x45; 30], vec![0x60; 10]];
    let out = run(&junk, true);
    assert_eq!(out.len(), 3);
    for ((h, p), orig) in out.iter().zip(&junk) {
        assert_eq!(*h, plain());
        assert_eq!(p, orig);
    }
}

#[test]
fn checksum_helpers_match_a_known_ipv4_header() {
    // RFC 1071-style example: a header whose checksum field is 0xb861.
    let h = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(fold(sum16(&h, 0)), 0xffff);
    assert_eq!(
        fold(sum16(&[0x01], 0)),
        0x0100,
        "odd trailing byte is the high half"
    );
}
