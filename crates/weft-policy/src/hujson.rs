//! A strict HuJSON reader that keeps the byte span of every value.
//!
//! HuJSON is JSON plus `//` line comments, `/* */` block comments and a
//! trailing comma before `]` or `}`. Everything else is plain RFC 8259 JSON:
//! quoted keys, double-quoted strings, no hex or `+` numbers, no `NaN`. We
//! read it ourselves rather than through a serde deserializer because the
//! policy validator must point at the *offending value* (an unknown group in
//! `acls[2].dst[0]`), which needs a span per value, and because every
//! syntax error should say what was expected at that exact spot.
//!
//! Duplicate object keys are rejected (HuJSON in Go keeps the last one, which
//! silently drops rules). Nesting is limited to [`MAX_DEPTH`] so hostile input
//! cannot overflow the stack.

use std::fmt::Write as _;

/// How deeply arrays and objects may nest.
pub(crate) const MAX_DEPTH: usize = 64;

/// A half-open byte range `start..end` into the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
}

/// A JSON value with its span.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Value {
    pub kind: Kind,
    pub span: Span,
}

/// An object key with its span.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    pub name: String,
    pub span: Span,
}

/// The shapes a JSON value takes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    /// A number, as written (validated against the JSON grammar).
    Number(String),
    String(String),
    Array(Vec<Value>),
    /// Members in document order (keys are unique).
    Object(Vec<(Key, Value)>),
}

impl Kind {
    /// Names the shape for messages ("expected a string, found an array").
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Number(_) => "a number",
            Kind::String(_) => "a string",
            Kind::Array(_) => "an array",
            Kind::Object(_) => "an object",
        }
    }
}

/// A syntax error: where, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub offset: usize,
    pub message: String,
}

