//! Where the CLI writes: the output the user asked for goes to stdout,
//! notes and errors to stderr.
//!
//! A reader that stops reading (`weft-control nodes list | head -1`) closes
//! the pipe; the next write fails with `EPIPE` (Rust ignores `SIGPIPE`, so
//! the process is not killed). That is not an error: the reader has what it
//! wanted. The command ends at once, quietly, with exit status 0. Any other
//! write error (a full disk behind a redirect) is an error with a message.
//! Writes to stderr never fail a command.

use std::fmt;
use std::io::{self, Write as _};

use anyhow::Context as _;

/// Writes `args` to stdout and flushes.
///
/// # Errors
/// A write error other than a closed pipe, which exits with status 0.
pub fn stdout(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => reader_gone(),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

/// Writes `args` to stderr; errors are ignored (there is nowhere left to
/// report them).
pub fn stderr(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.flush());
}

/// Ends the process after the reader of stdout went away.
fn reader_gone() -> ! {
    std::process::exit(0)
}

/// `println!` to stdout through [`stdout`]: evaluates to `anyhow::Result<()>`.
macro_rules! outln {
    () => {
        $crate::cli::out::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` to stdout through [`stdout`]: evaluates to `anyhow::Result<()>`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` through [`stderr`] (never fails).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::out::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {errln, out, outln};
