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
use crate::retry::{CallTimeout, Classify, ErrorClass, RetryPolicy, Success};

pub const DEFAULT_API_URL: &str = "https://app.daytona.io/api";
/// How long accepted deletes are polled for 404 before they count as pending.
pub const VERIFY_FOR: Duration = Duration::from_secs(120);
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

/// One throttler as the rate-limit headers describe it, and our calls
/// against it.
#[derive(Debug, Default)]
struct Throttle {
    /// Calls we may still start, and when the server's window ends (an upper
    /// bound: the headers give whole seconds, rounded up). `None` while
    /// unknown: before the first answer, and once a window has ended.
    budget: Option<(i64, Instant)>,
    /// Calls started so far: an answer's `Remaining` has counted the calls
    /// started before it (the server takes them in order), not those after.
    started: u64,
    /// Calls started and not answered yet.
    in_flight: u64,
    /// Counts ended windows: an answer to a call started in an earlier one
    /// says nothing about the current window.
    epoch: u64,
    /// While the budget is unknown, one call goes out to learn it; the
    /// others wait for its answer instead of bursting into a 429.
    probing: bool,
    /// The answers carry no headers for this throttler: nothing to pace by.
    unlimited: bool,
}

/// Paces calls from the `X-RateLimit-Remaining-*`/`X-RateLimit-Reset-*`
/// headers so that 429s are the exception: calls started after the one
/// answered count against the budget its answer reports, a spent budget waits for the window's end,
/// and a new window is probed by one call before the others follow.
#[derive(Default)]
struct Pacer {
    throttles: Mutex<BTreeMap<String, Throttle>>,
    changed: tokio::sync::Notify,
}

/// One call's place in a throttler's budget; gives it back when dropped.
struct Permit<'a> {
    pacer: &'a Pacer,
    throttler: String,
    epoch: u64,
    /// The throttle's `started` count with this call.
    number: u64,
    probe: bool,
    answered: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut throttles = self.pacer.lock();
        if let Some(throttle) = throttles.get_mut(&self.throttler) {
            throttle.in_flight = throttle.in_flight.saturating_sub(1);
            // A probe that got no answer (a connection error) learned nothing: let another try.
            if self.probe && !self.answered && throttle.epoch == self.epoch {
                throttle.probing = false;
            }
        }
        drop(throttles);
        self.pacer.changed.notify_waiters();
    }
}

