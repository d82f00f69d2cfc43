//! Output helpers: aligned tables and times for people. Durations on the
//! command line are read by [`weft_types::time::parse_duration`], the one
//! parser both CLIs share.

use std::time::Duration;

use weft_control::clock::short_duration;

/// Formats a time relative to `now`: `5m ago`, `in 2d3h`.
pub fn relative(t: i64, now: i64) -> String {
    let d = Duration::from_millis(t.abs_diff(now));
    if t <= now {
        format!("{} ago", short_duration(d))
    } else {
        format!("in {}", short_duration(d))
    }
}

/// Renders rows as a table with a header line, columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(c.chars().count())
                    + 2;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "alpha".into()],
                vec!["10".into(), "b".into()],
            ],
        );
        assert_eq!(t, "ID  NAME\n1   alpha\n10  b\n");
    }
}
