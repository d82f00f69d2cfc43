//! The UAPI server against a fake device, over a real Unix socket in a
//! temporary directory (no root needed).

// These tests time real I/O (promptness of shutdown).
#![allow(clippy::disallowed_methods, clippy::unwrap_in_result)]

use super::*;
use std::io::{BufRead, Read};
use std::sync::Mutex;
use std::time::Instant;

/// A device whose whole state is a list of applied `set` bodies; a body
/// containing `fail` is refused.
#[derive(Default)]
struct FakeDevice {
    applied: Mutex<Vec<String>>,
}

impl Handler for FakeDevice {
    fn get(&self) -> String {
        let applied = self.applied.lock().unwrap();
        format!("sets={}\nlisten_port=51820\n", applied.len())
    }

    fn set(&self, body: &str) -> Result<(), Refusal> {
        if body.contains("fail") {
            return Err(Refusal {
                errno: -libc::EINVAL,
                reason: "asked to fail".into(),
            });
        }
        if body.contains("positive") {
            return Err(Refusal {
                errno: libc::EPROTO,
                reason: "core errnos are positive".into(),
            });
        }
        self.applied.lock().unwrap().push(body.to_owned());
        Ok(())
    }

    fn stats(&self) -> String {
        "rx_datagrams=1\ntx_packets=2\n".into()
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    path: PathBuf,
    device: Arc<FakeDevice>,
    server: Option<Server>,
    _file: SocketFile,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sockdir = dir.path().join("wireguard");
    let path = socket_path(&sockdir, "wgtest0");
    let (listener, file) = bind(&sockdir, &path).unwrap();
    let device = Arc::new(FakeDevice::default());
    let server = Server::start(listener, Arc::clone(&device)).unwrap();
    Fixture {
        dir,
        path,
        device,
        server: Some(server),
        _file: file,
    }
}

/// Reads one reply: lines up to and including the empty line after errno.
fn read_reply(r: &mut BufReader<UnixStream>) -> String {
    let mut out = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "EOF after {out:?}");
        out.push_str(&line);
        if line == "\n" && out.contains("errno=") {
            return out;
        }
    }
}

fn connect(f: &Fixture) -> (UnixStream, BufReader<UnixStream>) {
    let s = UnixStream::connect(&f.path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

#[test]
fn get_replies_with_the_body_and_errno_zero() {
    let f = fixture();
    let (mut s, mut r) = connect(&f);
    s.write_all(b"get=1\n\n").unwrap();
    assert_eq!(read_reply(&mut r), "sets=0\nlisten_port=51820\nerrno=0\n\n");
}

#[test]
fn several_requests_share_one_connection() {
    let f = fixture();
    let (mut s, mut r) = connect(&f);
    s.write_all(b"set=1\nlisten_port=1\n\nget=1\n\nweft-stats=1\n\n")
        .unwrap();
    assert_eq!(read_reply(&mut r), "errno=0\n\n");
    assert_eq!(read_reply(&mut r), "sets=1\nlisten_port=51820\nerrno=0\n\n");
    assert_eq!(
        read_reply(&mut r),
        "rx_datagrams=1\ntx_packets=2\nerrno=0\n\n"
    );
    assert_eq!(
        *f.device.applied.lock().unwrap(),
        vec!["listen_port=1\n".to_owned()]
    );
}

#[test]
fn a_refused_set_reports_its_errno_and_the_connection_stays_usable() {
    let f = fixture();
    let (mut s, mut r) = connect(&f);
    s.write_all(b"set=1\nfail=1\n\n").unwrap();
    assert_eq!(read_reply(&mut r), "errno=-22\n\n");
    s.write_all(b"get=1\n\n").unwrap();
    assert!(read_reply(&mut r).starts_with("sets=0\n"));
}

#[test]
fn errnos_go_out_negative_as_wireguard_go_sends_them() {
    let f = fixture();
    let (mut s, mut r) = connect(&f);
    s.write_all(b"set=1\npositive\n\n").unwrap();
    assert_eq!(read_reply(&mut r), "errno=-71\n\n");
}

#[test]
fn junk_after_get_is_answered_with_einval() {
    let f = fixture();
    let (mut s, mut r) = connect(&f);
    s.write_all(b"get=1\ngarbage\n\nget=1\n\n").unwrap();
    assert_eq!(read_reply(&mut r), "errno=-22\n\n");
    assert!(read_reply(&mut r).ends_with("errno=0\n\n"));
}

#[test]
fn an_unknown_operation_closes_the_connection() {
    let f = fixture();
    let (mut s, mut r) = connect(&f);
    s.write_all(b"frobnicate=1\n\n").unwrap();
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    // The server is still fine.
    let (mut s2, mut r2) = connect(&f);
    s2.write_all(b"get=1\n\n").unwrap();
    assert!(read_reply(&mut r2).ends_with("errno=0\n\n"));
}

#[test]
fn a_set_cut_short_by_hangup_is_not_applied() {
    let f = fixture();
    {
        let (mut s, _r) = connect(&f);
        s.write_all(b"set=1\nlisten_port=9\n").unwrap();
    }
    let (mut s, mut r) = connect(&f);
    s.write_all(b"get=1\n\n").unwrap();
    assert!(read_reply(&mut r).starts_with("sets=0\n"));
}

#[test]
fn the_request_helper_returns_the_body_or_the_refusal() {
    let f = fixture();
    let body = request(&f.path, "weft-stats=1\n\n").unwrap();
    assert_eq!(body, "rx_datagrams=1\ntx_packets=2\n");
    let err = request(&f.path, "set=1\nfail\n\n").unwrap_err();
    assert!(err.to_string().contains("errno=-22"), "{err}");
}

#[test]
fn the_socket_is_private_and_its_directory_world_readable() {
    let f = fixture();
    let mode = std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(f.dir.path().join("wireguard"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o755);
}

#[test]
fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    let f = fixture();
    let err = clear_stale(&f.path).unwrap_err();
    assert!(err.to_string().contains("running process"), "{err}");

    let stale = f.dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap()); // bound, then nobody listens
    assert!(stale.exists());
    let (_l, file) = bind(f.dir.path(), &stale).unwrap();
    assert_eq!(file.path(), stale);
}

#[test]
fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sock");
    std::fs::write(&path, b"not a socket").unwrap();
    let err = bind(dir.path(), &path).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert!(path.exists());
}

#[test]
fn dropping_the_socket_file_removes_only_our_socket() {
    let mut f = fixture();
    let path = f.path.clone();
    f.server.take().unwrap().shutdown();
    drop(f._file);
    assert!(!path.exists());

    // A socket that replaced ours is not touched.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("y.sock");
    let (l, file) = bind(dir.path(), &p).unwrap();
    drop(l);
    std::fs::remove_file(&p).unwrap();
    let _other = UnixListener::bind(&p).unwrap();
    drop(file);
    assert!(p.exists());
}

#[test]
fn shutdown_is_prompt_with_an_idle_client_connected() {
    let mut f = fixture();
    let (_s, _r) = connect(&f);
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    f.server.take().unwrap().shutdown();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn many_clients_are_served_concurrently() {
    let f = fixture();
    let path = f.path.clone();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let p = path.clone();
            std::thread::spawn(move || request(&p, "set=1\nlisten_port=2\n\n").unwrap())
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(f.device.applied.lock().unwrap().len(), 8);
}
