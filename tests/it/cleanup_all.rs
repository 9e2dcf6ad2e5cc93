//! `benchwarden cleanup all` as the real binary, against the real engine
//! and a Daytona contract server of the test's own. Docker is reached
//! through a [`ScopedEngine`], so a host-wide policy sees only this test's
//! containers; what is left is checked by listing the engine and asking the
//! server, never by trusting benchwarden's counts.

use std::time::{Duration, SystemTime};

use daytona_contract::{ContractConfig, SeedSandbox};
use serde_json::Value;

use crate::common::daytona::{owner, this_host, Org, DEAD_RUN};
use crate::common::{CliOutput, ContainerSpec, ScopedEngine, TestScope};

/// A pid no process has: the owner labels of a run whose benchwarden is gone.
pub(crate) const DEAD_PID: &str = "4294967294";
const DAY: Duration = Duration::from_secs(86_400);

/// One test's Docker corner, seen through its own scoped socket, and its
/// Daytona organisation; every command runs with the organisation's state
/// directory and credentials.
pub(crate) struct Both {
    pub(crate) scope: TestScope,
    pub(crate) engine: ScopedEngine,
    pub(crate) org: Org,
}

impl Both {
    pub(crate) async fn new(name: &str) -> Both {
        Both::with(name, ContractConfig::default()).await
    }

    /// With a contract server configured as given (latency, faults).
    pub(crate) async fn with(name: &str, config: ContractConfig) -> Both {
        let scope = TestScope::new(name).await;
        let engine = ScopedEngine::start(&scope.label_arg());
        let org = Org::start(config).await;
        Both { scope, engine, org }
    }

    pub(crate) fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.org.command(args);
        command.env("DOCKER_HOST", self.engine.docker_host());
        command
    }

    pub(crate) async fn cli(&self, args: &[&str]) -> CliOutput {
        self.org.keep(crate::common::run_cli(self.command(args)).await)
    }

    /// The owner labels of a dead run of this host, for a container.
    pub(crate) fn dead_owner() -> Vec<(&'static str, String)> {
        vec![
            ("benchwarden.run", DEAD_RUN.to_string()),
            ("benchwarden.task", "t".to_string()),
            ("benchwarden.host", this_host()),
            ("benchwarden.pid", DEAD_PID.to_string()),
        ]
    }

    pub(crate) async fn container(&self, spec: ContainerSpec, owned: bool) -> String {
        let labels = if owned { Both::dead_owner() } else { Vec::new() };
        let labels: Vec<(&str, &str)> = labels.iter().map(|(key, value)| (*key, value.as_str())).collect();
        self.scope.container(spec.labels(&labels)).await
    }

    /// A sandbox of a dead run of this host, in `state`, created `age` ago.
    pub(crate) fn sandbox(&self, state: &str, age: Duration) -> String {
        let labels = owner(DEAD_RUN, &this_host()).into_iter().collect();
        let created_at = SystemTime::now() - age;
        self.org.seed(SeedSandbox { labels, state: state.to_string(), created_at, ..SeedSandbox::default() })
    }

    pub(crate) async fn containers_left(&self) -> Vec<String> {
        self.scope.leftovers().await.containers.into_iter().map(|container| container.id).collect()
    }
}

