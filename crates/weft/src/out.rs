//! Everything `weft` prints goes through here, for two reasons:
//!
//! * **No string from elsewhere drives the terminal.** Peer host names, OS
//!   strings, user names, profile names and error messages from the daemon or
//!   control are printed by a CLI that a user trusts; an ESC, CR or C1 byte in
//!   them could clear the screen or fake lines. Human-readable text is
//!   escaped on its way out ([`escape_text`]: every control character but the
//!   newline and the tab, shown as `\x1b`, `\x0d`, `\u{9b}`), and values that
//!   must stay on one line (table cells, `Name:` fields, pong lines) are
//!   escaped before layout with [`escape`], newlines and tabs included. JSON output ([`json`], [`json_line`]) is
//!   written as is: serde_json already escapes control characters inside
//!   strings, and scripts must get the exact values.
//! * **A closed pipe is not an error.** `weft debug prefs | head -c 10` closes
//!   our stdout early; the write fails with `EPIPE` (Rust ignores SIGPIPE) and
//!   the program exits 0 quietly, like `cat` would. Any other write error is
//!   reported on stderr with exit status 1.
//!
//! Commands use [`outln!`]/[`out!`] for stdout and [`errln!`]/[`err!`] for
//! stderr; the crate denies `println!` and friends everywhere else.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;

/// Where a piece of output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Returns `s` with every character that could act on a terminal shown as
/// an escape instead: C0 controls (newline and tab included), DEL, C1
/// controls, and the Unicode bidirectional overrides and isolates (which
/// reorder what follows them on screen).
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_with(s, false)
}

/// Returns `s` escaped like [`escape`], except that newlines and tabs are
/// kept: for whole blocks of text whose lines the CLI itself laid out.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape_with(s, true)
}

fn escape_with(s: &str, keep_layout: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| needs_escape(c) && !(keep_layout && matches!(c, '\n' | '\t'));
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if c.is_ascii() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Writes human-readable `text` to `stream`, escaped with [`escape_text`].
/// Exits 0 if the reader went away; exits 1 on any other write error.
pub fn write(stream: Stream, text: &str) {
    write_raw(stream, &escape_text(text));
}

/// Writes machine-readable `text` unchanged (see the module docs).
fn write_raw(stream: Stream, text: &str) {
    let result = match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        }
        Stream::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(text.as_bytes()).and_then(|()| err.flush())
        }
    };
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            if stream == Stream::Stdout {
                let _ = writeln!(std::io::stderr(), "error: cannot write the output: {e}");
            }
            std::process::exit(1);
        }
    }
}

/// Prints `value` as pretty JSON on stdout (`--json` output).
///
/// # Errors
/// When `value` cannot be serialized.
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_raw(Stream::Stdout, &text);
    Ok(())
}

/// Prints `value` as one line of JSON on stdout (streamed output).
///
/// # Errors
/// When `value` cannot be serialized.
pub fn json_line<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string(value)?;
    text.push('\n');
    write_raw(Stream::Stdout, &text);
    Ok(())
}

/// `println!` for human-readable stdout, escaped (see [`write`]).
macro_rules! outln {
    () => {
        $crate::out::write($crate::out::Stream::Stdout, "\n")
    };
    ($($arg:tt)*) => {
        $crate::out::write($crate::out::Stream::Stdout, &format!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for human-readable stdout, escaped (see [`write`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write($crate::out::Stream::Stdout, &format!($($arg)*))
    };
}

/// `eprintln!` for human-readable stderr, escaped (see [`write`]).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::write($crate::out::Stream::Stderr, &format!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` for human-readable stderr, escaped (see [`write`]).
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::out::write($crate::out::Stream::Stderr, &format!($($arg)*))
    };
}

pub(crate) use {err, errln, out, outln};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_shown_not_obeyed() {
        assert_eq!(escape("web-1"), "web-1");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("\x1b[2J\x1b[Hfake"), r"\x1b[2J\x1b[Hfake");
        assert_eq!(escape("a\rb\x07c\x7f"), r"a\x0db\x07c\x7f");
        assert_eq!(escape("line\nnext\ttab"), r"line\x0anext\x09tab");
        // C1 (CSI as one code point) and a right-to-left override.
        assert_eq!(
            escape("x\u{9b}31m\u{202e}gpj.exe"),
            r"x\u{9b}31m\u{202e}gpj.exe"
        );
        // Ordinary non-ASCII text is left alone.
        assert_eq!(escape("Zoë's Mac — 東京"), "Zoë's Mac — 東京");
    }

    #[test]
    fn text_blocks_keep_their_own_newlines_and_tabs_only() {
        assert_eq!(escape_text("a\n\tb\x1b[K\r\n"), "a\n\tb\\x1b[K\\x0d\n");
    }
}
