//! A spinner on stderr for waits: it appears only after a second, and only
//! when stderr is a terminal, so quick commands and scripts never see it.

use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::out::escape;

/// How long a wait runs before the spinner shows.
const REVEAL_AFTER: Duration = Duration::from_secs(1);

/// A spinner that clears itself when dropped. Needs a tokio runtime.
pub struct Spinner {
    bar: Option<ProgressBar>,
    reveal: Option<JoinHandle<()>>,
}

impl Spinner {
    /// Starts a spinner with `message` (hidden for the first second, and
    /// entirely when stderr is not a terminal).
    pub fn start(message: impl Into<String>) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner {
                bar: None,
                reveal: None,
            };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_style(ProgressStyle::default_spinner());
        bar.set_message(escape(&message.into()).into_owned());
        let shown = bar.clone();
        let reveal = tokio::spawn(async move {
            tokio::time::sleep(REVEAL_AFTER).await;
            shown.set_draw_target(ProgressDrawTarget::stderr());
            shown.enable_steady_tick(Duration::from_millis(100));
        });
        Spinner {
            bar: Some(bar),
            reveal: Some(reveal),
        }
    }

    /// Replaces the message.
    pub fn set_message(&self, message: impl Into<String>) {
        if let Some(bar) = &self.bar {
            bar.set_message(escape(&message.into()).into_owned());
        }
    }

    /// Runs `f`, which writes to stderr, with the spinner out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(reveal) = self.reveal.take() {
            reveal.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Awaits `fut` with a spinner showing `message` if it takes a while.
pub async fn spin<F: Future>(message: &str, fut: F) -> F::Output {
    let _spinner = Spinner::start(message);
    fut.await
}
