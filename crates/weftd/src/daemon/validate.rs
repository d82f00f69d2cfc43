//! Bounds on the prefs a LocalAPI caller may set (`PATCH prefs`, `POST
//! start`): what becomes HostInfo is held to the limits control applies
//! ([`weft_types::node::host_info_limits`], [`HostInfo::validate`]), and
//! the local-only strings get limits of their own. A refused value is a 400
//! naming the field, its flag and the limit; nothing is stored and the
//! control connection never sees it.

use weft_localapi::Prefs;
use weft_types::names::NameError;
use weft_types::node::{HostInfoError, host_info_limits};
use weft_types::{HostInfo, Tag};

/// A pref that breaks a limit; the message names the field, its flag and
/// the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPrefs(pub String);

/// The longest profile nickname, in bytes.
pub const NICKNAME_MAX_LEN: usize = 64;
/// The longest control server URL, in bytes.
pub const CONTROL_URL_MAX_LEN: usize = 2048;
/// The longest CA file path (`--login-server-ca`), in bytes (Linux's
/// `PATH_MAX`).
pub const CA_FILE_MAX_LEN: usize = 4096;

/// Checks `prefs` before they are stored.
///
/// # Errors
/// [`InvalidPrefs`] naming the first field that breaks a limit.
pub fn prefs(prefs: &Prefs) -> Result<(), InvalidPrefs> {
    text(
        "control_url (--login-server)",
        &prefs.control_url,
        CONTROL_URL_MAX_LEN,
    )?;
    if let Some(nick) = &prefs.nickname {
        text("nickname (--nickname)", nick, NICKNAME_MAX_LEN)?;
    }
    if let Some(ca) = &prefs.control_ca_file {
        text("control_ca_file (--login-server-ca)", ca, CA_FILE_MAX_LEN)?;
        if !ca.starts_with('/') {
            return Err(InvalidPrefs(format!(
                "control_ca_file (--login-server-ca) {:?} is not an absolute path; \
                 give the CA file's full path",
                truncated(ca)
            )));
        }
    }
    // Counted before parsing: the HostInfo set would fold duplicates.
    let tags = &prefs.advertise_tags;
    if tags.len() > host_info_limits::REQUESTED_TAGS_MAX {
        return Err(InvalidPrefs(format!(
            "advertise_tags (--advertise-tags) has {} entries; at most {} are allowed",
            tags.len(),
            host_info_limits::REQUESTED_TAGS_MAX
        )));
    }
    let mut requested_tags = std::collections::BTreeSet::new();
    for t in tags {
        match t.parse::<Tag>() {
            Ok(tag) => {
                requested_tags.insert(tag);
            }
            Err(e) => {
                // The error quotes the value: only its start, for a long one.
                let e = match e {
                    NameError::BadTag(v) => NameError::BadTag(truncated(&v)),
                    other => other,
                };
                return Err(InvalidPrefs(format!(
                    "advertise_tags (--advertise-tags): {e}"
                )));
            }
        }
    }
    // What these prefs put into HostInfo, checked the way control will.
    let host_info = HostInfo {
        hostname: prefs.hostname.clone().unwrap_or_default(),
        requested_tags,
        ..HostInfo::default()
    };
    host_info.validate().map_err(|e| host_info_error(&e))
}

