//! The asciicast v2 format (<https://docs.asciinema.org/manual/asciicast/v2/>):
//! a JSON header line, then one JSON array per event, `[time, code, data]`,
//! with `time` in seconds since the start, `code` `"o"` (output), `"i"`
//! (input) or `"r"` (resize, data `"COLSxROWS"`), and `data` a string.
//!
//! The writer takes the time from its caller and writes each event with one
//! `write_all`, so a full disk shows up at the event that did not fit.
//! Terminal bytes are not always UTF-8 and a read can split a character:
//! the incomplete tail of a chunk is held back until the next chunk of the
//! same stream, and bytes that can never be UTF-8 become U+FFFD.

use std::io::{self, Write};
use std::time::Duration;

/// The header line's fields.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CastHeader {
    /// Always 2.
    pub version: u32,
    /// Terminal columns at the start (80 for a session without a pty).
    pub width: u16,
    /// Terminal rows at the start (24 for a session without a pty).
    pub height: u16,
    /// Unix time of the start, in seconds.
    pub timestamp: i64,
    /// The command of an exec session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Who logged in where, for players that show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `TERM` (and `SHELL`) of the session.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

/// Writes one asciicast v2 stream into `W`.
#[derive(Debug)]
pub struct CastWriter<W: Write> {
    out: W,
    carry_out: Vec<u8>,
    carry_in: Vec<u8>,
}

/// One event stream of a cast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// What the terminal showed (`"o"`).
    Output,
    /// What the client typed (`"i"`).
    Input,
}

impl<W: Write> CastWriter<W> {
    /// Writes the header line and returns the writer.
    ///
    /// # Errors
    /// The write failed.
    pub fn new(mut out: W, header: &CastHeader) -> io::Result<Self> {
        let mut line = serde_json::to_string(header).map_err(io::Error::other)?;
        line.push('\n');
        out.write_all(line.as_bytes())?;
        Ok(CastWriter {
            out,
            carry_out: Vec::new(),
            carry_in: Vec::new(),
        })
    }

    /// Appends `data` of `stream` at `t` since the start. Nothing is written
    /// while `data` ends inside a character.
    ///
    /// # Errors
    /// The write failed (the disk may be full).
    pub fn data(&mut self, stream: Stream, t: Duration, data: &[u8]) -> io::Result<()> {
        let (carry, code) = match stream {
            Stream::Output => (&mut self.carry_out, "o"),
            Stream::Input => (&mut self.carry_in, "i"),
        };
        let text = take_utf8(carry, data);
        if text.is_empty() {
            return Ok(());
        }
        self.event(t, code, &text)
    }

    /// Appends a resize to `cols` x `rows` at `t`.
    ///
    /// # Errors
    /// The write failed.
    pub fn resize(&mut self, t: Duration, cols: u32, rows: u32) -> io::Result<()> {
        self.event(t, "r", &format!("{cols}x{rows}"))
    }