#[track_caller]
fn assert_left(left: &[String], wanted: &[&String], gone: &[&String], context: &CliOutput) {
    for id in wanted {
        assert!(left.contains(id), "{id} should still be there\n{context}");
    }
    for id in gone {
        assert!(!left.contains(id), "{id} should be gone\n{context}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_exited_benchmark_containers_go_and_daytona_is_a_dry_run() {
    let both = Both::new("all-default").await;
    let exited = both.container(ContainerSpec::exited(), true).await;
    let running = both.container(ContainerSpec::sleeping(), true).await;
    let unowned = both.container(ContainerSpec::exited(), false).await;
    let stopped_old = both.sandbox("stopped", 2 * DAY);
    let started_old = both.sandbox("started", 2 * DAY);
    let stopped_young = both.sandbox("stopped", Duration::from_secs(60));

    let output = both.cli(&["cleanup", "all"]).await;
    output.assert_code(0);
    assert_left(&both.containers_left().await, &[&running, &unowned], &[&exited], &output);
    assert!(output.stdout.contains("containers: 1 removed"), "{output}");
    assert!(output.stdout.contains("sandboxes: 1 would be removed (dry run)"), "{output}");
    assert!(output.stdout.contains("--no-dry-run"), "the dry run says how to really delete\n{output}");
    for id in [&stopped_old, &started_old, &stopped_young] {
        assert!(both.org.server.exists(id), "a dry run deleted {id}\n{output}");
    }

    let real = both.cli(&["cleanup", "all", "--no-dry-run", "--json"]).await;
    real.assert_code(0);
    assert!(!both.org.server.exists(&stopped_old), "{real}");
    assert!(both.org.server.exists(&started_old) && both.org.server.exists(&stopped_young), "{real}");
    let json = real.json();
    assert_eq!(json["daytona"]["sandboxes"]["removed"], 1, "{json}");
    assert_eq!(json["docker"]["containers"]["removed"], 0, "{json}");
}

#[tokio::test(flavor = "multi_thread")]
async fn aggressive_takes_running_containers_and_any_sandbox_older_than_an_hour() {
    let both = Both::new("all-aggressive").await;
    let running = both.container(ContainerSpec::sleeping(), true).await;
    let unowned = both.container(ContainerSpec::sleeping(), false).await;
    let started_hours = both.sandbox("started", Duration::from_secs(3 * 3600));
    let started_minutes = both.sandbox("started", Duration::from_secs(10 * 60));

    let output = both.cli(&["cleanup", "all", "--aggressive", "--no-dry-run"]).await;
    output.assert_code(0);
    assert_left(&both.containers_left().await, &[&unowned], &[&running], &output);
    assert!(!both.org.server.exists(&started_hours), "{output}");
    assert!(both.org.server.exists(&started_minutes), "younger than an hour\n{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_docker_dry_run_removes_nothing_and_one_backend_can_be_left_out() {
    let both = Both::new("all-partial").await;
    let exited = both.container(ContainerSpec::exited(), true).await;
    let stopped = both.sandbox("stopped", 2 * DAY);

    let dry = both.cli(&["cleanup", "all", "--dry-run"]).await;
    dry.assert_code(0);
    assert!(dry.stdout.contains("containers: 1 would be removed (dry run)"), "{dry}");
    assert_left(&both.containers_left().await, &[&exited], &[], &dry);

    let daytona_only = both.cli(&["cleanup", "all", "--daytona-only", "--no-dry-run"]).await;
    daytona_only.assert_code(0);
    assert_left(&both.containers_left().await, &[&exited], &[], &daytona_only);
    assert!(!both.org.server.exists(&stopped), "{daytona_only}");
    assert!(daytona_only.stdout.contains("docker: skipped: left out by --daytona-only"), "{daytona_only}");

    let again = both.sandbox("stopped", 2 * DAY);
    let docker_only = both.cli(&["cleanup", "all", "--docker-only", "--no-dry-run"]).await;
    docker_only.assert_code(0);
    assert_left(&both.containers_left().await, &[], &[&exited], &docker_only);
    assert!(both.org.server.exists(&again), "--docker-only deleted a sandbox\n{docker_only}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_daytona_credentials_daytona_is_skipped_with_the_reason_and_docker_still_cleaned() {
    let both = Both::new("all-nokey").await;
    let exited = both.container(ContainerSpec::exited(), true).await;
    let mut command = both.org.command_with_key(&["cleanup", "all"], None);
    command.env("DOCKER_HOST", both.engine.docker_host());
    let output = crate::common::run_cli(command).await;
    output.assert_code(0);
    let skipped: Vec<&str> = output.stdout.lines().filter(|line| line.starts_with("daytona: skipped")).collect();
    assert_eq!(skipped.len(), 1, "{output}");
    assert!(skipped[0].contains("DAYTONA_API_KEY"), "{output}");
    assert_left(&both.containers_left().await, &[], &[&exited], &output);
    assert_eq!(both.org.server.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_both_backends_in_one_table_and_changes_nothing() {
    let both = Both::new("all-list").await;
    let exited = both.container(ContainerSpec::exited(), true).await;
    let stopped = both.sandbox("stopped", 2 * DAY);

    let table = both.cli(&["cleanup", "all", "--list"]).await;
    table.assert_code(0);
    assert!(table.stdout.starts_with("BACKEND"), "{table}");
    let row = |id: &str| table.stdout.lines().find(|line| line.contains(&id[..12.min(id.len())])).map(str::to_string);
    assert!(row(&exited).is_some_and(|line| line.starts_with("docker")), "{table}");
    assert!(row(&stopped).is_some_and(|line| line.starts_with("daytona")), "{table}");
    let json = both.cli(&["cleanup", "all", "--list", "--json", "--no-dry-run"]).await;
    json.assert_code(0);
    let listing: Value = json.json();
    assert_eq!(listing["containers"][0]["id"], exited.as_str(), "{listing}");
    assert_eq!(listing["sandboxes"][0]["id"], stopped.as_str(), "{listing}");
    assert_left(&both.containers_left().await, &[&exited], &[], &json);
    assert!(both.org.server.exists(&stopped));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_benchmark_files_selectors_say_what_else_benchmarks_own() {
    let both = Both::new("all-selectors").await;
    let key = format!("bench.owner.{}", both.scope.id());
    let claimed = both.scope.exited(&[(&key, "20200101-0000-old.task")]).await;
    let benchmark = both.scope.state_dir().join("bench.yaml");
    let yaml = format!(
        "name: b\nharness:\n  command: [true]\ndocker:\n  selectors:\n    - label: \"{key}={{run_id}}.{{task}}\"\n"
    );
    std::fs::write(&benchmark, yaml).unwrap();

    let without = both.cli(&["cleanup", "all", "--docker-only"]).await;
    without.assert_code(0);
    assert_left(&both.containers_left().await, &[&claimed], &[], &without);
    let with = both.cli(&["cleanup", "all", "--docker-only", "--benchmark", benchmark.to_str().unwrap()]).await;
    with.assert_code(0);
    assert_left(&both.containers_left().await, &[], &[&claimed], &with);
    let missing = both.cli(&["cleanup", "all", "--benchmark", "/nonexistent/bench.yaml"]).await;
    assert_ne!(missing.status.code(), Some(0), "{missing}");
    assert!(missing.stderr.contains("/nonexistent/bench.yaml"), "{missing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orphaned_run_is_recovered_first_even_its_running_containers() {
    let both = Both::new("all-recover").await;
    let harness = both.scope.state_dir().join("harness.sh");
    let script = format!(
        "#!/bin/sh\ndocker run -d --label {} {} sleep 3600 >/dev/null\necho ready\nsleep 3600\n",
        both.scope.label_arg(),
        crate::common::test_image()
    );
    std::fs::write(&harness, script).unwrap();
    let mut running = crate::common::Running::start(both.command(&["run", "--", "sh", harness.to_str().unwrap()]));
    running.wait_for("ready").await;
    running.send(nix::sys::signal::Signal::SIGKILL);
    running.child.wait().await.unwrap();
    let left = both.containers_left().await;
    assert_eq!(left.len(), 1, "the harness's container");

    let output = both.cli(&["cleanup", "all", "--docker-only"]).await;
    output.assert_code(0);
    assert!(output.stdout.contains("resource(s) removed"), "{output}");
    assert!(both.containers_left().await.is_empty(), "{output}");
    let status = both.cli(&["status", "--json"]).await;
    let status = status.json();
    assert_eq!(status["runs"][0]["state"], "finished", "{status}");
    assert_eq!(status["removal_success_rates"]["docker"], 1.0, "{status}");
    assert_eq!(status["oldest_owned_resource_age_seconds"], Value::Null, "nothing is owned any more\n{status}");
}
