use super::*;
use proptest::prelude::*;

/// Hex with spaces and line breaks, as RFC 5769 prints it, to bytes.
fn hex(s: &str) -> Vec<u8> {
    let digits: String = s.chars().filter(char::is_ascii_hexdigit).collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

const RFC5769_TX: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// RFC 5769 §2.1 "Sample Request": Binding request with SOFTWARE, PRIORITY,
/// ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
const RFC5769_REQUEST: &str = "
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf";

/// RFC 5769 §2.2 "Sample IPv4 Response": XOR-MAPPED-ADDRESS 192.0.2.1:32853.
const RFC5769_IPV4_RESPONSE: &str = "
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96";

/// RFC 5769 §2.3 "Sample IPv6 Response": XOR-MAPPED-ADDRESS
/// [2001:db8:1234:5678:11:2233:4455:6677]:32853.
const RFC5769_IPV6_RESPONSE: &str = "
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c";

fn request(tx: [u8; 12]) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let n = write_binding_request(TxId(tx), &mut buf).unwrap();
    buf[..n].to_vec()
}

fn response(tx: [u8; 12], addr: SocketAddr) -> Vec<u8> {
    let mut buf = [0u8; MAX_BINDING_RESPONSE_LEN];
    let n = write_binding_response(TxId(tx), addr, &mut buf).unwrap();
    buf[..n].to_vec()
}

// --- the client's request ---------------------------------------------------

#[test]
fn a_request_is_what_tailscale_sends() {
    let tx = [7u8; 12];
    let req = request(tx);
    assert_eq!(req.len(), BINDING_REQUEST_LEN);
    // net/stun.Request: Binding request, 20 bytes of attributes, the cookie,
    // the id, SOFTWARE "tailnode", then FINGERPRINT.
    assert_eq!(&req[..8], &[0x00, 0x01, 0x00, 0x14, 0x21, 0x12, 0xa4, 0x42]);
    assert_eq!(&req[8..20], &tx);
    assert_eq!(&req[20..24], &[0x80, 0x22, 0x00, 0x08]);
    assert_eq!(&req[24..32], b"tailnode");
    assert_eq!(&req[32..36], &[0x80, 0x28, 0x00, 0x04]);
    let crc = crc32fast::hash(&req[..32]) ^ 0x5354_554e;
    assert_eq!(&req[36..40], &crc.to_be_bytes());

    let msg = parse(&req).unwrap();
    assert!(msg.is_binding_request());
    assert_eq!(msg.tx_id, TxId(tx));
    assert_eq!(msg.software, Some(&b"tailnode"[..]));
    assert!(msg.fingerprint);
    assert!(!msg.integrity);
}

#[test]
fn a_short_buffer_is_refused_without_writing_past_it() {
    let mut small = [0u8; BINDING_REQUEST_LEN - 1];
    assert_eq!(
        write_binding_request(TxId([1; 12]), &mut small),
        Err(StunError::BufferTooSmall {
            needed: BINDING_REQUEST_LEN
        })
    );
    let mut small = [0u8; 40];
    let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
    assert_eq!(
        write_binding_response(TxId([1; 12]), v6, &mut small),
        Err(StunError::BufferTooSmall { needed: 52 })
    );
}

// --- the server's answer ----------------------------------------------------

#[test]
fn the_answer_names_the_source_address_in_both_families() {
    for from in ["198.18.0.7:41641", "[fd7a:115c:a1e0::5]:3478"] {
        let from: SocketAddr = from.parse().unwrap();
        let req = request([9; 12]);
        let mut out = [0u8; MAX_BINDING_RESPONSE_LEN];
        let n = answer_binding_request(&req, from, &mut out).unwrap();
        assert_eq!(parse_binding_response(&out[..n]), Ok((TxId([9; 12]), from)));
        let msg = parse(&out[..n]).unwrap();
        assert_eq!(msg.class, Class::Success);
        assert!(msg.fingerprint);
        assert_eq!(msg.mapped_address, None, "only the XOR form is sent");
    }
}

#[test]
fn a_dual_stack_socket_source_is_answered_as_ipv4() {
    let mapped: SocketAddr = "[::ffff:198.18.1.2]:5000".parse().unwrap();
    let resp = response([3; 12], mapped);
    assert_eq!(resp.len(), 20 + 12 + 8);
    let (_, addr) = parse_binding_response(&resp).unwrap();
    assert_eq!(addr, "198.18.1.2:5000".parse::<SocketAddr>().unwrap());
}

