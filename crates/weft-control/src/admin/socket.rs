//! The admin socket: `<state-dir>/admin.sock`, HTTP + JSON, the same routes
//! as `/api/v1` without an API key. Only root (and the user the server runs
//! as) may use it: the socket file is 0600 and every connection's peer
//! credentials (`SO_PEERCRED`) are checked.

use std::path::{Path, PathBuf};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::api::Actor;

/// Binds the socket (replacing a stale one) with mode 0600.
///
/// # Errors
/// When the path is in use by a live server, or cannot be created.
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if path.exists() {
        // A live server answers; a stale file (after a crash) does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "{} is in use: another weft-control serves this state directory",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the admin routes on the socket until `stop`.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    routes: Router,
    stop: CancellationToken,
) {
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let uid = match stream.peer_cred() {
            Ok(c) => c.uid(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the admin socket peer's credentials");
                continue;
            }
        };
        if uid != 0 && uid != own_uid {
            tracing::warn!(
                uid,
                "refused an admin socket connection from a non-root user"
            );
            continue;
        }
        let routes = routes.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(Actor(format!("admin socket (uid {uid})")));
                    let routes = routes.clone();
                    async move { tower::ServiceExt::oneshot(routes, req).await }
                });
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin socket connection failed");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}
