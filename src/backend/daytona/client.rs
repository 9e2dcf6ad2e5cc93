//! The Daytona API client: authenticated requests, paced by the rate-limit
//! headers; cursor-paged listing (and the older bare-array answer); get,
//! stop, and delete (which completes asynchronously).

use std::collections::BTreeMap;
use std::time::Duration;

use super::config::{Credentials, DaytonaConfig};
use super::model::{DaytonaError, ListAnswer, Sandbox};
use super::pacer::{retry_after, Pacer};
use crate::errors::{error_chain, Error, Service};
use crate::events::Events;
use crate::resource::Kind;
use crate::retry::{Call, RetryPolicy, Success};

const PAGE_LIMIT: u32 = 200;
const LIST_CALL: Call<'static> = Call { what: "list sandboxes", service: Service::Daytona, kind: None };

/// A Daytona API client.
pub struct DaytonaBackend {
    client: reqwest::Client,
    config: DaytonaConfig,
    pacer: Pacer,
    /// How list pages and lookups are retried: the user's settings.
    retry: RetryPolicy,
    /// Where their retries are told.
    events: Events,
}

/// The API's throttlers: deletes and stops count against the lifecycle one,
/// everything else here against the general one.
const LIFECYCLE: &str = "sandbox-lifecycle";
const AUTHENTICATED: &str = "authenticated";