#[test]
fn only_binding_requests_are_answered() {
    let mut out = [0u8; MAX_BINDING_RESPONSE_LEN];
    let from: SocketAddr = "198.18.0.1:1".parse().unwrap();
    // A response is not a request.
    let resp = response([1; 12], from);
    assert_eq!(
        answer_binding_request(&resp, from, &mut out),
        Err(StunError::Unexpected {
            class: Class::Success,
            method: METHOD_BINDING
        })
    );
    // An Allocate request (TURN, method 0x003) is not a Binding request.
    let mut alloc = request([1; 12]);
    alloc[1] = 0x03;
    fix_fingerprint(&mut alloc);
    assert!(matches!(
        answer_binding_request(&alloc, from, &mut out),
        Err(StunError::Unexpected { method: 0x003, .. })
    ));
}

// --- RFC 5769 test vectors ----------------------------------------------------

#[test]
fn the_rfc5769_request_is_a_binding_request_we_answer() {
    let req = hex(RFC5769_REQUEST);
    let msg = parse(&req).unwrap();
    assert!(msg.is_binding_request());
    assert_eq!(msg.tx_id, TxId(RFC5769_TX));
    assert_eq!(msg.software, Some(&b"STUN test client"[..]));
    assert!(msg.fingerprint, "the vector's FINGERPRINT checks out");
    assert!(msg.integrity);
    let from: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    let mut out = [0u8; MAX_BINDING_RESPONSE_LEN];
    let n = answer_binding_request(&req, from, &mut out).unwrap();
    assert_eq!(
        parse_binding_response(&out[..n]),
        Ok((TxId(RFC5769_TX), from))
    );
}

#[test]
fn the_rfc5769_responses_give_their_addresses() {
    let v4 = hex(RFC5769_IPV4_RESPONSE);
    assert_eq!(
        parse_binding_response(&v4),
        Ok((TxId(RFC5769_TX), "192.0.2.1:32853".parse().unwrap()))
    );
    let msg = parse(&v4).unwrap();
    assert_eq!(msg.software, Some(&b"test vector"[..]));
    assert!(msg.fingerprint && msg.integrity);

    let v6 = hex(RFC5769_IPV6_RESPONSE);
    assert_eq!(
        parse_binding_response(&v6),
        Ok((
            TxId(RFC5769_TX),
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        ))
    );
}

#[test]
fn our_encoding_of_the_rfc5769_address_is_the_vectors() {
    // The XOR-MAPPED-ADDRESS values of §2.2 and §2.3, from our encoder.
    let v4 = response(RFC5769_TX, "192.0.2.1:32853".parse().unwrap());
    assert_eq!(&v4[20..32], &hex("00 20 00 08 00 01 a1 47 e1 12 a6 43")[..]);
    let v6 = response(
        RFC5769_TX,
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap(),
    );
    assert_eq!(
        &v6[20..44],
        &hex("00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9")[..]
    );
}

// --- strictness ---------------------------------------------------------------

