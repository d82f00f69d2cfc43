//! The decisions of `weft up` while it watches the daemon, as a pure state
//! machine: it is fed the `watch` events and says what to do next. The
//! driver in `cmd/up.rs` does the I/O and owns the clock.
//!
//! Driving it:
//! 1. Open `watch` and build [`UpWatch::new`] from its first event (the snapshot).
//! 2. Call `start`, then act on [`UpWatch::after_start`].
//! 3. Feed every following event to [`UpWatch::on_event`] and act on the
//!    result, until [`Action::Done`] or [`Action::Fail`].

use weft_localapi::{BackendState, Notify};

/// What the driver should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Show the user this login URL (a new one).
    ShowUrl(String),
    /// Ask the daemon for an interactive login (`login-interactive`).
    RequestLogin,
    /// Tell the user an admin must approve this machine (once).
    AwaitApproval,
    /// The node is running: stop watching, successfully.
    Done,
    /// Stop with this error (the daemon's reason).
    Fail(String),
}

/// The state `up` tracks between events.
#[derive(Debug)]
pub struct UpWatch {
    /// Whether the login (if any) is interactive: no auth key was given.
    interactive: bool,
    force_reauth: bool,
    state: BackendState,
    login_requested: bool,
    login_finished: bool,
    approval_told: bool,
    /// The last URL shown, so a repeated one is not printed twice.
    shown_url: Option<String>,
}

impl UpWatch {
    /// Creates the watcher from the state in the watch snapshot.
    pub fn new(state: BackendState, interactive: bool, force_reauth: bool) -> Self {
        UpWatch {
            interactive,
            force_reauth,
            state,
            login_requested: false,
            login_finished: false,
            approval_told: false,
            shown_url: None,
        }
    }

    /// Returns whether a login URL has been shown.
    pub fn url_shown(&self) -> Option<&str> {
        self.shown_url.as_deref()
    }

    /// Returns the last backend state seen.
    pub fn state(&self) -> BackendState {
        self.state
    }

    /// Returns what to do once `start` has returned: ask for an interactive
    /// login when one is needed, or finish at once when the node already
    /// runs and nothing asks for a new login.
    pub fn after_start(&mut self) -> Vec<Action> {
        if self.interactive && (self.state == BackendState::NeedsLogin || self.force_reauth) {
            self.login_requested = true;
            return vec![Action::RequestLogin];
        }
        if self.state == BackendState::Running && !self.force_reauth {
            return vec![Action::Done];
        }
        Vec::new()
    }

    /// Returns what to do about one event.
    pub fn on_event(&mut self, event: Notify) -> Vec<Action> {
        match event {
            Notify::Snapshot {
                state, auth_url, ..
            } => {
                let mut out = self.on_state(state);
                if let Some(url) = auth_url {
                    out.extend(self.on_url(url));
                }
                out
            }
            Notify::State { state } => self.on_state(state),
            Notify::BrowseToUrl { url } => self.on_url(url),
            Notify::LoginFinished => {
                self.login_finished = true;
                self.done_if_running()
            }
            Notify::Error { message } => vec![Action::Fail(message)],
            Notify::Prefs { .. } | Notify::NetMap { .. } => Vec::new(),
        }
    }

    fn on_state(&mut self, state: BackendState) -> Vec<Action> {
        self.state = state;
        match state {
            BackendState::NeedsLogin if self.interactive && !self.login_requested => {
                self.login_requested = true;
                vec![Action::RequestLogin]
            }
            BackendState::NeedsMachineAuth if !self.approval_told => {
                self.approval_told = true;
                vec![Action::AwaitApproval]
            }
            BackendState::Running => self.done_if_running(),
            _ => Vec::new(),
        }
    }

    fn on_url(&mut self, url: String) -> Vec<Action> {
        if self.shown_url.as_deref() == Some(url.as_str()) {
            return Vec::new();
        }
        self.shown_url = Some(url.clone());
        vec![Action::ShowUrl(url)]
    }

