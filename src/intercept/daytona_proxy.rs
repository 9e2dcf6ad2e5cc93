//! The per-task Daytona API proxy: an HTTP server on 127.0.0.1 with a random
//! port; the harness's `DAYTONA_API_URL` points at it (with `/api`). It
//! forwards to the real API, the harness's own auth headers untouched. On
//! `POST /api/sandbox` it adds the owner labels (and, where the create
//! leaves them unset, the run's `autoStopInterval`/`autoDeleteInterval`, so
//! the provider collects the sandbox even if every machine of ours dies) and
//! the run's lease (`benchwarden.lease-until`, see `owner::lease`), and records the
//! returned id in the ledger before the answer goes back. Everything else,
//! the SDK's Socket.IO websocket included, passes through byte for byte: the
//! official SDK rejects a re-serialised `2.0` where it expects `2`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use super::proxy::{finish_creates, label_create_body, spawn_server, Policy, Recorder};
use crate::clock::now_unix;
use crate::net::http::Head;
use crate::net::{BoxRead, BoxWrite, Upstream};
use crate::owner::lease;
use crate::resource::Kind;

/// Where the real API is, split for forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiTarget {
    pub(crate) upstream: Upstream,
    /// The `Host` header the API expects.
    pub(crate) host: String,
    /// The API's path prefix, e.g. `/api`.
    pub(crate) base_path: String,
}

impl ApiTarget {
    /// From an API base URL such as `https://app.daytona.io/api`.
    pub(crate) fn parse(api_url: &str) -> Result<Self, String> {
        let (scheme, rest) = api_url.split_once("://").ok_or_else(|| format!("{api_url}: not an http(s) URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(index) => (&rest[..index], &rest[index..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{api_url}: expected scheme://host[:port]/path"));
        }
        let host_only = authority.rsplit_once(':').map_or(authority, |(host, _)| host).trim_matches(['[', ']']);
        let upstream = match scheme {
            "https" => Upstream::Tls {
                address: if authority.contains(':') { authority.to_string() } else { format!("{authority}:443") },
                server_name: host_only.to_string(),
            },
            "http" => {
                Upstream::Tcp(if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") })
            }
            other => return Err(format!("{api_url}: unsupported scheme {other}")),
        };
        Ok(ApiTarget { upstream, host: authority.to_string(), base_path: path.trim_end_matches('/').to_string() })
    }
}

/// How the tasks' Daytona proxies are set up.
#[derive(Debug, Clone)]
pub(crate) struct DaytonaProxySettings {
    pub(crate) target: ApiTarget,
    /// Set on created sandboxes that do not set one, so the provider collects them if we are gone:
    /// the file's, or the defaults `settings` decides; `None` when the file says `off`.
    pub(crate) auto_stop_minutes: Option<u32>,
    pub(crate) auto_delete_minutes: Option<i64>,
    /// The lease stamped on every created sandbox (the run renews it).
    pub(crate) lease: Duration,
}

/// The Daytona side of the proxy.
pub(crate) struct DaytonaPolicy {
    pub(crate) target: ApiTarget,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) auto_stop_minutes: Option<u32>,
    pub(crate) auto_delete_minutes: Option<i64>,
    pub(crate) lease: Duration,
}

/// The path our clients use; the upstream's own prefix replaces it.
const LOCAL_PREFIX: &str = "/api";

impl DaytonaPolicy {
    fn upstream_target(&self, target: &str) -> String {
        let rest = target.strip_prefix(LOCAL_PREFIX).unwrap_or(target);
        format!("{}{rest}", self.target.base_path)
    }
}

impl Policy for DaytonaPolicy {
    fn create_kind(&self, head: &Head) -> Option<Kind> {
        let path = head.target.split('?').next().unwrap_or("");
        (head.method.eq_ignore_ascii_case("POST") && matches!(path, "/api/sandbox" | "/api/sandbox/"))
            .then_some(Kind::Sandbox)
    }

    /// The owner labels and a lease from now: the sandbox is leased before anyone learns its id.
    fn rewrite_create_body(&self, _kind: Kind, body: &[u8]) -> Result<Vec<u8>, String> {
        let mut labels = self.labels.clone();
        labels.extend([lease::lease_label(now_unix(), self.lease)]);
        label_create_body(body, "labels", &labels, |object| {
            fill_gap(object, "autoStopInterval", self.auto_stop_minutes.map(Value::from));
            fill_gap(object, "autoDeleteInterval", self.auto_delete_minutes.map(Value::from));
        })
    }

    fn created(&self, _kind: Kind, _target: &str, _request_body: &[u8], answer: &[u8]) -> Option<(String, String)> {
        let value: Value = serde_json::from_slice(answer).ok()?;
        let id = value.get("id")?.as_str()?.to_string();
        let name = value.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        Some((id, name))
    }

    fn upstream_head(&self, head: &Head, content_length: Option<usize>) -> Vec<u8> {
        head.rewritten(Some(&self.upstream_target(&head.target)), Some(&self.target.host), content_length)
    }