/// Refuses `value` longer than `max` bytes or holding control characters.
fn text(field: &str, value: &str, max: usize) -> Result<(), InvalidPrefs> {
    if value.len() > max {
        return Err(InvalidPrefs(format!(
            "{field} is {} bytes long; at most {max} are allowed",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidPrefs(format!(
            "{field} contains control characters (terminal escapes, newlines); use printable text"
        )));
    }
    Ok(())
}

/// Names a HostInfo field by the pref and flag that set it.
fn pref_name(field: &str) -> &str {
    match field {
        "hostname" => "hostname (--hostname)",
        "requested_tags" => "advertise_tags (--advertise-tags)",
        other => other,
    }
}

fn host_info_error(e: &HostInfoError) -> InvalidPrefs {
    InvalidPrefs(match e {
        HostInfoError::TooLong { field, len, max } => format!(
            "{} is {len} bytes long; at most {max} are allowed",
            pref_name(field)
        ),
        HostInfoError::ControlCharacters { field } => format!(
            "{} contains control characters (terminal escapes, newlines); use printable text",
            pref_name(field)
        ),
        HostInfoError::TooMany { field, count, max } => format!(
            "{} has {count} entries; at most {max} are allowed",
            pref_name(field)
        ),
        other => format!("{other} (hostname and advertised tags together)"),
    })
}

/// The start of a long value, for messages.
fn truncated(s: &str) -> String {
    const SHOWN: usize = 64;
    match s.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or_default()),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::backend::BackendError;
    use crate::daemon::localapi::ApiError;

    fn refused(p: &Prefs) -> String {
        let e = ApiError::from(BackendError::from(prefs(p).unwrap_err()));
        assert_eq!(e.status, 400);
        e.message
    }

    #[test]
    fn ordinary_prefs_pass() {
        let p = Prefs {
            hostname: Some("build-box-7".into()),
            nickname: Some("work".into()),
            advertise_tags: vec!["tag:ci".into(), "tag:server".into()],
            ..Prefs::default()
        };
        prefs(&p).unwrap();
        prefs(&Prefs::default()).unwrap();
    }

    #[test]
    fn oversized_fields_are_refused_naming_the_field_and_the_limit() {
        let huge = Prefs {
            hostname: Some("h".repeat(1 << 20)),
            ..Prefs::default()
        };
        assert_eq!(
            refused(&huge),
            "hostname (--hostname) is 1048576 bytes long; at most 253 are allowed"
        );
        let many = Prefs {
            advertise_tags: (0..50_000).map(|i| format!("tag:t{i}")).collect(),
            ..Prefs::default()
        };
        assert_eq!(
            refused(&many),
            "advertise_tags (--advertise-tags) has 50000 entries; at most 64 are allowed"
        );
        // The same tag 50,000 times is still 50,000 entries.
        let dup = Prefs {
            advertise_tags: vec!["tag:a".into(); 50_000],
            ..Prefs::default()
        };
        assert!(refused(&dup).contains("50000 entries"));
        let nick = Prefs {
            nickname: Some("n".repeat(100_000)),
            ..Prefs::default()
        };
        assert_eq!(
            refused(&nick),
            "nickname (--nickname) is 100000 bytes long; at most 64 are allowed"
        );
        let url = Prefs {
            control_url: format!("http://{}", "u".repeat(5000)),
            ..Prefs::default()
        };
        assert!(refused(&url).starts_with("control_url (--login-server) is 5007 bytes long"));
        let ca = Prefs {
            control_ca_file: Some(format!("/{}", "c".repeat(5000))),
            ..Prefs::default()
        };
        assert!(refused(&ca).starts_with("control_ca_file (--login-server-ca) is 5001 bytes long"));
        let relative = Prefs {
            control_ca_file: Some("ca.pem".into()),
            ..Prefs::default()
        };
        assert!(refused(&relative).contains("not an absolute path"));
    }

    #[test]
    fn control_characters_in_names_are_refused() {
        for p in [
            Prefs {
                hostname: Some("box\x1b[2J".into()),
                ..Prefs::default()
            },
            Prefs {
                nickname: Some("work\r\nfake".into()),
                ..Prefs::default()
            },
            Prefs {
                control_url: "http://c\x07/".into(),
                ..Prefs::default()
            },
        ] {
            assert!(refused(&p).contains("contains control characters"), "{p:?}");
        }
        let bad_tag = Prefs {
            advertise_tags: vec![format!("tag:{}", "\x1b".repeat(200))],
            ..Prefs::default()
        };
        let msg = refused(&bad_tag);
        assert!(
            msg.starts_with("advertise_tags (--advertise-tags): \"tag:\\u{1b}")
                && msg.contains("is not a tag")
                && msg.len() < 700,
            "{msg}"
        );
    }
}
