//! Policy as code without a server: `policy check FILE --nodes NODES.json`
//! and `policy explain --policy FILE --nodes NODES.json --src … --dst …`.
//!
//! The reports' `Display` is exactly what `weft-control policy check` and
//! `policy explain` print; [`Outcome::exit_code`] is the status to exit with.

use std::fmt;

use serde::Serialize;

use crate::checks::TestReport;
use crate::explain::{Explanation, Verdict, explain_query};
use crate::policy::Policy;
use crate::tailnet::Tailnet;

/// A named input text (a file name and its contents).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The name shown in messages.
    pub name: &'a str,
    /// The contents.
    pub text: &'a str,
}

/// How an offline command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `check`: valid and every test passed. `explain`: the flow is allowed.
    Ok,
    /// `check`: valid but some test failed. `explain`: the flow is denied.
    Failed,
    /// An input is invalid or the question cannot be answered.
    Invalid,
}

impl Outcome {
    /// Returns the process exit status: 0, 1 or 2.
    #[must_use]
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Ok => 0,
            Outcome::Failed => 1,
            Outcome::Invalid => 2,
        }
    }
}

/// The result of `policy check`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// How it ended.
    pub outcome: Outcome,
    /// The error, when an input is invalid.
    pub error: Option<String>,
    /// The test results, when the inputs are valid.
    pub tests: Option<TestReport>,
    /// Size of the described tailnet: (users, nodes).
    pub tailnet_size: (usize, usize),
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.error {
            return writeln!(f, "{e}");
        }
        if let Some(t) = &self.tests {
            let (users, nodes) = self.tailnet_size;
            writeln!(f, "{t} (tailnet: {users} users, {nodes} nodes)")?;
        }
        Ok(())
    }
}

/// The result of `policy explain`.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainReport {
    /// Allowed → `Ok`, denied → `Failed`, bad input → `Invalid`.
    pub outcome: Outcome,
    /// The error, when the question could not be answered.
    pub error: Option<String>,
    /// The answer.
    pub explanation: Option<Explanation>,
}

impl fmt::Display for ExplainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.error, &self.explanation) {
            (Some(e), _) => writeln!(f, "{e}"),
            (None, Some(x)) => write!(f, "{x}"),
            (None, None) => Ok(()),
        }
    }
}

fn load(policy: Source<'_>, nodes: Source<'_>) -> Result<(Policy, Tailnet), String> {
    let p = Policy::parse_named(policy.name, policy.text).map_err(|e| e.to_string())?;
    let t = Tailnet::from_nodes_json_named(nodes.name, nodes.text).map_err(|e| match e {
        crate::TailnetError::Json(e) => e.to_string(),
        other => format!("{}: {other}", nodes.name),
    })?;
    Ok((p, t))
}

/// Validates the policy and the tailnet description, then runs the policy's
/// `tests` and `sshTests` against it.
#[must_use]
pub fn offline_check(policy: Source<'_>, nodes: Source<'_>) -> CheckReport {
    match load(policy, nodes) {
        Err(error) => CheckReport {
            outcome: Outcome::Invalid,
            error: Some(error),
            tests: None,
            tailnet_size: (0, 0),
        },
        Ok((p, t)) => {
            let report = p.run_tests(&t);
            CheckReport {
                outcome: if report.passed() {
                    Outcome::Ok
                } else {
                    Outcome::Failed
                },
                error: None,
                tests: Some(report),
                tailnet_size: (t.users().len(), t.nodes().len()),
            }
        }
    }
}

/// Answers `explain` offline: `src` is a node name, login or address; `dst`
/// is `TARGET:PORT`; `proto` defaults to tcp.
#[must_use]
pub fn offline_explain(
    policy: Source<'_>,
    nodes: Source<'_>,
    src: &str,
    dst: &str,
    proto: Option<&str>,
) -> ExplainReport {
    let invalid = |error: String| ExplainReport {
        outcome: Outcome::Invalid,
        error: Some(error),
        explanation: None,
    };
    let (p, t) = match load(policy, nodes) {
        Ok(x) => x,
        Err(e) => return invalid(e),
    };
    match explain_query(&p, &t, src, dst, proto) {
        Ok(x) => ExplainReport {
            outcome: if x.verdict == Verdict::Allowed {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
            error: None,
            explanation: Some(x),
        },
        Err(e) => invalid(e.to_string()),
    }
}
