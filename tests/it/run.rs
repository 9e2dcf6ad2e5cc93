//! `benchwarden run` against the real engine, with fixture harnesses that
//! exit, fail, hang, ignore SIGTERM and double-fork, and with signals sent to
//! the real binary. Every test ends by listing: nothing with its label is left.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::{self, run_cli, CliOutput, Running, ScopedEngine, TestScope, SCOPE_LABEL};

/// A benchmark file and its harness script, written for one test. The
/// harness runs `case "$1"` over the given task bodies; `start_container`
/// starts a container claimed by the benchmark's selector and labelled with
/// the test scope, and `create_network` makes the task's network
/// (`<run id>-<task>`), labelled alike.
pub(crate) struct Fixture {
    benchmark: PathBuf,
}

pub(crate) fn fixture(scope: &TestScope, tasks: &[(&str, &str)], extra_yaml: &str) -> Fixture {
    let dir = scope.state_dir().join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    let mut script = format!(
        "#!/bin/sh\n\
         start_container() {{\n  \
           docker run -d {labels} {image} sleep 3600 >/dev/null\n\
         }}\n\
         create_network() {{\n  \
           docker network create {labels} \"$BENCHWARDEN_RUN_ID-$BENCHWARDEN_TASK_ID\" >/dev/null\n\
         }}\n\
         case \"$1\" in\n",
        labels = claimed_labels(scope),
        image = common::test_image(),
    );
    for (name, body) in tasks {
        script.push_str(&format!("  {name})\n{body}\n    ;;\n"));
    }
    script.push_str("esac\n");
    std::fs::write(dir.join("harness.sh"), script).unwrap();
    let names: Vec<&str> = tasks.iter().map(|(name, _)| *name).collect();
    let yaml = format!(
        "name: fixture\n\
         harness:\n  command: [sh, harness.sh, \"{{task}}\"]\n  cwd: .\n\
         tasks: [{}]\n\
         docker:\n  selectors:\n    - label: \"fixture.owner.{id}={{run_id}}.{{task}}\"\n{extra_yaml}",
        names.join(", "),
        id = scope.id(),
    );
    let benchmark = dir.join("benchmark.yaml");
    std::fs::write(&benchmark, yaml).unwrap();
    Fixture { benchmark }
}

/// The `--label` arguments of what a fixture harness creates: the test
/// scope's label, and the one the fixture benchmark's selector claims.
pub(crate) fn claimed_labels(scope: &TestScope) -> String {
    format!(
        "--label {SCOPE_LABEL}={id} --label fixture.owner.{id}=\"$BENCHWARDEN_RUN_ID.$BENCHWARDEN_TASK_ID\"",
        id = scope.id()
    )
}

pub(crate) fn path(fixture: &Fixture) -> &str {
    fixture.benchmark.to_str().unwrap()
}

