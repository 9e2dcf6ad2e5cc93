//! The Daytona backend: configuration from the environment as the official
//! SDK reads it, a tolerant model of sandboxes, cursor-paged listing (and
//! the older bare-array answer), delete with asynchronous completion, and
//! the one place where Daytona API errors are classified. Rate-limit headers
//! pace our own calls so that 429s are the exception, not the plan.
//!
//! Credentials never leave this module in text: `Debug` redacts them and no
//! error message includes them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Kind, ResourceRef};
use crate::errors::Error;
use crate::retry::{CallTimeout, Classify, ErrorClass};

pub const DEFAULT_API_URL: &str = "https://app.daytona.io/api";
const PAGE_LIMIT: u32 = 200;

/// How we authenticate; never printed.
#[derive(Clone)]
pub enum Credentials {
    ApiKey(String),
    Jwt { token: String, organization_id: String },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            Credentials::Jwt { organization_id, .. } => write!(f, "Jwt(<redacted>, organization {organization_id})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DaytonaConfig {
    /// Base URL including `/api`.
    pub api_url: String,
    pub credentials: Credentials,
    pub target: Option<String>,
}

/// Values from a benchmark file's `daytona` section, which win over the environment.
#[derive(Debug, Clone, Default)]
pub struct DaytonaOverrides {
    pub api_url: Option<String>,
    pub api_key_env: Option<String>,
    pub target: Option<String>,
}

impl DaytonaConfig {
    /// Reads `DAYTONA_API_KEY` (or `DAYTONA_JWT_TOKEN` with
    /// `DAYTONA_ORGANIZATION_ID`), `DAYTONA_API_URL` (falling back to the
    /// deprecated `DAYTONA_SERVER_URL`, then the public API) and
    /// `DAYTONA_TARGET`, as the official SDK does.
    pub fn from_env(overrides: &DaytonaOverrides) -> Result<Self, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.trim().is_empty());
        let key_variable = overrides.api_key_env.as_deref().unwrap_or("DAYTONA_API_KEY");
        let credentials = match (var(key_variable), var("DAYTONA_JWT_TOKEN"), var("DAYTONA_ORGANIZATION_ID")) {
            (Some(key), _, _) => Credentials::ApiKey(key),
            (None, Some(token), Some(organization_id)) => Credentials::Jwt { token, organization_id },
            (None, Some(_), None) => {
                return Err(Error::usage(
                    "DAYTONA_JWT_TOKEN is set without DAYTONA_ORGANIZATION_ID: set both, or set DAYTONA_API_KEY",
                ))
            }
            (None, None, _) => {
                return Err(Error::usage(format!(
                    "no Daytona credentials: set {key_variable} (or DAYTONA_JWT_TOKEN and DAYTONA_ORGANIZATION_ID)"
                )))
            }
        };
        let api_url = overrides
            .api_url
            .clone()
            .or_else(|| var("DAYTONA_API_URL"))
            .or_else(|| var("DAYTONA_SERVER_URL"))
            .unwrap_or_else(|| DEFAULT_API_URL.to_string());
        Ok(DaytonaConfig {
            api_url: api_url.trim_end_matches('/').to_string(),
            credentials,
            target: overrides.target.clone().or_else(|| var("DAYTONA_TARGET")),
        })
    }
}

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
    pub desired_state: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub auto_stop_interval: Option<f64>,
    #[serde(default)]
    pub auto_delete_interval: Option<f64>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(deserializer)?.unwrap_or_default())
}

impl Sandbox {
    pub fn resource(&self) -> ResourceRef {
        ResourceRef { kind: Kind::Sandbox, id: self.id.clone(), name: self.name.clone().unwrap_or_default() }
    }

    /// Stopped for cleanup purposes: stopped, error, build_failed.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state.as_deref(), Some("stopped" | "error" | "build_failed"))
    }

    /// Deletion already started: `destroying`, or desired state `destroyed`.
    pub fn is_being_deleted(&self) -> bool {
        self.state.as_deref() == Some("destroying") || self.desired_state.as_deref() == Some("destroyed")
    }

    /// Unix seconds of `createdAt`, when present and readable.
    pub fn created_unix(&self) -> Option<i64> {
        let text = self.created_at.as_deref()?;
        let time = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()?;
        time.duration_since(std::time::UNIX_EPOCH).ok().map(|elapsed| elapsed.as_secs() as i64)
    }
}

/// The cursor-paged answer, or (before v0.180) a bare array.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListAnswer {
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
    pub status: Option<u16>,
    pub message: String,
    /// From `Retry-After-<throttler>` (or a plain `Retry-After`) on a 429.
    pub retry_after: Option<Duration>,
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

/// What the rate-limit headers last said about one throttler.
#[derive(Debug, Clone, Copy)]
struct Budget {
    remaining: i64,
    reset_at: Instant,
}