    /// The API's error body (CONTRACT.md §6), so the SDK raises its own error with our message.
    fn refusal(&self, head: &Head, message: &str) -> Vec<u8> {
        let path = head.target.split('?').next().unwrap_or_default();
        let timestamp = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let body = serde_json::json!({
            "path": path,
            "timestamp": timestamp,
            "statusCode": 429,
            "error": "Too Many Requests",
            "message": format!("benchwarden: {message}"),
        })
        .to_string();
        format!(
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Sets `field` to `value` where the harness left it out or sent `null`
/// (which the API reads as unset): the harness's own choice stands, ours
/// only fills a gap.
fn fill_gap(object: &mut serde_json::Map<String, Value>, field: &str, value: Option<Value>) {
    let Some(value) = value else { return };
    let slot = object.entry(field).or_insert(Value::Null);
    if slot.is_null() {
        *slot = value;
    }
}

/// A running proxy for one task.
pub(crate) struct DaytonaProxy {
    api_url: String,
    server: tokio::task::JoinHandle<()>,
    creates: TaskTracker,
    task: String,
}

impl DaytonaProxy {
    pub(crate) async fn start(policy: DaytonaPolicy, recorder: Recorder) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let api_url = format!("http://{}{LOCAL_PREFIX}", listener.local_addr()?);
        let upstream = policy.target.upstream.clone();
        let listener = Arc::new(listener);
        let accept = move || {
            let listener = Arc::clone(&listener);
            async move {
                let (client, _) = listener.accept().await?;
                client.set_nodelay(true)?;
                let (read, write) = client.into_split();
                Ok((Box::new(read) as BoxRead, Box::new(write) as BoxWrite))
            }
        };
        let (creates, task) = (recorder.creates.clone(), recorder.task_id.clone());
        let server = spawn_server(accept, upstream, policy, recorder);
        Ok(DaytonaProxy { api_url, server, creates, task })
    }

    /// A proxy for one task, labelling what it creates with `labels`.
    pub(crate) async fn start_for_task(
        settings: &DaytonaProxySettings,
        labels: BTreeMap<String, String>,
        recorder: Recorder,
    ) -> std::io::Result<Self> {
        let policy = DaytonaPolicy {
            target: settings.target.clone(),
            labels,
            auto_stop_minutes: settings.auto_stop_minutes,
            auto_delete_minutes: settings.auto_delete_minutes,
            lease: settings.lease,
        };
        Self::start(policy, recorder).await
    }

    /// The value for the harness's `DAYTONA_API_URL`.
    pub(crate) fn api_url(&self) -> &str {
        &self.api_url
    }

    /// Stops serving once the creates in flight have their answers recorded.
    pub(crate) async fn stop(self) {
        finish_creates(&self.creates, &self.task).await;
        self.server.abort();
    }
}

impl Drop for DaytonaProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> DaytonaPolicy {
        DaytonaPolicy {
            target: ApiTarget::parse("https://app.daytona.io/api").unwrap(),
            labels: BTreeMap::from([("benchwarden.run".to_string(), "r1".to_string())]),
            auto_stop_minutes: Some(30),
            auto_delete_minutes: Some(0),
            lease: Duration::from_secs(600),
        }
    }

    #[test]
    fn api_urls_split_into_upstream_host_and_prefix() {
        let target = ApiTarget::parse("https://app.daytona.io/api").unwrap();
        assert_eq!(
            target.upstream,
            Upstream::Tls { address: "app.daytona.io:443".into(), server_name: "app.daytona.io".into() }
        );
        assert_eq!(target.host, "app.daytona.io");
        assert_eq!(target.base_path, "/api");
        let local = ApiTarget::parse("http://127.0.0.1:3000/api/").unwrap();
        assert_eq!(local.upstream, Upstream::Tcp("127.0.0.1:3000".into()));
        assert_eq!(local.base_path, "/api");
        assert!(ApiTarget::parse("app.daytona.io").is_err());
    }

    #[test]
    fn creates_get_labels_and_collection_defaults_without_overriding_the_harness() {
        let policy = policy();
        let body =
            policy.rewrite_create_body(Kind::Sandbox, br#"{"labels":{"mine":"1"},"autoStopInterval":5}"#).unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["labels"]["mine"], "1");
        assert_eq!(value["labels"]["benchwarden.run"], "r1");
        assert_eq!(value["autoStopInterval"], 5);
        assert_eq!(value["autoDeleteInterval"], 0);
        assert!(policy.rewrite_create_body(Kind::Sandbox, b"{oops").is_err());
        let nulls = policy
            .rewrite_create_body(Kind::Sandbox, br#"{"autoStopInterval":null,"autoDeleteInterval":null}"#)
            .unwrap();
        let value: Value = serde_json::from_slice(&nulls).unwrap();
        assert_eq!(
            (value["autoStopInterval"].clone(), value["autoDeleteInterval"].clone()),
            (Value::from(30), Value::from(0))
        );
    }

    #[test]
    fn heads_are_rewritten_for_the_upstream() {
        let policy = policy();
        let head = Head {
            raw:
                b"GET /api/sandbox/abc?verbose=true HTTP/1.1\r\nHost: 127.0.0.1:4000\r\nAuthorization: Bearer k\r\n\r\n"
                    .to_vec(),
            method: "GET".into(),
            target: "/api/sandbox/abc?verbose=true".into(),
            status: 0,
            headers: Vec::new(),
        };
        let text = String::from_utf8(policy.upstream_head(&head, None)).unwrap();
        assert_eq!(
            text,
            "GET /api/sandbox/abc?verbose=true HTTP/1.1\r\nAuthorization: Bearer k\r\nHost: app.daytona.io\r\n\r\n"
        );
        assert_eq!(
            policy.create_kind(&Head { method: "POST".into(), target: "/api/sandbox".into(), ..head }),
            Some(Kind::Sandbox)
        );
    }
}