impl Pacer {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Throttle>> {
        self.throttles.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `throttler` has budget for one more call.
    async fn acquire(&self, throttler: &str) -> Permit<'_> {
        loop {
            // Registered before the state is read, so no wake-up is missed.
            let changed = self.changed.notified();
            let wait = {
                let mut throttles = self.lock();
                let throttle = throttles.entry(throttler.to_string()).or_default();
                let now = Instant::now();
                if throttle.budget.is_some_and(|(_, reset_at)| now >= reset_at) {
                    throttle.budget = None;
                    throttle.epoch += 1;
                    throttle.probing = false;
                }
                let probe = match throttle.budget.as_mut() {
                    _ if throttle.unlimited => Some(false),
                    Some((remaining, _)) if *remaining > 0 => {
                        *remaining -= 1;
                        Some(false)
                    }
                    Some(_) => None,
                    None if !throttle.probing => {
                        throttle.probing = true;
                        Some(true)
                    }
                    None => None,
                };
                match probe {
                    Some(probe) => {
                        throttle.started += 1;
                        throttle.in_flight += 1;
                        return Permit {
                            pacer: self,
                            throttler: throttler.to_string(),
                            epoch: throttle.epoch,
                            number: throttle.started,
                            probe,
                            answered: false,
                        };
                    }
                    // Until the window ends, or until an answer changes what we know.
                    None => throttle.budget.map(|(_, reset_at)| reset_at),
                }
            };
            let until = wait.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = changed => {}
            }
        }
    }

    /// Learns from an answer to the call `permit` let through.
    fn observe(&self, permit: &mut Permit<'_>, headers: &reqwest::header::HeaderMap) {
        permit.answered = true;
        let throttler = permit.throttler.as_str();
        let header = |prefix: &str| {
            headers
                .get(format!("{prefix}{throttler}"))
                .and_then(|value| value.to_str().ok()?.trim().parse::<f64>().ok())
        };
        let mut throttles = self.lock();
        let throttle = throttles.entry(throttler.to_string()).or_default();
        match header("x-ratelimit-remaining-") {
            None => {
                throttle.unlimited = true;
                if permit.probe {
                    throttle.probing = false;
                }
            }
            Some(_) if permit.epoch != throttle.epoch => {}
            Some(remaining) => {
                throttle.unlimited = false;
                let reset = header("x-ratelimit-reset-").unwrap_or(1.0).clamp(0.0, 3600.0);
                let reset_at = Instant::now() + Duration::from_secs_f64(reset);
                // The server counted this call and those before it; the ones started since will count too.
                let fresh = remaining as i64 - (throttle.started - permit.number) as i64;
                throttle.budget = Some(match throttle.budget {
                    // Our own count is exact unless someone else spends the same budget (another
                    // machine of the organisation); the answer's count is off by at most the calls
                    // in flight, which the server may take out of order. Only a larger gap says so.
                    Some((known, known_reset)) => {
                        let spent_elsewhere = fresh + (throttle.in_flight as i64) < known;
                        (if spent_elsewhere { fresh } else { known }, known_reset.min(reset_at))
                    }
                    None => (fresh, reset_at),
                });
                if permit.probe {
                    throttle.probing = false;
                }
            }
        }
        drop(throttles);
        self.changed.notify_waiters();
    }
}

/// Retries of one page of the sandbox list.
fn list_retry() -> RetryPolicy {
    RetryPolicy {
        retries: 5,
        first_delay: Duration::from_millis(500),
        factor: 2.0,
        max_delay: Duration::from_secs(10),
        jitter: true,
        call_timeout: Duration::from_secs(60),
        deadline: Duration::from_secs(120),
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
        let mut permit = self.pacer.acquire(throttler).await;
        let response = builder.send().await.map_err(|error| DaytonaError {
            status: None,
            // reqwest's text names the URL, never the Authorization header.
            message: crate::backend::docker::error_chain(&error),
            retry_after: None,
        })?;
        self.pacer.observe(&mut permit, response.headers());
        drop(permit);
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
            // A page lost to a 5xx, a reset or a timeout is asked for again; a 429 waits as told.
            let fetched = list_retry()
                .run("list sandboxes", || async {
                    let response =
                        self.send(AUTHENTICATED, self.request(reqwest::Method::GET, "/sandbox").query(&query)).await?;
                    response.bytes().await.map_err(|error| DaytonaError {
                        status: None,
                        message: format!("reading the sandbox list: {error}"),
                        retry_after: None,
                    })
                })
                .await;
            let body = match fetched {
                Ok((Success::Done(body), _)) => body,
                // A 404 on the list itself: not the API.
                Ok((Success::AlreadyDone, _)) => {
                    return Err(DaytonaError {
                        status: Some(404),
                        message: "the sandbox list answered 404; check that DAYTONA_API_URL ends in /api".to_string(),
                        retry_after: None,
                    })
                }
                Err(failure) => return Err(failure.error),
            };
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

    /// Stops a sandbox (`force`: SIGKILL instead of SIGTERM inside it).
    pub async fn stop(&self, id: &str, force: bool) -> Result<(), DaytonaError> {
        let path = format!("/sandbox/{}/stop", encode_segment(id));
        let request = self.request(reqwest::Method::POST, &path).query(&[("force", force.to_string())]);
        self.send(LIFECYCLE, request).await.map(drop)
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

/// A [`DaytonaRemover`] that hands each accepted delete to the watcher at once.
struct Announcing<'a> {
    remover: DaytonaRemover<'a>,
    accepted: tokio::sync::mpsc::UnboundedSender<String>,
}

impl super::Remover for Announcing<'_> {
    type Error = DaytonaError;

    async fn remove_once(&self, resource: &ResourceRef) -> Result<(), DaytonaError> {
        let result = self.remover.remove_once(resource).await;
        if result.is_ok() {
            let _ = self.accepted.send(resource.id.clone());
        }
        result
    }
}

/// How long after an accepted delete the first look is taken, and the
/// longest pause between looks.
const FIRST_LOOK: Duration = Duration::from_millis(250);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);

