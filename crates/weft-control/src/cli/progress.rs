//! Progress on the admin CLI's long waits (more than a second): a line on
//! stderr every few seconds saying what it waits for and for how long, so
//! stdout keeps only the answer (and `--json` stays parseable).

use std::future::Future;
use std::time::Duration;

/// The first progress line comes after this long.
const FIRST: Duration = Duration::from_secs(1);
/// Then one every this long.
const EVERY: Duration = Duration::from_secs(5);

/// Awaits `work`, telling stderr what it waits for once it takes longer
/// than a second.
pub(crate) async fn while_waiting<T>(work: impl Future<Output = T>, what: &str) -> T {
    tokio::pin!(work);
    let mut waited = Duration::ZERO;
    let mut next = FIRST;
    loop {
        tokio::select! {
            v = &mut work => return v,
            () = tokio::time::sleep(next - waited) => {
                waited = next;
                next += EVERY;
                #[allow(clippy::print_stderr)] // progress, not output
                {
                    eprintln!("{what}… {} s", waited.as_secs());
                }
            }
        }
    }
}
