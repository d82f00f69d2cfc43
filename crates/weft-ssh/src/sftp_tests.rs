//! The built-in SFTP server driven with raw SFTP packets over an in-memory pipe, in a
//! temporary directory: requests a client sends, then input no client should send.

use std::collections::HashMap;

use bytes::Bytes;
use russh_sftp::protocol::{
    FileAttributes, Init, Open, OpenFlags, Packet, Read, Stat, StatusCode, Write,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

struct Client {
    io: DuplexStream,
}

impl Client {
    fn start() -> Client {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(theirs));
        Client { io: ours }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn call(&mut self, p: impl Into<Packet>) -> Packet {
        let bytes = Bytes::try_from(p.into()).unwrap();
        self.send_raw(&bytes).await;
        self.reply().await
    }

    async fn reply(&mut self) -> Packet {
        let len = self.io.read_u32().await.unwrap();
        let mut buf = vec![0; len as usize];
        self.io.read_exact(&mut buf).await.unwrap();
        Packet::try_from(&mut Bytes::from(buf)).unwrap()
    }
}

fn status(p: &Packet) -> Option<StatusCode> {
    match p {
        Packet::Status(s) => Some(s.status_code),
        _ => None,
    }
}

async fn open(c: &mut Client, path: &Path, flags: OpenFlags) -> String {
    match c
        .call(Open {
            id: 2,
            filename: path.display().to_string(),
            pflags: flags,
            attrs: FileAttributes::empty(),
        })
        .await
    {
        Packet::Handle(h) => h.handle,
        other => panic!("open: {other:?}"),
    }
}

#[tokio::test]
async fn init_advertises_the_openssh_extensions_clients_use() {
    let mut c = Client::start();
    let Packet::Version(v) = c
        .call(Init {
            version: 3,
            extensions: HashMap::new(),
        })
        .await
    else {
        panic!("no version");
    };
    assert_eq!(v.version, 3);
    for ext in [
        "posix-rename@openssh.com",
        "statvfs@openssh.com",
        "expand-path@openssh.com",
    ] {
        assert!(v.extensions.contains_key(ext), "{ext}");
    }
}

#[tokio::test]
async fn a_written_file_reads_back_and_a_huge_read_is_cut_to_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let mut c = Client::start();
    let h = open(
        &mut c,
        &path,
        OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
    )
    .await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for (i, chunk) in data.chunks(32 * 1024).enumerate() {
        let r = c
            .call(Write {
                id: 10 + i as u32,
                handle: h.clone(),
                offset: (i * 32 * 1024) as u64,
                data: chunk.to_vec(),
            })
            .await;
        assert_eq!(status(&r), Some(StatusCode::Ok));
    }
    let h = open(&mut c, &path, OpenFlags::READ).await;
    let Packet::Data(d) = c
        .call(Read {
            id: 3,
            handle: h.clone(),
            offset: 0,
            len: u32::MAX,
        })
        .await
    else {
        panic!("no data");
    };
    assert_eq!(d.data.len(), data.len().min(MAX_READ as usize));
    assert_eq!(d.data[..], data[..d.data.len()]);
    let r = c
        .call(Read {
            id: 4,
            handle: h,
            offset: 1 << 40,
            len: 10,
        })
        .await;
    assert_eq!(status(&r), Some(StatusCode::Eof));
}

#[tokio::test]
async fn errors_map_to_sftp_status_codes_from_errno() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Client::start();
    let r = c
        .call(Stat {
            id: 1,
            path: dir.path().join("missing").display().to_string(),
        })
        .await;
    assert_eq!(status(&r), Some(StatusCode::NoSuchFile));
    // A symlink loop: ELOOP, reported as "no such file" as OpenSSH does.
    std::os::unix::fs::symlink("b", dir.path().join("a")).unwrap();
    std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
    let r = c
        .call(Stat {
            id: 2,
            path: dir.path().join("a").display().to_string(),
        })
        .await;
    assert_eq!(status(&r), Some(StatusCode::NoSuchFile));
    let r = c
        .call(Read {
            id: 3,
            handle: "no-such-handle".into(),
            offset: 0,
            len: 1,
        })
        .await;
    assert_eq!(status(&r), Some(StatusCode::Failure));
    assert_eq!(
        status_of(&io::Error::from_raw_os_error(libc::EACCES)).status_code,
        StatusCode::PermissionDenied
    );
}

#[tokio::test]
async fn malformed_packets_get_bad_message_and_the_session_goes_on() {
    let mut c = Client::start();
    // Unknown type, then an OPEN cut short, then a READ with a length past its end.
    for raw in [
        &[0, 0, 0, 5, 200, 1, 2, 3, 4][..],
        &[0, 0, 0, 9, 3, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff][..],
        &[0, 0, 0, 1, 5][..],
    ] {
        c.send_raw(raw).await;
        let r = c.reply().await;
        assert_eq!(status(&r), Some(StatusCode::BadMessage), "{raw:?}");
    }
    let r = c
        .call(Stat {
            id: 9,
            path: "/".into(),
        })
        .await;
    assert!(matches!(r, Packet::Attrs(_)), "{r:?}");
}

#[tokio::test]
async fn the_server_ends_when_the_client_closes_the_stream() {
    let (ours, theirs) = tokio::io::duplex(1024);
    let served = tokio::spawn(serve(theirs));
    drop(ours);
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .unwrap()
        .unwrap();
}
