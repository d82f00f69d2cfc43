//! Framing of the cross-platform WireGuard UAPI on a stream socket.
//!
//! A connection carries any number of requests, one after another. Each is
//! an operation line (`get=1`, `set=1`, or our extension `weft-stats=1`),
//! then — for `set` — `key=value` lines, then an empty line. The reply to
//! `get` is the body followed by `errno=0` and an empty line; to `set`, just
//! `errno=N` and an empty line, where N is 0 or a negative errno, exactly as
//! wireguard-go answers (`wg(8)` negates it back).
//!
//! The reader here is bounded (line length, request size) and resumable: a
//! read timeout in the middle of a line loses nothing, so the server can
//! poll for shutdown between reads.

use std::io::{self, BufRead};

/// Longest accepted line, newline excluded. `wg` lines are under 100 bytes.
pub const MAX_LINE: usize = 4096;
/// Largest accepted `set` body: room for thousands of peers.
pub const MAX_REQUEST: usize = 4 << 20;

/// `-EINVAL`, as wireguard-go reports a malformed request.
pub const ERRNO_INVALID: i32 = -libc::EINVAL;

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get=1`: dump the configuration.
    Get,
    /// `set=1` with its body (each line ending in `\n`, no blank line).
    Set(String),
    /// `weft-stats=1`: device counters (our extension).
    WeftStats,
}

/// What the framer produced from a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request to execute.
    Request(Request),
    /// A request that was malformed but properly terminated: answer with
    /// `errno` and go on.
    Reject { errno: i32, reason: String },
    /// Hang up (after answering `errno`, if given): the stream cannot be
    /// trusted to be in sync any more.
    Close { errno: Option<i32>, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Waiting for an operation line.
    Op,
    /// Got `get=1` / `weft-stats=1`: the next line must be empty.
    Blank(Op),
    /// Inside a `set=1` body.
    SetBody,
    /// Skipping the rest of a malformed request up to its empty line.
    Discard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    WeftStats,
}

/// Turns lines into requests.
#[derive(Debug)]
pub struct Framer {
    pending: Pending,
    body: String,
    /// Why the request being discarded is rejected.
    reject: Option<String>,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

impl Framer {
    /// Returns a framer waiting for an operation line.
    pub fn new() -> Self {
        Self {
            pending: Pending::Op,
            body: String::new(),
            reject: None,
        }
    }

    /// Returns whether the framer is between requests (a clean place for
    /// the peer to hang up).
    pub fn is_idle(&self) -> bool {
        self.pending == Pending::Op
    }

    /// Feeds one line (without its `\n`). Returns an event when a request
    /// is complete or must be refused.
    pub fn line(&mut self, line: &[u8]) -> Option<Event> {
        match self.pending {
            Pending::Op => match line {
                b"get=1" => self.expect_blank(Op::Get),
                b"weft-stats=1" => self.expect_blank(Op::WeftStats),
                b"set=1" => {
                    self.pending = Pending::SetBody;
                    self.body.clear();
                    None
                }
                _ => Some(Event::Close {
                    errno: None,
                    reason: format!(
                        "invalid UAPI operation {:?}",
                        String::from_utf8_lossy(&line[..line.len().min(64)])
                    ),
                }),
            },
            Pending::Blank(op) => {
                if line.is_empty() {
                    self.pending = Pending::Op;
                    Some(Event::Request(match op {
                        Op::Get => Request::Get,
                        Op::WeftStats => Request::WeftStats,
                    }))
                } else {
                    self.discard("trailing data after the operation line".to_owned())
                }
            }
            Pending::SetBody => {
                if line.is_empty() {
                    self.pending = Pending::Op;
                    return Some(Event::Request(Request::Set(std::mem::take(&mut self.body))));
                }
                let Ok(text) = std::str::from_utf8(line) else {
                    return self.discard("a set line is not UTF-8".to_owned());
                };
                if self.body.len() + text.len() + 1 > MAX_REQUEST {
                    self.pending = Pending::Op;
                    self.body = String::new();
                    return Some(Event::Close {
                        errno: Some(ERRNO_INVALID),
                        reason: format!("set request larger than {MAX_REQUEST} bytes"),
                    });
                }
                self.body.push_str(text);
                self.body.push('\n');
                None
            }
            Pending::Discard => {
                if line.is_empty() {
                    self.pending = Pending::Op;
                    let reason = self.reject.take().unwrap_or_default();
                    Some(Event::Reject {
                        errno: ERRNO_INVALID,
                        reason,
                    })
                } else {
                    None
                }
            }
        }
    }

    /// Handles a line that was too long (its bytes are already skipped).
    pub fn overlong_line(&mut self) -> Option<Event> {
        match self.pending {
            Pending::Op => Some(Event::Close {
                errno: None,
                reason: format!("operation line longer than {MAX_LINE} bytes"),
            }),
            Pending::Discard => None,
            _ => self.discard(format!("line longer than {MAX_LINE} bytes")),
        }
    }

    fn expect_blank(&mut self, op: Op) -> Option<Event> {
        self.pending = Pending::Blank(op);
        None
    }

    fn discard(&mut self, reason: String) -> Option<Event> {
        self.pending = Pending::Discard;
        self.body.clear();
        self.reject = Some(reason);
        None
    }
}

/// What [`LineReader::next_line`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete line, without its `\n`.
    Text(&'a [u8]),
    /// A line longer than [`MAX_LINE`]; its bytes were dropped.
    Overlong,
    /// End of stream (a trailing partial line is dropped).
    Eof,
}

/// Reads `\n`-terminated lines of bounded length, resumably.
#[derive(Debug, Default)]
pub struct LineReader {
    line: Vec<u8>,
    /// Dropping the rest of an overlong line.
    skipping: bool,
}

impl LineReader {
    /// Returns a reader with no partial line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the next line from `r`.
    ///
    /// # Errors
    /// Read errors, including timeouts (`WouldBlock`/`TimedOut`); the
    /// partial line is kept, so calling again resumes where it stopped.
    pub fn next_line<R: BufRead>(&mut self, r: &mut R) -> io::Result<Line<'_>> {
        if !self.skipping && self.line.last() == Some(&b'\n') {
            self.line.clear();
        }
        loop {
            let available = match r.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                self.line.clear();
                self.skipping = false;
                return Ok(Line::Eof);
            }
            let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..=i], true),
                None => (available, false),
            };
            let used = chunk.len();
            if self.skipping {
                r.consume(used);
                if done {
                    self.skipping = false;
                    self.line.clear();
                    return Ok(Line::Overlong);
                }
                continue;
            }
            if self.line.len() + used > MAX_LINE + 1 {
                self.line.clear();
                r.consume(used);
                if done {
                    return Ok(Line::Overlong);
                }
                self.skipping = true;
                continue;
            }
            self.line.extend_from_slice(chunk);
            r.consume(used);
            if done {
                let len = self.line.len() - 1;
                return Ok(Line::Text(&self.line[..len]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor, Read};

    fn events(input: &[u8]) -> Vec<Event> {
        let mut r = BufReader::with_capacity(7, Cursor::new(input.to_vec()));
        let mut lines = LineReader::new();
        let mut framer = Framer::new();
        let mut out = Vec::new();
        loop {
            let ev = match lines.next_line(&mut r).unwrap() {
                Line::Text(l) => framer.line(l),
                Line::Overlong => framer.overlong_line(),
                Line::Eof => break,
            };
            if let Some(ev) = ev {
                let close = matches!(ev, Event::Close { .. });
                out.push(ev);
                if close {
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn get_and_set_requests_are_framed_on_one_connection() {
        let evs = events(b"get=1\n\nset=1\nprivate_key=ab\nlisten_port=1\n\nget=1\n\n");
        assert_eq!(
            evs,
            vec![
                Event::Request(Request::Get),
                Event::Request(Request::Set("private_key=ab\nlisten_port=1\n".into())),
                Event::Request(Request::Get),
            ]
        );
    }

    #[test]
    fn the_stats_extension_is_a_request_like_get() {
        assert_eq!(
            events(b"weft-stats=1\n\n"),
            vec![Event::Request(Request::WeftStats)]
        );
    }

    #[test]
    fn an_empty_set_is_a_valid_request() {
        assert_eq!(
            events(b"set=1\n\n"),
            vec![Event::Request(Request::Set(String::new()))]
        );
    }

    #[test]
    fn an_unknown_operation_closes_the_connection_without_a_reply() {
        let evs = events(b"bogus=1\n\nget=1\n\n");
        assert!(
            matches!(&evs[..], [Event::Close { errno: None, .. }]),
            "{evs:?}"
        );
    }

    #[test]
    fn junk_after_get_is_rejected_and_the_connection_stays_usable() {
        let evs = events(b"get=1\nx=y\nmore\n\nget=1\n\n");
        assert!(
            matches!(
                &evs[..],
                [
                    Event::Reject {
                        errno: ERRNO_INVALID,
                        ..
                    },
                    Event::Request(Request::Get)
                ]
            ),
            "{evs:?}"
        );
    }

    #[test]
    fn an_overlong_line_in_a_set_rejects_that_request_only() {
        let mut input = b"set=1\nendpoint=".to_vec();
        input.extend(std::iter::repeat_n(b'9', MAX_LINE * 3));
        input.extend_from_slice(b"\nlisten_port=1\n\nget=1\n\n");
        let evs = events(&input);
        assert!(
            matches!(
                &evs[..],
                [
                    Event::Reject {
                        errno: ERRNO_INVALID,
                        ..
                    },
                    Event::Request(Request::Get)
                ]
            ),
            "{evs:?}"
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_accepted() {
        let mut input = b"set=1\n".to_vec();
        let line = vec![b'a'; MAX_LINE];
        input.extend_from_slice(&line);
        input.extend_from_slice(b"\n\n");
        let evs = events(&input);
        let Event::Request(Request::Set(body)) = &evs[0] else {
            panic!("{evs:?}");
        };
        assert_eq!(body.len(), MAX_LINE + 1);
    }

    #[test]
    fn an_overlong_operation_line_closes_the_connection() {
        let mut input = vec![b'g'; MAX_LINE + 10];
        input.extend_from_slice(b"\n\n");
        assert!(matches!(
            &events(&input)[..],
            [Event::Close { errno: None, .. }]
        ));
    }

    #[test]
    fn a_set_larger_than_the_limit_is_refused_and_closes() {
        let mut input = b"set=1\n".to_vec();
        let line = format!("allowed_ip={}\n", "1".repeat(MAX_LINE - 20));
        while input.len() < MAX_REQUEST + 2 * MAX_LINE {
            input.extend_from_slice(line.as_bytes());
        }
        input.extend_from_slice(b"\n");
        let evs = events(&input);
        assert!(
            matches!(
                &evs[..],
                [Event::Close {
                    errno: Some(ERRNO_INVALID),
                    ..
                }]
            ),
            "{evs:?}"
        );
    }

    #[test]
    fn invalid_utf8_in_a_set_is_rejected() {
        let evs = events(b"set=1\nendpoint=\xff\xfe\n\n");
        assert!(matches!(&evs[..], [Event::Reject { .. }]), "{evs:?}");
    }

    /// A reader that returns `WouldBlock` between its chunks, like a socket
    /// with a read timeout.
    struct Stuttering {
        chunks: Vec<Vec<u8>>,
        block_next: bool,
    }

    impl Read for Stuttering {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.block_next {
                self.block_next = false;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.block_next = true;
            if self.chunks.is_empty() {
                return Ok(0);
            }
            let c = self.chunks.remove(0);
            buf[..c.len()].copy_from_slice(&c);
            Ok(c.len())
        }
    }

    #[test]
    fn a_timeout_in_the_middle_of_a_line_loses_nothing() {
        let chunks = vec![b"ge".to_vec(), b"t=1\n".to_vec(), b"\n".to_vec()];
        let mut r = BufReader::new(Stuttering {
            chunks,
            block_next: false,
        });
        let mut lines = LineReader::new();
        let mut framer = Framer::new();
        let mut got = Vec::new();
        let mut timeouts = 0;
        loop {
            match lines.next_line(&mut r) {
                Ok(Line::Text(l)) => got.extend(framer.line(l)),
                Ok(Line::Overlong) => unreachable!(),
                Ok(Line::Eof) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => timeouts += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(timeouts >= 2);
        assert_eq!(got, vec![Event::Request(Request::Get)]);
    }
}
