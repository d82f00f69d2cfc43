//! Small formatting pieces shared by commands: aligned columns, ages and
//! durations, and command lines a user can copy.

use std::time::Duration;

use weft_localapi::BackendState;

use crate::out::escape;

/// Text columns aligned like Go's tabwriter: each column as wide as its
/// widest cell, two spaces between columns, no trailing spaces.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Appends a row. Each cell is escaped ([`escape`]): whatever a peer
    /// put in its name or OS string stays one inert cell on one line.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| {
                    let c: String = c.into();
                    escape(&c).into_owned()
                })
                .collect(),
        );
    }

    /// Returns the table as text, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = Vec::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let w = cell.chars().count();
                match widths.get_mut(i) {
                    Some(max) => *max = (*max).max(w),
                    None => widths.push(w),
                }
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Returns a coarse age for "last seen …": `42s`, `5m`, `3h`, `2d`
/// (truncated, not rounded, so `59m59s` is `59m`).
pub fn format_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Returns a duration the way the `--timeout` flags take it: `500ms`, `30s`,
/// `2m`, `1h`, or `1m30s` when it is not a whole unit.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        0 => "0s".to_owned(),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ if s > 60 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{s}s"),
    }
}

/// Joins arguments into one shell-safe line for a suggested command. A
/// literal auth key (`--authkey VALUE` or `--authkey=VALUE`, not `file:…`)
/// is shown as `<KEY>` so it does not land in terminal scrollback or logs.
pub fn display_args(args: &[String]) -> String {
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut next_is_key = false;
    for arg in args {
        if next_is_key {
            next_is_key = false;
            out.push(key_value(arg));
            continue;
        }
        if is_authkey_flag(arg) {
            next_is_key = true;
            out.push(arg.clone());
            continue;
        }
        if let Some((flag, value)) = arg.split_once('=')
            && is_authkey_flag(flag)
        {
            out.push(format!("{flag}={}", key_value(value)));
            continue;
        }
        out.push(shell_quote(arg));
    }
    out.join(" ")
}

fn is_authkey_flag(arg: &str) -> bool {
    arg == "--authkey" || arg == "--auth-key"
}

fn key_value(value: &str) -> String {
    if value.starts_with("file:") {
        shell_quote(value)
    } else {
        "<KEY>".to_owned()
    }
}

/// Quotes `s` for a POSIX shell unless it needs no quoting.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=@,+%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Returns the state's JSON name (`needs_login`, …) for messages.
pub fn state_word(state: BackendState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{state:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_named_as_in_json() {
        assert_eq!(state_word(BackendState::NeedsLogin), "needs_login");
    }

    #[test]
    fn columns_align_with_two_spaces_and_no_trailing_blanks() {
        let mut t = Table::default();
        t.row(["100.64.0.1", "me", "alice@", "linux", "-"]);
        t.row(["100.64.0.22", "laptop-long", "bob@", "linux", "idle"]);
        t.row(["100.64.0.3", "x"]);
        assert_eq!(
            t.render(),
            "100.64.0.1   me           alice@  linux  -\n\
             100.64.0.22  laptop-long  bob@    linux  idle\n\
             100.64.0.3   x\n"
        );
    }

    #[test]
    fn ages_are_truncated_to_the_largest_unit() {
        assert_eq!(format_age(Duration::from_secs(42)), "42s");
        assert_eq!(format_age(Duration::from_secs(5 * 60 + 59)), "5m");
        assert_eq!(format_age(Duration::from_secs(3 * 3600 + 1)), "3h");
        assert_eq!(format_age(Duration::from_secs(2 * 86400 + 7200)), "2d");
    }

    #[test]
    fn durations_print_in_the_form_they_are_typed() {
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn suggested_command_lines_quote_only_what_needs_it() {
        let args = [
            "up",
            "--hostname=my box",
            "--advertise-tags=tag:a,tag:b",
            "it's",
        ];
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(
            display_args(&args),
            r"up '--hostname=my box' --advertise-tags=tag:a,tag:b 'it'\''s'"
        );
    }

    #[test]
    fn suggested_command_lines_hide_literal_keys_but_keep_key_files() {
        let args = [
            "--authkey=tskey-abc",
            "--auth-key",
            "k2",
            "--authkey=file:/etc/k",
        ];
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(
            display_args(&args),
            "--authkey=<KEY> --auth-key <KEY> --authkey=file:/etc/k"
        );
    }
}