/// Paces calls from the `X-RateLimit-Remaining-*`/`X-RateLimit-Reset-*`
/// headers: when a throttler's budget is spent, callers wait for its reset
/// instead of collecting 429s.
#[derive(Default)]
struct Pacer {
    budgets: Mutex<BTreeMap<String, Budget>>,
}

impl Pacer {
    /// Waits until `throttler` has budget, then spends one unit of it.
    async fn acquire(&self, throttler: &str) {
        loop {
            let wait = {
                let mut budgets = self.budgets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match budgets.get_mut(throttler) {
                    Some(budget) if budget.remaining <= 0 && budget.reset_at > Instant::now() => Some(budget.reset_at),
                    Some(budget) => {
                        budget.remaining -= 1;
                        None
                    }
                    None => None,
                }
            };
            match wait {
                Some(until) => tokio::time::sleep_until(until).await,
                None => return,
            }
        }
    }

    fn observe(&self, headers: &reqwest::header::HeaderMap) {
        let now = Instant::now();
        let mut budgets = self.budgets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (name, value) in headers {
            let Some(throttler) = name.as_str().strip_prefix("x-ratelimit-remaining-") else { continue };
            let Some(remaining) = value.to_str().ok().and_then(|text| text.trim().parse::<i64>().ok()) else {
                continue;
            };
            let reset = headers
                .get(format!("x-ratelimit-reset-{throttler}"))
                .and_then(|value| value.to_str().ok()?.trim().parse::<f64>().ok())
                .unwrap_or(1.0);
            budgets.insert(
                throttler.to_string(),
                Budget { remaining, reset_at: now + Duration::from_secs_f64(reset.clamp(0.0, 3600.0)) },
            );
        }
    }
}

/// A Daytona API client.
pub struct DaytonaBackend {
    client: reqwest::Client,
    config: DaytonaConfig,
    pacer: Pacer,
}

/// Throttlers of the API (CONTRACT.md §6): deletes count against the
/// lifecycle one, everything else here against the general one.
const LIFECYCLE: &str = "sandbox-lifecycle";
const AUTHENTICATED: &str = "authenticated";

impl DaytonaBackend {
    pub fn new(config: DaytonaConfig) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("benchwarden/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|error| Error::usage(format!("cannot build the Daytona HTTP client: {error}")))?;
        Ok(DaytonaBackend { client, config, pacer: Pacer::default() })
    }

    pub fn api_url(&self) -> &str {
        &self.config.api_url
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.config.api_url));
        match &self.config.credentials {
            Credentials::ApiKey(key) => builder.bearer_auth(key),
            Credentials::Jwt { token, organization_id } => {
                builder.bearer_auth(token).header("X-Daytona-Organization-ID", organization_id)
            }
        }
    }

    async fn send(&self, throttler: &str, builder: reqwest::RequestBuilder) -> Result<reqwest::Response, DaytonaError> {
        self.pacer.acquire(throttler).await;
        let response = builder.send().await.map_err(|error| DaytonaError {
            status: None,
            // reqwest's text names the URL, never the Authorization header.
            message: crate::backend::docker::error_chain(&error),
            retry_after: None,
        })?;
        self.pacer.observe(response.headers());
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| value.get("message").map(|message| message.to_string().trim_matches('"').to_string()))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
        Err(DaytonaError { status: Some(status.as_u16()), message, retry_after })
    }

    /// Every sandbox matching `labels` (all pages).
    pub async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<Sandbox>, DaytonaError> {
        let mut sandboxes = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query: Vec<(&str, String)> = vec![("limit", PAGE_LIMIT.to_string())];
            if !labels.is_empty() {
                query.push(("labels", serde_json::to_string(labels).unwrap_or_default()));
            }
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor.clone()));
            }
            let response =
                self.send(AUTHENTICATED, self.request(reqwest::Method::GET, "/sandbox").query(&query)).await?;
            let body = response.bytes().await.map_err(|error| DaytonaError {
                status: None,
                message: format!("reading the sandbox list: {error}"),
                retry_after: None,
            })?;
            let answer: ListAnswer = serde_json::from_slice(&body).map_err(|error| DaytonaError {
                status: None,
                message: format!(
                    "the sandbox list is not what the API returns ({error}); check that DAYTONA_API_URL ends in /api"
                ),
                retry_after: None,
            })?;
            match answer {
                ListAnswer::Bare(items) => {
                    sandboxes.extend(items);
                    return Ok(sandboxes);
                }
                ListAnswer::Page { items, next_cursor } => {
                    sandboxes.extend(items);
                    match next_cursor {
                        Some(next) if !next.is_empty() => cursor = Some(next),
                        _ => return Ok(sandboxes),
                    }
                }
            }
        }
    }

    /// The sandbox, or `None` once it is gone (404).
    pub async fn get(&self, id: &str) -> Result<Option<Sandbox>, DaytonaError> {
        let path = format!("/sandbox/{}", encode_segment(id));
        match self.send(AUTHENTICATED, self.request(reqwest::Method::GET, &path)).await {
            Ok(response) => response.json::<Sandbox>().await.map(Some).map_err(|error| DaytonaError {
                status: None,
                message: format!("reading sandbox {id}: {error}"),
                retry_after: None,
            }),
            Err(error) if error.status == Some(404) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Starts deletion; it completes asynchronously (see [`Self::get`]).
    pub async fn delete(&self, id: &str) -> Result<(), DaytonaError> {
        let path = format!("/sandbox/{}", encode_segment(id));
        self.send(LIFECYCLE, self.request(reqwest::Method::DELETE, &path)).await.map(drop)
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("retry-after"))
        .filter_map(|(_, value)| value.to_str().ok()?.trim().parse::<f64>().ok())
        .fold(None, |longest: Option<f64>, seconds| Some(longest.map_or(seconds, |longest| longest.max(seconds))))
        .map(|seconds| Duration::from_secs_f64(seconds.clamp(0.0, 3600.0)))
}

fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Deletes one sandbox per call, for [`super::remove_all`].
pub struct DaytonaRemover<'a> {
    pub backend: &'a DaytonaBackend,
}

