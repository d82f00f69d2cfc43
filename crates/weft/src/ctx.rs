//! What every command runs with: the LocalAPI client, and enough of the
//! command line to suggest a corrected one.

use std::path::PathBuf;

use weft_localapi::{DEFAULT_SOCKET, LocalApiError, LocalClient};

use crate::render::display_args;

/// The context of one `weft` invocation.
#[derive(Debug)]
pub struct Ctx {
    pub client: LocalClient,
    socket: PathBuf,
    /// Whether `--socket` was on the command line (rather than from the
    /// environment or the default).
    socket_in_argv: bool,
    /// The arguments after the program name, as typed.
    argv: Vec<String>,
}

impl Ctx {
    /// Creates the context for a daemon at `socket`.
    pub fn new(socket: PathBuf, socket_in_argv: bool, argv: Vec<String>) -> Self {
        Ctx {
            client: LocalClient::new(socket.clone()),
            socket,
            socket_in_argv,
            argv,
        }
    }

    /// Returns how to invoke `weft` against this same daemon in a suggested
    /// command: `weft`, or `weft --socket=PATH` when it is not the default.
    pub fn prog(&self) -> String {
        if self.socket.as_os_str() == DEFAULT_SOCKET {
            "weft".to_owned()
        } else {
            format!(
                "weft {}",
                display_args(&[format!("--socket={}", self.socket.display())])
            )
        }
    }

    /// Turns a LocalAPI failure into an error a user can act on.
    ///
    /// # Errors
    /// Always, when `result` is an error: a 403 explains that the command
    /// needs root and suggests the `sudo` command line; other errors keep the
    /// daemon's message (connection errors already name the socket and the
    /// `--socket`/`WEFT_SOCKET` fix).
    pub fn api<T>(&self, result: Result<T, LocalApiError>) -> anyhow::Result<T> {
        result.map_err(|e| match e {
            LocalApiError::Daemon {
                status: 403,
                message,
            } => anyhow::anyhow!(
                "this command changes weftd and needs root (or the --operator user); \
                 weftd said: {message}\ntry: {}",
                self.sudo_command()
            ),
            // Its message already names the cause; `{:#}` would repeat it.
            e @ LocalApiError::Connect { .. } => anyhow::anyhow!("{e}"),
            other => anyhow::Error::new(other),
        })
    }

    /// Returns the command line prefixed with `sudo`, keeping the socket
    /// (sudo drops `WEFT_SOCKET`) and hiding a literal auth key.
    fn sudo_command(&self) -> String {
        let mut args = Vec::with_capacity(self.argv.len() + 1);
        if !self.socket_in_argv && self.socket.as_os_str() != DEFAULT_SOCKET {
            args.push(format!("--socket={}", self.socket.display()));
        }
        args.extend(self.argv.iter().cloned());
        format!("sudo weft {}", display_args(&args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(socket: &str, in_argv: bool, argv: &[&str]) -> Ctx {
        Ctx::new(
            socket.into(),
            in_argv,
            argv.iter().map(|s| (*s).to_owned()).collect(),
        )
    }

    #[test]
    fn a_403_suggests_the_same_command_under_sudo() {
        let c = ctx(DEFAULT_SOCKET, false, &["up", "--ssh"]);
        let err = c
            .api::<()>(Err(LocalApiError::Daemon {
                status: 403,
                message: "read-only".into(),
            }))
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("needs root (or the --operator user)"), "{msg}");
        assert!(msg.ends_with("\ntry: sudo weft up --ssh"), "{msg}");
    }

    #[test]
    fn the_sudo_hint_keeps_a_socket_that_came_from_the_environment() {
        let c = ctx("/tmp/n1.sock", false, &["set", "--shields-up"]);
        assert_eq!(
            c.sudo_command(),
            "sudo weft --socket=/tmp/n1.sock set --shields-up"
        );
        let c = ctx("/tmp/n1.sock", true, &["--socket", "/tmp/n1.sock", "down"]);
        assert_eq!(c.sudo_command(), "sudo weft --socket /tmp/n1.sock down");
    }

    #[test]
    fn the_sudo_hint_hides_a_literal_auth_key() {
        let c = ctx(
            DEFAULT_SOCKET,
            false,
            &["up", "--authkey", "sekrit", "--hostname=a"],
        );
        assert_eq!(
            c.sudo_command(),
            "sudo weft up --authkey <KEY> --hostname=a"
        );
    }

    #[test]
    fn other_errors_pass_through_unchanged() {
        let c = ctx(DEFAULT_SOCKET, false, &["status"]);
        let err = c
            .api::<()>(Err(LocalApiError::Daemon {
                status: 500,
                message: "boom".into(),
            }))
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
    }
}