/// Parses one HuJSON document (one value, surrounded by whitespace and
/// comments).
pub(crate) fn parse(text: &str) -> Result<Value, SyntaxError> {
    let mut p = Parser {
        src: text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    if text.starts_with('\u{feff}') {
        p.pos = 3;
    }
    p.skip_trivia()?;
    if p.pos >= p.bytes.len() {
        return Err(p.err_here("expected a JSON value, found end of input (the document is empty)"));
    }
    let value = p.value(0)?;
    p.skip_trivia()?;
    if p.pos < p.bytes.len() {
        let found = p.found();
        return Err(p.err_here(&format!(
            "expected end of input after the top-level value, found {found}"
        )));
    }
    Ok(value)
}

struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err_at(&self, offset: usize, message: &str) -> SyntaxError {
        SyntaxError {
            offset,
            message: message.to_string(),
        }
    }

    fn err_here(&self, message: &str) -> SyntaxError {
        self.err_at(self.pos, message)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Describes what sits at the current position, for "found …".
    fn found(&self) -> String {
        let rest = self.src.get(self.pos..).unwrap_or("");
        let Some(c) = rest.chars().next() else {
            return "end of input".to_string();
        };
        if c.is_ascii_alphabetic() || c == '_' {
            let word: String = rest
                .chars()
                .take_while(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '@')
                })
                .take(40)
                .collect();
            return format!("`{}`", word.trim_end_matches(':'));
        }
        match c {
            '\n' | '\r' => "end of line".to_string(),
            '\'' => "`'` (strings use double quotes)".to_string(),
            c => format!("`{c}`"),
        }
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) -> Result<(), SyntaxError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n' | b'\r') => self.pos += 1,
                Some(b'/') => match self.bytes.get(self.pos + 1) {
                    Some(b'/') => {
                        while let Some(b) = self.peek() {
                            if b == b'\n' {
                                break;
                            }
                            self.pos += 1;
                        }
                    }
                    Some(b'*') => {
                        let start = self.pos;
                        let Some(end) = self.src.get(self.pos + 2..).and_then(|r| r.find("*/"))
                        else {
                            return Err(
                                self.err_at(start, "unterminated block comment: expected `*/`")
                            );
                        };
                        self.pos += 2 + end + 2;
                    }
                    _ => {
                        return Err(self.err_here(
                            "expected `//` or `/*` to start a comment, found a lone `/`",
                        ));
                    }
                },
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        let start = self.pos;
        let kind = match self.peek() {
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Kind::String(self.string()?),
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(b't') if self.bytes[self.pos..].starts_with(b"true") => {
                self.literal(4, Kind::Bool(true))
            }
            Some(b'f') if self.bytes[self.pos..].starts_with(b"false") => {
                self.literal(5, Kind::Bool(false))
            }
            Some(b'n') if self.bytes[self.pos..].starts_with(b"null") => {
                self.literal(4, Kind::Null)
            }
            _ => {
                let found = self.found();
                let hint = if found.starts_with('`')
                    && found.len() > 3
                    && found.as_bytes()[1].is_ascii_alphabetic()
                {
                    " (strings must be in double quotes)"
                } else {
                    ""
                };
                return Err(self.err_here(&format!("expected a value, found {found}{hint}")));
            }
        };
        Ok(Value {
            kind,
            span: Span {
                start,
                end: self.pos,
            },
        })
    }

    fn literal(&mut self, len: usize, kind: Kind) -> Kind {
        self.pos += len;
        kind
    }

    fn enter(&self, depth: usize) -> Result<usize, SyntaxError> {
        if depth >= MAX_DEPTH {
            return Err(self.err_here(&format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(depth + 1)
    }

    fn object(&mut self, depth: usize) -> Result<Kind, SyntaxError> {
        let depth = self.enter(depth)?;
        self.pos += 1; // '{'
        let mut members: Vec<(Key, Value)> = Vec::new();
        loop {
            self.skip_trivia()?;
            match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Kind::Object(members));
                }
                Some(b'"') => {}
                Some(b',') => {
                    let what = if members.is_empty() {
                        "a leading"
                    } else {
                        "a second"
                    };
                    return Err(
                        self.err_here(&format!("expected a quoted key or `}}`, found {what} `,`"))
                    );
                }
                _ => {
                    let found = self.found();
                    return Err(
                        self.err_here(&format!("expected a quoted key or `}}`, found {found}"))
                    );
                }
            }
            let kstart = self.pos;
            let name = self.string()?;
            let key = Key {
                name,
                span: Span {
                    start: kstart,
                    end: self.pos,
                },
            };
            if let Some((first, _)) = members.iter().find(|(k, _)| k.name == key.name) {
                let line = line_col(self.src, first.span.start).0;
                return Err(self.err_at(
                    kstart,
                    &format!(
                        "duplicate key \"{}\" (first given on line {line})",
                        key.name
                    ),
                ));
            }
            self.skip_trivia()?;
            if self.peek() != Some(b':') {
                let found = self.found();
                return Err(self.err_here(&format!(
                    "expected `:` after key \"{}\", found {found}",
                    key.name
                )));
            }
            self.pos += 1;
            self.skip_trivia()?;
            let value = self.value(depth)?;
            members.push((key, value));
            self.skip_trivia()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => {
                    let found = self.found();
                    return Err(self.err_here(&format!(
                        "expected `,` or `}}` after an object member, found {found}"
                    )));
                }
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Kind, SyntaxError> {
        let depth = self.enter(depth)?;
        self.pos += 1; // '['
        let mut items = Vec::new();
        loop {
            self.skip_trivia()?;
            match self.peek() {
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Kind::Array(items));
                }
                Some(b',') => {
                    let what = if items.is_empty() {
                        "a leading"
                    } else {
                        "a second"
                    };
                    return Err(
                        self.err_here(&format!("expected a value or `]`, found {what} `,`"))
                    );
                }
                None => return Err(self.err_here("expected a value or `]`, found end of input")),
                Some(b'}' | b':') => {
                    let found = self.found();
                    return Err(self.err_here(&format!("expected a value or `]`, found {found}")));
                }
                _ => {}
            }
            items.push(self.value(depth)?);
            self.skip_trivia()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {}
                _ => {
                    let found = self.found();
                    return Err(self.err_here(&format!(
                        "expected `,` or `]` after an array element, found {found}"
                    )));
                }
            }
        }
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos;
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let rest = self.src.get(self.pos..).unwrap_or("");
            let Some(c) = rest.chars().next() else {
                return Err(self.err_at(start, "unterminated string: expected a closing `\"`"));
            };
            match c {
                '"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                '\\' => {
                    let esc_at = self.pos;
                    let Some(&e) = self.bytes.get(self.pos + 1) else {
                        return Err(
                            self.err_at(start, "unterminated string: expected a closing `\"`")
                        );
                    };
                    self.pos += 2;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape(esc_at)?),
                        _ => {
                            return Err(self.err_at(
                                esc_at,
                                "invalid escape: expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX",
                            ));
                        }
                    }
                }
                c if (c as u32) < 0x20 => {
                    let what = if c == '\n' {
                        "a line break"
                    } else {
                        "a control character"
                    };
                    return Err(self.err_here(&format!(
                        "expected a closing `\"` before {what} (write it escaped, e.g. \\n)"
                    )));
                }
                c => {
                    out.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
    }

    fn hex4(&mut self, esc_at: usize) -> Result<u32, SyntaxError> {
        let digits = self.src.get(self.pos..self.pos + 4).unwrap_or("");
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err_at(esc_at, "invalid escape: expected four hex digits after \\u"));
        }
        self.pos += 4;
        u32::from_str_radix(digits, 16).map_err(|_| self.err_at(esc_at, "invalid \\u escape"))
    }

    fn unicode_escape(&mut self, esc_at: usize) -> Result<char, SyntaxError> {
        let hi = self.hex4(esc_at)?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            if !self.bytes[self.pos..].starts_with(b"\\u") {
                return Err(self.err_at(
                    esc_at,
                    "invalid escape: a high surrogate must be followed by \\uDC00-\\uDFFF",
                ));
            }
            self.pos += 2;
            let lo = self.hex4(esc_at)?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(self.err_at(
                    esc_at,
                    "invalid escape: a high surrogate must be followed by \\uDC00-\\uDFFF",
                ));
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        char::from_u32(code).ok_or_else(|| {
            self.err_at(
                esc_at,
                "invalid escape: a lone surrogate is not a character",
            )
        })
    }

    fn number(&mut self) -> Result<Kind, SyntaxError> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let s = p.pos;
            while p.peek().is_some_and(|b| b.is_ascii_digit()) {
                p.pos += 1;
            }
            p.pos - s
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return Err(self.err_at(start, "invalid number: no leading zeros"));
                }
            }
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.err_here("invalid number: expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.err_here("invalid number: expected a digit after `.`"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.err_here("invalid number: expected a digit in the exponent"));
            }
        }
        Ok(Kind::Number(
            self.src.get(start..self.pos).unwrap_or("").to_string(),
        ))
    }
}

