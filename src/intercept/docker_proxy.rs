//! The per-task Docker Engine API proxy. A task's Docker clients reach the
//! daemon through a Unix socket of ours (`DOCKER_HOST` in the harness's
//! environment). Create calls for containers, networks and volumes get the
//! task's owner labels added, and the new id is committed to the ledger
//! before the response reaches the client. Everything else passes through
//! byte for byte: keep-alive connections, chunked and streaming bodies both
//! ways, `HEAD /_ping`, and hijacked connections (`Upgrade: tcp` answered
//! 101, the older plain-200 hijack of attach and exec, BuildKit's h2c
//! `/session` and `/grpc`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;

use super::http::{error_response, Buffered, Framing, Head, HttpError};
use crate::backend::{Kind, ResourceRef};
use crate::ledger::Ledger;

/// Where the real daemon is: the one benchwarden itself talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Unix(PathBuf),
    /// `host:port`, plain TCP.
    Tcp(String),
}

impl Upstream {
    /// From a `DOCKER_HOST`-style address; `None` for what the proxy cannot
    /// speak (TLS, ssh), which then leaves the harness on the real address.
    pub fn from_address(address: &str) -> Option<Self> {
        if let Some(path) = address.strip_prefix("unix://") {
            return Some(Upstream::Unix(PathBuf::from(path)));
        }
        if std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|value| !value.is_empty()) {
            return None;
        }
        address
            .strip_prefix("tcp://")
            .or_else(|| address.strip_prefix("http://"))
            .map(|rest| Upstream::Tcp(rest.trim_end_matches('/').to_string()))
    }

    async fn connect(&self) -> std::io::Result<(BoxRead, BoxWrite)> {
        match self {
            Upstream::Unix(path) => {
                let (read, write) = UnixStream::connect(path).await?.into_split();
                Ok((Box::new(read), Box::new(write)))
            }
            Upstream::Tcp(address) => {
                let stream = TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                let (read, write) = stream.into_split();
                Ok((Box::new(read), Box::new(write)))
            }
        }
    }
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Who owns what the proxied clients create.
pub struct ProxyOwner {
    pub run_id: String,
    pub task_id: String,
    pub labels: BTreeMap<String, String>,
    pub ledger: Ledger,
}

/// A running proxy for one task. Dropping it without [`DockerProxy::stop`]
/// still stops it, but leaves its directory.
pub struct DockerProxy {
    socket: PathBuf,
    directory: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl DockerProxy {
    /// Binds a socket in a fresh private directory (0700, socket 0600) under
    /// `root` and starts serving.
    pub async fn start(root: &Path, upstream: Upstream, owner: ProxyOwner) -> std::io::Result<Self> {
        let directory = private_directory(root)?;
        let socket = directory.join("docker.sock");
        let listener = UnixListener::bind(&socket)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
        let owner = Arc::new(owner);
        let server = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => {
                            connections.spawn(serve(client, upstream.clone(), Arc::clone(&owner)));
                        }
                        Err(error) => tracing::warn!("docker proxy: accept failed: {error}"),
                    },
                    // Reap finished connections so the set does not grow with a long task.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(DockerProxy { socket, directory, server })
    }

