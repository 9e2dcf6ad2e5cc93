//! Test scopes: [`TestScope`] gives one test a unique id and a label
//! (`benchwarden.test=<id>`) that everything it creates carries, helpers to
//! create containers, networks and volumes, a listing of what is left
//! ([`Leftovers`]), and a `Drop` that force-removes whatever is left, so
//! tests never leak and never touch what other tests (or people) created.
//! [`TestScope::cli`] runs the real binary with the scope's own state
//! directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions, RemoveContainerOptions,
    RemoveVolumeOptions, StartContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tempfile::TempDir;

use super::cli::{benchwarden_command_in, run_cli, CliOutput};
use super::image::{connect, error_chain, on_own_runtime, test_image, try_connect};

/// The label key that marks what one test created; the value is the scope id.
pub const SCOPE_LABEL: &str = "benchwarden.test";
/// The label docker compose puts on everything of a project.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// What a container should be and do.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub labels: BTreeMap<String, String>,
    pub cmd: Vec<String>,
    /// A network to attach to (its name or id).
    pub network: Option<String>,
    /// `volume:/path` binds.
    pub binds: Vec<String>,
    pub start: bool,
    /// Wait until the started container has stopped again.
    pub wait_exit: bool,
}

impl ContainerSpec {
    /// Runs `sleep 3600`: a running container until someone removes it.
    pub fn sleeping() -> Self {
        ContainerSpec::command(&["sleep", "3600"])
    }

    /// Runs `true` and has exited by the time `container` returns.
    pub fn exited() -> Self {
        ContainerSpec { wait_exit: true, ..ContainerSpec::command(&["true"]) }
    }

    /// Created and never started (state `created`).
    pub fn created() -> Self {
        ContainerSpec { start: false, ..ContainerSpec::sleeping() }
    }

    /// Starts `cmd` and returns at once.
    pub fn command(cmd: &[&str]) -> Self {
        ContainerSpec {
            labels: BTreeMap::new(),
            cmd: cmd.iter().map(|part| part.to_string()).collect(),
            network: None,
            binds: Vec::new(),
            start: true,
            wait_exit: false,
        }
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn labels(mut self, labels: &[(&str, &str)]) -> Self {
        for (key, value) in labels {
            self.labels.insert(key.to_string(), value.to_string());
        }
        self
    }

    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = Some(network.into());
        self
    }

    /// Mounts the named volume at `path`.
    pub fn volume(mut self, volume: &str, path: &str) -> Self {
        self.binds.push(format!("{volume}:{path}"));
        self
    }
}

/// A container that is still there.
#[derive(Debug, Clone)]
pub struct LeftContainer {
    pub id: String,
    pub name: String,
    pub state: String,
    pub labels: BTreeMap<String, String>,
}

/// What a scope's label (or compose project) still finds.
#[derive(Debug, Clone, Default)]
pub struct Leftovers {
    pub containers: Vec<LeftContainer>,
    /// Network names.
    pub networks: BTreeSet<String>,
    /// Volume names.
    pub volumes: BTreeSet<String>,
}