/// Deletes sandboxes with retry and bounded parallelism and, while the
/// other deletes go on, polls each accepted one until it answers 404, for at
/// most `verify_for` after its delete. One still there after that is
/// `Pending` (deletion is asynchronous: `destroying` can last). Deletes and
/// polls count against different throttlers, so overlapping them costs
/// nothing against the rate limits.
pub async fn remove_sandboxes(
    backend: &DaytonaBackend,
    sandboxes: Vec<ResourceRef>,
    options: &super::RemovalOptions,
    progress: &crate::report::Progress,
    verify_for: Duration,
) -> super::RemovalReport {
    use super::RemovalOutcome;

    let (accepted, announced) = tokio::sync::mpsc::unbounded_channel();
    let deleting = async move {
        let remover = Announcing { remover: DaytonaRemover { backend }, accepted };
        // The remover, and with it the channel, ends with the deletes.
        super::remove_all(&remover, sandboxes, options, progress).await
    };
    let (mut report, still_there) =
        tokio::join!(deleting, watch_until_gone(backend, announced, options.parallel, verify_for));
    for (resource, outcome) in &mut report.results {
        if let RemovalOutcome::Removed { attempts } = *outcome {
            if still_there.contains(&resource.id) {
                tracing::warn!("{resource} is still destroying; kept in the ledger for `benchwarden recover`");
                *outcome = RemovalOutcome::Pending { attempts };
            }
        }
    }
    report
}

