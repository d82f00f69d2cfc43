//! The known_hosts file `weft ssh` pins peers' SSH host keys with: its text,
//! built from the netmap, and where and how it is written.

use std::fmt::Write as _;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use weft_localapi::{PeerStatus, Status};

/// Returns the known_hosts text: for every node's host key, one line each
/// under its short name, full name and addresses. Names or keys that could
/// break the file's syntax (whitespace, commas, control characters) are
/// skipped.
pub fn known_hosts(status: &Status) -> String {
    let mut out = String::new();
    for node in status.self_node.iter().chain(&status.peers) {
        let names = host_names(node);
        for key in node.ssh_host_keys.iter().map(|k| k.trim()) {
            let fields = key.split_whitespace().count();
            if fields < 2 || key.chars().any(char::is_control) {
                continue;
            }
            for name in &names {
                let _ = writeln!(out, "{name} {key}");
            }
        }
    }
    out
}

fn host_names(node: &PeerStatus) -> Vec<String> {
    let fqdn = node.dns_name.trim_end_matches('.');
    let mut names: Vec<String> = [node.name.as_str(), fqdn]
        .into_iter()
        .filter(|n| {
            !n.is_empty() && !n.contains(|c: char| c.is_whitespace() || c.is_control() || c == ',')
        })
        .map(str::to_owned)
        .collect();
    names.dedup();
    names.extend(node.addresses.iter().map(ToString::to_string));
    names
}

/// Returns the known_hosts path: `$XDG_CONFIG_HOME/weft/ssh_known_hosts`,
/// else `$HOME/.config/weft/ssh_known_hosts`.
///
/// # Errors
/// When neither variable holds an absolute path.
pub fn known_hosts_path() -> anyhow::Result<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let config = match absolute("XDG_CONFIG_HOME") {
        Some(dir) => dir,
        None => match absolute("HOME") {
            Some(home) => home.join(".config"),
            None => bail!("cannot find a config directory: set HOME or XDG_CONFIG_HOME"),
        },
    };
    Ok(config.join("weft").join("ssh_known_hosts"))
}

/// Writes `text` to `path` atomically with mode 0600 (the directory 0700).
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .context("the known_hosts path has no directory")?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".ssh_known_hosts.{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::tests::{node, status};

    #[test]
    fn every_host_key_is_listed_under_name_fqdn_and_each_address() {
        let mut me = node(1, "me", "me", &["100.64.0.1"]);
        me.ssh_host_keys = vec!["ssh-ed25519 AAAAme".into()];
        let mut web = node(2, "web", "web", &["100.64.0.2", "fd7a:115c:a1e0::2"]);
        web.ssh_host_keys = vec![
            "ssh-ed25519 AAAAweb root@web\n".into(),
            "ssh-rsa AAAArsa".into(),
        ];
        let db = node(3, "db", "db", &["100.64.0.3"]);
        let text = known_hosts(&status(me, vec![web, db]));
        assert_eq!(
            text,
            "me ssh-ed25519 AAAAme\n\
             me.t.weft.internal ssh-ed25519 AAAAme\n\
             100.64.0.1 ssh-ed25519 AAAAme\n\
             web ssh-ed25519 AAAAweb root@web\n\
             web.t.weft.internal ssh-ed25519 AAAAweb root@web\n\
             100.64.0.2 ssh-ed25519 AAAAweb root@web\n\
             fd7a:115c:a1e0::2 ssh-ed25519 AAAAweb root@web\n\
             web ssh-rsa AAAArsa\n\
             web.t.weft.internal ssh-rsa AAAArsa\n\
             100.64.0.2 ssh-rsa AAAArsa\n\
             fd7a:115c:a1e0::2 ssh-rsa AAAArsa\n"
        );
    }

    #[test]
    fn keys_or_names_that_could_inject_lines_are_skipped() {
        let mut evil = node(2, "a b", "x", &["100.64.0.2"]);
        evil.dns_name = "ok.t.weft.internal.".into();
        evil.ssh_host_keys = vec![
            "ssh-ed25519 AAAA\n* ssh-ed25519 EVIL".into(),
            "onlyonefield".into(),
            "ssh-ed25519 GOOD".into(),
        ];
        let text = known_hosts(&status(node(1, "me", "me", &[]), vec![evil]));
        assert_eq!(
            text,
            "ok.t.weft.internal ssh-ed25519 GOOD\n100.64.0.2 ssh-ed25519 GOOD\n"
        );
    }

    #[test]
    fn the_file_is_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/weft/ssh_known_hosts");
        write_private(&path, "a k1\n").unwrap();
        write_private(&path, "b k2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b k2\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
    }
}