impl Leftovers {
    pub fn container_ids(&self) -> BTreeSet<String> {
        self.containers.iter().map(|c| c.id.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.networks.is_empty() && self.volumes.is_empty()
    }
}

/// One test's corner of the engine: a unique id, the label
/// `benchwarden.test=<id>` on everything it creates, a compose project name
/// of its own, a state directory, and cleanup on drop.
pub struct TestScope {
    id: String,
    docker: Docker,
    state_dir: TempDir,
    counter: AtomicUsize,
}

impl TestScope {
    /// A new scope; `name` (letters, digits, `-`) makes ids readable in
    /// `docker ps`. Connects to the engine (panicking when it cannot) and
    /// makes sure the test image exists.
    pub async fn new(name: &str) -> Self {
        static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.subsec_nanos()).unwrap_or(0);
        let name: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let id = format!(
            "{name}-{}-{}-{:05x}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::SeqCst),
            nanos & 0xfffff
        );
        test_image();
        let docker = connect().await;
        let state_dir = tempfile::Builder::new()
            .prefix("state-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("create a state directory for benchwarden");
        TestScope { id, docker, state_dir, counter: AtomicUsize::new(0) }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// `benchwarden.test=<id>`, as `--label` and the Docker API's filter take it.
    pub fn label_arg(&self) -> String {
        format!("{SCOPE_LABEL}={}", self.id)
    }

    /// This scope's compose project name (unique; lowercase, as compose wants).
    pub fn project(&self) -> String {
        format!("bwtest-{}", self.id)
    }

    /// `com.docker.compose.project=<project>`.
    pub fn project_label_arg(&self) -> String {
        format!("{COMPOSE_PROJECT}={}", self.project())
    }

    /// A unique name for something this scope creates.
    pub fn unique_name(&self, what: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        format!("bwtest-{}-{what}{n}", self.id)
    }

    /// Creates (and, as the spec says, starts) a container with this scope's
    /// label; returns its full id.
    pub async fn container(&self, spec: ContainerSpec) -> String {
        let mut labels: HashMap<String, String> = spec.labels.into_iter().collect();
        labels.insert(SCOPE_LABEL.to_string(), self.id.clone());
        let body = ContainerCreateBody {
            image: Some(test_image().to_string()),
            cmd: Some(spec.cmd),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: spec.network,
                binds: (!spec.binds.is_empty()).then_some(spec.binds),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(self.unique_name("c")), ..Default::default() };
        let id = self
            .docker
            .create_container(Some(options), body)
            .await
            .unwrap_or_else(|error| panic!("create a container: {}", error_chain(&error)))
            .id;
        if spec.start {
            self.docker
                .start_container(&id, None::<StartContainerOptions>)
                .await
                .unwrap_or_else(|error| panic!("start container {id}: {}", error_chain(&error)));
        }
        if spec.start && spec.wait_exit {
            let mut wait = self.docker.wait_container(&id, None::<WaitContainerOptions>);
            // An exit code other than 0 comes back as an error; either way it has stopped.
            let _ = wait.next().await;
        }
        id
    }

    /// A running container with this scope's label and `labels`.
    pub async fn running(&self, labels: &[(&str, &str)]) -> String {
        self.container(ContainerSpec::sleeping().labels(labels)).await
    }

    /// An exited container with this scope's label and `labels`.
    pub async fn exited(&self, labels: &[(&str, &str)]) -> String {
        self.container(ContainerSpec::exited().labels(labels)).await
    }

    /// A bridge network named uniquely, labelled with this scope's label and `labels`.
    pub async fn network(&self, labels: &[(&str, &str)]) -> String {
        let mut all: HashMap<String, String> = pairs(labels);
        all.insert(SCOPE_LABEL.to_string(), self.id.clone());
        self.create_network(all).await
    }

    /// A network the way compose makes one: labelled with this scope's
    /// project (and network name) only, not with the scope label.
    pub async fn project_network(&self, network: &str) -> String {
        let labels = HashMap::from([
            (COMPOSE_PROJECT.to_string(), self.project()),
            ("com.docker.compose.network".to_string(), network.to_string()),
        ]);
        self.create_network(labels).await
    }

    async fn create_network(&self, labels: HashMap<String, String>) -> String {
        let name = self.unique_name("net");
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".to_string()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|error| panic!("create network {name}: {}", error_chain(&error)));
        name
    }

    /// A named volume labelled with this scope's label and `labels`.
    pub async fn volume(&self, labels: &[(&str, &str)]) -> String {
        let mut all = pairs(labels);
        all.insert(SCOPE_LABEL.to_string(), self.id.clone());
        self.create_volume(all).await
    }

    /// A named volume the way compose makes one: labelled with this scope's
    /// project (and volume name) only.
    pub async fn project_volume(&self, volume: &str) -> String {
        let labels = HashMap::from([
            (COMPOSE_PROJECT.to_string(), self.project()),
            ("com.docker.compose.volume".to_string(), volume.to_string()),
        ]);
        self.create_volume(labels).await
    }

    async fn create_volume(&self, labels: HashMap<String, String>) -> String {
        let name = self.unique_name("vol");
        self.docker
            .create_volume(VolumeCreateRequest { name: Some(name.clone()), labels: Some(labels), ..Default::default() })
            .await
            .unwrap_or_else(|error| panic!("create volume {name}: {}", error_chain(&error)));
        name
    }

    /// Everything that still carries this scope's label or its compose
    /// project label: containers in any state, networks, volumes.
    pub async fn leftovers(&self) -> Leftovers {
        leftovers(&self.docker, &self.selectors())
            .await
            .unwrap_or_else(|error| panic!("list what scope {} left: {error}", self.id))
    }

    fn selectors(&self) -> Vec<String> {
        vec![self.label_arg(), self.project_label_arg()]
    }

    /// The `benchwarden` binary with this scope's state directory.
    pub fn benchwarden(&self) -> Command {
        benchwarden_command_in(self.state_dir())
    }

    /// Runs `benchwarden ARGS` with this scope's state directory.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let mut command = self.benchwarden();
        command.args(args);
        run_cli(command).await
    }

