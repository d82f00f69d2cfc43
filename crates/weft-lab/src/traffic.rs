//! Traffic generators with end-to-end checks, run from the test process through sockets made
//! inside namespaces (no `nc`, no temp files).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::time::Duration;

use ring::digest::{Context, SHA256};

use crate::error::{LabError, Result};
use crate::names::random_bytes;
use crate::netns::Netns;
use crate::wait::now;

const CHUNK: usize = 64 * 1024;
/// Longest a single read or write may block before the transfer is declared stuck.
const IO_STALL: Duration = Duration::from_secs(15);

/// What a [`tcp_transfer`] sent and received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferReport {
    /// Bytes the sender wrote.
    pub bytes_sent: u64,
    /// Bytes the receiver read before EOF.
    pub bytes_received: u64,
    /// SHA-256 of what was sent, hex.
    pub sent_sha256: String,
    /// SHA-256 of what was received, hex.
    pub received_sha256: String,
    /// From connect to the receiver seeing EOF.
    pub elapsed: Duration,
}

impl TransferReport {
    /// Returns goodput in Gbit/s (indicative only: tests run on a shared machine).
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes_received as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }

    /// Fails unless the receiver got exactly what the sender sent.
    ///
    /// # Errors
    /// [`LabError::Invalid`] with both lengths and checksums.
    pub fn verify(&self) -> Result<()> {
        if self.bytes_sent == self.bytes_received && self.sent_sha256 == self.received_sha256 {
            Ok(())
        } else {
            Err(LabError::Invalid(format!(
                "TCP transfer corrupted: {self:?}"
            )))
        }
    }
}

/// Sends `bytes` pseudo-random bytes over TCP from namespace `from` to `dest`, received by a
/// listener the function opens on `dest` in namespace `to`, and returns sizes and SHA-256
/// checksums of both sides (call [`TransferReport::verify`]). The whole transfer — listen,
/// connect, send, receive to EOF — must finish within `timeout`; a read or write that blocks for
/// 15 s also fails it.
///
/// # Errors
/// When any step fails or the time runs out; the message says which side and how far it got.
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    dest: SocketAddr,
    bytes: u64,
    timeout: Duration,
) -> Result<TransferReport> {
    let start = now();
    let deadline = start + timeout;
    let listener = to.tcp_listener(dest)?;
    listener
        .set_nonblocking(true)
        .map_err(|e| LabError::io("making the listener non-blocking", e))?;
    let receiver = std::thread::spawn(move || receive_all(listener, deadline));

    let sent = (|| -> Result<(u64, String)> {
        let mut stream = from.tcp_connect(dest, timeout)?;
        stream
            .set_write_timeout(Some(IO_STALL))
            .map_err(|e| LabError::io("setting a write timeout", e))?;
        let mut rng = XorShift::new(u64::from_be_bytes(random_bytes::<8>()?));
        let mut hash = Context::new(&SHA256);
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        while sent < bytes {
            if now() > deadline {
                return Err(LabError::Invalid(format!(
                    "sender: out of time after {sent} of {bytes} bytes"
                )));
            }
            let n = usize::try_from((bytes - sent).min(CHUNK as u64)).unwrap_or(CHUNK);
            rng.fill(&mut buf[..n]);
            stream.write_all(&buf[..n]).map_err(|e| {
                LabError::io(format!("sender: writing after {sent} of {bytes} bytes"), e)
            })?;
            hash.update(&buf[..n]);
            sent += n as u64;
        }
        stream
            .shutdown(Shutdown::Write)
            .map_err(|e| LabError::io("sender: shutdown", e))?;
        Ok((sent, hex(hash.finish().as_ref())))
    })();

    let received = receiver
        .join()
        .map_err(|_| LabError::Invalid("the receiver thread panicked".into()))?;
    let (bytes_sent, sent_sha256) = sent?;
    let (bytes_received, received_sha256) = received?;
    Ok(TransferReport {
        bytes_sent,
        bytes_received,
        sent_sha256,
        received_sha256,
        elapsed: start.elapsed(),
    })
}

fn receive_all(listener: TcpListener, deadline: std::time::Instant) -> Result<(u64, String)> {
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if now() > deadline {
                    return Err(LabError::Invalid(
                        "receiver: no connection arrived in time".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(LabError::io("receiver: accept", e)),
        }
    };
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(IO_STALL)));
    setup.map_err(|e| LabError::io("receiver: socket options", e))?;
    let mut hash = Context::new(&SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    loop {
        if now() > deadline {
            return Err(LabError::Invalid(format!(
                "receiver: out of time after {received} bytes"
            )));
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                received += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(LabError::io(
                    format!("receiver: reading after {received} bytes"),
                    e,
                ));
            }
        }
    }
    Ok((received, hex(hash.finish().as_ref())))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// xorshift64*: fast, seedable bytes for payloads (not for anything secret).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// Returns a generator for `seed` (0 is replaced: the all-zero state is a fixed point).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Returns the next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Returns a value in `0..n` (`n` > 0; slightly biased, fine for test inputs).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_deterministic_per_seed_and_fills_odd_lengths() {
        let (mut a, mut b) = (XorShift::new(7), XorShift::new(7));
        let (mut x, mut y) = ([0u8; 13], [0u8; 13]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert_ne!(x, [0u8; 13]);
        assert_ne!(XorShift::new(8).next_u64(), XorShift::new(7).next_u64());
        assert_ne!(XorShift::new(0).next_u64(), 0);
    }

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }

    #[test]
    fn a_report_verifies_only_if_sizes_and_checksums_match() {
        let ok = TransferReport {
            bytes_sent: 3,
            bytes_received: 3,
            sent_sha256: "aa".into(),
            received_sha256: "aa".into(),
            elapsed: Duration::from_secs(1),
        };
        assert!(ok.verify().is_ok());
        assert!(
            TransferReport {
                bytes_received: 2,
                ..ok.clone()
            }
            .verify()
            .is_err()
        );
        assert!(
            TransferReport {
                received_sha256: "ab".into(),
                ..ok.clone()
            }
            .verify()
            .is_err()
        );
        assert!((ok.gbit_per_s() - 24e-9).abs() < 1e-12);
    }
}
