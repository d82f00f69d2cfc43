//! (in progress)

/// A UAPI request that could not be applied; carries the errno to report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (errno {errno})")]
pub struct UapiError {
    /// The errno value for the `errno=N` line.
    pub errno: i32,
    /// What was wrong, for the log.
    pub message: String,
}
