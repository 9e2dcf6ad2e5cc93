//! Typed errors for everything a user can cause, and the one place that maps
//! them to process exit codes.

use std::path::PathBuf;

/// Exit codes, documented in the README. Nothing else in the crate picks a
/// process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitStatus {
    /// Everything asked for was done and nothing leaked.
    Success,
    /// Some task failed or timed out, or some removal failed.
    Failure,
    /// A usage or configuration error, or a daemon that cannot be reached.
    Usage,
    /// A resource could not be removed: it is still there.
    Leaked,
    /// Interrupted by SIGINT (or SIGHUP).
    Interrupted,
    /// Interrupted by SIGTERM.
    Terminated,
}

impl ExitStatus {
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Leaked => 3,
            ExitStatus::Interrupted => 130,
            ExitStatus::Terminated => 143,
        }
    }
}

/// Errors that end a command before it could do its job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error(
        "cannot reach the Docker daemon at {address}: {reason}\n  \
         check that the daemon is running and that DOCKER_HOST (if set) points at it"
    )]
    DockerUnreachable { address: String, reason: String },

    #[error("docker {operation} failed: {reason}")]
    Docker { operation: String, reason: String },

    #[error("daytona {operation} failed: {reason}")]
    Daytona { operation: String, reason: String },

    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("ledger {path}: {message}\n  check that the state directory is writable, or pass --state-dir")]
    Ledger { path: PathBuf, message: String },

    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

impl Error {
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }

    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Usage(_) | Error::DockerUnreachable { .. } | Error::Config { .. } => ExitStatus::Usage,
            Error::Docker { .. } | Error::Daytona { .. } | Error::Ledger { .. } | Error::Io { .. } => {
                ExitStatus::Failure
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
