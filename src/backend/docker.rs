//! The Docker backend: connects to the engine (at the `DOCKER_HOST` that
//! settings resolved), lists containers, networks and volumes, removes
//! them, and classifies every Engine API error once for the retry policy.
//! Reads (listings and inspects) are retried under the same policy as
//! removals: a listing cut short by a restarting daemon is asked again
//! rather than ending a cleanup.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
    StopContainerOptions,
};
use bollard::Docker;
use serde::Serialize;

use super::Remover;
use crate::errors::{error_chain, Error, ErrorClass, Service};
use crate::events::Events;
use crate::net::http::Buffered;
use crate::net::{BoxRead, BoxWrite, DockerEndpoint};
use crate::resource::{Kind, LabelSelector, ResourceRef};
use crate::retry::{Call, CallTimeout, Classify, RetryPolicy, Success};

/// The label docker compose puts on everything of a project.
pub(crate) const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";

/// bollard's bound on one request, in seconds; our retry policy bounds calls more tightly.
const CLIENT_TIMEOUT_SECONDS: u64 = 120;

/// A connected Docker engine.
#[derive(Clone)]
pub struct DockerBackend {
    client: Docker,
    endpoint: DockerEndpoint,
    reads: Reads,
}

/// How reads are retried, and where their retries are told.
#[derive(Clone)]
struct Reads {
    policy: RetryPolicy,
    events: Events,
}

/// A container as `list` shows it and the filters see it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Container {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) state: String,
    /// Unix seconds, from the list API's `Created`.
    pub(crate) created: i64,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) compose_project: Option<String>,
}

impl Container {
    pub(crate) fn resource(&self) -> ResourceRef {
        ResourceRef { kind: Kind::Container, id: self.id.clone(), name: self.name.clone() }
    }

    /// Not running: exited, dead, or created and never started.
    pub(crate) fn is_exited(&self) -> bool {
        matches!(self.state.as_str(), "exited" | "dead" | "created")
    }
}

/// A network or volume, with its labels.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LabelledResource {
    pub(crate) resource: ResourceRef,
    pub(crate) labels: BTreeMap<String, String>,
}

/// What a Docker call failed with, already sorted for the retry policy.
#[derive(Debug, Clone)]
pub struct DockerError {
    pub(crate) status: Option<u16>,
    pub(crate) message: String,
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{} (HTTP {status})", self.message.trim()),
            None => f.write_str(self.message.trim()),
        }
    }
}

impl std::error::Error for DockerError {}

impl DockerError {
    /// The error that ends a command when `operation` failed for good.
    pub(crate) fn during(self, operation: impl Into<String>) -> Error {
        Error::call(Service::Docker, operation, self.class(), self)
    }
}

impl From<bollard::errors::Error> for DockerError {
    fn from(error: bollard::errors::Error) -> Self {
        match error {
            bollard::errors::Error::DockerResponseServerError { status_code, message } => {
                DockerError { status: Some(status_code), message }
            }
            bollard::errors::Error::RequestTimeoutError => {
                DockerError { status: None, message: "request timed out".to_string() }
            }
            other => DockerError { status: None, message: error_chain(&other) },
        }
    }
}

impl Classify for DockerError {
    fn class(&self) -> ErrorClass {
        match self.status {
            // Removed already, by us or by someone else.
            Some(404) => ErrorClass::Done,
            // "removal of container … is already in progress", "volume is in use" while its
            // container goes: both settle by themselves.
            Some(409) => ErrorClass::Retryable { wait: None },
            Some(429) => ErrorClass::Retryable { wait: None },
            Some(status) if status >= 500 => ErrorClass::Retryable { wait: None },
            Some(_) => ErrorClass::Fatal,
            // No status: connection refused or reset, timeouts, broken streams.
            None => ErrorClass::Retryable { wait: None },
        }
    }
}

impl CallTimeout for DockerError {
    fn call_timed_out(after: Duration) -> Self {
        DockerError { status: None, message: format!("no answer within {}", humantime::format_duration(after)) }
    }
}