/// Recomputes the FINGERPRINT of a message we edited on purpose.
fn fix_fingerprint(m: &mut [u8]) {
    let at = m.len() - 8;
    let crc = crc32fast::hash(&m[..at]) ^ 0x5354_554e;
    m[at + 4..].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn other_protocols_on_the_socket_are_not_stun() {
    // WireGuard handshake initiation, disco, a DNS query.
    let wg = [
        1u8, 0, 0, 0, 9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut disco = crate::MAGIC.to_vec();
    disco.resize(80, 0);
    for b in [&wg[..], &disco[..], &[0x12, 0x34, 1, 0][..], &[][..]] {
        assert!(!is_stun(b));
        assert_eq!(parse(b), Err(StunError::NotStun));
    }
    let mut bad_cookie = request([1; 12]);
    bad_cookie[7] ^= 1;
    assert_eq!(parse(&bad_cookie), Err(StunError::NotStun));
}

#[test]
fn the_length_field_must_cover_exactly_the_datagram() {
    let req = request([1; 12]);
    assert_eq!(parse(&req[..req.len() - 4]), Err(StunError::BadLength));
    let mut longer = req.clone();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(parse(&longer), Err(StunError::BadLength));
    let mut odd = req;
    odd[3] = 0x13;
    assert_eq!(parse(&odd), Err(StunError::BadLength));
}

#[test]
fn a_wrong_or_misplaced_fingerprint_is_refused() {
    let mut req = request([1; 12]);
    let last = req.len() - 1;
    req[last] ^= 0x80;
    assert_eq!(parse(&req), Err(StunError::BadFingerprint));

    // A SOFTWARE attribute after the FINGERPRINT.
    let mut after = request([1; 12]);
    after.extend_from_slice(&[0x80, 0x22, 0x00, 0x04, b'a', b'b', b'c', b'd']);
    after[3] += 8;
    assert_eq!(parse(&after), Err(StunError::BadFingerprint));
}

#[test]
fn attributes_must_fit_and_have_their_sizes() {
    // XOR-MAPPED-ADDRESS of family 3.
    let mut resp = response([2; 12], "198.18.0.1:1".parse().unwrap());
    resp[25] = 3;
    fix_fingerprint(&mut resp);
    assert_eq!(parse(&resp), Err(StunError::BadAttribute(0x0020)));
    // IPv4 family with an IPv6-sized value.
    let mut resp = response([2; 12], "[2001:db8::1]:1".parse().unwrap());
    resp[25] = 1;
    fix_fingerprint(&mut resp);
    assert_eq!(parse(&resp), Err(StunError::BadAttribute(0x0020)));
    // An attribute length running past the end.
    let mut req = request([1; 12]);
    req[23] = 0x40;
    assert_eq!(parse(&req), Err(StunError::BadAttribute(0x8022)));
}

#[test]
fn unknown_comprehension_required_attributes_are_refused_optional_ones_skipped() {
    let tx = [5u8; 12];
    let build = |ty: u16| {
        let mut m = request(tx);
        let at = m.len() - 8;
        let mut extra = ty.to_be_bytes().to_vec();
        extra.extend_from_slice(&[0, 4, 1, 2, 3, 4]);
        m.splice(at..at, extra);
        let len = (m.len() - HEADER_LEN) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        fix_fingerprint(&mut m);
        m
    };
    assert_eq!(
        parse(&build(0x7f01)),
        Err(StunError::UnknownRequiredAttribute(0x7f01))
    );
    assert!(parse(&build(0xc057)).unwrap().is_binding_request());
}

#[test]
fn an_error_response_is_not_an_address() {
    // Binding error response 420 with no address.
    let mut m = vec![0x01, 0x11, 0, 8];
    m.extend_from_slice(&MAGIC_COOKIE);
    m.extend_from_slice(&[4; 12]);
    m.extend_from_slice(&[0x00, 0x09, 0x00, 0x04, 0, 0, 4, 20]);
    let msg = parse(&m).unwrap();
    assert_eq!((msg.class, msg.error_code), (Class::Error, Some(420)));
    assert_eq!(
        parse_binding_response(&m),
        Err(StunError::Unexpected {
            class: Class::Error,
            method: METHOD_BINDING
        })
    );
}

#[test]
fn mapped_address_is_the_fallback_of_an_old_server() {
    let mut m = vec![0x01, 0x01, 0, 12];
    m.extend_from_slice(&MAGIC_COOKIE);
    m.extend_from_slice(&[4; 12]);
    m.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0, 1, 0x1f, 0x90, 198, 18, 3, 4]);
    assert_eq!(
        parse_binding_response(&m),
        Ok((TxId([4; 12]), "198.18.3.4:8080".parse().unwrap()))
    );
    m[19] = 5;
    m[3] = 0;
    m.truncate(20);
    assert_eq!(parse_binding_response(&m), Err(StunError::NoAddress));
}

#[test]
fn method_and_class_bits_interleave_as_the_rfc_draws_them() {
    // RFC 8489 §5: 0x0001 Binding request, 0x0111 Binding error response,
    // 0x0101 success, 0x0011 indication; 0x0fff spreads all 12 method bits.
    assert_eq!(split_type(0x0001), (1, Class::Request));
    assert_eq!(split_type(0x0011), (1, Class::Indication));
    assert_eq!(split_type(0x0101), (1, Class::Success));
    assert_eq!(split_type(0x0111), (1, Class::Error));
    for m in [0u16, 1, 0x0fff, 0x0abc] {
        for c in [
            Class::Request,
            Class::Indication,
            Class::Success,
            Class::Error,
        ] {
            assert_eq!(split_type(join_type(m, c)), (m, c));
        }
    }
}

