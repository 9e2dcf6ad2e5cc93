//! Shared support for the integration tests, which run against the real
//! Docker engine of the machine (no mocks, no registry).
//!
//! - [`test_image`] makes sure the tiny image `benchwarden-test:busybox`
//!   exists: a static busybox and its applet links, imported through the
//!   Engine API once per test process (and safely when several test binaries
//!   import it at the same time).
//! - [`TestScope`] gives one test a unique id and a label
//!   (`benchwarden.test=<id>`) that everything it creates carries, helpers to
//!   create containers, networks and volumes, a listing of what is left, and
//!   a `Drop` that force-removes whatever is left, so tests never leak and
//!   never touch what other tests (or people) created.
//! - [`benchwarden_command`] and [`TestScope::cli`] run the real binary with
//!   its own state directory.
//!
//! Tests that need the engine panic with a clear message when it cannot be
//! reached; nothing here skips silently.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    RemoveContainerOptions, RemoveVolumeOptions, StartContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tempfile::TempDir;

/// The image every test container runs.
pub const TEST_IMAGE: &str = "benchwarden-test:busybox";
/// The label key that marks what one test created; the value is the scope id.
pub const SCOPE_LABEL: &str = "benchwarden.test";
/// The label docker compose puts on everything of a project.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
/// The static busybox the image is made of; `BENCHWARDEN_TEST_BUSYBOX` overrides.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// How long one CLI invocation may take before the test fails.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Engine connection and the test image
// ---------------------------------------------------------------------------

/// The address tests talk to, as bollard resolves it.
pub fn docker_address() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

/// Connects to the engine (honouring `DOCKER_HOST`) and negotiates the API
/// version. Panics with a clear message when the engine cannot be reached:
/// these tests need it and must not pass without it.
pub async fn connect() -> Docker {
    try_connect().await.unwrap_or_else(|reason| {
        panic!(
            "the integration tests need a running Docker engine, and none answers at {}: {reason}\n\
             start the daemon (or point DOCKER_HOST at one); these tests never skip",
            docker_address()
        )
    })
}

async fn try_connect() -> Result<Docker, String> {
    let docker = Docker::connect_with_defaults().map_err(|error| error.to_string())?;
    match tokio::time::timeout(Duration::from_secs(15), docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(error)) => Err(error_chain(&error)),
        Err(_) => Err("no answer within 15s".to_string()),
    }
}

/// Runs `make` (which builds a future) to completion on a fresh
/// current-thread runtime in a thread of its own, so it works from sync code
/// and from inside a test's runtime alike.
pub fn on_own_runtime<T, F, Fut>(make: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let worker = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a tokio runtime for test support")
            .block_on(make())
    });
    match worker.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Makes sure `benchwarden-test:busybox` exists and returns its name. The
/// image is imported at most once per test process; a lock file in Cargo's
/// target tmp dir keeps several test binaries from importing it at once.
pub fn test_image() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| on_own_runtime(ensure_test_image));
    TEST_IMAGE
}

async fn ensure_test_image() {
    let docker = connect().await;
    if docker.inspect_image(TEST_IMAGE).await.is_ok() {
        return;
    }
    let lock_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("benchwarden-test-image.lock");
    let lock_file = File::create(&lock_path).unwrap_or_else(|error| panic!("create {}: {error}", lock_path.display()));
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, errno)| panic!("lock {}: {errno}", lock_path.display()));
    // Another process may have imported it while we waited for the lock.
    if docker.inspect_image(TEST_IMAGE).await.is_ok() {
        return;
    }
    let busybox = busybox_path();
    let root_fs = rootfs_tar(&busybox);
    let (repo, tag) = TEST_IMAGE.split_once(':').expect("image name has a tag");
    let options = CreateImageOptions {
        from_src: Some("-".to_string()),
        repo: Some(repo.to_string()),
        tag: Some(tag.to_string()),
        changes: vec!["CMD [\"/bin/sh\"]".to_string()],
        ..Default::default()
    };
    let mut progress = docker.create_image(Some(options), Some(bollard::body_full(root_fs.into())), None);
    while let Some(message) = progress.next().await {
        if let Err(error) = message {
            panic!("import {TEST_IMAGE} from {} through the Engine API: {}", busybox.display(), error_chain(&error));
        }
    }
    docker
        .inspect_image(TEST_IMAGE)
        .await
        .unwrap_or_else(|error| panic!("{TEST_IMAGE} is missing right after its import: {}", error_chain(&error)));
}

