//! `run --keep-failed` and `benchwarden claim`, against the real engine and
//! the Daytona contract server: what a failed task kept stays, is shown,
//! and goes with exactly the command the run printed (or the pre-run sweep
//! once old enough); what a task claimed goes with the task, on the host it
//! was claimed on. Every test ends by listing what is left.

use std::path::PathBuf;

use daytona_contract::ContractConfig;

use crate::common::daytona::{assert_gone, seed_with, Org};
use nix::sys::signal::Signal;

use crate::common::{self, run_cli, CliOutput, Running, ScopedEngine, TestScope, SCOPE_LABEL};

/// A benchmark whose harness runs `case "$1"` over the task bodies, in the
/// scope's state directory. `start_container` starts a container the
/// benchmark's selector claims; `BW` is the benchwarden binary.
fn fixture(scope: &TestScope, tasks: &[(&str, &str)]) -> PathBuf {
    let dir = scope.state_dir().join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    let mut script = format!(
        "#!/bin/sh\nBW={bw}\n\
         start_container() {{\n  \
           docker run -d --label {SCOPE_LABEL}={id} --label fixture.owner.{id}=\"$BENCHWARDEN_RUN_ID.$BENCHWARDEN_TASK_ID\" {image} sleep 3600 >/dev/null\n\
         }}\n\
         case \"$1\" in\n",
        bw = env!("CARGO_BIN_EXE_benchwarden"),
        id = scope.id(),
        image = common::test_image(),
    );
    for (name, body) in tasks {
        script.push_str(&format!("  {name})\n{body}\n    ;;\n"));
    }
    script.push_str("esac\n");
    std::fs::write(dir.join("harness.sh"), script).unwrap();
    let names: Vec<&str> = tasks.iter().map(|(name, _)| *name).collect();
    let yaml = format!(
        "name: keep\nharness:\n  command: [sh, harness.sh, \"{{task}}\"]\n  cwd: .\ntasks: [{}]\n\
         docker:\n  selectors:\n    - label: \"fixture.owner.{id}={{run_id}}.{{task}}\"\n",
        names.join(", "),
        id = scope.id(),
    );
    let benchmark = dir.join("benchmark.yaml");
    std::fs::write(&benchmark, yaml).unwrap();
    benchmark
}

/// `benchwarden ARGS` seeing the engine through `engine`, so a pre-run sweep
/// by a short age cannot take what other tests left on the host.
async fn scoped_cli(scope: &TestScope, engine: &ScopedEngine, args: &[&str]) -> CliOutput {
    let mut command = scope.benchwarden();
    command.args(args).env("DOCKER_HOST", engine.docker_host());
    run_cli(command).await
}

/// The command the run printed for removing what it kept, run as printed.
async fn run_printed_removal(output: &CliOutput) -> CliOutput {
    let line = output
        .stdout
        .lines()
        .find(|line| line.trim_start().starts_with("benchwarden recover --include-kept"))
        .unwrap_or_else(|| panic!("no removal command printed\n{output}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_benchwarden"));
    command.args(&words[1..]).env("NO_COLOR", "1").env_remove("BENCHWARDEN_STATE_DIR");
    run_cli(command).await
}

fn report_of(output: &CliOutput) -> serde_json::Value {
    let path = output.stderr.lines().find_map(|line| line.strip_prefix("report: ")).unwrap();
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn task_report<'a>(report: &'a serde_json::Value, task: &str) -> &'a serde_json::Value {
    report["tasks"].as_array().unwrap().iter().find(|entry| entry["task"] == task).unwrap()
}

fn run_id(output: &CliOutput) -> String {
    report_of(output)["run_id"].as_str().unwrap().to_string()
}

