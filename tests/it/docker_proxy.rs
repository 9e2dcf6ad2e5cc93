//! The per-task Docker Engine API proxy with real clients against the real
//! engine: each test runs `benchwarden run` with a fixture harness (a shell
//! script) whose `docker`, `docker-compose` or docker-py client reaches the
//! daemon only through the task's proxy (`DOCKER_HOST`). No selectors are
//! configured, so whatever teardown finds, the proxy recorded. Each test
//! checks what the harness itself saw (its output) and ends by listing:
//! nothing with the test's label, compose project or run id is left.
//!
//! Harnesses talk to the test through named pipes in the fixture directory:
//! `say` writes a line to `out.fifo`, which the test reads as it comes, and
//! `await_gate` blocks until the test opens the task's gate. So the tests
//! wait for events, never for a guessed time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;

use crate::common::{self, CliOutput, Leftovers, TestScope, SCOPE_LABEL};

/// The virtualenv with docker-py that `scripts/test.sh` creates.
/// How long a test waits for one event (a harness line, a teardown).
const EVENT_TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------
// Fixture harnesses
// ---------------------------------------------------------------------------

/// A benchmark file, its harness script and the pipes between harness and test.
struct Fixture {
    dir: PathBuf,
    benchmark: PathBuf,
}

/// Writes `harness.sh` (a `case "$1"` over `tasks`) and `benchmark.yaml`
/// running one harness per task, with no selectors: only the proxy tracks.
/// The script has `set -eu`, and defines `IMG`, `SCOPE` (this test's
/// `--label` argument), `DIR` (the fixture directory), `say` and `await_gate`.
fn fixture(scope: &TestScope, tasks: &[(&str, &str)]) -> Fixture {
    let dir = scope.state_dir().join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    let mut script = format!(
        "#!/bin/sh\n\
         set -eu\n\
         IMG='{image}'\n\
         SCOPE='{SCOPE_LABEL}={id}'\n\
         DIR='{dir}'\n\
         say() {{ printf '%s\\n' \"$BENCHWARDEN_TASK_ID $BENCHWARDEN_RUN_ID $*\" > \"$DIR/out.fifo\"; }}\n\
         await_gate() {{ read -r _ < \"$DIR/gate.$BENCHWARDEN_TASK_ID\"; }}\n\
         case \"$1\" in\n",
        image = common::test_image(),
        id = scope.id(),
        dir = dir.display(),
    );
    for (name, body) in tasks {
        script.push_str(&format!("  {name})\n{body}\n    ;;\n"));
    }
    script.push_str("  *) echo \"unknown task $1\" >&2; exit 2 ;;\nesac\n");
    std::fs::write(dir.join("harness.sh"), script).unwrap();
    mkfifo(&dir.join("out.fifo"));
    for (name, _) in tasks {
        mkfifo(&dir.join(format!("gate.{name}")));
    }
    let names: Vec<&str> = tasks.iter().map(|(name, _)| *name).collect();
    let yaml = format!(
        "name: proxy-fixture\n\
         harness:\n  command: [sh, harness.sh, \"{{task}}\"]\n  cwd: .\n\
         tasks: [{}]\n",
        names.join(", ")
    );
    let benchmark = dir.join("benchmark.yaml");
    std::fs::write(&benchmark, yaml).unwrap();
    Fixture { dir, benchmark }
}

impl Fixture {
    fn path(&self) -> &str {
        self.benchmark.to_str().unwrap()
    }
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap_or_else(|error| panic!("mkfifo {}: {error}", path.display()));
}

/// One line a harness said: `<task> <run id> <message>`.
#[derive(Debug, Clone)]
struct Said {
    task: String,
    run: String,
    message: String,
}

/// The test's ends of a fixture's pipes. Both are opened read-write, which
/// Linux allows for a FIFO: opening never blocks, the reader never sees end
/// of file between two writers, and a gate's line waits in the pipe until
/// the harness reads it.
struct Pipes {
    lines: tokio::io::Lines<BufReader<pipe::Receiver>>,
    gates: Vec<pipe::Sender>,
    dir: PathBuf,
    heard: Vec<String>,
}

impl Pipes {
    fn open(fixture: &Fixture) -> Self {
        let receiver = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(fixture.dir.join("out.fifo"))
            .expect("open the harness output pipe");
        Pipes {
            lines: BufReader::new(receiver).lines(),
            gates: Vec::new(),
            dir: fixture.dir.clone(),
            heard: Vec::new(),
        }
    }