    /// Writes what is held back (as U+FFFD) and returns the sink.
    ///
    /// # Errors
    /// The write failed.
    pub fn finish(mut self, t: Duration) -> io::Result<W> {
        for stream in [Stream::Output, Stream::Input] {
            let carry = match stream {
                Stream::Output => std::mem::take(&mut self.carry_out),
                Stream::Input => std::mem::take(&mut self.carry_in),
            };
            if !carry.is_empty() {
                let text = String::from_utf8_lossy(&carry).into_owned();
                let code = if stream == Stream::Output { "o" } else { "i" };
                self.event(t, code, &text)?;
            }
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn event(&mut self, t: Duration, code: &str, data: &str) -> io::Result<()> {
        let data = serde_json::to_string(data).map_err(io::Error::other)?;
        let line = format!(
            "[{}.{:06}, \"{code}\", {data}]\n",
            t.as_secs(),
            t.subsec_micros()
        );
        self.out.write_all(line.as_bytes())
    }
}

/// Appends `data` to `carry` and takes out the longest prefix that is text:
/// valid UTF-8, with invalid sequences replaced by U+FFFD; an incomplete
/// character at the end stays in `carry`.
fn take_utf8(carry: &mut Vec<u8>, data: &[u8]) -> String {
    carry.extend_from_slice(data);
    let mut out = String::new();
    let mut rest: &[u8] = carry;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    // Incomplete at the end: wait for more.
                    None => {
                        rest = after;
                        break;
                    }
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = after.get(n..).unwrap_or_default();
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *carry = keep;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> CastHeader {
        CastHeader {
            version: 2,
            width: 80,
            height: 24,
            timestamp: 1_700_000_000,
            command: None,
            title: Some("alice@example.com on laptop as alice".into()),
            env: [("TERM".to_owned(), "xterm-256color".to_owned())].into(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn lines(bytes: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_cast_is_a_header_line_then_one_event_per_line() {
        let mut w = CastWriter::new(Vec::new(), &header()).unwrap();
        w.data(Stream::Output, ms(0), b"$ ").unwrap();
        w.data(Stream::Input, ms(1500), b"echo hi\r").unwrap();
        w.data(Stream::Output, ms(1501), b"hi\r\n\x1b[1m$ \x1b[0m")
            .unwrap();
        w.resize(ms(2000), 132, 43).unwrap();
        let out = w.finish(ms(2500)).unwrap();
        let l = lines(&out);
        assert_eq!(l.len(), 5, "{}", String::from_utf8_lossy(&out));
        assert_eq!(l[0]["version"], 2);
        assert_eq!(l[0]["width"], 80);
        assert_eq!(l[0]["height"], 24);
        assert_eq!(l[0]["timestamp"], 1_700_000_000);
        assert_eq!(l[0]["env"]["TERM"], "xterm-256color");
        assert_eq!(l[1], serde_json::json!([0.0, "o", "$ "]));
        assert_eq!(l[2], serde_json::json!([1.5, "i", "echo hi\r"]));
        assert_eq!(
            l[3],
            serde_json::json!([1.501, "o", "hi\r\n\u{1b}[1m$ \u{1b}[0m"])
        );
        assert_eq!(l[4], serde_json::json!([2.0, "r", "132x43"]));
        // Times are written with microseconds, not as floats of any length.
        assert!(
            std::str::from_utf8(&out)
                .unwrap()
                .contains("[1.501000, \"o\"")
        );
    }

    #[test]
    fn a_character_split_between_reads_is_written_whole() {
        let mut w = CastWriter::new(Vec::new(), &header()).unwrap();
        let euro = "€".as_bytes(); // e2 82 ac
        w.data(Stream::Output, ms(1), &[b'a', euro[0]]).unwrap();
        w.data(Stream::Output, ms(2), &euro[1..2]).unwrap();
        w.data(Stream::Output, ms(3), &[euro[2], b'b']).unwrap();
        let l = lines(&w.finish(ms(4)).unwrap());
        assert_eq!(l[1], serde_json::json!([0.001, "o", "a"]));
        assert_eq!(l[2], serde_json::json!([0.003, "o", "€b"]));
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let mut w = CastWriter::new(Vec::new(), &header()).unwrap();
        w.data(Stream::Output, ms(1), b"x\xff\xfey").unwrap();
        // A dangling lead byte at the very end is flushed by `finish`.
        w.data(Stream::Input, ms(2), b"\xe2").unwrap();
        let l = lines(&w.finish(ms(3)).unwrap());
        assert_eq!(l[1], serde_json::json!([0.001, "o", "x\u{fffd}\u{fffd}y"]));
        assert_eq!(l[2], serde_json::json!([0.003, "i", "\u{fffd}"]));
    }

    #[test]
    fn a_full_disk_is_reported_at_the_event_that_did_not_fit() {
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = CastWriter::new(Full(300), &header()).unwrap();
        w.data(Stream::Output, ms(1), b"fits").unwrap();
        let err = w.data(Stream::Output, ms(2), &[b'x'; 400]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }
}