/// The JSON report a run wrote (its path is on stderr).
#[track_caller]
pub(crate) fn report_json(output: &CliOutput) -> serde_json::Value {
    let path =
        output.stderr.lines().find_map(|line| line.strip_prefix("report: ")).unwrap_or_else(|| panic!("{output}"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[track_caller]
fn assert_nothing_left(left: &common::Leftovers, context: &CliOutput) {
    assert!(left.is_empty(), "resources left: {left:?}\n{context}");
}

/// Processes whose environment says they belong to a run in this scope's state dir.
/// The proxy socket directories of `run_id`, wherever they went (the state
/// directory's `sockets/`, or the temp directory's when that path is too long).
fn socket_directories(scope: &TestScope, run_id: &str) -> Vec<PathBuf> {
    let roots = [scope.state_dir().join("sockets"), std::env::temp_dir().join("benchwarden-sockets")];
    let prefix = format!("{run_id}.");
    roots
        .iter()
        .filter_map(|root| std::fs::read_dir(root).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect()
}

pub(crate) fn fixture_processes(scope: &TestScope) -> Vec<u32> {
    let marker = scope.state_dir().join("fixture").join("harness.sh");
    let marker = marker.to_str().unwrap().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !zombie
            && (cmdline.contains(&marker) || (cmdline.contains("harness.sh") && cwd.starts_with(scope.state_dir())))
        {
            found.push(pid);
        }
    }
    found
}

/// `benchwarden ARGS` seeing the engine through `engine`: a pre-run sweep by
/// a short age must not take what other tests (or people) left on the host.
async fn scoped_cli(scope: &TestScope, engine: &ScopedEngine, args: &[&str]) -> CliOutput {
    let mut command = scope.benchwarden();
    command.args(args).env("DOCKER_HOST", engine.docker_host());
    run_cli(command).await
}

/// Starts `benchwarden run` and waits until its harness says `ready`.
async fn start_until_ready(scope: &TestScope, args: &[&str]) -> Running {
    let mut command = scope.benchwarden();
    command.args(args);
    let mut running = Running::start(command);
    running.wait_for("ready").await;
    running
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_ending_is_torn_down() {
    let scope = TestScope::new("run-endings").await;
    let fixture = fixture(
        &scope,
        &[
            ("passes", "start_container; start_container; exit 0"),
            ("fails", "start_container; echo broken >&2; exit 1"),
            ("hangs", "start_container; while :; do sleep 1; done"),
            ("stubborn", "trap '' TERM; start_container; while :; do sleep 1; done"),
            (
                "double-fork",
                "( ( exec >/dev/null 2>&1 </dev/null; while :; do start_container; sleep 0.2; done ) & ) &\n\
                 start_container; exit 0",
            ),
        ],
        "",
    );
    let output = scope.cli(&["run", path(&fixture), "-j", "5", "--timeout", "12s", "--grace", "1s"]).await;
    output.assert_code(1);
    let summary = &output.stdout;
    for (task, result) in [
        ("passes", "passed"),
        ("fails", "failed"),
        ("hangs", "timed out"),
        ("stubborn", "timed out"),
        ("double-fork", "passed"),
    ] {
        let line = summary.lines().find(|line| line.starts_with(task)).unwrap_or_else(|| panic!("{output}"));
        assert!(line.contains(result), "{task}: {line}\n{output}");
    }
    assert!(summary.contains("0 leaked"), "{output}");
    assert_nothing_left(&scope.leftovers().await, &output);
    assert_eq!(fixture_processes(&scope), Vec::<u32>::new(), "harness processes survived\n{output}");
    // The report says the same as the summary.
    let report_path = output.stderr.lines().find_map(|line| line.strip_prefix("report: ")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report_path).unwrap()).unwrap();
    assert_eq!(report["exit_code"], 1);
    assert_eq!(report["tasks"].as_array().unwrap().len(), 5);
    assert_eq!(report["tasks"][0]["resources_found"], 2, "{report}");
}

/// The summary row of `task`, split into cells.
fn summary_cells(output: &CliOutput, task: &str) -> Vec<String> {
    let line = output.stdout.lines().find(|line| line.starts_with(task)).unwrap_or_else(|| panic!("{output}"));
    line.split_whitespace().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_tells_what_the_harness_removed_itself_from_what_benchwarden_removed() {
    let scope = TestScope::new("run-fates").await;
    let (labels, image) = (claimed_labels(&scope), common::test_image());
    // Two containers and two networks; the harness removes one of each itself.
    let tidy = format!(
        "gone=$(docker run -d {labels} {image} sleep 3600)\n\
         start_container\n\
         docker network create {labels} \"$BENCHWARDEN_RUN_ID-kept\" >/dev/null\n\
         docker network create {labels} \"$BENCHWARDEN_RUN_ID-gone\" >/dev/null\n\
         docker rm -f \"$gone\" >/dev/null\n\
         docker network rm \"$BENCHWARDEN_RUN_ID-gone\" >/dev/null"
    );
    let fixture = fixture(&scope, &[("tidy", tidy.as_str())], "");
    let output = scope.cli(&["run", path(&fixture)]).await;
    output.assert_code(0);
    // CREATED, BY-HARNESS, REMOVED, LEAKED: each create recorded by the proxy as it happened.
    let cells = summary_cells(&output, "tidy");
    assert_eq!(cells[cells.len() - 5..cells.len() - 1], ["4", "2", "2", "0"], "{output}");
    assert!(output.stdout.contains("(4 created, 2 removed by the harness itself)"), "{output}");
    assert_nothing_left(&scope.leftovers().await, &output);
    let report_path = output.stderr.lines().find_map(|line| line.strip_prefix("report: ")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report_path).unwrap()).unwrap();
    let fates = &report["tasks"][0]["resources"];
    assert_eq!(fates["created"], 4, "{report}");
    assert_eq!(fates["removed_by_harness"], 2, "{report}");
    assert_eq!(fates["removed_by_benchwarden"], 2, "{report}");
    assert_eq!(fates["leaked"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_proxy_the_watcher_and_the_selectors_find_everything() {
    let scope = TestScope::new("run-no-proxy").await;
    let (labels, image) = (claimed_labels(&scope), common::test_image());
    // The harness's own DOCKER_HOST is the engine's: nothing is labelled by benchwarden.
    let body = format!(
        "case \"$DOCKER_HOST\" in *benchwarden*|*sockets*) echo \"proxied: $DOCKER_HOST\" >&2; exit 9;; esac\n\
         gone=$(docker run -d {labels} {image} sleep 3600)\n\
         start_container\n\
         docker network create {labels} \"$BENCHWARDEN_RUN_ID-kept\" >/dev/null\n\
         docker volume create {labels} \"$BENCHWARDEN_RUN_ID-kept\" >/dev/null\n\
         docker rm -f \"$gone\" >/dev/null"
    );
    let fixture = fixture(&scope, &[("bare", body.as_str())], "  proxy: false\n");
    let output = scope.cli(&["run", path(&fixture)]).await;
    output.assert_code(0);
    // The removed container was recorded by the watcher when it was created, before the harness removed it.
    let cells = summary_cells(&output, "bare");
    assert_eq!(cells[cells.len() - 5..cells.len() - 1], ["4", "1", "3", "0"], "{output}");
    assert_nothing_left(&scope.leftovers().await, &output);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_sigint_stops_tears_down_and_exits_130() {
    let scope = TestScope::new("run-sigint").await;
    let fixture =
        fixture(&scope, &[("waits", "start_container; start_container; echo ready; while :; do sleep 1; done")], "");
    let running = start_until_ready(&scope, &["run", path(&fixture), "-j", "1", "--grace", "5s"]).await;
    assert_eq!(scope.leftovers().await.containers.len(), 2, "the harness made two containers");
    running.send(Signal::SIGINT);
    let output = running.finish().await;
    output.assert_code(130);
    assert!(output.stdout.contains("interrupted"), "{output}");
    assert_nothing_left(&scope.leftovers().await, &output);
    assert_eq!(fixture_processes(&scope), Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_143() {
    let scope = TestScope::new("run-sigterm").await;
    let fixture = fixture(&scope, &[("waits", "start_container; echo ready; while :; do sleep 1; done")], "");
    let running = start_until_ready(&scope, &["run", path(&fixture), "-j", "1"]).await;
    running.send(Signal::SIGTERM);
    let output = running.finish().await;
    output.assert_code(143);
    assert_nothing_left(&scope.leftovers().await, &output);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigint_kills_a_harness_that_ignores_the_first() {
    let scope = TestScope::new("run-sigint2").await;
    // The harness ignores SIGINT and SIGTERM: only SIGKILL ends it, and the grace is long.
    let fixture = fixture(
        &scope,
        &[("stubborn", "trap '' INT TERM; start_container; echo ready; while :; do sleep 1; done")],
        "",
    );
    let started = Instant::now();
    let mut running = start_until_ready(&scope, &["run", path(&fixture), "-j", "1", "--grace", "300s"]).await;
    running.send(Signal::SIGINT);
    // Signals sent back to back may merge into one; a person's second press comes after the first took hold.
    running.wait_for("SIGINT: starting no new tasks").await;
    running.send(Signal::SIGINT);
    let output = running.finish().await;
    output.assert_code(130);
    assert!(started.elapsed() < Duration::from_secs(120), "the second SIGINT did not cut the 300s grace short");
    assert_nothing_left(&scope.leftovers().await, &output);
    assert_eq!(fixture_processes(&scope), Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn after_sigkill_of_benchwarden_recover_removes_everything() {
    let scope = TestScope::new("run-kill9").await;
    let fixture = fixture(
        &scope,
        &[("busy", "start_container; start_container; echo ready; while :; do start_container; sleep 0.3; done")],
        "",
    );
    let mut running = start_until_ready(&scope, &["run", path(&fixture), "-j", "1"]).await;
    running.send(Signal::SIGKILL);
    running.child.wait().await.unwrap();
    assert!(scope.leftovers().await.containers.len() >= 2);

    let status = scope.cli(&["status"]).await;
    status.assert_code(0);
    assert!(status.stdout.contains("orphaned"), "{status}");
    let run_id = scope.cli(&["status", "--json"]).await.json()["runs"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(socket_directories(&scope, &run_id).len(), 1, "the killed run's proxy socket directory");

    let dry = scope.cli(&["recover", "--dry-run"]).await;
    dry.assert_code(0);
    assert!(dry.stdout.contains("would be removed"), "{dry}");
    assert!(!scope.leftovers().await.is_empty(), "a dry run removed something");
    let harness = fixture_processes(&scope);
    assert!(!harness.is_empty(), "the harness should outlive benchwarden's kill -9");
    for pid in &harness {
        assert!(dry.stdout.contains(&format!("would kill: pid {pid} ")), "pid {pid} not listed:\n{dry}");
    }
    assert_eq!(fixture_processes(&scope), harness, "a dry run killed something");
    assert_eq!(socket_directories(&scope, &run_id).len(), 1, "a dry run removed a socket directory");
    assert!(dry.stderr.contains("would remove the proxy socket directory"), "{dry}");

    let recovered = scope.cli(&["recover"]).await;
    recovered.assert_code(0);
    assert_nothing_left(&scope.leftovers().await, &recovered);
    assert_eq!(fixture_processes(&scope), Vec::<u32>::new(), "recover left the harness running");
    assert_eq!(socket_directories(&scope, &run_id), Vec::<PathBuf>::new(), "recover left the stale socket directory");
    let again = scope.cli(&["recover"]).await;
    again.assert_code(0);
    assert!(again.stdout.contains("no orphaned runs"), "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_run_finishes_a_killed_run_and_removes_its_socket_directory() {
    let scope = TestScope::new("run-kill9-next").await;
    let tasks = [("busy", "start_container; echo ready; while :; do sleep 1; done"), ("noop", "exit 0")];
    let fixture = fixture(&scope, &tasks, "");
    let mut running = start_until_ready(&scope, &["run", path(&fixture), "--tasks", "busy"]).await;
    let run_id = scope.cli(&["status", "--json"]).await.json()["runs"][0]["id"].as_str().unwrap().to_string();
    running.send(Signal::SIGKILL);
    running.child.wait().await.unwrap();
    assert_eq!(socket_directories(&scope, &run_id).len(), 1, "the killed run's proxy socket directory");

    let next = scope.cli(&["run", path(&fixture), "--tasks", "noop"]).await;
    next.assert_code(0);
    assert!(next.stderr.contains("recovered 1 orphaned run(s) before starting"), "{next}");
    assert!(next.stderr.contains("removed the proxy socket directory"), "{next}");
    assert_eq!(socket_directories(&scope, &run_id), Vec::<PathBuf>::new(), "{next}");
    assert_nothing_left(&scope.leftovers().await, &next);
    assert_eq!(fixture_processes(&scope), Vec::<u32>::new(), "the killed run's harness survived\n{next}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pre_run_sweep_takes_old_claimed_leftovers_unless_skipped() {
    let scope = TestScope::new("run-sweep").await;
    let engine = ScopedEngine::start(&scope.label_arg());
    let fixture = fixture(&scope, &[("noop", "exit 0")], "");
    // A leftover of an earlier run that died without a ledger entry: claimed by the selector.
    let owner_key = format!("fixture.owner.{}", scope.id());
    let leftover = scope.running(&[(owner_key.as_str(), "20200101-0000-gone.noop")]).await;
    let unclaimed = scope.running(&[("fixture.other", "x")]).await;

    let skipped = scoped_cli(&scope, &engine, &["run", path(&fixture), "--skip-cleanup", "--cleanup-age", "0s"]).await;
    skipped.assert_code(0);
    assert!(scope.leftovers().await.container_ids().contains(&leftover), "--skip-cleanup removed a leftover");

    let young = scoped_cli(&scope, &engine, &["run", path(&fixture), "--cleanup-days", "1"]).await;
    young.assert_code(0);
    assert!(scope.leftovers().await.container_ids().contains(&leftover), "--cleanup-days 1 removed a young leftover");

    let swept = scoped_cli(&scope, &engine, &["run", path(&fixture), "--cleanup-age", "0s"]).await;
    swept.assert_code(0);
    let left = scope.leftovers().await.container_ids();
    assert!(!left.contains(&leftover), "the old leftover survived the sweep\n{swept}");
    assert!(left.contains(&unclaimed), "the sweep removed a container nobody claimed");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_never_touches_a_live_runs_containers() {
    let scope = TestScope::new("run-live").await;
    let fixture =
        fixture(&scope, &[("waits", "start_container; echo ready; while :; do sleep 1; done"), ("noop", "exit 0")], "");
    let first = start_until_ready(&scope, &["run", path(&fixture), "--tasks", "waits", "-j", "1"]).await;
    let before = scope.leftovers().await.container_ids();
    assert_eq!(before.len(), 1);

    let engine = ScopedEngine::start(&scope.label_arg());
    let second = scoped_cli(&scope, &engine, &["run", path(&fixture), "--tasks", "noop", "--cleanup-age", "0s"]).await;
    second.assert_code(0);
    assert_eq!(
        scope.leftovers().await.container_ids(),
        before,
        "the second run's sweep touched the first run's container"
    );

    first.send(Signal::SIGINT);
    let output = first.finish().await;
    output.assert_code(130);
    assert_nothing_left(&scope.leftovers().await, &output);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_yaml_is_exit_2_with_line_and_column() {
    let scope = TestScope::new("run-yaml").await;
    let file = scope.state_dir().join("bad.yaml");
    std::fs::write(&file, "name: bad\nharness:\n  command: [true]\n  timout: 5s\n").unwrap();
    let output = scope.cli(&["run", file.to_str().unwrap()]).await;
    output.assert_code(2);
    assert!(output.stderr.contains("line 4, column 3"), "{output}");
    assert!(output.stderr.contains("timout"), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_task_is_exit_2_listing_the_valid_names() {
    let scope = TestScope::new("run-tasks").await;
    let fixture = fixture(&scope, &[("alpha", "exit 0"), ("beta", "exit 0")], "");
    let output = scope.cli(&["run", path(&fixture), "--tasks", "nope"]).await;
    output.assert_code(2);
    assert!(output.stderr.contains("\"nope\"") && output.stderr.contains("alpha, beta"), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_harness_fails_its_task_and_the_others_run() {
    let scope = TestScope::new("run-missing").await;
    let dir = scope.state_dir().join("fixture-missing");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  good) docker run -d --label {SCOPE_LABEL}={id} --label fixture.owner.{id}=\"$BENCHWARDEN_RUN_ID.$BENCHWARDEN_TASK_ID\" {image} sleep 3600 >/dev/null ;;\nesac\n",
        id = scope.id(),
        image = common::test_image()
    );
    std::fs::write(dir.join("good.sh"), script).unwrap();
    std::fs::set_permissions(dir.join("good.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let yaml = format!(
        "name: missing\nharness:\n  command: [\"./{{task}}.sh\", \"{{task}}\"]\n  cwd: .\ntasks: [good, absent]\n\
         docker:\n  selectors:\n    - label: \"fixture.owner.{id}={{run_id}}.{{task}}\"\n",
        id = scope.id()
    );
    let file = dir.join("benchmark.yaml");
    std::fs::write(&file, yaml).unwrap();
    let output = scope.cli(&["run", file.to_str().unwrap(), "-j", "2"]).await;
    output.assert_code(1);
    let good = output.stdout.lines().find(|line| line.starts_with("good")).unwrap();
    assert!(good.contains("passed") && good.contains(" 1 "), "{output}");
    assert!(output.stdout.contains("cannot start harness"), "{output}");
    assert!(output.stdout.contains("absent.sh"), "{output}");
    assert_nothing_left(&scope.leftovers().await, &output);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ad_hoc_command_is_one_task_named_main() {
    let scope = TestScope::new("run-adhoc").await;
    let ok = scope
        .cli(&["run", "--", "sh", "-c", "test -n \"$BENCHWARDEN_RUN_ID\" && test \"$BENCHWARDEN_TASK_ID\" = main"])
        .await;
    ok.assert_code(0);
    assert!(ok.stdout.lines().any(|line| line.starts_with("main") && line.contains("passed")), "{ok}");
    let failing = scope.cli(&["run", "--", "sh", "-c", "exit 7"]).await;
    failing.assert_code(1);
    assert!(failing.stdout.contains(" 7 "), "{failing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_smoke_benchmark_leaves_nothing() {
    let scope = TestScope::new("run-smoke").await;
    let output = scope.cli(&["run"]).await;
    output.assert_code(1);
    let run_id = output
        .stderr
        .lines()
        .find_map(|line| line.split(" INFO run ").nth(1)?.split(':').next())
        .unwrap_or_else(|| panic!("no run id in the log\n{output}"))
        .trim()
        .to_string();
    for (task, result) in
        [("two-containers", "passed"), ("fails", "failed"), ("hangs", "timed out"), ("double-fork", "passed")]
    {
        let line = output.stdout.lines().find(|line| line.starts_with(task)).unwrap_or_else(|| panic!("{output}"));
        assert!(line.contains(result), "{line}\n{output}");
    }
    let left = common::leftovers(scope.docker(), &["bench.smoke.task".to_string()]).await.unwrap();
    let ours: Vec<_> = left
        .containers
        .iter()
        .filter(|container| container.labels.get("bench.smoke.owner").is_some_and(|owner| owner.starts_with(&run_id)))
        .collect();
    assert!(ours.is_empty(), "smoke containers left: {ours:?}\n{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_third_sigint_exits_at_once_and_recover_finishes_the_job() {
    let scope = TestScope::new("run-sigint3").await;
    // A graceful stop of 120 s makes teardown slow: the container's PID 1 (sleep) ignores SIGTERM.
    let fixture = fixture(
        &scope,
        &[("slow", "trap '' INT TERM; start_container; echo ready; while :; do sleep 1; done")],
        "  stop_timeout: 120s\n",
    );
    let started = Instant::now();
    let mut running = start_until_ready(&scope, &["run", path(&fixture), "-j", "1", "--grace", "300s"]).await;
    running.send(Signal::SIGINT);
    running.wait_for("SIGINT: starting no new tasks").await;
    running.send(Signal::SIGINT);
    running.wait_for("killing every harness now").await;
    running.wait_for("task slow: tearing down").await;
    running.send(Signal::SIGINT);
    let output = running.finish().await;
    output.assert_code(130);
    assert!(started.elapsed() < Duration::from_secs(100), "the third SIGINT did not exit at once");
    assert!(output.stderr.contains("benchwarden recover --state-dir"), "{output}");
    assert!(!scope.leftovers().await.is_empty(), "teardown was expected to be cut short");

    let recovered = scope.cli(&["recover", "--json"]).await;
    recovered.assert_code(0);
    assert_nothing_left(&scope.leftovers().await, &recovered);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_harness_that_exits_at_once_keeps_its_exit_status() {
    // The orphan reaper must never take a harness's own exit for an adopted orphan's.
    let scope = TestScope::new("run-instant").await;
    for attempt in 0..30 {
        let output = scope.cli(&["run", "--skip-cleanup", "--", "sh", "-c", "exit 3"]).await;
        assert_eq!(output.status.code(), Some(1), "attempt {attempt}\n{output}");
        assert!(
            output.stdout.lines().any(|line| line.starts_with("main") && line.contains(" 3 ")),
            "attempt {attempt}\n{output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_that_cannot_be_written_is_reported_not_dropped() {
    let scope = TestScope::new("run-log-full").await;
    // Files of benchwarden may grow to 10 MiB (room for the ledger's 8 MiB reserve; the ledger
    // stays far below); the harness prints 12 MB, so its log (written by benchwarden with -j 1)
    // fails with EFBIG on the way. SIGXFSZ is ignored, so the write fails instead of killing the
    // process.
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "trap '' XFSZ; ulimit -f 20480; exec \"$@\"", "sh", env!("CARGO_BIN_EXE_benchwarden")])
        .args(["--state-dir", scope.state_dir().to_str().unwrap(), "run", "-j", "1", "--skip-cleanup", "--"])
        .args(["sh", "-c", "head -c 12000000 /dev/zero | tr '\\0' x; echo; echo done"]);
    let output = common::run_cli(command).await;
    output.assert_code(0);
    assert!(output.stderr.contains("cannot write its log"), "{}", &output.stderr[..output.stderr.len().min(4000)]);
    assert!(output.stdout.contains("the log is incomplete"), "the summary does not name the failure");
    // The terminal (stderr, above the bars) still got all of it.
    assert!(output.stderr.contains("done"), "the output stopped with the log");
    let report = report_json(&output);
    assert!(
        report["tasks"][0]["log_error"].as_str().is_some_and(|error| error.contains("writing its log")),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duration_past_a_hundred_years_is_exit_2_not_a_wrapped_age() {
    let scope = TestScope::new("run-huge-age").await;
    let output = scope.cli(&["cleanup", "docker", "--older-than", "300000000000y", "--dry-run"]).await;
    output.assert_code(2);
    assert!(output.stderr.contains("longer than the longest duration benchwarden takes, 100y"), "{output}");
    let timeout = scope.cli(&["run", "--timeout", "300000000000y", "--", "true"]).await;
    timeout.assert_code(2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_benchmark_files_are_exit_2_naming_the_file_and_what_is_wrong() {
    let scope = TestScope::new("run-bad-files").await;
    let dir = scope.state_dir().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let long = "x".repeat(300);
    let cases: Vec<(&str, String, &str)> = vec![
        ("syntax", "name: [unclosed\n".to_string(), "line"),
        ("type", "name: b\nharness: {command: [true]}\nconcurrency: many\n".to_string(), "concurrency"),
        ("unknown", "name: b\nharness: {command: [true]}\ncolour: red\n".to_string(), "unknown field `colour`"),
        ("slash", "name: b\nharness: {command: [true]}\ntasks: [\"a/b\"]\n".to_string(), "hold '/'"),
        ("long", format!("name: b\nharness: {{command: [true]}}\ntasks: [{long}]\n"), "at most 200"),
        (
            "huge",
            format!("name: b\nharness: {{command: [true]}}\n# {}\n", "y".repeat(2 << 20)),
            "is not a benchmark file",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        let output = scope.cli(&["run", path.to_str().unwrap(), "--skip-cleanup"]).await;
        output.assert_code(2);
        assert!(output.stderr.contains(path.to_str().unwrap()), "{name}: the file is not named\n{output}");
        assert!(output.stderr.contains(expected), "{name}: no {expected:?}\n{output}");
        // Nothing was started or recorded: no run directory.
        assert!(!scope.state_dir().join("runs").exists(), "{name}: a run started\n{output}");
    }
}