    /// The next line any harness says.
    async fn next(&mut self, run: &Spawned) -> Said {
        let line = tokio::time::timeout(EVENT_TIMEOUT, self.lines.next_line()).await;
        let line = match line {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "no line from the harness within {EVENT_TIMEOUT:?} ({other:?}); heard so far:\n{}\n\
                 --- benchwarden stderr so far ---\n{}",
                self.heard.join("\n"),
                run.stderr_so_far()
            ),
        };
        self.heard.push(line.clone());
        let mut parts = line.splitn(3, ' ');
        let task = parts.next().unwrap_or_default().to_string();
        let run_id = parts.next().unwrap_or_default().to_string();
        Said { task, run: run_id, message: parts.next().unwrap_or_default().to_string() }
    }

    /// Reads lines until one satisfies `wanted`; returns every line read, that one last.
    async fn until(&mut self, run: &Spawned, wanted: impl Fn(&Said) -> bool) -> Vec<Said> {
        let mut read = Vec::new();
        loop {
            let said = self.next(run).await;
            let done = wanted(&said);
            read.push(said);
            if done {
                return read;
            }
        }
    }

    /// Lets `task`'s harness past its `await_gate`.
    async fn open_gate(&mut self, task: &str) {
        let mut sender = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(self.dir.join(format!("gate.{task}")))
            .expect("open a gate pipe");
        sender.write_all(b"go\n").await.expect("write to a gate pipe");
        // Kept open: the line stays in the pipe until the harness has read it.
        self.gates.push(sender);
    }
}

/// A `benchwarden` started in the background whose stdout and stderr are
/// read to the end as they come (so it never blocks on a full pipe).
struct Spawned {
    child: tokio::process::Child,
    stdout: tokio::task::JoinHandle<String>,
    stderr: Arc<Mutex<String>>,
    stderr_done: tokio::task::JoinHandle<()>,
}

