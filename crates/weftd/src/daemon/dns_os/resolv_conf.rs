//! resolv.conf(5), the few lines Weft reads and writes: `nameserver`,
//! `search` / `domain` and `options`. Parsing is as lenient as glibc's
//! (unknown keywords and comments are skipped) but a file that is not UTF-8
//! or holds a `nameserver` that is not an IP address is refused: Weft will
//! not replace a file it does not understand.

use std::net::IpAddr;

/// The first line of every file Weft writes; a file that starts with it is
/// ours (see [`super::direct`]).
pub const MARKER: &str = "# Written by weftd (Weft MagicDNS)";

/// The parts of a resolv.conf Weft cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResolvConf {
    /// `nameserver` lines, in order.
    pub nameservers: Vec<IpAddr>,
    /// The last `search` (or `domain`) line's domains, as glibc uses them.
    pub search: Vec<String>,
    /// Every `options` token, in order.
    pub options: Vec<String>,
}

/// Why a resolv.conf was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not UTF-8 text.
    #[error("not UTF-8 text")]
    NotText,
    /// A `nameserver` line without an IP address.
    #[error("line {line}: nameserver {value:?} is not an IP address")]
    BadNameserver { line: usize, value: String },
}

impl ResolvConf {
    /// Parses resolv.conf bytes.
    ///
    /// # Errors
    /// [`ParseError`] for text that is not UTF-8 or a bad `nameserver`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotText)?;
        let mut rc = ResolvConf::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            let Some(key) = words.next() else { continue };
            match key {
                "nameserver" => {
                    let value = words.next().unwrap_or_default();
                    // glibc accepts a scope suffix (fe80::1%eth0); keep the address.
                    let addr = value.split('%').next().unwrap_or_default();
                    let ip = addr.parse().map_err(|_| ParseError::BadNameserver {
                        line: i + 1,
                        value: value.to_owned(),
                    })?;
                    rc.nameservers.push(ip);
                }
                "search" | "domain" => rc.search = words.map(str::to_owned).collect(),
                "options" => rc.options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        Ok(rc)
    }

    /// Returns the file Weft writes: the marker naming `backup`, our
    /// nameservers and search domains, and the options of `original` that
    /// still make sense with one local resolver (all but `rotate`).
    pub fn render_ours(
        nameservers: &[IpAddr],
        search: &[String],
        original: &ResolvConf,
        backup: &str,
    ) -> Vec<u8> {
        let mut s = format!(
            "{MARKER}; the original is backed up in {backup}\n\
             # weftd puts it back on weft down, when it stops, and at its next start.\n"
        );
        for ns in nameservers {
            s.push_str(&format!("nameserver {ns}\n"));
        }
        if !search.is_empty() {
            s.push_str(&format!("search {}\n", search.join(" ")));
        }
        let options: Vec<&str> = original
            .options
            .iter()
            .map(String::as_str)
            .filter(|o| *o != "rotate")
            .collect();
        if !options.is_empty() {
            s.push_str(&format!("options {}\n", options.join(" ")));
        }
        s.into_bytes()
    }
}

/// Returns whether `bytes` is a file Weft wrote (it starts with [`MARKER`]).
pub fn is_ours(bytes: &[u8]) -> bool {
    bytes.starts_with(MARKER.as_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameservers_search_and_options_like_glibc() {
        let rc = ResolvConf::parse(
            b"# comment\ndomain old.example\nsearch a.example b.example ; trailing\n\
              nameserver 192.0.2.1\nnameserver fe80::1%eth0\noptions edns0 ndots:2\n\
              options rotate\nsortlist 10.0.0.0\n",
        )
        .unwrap();
        assert_eq!(
            rc.nameservers,
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert_eq!(rc.search, vec!["a.example", "b.example"]);
        assert_eq!(rc.options, vec!["edns0", "ndots:2", "rotate"]);
    }

    #[test]
    fn refuses_a_bad_nameserver_and_binary_content() {
        assert_eq!(
            ResolvConf::parse(b"nameserver dns.example\n"),
            Err(ParseError::BadNameserver {
                line: 1,
                value: "dns.example".into()
            })
        );
        assert_eq!(ResolvConf::parse(b"\xff\xfe"), Err(ParseError::NotText));
    }

    #[test]
    fn ours_carries_the_marker_and_keeps_options_but_rotate() {
        let original = ResolvConf::parse(b"nameserver 192.0.2.1\noptions rotate edns0\n").unwrap();
        let ours = ResolvConf::render_ours(
            &["100.100.100.100".parse().unwrap()],
            &["t.weft.internal".into(), "corp.example".into()],
            &original,
            "/var/lib/weft/resolv.conf.backup",
        );
        assert!(is_ours(&ours));
        let text = String::from_utf8(ours.clone()).unwrap();
        assert!(text.contains("backed up in /var/lib/weft/resolv.conf.backup"));
        let parsed = ResolvConf::parse(&ours).unwrap();
        assert_eq!(
            parsed.nameservers,
            vec!["100.100.100.100".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(parsed.search, vec!["t.weft.internal", "corp.example"]);
        assert_eq!(parsed.options, vec!["edns0"]);
    }
}
