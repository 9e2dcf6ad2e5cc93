//! The per-task Docker Engine API proxy. A task's Docker clients reach the
//! daemon through a Unix socket of ours (`DOCKER_HOST` in the harness's
//! environment). Create calls for containers, networks and volumes (under
//! any `/v1.xx` prefix) get the task's owner labels added, and the new id is
//! committed to the ledger before the response reaches the client. Builds
//! get the owner labels too (their `labels` parameter), and the images
//! builds, pulls and imports make are recorded before their answer ends
//! (see [`super::images`]).
//! Everything else passes through byte for byte (see [`super::proxy`]),
//! including hijacked connections: `Upgrade: tcp` answered 101, the older
//! plain-200 hijack of attach and exec, BuildKit's `/session` and `/grpc`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tokio::net::UnixListener;
use tokio_util::task::TaskTracker;

use super::images::ImageCall;
use super::proxy::{finish_creates, label_create_body, spawn_server, Policy, Recorder};
use super::sockets::{private_directory, SOCKET_NAME};
use crate::net::http::Head;
use crate::net::{BoxRead, BoxWrite, Upstream};
use crate::resource::Kind;

/// How the tasks' Docker proxies are set up.
#[derive(Debug, Clone)]
pub(crate) struct DockerProxySettings {
    /// Where the daemon is.
    pub(crate) upstream: Upstream,
    /// Each task gets a private directory with its socket under the first
    /// of these where the path fits (see [`super::sockets`]).
    pub(crate) socket_roots: [PathBuf; 2],
    /// The run, whose id names the directories.
    pub(crate) run_id: String,
}

/// The Docker side of the proxy: which calls create, how to label them.
pub(crate) struct DockerPolicy {
    pub(crate) labels: BTreeMap<String, String>,
}

impl Policy for DockerPolicy {
    fn create_kind(&self, head: &Head) -> Option<Kind> {
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

    fn rewrite_create_body(&self, _kind: Kind, body: &[u8]) -> Result<Vec<u8>, String> {
        label_body(body, &self.labels)
    }

    fn created(&self, kind: Kind, target: &str, request_body: &[u8], answer: &[u8]) -> Option<(String, String)> {
        Some((created_id(kind, answer)?, requested_name(kind, target, request_body)))
    }

    fn may_hijack(&self, head: &Head) -> bool {
        may_hijack(head)
    }

    fn image_call(&self, head: &Head) -> Option<ImageCall> {
        ImageCall::of(&head.method, unversioned_path(&head.target), &head.target, &image_labels(&self.labels))
    }
}

/// A running proxy for one task. Dropping it stops it; [`DockerProxy::stop`]
/// also removes its directory.
pub(crate) struct DockerProxy {
    socket: PathBuf,
    directory: PathBuf,
    server: tokio::task::JoinHandle<()>,
    creates: TaskTracker,
    task: String,
}

impl DockerProxy {
    /// Binds a socket in a fresh private directory (0700, socket 0600) of
    /// `run_id` under `roots` and starts serving.
    pub(crate) async fn start(
        roots: &[PathBuf; 2],
        run_id: &str,
        upstream: Upstream,
        policy: DockerPolicy,
        recorder: Recorder,
    ) -> std::io::Result<Self> {
        let directory = private_directory(roots, run_id)?;
        let socket = directory.join(SOCKET_NAME);
        let listener = UnixListener::bind(&socket)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
        let listener = Arc::new(listener);
        let accept = move || {
            let listener = Arc::clone(&listener);
            async move {
                let (client, _) = listener.accept().await?;
                let (read, write) = client.into_split();
                Ok((Box::new(read) as BoxRead, Box::new(write) as BoxWrite))
            }
        };
        let (creates, task) = (recorder.creates.clone(), recorder.task_id.clone());
        let server = spawn_server(accept, upstream, policy, recorder);
        Ok(DockerProxy { socket, directory, server, creates, task })
    }

    /// A proxy for one task, labelling what it creates with `labels`.
    pub(crate) async fn start_for_task(
        settings: &DockerProxySettings,
        labels: BTreeMap<String, String>,
        recorder: Recorder,
    ) -> std::io::Result<Self> {
        let policy = DockerPolicy { labels };
        Self::start(&settings.socket_roots, &settings.run_id, settings.upstream.clone(), policy, recorder).await
    }

    /// The value for the harness's `DOCKER_HOST`.
    pub(crate) fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Stops serving once the creates in flight have their answers recorded
    /// (see [`finish_creates`]), closes every connection, removes the socket
    /// and its directory.
    pub(crate) async fn stop(self) {
        finish_creates(&self.creates, &self.task).await;
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.server.abort();
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

/// The owner labels as a build stamps them on its image: `benchwarden.run`
/// becomes `benchwarden.image.run`, and so on. Not the owner labels
/// themselves, because a container inherits its image's labels: every
/// container made from the image, by anyone, would look owned by the run
/// that built it, and be torn down with it.
pub(crate) fn image_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().map(|(key, value)| (key.replacen("benchwarden.", "benchwarden.image.", 1), value.clone())).collect()
}

/// Adds the owner labels to a create body. `Err` when it is not a JSON object.
pub(crate) fn label_body(body: &[u8], labels: &BTreeMap<String, String>) -> Result<Vec<u8>, String> {
    label_create_body(body, "Labels", labels, |_| {})
}

/// The id a successful create answered with (volumes answer with a name).
fn created_id(kind: Kind, body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let key = if kind == Kind::Volume { "Name" } else { "Id" };
    value.get(key)?.as_str().map(str::to_string)
}

/// The name asked for in a create call, for the ledger.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &str) -> Head {
        Head { raw: Vec::new(), method: method.into(), target: target.into(), status: 0, headers: Vec::new() }
    }

    #[test]
    fn creates_are_recognised_under_any_version_prefix() {
        assert_eq!(
            DockerPolicy { labels: BTreeMap::new() }.create_kind(&head("POST", "/v1.41/containers/create?name=x")),
            Some(Kind::Container)
        );
        assert_eq!(
            DockerPolicy { labels: BTreeMap::new() }.create_kind(&head("POST", "/containers/create")),
            Some(Kind::Container)
        );
        assert_eq!(
            DockerPolicy { labels: BTreeMap::new() }.create_kind(&head("POST", "/v1.47/networks/create")),
            Some(Kind::Network)
        );
        assert_eq!(
            DockerPolicy { labels: BTreeMap::new() }.create_kind(&head("POST", "/volumes/create")),
            Some(Kind::Volume)
        );
        assert_eq!(DockerPolicy { labels: BTreeMap::new() }.create_kind(&head("GET", "/containers/create")), None);
        assert_eq!(
            DockerPolicy { labels: BTreeMap::new() }.create_kind(&head("POST", "/v1.41/containers/abc/start")),
            None
        );
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
}
