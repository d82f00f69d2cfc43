//! `weft ping <name|ip>`: disco pings over the data plane's UDP path (not
//! ICMP), which show whether a peer answers and over which path.
//!
//! It pings up to `-c` times (0: forever), one second apart, each waiting up
//! to `--timeout`. With `--until-direct` (the default) it stops at the first
//! pong that came over a direct path. It fails with `no reply` when nothing
//! answered, and with `direct connection not established` when only relayed
//! pongs came back while a direct one was wanted.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::ArgAction;
use weft_localapi::{LocalApiError, PingPath, PingRequest, PingResult};
use weft_types::time::parse_duration;

use crate::ctx::Ctx;
use crate::out::{self, errln, escape, outln};
use crate::resolve::find_node;

/// The pause between pings.
const INTERVAL: Duration = Duration::from_secs(1);
/// How much longer than `--timeout` to wait for the daemon's own answer.
const DAEMON_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct PingArgs {
    /// A peer's name or tailnet address
    #[arg(value_name = "HOST")]
    pub target: String,
    /// How many pings to send; 0 pings until interrupted
    #[arg(short = 'c', long = "count", value_name = "N", default_value_t = 10)]
    pub count: u32,
    /// Stop at the first pong over a direct path
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub until_direct: bool,
    /// How long to wait for each pong
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print each pong as a JSON line (the LocalAPI's PingResult)
    #[arg(long)]
    pub json: bool,
}

/// The outcome of one ping.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pong(PingResult),
    TimedOut,
}

/// What to do after a ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Wait [`INTERVAL`], then ping again.
    PingAgain,
    /// Stop: success, or the error to exit with.
    Finished(Result<(), &'static str>),
}

/// The stop rules of `ping`, apart from any I/O or clock.
#[derive(Debug)]
pub struct PingLoop {
    count: u32,
    until_direct: bool,
    sent: u32,
    any_pong: bool,
}

impl PingLoop {
    /// Creates the loop for `count` pings (0: forever).
    pub fn new(count: u32, until_direct: bool) -> Self {
        PingLoop {
            count,
            until_direct,
            sent: 0,
            any_pong: false,
        }
    }

    /// Returns what to do after a ping ended with `outcome`.
    pub fn on_outcome(&mut self, outcome: &Outcome) -> Next {
        self.sent = self.sent.saturating_add(1);
        if let Outcome::Pong(pong) = outcome {
            self.any_pong = true;
            if self.until_direct && matches!(pong.via, PingPath::Direct(_)) {
                return Next::Finished(Ok(()));
            }
        }
        if self.count != 0 && self.sent >= self.count {
            return Next::Finished(if !self.any_pong {
                Err("no reply")
            } else if self.until_direct {
                Err("direct connection not established")
            } else {
                Ok(())
            });
        }
        Next::PingAgain
    }
}

/// Returns the line printed for a pong.
pub fn pong_line(pong: &PingResult) -> String {
    let via = match &pong.via {
        PingPath::Direct(addr) => addr.to_string(),
        PingPath::Relay(name) => format!("relay({})", escape(name)),
    };
    format!(
        "pong from {} ({}) via {via} in {}",
        escape(&pong.node_name),
        pong.node_ip,
        latency(pong.latency_ms)
    )
}

/// Formats a round trip in milliseconds with the precision it deserves:
/// whole milliseconds from 10 ms, tenths below, hundredths under 0.1 ms
/// (never `0ms`: a LAN answers in fractions of one).
pub fn latency(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0}ms")
    } else if ms >= 0.1 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}ms", ms.max(0.01))
    }
}

