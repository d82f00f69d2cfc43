use super::*;
use proptest::prelude::*;

fn key(b: u8) -> NodePublic {
    NodePublic::from_bytes([b; 32])
}

const LIMIT: usize = 1 << 20;

#[test]
fn the_server_key_frame_is_derps_bytes() {
    let f = Frame::ServerKey { key: key(0xab) }.to_vec();
    // type 1, length 40, "DERP🔑", the key.
    assert_eq!(&f[..5], &[0x01, 0, 0, 0, 40]);
    assert_eq!(&f[5..13], &[0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91]);
    assert_eq!(&f[13..], &[0xab; 32]);
}

#[test]
fn a_send_packet_frame_is_type_length_key_packet() {
    let mut out = Vec::new();
    encode_send_packet(&mut out, &key(7), b"hello").unwrap();
    assert_eq!(&out[..5], &[0x04, 0, 0, 0, 37]);
    assert_eq!(&out[5..37], &[7; 32]);
    assert_eq!(&out[37..], b"hello");
    assert_eq!(out.len(), packet_frame_len(5));
}

#[test]
fn a_packet_over_64k_is_refused_both_ways() {
    let big = vec![0u8; MAX_PACKET_SIZE + 1];
    let mut out = Vec::new();
    assert_eq!(
        encode_send_packet(&mut out, &key(1), &big),
        Err(FrameError::PacketTooLarge {
            len: MAX_PACKET_SIZE + 1
        })
    );
    assert!(out.is_empty(), "nothing written");
    let frame = Frame::SendPacket {
        dst: key(1),
        packet: &big,
    }
    .to_vec();
    assert_eq!(
        Frame::decode(&frame, LIMIT),
        Err(FrameError::PacketTooLarge {
            len: MAX_PACKET_SIZE + 1
        })
    );
    let ok = vec![0u8; MAX_PACKET_SIZE];
    let frame = Frame::RecvPacket {
        src: key(1),
        packet: &ok,
    }
    .to_vec();
    assert!(Frame::decode(&frame, LIMIT).unwrap().is_some());
}

#[test]
fn an_oversized_length_is_refused_from_the_header_alone() {
    // Only the 5 header bytes: the reader must not wait for 4 GiB.
    let header = [0x04, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        peek_header(&header, 300_000),
        Err(FrameError::TooLong {
            frame_type: 0x04,
            len: 0xffff_ffff,
            max: 300_000
        })
    );
}

#[test]
fn truncated_frames_ask_for_more_bytes() {
    let f = Frame::Ping { data: [3; 8] }.to_vec();
    for cut in 0..f.len() {
        assert_eq!(Frame::decode(&f[..cut], LIMIT), Ok(None), "cut at {cut}");
    }
    assert_eq!(
        Frame::decode(&f, LIMIT),
        Ok(Some((Frame::Ping { data: [3; 8] }, 13)))
    );
}

#[test]
fn two_frames_in_one_buffer_decode_one_after_the_other() {
    let mut buf = Frame::KeepAlive.to_vec();
    buf.extend(Frame::NotePreferred { preferred: true }.to_vec());
    let (a, n) = Frame::decode(&buf, LIMIT).unwrap().unwrap();
    assert_eq!((a, n), (Frame::KeepAlive, 5));
    let (b, m) = Frame::decode(&buf[n..], LIMIT).unwrap().unwrap();
    assert_eq!((b, m), (Frame::NotePreferred { preferred: true }, 6));
}

#[test]
fn short_payloads_are_errors_and_unknown_types_are_skipped() {
    assert_eq!(
        Frame::parse(0x04, &[0; 31]),
        Err(FrameError::TooShort {
            frame_type: FrameType::SendPacket,
            len: 31
        })
    );
    assert_eq!(
        Frame::parse(0x07, &[1, 1]),
        Err(FrameError::BadLength {
            frame_type: FrameType::NotePreferred,
            len: 2
        })
    );
    assert_eq!(Frame::parse(0x12, &[0; 7]).err().map(|_| ()), Some(()));
    assert_eq!(
        Frame::parse(0x01, &[0; 40]),
        Err(FrameError::BadMagic),
        "a greeting without the magic"
    );
    assert_eq!(
        Frame::parse(0x42, &[1, 2, 3]),
        Ok(Frame::Unknown { frame_type: 0x42 })
    );
}

#[test]
fn older_and_newer_peers_optional_bytes_are_read_as_derp_reads_them() {
    // PeerGone without a reason byte (old servers): Disconnected.
    assert_eq!(
        Frame::parse(0x08, &[5; 32]),
        Ok(Frame::PeerGone {
            peer: key(5),
            reason: PeerGoneReason::Disconnected
        })
    );
    // PeerPresent: key only, then with IPv4-mapped address, then flags.
    assert_eq!(
        Frame::parse(0x09, &[5; 32]),
        Ok(Frame::PeerPresent {
            peer: key(5),
            addr: None,
            flags: None
        })
    );
    let mut p = vec![5u8; 32];
    p.extend_from_slice(&[
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 1, 0x0d, 0x05,
    ]);
    p.push(0x01);
    assert_eq!(
        Frame::parse(0x09, &p),
        Ok(Frame::PeerPresent {
            peer: key(5),
            addr: Some("198.18.0.1:3333".parse().unwrap()),
            flags: Some(1)
        })
    );
    // A longer greeting: extra bytes are for future use.
    let mut g = Frame::ServerKey { key: key(1) }.to_vec()[5..].to_vec();
    g.extend_from_slice(b"future");
    assert_eq!(Frame::parse(0x01, &g), Ok(Frame::ServerKey { key: key(1) }));
    // A ping with more than 8 bytes echoes the first 8.
    assert_eq!(
        Frame::parse(0x12, &[9; 20]),
        Ok(Frame::Ping { data: [9; 8] })
    );
}

