//! A test's own view of the Docker engine: a Unix socket that forwards
//! every request to the real daemon, but adds the test's label to the
//! `filters` of every listing (containers, networks, volumes, images), and
//! makes a build-cache prune prune nothing. A command
//! that cleans up host-wide by policy (`cleanup all`, `sweep`, the old
//! scripts' wrappers) pointed at it sees, and so removes, only what the
//! test created, never another test's containers or a person's.

use std::convert::Infallible;
use std::path::PathBuf;

use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::{UnixListener, UnixStream};

use super::image::docker_socket;

/// A filtering socket in front of the engine; stops when dropped.
pub struct ScopedEngine {
    _directory: TempDir,
    socket: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ScopedEngine {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ScopedEngine {
    /// Listings through it show only what carries `label` (`K=V`).
    pub fn start(label: &str) -> Self {
        let directory = tempfile::Builder::new().prefix("engine-").tempdir().expect("a directory for the socket");
        let socket = directory.path().join("docker.sock");
        let listener = UnixListener::bind(&socket).expect("bind the scoped engine's socket");
        let label = label.to_string();
        let server = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let label = label.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| forward(request, label.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(client), service)
                        .await;
                });
            }
        });
        ScopedEngine { _directory: directory, socket, server }
    }

    /// The value for `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

/// One request to the real daemon on a fresh connection: its answer, or why none came.
pub(super) async fn send_to_daemon<B>(request: Request<B>) -> Result<Response<Incoming>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = UnixStream::connect(docker_socket()).await.map_err(|error| error.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    sender.send_request(request).await.map_err(|error| error.to_string())
}

/// One request, its listing narrowed, to the real daemon on a fresh connection.
async fn forward(request: Request<Incoming>, label: String) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = request.into_parts();
    if parts.method == hyper::Method::GET {
        if let Some(narrowed) = narrowed_uri(&parts.uri, &label) {
            parts.uri = narrowed;
        }
    }
    // The build cache cannot be scoped to a test: a prune through this socket prunes nothing
    // (a cache record id no record has), and is answered as the engine answers it.
    if parts.method == hyper::Method::POST && unversioned(parts.uri.path()) == Some("/build/prune") {
        if let Some(narrowed) = with_filter(&parts.uri, "id", "benchwarden-test-prunes-nothing") {
            parts.uri = narrowed;
        }
    }
    let request = Request::from_parts(parts, body);
    let answer = send_to_daemon(request);
    Ok(match answer.await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(error) => {
            let body = http_body_util::Full::new(Bytes::from(error)).map_err(|never| match never {}).boxed();
            let mut response = Response::new(body);
            *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            response
        }
    })
}

/// The path without its `/v1.xx` prefix.
fn unversioned(path: &str) -> Option<&str> {
    match path.strip_prefix("/v") {
        Some(rest) => Some(&rest[rest.find('/')?..]),
        None => Some(path),
    }
}

/// The listing's URI with `label` added to its `filters`; `None` for any other request.
fn narrowed_uri(uri: &hyper::Uri, label: &str) -> Option<hyper::Uri> {
    let listing = ["/containers/json", "/networks", "/networks/", "/volumes", "/volumes/", "/images/json"];
    if !listing.contains(&unversioned(uri.path())?) {
        return None;
    }
    with_filter(uri, "label", label)
}

/// The URI with `value` added to its `filters` under `key`.
fn with_filter(uri: &hyper::Uri, key: &str, value: &str) -> Option<hyper::Uri> {
    let path = uri.path();
    let mut pairs: Vec<(String, String)> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect();
    let mut filters: Value = match pairs.iter().position(|(key, _)| key == "filters") {
        Some(index) => serde_json::from_str(&pairs.remove(index).1).unwrap_or_else(|_| serde_json::json!({})),
        None => serde_json::json!({}),
    };
    let values = filters.as_object_mut()?.entry(key).or_insert_with(|| serde_json::json!([]));
    values.as_array_mut()?.push(Value::String(value.to_string()));
    pairs.push(("filters".to_string(), filters.to_string()));
    let query: Vec<String> =
        pairs.iter().map(|(key, value)| format!("{}={}", percent_encode(key), percent_encode(value))).collect();
    format!("{path}?{}", query.join("&")).parse().ok()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex =
            bytes.get(index + 1..index + 3).and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                index += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                index += 1;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[test]
fn listings_get_the_label_and_nothing_else_changes() {
    let uri: hyper::Uri =
        "/v1.41/containers/json?all=true&filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D".parse().unwrap();
    let narrowed = narrowed_uri(&uri, "benchwarden.test=t1").unwrap();
    let query = narrowed.query().unwrap();
    let filters = query.split('&').find_map(|pair| pair.strip_prefix("filters=")).unwrap();
    let filters: Value = serde_json::from_str(&percent_decode(filters)).unwrap();
    assert_eq!(filters["label"], serde_json::json!(["a=b", "benchwarden.test=t1"]));
    assert!(query.contains("all=true"));
    assert!(narrowed_uri(&"/networks".parse().unwrap(), "k=v").is_some());
    assert!(narrowed_uri(&"/v1.41/containers/abc/json".parse().unwrap(), "k=v").is_none());
    assert!(narrowed_uri(&"/_ping".parse().unwrap(), "k=v").is_none());
}