pub fn busybox_path() -> PathBuf {
    std::env::var_os("BENCHWARDEN_TEST_BUSYBOX")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BUSYBOX))
}

/// The root file system of the test image, as an uncompressed tar: busybox
/// in /bin with one symlink per applet, and the usual empty directories.
pub fn rootfs_tar(busybox: &Path) -> Vec<u8> {
    let binary = std::fs::read(busybox).unwrap_or_else(|error| {
        panic!(
            "read {}: {error}\nthe test image is made of a static busybox; on Debian or Ubuntu: \
             apt-get install -y busybox-static (or set BENCHWARDEN_TEST_BUSYBOX)",
            busybox.display()
        )
    });
    if elf_is_dynamic(&binary) {
        panic!(
            "{} is dynamically linked, so it cannot run in an image with no libc; \
             install busybox-static (apt-get install -y busybox-static) or set \
             BENCHWARDEN_TEST_BUSYBOX to a static busybox",
            busybox.display()
        );
    }
    let mut builder = tar::Builder::new(Vec::new());
    let directory = |builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(mode);
        header.set_size(0);
        header.set_mtime(0);
        builder.append_data(&mut header, path, std::io::empty()).expect("append a directory to the image tar");
    };
    for path in ["bin", "etc", "root", "usr", "usr/bin", "var"] {
        directory(&mut builder, path, 0o755);
    }
    directory(&mut builder, "tmp", 0o1777);

    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o755);
    header.set_size(binary.len() as u64);
    header.set_mtime(0);
    builder.append_data(&mut header, "bin/busybox", binary.as_slice()).expect("append busybox to the image tar");

    for applet in busybox_applets(busybox) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        header.set_mtime(0);
        builder
            .append_link(&mut header, format!("bin/{applet}"), "busybox")
            .expect("append an applet link to the image tar");
    }
    builder.into_inner().expect("finish the image tar")
}

/// The applets this busybox has (`busybox --list`), or a basic set when it
/// cannot tell.
pub fn busybox_applets(busybox: &Path) -> Vec<String> {
    let listed = Command::new(busybox)
        .arg("--list")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    let mut applets: BTreeSet<String> = listed
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.contains('/') && *name != "busybox")
        .map(str::to_string)
        .collect();
    if applets.is_empty() {
        for name in [
            "sh", "sleep", "echo", "true", "false", "cat", "ls", "env", "kill", "ps", "rm", "mkdir", "touch", "test",
            "[", "wc", "grep", "sed", "head", "tail", "trap", "printf", "date", "id", "hostname", "uname", "wget",
            "nc",
        ] {
            applets.insert(name.to_string());
        }
    }
    applets.into_iter().collect()
}

