//! The STUN server on loopback, both families, with weft-disco's codec as
//! the client.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use weft_disco::stun::{self as codec, TxId};
use weft_relay::stun::{StunStats, bind, serve};

use super::*;

async fn ask(server: SocketAddr, client: &UdpSocket, tx: [u8; 12]) -> SocketAddr {
    let mut req = [0u8; codec::BINDING_REQUEST_LEN];
    let n = codec::write_binding_request(TxId(tx), &mut req).unwrap();
    client.send_to(&req[..n], server).await.unwrap();
    let mut buf = [0u8; 1500];
    let (len, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
        .await
        .expect("no STUN answer")
        .unwrap();
    assert_eq!(from, server);
    let (got, addr) = codec::parse_binding_response(&buf[..len]).unwrap();
    assert_eq!(got, TxId(tx));
    addr
}

#[tokio::test]
async fn binding_requests_are_answered_with_the_source_in_both_families() {
    let stop = CancellationToken::new();
    let stats = Arc::new(StunStats::default());
    for (server_addr, client_addr) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
        let Ok(sock) = bind(server_addr.parse().unwrap()) else {
            // A machine without IPv6 loopback: the IPv4 half still ran.
            eprintln!("no {server_addr}; skipping that family");
            continue;
        };
        let server = sock.local_addr().unwrap();
        tokio::spawn(serve(sock, stats.clone(), stop.clone()));
        let client = UdpSocket::bind(client_addr).await.unwrap();
        let mine = client.local_addr().unwrap();
        assert_eq!(ask(server, &client, [1; 12]).await, mine);
        assert_eq!(ask(server, &client, [2; 12]).await, mine);
    }
    assert!(stats.snapshot().answered >= 2);
    stop.cancel();
}

#[tokio::test]
async fn garbage_is_dropped_and_counted_by_kind() {
    let stop = CancellationToken::new();
    let stats = Arc::new(StunStats::default());
    let sock = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let server = sock.local_addr().unwrap();
    tokio::spawn(serve(sock, stats.clone(), stop.clone()));
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Not STUN; STUN with a broken fingerprint; a Binding response (not a
    // request).
    client
        .send_to(b"hello there, stranger", server)
        .await
        .unwrap();
    let mut req = [0u8; codec::BINDING_REQUEST_LEN];
    codec::write_binding_request(TxId([3; 12]), &mut req).unwrap();
    let mut broken = req;
    broken[codec::BINDING_REQUEST_LEN - 1] ^= 1;
    client.send_to(&broken, server).await.unwrap();
    let mut resp = [0u8; codec::MAX_BINDING_RESPONSE_LEN];
    let n = codec::write_binding_response(TxId([4; 12]), server, &mut resp).unwrap();
    client.send_to(&resp[..n], server).await.unwrap();
    // A good one still gets its answer after all that.
    assert_eq!(
        ask(server, &client, [5; 12]).await,
        client.local_addr().unwrap()
    );
    let s = stats.snapshot();
    assert_eq!(
        (s.not_stun, s.malformed, s.not_binding, s.answered),
        (1, 1, 1, 1)
    );
    stop.cancel();
}