/// Which containers to list. Label selectors go to the daemon; the rest is
/// applied here so that the semantics do not depend on the engine version.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContainerQuery {
    pub(crate) labels: Vec<LabelSelector>,
    /// Include containers that are not running.
    pub(crate) all: bool,
}

impl DockerBackend {
    /// Connects to the daemon at `endpoint` (unix or tcp) and checks that it
    /// answers. An unreachable daemon is a usage-class error that names the
    /// address.
    pub async fn connect(endpoint: &DockerEndpoint) -> Result<Self, Error> {
        let address = endpoint.address.clone();
        let unreachable = |reason: String| Error::DockerUnreachable { address: address.clone(), reason };
        let pinged = tokio::time::timeout(Duration::from_secs(10), ping_api_version(endpoint))
            .await
            .map_err(|_| unreachable("no answer to HEAD /_ping within 10s".to_string()))?
            .map_err(unreachable)?;
        let client = match pinged {
            Some(version) => {
                let newest = bollard::API_DEFAULT_VERSION;
                let (major_version, minor_version) = version.min((newest.major_version, newest.minor_version));
                let version = bollard::ClientVersion { major_version, minor_version };
                let connected = match address.strip_prefix("unix://") {
                    Some(_) => Docker::connect_with_unix(&address, CLIENT_TIMEOUT_SECONDS, &version),
                    None => Docker::connect_with_http(&address, CLIENT_TIMEOUT_SECONDS, &version),
                };
                connected.map_err(|error| unreachable(error_chain(&error)))?
            }
            None => {
                let client = Docker::connect_with_host(&address).map_err(|error| unreachable(error_chain(&error)))?;
                tokio::time::timeout(Duration::from_secs(10), client.negotiate_version())
                    .await
                    .map_err(|_| unreachable("no answer within 10s".to_string()))?
                    .map_err(|error| unreachable(error_chain(&error)))?
            }
        };
        let reads = Reads { policy: RetryPolicy::default(), events: Events::discard() };
        Ok(DockerBackend { client, endpoint: endpoint.clone(), reads })
    }

    /// Retries reads under `policy`, telling each retry to `events`.
    pub fn retrying_reads(mut self, policy: RetryPolicy, events: Events) -> Self {
        self.reads = Reads { policy, events };
        self
    }

    /// Runs one read under the read policy. A 404 is an answer to reads, so
    /// `operation` turns it into a value; one that still arrives as an error
    /// is returned as it is.
    pub(crate) async fn read<T, F, Fut>(&self, what: &str, operation: F) -> Result<T, DockerError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DockerError>>,
    {
        let call = Call { what, service: Service::Docker, kind: None };
        match self.reads.policy.run(call, &self.reads.events, operation).await {
            Ok((Success::Done(value), _)) => Ok(value),
            Ok((Success::AlreadyDone, _)) => {
                Err(DockerError { status: Some(404), message: format!("{what}: not found") })
            }
            Err(failure) => Err(failure.error),
        }
    }

    pub(crate) fn endpoint(&self) -> &DockerEndpoint {
        &self.endpoint
    }

    pub(crate) fn client(&self) -> &Docker {
        &self.client
    }

    pub(crate) async fn list_containers(&self, query: &ContainerQuery) -> Result<Vec<Container>, DockerError> {
        let mut filters = HashMap::new();
        if !query.labels.is_empty() {
            filters.insert("label".to_string(), query.labels.iter().map(LabelSelector::to_filter).collect());
        }
        let options = ListContainersOptions { all: query.all, filters: Some(filters), ..Default::default() };
        let summaries = self
            .read("list containers", || async { Ok(self.client.list_containers(Some(options.clone())).await?) })
            .await?;
        Ok(summaries
            .into_iter()
            .filter_map(|summary| {
                let id = summary.id?;
                let labels: BTreeMap<String, String> = summary.labels.unwrap_or_default().into_iter().collect();
                let name = summary
                    .names
                    .and_then(|names| names.into_iter().next())
                    .map(|name| name.trim_start_matches('/').to_string())
                    .unwrap_or_default();
                Some(Container {
                    compose_project: labels.get(COMPOSE_PROJECT_LABEL).cloned(),
                    id,
                    name,
                    image: summary.image.unwrap_or_default(),
                    state: summary.state.map(|state| state.to_string()).unwrap_or_default(),
                    created: summary.created.unwrap_or_default(),
                    labels,
                })
            })
            .collect())
    }

