use super::*;

fn keys() -> (NodePrivate, NodePrivate) {
    (
        NodePrivate::from_bytes([1; 32]),
        NodePrivate::from_bytes([2; 32]),
    )
}

fn sealed_of(frame: &[u8]) -> (NodePublic, Vec<u8>) {
    match Frame::decode(frame, 1 << 20).unwrap().unwrap().0 {
        Frame::ClientInfo { key, sealed } => (key, sealed.to_vec()),
        other => panic!("not ClientInfo: {other:?}"),
    }
}

#[test]
fn client_info_opens_with_the_server_key_and_names_the_client() {
    let (server, client) = keys();
    let frame = seal_client_info(&client, &server.public(), [7; 24], &ClientInfo::weft()).unwrap();
    let (key, sealed) = sealed_of(&frame);
    assert_eq!(key, client.public());
    assert_eq!(&sealed[..24], &[7; 24], "the nonce leads the box");
    assert_eq!(
        open_client_info(&server, &key, &sealed).unwrap(),
        ClientInfo::weft()
    );
}

#[test]
fn the_json_inside_has_derps_field_names() {
    let (server, client) = keys();
    let info = ClientInfo {
        version: 2,
        can_ack_pings: true,
        is_prober: true,
        app_name: None,
        has_mesh_key: false,
    };
    let frame = seal_client_info(&client, &server.public(), [7; 24], &info).unwrap();
    let (key, sealed) = sealed_of(&frame);
    let plain = LoginBox::new(&server, &key).unwrap().open(&sealed).unwrap();
    assert_eq!(
        String::from_utf8(plain).unwrap(),
        r#"{"version":2,"CanAckPings":true,"IsProber":true}"#
    );
}

#[test]
fn a_client_info_from_go_with_a_mesh_key_is_read() {
    // What derp.Client marshals with a mesh key and an app name.
    let (server, client) = keys();
    let json = br#"{"meshKey":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","version":2,"CanAckPings":false,"AppName":"derpprobe"}"#;
    let b = LoginBox::new(&client, &server.public()).unwrap();
    let sealed = b.seal([3; 24], json);
    let info = open_client_info(&server, &client.public(), &sealed).unwrap();
    assert!(info.has_mesh_key);
    assert_eq!(info.app_name.as_deref(), Some("derpprobe"));
    assert!(!info.can_ack_pings);
}

#[test]
fn a_client_info_sealed_to_the_wrong_key_does_not_open() {
    let (server, client) = keys();
    let wrong = NodePrivate::from_bytes([3; 32]);
    let frame = seal_client_info(&client, &wrong.public(), [7; 24], &ClientInfo::weft()).unwrap();
    let (key, sealed) = sealed_of(&frame);
    assert_eq!(
        open_client_info(&server, &key, &sealed),
        Err(LoginError::Unauthenticated)
    );
}

#[test]
fn a_tampered_or_truncated_box_does_not_open() {
    let (server, client) = keys();
    let frame = seal_client_info(&client, &server.public(), [7; 24], &ClientInfo::weft()).unwrap();
    let (key, mut sealed) = sealed_of(&frame);
    for cut in [0, 10, 24, 39] {
        assert_eq!(
            open_client_info(&server, &key, &sealed[..cut]),
            Err(LoginError::Unauthenticated)
        );
    }
    let last = sealed.len() - 1;
    sealed[last] ^= 1;
    assert_eq!(
        open_client_info(&server, &key, &sealed),
        Err(LoginError::Unauthenticated)
    );
}

#[test]
fn a_box_that_opens_but_holds_no_json_object_is_refused() {
    let (server, client) = keys();
    let b = LoginBox::new(&client, &server.public()).unwrap();
    let sealed = b.seal([3; 24], b"[1,2]");
    assert!(matches!(
        open_client_info(&server, &client.public(), &sealed),
        Err(LoginError::BadJson(_))
    ));
}

#[test]
fn server_info_round_trips_and_proves_the_server_key() {
    let (server, client) = keys();
    let frame = seal_server_info(
        &server,
        &client.public(),
        [9; 24],
        &ServerInfo {
            version: 2,
            ..ServerInfo::default()
        },
    )
    .unwrap();
    let Frame::ServerInfo { sealed } = Frame::decode(&frame, 1 << 20).unwrap().unwrap().0 else {
        panic!("not ServerInfo");
    };
    let plain = LoginBox::new(&client, &server.public())
        .unwrap()
        .open(sealed)
        .unwrap();
    assert_eq!(plain, br#"{"version":2}"#);
    assert_eq!(
        open_server_info(&client, &server.public(), sealed)
            .unwrap()
            .version,
        2
    );
    // An impostor server that announced someone else's key cannot make it.
    let impostor = NodePrivate::from_bytes([4; 32]);
    assert_eq!(
        open_server_info(&client, &impostor.public(), sealed),
        Err(LoginError::Unauthenticated)
    );
}

#[test]
fn low_order_keys_are_refused_on_both_sides() {
    let (server, client) = keys();
    let zero = NodePublic::from_bytes([0; 32]);
    assert_eq!(
        seal_client_info(&client, &zero, [0; 24], &ClientInfo::weft()),
        Err(LoginError::WeakKey)
    );
    assert_eq!(
        open_client_info(&server, &zero, &[0; 64]),
        Err(LoginError::WeakKey)
    );
}