fn any_key() -> impl Strategy<Value = NodePublic> {
    any::<[u8; 32]>().prop_map(NodePublic::from_bytes)
}

/// Owned frame content, to generate frames that borrow it.
#[derive(Debug, Clone)]
enum Owned {
    ServerKey(NodePublic),
    ClientInfo(NodePublic, Vec<u8>),
    ServerInfo(Vec<u8>),
    Send(NodePublic, Vec<u8>),
    Recv(NodePublic, Vec<u8>),
    KeepAlive,
    Preferred(bool),
    Gone(NodePublic, u8),
    Present(NodePublic, Option<(SocketAddr, Option<u8>)>),
    Forward(NodePublic, NodePublic, Vec<u8>),
    Watch,
    Close(NodePublic),
    Ping([u8; 8]),
    Pong([u8; 8]),
    Health(Vec<u8>),
    Restarting(u32, u32),
}

impl Owned {
    fn frame(&self) -> Frame<'_> {
        match self {
            Owned::ServerKey(k) => Frame::ServerKey { key: *k },
            Owned::ClientInfo(k, s) => Frame::ClientInfo { key: *k, sealed: s },
            Owned::ServerInfo(s) => Frame::ServerInfo { sealed: s },
            Owned::Send(k, p) => Frame::SendPacket { dst: *k, packet: p },
            Owned::Recv(k, p) => Frame::RecvPacket { src: *k, packet: p },
            Owned::KeepAlive => Frame::KeepAlive,
            Owned::Preferred(b) => Frame::NotePreferred { preferred: *b },
            Owned::Gone(k, r) => Frame::PeerGone {
                peer: *k,
                reason: PeerGoneReason::from_u8(*r),
            },
            Owned::Present(k, a) => Frame::PeerPresent {
                peer: *k,
                addr: a.map(|(a, _)| a),
                flags: a.and_then(|(_, f)| f),
            },
            Owned::Forward(s, d, p) => Frame::ForwardPacket {
                src: *s,
                dst: *d,
                packet: p,
            },
            Owned::Watch => Frame::WatchConns,
            Owned::Close(k) => Frame::ClosePeer { peer: *k },
            Owned::Ping(d) => Frame::Ping { data: *d },
            Owned::Pong(d) => Frame::Pong { data: *d },
            Owned::Health(t) => Frame::Health { problem: t },
            Owned::Restarting(a, b) => Frame::Restarting {
                reconnect_in: Duration::from_millis(u64::from(*a)),
                try_for: Duration::from_millis(u64::from(*b)),
            },
        }
    }
}

fn any_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(i, p)| SocketAddr::from((i, p))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_filter("not v4-mapped", |(i, _)| Ipv6Addr::from(*i)
                .to_ipv4_mapped()
                .is_none())
            .prop_map(|(i, p)| SocketAddr::from((i, p))),
    ]
}

fn any_owned() -> impl Strategy<Value = Owned> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        any_key().prop_map(Owned::ServerKey),
        (any_key(), proptest::collection::vec(any::<u8>(), 24..200))
            .prop_map(|(k, s)| Owned::ClientInfo(k, s)),
        proptest::collection::vec(any::<u8>(), 24..200).prop_map(Owned::ServerInfo),
        (any_key(), bytes()).prop_map(|(k, p)| Owned::Send(k, p)),
        (any_key(), bytes()).prop_map(|(k, p)| Owned::Recv(k, p)),
        Just(Owned::KeepAlive),
        any::<bool>().prop_map(Owned::Preferred),
        (any_key(), 0u8..4).prop_map(|(k, r)| Owned::Gone(k, r)),
        (
            any_key(),
            proptest::option::of((any_addr(), proptest::option::of(any::<u8>())))
        )
            .prop_map(|(k, a)| Owned::Present(k, a)),
        (any_key(), any_key(), bytes()).prop_map(|(s, d, p)| Owned::Forward(s, d, p)),
        Just(Owned::Watch),
        any_key().prop_map(Owned::Close),
        any::<[u8; 8]>().prop_map(Owned::Ping),
        any::<[u8; 8]>().prop_map(Owned::Pong),
        bytes().prop_map(Owned::Health),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Owned::Restarting(a, b)),
    ]
}

proptest! {
    #[test]
    fn every_frame_round_trips(o in any_owned()) {
        let frame = o.frame();
        let bytes = frame.to_vec();
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        prop_assert_eq!(Frame::decode(&bytes, LIMIT), Ok(Some((frame, bytes.len()))));
    }

    #[test]
    fn decoding_garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400), max in 0usize..2000) {
        let mut at = 0;
        // Walk the buffer as a reader would, frame after frame.
        while let Ok(Some((_, n))) = Frame::decode(&b[at..], max) {
            at += n;
        }
    }

    #[test]
    fn damaged_frames_never_panic(o in any_owned(), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..5)) {
        let mut bytes = o.frame().to_vec();
        for (i, v) in edits {
            let i = i % bytes.len();
            bytes[i] = v;
        }
        let _ = Frame::decode(&bytes, LIMIT);
    }
}
