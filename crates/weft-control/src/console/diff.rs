//! A line diff (longest common subsequence) of two policy texts, for the
//! console's "what changes" view before saving. Policies are small (the
//! editor refuses texts over [`MAX_DIFF_LINES`] lines for diffing).

/// The largest text (in lines, each side) that is diffed; larger ones are
/// shown whole.
pub const MAX_DIFF_LINES: usize = 4000;

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

/// Returns the lines of `old` and `new` as kept, removed and added, or
/// `None` when either side is over [`MAX_DIFF_LINES`].
pub fn lines<'a>(old: &'a str, new: &'a str) -> Option<Vec<Line<'a>>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len() > MAX_DIFF_LINES || b.len() > MAX_DIFF_LINES {
        return None;
    }
    // lcs[i][j]: the LCS length of a[i..] and b[j..].
    let w = b.len() + 1;
    let mut lcs = vec![0u32; (a.len() + 1) * w];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * w + j] = if a[i] == b[j] {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(Line::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
            // Removals before additions, as diff(1) shows a changed line.
            out.push(Line::Removed(a[i]));
            i += 1;
        } else {
            out.push(Line::Added(b[j]));
            j += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_shows_as_removed_then_added() {
        let d = lines("{\n  \"a\": 1,\n}\n", "{\n  \"a\": 2,\n}\n").unwrap();
        assert_eq!(
            d,
            vec![
                Line::Same("{"),
                Line::Removed("  \"a\": 1,"),
                Line::Added("  \"a\": 2,"),
                Line::Same("}"),
            ]
        );
    }

    #[test]
    fn identical_texts_have_no_changes_and_huge_ones_are_not_diffed() {
        assert!(
            lines("x\ny", "x\ny")
                .unwrap()
                .iter()
                .all(|l| matches!(l, Line::Same(_)))
        );
        let big = "x\n".repeat(MAX_DIFF_LINES + 1);
        assert_eq!(lines(&big, "x"), None);
    }
}