    /// The value for the harness's `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Stops serving, closes every connection, removes the socket and its directory.
    pub fn stop(self) {
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A new 0700 directory for one socket. Unix socket paths are limited to
/// about 100 bytes, so a deep state directory falls back to the temp dir.
fn private_directory(root: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let name: String = (0..10).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect();
    let preferred = root.join(&name);
    let base = if preferred.join("docker.sock").as_os_str().len() < 100 {
        root.to_path_buf()
    } else {
        std::env::temp_dir().join("benchwarden-sockets")
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&base)?;
    let directory = base.join(name);
    std::fs::DirBuilder::new().mode(0o700).create(&directory)?;
    Ok(directory)
}

/// Which create call a request is, if any.
fn create_kind(head: &Head) -> Option<Kind> {
    if !head.method.eq_ignore_ascii_case("POST") {
        return None;
    }
    match unversioned_path(&head.target) {
        "/containers/create" => Some(Kind::Container),
        "/networks/create" => Some(Kind::Network),
        "/volumes/create" => Some(Kind::Volume),
        _ => None,
    }
}

/// The path without query and without a `/v1.xx` prefix.
fn unversioned_path(target: &str) -> &str {
    let path = target.split('?').next().unwrap_or(target);
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some(slash) = rest.find('/') {
            if rest[..slash].chars().all(|c| c.is_ascii_digit() || c == '.') && slash > 0 {
                return &rest[slash..];
            }
        }
    }
    path
}

/// `POST /containers/{id}/attach` and `POST /exec/{id}/start`: endpoints that
/// hijack the connection even without `Upgrade`.
fn may_hijack(head: &Head) -> bool {
    let path = unversioned_path(&head.target);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    head.method.eq_ignore_ascii_case("POST")
        && matches!(parts.as_slice(), ["containers", _, "attach"] | ["exec", _, "start"])
}

fn is_raw_stream(head: &Head) -> bool {
    head.header("content-type").is_some_and(|value| {
        let value = String::from_utf8_lossy(value);
        value.starts_with("application/vnd.docker.raw-stream")
            || value.starts_with("application/vnd.docker.multiplexed-stream")
    })
}

/// Adds the owner labels to a create body. `Err` when it is not a JSON object.
fn label_body(body: &[u8], labels: &BTreeMap<String, String>) -> Result<Vec<u8>, String> {
    let text = if body.is_empty() { b"{}".as_slice() } else { body };
    let mut value: Value = serde_json::from_slice(text).map_err(|error| format!("create body is not JSON: {error}"))?;
    let object = value.as_object_mut().ok_or("create body is not a JSON object")?;
    let slot = object.entry("Labels").or_insert_with(|| Value::Object(Default::default()));
    if slot.is_null() {
        *slot = Value::Object(Default::default());
    }
    let existing = slot.as_object_mut().ok_or("Labels is not a JSON object")?;
    for (key, value) in labels {
        existing.insert(key.clone(), Value::String(value.clone()));
    }
    serde_json::to_vec(&value).map_err(|error| error.to_string())
}

/// The id a successful create answered with (volumes answer with a name).
fn created_id(kind: Kind, body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let key = if kind == Kind::Volume { "Name" } else { "Id" };
    value.get(key)?.as_str().map(str::to_string)
}

/// The `name` query parameter of a create call, for the ledger.
fn requested_name(kind: Kind, target: &str, body: &[u8]) -> String {
    if kind != Kind::Container {
        let value: Option<Value> = serde_json::from_slice(body).ok();
        return value.and_then(|value| value.get("Name")?.as_str().map(str::to_string)).unwrap_or_default();
    }
    target
        .split_once('?')
        .and_then(|(_, query)| query.split('&').find_map(|pair| pair.strip_prefix("name=")))
        .map(|name| name.replace("%2F", "/").replace("%2f", "/"))
        .unwrap_or_default()
}

enum Next {
    KeepAlive,
    Close,
}

async fn serve(client: UnixStream, upstream: Upstream, owner: Arc<ProxyOwner>) {
    let (client_read, client_write) = client.into_split();
    let mut client_in = Buffered::new(client_read);
    let mut client_out: BoxWrite = Box::new(client_write);
    let (upstream_read, mut upstream_out) = match upstream.connect().await {
        Ok(halves) => halves,
        Err(error) => {
            let message = format!("cannot reach the Docker daemon: {error}");
            let _ = client_out.write_all(&error_response(502, "Bad Gateway", &message)).await;
            return;
        }
    };
    let mut upstream_in = Buffered::new(upstream_read);
    loop {
        let head = match client_in.read_head(true).await {
            Ok(head) => head,
            Err(HttpError::Closed) | Err(HttpError::Io(_)) => return,
            Err(HttpError::HeadTooLarge) => {
                let _ = client_out
                    .write_all(&error_response(431, "Request Header Fields Too Large", "request head too large"))
                    .await;
                return;
            }
            Err(error) => {
                let _ = client_out.write_all(&error_response(400, "Bad Request", &error.to_string())).await;
                return;
            }
        };
        let step = match create_kind(&head) {
            Some(kind) => {
                forward_create(kind, head, &mut client_in, &mut client_out, &mut upstream_in, &mut upstream_out, &owner)
                    .await
            }
            None => forward(head, &mut client_in, &mut client_out, &mut upstream_in, &mut upstream_out).await,
        };
        match step {
            Ok(Next::KeepAlive) => continue,
            Ok(Next::Close) => return,
            Err(error) => {
                tracing::debug!("docker proxy: connection ended: {error}");
                return;
            }
        }
    }
}

/// A create call: the body is read whole, labelled, forwarded; the answer
/// is read whole, its id recorded, then passed back unchanged.
async fn forward_create(
    kind: Kind,
    head: Head,
    client_in: &mut Buffered<tokio::net::unix::OwnedReadHalf>,
    client_out: &mut BoxWrite,
    upstream_in: &mut Buffered<BoxRead>,
    upstream_out: &mut BoxWrite,
    owner: &ProxyOwner,
) -> Result<Next, HttpError> {
    let framing = match head.request_framing() {
        Ok(framing) => framing,
        Err(error) => {
            client_out.write_all(&error_response(400, "Bad Request", &error.to_string())).await?;
            return Ok(Next::Close);
        }
    };
    let body = client_in.copy_body(framing, &mut tokio::io::sink(), true).await?.unwrap_or_default();
    let labelled = match label_body(&body, &owner.labels) {
        Ok(labelled) => labelled,
        Err(message) => {
            client_out.write_all(&error_response(400, "Bad Request", &message)).await?;
            return Ok(Next::Close);
        }
    };
    upstream_out.write_all(&head.with_content_length(labelled.len())).await?;
    upstream_out.write_all(&labelled).await?;
    upstream_out.flush().await?;

    let response = upstream_in.read_head(false).await?;
    let framing = response.response_framing(&head.method)?;
    let mut raw_body = Vec::new();
    let decoded = upstream_in.copy_body(framing, &mut raw_body, true).await?.unwrap_or_default();
    if (200..300).contains(&response.status) {
        match created_id(kind, &decoded) {
            Some(id) => {
                let name = requested_name(kind, &head.target, &body);
                let resource = ResourceRef { kind, id, name };
                // Committed before the client learns the id: a crash from here on leaves a record.
                if let Err(error) = owner.ledger.record_resources(&owner.run_id, &owner.task_id, vec![resource]).await {
                    tracing::error!("task {}: cannot record a new {kind} in the ledger: {error}", owner.task_id);
                }
            }
            None => tracing::warn!("task {}: a {kind} create answered without an id", owner.task_id),
        }
    }
    client_out.write_all(&response.raw).await?;
    client_out.write_all(&raw_body).await?;
    client_out.flush().await?;
    Ok(if framing == Framing::UntilClose || head.wants_close() || response.wants_close() {
        Next::Close
    } else {
        Next::KeepAlive
    })
}

/// Any other call: head and body forwarded as they come, the answer
/// streamed back, a hijack spliced.
async fn forward(
    head: Head,
    client_in: &mut Buffered<tokio::net::unix::OwnedReadHalf>,
    client_out: &mut BoxWrite,
    upstream_in: &mut Buffered<BoxRead>,
    upstream_out: &mut BoxWrite,
) -> Result<Next, HttpError> {
    let framing = head.request_framing()?;
    upstream_out.write_all(&head.raw).await?;
    upstream_out.flush().await?;
    // The daemon may answer before it has read the whole body (a build that fails early).
    let (sent, response) =
        tokio::join!(client_in.copy_body(framing, upstream_out, false), upstream_in.read_head(false));
    sent?;
    let response = response?;
    client_out.write_all(&response.raw).await?;
    client_out.flush().await?;

    let hijacked = response.status == 101
        || (response.status == 200 && !head.is_upgrade() && may_hijack(&head) && is_raw_stream(&response));
    if hijacked {
        splice(client_in, client_out, upstream_in, upstream_out).await;
        return Ok(Next::Close);
    }

    let framing = response.response_framing(&head.method)?;
    // Stream the answer (logs -f, events, stats) while watching the client: if it
    // goes away, the daemon's side is closed too.
    let copy = upstream_in.copy_body(framing, client_out, false);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            copied = &mut copy => {
                copied?;
                break;
            }
            filled = client_in.fill() => match filled {
                Ok(0) | Err(_) => return Ok(Next::Close),
                // A pipelined next request: kept in the buffer for the next round.
                Ok(_) => {}
            },
        }
    }
    Ok(if framing == Framing::UntilClose || head.wants_close() || response.wants_close() {
        Next::Close
    } else {
        Next::KeepAlive
    })
}