/// Returns the 1-based line and column (in characters) of byte `offset`.
pub(crate) fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text
        .get(line_start..offset)
        .map_or(1, |s| s.chars().count() + 1);
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

/// Renders a string as a JSON string literal (for messages and rule text).
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (u32, u32, String) {
        let e = parse(text).unwrap_err();
        let (l, c) = line_col(text, e.offset);
        (l, c, e.message)
    }

    #[test]
    fn comments_and_trailing_commas_are_accepted() {
        let v =
            parse("// top\n{ /* a */ \"a\": [1, 2,], // x\n \"b\": {\"c\": null,}, }\n").unwrap();
        let Kind::Object(m) = v.kind else { panic!() };
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].0.name, "a");
        assert_eq!(m[1].1.span.start, 42);
    }

    #[test]
    fn loose_json5_forms_are_rejected_with_positions() {
        assert_eq!(err("{acls: []}").0..=err("{acls: []}").1, 1..=2);
        assert!(err("{acls: []}").2.contains("expected a quoted key"));
        assert_eq!(
            err("{\"a\": 'x'}").2,
            "expected a value, found `'` (strings use double quotes)"
        );
        assert_eq!(
            err("[1,,2]"),
            (1, 4, "expected a value or `]`, found a second `,`".into())
        );
        assert_eq!(
            err("[0x10]").2,
            "expected `,` or `]` after an array element, found `x10`"
        );
        assert_eq!(err("[+1]").2, "expected a value, found `+`");
        assert_eq!(err("[01]").2, "invalid number: no leading zeros");
        assert_eq!(
            err("{\"a\": 1 \"b\": 2}"),
            (
                1,
                9,
                "expected `,` or `}` after an object member, found `\"`".into()
            )
        );
        assert_eq!(
            err("{} {}").2,
            "expected end of input after the top-level value, found `{`"
        );
        assert_eq!(
            err("  \n ").2,
            "expected a JSON value, found end of input (the document is empty)"
        );
        assert_eq!(
            err("{\"a\": tru}").2,
            "expected a value, found `tru` (strings must be in double quotes)"
        );
    }

    #[test]
    fn unterminated_things_point_at_their_start() {
        assert_eq!(
            err("{\n  \"a\": \"abc\n}"),
            (
                2,
                12,
                "expected a closing `\"` before a line break (write it escaped, e.g. \\n)".into()
            )
        );
        assert_eq!(
            err("{\n /* open\n"),
            (2, 2, "unterminated block comment: expected `*/`".into())
        );
        assert_eq!(
            err("[\"ab"),
            (1, 2, "unterminated string: expected a closing `\"`".into())
        );
    }

    #[test]
    fn duplicate_keys_are_rejected_at_the_second_key() {
        assert_eq!(
            err("{\n\"a\": 1,\n  \"a\": 2}"),
            (3, 3, "duplicate key \"a\" (first given on line 2)".into())
        );
    }

    #[test]
    fn escapes_decode_and_columns_count_characters() {
        let v = parse(r#"["\u00e9\ud83d\ude00\n"]"#).unwrap();
        let Kind::Array(a) = v.kind else { panic!() };
        assert_eq!(a[0].kind, Kind::String("é😀\n".into()));
        assert_eq!(err("[\"é\", x]").1, 7);
        assert_eq!(err(r#"["\x"]"#).1, 3);
        assert_eq!(
            err(r#"["\ud83d"]"#).2,
            "invalid escape: a high surrogate must be followed by \\uDC00-\\uDFFF"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert!(err(&deep).2.contains("nesting deeper"));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,64}") {
            let _ = parse(&s);
        }

        #[test]
        fn plain_json_parses_like_serde_json(v in arb_json()) {
            let text = serde_json::to_string_pretty(&v).unwrap();
            let ours = parse(&text).unwrap();
            proptest::prop_assert_eq!(to_serde(&ours), v);
        }
    }

    fn to_serde(v: &Value) -> serde_json::Value {
        match &v.kind {
            Kind::Null => serde_json::Value::Null,
            Kind::Bool(b) => serde_json::Value::Bool(*b),
            Kind::Number(n) => serde_json::from_str(n).unwrap(),
            Kind::String(s) => serde_json::Value::String(s.clone()),
            Kind::Array(a) => serde_json::Value::Array(a.iter().map(to_serde).collect()),
            Kind::Object(m) => serde_json::Value::Object(
                m.iter()
                    .map(|(k, v)| (k.name.clone(), to_serde(v)))
                    .collect(),
            ),
        }
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i32>().prop_map(|n| serde_json::json!(n)),
            "\\PC{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