impl DaytonaBackend {
    pub fn new(config: DaytonaConfig, retry: RetryPolicy, events: Events) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("benchwarden/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|error| Error::usage(format!("cannot build the Daytona HTTP client: {error}")))?;
        Ok(DaytonaBackend { client, config, pacer: Pacer::default(), retry, events })
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
        // reqwest's text names the URL, never the Authorization header.
        let response = builder.send().await.map_err(|error| DaytonaError::transport(error_chain(&error)))?;
        self.pacer.observe(&mut permit, response.headers());
        drop(permit);
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        let reason = status.canonical_reason().unwrap_or("error");
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| value.get("message").map(|message| message.to_string().trim_matches('"').to_string()))
            .unwrap_or_else(|| match not_json(body.as_bytes()) {
                // Not the API's own answer: say so, since it points at what stands in front of it.
                Some(what) => {
                    format!("{reason}, {what} instead of the API's JSON; check that DAYTONA_API_URL is the API")
                }
                None => reason.to_string(),
            });
        Err(DaytonaError { status: Some(status.as_u16()), message, retry_after })
    }

    /// Every sandbox matching `labels` (all pages).
    pub async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<Sandbox>, DaytonaError> {
        self.list_where(labels, &[], true).await
    }

    /// Every sandbox in one of `states` (all pages), each page asked for
    /// once: for narrowing down which deletions may have finished, where a
    /// failed look costs nothing but a later one.
    pub(crate) async fn list_in_states(&self, states: &[&str]) -> Result<Vec<Sandbox>, DaytonaError> {
        self.list_where(&BTreeMap::new(), states, false).await
    }

    /// The sandbox list, page by page; with `retried`, a page lost to a 5xx,
    /// a reset or a timeout is asked for again (a 429 waits as told).
    async fn list_where(
        &self,
        labels: &BTreeMap<String, String>,
        states: &[&str],
        retried: bool,
    ) -> Result<Vec<Sandbox>, DaytonaError> {
        let mut sandboxes = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query: Vec<(&str, String)> = vec![("limit", PAGE_LIMIT.to_string())];
            if !labels.is_empty() {
                query.push(("labels", serde_json::to_string(labels).unwrap_or_default()));
            }
            query.extend(states.iter().map(|state| ("states", state.to_string())));
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor.clone()));
            }
            match self.list_page(&query, retried).await? {
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

    /// One page of the list, read; an answer that is not a list (an empty
    /// body, a proxy's HTML page with a 200) is asked for again like a 5xx,
    /// since the next answer may well be the list.
    async fn list_page(&self, query: &[(&str, String)], retried: bool) -> Result<ListAnswer, DaytonaError> {
        let fetch = || async {
            let response =
                self.send(AUTHENTICATED, self.request(reqwest::Method::GET, "/sandbox").query(query)).await?;
            let body = response
                .bytes()
                .await
                .map_err(|error| DaytonaError::transport(format!("reading the sandbox list: {error}")))?;
            parse_list(&body)
        };
        let policy = match retried {
            true => self.retry.clone(),
            false => RetryPolicy { retries: 0, ..self.retry.clone() },
        };
        match policy.run(LIST_CALL, &self.events, fetch).await {
            Ok((Success::Done(body), _)) => Ok(body),
            // A 404 on the list itself: not the API.
            Ok((Success::AlreadyDone, _)) => Err(DaytonaError {
                status: Some(404),
                message: "the sandbox list answered 404; check that DAYTONA_API_URL ends in /api".to_string(),
                retry_after: None,
            }),
            Err(failure) => Err(failure.error),
        }
    }

    /// The sandbox, or `None` once it is gone (404).
    pub async fn get(&self, id: &str) -> Result<Option<Sandbox>, DaytonaError> {
        let path = format!("/sandbox/{}", encode_segment(id));
        match self.send(AUTHENTICATED, self.request(reqwest::Method::GET, &path)).await {
            Ok(response) => response
                .json::<Sandbox>()
                .await
                .map(Some)
                .map_err(|error| DaytonaError::transport(format!("reading sandbox {id}: {error}"))),
            Err(error) if error.status == Some(404) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The sandbox, or `None` once it is gone, looked up with the user's
    /// retry settings.
    pub(crate) async fn look_up(&self, id: &str) -> Result<Option<Sandbox>, DaytonaError> {
        let what = format!("look up sandbox {id}");
        let call = Call { what: &what, service: Service::Daytona, kind: Some(Kind::Sandbox) };
        match self.retry.run(call, &self.events, || self.get(id)).await {
            Ok((Success::Done(sandbox), _)) => Ok(sandbox),
            Ok((Success::AlreadyDone, _)) => Ok(None),
            Err(failure) => Err(failure.error),
        }
    }

    /// Checks the credentials with one cheap authenticated call (one
    /// sandbox of the list), so that a wrong key stops a command before it
    /// starts anything.
    pub(crate) async fn check_credentials(&self) -> Result<(), DaytonaError> {
        let call = Call { what: "check the Daytona credentials", service: Service::Daytona, kind: None };
        let query = [("limit", "1")];
        let answer = self
            .retry
            .run(call, &self.events, || {
                self.send(AUTHENTICATED, self.request(reqwest::Method::GET, "/sandbox").query(&query))
            })
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(failure) => Err(failure.error),
        }
    }

    /// Stops a sandbox (`force`: SIGKILL instead of SIGTERM inside it).
    pub async fn stop(&self, id: &str, force: bool) -> Result<(), DaytonaError> {
        let path = format!("/sandbox/{}/stop", encode_segment(id));
        let request = self.request(reqwest::Method::POST, &path).query(&[("force", force.to_string())]);
        self.send(LIFECYCLE, request).await.map(drop)
    }

    /// Replaces a sandbox's labels with `labels` (`PUT /sandbox/{id}/labels`;
    /// the API keeps none of the old ones), with the user's retry settings.
    /// `Ok(false)` when it is gone.
    pub(crate) async fn put_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> Result<bool, DaytonaError> {
        let what = format!("label sandbox {id}");
        let call = Call { what: &what, service: Service::Daytona, kind: Some(Kind::Sandbox) };
        let path = format!("/sandbox/{}/labels", encode_segment(id));
        let body = serde_json::json!({ "labels": labels });
        let put = || self.send(AUTHENTICATED, self.request(reqwest::Method::PUT, &path).json(&body));
        match self.retry.run(call, &self.events, put).await {
            Ok((Success::Done(_), _)) => Ok(true),
            Ok((Success::AlreadyDone, _)) => Ok(false),
            Err(failure) => Err(failure.error),
        }
    }

    /// Starts deletion; it completes asynchronously (see [`Self::get`]).
    pub async fn delete(&self, id: &str) -> Result<(), DaytonaError> {
        let path = format!("/sandbox/{}", encode_segment(id));
        self.send(LIFECYCLE, self.request(reqwest::Method::DELETE, &path)).await.map(drop)
    }
}

fn parse_list(body: &[u8]) -> Result<ListAnswer, DaytonaError> {
    serde_json::from_slice(body).map_err(|error| {
        let what = match not_json(body) {
            Some(what) => what.to_string(),
            None if error.is_data() => "JSON, but not a list of sandboxes".to_string(),
            None => error.to_string(),
        };
        DaytonaError::transport(format!(
            "the sandbox list is not what the API returns ({what}); check that DAYTONA_API_URL ends in /api"
        ))
    })
}

/// What a body that cannot be the API's JSON is, when it is one of the
/// usual suspects: nothing at all, or a web page (a proxy's error page, or
/// the dashboard a URL without `/api` gets).
fn not_json(body: &[u8]) -> Option<&'static str> {
    let text = body.trim_ascii_start();
    if text.is_empty() {
        Some("an empty body")
    } else if text.starts_with(b"<") {
        Some("an HTML page")
    } else {
        None
    }
}

fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Classify;

    #[test]
    fn an_empty_body_or_html_is_a_clear_error_naming_the_likely_cause() {
        for (body, says) in [
            (&b""[..], "an empty body"),
            (b"\r\n<html><body>502 Bad Gateway</body></html>", "an HTML page"),
            (b"{\"items\": 7}", "not a list of sandboxes"),
            (b"Bad Gateway", "expected value"),
        ] {
            let error = parse_list(body).err().unwrap_or_else(|| panic!("{body:?} parsed"));
            assert!(error.to_string().contains("DAYTONA_API_URL") && error.to_string().contains(says), "{error}");
            // Retried like a 5xx: the next answer may be the list.
            assert!(matches!(error.class(), crate::errors::ErrorClass::Retryable { .. }), "{error}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_list_answer_parses_or_is_an_error_never_a_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_list(&body);
        }

        #[test]
        fn any_json_shaped_answer_parses_or_is_an_error(text in "[\\[\\]{}\",:a-z0-9 ]{0,200}") {
            let _ = parse_list(text.as_bytes());
        }
    }
}
