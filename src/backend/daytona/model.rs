//! The Daytona API's data as benchwarden reads it: a tolerant model of
//! sandboxes (every field but `id` may be missing or null, unknown states
//! are kept), both shapes of the sandbox list, and the errors of a call,
//! classified once for the retry policy.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::errors::{Error, ErrorClass, Service};
use crate::resource::{Kind, ResourceRef};
use crate::retry::{CallTimeout, Classify};

/// A sandbox as the API describes it; every field but `id` may be missing
/// or null, and unknown states are kept as they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub(crate) desired_state: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) target: Option<String>,
    #[serde(default)]
    pub(crate) created_at: Option<String>,
    #[serde(default)]
    pub(crate) auto_stop_interval: Option<f64>,
    #[serde(default)]
    pub(crate) auto_delete_interval: Option<f64>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(deserializer)?.unwrap_or_default())
}

impl Sandbox {
    pub(crate) fn resource(&self) -> ResourceRef {
        ResourceRef { kind: Kind::Sandbox, id: self.id.clone(), name: self.name.clone().unwrap_or_default() }
    }

    /// Stopped for cleanup purposes: stopped, error, build_failed.
    pub(crate) fn is_stopped(&self) -> bool {
        matches!(self.state.as_deref(), Some("stopped" | "error" | "build_failed"))
    }

    /// Deletion already started: `destroying`, or desired state `destroyed`.
    pub(crate) fn is_being_deleted(&self) -> bool {
        self.state.as_deref() == Some("destroying") || self.desired_state.as_deref() == Some("destroyed")
    }

    /// Unix seconds of `createdAt`, when present and readable.
    pub(crate) fn created_unix(&self) -> Option<i64> {
        let text = self.created_at.as_deref()?;
        let time = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()?;
        time.duration_since(std::time::UNIX_EPOCH).ok().map(|elapsed| elapsed.as_secs() as i64)
    }
}

/// The cursor-paged answer, or (before v0.180) a bare array.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum ListAnswer {
    Page {
        items: Vec<Sandbox>,
        #[serde(rename = "nextCursor", default)]
        next_cursor: Option<String>,
    },
    Bare(Vec<Sandbox>),
}

/// What a Daytona call failed with.
#[derive(Debug, Clone)]
pub struct DaytonaError {
    pub(crate) status: Option<u16>,
    pub(crate) message: String,
    /// From `Retry-After-<throttler>` (or a plain `Retry-After`) on a 429.
    pub(crate) retry_after: Option<Duration>,
}

impl fmt::Display for DaytonaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(401) | Some(403) => write!(
                f,
                "{} (HTTP {}): check DAYTONA_API_KEY (or DAYTONA_JWT_TOKEN and DAYTONA_ORGANIZATION_ID)",
                self.message,
                self.status.unwrap_or_default()
            ),
            Some(status) => write!(f, "{} (HTTP {status})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl Classify for DaytonaError {
    fn class(&self) -> ErrorClass {
        match self.status {
            Some(404) => ErrorClass::Done,
            // "Sandbox state change in progress" and optimistic-update conflicts settle by themselves.
            Some(409) => ErrorClass::Retryable { wait: None },
            Some(429) => ErrorClass::Retryable { wait: self.retry_after },
            Some(status) if status >= 500 => ErrorClass::Retryable { wait: None },
            // Refused credentials: only the user can fix them.
            Some(401 | 403) => ErrorClass::Denied,
            Some(_) => ErrorClass::Fatal,
            None => ErrorClass::Retryable { wait: None },
        }
    }
}

impl CallTimeout for DaytonaError {
    fn call_timed_out(after: Duration) -> Self {
        DaytonaError {
            status: None,
            message: format!("no answer within {}", humantime::format_duration(after)),
            retry_after: None,
        }
    }
}

impl std::error::Error for DaytonaError {}

impl DaytonaError {
    /// An error without an HTTP status: the connection, or an answer we cannot read.
    pub(crate) fn transport(message: impl Into<String>) -> Self {
        DaytonaError { status: None, message: message.into(), retry_after: None }
    }

    /// The error that ends a command when `operation` failed for good.
    pub(crate) fn during(self, operation: impl Into<String>) -> Error {
        Error::call(Service::Daytona, operation, self.class(), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(status: u16) -> DaytonaError {
        DaytonaError { status: Some(status), message: String::new(), retry_after: Some(Duration::from_secs(3)) }
    }

    #[test]
    fn api_errors_are_classified_once() {
        assert_eq!(error(404).class(), ErrorClass::Done);
        assert_eq!(error(409).class(), ErrorClass::Retryable { wait: None });
        assert_eq!(error(429).class(), ErrorClass::Retryable { wait: Some(Duration::from_secs(3)) });
        assert_eq!(error(502).class(), ErrorClass::Retryable { wait: None });
        assert_eq!(error(401).class(), ErrorClass::Denied);
        assert_eq!(error(403).class(), ErrorClass::Denied);
        assert_eq!(error(400).class(), ErrorClass::Fatal);
        assert!(error(401).to_string().contains("DAYTONA_API_KEY"));
    }

    #[test]
    fn the_model_tolerates_nulls_unknown_states_and_both_list_shapes() {
        let page: ListAnswer = serde_json::from_str(
            r#"{"items":[{"id":"a","labels":null,"state":"hibernating","cpu":2}],"nextCursor":null}"#,
        )
        .unwrap();
        let ListAnswer::Page { items, next_cursor } = page else { panic!("not a page") };
        assert_eq!(items[0].state.as_deref(), Some("hibernating"));
        assert!(items[0].labels.is_empty());
        assert_eq!(next_cursor, None);
        let bare: ListAnswer = serde_json::from_str(r#"[{"id":"b"}]"#).unwrap();
        assert!(matches!(bare, ListAnswer::Bare(items) if items[0].id == "b"));
    }

    #[test]
    fn created_at_reads_as_unix_seconds() {
        let sandbox: Sandbox = serde_json::from_str(r#"{"id":"a","createdAt":"2024-10-01T12:00:00.000Z"}"#).unwrap();
        assert_eq!(sandbox.created_unix(), Some(1_727_784_000));
    }
}

/// The model fed mutated real answers of the Daytona API (`tests/corpus/daytona/answers`):
/// a list page, the legacy bare list, single sandboxes, error bodies, a proxy's HTML. Whatever
/// parses, every question benchwarden asks of a sandbox is answered without a panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::corpus::{mutated, seeds};

    fn ask_everything(sandbox: &Sandbox) {
        let _ = (sandbox.resource(), sandbox.is_stopped(), sandbox.is_being_deleted(), sandbox.created_unix());
    }

    fn read(answer: &[u8]) -> usize {
        let mut parsed = 0;
        if let Ok(ListAnswer::Page { items: sandboxes, .. } | ListAnswer::Bare(sandboxes)) =
            serde_json::from_slice::<ListAnswer>(answer)
        {
            sandboxes.iter().for_each(ask_everything);
            parsed += 1;
        }
        if let Ok(sandbox) = serde_json::from_slice::<Sandbox>(answer) {
            ask_everything(&sandbox);
            parsed += 1;
        }
        parsed
    }

    proptest! {
        #[test]
        fn any_answer_parses_or_is_refused_never_a_panic(answer in mutated("daytona/answers")) {
            read(&answer);
        }
    }

    #[test]
    fn the_corpus_itself_parses() {
        let parsed: usize = seeds("daytona/answers").iter().map(|answer| read(answer)).sum();
        // 4 lists and 2 sandboxes; the error bodies and the HTML are neither.
        assert_eq!(parsed, 6);
    }
}
