//! The real harnesses under benchwarden: Terminal-Bench (`tb run`) and
//! Harbor (`harbor run`), from the virtualenv and base image that
//! `scripts/harness-env.sh` prepares, on the tiny tasks in
//! `tests/harnesses/`, with the agents that need no model (`oracle` runs the
//! reference solution, `nop` does nothing).
//!
//! Each test runs the shipped benchmark file (`benchmarks/<harness>.yaml`)
//! with only its dataset swapped for the local tasks, so the selectors and
//! result readers under test are the ones users get. Tasks are copied under
//! names unique to the test, so what a test leaves can be found by name
//! while other tests run, and "nothing left" is proved by listing the
//! engine's containers, networks and volumes.
//!
//! Images are not yet tracked by benchwarden (the disk issue): each test
//! lists the images its harness built, says which are left, and removes
//! them itself so the machine does not fill up; they are never counted as
//! benchwarden's to remove.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, ListNetworksOptions, ListVolumesOptions, RemoveImageOptions,
};
use nix::sys::signal::Signal;

use crate::common::harness::{harness_env, tasks_dir};
use crate::common::{run_cli_within, CliOutput, Running, TestScope};

/// How long a real harness run may take here, start-up (seconds of Python
/// imports), image build and teardown included, on a loaded CI machine.
const HARNESS_RUN_LIMIT: Duration = Duration::from_secs(420);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Harness {
    TerminalBench,
    Harbor,
}

impl Harness {
    fn name(self) -> &'static str {
        match self {
            Harness::TerminalBench => "terminal-bench",
            Harness::Harbor => "harbor",
        }
    }

    /// The shipped benchmark's dataset option, and the local one that replaces it.
    fn dataset_options(self) -> (&'static str, &'static str) {
        match self {
            Harness::TerminalBench => ("--dataset", "--dataset-path"),
            Harness::Harbor => ("--dataset", "--path"),
        }
    }
}

/// One test's copy of a shipped benchmark, over its own copies of the tasks.
struct HarnessRun {
    harness: Harness,
    scope: TestScope,
    /// The harness's working directory: its `runs/` or `jobs/` go here.
    workdir: PathBuf,
    benchmark: PathBuf,
    /// The tasks' names in this test (unique: `<fixture>-<hash of the scope>`).
    tasks: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proxy {
    On,
    Off,
}

impl HarnessRun {
    async fn new(harness: Harness, what: &str, fixtures: &[&str], proxy: Proxy) -> Self {
        let scope = TestScope::new(&format!("{}-{what}", harness.name())).await;
        let workdir = scope.state_dir().join("work");
        let suffix = short_hash(scope.id());
        let tasks: Vec<String> = fixtures.iter().map(|fixture| format!("{fixture}-{suffix}")).collect();
        for (fixture, task) in fixtures.iter().zip(&tasks) {
            copy_dir(&tasks_dir(harness.name()).join(fixture), &workdir.join("tasks").join(task));
        }
        let benchmark = workdir.join("benchmark.yaml");
        let yaml = benchmark_yaml(harness, &workdir.join("tasks"), &tasks, proxy);
        std::fs::write(&benchmark, yaml).unwrap();
        HarnessRun { harness, scope, workdir, benchmark, tasks }
    }

    /// `benchwarden run` of this benchmark, in the work directory, with the
    /// harness environment (the virtualenv first on `PATH`, the private
    /// `DOCKER_CONFIG` with Compose v2).
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.scope.benchwarden();
        command.arg("run").arg(&self.benchmark).args(args).current_dir(&self.workdir);
        if self.harness == Harness::Harbor {
            // Harbor 0.26 bind-mounts the trial's log directories only when asked; the
            // slow tasks' `solution-started` markers reach the host through them.
            command.args(["--ek", "auto_mounting=true"]);
        }
        command.envs(harness_env().command_env());
        command
    }

    async fn run(&self, args: &[&str]) -> CliOutput {
        run_cli_within(self.command(args), HARNESS_RUN_LIMIT).await
    }