/// Runs `weft ping`.
pub async fn run(args: PingArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let status = ctx.api(ctx.client.status().await)?;
    let found = find_node(&status, &args.target)?;
    let ip = match args.target.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match found.node.addresses.first() {
            Some(ip) => *ip,
            None => bail!("{} has no tailnet address", found.node.name),
        },
    };
    if found.is_self {
        outln!("{ip} is local Weft IP");
        return Ok(ExitCode::SUCCESS);
    }
    let timeout_ms = u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX);
    let req = PingRequest { ip, timeout_ms };
    let mut rules = PingLoop::new(args.count, args.until_direct);
    loop {
        let answer = tokio::time::timeout(args.timeout + DAEMON_GRACE, ctx.client.ping(&req)).await;
        let outcome = match answer {
            Ok(Ok(pong)) => {
                if args.json {
                    out::json_line(&pong)?;
                } else {
                    outln!("{}", pong_line(&pong));
                }
                Outcome::Pong(pong)
            }
            Ok(Err(LocalApiError::Daemon { status: 504, .. })) | Err(_) => {
                if args.json {
                    errln!("ping {:?} timed out", ip.to_string());
                } else {
                    outln!("ping {:?} timed out", ip.to_string());
                }
                Outcome::TimedOut
            }
            Ok(Err(e)) => return ctx.api(Err(e)),
        };
        match rules.on_outcome(&outcome) {
            Next::PingAgain => tokio::time::sleep(INTERVAL).await,
            Next::Finished(Ok(())) => return Ok(ExitCode::SUCCESS),
            Next::Finished(Err(why)) => bail!("{why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pong(via: PingPath) -> Outcome {
        Outcome::Pong(PingResult {
            node_name: "web".into(),
            node_ip: "100.64.0.2".parse().unwrap(),
            via,
            latency_ms: 12.4,
        })
    }

    fn direct() -> Outcome {
        pong(PingPath::Direct("198.18.0.2:41641".parse().unwrap()))
    }

    fn relay() -> Outcome {
        pong(PingPath::Relay("lab".into()))
    }

    /// Feeds outcomes until the loop finishes; returns how many pings were
    /// sent and the result.
    fn drive(mut rules: PingLoop, outcomes: &[Outcome]) -> (usize, Result<(), &'static str>) {
        for (i, o) in outcomes.iter().enumerate() {
            if let Next::Finished(r) = rules.on_outcome(o) {
                return (i + 1, r);
            }
        }
        panic!("the loop did not finish after {} outcomes", outcomes.len());
    }

    #[test]
    fn it_stops_at_the_first_direct_pong() {
        let got = drive(
            PingLoop::new(10, true),
            &[Outcome::TimedOut, relay(), direct(), direct()],
        );
        assert_eq!(got, (3, Ok(())));
    }

    #[test]
    fn only_relayed_pongs_fail_when_a_direct_path_was_wanted() {
        let got = drive(PingLoop::new(3, true), &[relay(), relay(), relay()]);
        assert_eq!(got, (3, Err("direct connection not established")));
    }

    #[test]
    fn no_pong_at_all_is_no_reply() {
        let got = drive(
            PingLoop::new(2, true),
            &[Outcome::TimedOut, Outcome::TimedOut],
        );
        assert_eq!(got, (2, Err("no reply")));
    }

    #[test]
    fn without_until_direct_it_sends_all_pings_and_any_pong_is_enough() {
        let got = drive(
            PingLoop::new(3, false),
            &[direct(), Outcome::TimedOut, relay()],
        );
        assert_eq!(got, (3, Ok(())));
    }

    #[test]
    fn a_count_of_zero_pings_until_told_to_stop() {
        let mut rules = PingLoop::new(0, true);
        for _ in 0..1000 {
            assert_eq!(rules.on_outcome(&Outcome::TimedOut), Next::PingAgain);
        }
        assert_eq!(rules.on_outcome(&direct()), Next::Finished(Ok(())));
    }

    #[test]
    fn pong_lines_name_the_path() {
        let Outcome::Pong(p) = direct() else {
            unreachable!()
        };
        assert_eq!(
            pong_line(&p),
            "pong from web (100.64.0.2) via 198.18.0.2:41641 in 12ms"
        );
        let Outcome::Pong(p) = relay() else {
            unreachable!()
        };
        assert_eq!(
            pong_line(&p),
            "pong from web (100.64.0.2) via relay(lab) in 12ms"
        );
    }

    #[test]
    fn latencies_below_a_millisecond_keep_their_digits() {
        for (ms, want) in [
            (123.4, "123ms"),
            (12.0, "12ms"),
            (9.96, "10.0ms"),
            (1.26, "1.3ms"),
            (0.42, "0.4ms"),
            (0.1, "0.1ms"),
            (0.047, "0.05ms"),
            (0.0, "0.01ms"),
        ] {
            assert_eq!(latency(ms), want, "{ms}");
        }
    }
}