    /// With `--force-reauth` the node may be running on its old key, so only
    /// a finished login counts.
    fn done_if_running(&self) -> Vec<Action> {
        let reauthed = !self.force_reauth || self.login_finished;
        if self.state == BackendState::Running && reauthed {
            vec![Action::Done]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendState::*;

    fn state(s: BackendState) -> Notify {
        Notify::State { state: s }
    }

    fn url(u: &str) -> Notify {
        Notify::BrowseToUrl { url: u.into() }
    }

    #[test]
    fn an_interactive_login_asks_for_a_url_shows_it_once_and_ends_on_running() {
        let mut w = UpWatch::new(NeedsLogin, true, false);
        assert_eq!(w.after_start(), vec![Action::RequestLogin]);
        assert_eq!(
            w.on_event(state(NeedsLogin)),
            vec![],
            "login already requested"
        );
        assert_eq!(
            w.on_event(url("http://c/a/1")),
            vec![Action::ShowUrl("http://c/a/1".into())]
        );
        assert_eq!(w.on_event(url("http://c/a/1")), vec![]);
        assert_eq!(w.on_event(Notify::LoginFinished), vec![]);
        assert_eq!(w.on_event(state(Starting)), vec![]);
        assert_eq!(w.on_event(state(Running)), vec![Action::Done]);
        assert_eq!(w.url_shown(), Some("http://c/a/1"));
    }

    #[test]
    fn an_auth_key_login_never_asks_for_a_url_and_fails_with_the_servers_reason() {
        let mut w = UpWatch::new(NeedsLogin, false, false);
        assert_eq!(w.after_start(), vec![]);
        assert_eq!(w.on_event(state(NeedsLogin)), vec![]);
        let reason = "auth key expired".to_owned();
        assert_eq!(
            w.on_event(Notify::Error {
                message: reason.clone()
            }),
            vec![Action::Fail(reason)]
        );
    }

    #[test]
    fn a_running_node_is_done_right_after_start() {
        let mut w = UpWatch::new(Running, true, false);
        assert_eq!(w.after_start(), vec![Action::Done]);
    }

    #[test]
    fn force_reauth_waits_for_the_new_login_even_while_running() {
        let mut w = UpWatch::new(Running, true, true);
        assert_eq!(w.after_start(), vec![Action::RequestLogin]);
        assert_eq!(w.on_event(state(Running)), vec![], "still on the old key");
        assert_eq!(w.on_event(url("http://c/a/2")).len(), 1);
        assert_eq!(w.on_event(Notify::LoginFinished), vec![Action::Done]);
    }

    #[test]
    fn a_stopped_node_waits_for_running() {
        let mut w = UpWatch::new(Stopped, true, false);
        assert_eq!(w.after_start(), vec![]);
        assert_eq!(w.on_event(state(Starting)), vec![]);
        assert_eq!(w.on_event(Notify::NetMap { peers: 3 }), vec![]);
        assert_eq!(w.on_event(state(Running)), vec![Action::Done]);
    }

    #[test]
    fn machine_approval_is_announced_once() {
        let mut w = UpWatch::new(NeedsLogin, false, false);
        assert_eq!(
            w.on_event(state(NeedsMachineAuth)),
            vec![Action::AwaitApproval]
        );
        assert_eq!(w.on_event(state(NeedsMachineAuth)), vec![]);
        assert_eq!(w.state(), NeedsMachineAuth);
    }

    #[test]
    fn a_later_logout_asks_for_a_login_again_only_if_none_was_requested() {
        let mut w = UpWatch::new(Stopped, true, false);
        assert_eq!(w.after_start(), vec![]);
        assert_eq!(w.on_event(state(NeedsLogin)), vec![Action::RequestLogin]);
        assert_eq!(w.on_event(state(NeedsLogin)), vec![]);
    }
}