    pub(crate) async fn list_networks(&self, labels: &[LabelSelector]) -> Result<Vec<LabelledResource>, DockerError> {
        let options = ListNetworksOptions { filters: Some(label_filters(labels)) };
        let networks = self
            .read("list networks", || async { Ok(self.client.list_networks(Some(options.clone())).await?) })
            .await?;
        Ok(networks
            .into_iter()
            .filter_map(|network| {
                let id = network.id?;
                Some(LabelledResource {
                    resource: ResourceRef { kind: Kind::Network, name: network.name.unwrap_or_default(), id },
                    labels: network.labels.unwrap_or_default().into_iter().collect(),
                })
            })
            .collect())
    }

    pub(crate) async fn list_volumes(&self, labels: &[LabelSelector]) -> Result<Vec<LabelledResource>, DockerError> {
        let options = ListVolumesOptions { filters: Some(label_filters(labels)) };
        let response =
            self.read("list volumes", || async { Ok(self.client.list_volumes(Some(options.clone())).await?) }).await?;
        Ok(response
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|volume| LabelledResource {
                resource: ResourceRef { kind: Kind::Volume, id: volume.name.clone(), name: volume.name },
                labels: volume.labels.into_iter().collect(),
            })
            .collect())
    }

    /// Whether the resource still exists. Used to verify teardown by listing.
    pub(crate) async fn exists(&self, resource: &ResourceRef) -> Result<bool, DockerError> {
        let client = &self.client;
        let found = self
            .read("inspect", || async {
                let result = match resource.kind {
                    Kind::Container => client.inspect_container(&resource.id, None).await.map(drop),
                    Kind::Network => client.inspect_network(&resource.id, None).await.map(drop),
                    Kind::Volume => client.inspect_volume(&resource.id).await.map(drop),
                    Kind::Sandbox => return Err(not_docker(resource)),
                };
                found_or_none(result)
            })
            .await?;
        Ok(found.is_some())
    }

    /// A container by id (or unique prefix) or name, with its full id and
    /// name; `None` when the engine has no such container.
    pub(crate) async fn find_container(&self, reference: &str) -> Result<Option<ResourceRef>, DockerError> {
        let inspected = self
            .read("inspect container", || async { found_or_none(self.client.inspect_container(reference, None).await) })
            .await?;
        Ok(inspected.map(|container| ResourceRef {
            kind: Kind::Container,
            id: container.id.unwrap_or_else(|| reference.to_string()),
            name: container.name.map(|name| name.trim_start_matches('/').to_string()).unwrap_or_default(),
        }))
    }

    /// The labels of a network or volume, by inspecting it; `None` once it is gone.
    pub(crate) async fn labels_of(
        &self,
        resource: &ResourceRef,
    ) -> Result<Option<BTreeMap<String, String>>, DockerError> {
        let client = &self.client;
        self.read("inspect", || async {
            let labels = match resource.kind {
                Kind::Network => {
                    client.inspect_network(&resource.id, None).await.map(|network| network.labels.unwrap_or_default())
                }
                Kind::Volume => client.inspect_volume(&resource.id).await.map(|volume| volume.labels),
                Kind::Container => {
                    let inspected = client.inspect_container(&resource.id, None).await;
                    inspected.map(|container| container.config.and_then(|config| config.labels).unwrap_or_default())
                }
                Kind::Sandbox => return Err(not_docker(resource)),
            };
            Ok(found_or_none(labels)?.map(|labels| labels.into_iter().collect()))
        })
        .await
    }

    pub fn remover(&self, stop_timeout: Option<Duration>) -> DockerRemover<'_> {
        DockerRemover { backend: self, stop_timeout }
    }
}

/// Removes containers (force, with anonymous volumes, optionally stopping
/// first), networks and volumes, one call per attempt.
pub struct DockerRemover<'a> {
    backend: &'a DockerBackend,
    stop_timeout: Option<Duration>,
}