    /// Waits until every task's reference solution has started (it writes
    /// `solution-started` into the logs directory the harness mounts).
    async fn wait_until_solutions_run(&self, running: &mut Running) {
        let deadline = Instant::now() + HARNESS_RUN_LIMIT;
        loop {
            let markers = find_files(&self.workdir, "solution-started");
            if markers.len() >= self.tasks.len() {
                return;
            }
            if let Ok(Some(status)) = running.child.try_wait() {
                panic!("benchwarden ended ({status}) before the solutions started; markers: {markers:?}");
            }
            assert!(Instant::now() < deadline, "the solutions did not start within {HARNESS_RUN_LIMIT:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The run's id, as the ledger of this test's state directory has it.
    async fn run_id(&self) -> String {
        let status = self.scope.cli(&["status", "--json"]).await;
        status.json()["runs"][0]["id"].as_str().unwrap_or_else(|| panic!("no run in the ledger:\n{status}")).into()
    }

    /// Lists what is left of this test's tasks; removes the images (which
    /// benchwarden does not track yet) after saying which were left.
    async fn assert_nothing_left(&self, context: &CliOutput) {
        let left = engine_leftovers(&self.scope, &self.tasks).await;
        assert!(
            left.containers.is_empty() && left.networks.is_empty() && left.volumes.is_empty(),
            "{} left: {left:?}\n{context}",
            self.harness.name()
        );
        if !left.images.is_empty() {
            eprintln!("images left by {} (not tracked by benchwarden yet): {:?}", self.harness.name(), left.images);
        }
        for image in &left.images {
            let options = RemoveImageOptions { force: true, ..Default::default() };
            let _ = self.scope.docker().remove_image(image, Some(options), None).await;
        }
    }

    /// The summary's row of task `index`, split into cells.
    fn row(&self, output: &CliOutput, index: usize) -> Vec<String> {
        let task = &self.tasks[index];
        let line = output.stdout.lines().find(|line| line.starts_with(task.as_str()));
        line.unwrap_or_else(|| panic!("no row for {task}:\n{output}")).split_whitespace().map(str::to_string).collect()
    }
}

/// Eight hex digits of a hash: short enough for task names, which harnesses
/// put in project, container and image names.
fn short_hash(text: &str) -> String {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    format!("{:08x}", hasher.finish() as u32)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap_or_else(|error| panic!("{}: {error}", from.display())).flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The shipped benchmark file with its dataset swapped for `tasks_dir`, its
/// task list for `tasks`, and (with `Proxy::Off`) `docker.proxy: false`;
/// `{benchmark_dir}` stays the shipped file's directory, so files shipped
/// beside it are used as they are.
fn benchmark_yaml(harness: Harness, tasks_dir: &Path, tasks: &[String], proxy: Proxy) -> String {
    let shipped_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benchmarks");
    let shipped = std::fs::read_to_string(shipped_dir.join(format!("{}.yaml", harness.name()))).unwrap();
    let mut benchmark: serde_yaml::Value = serde_yaml::from_str(&shipped).unwrap();
    let (remote, local) = harness.dataset_options();
    let command = benchmark["harness"]["command"].as_sequence_mut().unwrap();
    let at =
        command.iter().position(|word| word.as_str() == Some(remote)).expect("the shipped command names a dataset");
    command[at] = local.into();
    command[at + 1] = tasks_dir.display().to_string().into();
    for word in command.iter_mut() {
        if let Some(text) = word.as_str().filter(|text| text.contains("{benchmark_dir}")) {
            *word = text.replace("{benchmark_dir}", &shipped_dir.display().to_string()).into();
        }
    }
    benchmark["tasks"] = tasks.iter().map(|task| serde_yaml::Value::from(task.as_str())).collect();
    if proxy == Proxy::Off {
        benchmark["docker"]["proxy"] = false.into();
    }
    serde_yaml::to_string(&benchmark).unwrap()
}

/// Files named `name` under `root`, at any depth.
fn find_files(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if entry.file_name() == name {
                found.push(entry.path());
            }
        }
    }
    found
}

#[derive(Debug, Default)]
struct EngineLeftovers {
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
}

/// Everything on the engine whose name, compose project or image tag holds
/// one of `tasks` (harnesses name projects, containers, networks and images
/// after the task).
async fn engine_leftovers(scope: &TestScope, tasks: &[String]) -> EngineLeftovers {
    let docker = scope.docker();
    let ours = |text: &str| tasks.iter().any(|task| text.contains(task.as_str()));
    let project = |labels: Option<&std::collections::HashMap<String, String>>| {
        labels.and_then(|labels| labels.get("com.docker.compose.project")).is_some_and(|project| ours(project))
    };
    let mut left = EngineLeftovers::default();
    let options = ListContainersOptions { all: true, ..Default::default() };
    for container in docker.list_containers(Some(options)).await.unwrap() {
        let names = container.names.clone().unwrap_or_default();
        if names.iter().any(|name| ours(name)) || project(container.labels.as_ref()) {
            left.containers.push(names.join(","));
        }
    }
    for network in docker.list_networks(None::<ListNetworksOptions>).await.unwrap() {
        let name = network.name.clone().unwrap_or_default();
        if ours(&name) || project(network.labels.as_ref()) {
            left.networks.push(name);
        }
    }
    for volume in docker.list_volumes(None::<ListVolumesOptions>).await.unwrap().volumes.unwrap_or_default() {
        if ours(&volume.name) || project(Some(&volume.labels)) {
            left.volumes.push(volume.name);
        }
    }
    for image in docker.list_images(None::<ListImagesOptions>).await.unwrap() {
        left.images.extend(image.repo_tags.into_iter().filter(|tag| ours(tag)));
    }
    left
}

/// Processes whose environment carries the run's id: the harness and
/// everything it started.
pub(crate) fn run_processes(run_id: &str) -> Vec<String> {
    let entry = format!("BENCHWARDEN_RUN_ID={run_id}");
    let mut found = Vec::new();
    for proc_entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !zombie && environ.split(|byte| *byte == 0).any(|variable| variable == entry.as_bytes()) {
            let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            found.push(format!("{pid} {}", String::from_utf8_lossy(&command).replace('\0', " ")));
        }
    }
    found
}

/// `tasks[i].result` and `tasks[i].resources` of the JSON report a run wrote.
fn report_tasks(output: &CliOutput) -> Vec<serde_json::Value> {
    let path = output.stderr.lines().find_map(|line| line.strip_prefix("report: ")).expect("the report's path");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    report["tasks"].as_array().unwrap().clone()
}

/// The columns `VERDICT SCORE CREATED BY-HARNESS REMOVED LEAKED` of a summary row.
#[derive(Debug)]
struct Fates {
    verdict: String,
    score: String,
    created: usize,
    by_harness: usize,
    removed: usize,
    leaked: usize,
}

fn fates(row: &[String]) -> Fates {
    let at = row.len() - 7;
    let number = |index: usize| row[index].parse::<usize>().unwrap_or_else(|_| panic!("{row:?}"));
    Fates {
        verdict: row[at].clone(),
        score: row[at + 1].clone(),
        created: number(at + 2),
        by_harness: number(at + 3),
        removed: number(at + 4),
        leaked: number(at + 5),
    }
}

/// A passing task (oracle) and a failing one (nop), at once: the summary,
/// the JSON report and the metrics give the harness's own verdict, and
/// `--fail-on-unresolved` turns the unresolved one into exit 1.
async fn oracle_resolves_and_nop_does_not(harness: Harness) {
    let oracle = HarnessRun::new(harness, "oracle", &["hello"], Proxy::On).await;
    let nop = HarnessRun::new(harness, "nop", &["hello"], Proxy::On).await;
    let metrics = nop.workdir.join("metrics.prom");
    let metrics_arg = metrics.display().to_string();
    let oracle_args = ["--fail-on-unresolved", "--", "--agent", "oracle"];
    let nop_args = ["--fail-on-unresolved", "--metrics-file", &metrics_arg, "--", "--agent", "nop"];
    let (passed, failed) = tokio::join!(oracle.run(&oracle_args), nop.run(&nop_args));
    passed.assert_code(0);
    failed.assert_code(1);
    let resolved = fates(&oracle.row(&passed, 0));
    assert_eq!((resolved.verdict.as_str(), resolved.score.as_str(), resolved.leaked), ("resolved", "1.00", 0));
    assert!(resolved.created >= 1, "the task's container was not recorded:\n{passed}");
    let unresolved = fates(&nop.row(&failed, 0));
    assert_eq!((unresolved.verdict.as_str(), unresolved.score.as_str()), ("unresolved", "0.00"), "{failed}");
    assert!(failed.stdout.contains("benchmark results: 1 unresolved, mean score 0.00"), "{failed}");
    for (output, verdict) in [(&passed, "resolved"), (&failed, "unresolved")] {
        let task = &report_tasks(output)[0];
        assert_eq!(task["outcome"], "passed", "the harness itself exited 0: {task}");
        assert_eq!(task["result"]["verdict"], verdict, "{task}");
        assert_eq!(task["result"]["trials"], 1, "{task}");
    }
    let metrics = std::fs::read_to_string(&metrics).unwrap();
    assert!(metrics.contains("benchwarden_task_results_total{verdict=\"unresolved\"} 1\n"), "{metrics}");
    oracle.assert_nothing_left(&passed).await;
    nop.assert_nothing_left(&failed).await;
}

/// Two slow tasks at `-j 2`, Ctrl-C while both solutions run: exit 130,
/// no process of the run left, nothing of its tasks on the engine.
async fn ctrl_c_while_two_tasks_run(harness: Harness, proxy: Proxy) -> (HarnessRun, CliOutput) {
    let what = if proxy == Proxy::On { "sigint" } else { "sigint-no-proxy" };
    let run = HarnessRun::new(harness, what, &["slow-a", "slow-b"], proxy).await;
    let mut running = Running::start(run.command(&["-j", "2", "--grace", "5s", "--", "--agent", "oracle"]));
    run.wait_until_solutions_run(&mut running).await;
    let run_id = run.run_id().await;
    running.send(Signal::SIGINT);
    let output = running.finish().await;
    output.assert_code(130);
    assert_eq!(run_processes(&run_id), Vec::<String>::new(), "processes of the run survived\n{output}");
    run.assert_nothing_left(&output).await;
    for index in 0..2 {
        let task = fates(&run.row(&output, index));
        assert_eq!((task.verdict.as_str(), task.leaked), ("-", 0), "a stopped task: no verdict, no leak\n{output}");
        assert!(task.created >= 2, "the task's container and network were not both known\n{output}");
    }
    (run, output)
}

/// Two slow tasks, then `kill -9` of benchwarden while both run, then
/// `recover`: the dry run lists what it would kill and remove and changes
/// nothing; the recovery leaves no process, no socket directory, nothing.
async fn kill_9_then_recover(harness: Harness, proxy: Proxy) -> CliOutput {
    let what = if proxy == Proxy::On { "kill9" } else { "kill9-no-proxy" };
    let run = HarnessRun::new(harness, what, &["slow-a", "slow-b"], proxy).await;
    let mut running = Running::start(run.command(&["-j", "2", "--", "--agent", "oracle"]));
    run.wait_until_solutions_run(&mut running).await;
    let run_id = run.run_id().await;
    running.send(Signal::SIGKILL);
    running.child.wait().await.unwrap();
    let before = engine_leftovers(&run.scope, &run.tasks).await;
    assert!(!before.containers.is_empty(), "nothing to recover: the test proves nothing");

    // A live harness keeps starting short-lived helpers (`docker info`, compose's plugin
    // metadata), so the processes the dry run must list are those there both before it
    // started and after it ended: the harness processes themselves among them.
    let before_dry = run_processes(&run_id);
    let dry = run.scope.cli(&["recover", "--dry-run"]).await;
    dry.assert_code(0);
    let after_dry = run_processes(&run_id);
    let throughout: Vec<&String> = before_dry.iter().filter(|process| after_dry.contains(process)).collect();
    assert!(
        throughout.iter().filter(|process| process.contains(" run ")).count() >= 2,
        "the two harness processes were not running throughout: {before_dry:?} / {after_dry:?}"
    );
    for process in throughout {
        let pid = process.split(' ').next().unwrap();
        assert!(dry.stdout.contains(&format!("would kill: pid {pid} ")), "{process} not listed\n{dry}");
    }
    let after_dry = engine_leftovers(&run.scope, &run.tasks).await;
    assert_eq!(after_dry.containers.len(), before.containers.len(), "the dry run removed something\n{dry}");

    let recovered = run.scope.cli(&["recover"]).await;
    recovered.assert_code(0);
    assert_eq!(run_processes(&run_id), Vec::<String>::new(), "recover left processes of the run\n{recovered}");
    let sockets = find_files(run.scope.state_dir(), "docker.sock");
    assert_eq!(sockets, Vec::<PathBuf>::new(), "recover left proxy sockets\n{recovered}");
    run.assert_nothing_left(&recovered).await;
    recovered
}

#[tokio::test(flavor = "multi_thread")]
async fn terminal_bench_oracle_resolves_and_nop_does_not() {
    oracle_resolves_and_nop_does_not(Harness::TerminalBench).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn harbor_oracle_resolves_and_nop_does_not() {
    oracle_resolves_and_nop_does_not(Harness::Harbor).await;
}

/// Terminal-Bench ignores SIGINT: the grace runs out, SIGKILL follows, and
/// benchwarden removes what tb never got to take down.
#[tokio::test(flavor = "multi_thread")]
async fn terminal_bench_ctrl_c_with_two_tasks_running() {
    let (run, output) = ctrl_c_while_two_tasks_run(Harness::TerminalBench, Proxy::On).await;
    for index in 0..2 {
        let task = fates(&run.row(&output, index));
        assert!(task.removed >= 2, "benchwarden should have removed the container and network\n{output}");
    }
}

/// Harbor runs its own `docker compose down` on SIGINT; whatever it leaves,
/// benchwarden removes.
#[tokio::test(flavor = "multi_thread")]
async fn harbor_ctrl_c_with_two_tasks_running() {
    ctrl_c_while_two_tasks_run(Harness::Harbor, Proxy::On).await;
}

/// Terminal-Bench dies on the vanished proxy socket before its own `down`.
#[tokio::test(flavor = "multi_thread")]
async fn terminal_bench_kill_9_then_recover() {
    kill_9_then_recover(Harness::TerminalBench, Proxy::On).await;
}

/// Harbor's processes outlive benchwarden: `recover` kills them first.
#[tokio::test(flavor = "multi_thread")]
async fn harbor_kill_9_then_recover() {
    kill_9_then_recover(Harness::Harbor, Proxy::On).await;
}

/// The shipped selector, with no proxy labelling anything: tb is killed
/// after the grace without its own `down`, so everything it made is found
/// by the compose-project selector and the creation watcher, and removed.
#[tokio::test(flavor = "multi_thread")]
async fn terminal_bench_without_the_proxy_the_shipped_selector_finds_everything() {
    let (run, output) = ctrl_c_while_two_tasks_run(Harness::TerminalBench, Proxy::Off).await;
    for index in 0..2 {
        let task = fates(&run.row(&output, index));
        assert_eq!(task.by_harness, 0, "tb was killed: it removed nothing itself\n{output}");
        assert!(task.removed >= 2, "the selector did not find the container and network\n{output}");
    }
}

/// The shipped compose override labels what Harbor makes, with no proxy:
/// after `kill -9`, `recover` finds the run's resources by those labels and
/// the rows the creation watcher recorded.
#[tokio::test(flavor = "multi_thread")]
async fn harbor_without_the_proxy_the_shipped_labels_find_everything() {
    let recovered = kill_9_then_recover(Harness::Harbor, Proxy::Off).await;
    // "run R: N resource(s) removed, M left"
    let removed: usize = recovered
        .stdout
        .lines()
        .filter_map(|line| line.split(": ").nth(1)?.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert!(removed >= 4, "two tasks' containers and networks\n{recovered}");
}