impl Spawned {
    fn start(scope: &TestScope, args: &[&str]) -> Self {
        let mut command = tokio::process::Command::from(scope.benchwarden());
        command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().expect("start benchwarden");
        let mut out = child.stdout.take().unwrap();
        let stdout = tokio::spawn(async move {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text).await;
            text
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = Arc::clone(&stderr);
        let stderr_done = tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Spawned { child, stdout, stderr, stderr_done }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("benchwarden is still running")
    }

    fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    async fn finish(mut self) -> CliOutput {
        let status = tokio::time::timeout(EVENT_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("benchwarden did not finish in time\n{}", self.stderr_so_far()))
            .expect("wait for benchwarden");
        let stdout = self.stdout.await.unwrap();
        self.stderr_done.await.unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        CliOutput { status, stdout, stderr }
    }

    /// SIGKILL, then waits for it to be gone.
    async fn kill9(mut self) -> CliOutput {
        self.child.start_kill().expect("SIGKILL benchwarden");
        self.finish().await
    }
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// The run's JSON report, found by the `report: PATH` line.
fn report(output: &CliOutput) -> serde_json::Value {
    let path = output
        .stderr
        .lines()
        .find_map(|line| line.strip_prefix("report: "))
        .unwrap_or_else(|| panic!("no report path in the output\n{output}"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn task_report<'a>(report: &'a serde_json::Value, task: &str) -> &'a serde_json::Value {
    report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["task"] == task)
        .unwrap_or_else(|| panic!("no task {task} in the report: {report}"))
}

/// The lines the harness printed that start with `prefix` (with -j 1 they
/// are echoed to benchwarden's stderr), without the prefix.
fn printed(output: &CliOutput, prefix: &str) -> Vec<String> {
    output.stderr.lines().filter_map(|line| line.strip_prefix(prefix)).map(|rest| rest.trim().to_string()).collect()
}

/// What carries `benchwarden.run=<run_id>`: the run's own owner label.
async fn run_leftovers(scope: &TestScope, run_id: &str) -> Leftovers {
    common::leftovers(scope.docker(), &[format!("benchwarden.run={run_id}")]).await.unwrap()
}

#[track_caller]
fn assert_nothing_left(left: &Leftovers, context: &CliOutput) {
    assert!(left.is_empty(), "resources left: {left:?}\n{context}");
}

/// The `DOCKER_HOST` a harness saw must be a socket of this run's state dir.
#[track_caller]
fn assert_proxy_socket(scope: &TestScope, docker_host: &str) -> PathBuf {
    let socket = docker_host
        .strip_prefix("unix://")
        .unwrap_or_else(|| panic!("the harness's DOCKER_HOST is not a unix socket: {docker_host:?}"));
    let socket = PathBuf::from(socket);
    assert!(
        socket.starts_with(scope.state_dir().join("sockets")) && socket.ends_with("docker.sock"),
        "the harness's DOCKER_HOST is not a proxy socket under the state dir: {docker_host}"
    );
    socket
}

/// Pids of live processes whose environment says they belong to `run_id`.
fn run_processes(run_id: &str) -> Vec<u32> {
    let entry = format!("BENCHWARDEN_RUN_ID={run_id}");
    let mut found = Vec::new();
    for dir in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = dir.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if environ.split(|byte| *byte == 0).any(|item| item == entry.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// Waits (polling: no event tells) until no process of `run_id` is left.
async fn assert_no_run_processes(run_id: &str) {
    for _ in 0..100 {
        if run_processes(run_id).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("processes of run {run_id} are still alive: {:?}", run_processes(run_id));
}

// ---------------------------------------------------------------------------
// The docker CLI
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_cli_works_through_the_proxy() {
    let scope = TestScope::new("proxy-cli").await;
    let fixture = fixture(
        &scope,
        &[(
            "cli",
            r#"
echo "host: $DOCKER_HOST"
echo "context: ${DOCKER_CONTEXT:-unset}"
set +e
out=$(docker run --rm "$IMG" echo hi)
code=$?
set -e
echo "run-rm: $out"
echo "run-rm-exit: $code"
printer=$(docker run -d --label "$SCOPE" "$IMG" sh -c 'i=0; while :; do i=$((i+1)); echo "line $i"; sleep 0.1; done')
echo "printer: $printer"
owner='{{index .Config.Labels "benchwarden.task"}} {{index .Config.Labels "benchwarden.run"}}'
docker inspect -f "$owner" "$printer" | sed 's/^/owner: /'
docker logs -f "$printer" | head -n 3 | sed 's/^/logs: /'
docker exec "$printer" echo exec-ok | sed 's/^/exec: /'
printf 'one\ntwo\n' | docker exec -i "$printer" cat | sed 's/^/exec-i: /'
docker attach --no-stdin "$printer" | head -n 2 | sed 's/^/attach-out: /'
reader=$(docker run -d -i --label "$SCOPE" "$IMG" sh -c 'read x; echo "got $x"')
mkfifo "$DIR/attach.in"
docker attach "$reader" < "$DIR/attach.in" > "$DIR/attach.out" &
attach=$!
exec 3> "$DIR/attach.in"
echo from-stdin >&3
wait "$attach"
exec 3>&-
sed 's/^/attach-in: /' "$DIR/attach.out"
echo payload-in > "$DIR/cp-in.txt"
docker cp "$DIR/cp-in.txt" "$printer:/tmp/cp-in.txt"
docker exec "$printer" cat /tmp/cp-in.txt | sed 's/^/cp-in: /'
docker exec "$printer" sh -c 'echo payload-out > /tmp/cp-out.txt'
docker cp "$printer:/tmp/cp-out.txt" "$DIR/cp-out.txt"
sed 's/^/cp-out: /' "$DIR/cp-out.txt"
echo "left: $(docker ps -aq --filter "label=$SCOPE" | wc -l)"
echo "harness done""#,
        )],
    );
    let mut command = scope.benchwarden();
    // The harness must not inherit a context: DOCKER_CONTEXT would win over DOCKER_HOST.
    command.args(["run", fixture.path(), "-j", "1"]).env("DOCKER_CONTEXT", "no-such-context");
    let output = common::run_cli(command).await;
    output.assert_code(0);

    let host = printed(&output, "host: ");
    let socket = assert_proxy_socket(&scope, host.first().unwrap_or_else(|| panic!("{output}")));
    assert_eq!(printed(&output, "context: "), ["unset"], "{output}");
    assert_eq!(printed(&output, "run-rm: "), ["hi"], "{output}");
    assert_eq!(printed(&output, "run-rm-exit: "), ["0"], "{output}");
    let run_id = report(&output)["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        printed(&output, "owner: "),
        [format!("cli {run_id}")],
        "the proxy did not label the container\n{output}"
    );
    assert_eq!(printed(&output, "logs: "), ["line 1", "line 2", "line 3"], "{output}");
    assert_eq!(printed(&output, "exec: "), ["exec-ok"], "{output}");
    assert_eq!(printed(&output, "exec-i: "), ["one", "two"], "{output}");
    let attached = printed(&output, "attach-out: ");
    assert_eq!(attached.len(), 2, "{output}");
    assert!(attached.iter().all(|line| line.starts_with("line ")), "{output}");
    assert_eq!(printed(&output, "attach-in: "), ["got from-stdin"], "{output}");
    assert_eq!(printed(&output, "cp-in: "), ["payload-in"], "{output}");
    assert_eq!(printed(&output, "cp-out: "), ["payload-out"], "{output}");
    assert_eq!(printed(&output, "left: "), ["2"], "{output}");
    assert!(output.stderr.contains("harness done"), "{output}");

    let task = task_report(&report(&output), "cli").clone();
    assert_eq!(task["resources_found"], 2, "{task}");
    assert_eq!(task["resources_leaked"], serde_json::json!([]), "{task}");
    assert_nothing_left(&scope.leftovers().await, &output);
    assert_nothing_left(&run_leftovers(&scope, &run_id).await, &output);
    assert!(!socket.parent().unwrap().exists(), "the proxy's socket directory outlived the task");
}

/// Removes an image when dropped, so a failing test leaves none behind.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// Whether this docker CLI can build with BuildKit (it needs the buildx plugin).
fn cli_has_buildkit() -> bool {
    Command::new("docker").args(["buildx", "version"]).output().is_ok_and(|output| output.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_build_works_through_the_proxy_and_its_containers_go() {
    let scope = TestScope::new("proxy-build").await;
    let tag = format!("bwtest-{}:built", scope.id());
    let _image = ImageGuard(tag.clone());
    // Engine 20.10 has BuildKit, but the CLI reaches it only through buildx.
    let buildkit = cli_has_buildkit();
    eprintln!("docker build through the proxy uses {}", if buildkit { "BuildKit" } else { "the legacy builder" });
    let fixture = fixture(
        &scope,
        &[(
            "build",
            r#"
mkdir -p "$DIR/context"
{
  echo "FROM $IMG"
  echo 'RUN echo built-through-proxy > /built.txt'
  echo 'CMD ["cat", "/built.txt"]'
} > "$DIR/context/Dockerfile"
docker build -t "$TAG" "$DIR/context" > "$DIR/build.log" 2>&1 || { cat "$DIR/build.log"; exit 1; }
echo "built: $(docker image inspect -f '{{.Id}}' "$TAG")"
docker run --rm "$TAG" | sed 's/^/built-run: /'
docker run -d --label "$SCOPE" "$TAG" sleep 3600 > /dev/null
docker run -d "$TAG" sleep 3600 > /dev/null
echo "from-built: $(docker ps -q --filter "ancestor=$TAG" | wc -l)""#,
        )],
    );
    let mut command = scope.benchwarden();
    command
        .args(["run", fixture.path(), "-j", "1"])
        .env("TAG", &tag)
        .env("DOCKER_BUILDKIT", if buildkit { "1" } else { "0" });
    let output = common::run_cli(command).await;
    output.assert_code(0);
    assert_eq!(printed(&output, "built: ").len(), 1, "{output}");
    assert_eq!(printed(&output, "built-run: "), ["built-through-proxy"], "{output}");
    assert_eq!(printed(&output, "from-built: "), ["2"], "{output}");
    assert_eq!(task_report(&report(&output), "build")["resources_found"], 2, "{output}");

    // Both containers of the built image are gone, the unlabelled one too: the proxy labelled it.
    let ancestors = scope
        .docker()
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("ancestor".to_string(), vec![tag.clone()])])),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(ancestors.is_empty(), "containers of {tag} are left: {ancestors:?}\n{output}");
    assert_nothing_left(&scope.leftovers().await, &output);
    let run_id = report(&output)["run_id"].as_str().unwrap().to_string();
    assert_nothing_left(&run_leftovers(&scope, &run_id).await, &output);
}

// ---------------------------------------------------------------------------
// Compose and docker-py
// ---------------------------------------------------------------------------

/// The compose tool of this machine: the `docker compose` plugin, else `docker-compose`.
fn compose_command() -> &'static str {
    let plugin = Command::new("docker").args(["compose", "version"]).output();
    if plugin.is_ok_and(|output| output.status.success()) {
        return "docker compose";
    }
    let standalone = Command::new("docker-compose").arg("version").output();
    if standalone.is_ok_and(|output| output.status.success()) {
        return "docker-compose";
    }
    panic!("neither `docker compose` nor `docker-compose` works on this machine; the compose test needs one");
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_up_without_down_is_torn_down() {
    let scope = TestScope::new("proxy-compose").await;
    let compose = compose_command();
    eprintln!("compose tool: {compose}");
    let fixture = fixture(
        &scope,
        &[(
            "compose",
            r#"
cd "$DIR"
$COMPOSE -p "$PROJECT" -f compose.yml up -d
echo "services: $($COMPOSE -p "$PROJECT" -f compose.yml ps -q | wc -l)"
for container in $($COMPOSE -p "$PROJECT" -f compose.yml ps -q); do
  docker inspect -f '{{index .Config.Labels "benchwarden.task"}}' "$container" | sed 's/^/container-owner: /'
done
docker network inspect -f '{{index .Labels "benchwarden.task"}}' "${PROJECT}_back" | sed 's/^/network-owner: /'
docker volume inspect -f '{{index .Labels "benchwarden.task"}}' "${PROJECT}_data" | sed 's/^/volume-owner: /'
echo "exiting without down""#,
        )],
    );
    let image = common::test_image();
    std::fs::write(
        fixture.dir.join("compose.yml"),
        format!(
            "version: \"3.8\"\n\
             services:\n  \
               web:\n    image: {image}\n    command: sleep 3600\n    networks: [back]\n    \
                 volumes: [\"data:/data\"]\n  \
               worker:\n    image: {image}\n    command: sleep 3600\n    networks: [back]\n\
             networks:\n  back: {{}}\n\
             volumes:\n  data: {{}}\n"
        ),
    )
    .unwrap();
    let mut command = scope.benchwarden();
    command.args(["run", fixture.path(), "-j", "1"]).env("COMPOSE", compose).env("PROJECT", scope.project());
    let output = common::run_cli(command).await;
    output.assert_code(0);
    assert_eq!(printed(&output, "services: "), ["2"], "{output}");
    assert_eq!(printed(&output, "container-owner: "), ["compose", "compose"], "{output}");
    assert_eq!(printed(&output, "network-owner: "), ["compose"], "{output}");
    assert_eq!(printed(&output, "volume-owner: "), ["compose"], "{output}");
    assert!(output.stderr.contains("exiting without down"), "{output}");
    let task = task_report(&report(&output), "compose").clone();
    assert_eq!(task["resources_found"], 4, "two containers, a network and a volume: {task}");
    assert_eq!(task["resources_removed"], 4, "{task}");
    // The scope's leftovers include its compose project: containers, network, volume.
    assert_nothing_left(&scope.leftovers().await, &output);
}

fn venv_python() -> PathBuf {
    common::venv_python("docker")
}

const DOCKER_PY_SCRIPT: &str = r#"
import os
import sys

import docker

image, scope_key, scope_value, prefix = sys.argv[1:5]
labels = {scope_key: scope_value}
client = docker.from_env()
print("py-host:", os.environ["DOCKER_HOST"], flush=True)

container = client.containers.create(image, ["sleep", "3600"], labels=labels)
container.start()
container.reload()
print("py-state:", container.status, flush=True)
code, out = container.exec_run(["sh", "-c", "echo exec-from-py; exit 3"])
print("py-exec:", code, out.decode().strip(), flush=True)
print("py-owner:", container.labels.get("benchwarden.task"), container.labels.get(scope_key) == scope_value, flush=True)
container.remove(force=True)
try:
    client.containers.get(container.id)
    print("py-removed: no", flush=True)
except docker.errors.NotFound:
    print("py-removed: yes", flush=True)

kept = client.containers.run(image, ["sleep", "3600"], detach=True, labels=labels)
network = client.networks.create(prefix + "-net", labels=labels)
volume = client.volumes.create(prefix + "-vol", labels=labels)
print("py-kept:", kept.id, network.id, volume.name, flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn docker_py_creates_starts_execs_and_removes_through_the_proxy() {
    let python = venv_python();
    let scope = TestScope::new("proxy-py").await;
    let fixture =
        fixture(&scope, &[("py", r#""$PYTHON" "$DIR/client.py" "$IMG" "${SCOPE%%=*}" "${SCOPE#*=}" "$PREFIX""#)]);
    std::fs::write(fixture.dir.join("client.py"), DOCKER_PY_SCRIPT).unwrap();
    let mut command = scope.benchwarden();
    command.args(["run", fixture.path(), "-j", "1"]).env("PYTHON", &python).env("PREFIX", scope.unique_name("py"));
    let output = common::run_cli(command).await;
    output.assert_code(0);
    assert_proxy_socket(&scope, printed(&output, "py-host:").first().unwrap_or_else(|| panic!("{output}")));
    assert_eq!(printed(&output, "py-state:"), ["running"], "{output}");
    assert_eq!(printed(&output, "py-exec:"), ["3 exec-from-py"], "{output}");
    assert_eq!(printed(&output, "py-owner:"), ["py True"], "{output}");
    assert_eq!(printed(&output, "py-removed:"), ["yes"], "{output}");
    assert_eq!(printed(&output, "py-kept:").len(), 1, "{output}");
    let task = task_report(&report(&output), "py").clone();
    assert_eq!(task["resources_found"], 3, "the kept container, network and volume: {task}");
    assert_nothing_left(&scope.leftovers().await, &output);
    let run_id = report(&output)["run_id"].as_str().unwrap().to_string();
    assert_nothing_left(&run_leftovers(&scope, &run_id).await, &output);
}

// ---------------------------------------------------------------------------
// Concurrency, crashes, hostile clients
// ---------------------------------------------------------------------------

/// `docker run -d` in a loop, each id said as `created <id>`.
const CREATE_FOUR: &str = r#"
n=0
while [ "$n" -lt 4 ]; do
  id=$(docker run -d --label "$SCOPE" --label "fixture.creator=$BENCHWARDEN_TASK_ID" "$IMG" sleep 3600)
  say "created $id"
  n=$((n + 1))
done
say "done-creating""#;

#[tokio::test(flavor = "multi_thread")]
async fn eight_concurrent_tasks_each_lose_exactly_their_own_containers() {
    let scope = TestScope::new("proxy-j8").await;
    let short: Vec<String> = (1..=7).map(|n| format!("s{n}")).collect();
    let long_body = format!(
        "{CREATE_FOUR}\nawait_gate\n\
         id=$(docker run -d --label \"$SCOPE\" --label \"fixture.creator=$BENCHWARDEN_TASK_ID\" \"$IMG\" sleep 3600)\n\
         say \"created $id\"\n\
         say \"long done\""
    );
    let mut tasks: Vec<(&str, &str)> = vec![("long", long_body.as_str())];
    tasks.extend(short.iter().map(|name| (name.as_str(), CREATE_FOUR)));
    let fixture = fixture(&scope, &tasks);
    let mut pipes = Pipes::open(&fixture);

    // Every container of this test that is destroyed, from the engine's event stream.
    let since = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 1).to_string();
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), vec!["destroy".to_string()]),
        ("label".to_string(), vec![scope.label_arg()]),
    ]);
    let mut events =
        scope.docker().events(Some(EventsOptions { since: Some(since), filters: Some(filters), until: None }));
    let (destroyed_tx, mut destroyed) = tokio::sync::mpsc::unbounded_channel();
    let event_reader = tokio::spawn(async move {
        while let Some(Ok(event)) = events.next().await {
            let Some(actor) = event.actor else { continue };
            let attributes = actor.attributes.unwrap_or_default();
            let _ = destroyed_tx.send((actor.id.unwrap_or_default(), attributes));
        }
    });

    let run = Spawned::start(&scope, &["run", fixture.path(), "-j", "8"]);
    let mut created: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut finished_creating = BTreeSet::new();
    while finished_creating.len() < 8 {
        let said = pipes.next(&run).await;
        match said.message.split_once(' ') {
            Some(("created", id)) => {
                created.entry(said.task).or_default().insert(id.to_string());
            }
            _ if said.message == "done-creating" => {
                finished_creating.insert(said.task);
            }
            _ => panic!("unexpected line {said:?}"),
        }
    }
    assert!(created.values().all(|ids| ids.len() == 4), "{created:?}");

    // The seven short tasks have exited: wait until each of their containers is destroyed.
    let mut pending: BTreeSet<String> = short.iter().flat_map(|task| created[task].iter().cloned()).collect();
    while !pending.is_empty() {
        let next = tokio::time::timeout(EVENT_TIMEOUT, destroyed.recv()).await;
        let Ok(Some((id, attributes))) = next else {
            panic!("containers never destroyed: {pending:?}\n{}", run.stderr_so_far());
        };
        let creator = attributes.get("fixture.creator").cloned().unwrap_or_default();
        assert_ne!(creator, "long", "a container of the long task was destroyed while it ran\n{}", run.stderr_so_far());
        assert_eq!(attributes.get("benchwarden.task"), Some(&creator), "{id}: the proxy labelled it for another task");
        pending.remove(&id);
    }
    // The long task still runs: its containers are all there, running, and labelled for it.
    for id in &created["long"] {
        let inspected = scope.docker().inspect_container(id, None).await.unwrap_or_else(|error| {
            panic!("the long task's container {id} is gone while the task runs: {error}\n{}", run.stderr_so_far())
        });
        assert_eq!(inspected.state.and_then(|state| state.running), Some(true), "{id}");
        let labels = inspected.config.and_then(|config| config.labels).unwrap_or_default();
        assert_eq!(labels.get("benchwarden.task").map(String::as_str), Some("long"), "{id}");
    }
    let left = scope.leftovers().await.container_ids();
    assert_eq!(left, created["long"], "only the long task's containers may be left while it runs");

    // Its proxy still works after the other seven are gone, and its end takes its own.
    pipes.open_gate("long").await;
    let lines = pipes.until(&run, |said| said.message == "long done").await;
    assert!(lines.iter().any(|said| said.task == "long" && said.message.starts_with("created ")), "{lines:?}");
    let output = run.finish().await;
    output.assert_code(0);
    let report = report(&output);
    for task in short.iter().map(String::as_str) {
        assert_eq!(task_report(&report, task)["resources_found"], 4, "{task}: {report}");
    }
    assert_eq!(task_report(&report, "long")["resources_found"], 5, "{report}");
    assert_nothing_left(&scope.leftovers().await, &output);
    assert_nothing_left(&run_leftovers(&scope, report["run_id"].as_str().unwrap()).await, &output);
    event_reader.abort();
}

/// `docker run -d` in a loop that stops when the proxy is gone.
const CREATE_FOREVER: &str = r#"
n=0
while :; do
  docker run -d --label "$SCOPE" "$IMG" sleep 3600 > /dev/null || exit 1
  n=$((n + 1))
  say "created $n"
done"#;

/// Starts a run whose harness creates containers in a loop and SIGKILLs
/// benchwarden after the third; returns the run id and benchwarden's pid.
async fn kill_while_creating(scope: &TestScope, fixture: &Fixture, pipes: &mut Pipes) -> (String, u32) {
    let run = Spawned::start(scope, &["run", fixture.path(), "-j", "1"]);
    let pid = run.pid();
    let lines = pipes.until(&run, |said| said.message == "created 3").await;
    let run_id = lines.last().unwrap().run.clone();
    let killed = run.kill9().await;
    assert_eq!(killed.status.code(), None, "benchwarden was expected to die by SIGKILL\n{killed}");
    let left = scope.leftovers().await;
    assert!(left.containers.len() >= 3, "the harness made at least 3 containers: {left:?}");
    for container in &left.containers {
        assert_eq!(container.labels.get("benchwarden.run"), Some(&run_id), "{container:?}");
        assert_eq!(container.labels.get("benchwarden.pid"), Some(&pid.to_string()), "{container:?}");
    }
    (run_id, pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn after_sigkill_recover_removes_what_the_proxy_labelled_even_without_the_ledger() {
    let scope = TestScope::new("proxy-kill9").await;
    let fixture = fixture(&scope, &[("loop", CREATE_FOREVER)]);
    let mut pipes = Pipes::open(&fixture);

    // With the ledger: plain `recover`.
    let (run_id, _) = kill_while_creating(&scope, &fixture, &mut pipes).await;
    let recovered = scope.cli(&["recover"]).await;
    recovered.assert_code(0);
    assert!(recovered.stdout.contains(&run_id), "{recovered}");
    assert_nothing_left(&scope.leftovers().await, &recovered);
    assert_nothing_left(&run_leftovers(&scope, &run_id).await, &recovered);
    assert_no_run_processes(&run_id).await;

    // Without it: the ledger files are deleted, and only the labels tell.
    let (run_id, _) = kill_while_creating(&scope, &fixture, &mut pipes).await;
    let mut deleted = 0;
    for entry in std::fs::read_dir(scope.state_dir()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("ledger.sqlite") {
            std::fs::remove_file(entry.path()).unwrap();
            deleted += 1;
        }
    }
    assert!(deleted >= 1, "no ledger file in {}", scope.state_dir().display());
    let blind = scope.cli(&["recover"]).await;
    blind.assert_code(0);
    assert!(!scope.leftovers().await.is_empty(), "recover without a ledger was not expected to find anything\n{blind}");
    let recovered = scope.cli(&["recover", "--from-labels"]).await;
    recovered.assert_code(0);
    assert!(recovered.stdout.contains(&run_id), "{recovered}");
    assert_nothing_left(&scope.leftovers().await, &recovered);
    assert_nothing_left(&run_leftovers(&scope, &run_id).await, &recovered);
    assert_no_run_processes(&run_id).await;
}

/// What a raw exchange with the proxy socket ended in.
#[derive(Debug)]
enum Answer {
    /// An HTTP response (its head and whatever body came).
    Response(String),
    /// The proxy closed the connection (or reset it) without answering.
    Closed,
}

impl Answer {
    fn status(&self) -> Option<u16> {
        match self {
            Answer::Response(text) => text.split_whitespace().nth(1)?.parse().ok(),
            Answer::Closed => None,
        }
    }
}

/// Sends `request` on a new connection (in a thread of its own, so a proxy
/// that stops reading cannot block the test), half-closes when `then_close`,
/// and reads until the proxy closes.
fn exchange(socket: &Path, request: Vec<u8>, then_close: bool) -> Answer {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect to the proxy socket");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        // The proxy may answer and close before taking everything: a broken pipe is fine.
        let _ = writer.write_all(&request);
        if then_close {
            let _ = writer.shutdown(std::net::Shutdown::Write);
        }
    });
    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(count) => received.extend_from_slice(&chunk[..count]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!(
                    "the proxy neither answered nor closed the connection within 20 s{} (got so far: {:?})",
                    if then_close { " after the client half-closed it" } else { "" },
                    lossy(&received)
                )
            }
            Err(error) => panic!("reading the proxy's answer: {error} (got so far: {:?})", lossy(&received)),
        }
    }
    sending.join().unwrap();
    if received.is_empty() {
        Answer::Closed
    } else {
        Answer::Response(lossy(&received))
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `GET /_ping` on a new connection answers 200 `OK`.
#[track_caller]
fn assert_pings(socket: &Path) {
    let answer = exchange(socket, b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".to_vec(), false);
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    assert!(matches!(&answer, Answer::Response(text) if text.ends_with("OK")), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_get_an_error_or_a_close_and_the_proxy_keeps_serving() {
    let scope = TestScope::new("proxy-hostile").await;
    let after_gate = r#"
docker run --rm "$IMG" echo still-works | sed 's/^/out: /' > "$DIR/$BENCHWARDEN_TASK_ID.out"
docker run -d --label "$SCOPE" "$IMG" sleep 3600 > /dev/null
say "done $(cat "$DIR/$BENCHWARDEN_TASK_ID.out")""#;
    let target = format!("say \"host $DOCKER_HOST\"\nawait_gate\n{after_gate}");
    let bystander = format!("docker ps > /dev/null\nsay ready\nawait_gate\n{after_gate}");
    let fixture = fixture(&scope, &[("target", &target), ("bystander", &bystander)]);
    let mut pipes = Pipes::open(&fixture);
    let run = Spawned::start(&scope, &["run", fixture.path(), "-j", "2"]);

    let mut socket = None;
    let mut ready = false;
    while socket.is_none() || !ready {
        let said = pipes.next(&run).await;
        match said.message.split_once(' ') {
            Some(("host", host)) => socket = Some(assert_proxy_socket(&scope, host)),
            _ if said.message == "ready" => ready = true,
            _ => panic!("unexpected line {said:?}"),
        }
    }
    let socket = socket.unwrap();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(socket.parent().unwrap()), 0o700, "the socket's directory is not private");
    assert_eq!(mode(&socket), 0o600, "the socket is not private");
    assert_pings(&socket);

    // A client that sends half a head and then just sits there, for the whole test.
    let mut idle = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    idle.write_all(b"GET /v1.41/containers/json HTTP/1.1\r\nHost: dock").unwrap();

    let mut ten_mib_header = b"GET /v1.41/info HTTP/1.1\r\nHost: docker\r\nX-Huge: ".to_vec();
    ten_mib_header.resize(ten_mib_header.len() + 10 * 1024 * 1024, b'a');
    ten_mib_header.extend_from_slice(b"\r\n\r\n");
    let not_json = b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n\
                     Content-Length: 21\r\n\r\n{this is not: json!!}";
    let hostile: Vec<(&str, Vec<u8>, bool, &[u16])> = vec![
        (
            "garbage bytes",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\xff\xfe garbage\r\n\r\n".to_vec(),
            false,
            &[400],
        ),
        ("garbage then close", (0..4096u32).map(|n| (n * 7919 % 251) as u8).collect(), true, &[400]),
        (
            "truncated head then close",
            b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Len".to_vec(),
            true,
            &[400],
        ),
        ("a 10 MiB header", ten_mib_header, false, &[431]),
        ("a create body that is not JSON", not_json.to_vec(), false, &[400]),
        (
            "a create body that is a JSON array",
            b"POST /containers/create HTTP/1.1\r\nHost: docker\r\nContent-Length: 3\r\n\r\n[1]".to_vec(),
            false,
            &[400],
        ),
        (
            "a create body cut short",
            b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Length: 500\r\n\r\n{\"Image\":"
                .to_vec(),
            true,
            &[400],
        ),
        (
            // Forwarded as it comes; the daemon waits for the rest of the context, which never comes.
            "a build body cut short",
            b"POST /v1.41/build HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\n\
              Content-Length: 100000\r\n\r\n\0\0\0\0\0\0\0\0\0\0"
                .to_vec(),
            true,
            &[400],
        ),
        (
            "a bad Content-Length",
            b"POST /v1.41/containers/create HTTP/1.1\r\nContent-Length: ten\r\n\r\n".to_vec(),
            false,
            &[400],
        ),
    ];
    for (what, request, then_close, statuses) in hostile {
        let socket_copy = socket.clone();
        let answer = tokio::task::spawn_blocking(move || exchange(&socket_copy, request, then_close))
            .await
            .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
        eprintln!(
            "{what}: {}",
            match &answer {
                Answer::Response(text) => text.lines().next().unwrap_or_default().to_string(),
                Answer::Closed => "closed without an answer".to_string(),
            }
        );
        match answer.status() {
            None => {}
            Some(status) => assert!(statuses.contains(&status), "{what}: answered {answer:?}"),
        }
        if let Answer::Response(text) = &answer {
            assert!(text.contains("benchwarden proxy"), "{what}: the answer is not the proxy's own: {text}");
        }
        let socket_copy = socket.clone();
        tokio::task::spawn_blocking(move || assert_pings(&socket_copy))
            .await
            .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
    }
    assert!(scope.leftovers().await.is_empty(), "a hostile request created something");

    // Both tasks' clients still work, and benchwarden ends normally.
    pipes.open_gate("target").await;
    pipes.open_gate("bystander").await;
    let mut done = BTreeMap::new();
    while done.len() < 2 {
        let said = pipes.next(&run).await;
        if let Some(rest) = said.message.strip_prefix("done ") {
            done.insert(said.task, rest.to_string());
        }
    }
    for task in ["target", "bystander"] {
        assert_eq!(done[task], "out: still-works", "{task}");
    }
    drop(idle);
    let output = run.finish().await;
    output.assert_code(0);
    let report = report(&output);
    for task in ["target", "bystander"] {
        assert_eq!(task_report(&report, task)["outcome"], "passed", "{report}");
        assert_eq!(task_report(&report, task)["resources_found"], 1, "{report}");
    }
    assert_nothing_left(&scope.leftovers().await, &output);
    assert!(!socket.parent().unwrap().exists(), "the proxy's socket directory outlived the task");
}