/// Copies raw bytes both ways until both sides are done, starting with what
/// was already buffered on each side.
async fn splice(
    client_in: &mut Buffered<tokio::net::unix::OwnedReadHalf>,
    client_out: &mut BoxWrite,
    upstream_in: &mut Buffered<BoxRead>,
    upstream_out: &mut BoxWrite,
) {
    let pending_to_client: Vec<u8> = upstream_in.buffer.drain(..).collect();
    let pending_to_daemon: Vec<u8> = client_in.buffer.drain(..).collect();
    if client_out.write_all(&pending_to_client).await.is_err()
        || upstream_out.write_all(&pending_to_daemon).await.is_err()
    {
        return;
    }
    let to_daemon = async {
        let _ = tokio::io::copy(&mut client_in.inner, upstream_out).await;
        let _ = upstream_out.shutdown().await;
    };
    let to_client = async {
        let _ = tokio::io::copy(&mut upstream_in.inner, client_out).await;
        let _ = client_out.shutdown().await;
    };
    tokio::join!(to_daemon, to_client);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &str) -> Head {
        Head { raw: Vec::new(), method: method.into(), target: target.into(), status: 0, headers: Vec::new() }
    }

    #[test]
    fn creates_are_recognised_under_any_version_prefix() {
        assert_eq!(create_kind(&head("POST", "/v1.41/containers/create?name=x")), Some(Kind::Container));
        assert_eq!(create_kind(&head("POST", "/containers/create")), Some(Kind::Container));
        assert_eq!(create_kind(&head("POST", "/v1.47/networks/create")), Some(Kind::Network));
        assert_eq!(create_kind(&head("POST", "/volumes/create")), Some(Kind::Volume));
        assert_eq!(create_kind(&head("GET", "/containers/create")), None);
        assert_eq!(create_kind(&head("POST", "/v1.41/containers/abc/start")), None);
        assert!(may_hijack(&head("POST", "/v1.41/containers/abc/attach?stream=1")));
        assert!(may_hijack(&head("POST", "/exec/abc/start")));
        assert!(!may_hijack(&head("POST", "/containers/abc/start")));
    }

    #[test]
    fn owner_labels_join_the_harness_labels() {
        let labels = BTreeMap::from([("benchwarden.run".to_string(), "r1".to_string())]);
        let body = label_body(br#"{"Image":"x","Labels":{"mine":"yes"}}"#, &labels).unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["Labels"]["mine"], "yes");
        assert_eq!(value["Labels"]["benchwarden.run"], "r1");
        let body = label_body(br#"{"Image":"x","Labels":null}"#, &labels).unwrap();
        assert!(String::from_utf8(body).unwrap().contains("benchwarden.run"));
        assert!(label_body(b"{}", &labels).is_ok());
        assert!(label_body(b"", &labels).is_ok());
        assert!(label_body(b"not json", &labels).is_err());
        assert!(label_body(b"[1]", &labels).is_err());
    }

    #[test]
    fn ids_and_names_come_from_the_answer_and_the_request() {
        assert_eq!(created_id(Kind::Container, br#"{"Id":"abc","Warnings":[]}"#).as_deref(), Some("abc"));
        assert_eq!(created_id(Kind::Volume, br#"{"Name":"vol","Driver":"local"}"#).as_deref(), Some("vol"));
        assert_eq!(requested_name(Kind::Container, "/containers/create?name=web&platform=", b""), "web");
        assert_eq!(requested_name(Kind::Network, "/networks/create", br#"{"Name":"net"}"#), "net");
    }

    #[test]
    fn addresses_map_to_upstreams() {
        assert_eq!(
            Upstream::from_address("unix:///var/run/docker.sock"),
            Some(Upstream::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(Upstream::from_address("tcp://127.0.0.1:2375"), Some(Upstream::Tcp("127.0.0.1:2375".into())));
        assert_eq!(Upstream::from_address("ssh://host"), None);
    }
}
