//! Installing nodes from the server: `GET /install.sh` (packaging/install.sh
//! with this server's URL filled in) and `GET /packages/{file}`: the `.deb`
//! files of the package directory (`--packages-dir`) and `SHA256SUMS`, their
//! checksums, which install.sh verifies a download against before it changes
//! anything. See docs/INSTALL.md.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};

/// packaging/install.sh as shipped, with its `SERVER="@WEFT_SERVER@"` line.
pub const INSTALL_SH_TEMPLATE: &str = include_str!("../../../packaging/install.sh");
const PLACEHOLDER_LINE: &str = "SERVER=\"@WEFT_SERVER@\"";

/// The checksum file served next to the packages.
pub const CHECKSUMS_FILE: &str = "SHA256SUMS";

/// install.sh with `server_url` as the server it installs from (quoted for
/// the shell whatever the URL holds).
#[must_use]
pub fn install_script(server_url: &str) -> String {
    let quoted = format!("'{}'", server_url.replace('\'', r"'\''"));
    INSTALL_SH_TEMPLATE.replacen(PLACEHOLDER_LINE, &format!("SERVER={quoted}"), 1)
}

/// Whether `name` may be served from the package directory: a plain file
/// name of a `.deb` (no path, no hidden file).
#[must_use]
pub fn is_package_name(name: &str) -> bool {
    name.len() <= 200
        && name.ends_with(".deb")
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'~'))
}

/// The routes' state: the server URL and the package directory, with the
/// checksums computed so far (by name, size and modification time).
#[derive(Debug)]
struct Packages {
    script: String,
    dir: Option<PathBuf>,
    sums: Mutex<HashMap<String, (u64, SystemTime, String)>>,
}

/// `GET /install.sh` and `GET /packages/{file}`.
pub(crate) fn routes(server_url: &str, dir: Option<PathBuf>) -> Router {
    let state = Arc::new(Packages {
        script: install_script(server_url),
        dir,
        sums: Mutex::default(),
    });
    Router::new()
        .route("/install.sh", get(script))
        .route("/packages/{file}", get(package))
        .with_state(state)
}

async fn script(State(p): State<Arc<Packages>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        p.script.clone(),
    )
        .into_response()
}

async fn package(State(p): State<Arc<Packages>>, UrlPath(file): UrlPath<String>) -> Response {
    let Some(dir) = p.dir.clone() else {
        // No package directory: an empty list, so install.sh says there is
        // no package rather than that the server is down.
        return if file == CHECKSUMS_FILE {
            text(String::new())
        } else {
            StatusCode::NOT_FOUND.into_response()
        };
    };
    if file == CHECKSUMS_FILE {
        let q = p.clone();
        return match tokio::task::spawn_blocking(move || checksums(&dir, &q.sums)).await {
            Ok(Ok(list)) => text(list),
            Ok(Err(e)) => {
                tracing::warn!(dir = %dir_name(&p), error = %e, "cannot list the package directory");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
    }
    if !is_package_name(&file) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = dir.join(&file);
    let f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return StatusCode::NOT_FOUND.into_response();
        }
        Err(e) => {
            tracing::warn!(file, error = %e, "cannot open a package");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let len = match f.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let body = Body::from_stream(futures::stream::unfold(f, |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match tokio::io::AsyncReadExt::read(&mut f, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    }));
    (
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.debian.binary-package".to_owned(),
            ),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

fn dir_name(p: &Packages) -> String {
    p.dir
        .as_deref()
        .map(|d| d.display().to_string())
        .unwrap_or_default()
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// `sha256sum`'s output for the `.deb` files in `dir`, sorted by name;
/// a file's sum is computed again only when its size or time changed.
fn checksums(
    dir: &Path,
    cache: &Mutex<HashMap<String, (u64, SystemTime, String)>>,
) -> std::io::Result<String> {
    let mut names: Vec<(String, u64, SystemTime)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if meta.is_file() && is_package_name(&name) {
            names.push((name, meta.len(), meta.modified()?));
        }
    }
    names.sort();
    let mut out = String::new();
    for (name, len, mtime) in names {
        let cached = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&name)
            .filter(|(l, t, _)| *l == len && *t == mtime)
            .map(|(_, _, s)| s.clone());
        let sum = match cached {
            Some(s) => s,
            None => {
                let s = sha256_file(&dir.join(&name))?;
                cache
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.clone(), (len, mtime, s.clone()));
                s
            }
        };
        out.push_str(&format!("{sum}  {name}\n"));
    }
    Ok(out)
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_carries_the_server_url_quoted() {
        let s = install_script("http://198.18.0.1:8080");
        assert!(s.contains("\nSERVER='http://198.18.0.1:8080'\n"));
        assert!(!s.contains(PLACEHOLDER_LINE));
        let s = install_script("http://x/'$(reboot)'");
        assert!(s.contains(r"SERVER='http://x/'\''$(reboot)'\'''"), "{s}");
    }

    #[test]
    fn only_plain_deb_names_are_served() {
        assert!(is_package_name("weft_0.1.0_amd64.deb"));
        assert!(is_package_name("weft_0.1.0+git1~rc1_arm64.deb"));
        for bad in [
            "../etc/passwd.deb",
            ".hidden.deb",
            "weft.tar",
            "a/b.deb",
            "",
            "weft .deb",
        ] {
            assert!(!is_package_name(bad), "{bad}");
        }
    }

    #[test]
    fn checksums_match_sha256sum_and_follow_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("weft_1_amd64.deb"), b"abc").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"not a package").expect("write");
        let cache = Mutex::default();
        let list = checksums(dir.path(), &cache).expect("list");
        assert_eq!(
            list,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  weft_1_amd64.deb\n"
        );
        std::fs::write(dir.path().join("weft_1_amd64.deb"), b"abcd").expect("write");
        let list = checksums(dir.path(), &cache).expect("list");
        assert!(
            list.starts_with("88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"),
            "{list}"
        );
    }
}