impl Remover for DockerRemover<'_> {
    type Error = DockerError;

    async fn remove_once(&self, resource: &ResourceRef) -> Result<(), DockerError> {
        let client = &self.backend.client;
        match resource.kind {
            Kind::Container => {
                if let Some(timeout) = self.stop_timeout {
                    let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
                    let options = StopContainerOptions { t: Some(seconds), signal: None };
                    match client.stop_container(&resource.id, Some(options)).await.map_err(DockerError::from) {
                        // 304: already stopped.
                        Ok(()) | Err(DockerError { status: Some(304), .. }) => {}
                        Err(error) => return Err(error),
                    }
                }
                let options = RemoveContainerOptions { force: true, v: true, link: false };
                client.remove_container(&resource.id, Some(options)).await?;
            }
            Kind::Network => client.remove_network(&resource.id).await?,
            Kind::Volume => client.remove_volume(&resource.id, Some(RemoveVolumeOptions { force: false })).await?,
            Kind::Sandbox => return Err(not_docker(resource)),
        }
        Ok(())
    }
}

/// An inspect's answer, with "no such object" (404) as `None`.
fn found_or_none<T>(result: Result<T, bollard::errors::Error>) -> Result<Option<T>, DockerError> {
    match result.map_err(DockerError::from) {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.status == Some(404) => Ok(None),
        Err(error) => Err(error),
    }
}

/// A resource of another backend handed to this one: a bug, reported as a fatal error.
fn not_docker(resource: &ResourceRef) -> DockerError {
    DockerError { status: Some(400), message: format!("{resource} is not a Docker resource") }
}

fn label_filters(labels: &[LabelSelector]) -> HashMap<String, Vec<String>> {
    let mut filters = HashMap::new();
    if !labels.is_empty() {
        filters.insert("label".to_string(), labels.iter().map(LabelSelector::to_filter).collect());
    }
    filters
}

/// Asks `HEAD /_ping` over a plain connection and reads the daemon's
/// `Api-Version` (major, minor): well under a millisecond, where the client
/// library's own negotiation asks `GET /version`, which gathers system facts.
/// `Ok(None)` for an address this cannot speak to (ssh, TLS), left to the
/// client library; `Err` when nothing answers.
async fn ping_api_version(endpoint: &DockerEndpoint) -> Result<Option<(usize, usize)>, String> {
    use tokio::io::AsyncWriteExt;
    let Some(upstream) = endpoint.upstream() else {
        return Ok(None);
    };
    let (reader, mut writer): (BoxRead, BoxWrite) = upstream.connect().await.map_err(|error| error.to_string())?;
    writer
        .write_all(b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|error| error.to_string())?;
    let head = Buffered::new(reader).read_head(false).await.map_err(|error| error.to_string())?;
    if head.status != 200 {
        return Err(format!("HEAD /_ping answered {}", head.status));
    }
    let version = head.header("api-version").and_then(|value| {
        let text = std::str::from_utf8(value).ok()?;
        let (major, minor) = text.trim().split_once('.')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    });
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> DockerError {
        DockerError { status: Some(code), message: String::new() }
    }

    #[test]
    fn engine_errors_are_classified_once() {
        assert_eq!(status(404).class(), ErrorClass::Done);
        assert_eq!(status(409).class(), ErrorClass::Retryable { wait: None });
        assert_eq!(status(500).class(), ErrorClass::Retryable { wait: None });
        assert_eq!(status(503).class(), ErrorClass::Retryable { wait: None });
        assert_eq!(status(400).class(), ErrorClass::Fatal);
        assert_eq!(status(401).class(), ErrorClass::Fatal);
        assert_eq!(status(403).class(), ErrorClass::Fatal);
        let reset = DockerError::from(bollard::errors::Error::IOError {
            err: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        });
        assert_eq!(reset.class(), ErrorClass::Retryable { wait: None });
        assert_eq!(DockerError::call_timed_out(Duration::from_secs(1)).class(), ErrorClass::Retryable { wait: None });
    }
}