/// Polls every sandbox announced on `accepted` until it answers 404, at most
/// `parallel` calls at once; returns those still there `verify_for` after
/// their announcement.
async fn watch_until_gone(
    backend: &DaytonaBackend,
    mut accepted: tokio::sync::mpsc::UnboundedReceiver<String>,
    parallel: usize,
    verify_for: Duration,
) -> std::collections::BTreeSet<String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};

    let slots = tokio::sync::Semaphore::new(parallel.max(1));
    let watch = |id: String| {
        let slots = &slots;
        async move {
            let deadline = Instant::now() + verify_for;
            let mut pause = FIRST_LOOK;
            loop {
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
                let gone = {
                    let _slot = slots.acquire().await;
                    // An error while polling proves nothing: the sandbox counts as still there.
                    matches!(backend.get(&id).await, Ok(None))
                };
                if gone || Instant::now() >= deadline {
                    return (id, gone);
                }
                pause = (pause * 3 / 2).min(LONGEST_PAUSE);
            }
        }
    };
    let mut watches = FuturesUnordered::new();
    let mut still_there = std::collections::BTreeSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            announced = accepted.recv(), if open => match announced {
                Some(id) => watches.push(watch(id)),
                None => open = false,
            },
            Some((id, gone)) = watches.next(), if !watches.is_empty() => {
                if !gone {
                    still_there.insert(id);
                }
            }
            else => break,
        }
    }
    still_there
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

    fn rate_headers(throttler: &str, remaining: i64, reset: u64) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        let name = |prefix: &str| reqwest::header::HeaderName::from_bytes(format!("{prefix}{throttler}").as_bytes());
        headers.insert(name("x-ratelimit-remaining-").unwrap(), remaining.to_string().parse().unwrap());
        headers.insert(name("x-ratelimit-reset-").unwrap(), reset.to_string().parse().unwrap());
        headers
    }

    /// Whether `acquire` would wait (for at least 10 ms of paused time).
    async fn waits(pacer: &Pacer, throttler: &str) -> bool {
        tokio::time::timeout(Duration::from_millis(10), pacer.acquire(throttler)).await.is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_probes_a_window_spends_its_budget_and_waits_for_the_reset() {
        let pacer = Pacer::default();
        let mut probe = pacer.acquire("lifecycle").await;
        assert!(probe.probe, "the first call learns the budget");
        assert!(waits(&pacer, "lifecycle").await, "nobody bursts while the probe is out");
        assert!(!waits(&pacer, "other").await, "throttlers are paced apart");
        pacer.observe(&mut probe, &rate_headers("lifecycle", 3, 1));
        drop(probe);
        let spent =
            [pacer.acquire("lifecycle").await, pacer.acquire("lifecycle").await, pacer.acquire("lifecycle").await];
        assert!(spent.iter().all(|permit| !permit.probe));
        assert!(waits(&pacer, "lifecycle").await, "the budget is spent");
        let before = Instant::now();
        let next = pacer.acquire("lifecycle").await;
        assert!(before.elapsed() >= Duration::from_millis(900), "waited for the window's end");
        assert!(next.probe, "a new window is probed before the others follow");
        drop(spent);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_count_the_calls_started_after_them_and_others_spending() {
        let pacer = Pacer::default();
        let mut probe = pacer.acquire("t").await;
        pacer.observe(&mut probe, &rate_headers("t", 10, 60));
        drop(probe);
        let mut permits: Vec<Permit> = Vec::new();
        for _ in 0..5 {
            permits.push(pacer.acquire("t").await);
        }
        // The first answer: the server counted it (10 → 9), not the four started after it.
        pacer.observe(&mut permits[0], &rate_headers("t", 9, 60));
        assert_eq!(pacer.lock()["t"].budget.map(|(remaining, _)| remaining), Some(5));
        // Out of order by one (the server took the third before the second): no change.
        pacer.observe(&mut permits[2], &rate_headers("t", 8, 60));
        assert_eq!(pacer.lock()["t"].budget.map(|(remaining, _)| remaining), Some(5));
        // Someone else spent 5 of the same budget: the gap exceeds what is in flight.
        pacer.observe(&mut permits[1], &rate_headers("t", 2, 60));
        assert_eq!(pacer.lock()["t"].budget.map(|(remaining, _)| remaining), Some(-1));
        assert!(waits(&pacer, "t").await);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_answers_failed_probes_and_missing_headers() {
        let pacer = Pacer::default();
        let mut probe = pacer.acquire("t").await;
        pacer.observe(&mut probe, &rate_headers("t", 1, 1));
        drop(probe);
        let mut old = pacer.acquire("t").await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut fresh = pacer.acquire("t").await;
        assert!(fresh.probe, "the window ended: probe the next");
        // An answer to a call of the ended window says nothing about this one.
        pacer.observe(&mut old, &rate_headers("t", 0, 1));
        pacer.observe(&mut fresh, &rate_headers("t", 50, 1));
        drop((old, fresh));
        assert!(!waits(&pacer, "t").await, "the stale zero was ignored");

        // A probe that got no answer lets another call probe.
        let lost = pacer.acquire("u").await;
        assert!(waits(&pacer, "u").await);
        drop(lost);
        let mut second = pacer.acquire("u").await;
        assert!(second.probe);
        // No rate-limit headers at all: nothing to pace by.
        pacer.observe(&mut second, &reqwest::header::HeaderMap::new());
        let held: Vec<Permit> = futures_util::future::join_all((0..100).map(|_| pacer.acquire("u"))).await;
        assert!(held.iter().all(|permit| !permit.probe));
        drop(second);
    }

    #[test]
    fn the_longest_retry_after_wins() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after-sandbox-lifecycle", "2".parse().unwrap());
        headers.insert("retry-after-authenticated", "5".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(5)));
    }
}
