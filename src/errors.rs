//! Typed errors, the classes a failed call falls into, and the one place
//! that maps them to process exit codes. Exit codes come from types: an
//! error's variant, and for a failed call the class its backend gave it;
//! never from the text of a message.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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

/// What an error means for the operation that produced it. Each backend
/// sorts its errors into these once; retries and exit codes follow from
/// the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The goal is already reached (a 404 on delete): stop, successfully.
    Done,
    /// Worth another try; `wait` is a delay the server asked for, if any.
    Retryable { wait: Option<Duration> },
    /// Retrying cannot help (a bad request).
    Fatal,
    /// Retrying cannot help: the credentials were refused, which only the
    /// user can fix (a usage-class exit).
    Denied,
}

/// The service a failed call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Docker,
    Daytona,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Docker => "docker",
            Service::Daytona => "daytona",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors that end a command before it could do its job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error(
        "cannot reach the Docker daemon at {address}: {reason}\n  \
         check that the daemon is running and that DOCKER_HOST (if set) points at it"
    )]
    DockerUnreachable { address: String, reason: String },

    /// A call to a service failed for good; `class` is what its backend made of it.
    #[error("{service} {operation} failed")]
    Call {
        service: Service,
        operation: String,
        class: ErrorClass,
        #[source]
        source: BoxError,
    },

    #[error("ledger {path}: {source}\n  check that the state directory is writable, or pass --state-dir")]
    Ledger {
        path: PathBuf,
        #[source]
        source: BoxError,
    },

    #[error(
        "{path} is not a benchwarden ledger ({why})\n  move it away (benchwarden starts a new one) or pass another --state-dir"
    )]
    NotALedger { path: PathBuf, why: String },

    /// A ledger a newer benchwarden made: its schema may mean what this one
    /// cannot read, so it is left exactly as it is.
    #[error(
        "{path} was made by a newer benchwarden (ledger schema version {version}; this one knows up to {known})\n  \
         use that version, or pass another --state-dir; the file is left as it is"
    )]
    NewerLedger { path: PathBuf, version: i64, known: i64 },

    #[error("state directory {path} {why}\n  free some space or make it writable, or pass another --state-dir")]
    StateDir { path: PathBuf, why: String },

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot encode {what} as JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }

    /// A failed call to `service`, keeping the class its backend gave it.
    pub fn call(
        service: Service,
        operation: impl Into<String>,
        class: ErrorClass,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Call { service, operation: operation.into(), class, source: Box::new(source) }
    }

    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Usage(_) | Error::DockerUnreachable { .. } | Error::Config { .. } | Error::NotALedger { .. } => {
                ExitStatus::Usage
            }
            Error::StateDir { .. } | Error::NewerLedger { .. } => ExitStatus::Usage,
            Error::Call { class: ErrorClass::Denied, .. } => ExitStatus::Usage,
            Error::Call { .. } | Error::Ledger { .. } | Error::Io { .. } | Error::Json { .. } => ExitStatus::Failure,
        }
    }

    /// The error and its causes on one line ([`error_chain`]), for a layer
    /// that keeps the text of an error rather than the error.
    pub fn with_causes(&self) -> String {
        error_chain(self)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line, each cause once: libraries' top
/// messages alone ("error in the hyper legacy client") do not say what went
/// wrong, and a message that already quotes its cause is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_credentials_are_the_users_to_fix_and_other_failed_calls_are_failures() {
        let source = || std::io::Error::other("Invalid credentials (HTTP 401)");
        let denied = Error::call(Service::Daytona, "list sandboxes", ErrorClass::Denied, source());
        assert_eq!(denied.exit_status(), ExitStatus::Usage);
        let fatal = Error::call(Service::Daytona, "list sandboxes", ErrorClass::Fatal, source());
        assert_eq!(fatal.exit_status(), ExitStatus::Failure);
        assert_eq!(error_chain(&denied), "daytona list sandboxes failed: Invalid credentials (HTTP 401)");
    }

    #[test]
    fn a_chain_names_each_cause_once() {
        let inner = std::io::Error::other("connection refused");
        let outer = Error::Io { what: "read", path: "x".into(), source: inner };
        assert_eq!(error_chain(&outer), "read x: connection refused");
    }
}