impl super::Remover for DaytonaRemover<'_> {
    type Error = DaytonaError;

    async fn remove_once(&self, resource: &ResourceRef) -> Result<(), DaytonaError> {
        match self.backend.delete(&resource.id).await {
            // 409 also answers a second delete of a sandbox already on its way out
            // (our own earlier attempt whose answer was lost): that is success.
            Err(conflict) if conflict.status == Some(409) => match self.backend.get(&resource.id).await? {
                None => Ok(()),
                Some(sandbox) if sandbox.is_being_deleted() => Ok(()),
                Some(_) => Err(conflict),
            },
            other => other,
        }
    }
}

/// Deletes sandboxes with retry and bounded parallelism, then polls each
/// until it answers 404, for at most `verify_for`. One still there after
/// that is `Pending` (deletion is asynchronous: `destroying` can last).
pub async fn remove_sandboxes(
    backend: &DaytonaBackend,
    sandboxes: Vec<ResourceRef>,
    options: &super::RemovalOptions,
    progress: &crate::report::Progress,
    verify_for: Duration,
) -> super::RemovalReport {
    use super::RemovalOutcome;
    use futures_util::stream::{self, StreamExt};

    let mut report = super::remove_all(&DaytonaRemover { backend }, sandboxes, options, progress).await;
    // Accepted deletes still to be seen through to 404, by index into the report.
    let mut waiting: Vec<usize> = report
        .results
        .iter()
        .enumerate()
        .filter(|(_, (_, outcome))| matches!(outcome, RemovalOutcome::Removed { .. }))
        .map(|(index, _)| index)
        .collect();
    let deadline = Instant::now() + verify_for;
    let mut interval = Duration::from_millis(100);
    while !waiting.is_empty() {
        let results = &report.results;
        let checks: Vec<(usize, bool)> = stream::iter(waiting.iter().copied())
            .map(|index| async move {
                // An error while polling proves nothing: the sandbox counts as still there.
                (index, matches!(backend.get(&results[index].0.id).await, Ok(None)))
            })
            .buffer_unordered(options.parallel.max(1))
            .collect()
            .await;
        waiting = checks.into_iter().filter(|(_, gone)| !gone).map(|(index, _)| index).collect();
        if waiting.is_empty() {
            break;
        }
        if Instant::now() + interval > deadline {
            for &index in &waiting {
                let (resource, outcome) = &mut report.results[index];
                let attempts = match outcome {
                    RemovalOutcome::Removed { attempts } => *attempts,
                    _ => 1,
                };
                tracing::warn!("{resource} is still destroying; kept in the ledger for `benchwarden recover`");
                *outcome = RemovalOutcome::Pending { attempts };
            }
            break;
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 3 / 2).min(Duration::from_secs(2));
    }
    report
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
        assert_eq!(error(401).class(), ErrorClass::Fatal);
        assert_eq!(error(403).class(), ErrorClass::Fatal);
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
    fn credentials_never_print() {
        let config = DaytonaConfig {
            api_url: "http://x/api".into(),
            credentials: Credentials::ApiKey("secret-key-123".into()),
            target: None,
        };
        assert!(!format!("{config:?}").contains("secret-key-123"));
    }

    #[test]
    fn created_at_reads_as_unix_seconds() {
        let sandbox: Sandbox = serde_json::from_str(r#"{"id":"a","createdAt":"2024-10-01T12:00:00.000Z"}"#).unwrap();
        assert_eq!(sandbox.created_unix(), Some(1_727_784_000));
    }

    #[test]
    fn the_longest_retry_after_wins() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after-sandbox-lifecycle", "2".parse().unwrap());
        headers.insert("retry-after-authenticated", "5".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(5)));
    }
}