/// Whether an ELF executable asks for a program interpreter (a dynamic
/// loader), i.e. whether it needs a libc in the image. Little-endian 32- and
/// 64-bit ELF are read; anything else is assumed static.
pub fn elf_is_dynamic(binary: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if binary.len() < 0x40 || &binary[..4] != b"\x7fELF" || binary[5] != 1 {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([binary[at], binary[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(binary[at..at + 4].try_into().unwrap());
    let (phoff, phentsize, phnum) = match binary[4] {
        1 => (u32_at(0x1c) as usize, u16_at(0x2a), u16_at(0x2c)),
        2 => {
            let phoff = u64::from_le_bytes(binary[0x20..0x28].try_into().unwrap()) as usize;
            (phoff, u16_at(0x36), u16_at(0x38))
        }
        _ => return false,
    };
    (0..phnum)
        .map(|index| phoff + index * phentsize)
        .take_while(|at| at + 4 <= binary.len())
        .any(|at| u32_at(at) == PT_INTERP)
}

/// An error and its causes on one line: the crate's own formatting.
pub use benchwarden::backend::docker::error_chain;

// ---------------------------------------------------------------------------
// The benchwarden binary
// ---------------------------------------------------------------------------

/// The `benchwarden` binary with `--state-dir` set to a fresh directory
/// under Cargo's target tmp dir (so runs never touch the user's ledger), and
/// `NO_COLOR=1`. Add the subcommand and its arguments.
pub fn benchwarden_command() -> Command {
    let state_dir = tempfile::Builder::new()
        .prefix("state-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a state directory for benchwarden")
        .keep();
    benchwarden_command_in(&state_dir)
}

/// The `benchwarden` binary with `--state-dir DIR` and `NO_COLOR=1`.
pub fn benchwarden_command_in(state_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_benchwarden"));
    command
        .arg("--state-dir")
        .arg(state_dir)
        .env("NO_COLOR", "1")
        .env_remove("BENCHWARDEN_STATE_DIR")
        .stdin(Stdio::null());
    command
}

/// What one CLI invocation did.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// The exit code; panics (showing the output) when killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| panic!("benchwarden was killed by a signal\n{self}"))
    }

    /// Panics, showing stdout and stderr, unless the exit code is `expected`.
    #[track_caller]
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(self.status.code(), Some(expected), "unexpected exit status\n{self}");
        self
    }

    /// stdout parsed as one JSON value; panics, showing the output, otherwise.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not one JSON value: {error}\n{self}"))
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs a prepared command to completion (with a time limit) without blocking
/// the test's runtime.
pub async fn run_cli(command: Command) -> CliOutput {
    let description = format!("{command:?}");
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let output = tokio::time::timeout(CLI_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{description} took longer than {CLI_TIMEOUT:?}"))
        .unwrap_or_else(|error| panic!("start {description}: {error}"));
    CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Collects a spawned child (see [`TestScope::cli_spawn`]).
pub async fn wait_cli(child: tokio::process::Child) -> CliOutput {
    let output = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("benchwarden took longer than {CLI_TIMEOUT:?}"))
        .expect("wait for benchwarden");
    CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the docker CLI (for doing things "behind benchwarden's back");
/// panics with its output when it fails.
pub fn docker_cli(args: &[&str]) -> String {
    let output =
        Command::new("docker").args(args).output().unwrap_or_else(|error| panic!("run docker {args:?}: {error}"));
    assert!(output.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// Test scopes
// ---------------------------------------------------------------------------

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
pub async fn remove_labelled(docker: &Docker, selectors: &[String]) -> Vec<String> {
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

/// A running `benchwarden` whose stderr is read line by line, so a test
/// can wait for what it says (its log lines, and with `-j 1` the harness's
/// echoed output).
pub struct Running {
    pub child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: String,
}

impl Running {
    pub fn start(command: std::process::Command) -> Self {
        let mut command = tokio::process::Command::from(command);
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().expect("start benchwarden");
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = sender.send(line);
            }
        });
        Running { child, lines, seen: String::new() }
    }

    /// Waits until a line of stderr contains `text`; returns that line.
    pub async fn wait_for(&mut self, text: &str) -> String {
        let found = tokio::time::timeout(Duration::from_secs(90), async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push_str(&line);
                self.seen.push('\n');
                if line.contains(text) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("benchwarden never said {text:?}:\n{}", self.seen),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("benchwarden is running")
    }

    pub fn send(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    pub async fn finish(mut self) -> CliOutput {
        let mut output = wait_cli(self.child).await;
        while let Some(line) = self.lines.recv().await {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        output.stderr = self.seen + &output.stderr;
        output
    }
}

/// The Python of the tests' virtualenv (`target/py-venv`, or
/// `BENCHWARDEN_PY_VENV`), which `scripts/test.sh` creates with docker-py and
/// the official Daytona SDK. Panics, never skips, when `module` cannot be
/// imported there.
pub fn venv_python(module: &str) -> PathBuf {
    let venv = std::env::var_os("BENCHWARDEN_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-venv"));
    let python = venv.join("bin/python");
    let works = Command::new(&python).args(["-c", &format!("import {module}")]).output();
    if !works.is_ok_and(|output| output.status.success()) {
        panic!(
            "{} cannot import {module}: run scripts/test.sh, which creates the virtualenv \
             (python3 -m venv target/py-venv && target/py-venv/bin/pip install daytona docker); these tests never skip",
            python.display()
        );
    }
    python
}