// --- properties, and stun_codec as the oracle -------------------------------

fn any_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(Ipv4Addr::from(ip).into(), p)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_filter("not v4-mapped", |(ip, _)| Ipv6Addr::from(*ip)
                .to_ipv4_mapped()
                .is_none())
            .prop_map(|(ip, p)| SocketAddr::new(Ipv6Addr::from(ip).into(), p)),
    ]
}

mod oracle {
    pub use bytecodec::{DecodeExt as _, EncodeExt as _};
    pub use stun_codec::rfc5389::Attribute;
    pub use stun_codec::rfc5389::attributes::{Fingerprint, Software, XorMappedAddress};
    pub use stun_codec::rfc5389::methods::BINDING;
    pub use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};
}

proptest! {
    #[test]
    fn parse_never_panics_on_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse(&b);
        let _ = parse_binding_response(&b);
        let mut out = [0u8; MAX_BINDING_RESPONSE_LEN];
        let _ = answer_binding_request(&b, "198.18.0.1:1".parse().unwrap(), &mut out);
    }

    #[test]
    fn parse_never_panics_on_damaged_messages(
        tx in any::<[u8; 12]>(),
        addr in any_addr(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        // Garbled stunning look-alikes: valid header, bytes changed, maybe cut.
        for mut m in [request(tx), response(tx, addr)] {
            for (at, v) in &edits {
                let i = at % m.len();
                if i >= 8 { m[i] = *v; }
            }
            let keep = HEADER_LEN + cut % (m.len() - HEADER_LEN + 1);
            let _ = parse(&m[..keep]);
            let _ = parse(&m);
        }
    }

    #[test]
    fn responses_round_trip(tx in any::<[u8; 12]>(), addr in any_addr()) {
        prop_assert_eq!(parse_binding_response(&response(tx, addr)), Ok((TxId(tx), addr)));
    }

    #[test]
    fn stun_codec_reads_our_messages(tx in any::<[u8; 12]>(), addr in any_addr()) {
        use oracle::*;
        let mut dec = MessageDecoder::<Attribute>::new();
        let resp = dec.decode_from_bytes(&response(tx, addr)).unwrap().unwrap();
        prop_assert_eq!(resp.class(), MessageClass::SuccessResponse);
        prop_assert_eq!(resp.method(), BINDING);
        prop_assert_eq!(*resp.transaction_id().as_bytes(), tx);
        prop_assert_eq!(resp.get_attribute::<XorMappedAddress>().unwrap().address(), addr);
        prop_assert!(resp.get_attribute::<Fingerprint>().is_some());

        let mut dec = MessageDecoder::<Attribute>::new();
        let req = dec.decode_from_bytes(&request(tx)).unwrap().unwrap();
        prop_assert_eq!(req.class(), MessageClass::Request);
        prop_assert_eq!(req.get_attribute::<Software>().unwrap().description(), "tailnode");
    }

    #[test]
    fn we_read_stun_codec_messages(tx in any::<[u8; 12]>(), addr in any_addr(), fp in any::<bool>()) {
        use oracle::*;
        let mut m = Message::<Attribute>::new(
            MessageClass::SuccessResponse, BINDING, TransactionId::new(tx));
        m.add_attribute(XorMappedAddress::new(addr));
        if fp {
            let f = Fingerprint::new(&m).unwrap();
            m.add_attribute(f);
        }
        let bytes = MessageEncoder::new().encode_into_bytes(m).unwrap();
        prop_assert_eq!(parse_binding_response(&bytes), Ok((TxId(tx), addr)));
        prop_assert_eq!(parse(&bytes).unwrap().fingerprint, fp);

        let mut r = Message::<Attribute>::new(MessageClass::Request, BINDING, TransactionId::new(tx));
        r.add_attribute(Software::new("weft".to_owned()).unwrap());
        let f = Fingerprint::new(&r).unwrap();
        r.add_attribute(f);
        let bytes = MessageEncoder::new().encode_into_bytes(r).unwrap();
        let mut out = [0u8; MAX_BINDING_RESPONSE_LEN];
        let n = answer_binding_request(&bytes, addr, &mut out).unwrap();
        prop_assert_eq!(parse_binding_response(&out[..n]), Ok((TxId(tx), addr)));
    }
}