/// The ids of containers left whose fixture owner label names `run_id`.
async fn left_of_run(scope: &TestScope, run_id: &str) -> Vec<String> {
    let owner = format!("fixture.owner.{}", scope.id());
    let left = scope.leftovers().await;
    left.containers
        .iter()
        .filter(|container| container.labels.get(&owner).is_some_and(|value| value.starts_with(run_id)))
        .map(|container| container.id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_failed_keeps_failed_and_timed_out_tasks_and_the_printed_command_removes_exactly_them() {
    let scope = TestScope::new("keep-failed").await;
    let benchmark = fixture(
        &scope,
        &[
            ("passes", "start_container; exit 0"),
            ("fails", "start_container; exit 1"),
            ("hangs", "start_container; while :; do sleep 1; done"),
        ],
    );
    let benchmark = benchmark.to_str().unwrap();
    let first = scope.cli(&["run", benchmark, "--keep-failed", "-j", "3", "--timeout", "4s", "--grace", "1s"]).await;
    first.assert_code(1);
    let first_run = run_id(&first);
    assert_eq!(left_of_run(&scope, &first_run).await.len(), 2, "fails and hangs keep theirs\n{first}");
    assert!(first.stdout.contains("0 leaked, 2 kept (--keep-failed)"), "{first}");
    let report = report_of(&first);
    for (task, kept) in [("passes", 0), ("fails", 1), ("hangs", 1)] {
        let fates = &task_report(&report, task)["resources"];
        assert_eq!((fates["kept"].as_u64(), fates["leaked"].as_u64()), (Some(kept), Some(0)), "{task}: {report}");
    }

    let second = scope.cli(&["run", benchmark, "--tasks", "fails", "--keep-failed", "--skip-cleanup"]).await;
    second.assert_code(1);
    let second_run = run_id(&second);
    assert_eq!(left_of_run(&scope, &second_run).await.len(), 1, "{second}");

    let status = scope.cli(&["status", "--json"]).await.json();
    let kept = |run: &str| {
        let entry = status["runs"].as_array().unwrap().iter().find(|entry| entry["id"] == run).unwrap();
        (entry["kept_resources"].as_array().unwrap().len(), entry["live_resources"].as_array().unwrap().len())
    };
    assert_eq!((kept(&first_run), kept(&second_run)), ((2, 0), (1, 0)), "{status}");
    let text = scope.cli(&["status"]).await;
    assert!(text.stdout.contains(&format!("run {first_run} keeps (--keep-failed):")), "{text}");

    // Plain recovery never takes a kept resource.
    let recover = scope.cli(&["recover"]).await;
    recover.assert_code(0);
    assert_eq!(scope.leftovers().await.containers.len(), 3, "{recover}");

    // The first run's command takes the first run's, and only those.
    let removal = run_printed_removal(&first).await;
    removal.assert_code(0);
    assert_eq!(left_of_run(&scope, &first_run).await, Vec::<String>::new(), "{removal}");
    assert_eq!(left_of_run(&scope, &second_run).await.len(), 1, "another run's kept container went\n{removal}");
    let removal = run_printed_removal(&second).await;
    removal.assert_code(0);
    assert!(scope.leftovers().await.is_empty(), "{removal}");
    let status = scope.cli(&["status", "--json"]).await.json();
    assert!(status["runs"].as_array().unwrap().iter().all(|run| run["kept_resources"] == serde_json::json!([])));
}

#[tokio::test(flavor = "multi_thread")]
async fn recovering_a_killed_run_spares_what_it_kept_until_include_kept() {
    let scope = TestScope::new("keep-kill9").await;
    let benchmark = fixture(
        &scope,
        &[("fails", "start_container; exit 1"), ("waits", "start_container; echo ready; while :; do sleep 1; done")],
    );
    let mut command = scope.benchwarden();
    command.args(["run", benchmark.to_str().unwrap(), "--keep-failed", "-j", "1"]);
    let mut running = Running::start(command);
    running.wait_for("ready").await;
    running.send(Signal::SIGKILL);
    running.child.wait().await.unwrap();
    assert_eq!(scope.leftovers().await.containers.len(), 2);

    let recover = scope.cli(&["recover"]).await;
    recover.assert_code(0);
    let owner = format!("fixture.owner.{}", scope.id());
    let left = scope.leftovers().await;
    let tasks: Vec<&str> =
        left.containers.iter().filter_map(|container| container.labels.get(&owner)?.rsplit('.').next()).collect();
    assert_eq!(tasks, ["fails"], "recover took the kept container, or left the other\n{recover}");
    let everything = scope.cli(&["recover", "--include-kept"]).await;
    everything.assert_code(0);
    assert!(scope.leftovers().await.is_empty(), "{everything}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_host_that_cannot_be_reached_at_teardown_leaves_the_container_leaked_not_forgotten() {
    let scope = TestScope::new("claim-host-gone").await;
    let other_host = ScopedEngine::start(&scope.label_arg());
    let body = format!(
        "c=$(DOCKER_HOST={host} docker run -d --label {SCOPE_LABEL}={id} {image} sleep 3600) || exit 9\n\
         DOCKER_HOST={host} \"$BW\" claim --docker \"$c\" || exit 8\n\
         echo ready; while :; do sleep 1; done",
        host = other_host.docker_host(),
        id = scope.id(),
        image = common::test_image(),
    );
    let benchmark = fixture(&scope, &[("remote", &body)]);
    let mut command = scope.benchwarden();
    command.args(["run", benchmark.to_str().unwrap(), "-j", "1", "--grace", "1s", "--retries", "0"]);
    let mut running = Running::start(command);
    running.wait_for("ready").await;
    // The host goes away: a teardown that used the run's own engine would still remove the container.
    drop(other_host);
    running.send(Signal::SIGINT);
    let output = running.finish().await;
    output.assert_code(3);
    let left = scope.leftovers().await.container_ids();
    assert_eq!(left.len(), 1, "{output}");
    assert!(output.stdout.contains("remote: leaked container"), "{output}");
    for container in left {
        common::docker_cli(&["rm", "-f", &container]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pre_run_sweep_takes_kept_resources_only_once_older_than_the_cleanup_age() {
    let scope = TestScope::new("keep-age").await;
    let engine = ScopedEngine::start(&scope.label_arg());
    // A container that has exited when the task ends: `before_run.states` takes such a one at any age.
    let exits = format!(
        "c=$(docker run -d --label {SCOPE_LABEL}={id} --label fixture.owner.{id}=\"$BENCHWARDEN_RUN_ID.$BENCHWARDEN_TASK_ID\" {image} true)\n\
         docker wait \"$c\" >/dev/null; exit 1",
        id = scope.id(),
        image = common::test_image()
    );
    let benchmark = fixture(&scope, &[("fails", &exits), ("noop", "exit 0")]);
    let yaml = std::fs::read_to_string(&benchmark).unwrap() + "cleanup:\n  before_run:\n    states: [exited]\n";
    std::fs::write(&benchmark, yaml).unwrap();
    let benchmark = benchmark.to_str().unwrap();
    let kept = scoped_cli(&scope, &engine, &["run", benchmark, "--tasks", "fails", "--keep-failed"]).await;
    kept.assert_code(1);
    assert_eq!(scope.leftovers().await.containers.len(), 1, "{kept}");
    // Exited and claimed, so the state rule alone would take it at any age: kept is kept.
    let young = scoped_cli(&scope, &engine, &["run", benchmark, "--tasks", "noop", "--cleanup-age", "1h"]).await;
    young.assert_code(0);
    assert_eq!(scope.leftovers().await.containers.len(), 1, "a young kept container went\n{young}");
    let old = scoped_cli(&scope, &engine, &["run", benchmark, "--tasks", "noop", "--cleanup-age", "0s"]).await;
    old.assert_code(0);
    assert!(scope.leftovers().await.is_empty(), "{old}");
    let status = scope.cli(&["status", "--json"]).await.json();
    assert!(status["runs"].as_array().unwrap().iter().all(|run| run["kept_resources"] == serde_json::json!([])));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_made_behind_the_proxy_and_claimed_goes_with_the_task() {
    let scope = TestScope::new("claim-docker").await;
    let (id, image) = (scope.id().to_string(), common::test_image());
    // Straight to the engine, past the task's proxy: no owner label, no selector's label.
    let direct = format!("docker -H unix://{} run -d --label {SCOPE_LABEL}={id} {image} sleep 3600", engine_socket());
    let claimed = format!("c=$({direct}) || exit 9\n\"$BW\" claim --docker \"$c\" || exit 8");
    let unclaimed = format!("{direct} >/dev/null || exit 9");
    let benchmark = fixture(&scope, &[("claimed", &claimed), ("unclaimed", &unclaimed)]);
    let output = scope.cli(&["run", benchmark.to_str().unwrap(), "-j", "2"]).await;
    output.assert_code(0);
    let left = scope.leftovers().await.container_ids();
    // The unclaimed one proves the claim is what found the other: nothing else would have.
    assert_eq!(left.len(), 1, "{output}");
    let report = report_of(&output);
    assert_eq!(task_report(&report, "claimed")["resources"]["removed_by_benchwarden"], 1, "{report}");
    assert_eq!(task_report(&report, "unclaimed")["resources"]["created"], 0, "{report}");
    for container in left {
        common::docker_cli(&["rm", "-f", &container]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_claimed_on_another_docker_host_is_removed_through_that_host() {
    let scope = TestScope::new("claim-host").await;
    // Another address for the engine: benchwarden's own engine is the default socket.
    let other_host = ScopedEngine::start(&scope.label_arg());
    let image = common::test_image();
    let body = format!(
        "export DOCKER_HOST={host}\n\
         c=$(docker run -d --label {SCOPE_LABEL}={id} {image} sleep 3600) || exit 9\n\
         \"$BW\" claim --docker \"$c\" || exit 8",
        host = other_host.docker_host(),
        id = scope.id(),
    );
    let benchmark = fixture(&scope, &[("remote", &body)]);
    let output = scope.cli(&["run", benchmark.to_str().unwrap()]).await;
    output.assert_code(0);
    assert!(scope.leftovers().await.is_empty(), "{output}");
    let ledger = rusqlite::Connection::open(scope.state_dir().join("ledger.sqlite")).unwrap();
    let endpoint: String = ledger
        .query_row("SELECT endpoint FROM resources WHERE task_id = 'remote' AND kind = 'container'", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(endpoint, other_host.docker_host(), "the claim recorded the host it named");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_made_around_the_proxy_and_claimed_is_deleted_with_the_task() {
    let org = Org::start(ContractConfig::default()).await;
    let claimed = org.seed(seed_with(&[]));
    let unclaimed = org.seed(seed_with(&[]));
    let dir = org.state_dir().join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    let benchmark = dir.join("benchmark.yaml");
    let yaml = format!(
        "name: claim\nharness:\n  command: [\"{bw}\", claim, --daytona, \"{claimed}\"]\n\
         docker:\n  enabled: false\ndaytona:\n  enabled: true\n",
        bw = env!("CARGO_BIN_EXE_benchwarden"),
    );
    std::fs::write(&benchmark, yaml).unwrap();
    let output = org.cli(&["run", benchmark.to_str().unwrap()]).await;
    output.assert_code(0);
    assert_gone(&org, std::slice::from_ref(&claimed), &output);
    assert!(org.server.exists(&unclaimed), "a sandbox nobody claimed was deleted\n{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_for_an_unknown_run_or_task_or_an_ended_run_is_exit_2() {
    let scope = TestScope::new("claim-unknown").await;
    let benchmark =
        fixture(&scope, &[("wrong-task", "BENCHWARDEN_TASK_ID=nope \"$BW\" claim --docker some-container; exit $?")]);
    let output = scope.cli(&["run", benchmark.to_str().unwrap()]).await;
    output.assert_code(1);
    let run = run_id(&output);
    let log = std::fs::read_to_string(scope.state_dir().join("runs").join(&run).join("wrong-task.log")).unwrap();
    assert!(log.contains("has no task \"nope\""), "{log}");
    let exit = task_report(&report_of(&output), "wrong-task")["exit_code"].clone();
    assert_eq!(exit, 2, "{output}");

    let claim = |run: &str, task: &str, args: &[&str]| {
        let mut command = scope.benchwarden();
        command.arg("claim").args(args).env("BENCHWARDEN_RUN_ID", run).env("BENCHWARDEN_TASK_ID", task);
        run_cli(command)
    };
    let unknown = claim("20200101-0000-nope", "wrong-task", &["--docker", "x"]).await;
    unknown.assert_code(2);
    assert!(unknown.stderr.contains("no run 20200101-0000-nope in the ledger"), "{unknown}");
    let ended = claim(&run, "wrong-task", &["--daytona", "abc"]).await;
    ended.assert_code(2);
    assert!(ended.stderr.contains("has ended"), "{ended}");
    let malformed = claim(&run, "wrong-task", &["--docker", "a/b"]).await;
    malformed.assert_code(2);
    assert!(malformed.stderr.contains("is not a container id or name"), "{malformed}");
    let mut outside = scope.benchwarden();
    outside.args(["claim", "--docker", "x"]).env_remove("BENCHWARDEN_RUN_ID").env_remove("BENCHWARDEN_TASK_ID");
    let outside = run_cli(outside).await;
    outside.assert_code(2);
    assert!(outside.stderr.contains("BENCHWARDEN_RUN_ID is not set"), "{outside}");
    assert!(scope.leftovers().await.is_empty());
}

/// The engine's own socket, as the tests reach it.
fn engine_socket() -> String {
    let address = std::env::var("DOCKER_HOST").ok().filter(|host| !host.is_empty());
    let address = address.unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
    address
        .strip_prefix("unix://")
        .unwrap_or_else(|| panic!("a unix DOCKER_HOST is needed here: {address}"))
        .to_string()
}