    /// Starts `benchwarden ARGS` with piped output; collect it with [`wait_cli`].
    pub fn cli_spawn(&self, args: &[&str]) -> tokio::process::Child {
        let mut command = tokio::process::Command::from(self.benchwarden());
        command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        command.spawn().expect("start benchwarden")
    }
}

impl Drop for TestScope {
    /// Force-removes whatever still carries the scope's label or project,
    /// best effort: a failure is printed, never raised.
    fn drop(&mut self) {
        let selectors = self.selectors();
        let id = self.id.clone();
        let result = std::panic::catch_unwind(|| {
            on_own_runtime(move || async move {
                let Ok(docker) = try_connect().await else {
                    return vec!["engine unreachable".to_string()];
                };
                remove_labelled(&docker, &selectors).await
            })
        });
        match result {
            Ok(errors) if errors.is_empty() => {}
            Ok(errors) => eprintln!("cleanup of test scope {id}: {}", errors.join("; ")),
            Err(_) => eprintln!("cleanup of test scope {id} panicked"),
        }
    }
}

fn pairs(labels: &[(&str, &str)]) -> HashMap<String, String> {
    labels.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
}

fn label_filter(selector: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![selector.to_string()])])
}

/// Containers (any state), networks and volumes that match any of the label
/// `selectors` (each `K=V`).
pub async fn leftovers(docker: &Docker, selectors: &[String]) -> Result<Leftovers, String> {
    let mut found = Leftovers::default();
    let mut seen = BTreeSet::new();
    for selector in selectors {
        let containers = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filter(selector)),
                ..Default::default()
            }))
            .await
            .map_err(|error| error_chain(&error))?;
        for summary in containers {
            let Some(id) = summary.id else { continue };
            if !seen.insert(id.clone()) {
                continue;
            }
            found.containers.push(LeftContainer {
                id,
                name: summary
                    .names
                    .and_then(|names| names.into_iter().next())
                    .map(|name| name.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                state: summary.state.map(|state| state.to_string()).unwrap_or_default(),
                labels: summary.labels.unwrap_or_default().into_iter().collect(),
            });
        }
        let networks = docker
            .list_networks(Some(ListNetworksOptions { filters: Some(label_filter(selector)) }))
            .await
            .map_err(|error| error_chain(&error))?;
        found.networks.extend(networks.into_iter().filter_map(|network| network.name));
        let volumes = docker
            .list_volumes(Some(ListVolumesOptions { filters: Some(label_filter(selector)) }))
            .await
            .map_err(|error| error_chain(&error))?;
        found.volumes.extend(volumes.volumes.unwrap_or_default().into_iter().map(|volume| volume.name));
    }
    Ok(found)
}

/// Force-removes everything matching any of `selectors`: containers (with
/// their anonymous volumes), then networks, then volumes. Returns the errors.
async fn remove_labelled(docker: &Docker, selectors: &[String]) -> Vec<String> {
    let found = match leftovers(docker, selectors).await {
        Ok(found) => found,
        Err(error) => return vec![format!("list: {error}")],
    };
    let mut errors = Vec::new();
    let gone = |error: &bollard::errors::Error| {
        matches!(error, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
    };
    for container in &found.containers {
        let options = RemoveContainerOptions { force: true, v: true, link: false };
        if let Err(error) = docker.remove_container(&container.id, Some(options)).await {
            if !gone(&error) {
                errors.push(format!("container {}: {}", container.name, error_chain(&error)));
            }
        }
    }
    for network in &found.networks {
        if let Err(error) = docker.remove_network(network).await {
            if !gone(&error) {
                errors.push(format!("network {network}: {}", error_chain(&error)));
            }
        }
    }
    for volume in &found.volumes {
        let options = RemoveVolumeOptions { force: true };
        if let Err(error) = docker.remove_volume(volume, Some(options)).await {
            if !gone(&error) {
                errors.push(format!("volume {volume}: {}", error_chain(&error)));
            }
        }
    }
    errors
}
