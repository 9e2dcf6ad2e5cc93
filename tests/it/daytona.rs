//! `benchwarden list --daytona`, `cleanup daytona`, `run` with a `daytona:`
//! section and `recover`, as the real binary, against the Daytona contract
//! server (the workspace crate `daytona-contract`) on 127.0.0.1. Each test
//! has its own server and its own state directory, and asserts by asking the
//! server what is left (and what it was sent), not by trusting benchwarden's
//! own counters.
//!
//! The official Python SDK (`daytona`, in `target/py-venv`, which
//! `scripts/test.sh` creates) is the real client of the per-task proxy: a
//! fixture harness creates sandboxes with it and exits, crashes, hangs past
//! the timeout, or outlives a SIGKILLed benchwarden.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use daytona_contract::{ContractConfig, ContractServer, SeedSandbox};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::common::daytona::{
    assert_gone, assert_there, owner, seed_with, this_host, Org, DEAD_RUN, DELETE, LIST, OTHER_HOST,
};
use crate::common::{self, run_cli, Running};

fn ids_in(json: &Value) -> Vec<String> {
    json.as_array()
        .unwrap_or_else(|| panic!("not an array: {json}"))
        .iter()
        .map(|item| item["id"].as_str().unwrap_or_else(|| panic!("no id in {item}")).to_string())
        .collect()
}

fn set(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

// ---------------------------------------------------------------------------
// list --daytona
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn list_daytona_pages_through_every_sandbox_and_filters_by_label() {
    let org = Org::start(ContractConfig::default()).await;
    let red: Vec<String> = (0..300).map(|_| org.seed(SeedSandbox::labelled(&[("team", "red")]))).collect();
    let blue: Vec<String> = (0..160)
        .map(|n| org.seed(SeedSandbox::labelled(&[("team", "blue"), ("n", &n.to_string())]).with_state("stopped")))
        .collect();
    let all: BTreeSet<String> = red.iter().chain(&blue).cloned().collect();

    let listed = org.cli(&["list", "--daytona", "--json"]).await;
    listed.assert_code(0);
    let ids = ids_in(&listed.json());
    assert_eq!(ids.len(), 460, "every sandbox exactly once");
    assert_eq!(set(&ids), all);
    // 460 at 200 a page: three pages, the second and third asked for by cursor.
    let pages: Vec<_> = org.server.requests().into_iter().filter(|request| request.route == LIST).collect();
    assert_eq!(pages.len(), 3, "{:?}", pages.iter().map(|page| &page.path).collect::<Vec<_>>());
    assert!(pages.iter().all(|page| page.path.contains("limit=200")), "{:?}", pages[0].path);
    assert!(!pages[0].path.contains("cursor="));
    assert!(pages[1..].iter().all(|page| page.path.contains("cursor=")));
    // The JSON carries what the table shows.
    let first = &listed.json()[0];
    assert!(first["state"].is_string() && first["labels"]["team"].is_string(), "{first}");

    let table = org.cli(&["list", "--daytona"]).await;
    table.assert_code(0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 461, "a header and one line a sandbox\n{}", &table.stdout[..400]);
    for column in ["ID", "NAME", "STATE", "AGE", "TARGET", "OWNER"] {
        assert!(lines[0].contains(column), "{}", lines[0]);
    }
    assert!(table.stdout.contains(&blue[0]) && table.stdout.contains("stopped"));

    let by_value = org.cli(&["list", "--daytona", "--label", "team=blue", "--json"]).await;
    by_value.assert_code(0);
    assert_eq!(set(&ids_in(&by_value.json())), set(&blue));
    let by_key = org.cli(&["list", "--daytona", "--label", "n", "--json"]).await;
    by_key.assert_code(0);
    assert_eq!(set(&ids_in(&by_key.json())), set(&blue), "`--label K` matches any value");
    let both = org.cli(&["list", "--daytona", "--label", "team=blue", "--label", "n=7", "--json"]).await;
    both.assert_code(0);
    assert_eq!(ids_in(&both.json()), vec![blue[7].clone()], "several labels must all match");
    let none = org.cli(&["list", "--daytona", "--label", "team=green", "--json"]).await;
    none.assert_code(0);
    assert_eq!(none.json(), serde_json::json!([]));
    assert_eq!(org.server.stats().route(DELETE), 0, "listing deletes nothing");
}

// ---------------------------------------------------------------------------
// cleanup daytona: dry run, owner scoping, filters
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_is_a_dry_run_by_default_and_takes_only_this_hosts_dead_runs() {
    let org = Org::start(ContractConfig::default()).await;
    let ours = org.seed_ours(3);
    let other_host = vec![org.seed(seed_with(&owner("20200101-0000-else", OTHER_HOST)))];
    let unlabelled = vec![org.seed(SeedSandbox::default()), org.seed(SeedSandbox::labelled(&[("team", "red")]))];
    // A run label without the host label: not known to be this host's.
    let hostless = vec![org.seed(SeedSandbox::labelled(&[("benchwarden.run", DEAD_RUN)]))];
    let everything: Vec<String> = [&ours, &other_host, &unlabelled, &hostless].into_iter().flatten().cloned().collect();

    let dry = org.cli(&["cleanup", "daytona"]).await;
    dry.assert_code(0);
    assert!(dry.stdout.contains("3 would be removed (dry run)"), "{dry}");
    assert!(dry.stdout.contains("--no-dry-run"), "the dry run says how to really delete\n{dry}");
    let dry_json = org.cli(&["cleanup", "daytona", "--json"]).await;
    dry_json.assert_code(0);
    let report = dry_json.json();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["sandboxes"]["would_remove"], 3, "{report}");
    let planned: BTreeSet<String> = report["sandboxes"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result[0]["id"].as_str().unwrap_or_else(|| panic!("{result}")).to_string())
        .collect();
    assert_eq!(planned, set(&ours));
    assert_eq!(org.left(), set(&everything), "a dry run deleted something");
    assert_eq!(org.server.stats().route(DELETE), 0, "a dry run sent a DELETE");

    let real = org.cli(&["cleanup", "daytona", "--no-dry-run"]).await;
    real.assert_code(0);
    assert!(real.stdout.contains("3 removed"), "{real}");
    assert_gone(&org, &ours, &real);
    let rest: Vec<String> = [&other_host, &unlabelled, &hostless].into_iter().flatten().cloned().collect();
    assert_eq!(org.left(), set(&rest), "only this host's dead run's sandboxes go\n{real}");
    assert_eq!(org.server.stats().route(DELETE), 3);

    let again = org.cli(&["cleanup", "daytona", "--no-dry-run"]).await;
    again.assert_code(0);
    assert!(again.stdout.contains("none matched"), "{again}");
    assert_eq!(org.left(), set(&rest));
}

#[tokio::test(flavor = "multi_thread")]
async fn another_hosts_run_goes_only_when_a_label_or_any_owner_selects_it() {
    let org = Org::start(ContractConfig::default()).await;
    let other_a = org.seed(seed_with(&owner("20200101-0000-aaaa", OTHER_HOST)));
    let other_b = org.seed(seed_with(&owner("20200101-0000-bbbb", OTHER_HOST)));
    let unlabelled = org.seed(SeedSandbox::default());

    let plain = org.cli(&["cleanup", "daytona", "--no-dry-run"]).await;
    plain.assert_code(0);
    assert_eq!(org.left(), set(&[other_a.clone(), other_b.clone(), unlabelled.clone()]), "{plain}");

    let by_label =
        org.cli(&["cleanup", "daytona", "--label", "benchwarden.run=20200101-0000-aaaa", "--no-dry-run"]).await;
    by_label.assert_code(0);
    assert_eq!(
        org.left(),
        set(&[other_b.clone(), unlabelled.clone()]),
        "--label selects another host's run\n{by_label}"
    );

    let dry_any = org.cli(&["cleanup", "daytona", "--any-owner"]).await;
    dry_any.assert_code(0);
    assert!(dry_any.stdout.contains("2 would be removed"), "{dry_any}");
    let any = org.cli(&["cleanup", "daytona", "--any-owner", "--no-dry-run"]).await;
    any.assert_code(0);
    assert!(org.left().is_empty(), "--any-owner takes the whole organisation\n{any}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_filters_by_state_age_and_label() {
    let org = Org::start(ContractConfig::default()).await;
    let ours = owner(DEAD_RUN, &this_host());
    let in_state = |state: &str| org.seed(seed_with(&ours).with_state(state));
    let stopped = vec![in_state("stopped"), in_state("error"), in_state("build_failed")];
    let not_stopped = vec![in_state("started"), in_state("archived")];
    let old_started = org.seed(seed_with(&ours).aged(Duration::from_secs(3 * 3600)));
    let old_stopped = org.seed(seed_with(&ours).with_state("stopped").aged(Duration::from_secs(3 * 3600)));

    // --stopped and --older-than together: only what is both.
    let both = org.cli(&["cleanup", "daytona", "--stopped", "--older-than", "2h", "--no-dry-run"]).await;
    both.assert_code(0);
    assert!(!org.server.exists(&old_stopped), "{both}");
    assert_there(&org, std::slice::from_ref(&old_started), &both);
    assert_there(&org, &stopped, &both);

    let by_state = org.cli(&["cleanup", "daytona", "--stopped", "--no-dry-run"]).await;
    by_state.assert_code(0);
    assert!(by_state.stdout.contains("3 removed"), "{by_state}");
    assert_gone(&org, &stopped, &by_state);
    assert_there(&org, &not_stopped, &by_state);

    let by_age = org.cli(&["cleanup", "daytona", "--older-than", "2h", "--no-dry-run"]).await;
    by_age.assert_code(0);
    assert!(!org.server.exists(&old_started), "{by_age}");
    assert_there(&org, &not_stopped, &by_age);

    // A label selects by itself, owner labels or not; every given label must match.
    let b1_ours = org.seed(seed_with(&ours));
    let b1_ours_labels: Vec<(String, String)> =
        ours.iter().cloned().chain([("batch".to_string(), "b1".to_string())]).collect();
    let b1 = vec![org.seed(seed_with(&b1_ours_labels)), org.seed(SeedSandbox::labelled(&[("batch", "b1")]))];
    let b2 = org.seed(SeedSandbox::labelled(&[("batch", "b2")]));
    let partial = org.seed(SeedSandbox::labelled(&[("batch", "b1"), ("keep", "no")]));
    let by_label = org.cli(&["cleanup", "daytona", "--label", "batch=b1", "--label", "keep", "--no-dry-run"]).await;
    by_label.assert_code(0);
    assert!(!org.server.exists(&partial), "{by_label}");
    assert_there(&org, &b1, &by_label);
    let by_label = org.cli(&["cleanup", "daytona", "--label", "batch=b1", "--no-dry-run"]).await;
    by_label.assert_code(0);
    assert_gone(&org, &b1, &by_label);
    assert_there(&org, &[b2, b1_ours], &by_label);
    assert_there(&org, &not_stopped, &by_label);
}

// ---------------------------------------------------------------------------
// A live run's sandboxes
// ---------------------------------------------------------------------------

/// The run id from benchwarden's "run <id>: …" log line.
fn run_id_of(line: &str) -> String {
    line.split("INFO run ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no run id in {line:?}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_runs_sandboxes_are_never_touched() {
    let org = Org::start(ContractConfig::default()).await;
    let dir = org.state_dir().join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    let benchmark = dir.join("benchmark.yaml");
    std::fs::write(
        &benchmark,
        "name: live\nharness:\n  command: [sh, -c, \"echo ready; exec sleep 600\"]\ndocker:\n  enabled: false\n",
    )
    .unwrap();
    let mut running = Running::start(org.command(&["run", benchmark.to_str().unwrap(), "-j", "1", "--grace", "2s"]));
    let run_id = run_id_of(&running.wait_for("INFO run ").await);
    running.wait_for("ready").await;
    let host = this_host();

    // Known alive from the ledger of the same state directory.
    let by_ledger = org.seed(seed_with(&owner(&run_id, &host)));
    // Known alive from its labels: the pid is a running benchwarden.
    let mut labels = owner("20200101-0000-nonledger", &host);
    labels.push(("benchwarden.pid".to_string(), running.pid().to_string()));
    let by_pid = org.seed(seed_with(&labels));
    let live = vec![by_ledger.clone(), by_pid.clone()];
    let dead = org.seed_ours(2);

    let cleanup = org.cli(&["cleanup", "daytona", "--no-dry-run"]).await;
    cleanup.assert_code(0);
    assert!(cleanup.stdout.contains("2 left alone because a live run owns them"), "{cleanup}");
    assert_gone(&org, &dead, &cleanup);
    assert_there(&org, &live, &cleanup);
    for args in [
        vec!["cleanup", "daytona", "--any-owner", "--no-dry-run"],
        vec!["cleanup", "daytona", "--label", "benchwarden.task=t", "--no-dry-run"],
    ] {
        let output = org.cli(&args).await;
        output.assert_code(0);
        assert_there(&org, &live, &output);
        assert!(output.stdout.contains("2 left alone"), "{output}");
    }
    let json = org.cli(&["cleanup", "daytona", "--any-owner", "--no-dry-run", "--json"]).await;
    json.assert_code(0);
    let protected: BTreeSet<String> = json.json()["protected"]
        .as_array()
        .unwrap_or_else(|| panic!("{json}"))
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assert_eq!(protected, set(&live), "{json}");
    assert_eq!(org.server.stats().route(DELETE), 2, "only the dead run's two were ever sent a DELETE");

    running.send(Signal::SIGINT);
    let finished = running.finish().await;
    finished.assert_code(130);
    // Once the run has ended, its sandbox is fair game.
    let after = org.cli(&["cleanup", "daytona", "--no-dry-run"]).await;
    after.assert_code(0);
    assert!(!org.server.exists(&by_ledger), "{after}");
}

// ---------------------------------------------------------------------------
// Faults: rate limits, 5xx, resets, stuck deletes, wrong keys
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_429_storm_is_waited_out_not_hammered() {
    // 300 a minute is 5 a second: 40 deletes span at least 8 one-second
    // windows, so more than 6 s from the first to the last.
    let org = Org::start(ContractConfig { lifecycle_limit_per_minute: Some(300), ..ContractConfig::default() }).await;
    let ours = org.seed_ours(40);
    let started = Instant::now();
    let output = org.cli(&["cleanup", "daytona", "--no-dry-run"]).await;
    let elapsed = started.elapsed();
    output.assert_code(0);
    assert_gone(&org, &ours, &output);
    assert!(org.left().is_empty(), "{output}");
    let stats = org.server.stats();
    println!("{elapsed:?} {stats:?}");
    assert!(elapsed > Duration::from_secs(6), "faster than the limit allows: the server is not limiting");
    // Paced by the headers, a call goes out only with budget the answers
    // have shown, except one probe per window whose budget is not known yet
    // (the first, and each after a reset). So at most one 429 per second
    // window, and each 429 costs one more DELETE, no more. Sending the 32
    // parallel deletes blind, and all waiters at once after each reset (what
    // benchwarden did before), gave 84 429s here and 7 sandboxes failed.
    let windows = elapsed.as_secs() + 1;
    assert!(
        stats.throttled_429 <= windows,
        "{} 429s for 40 deletes in {elapsed:?}: hammered\n{stats:?}\n{output}",
        stats.throttled_429
    );
    assert_eq!(stats.deletes_accepted, 40);
    assert_eq!(stats.route(DELETE), 40 + stats.throttled_429, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_connection_resets_are_retried_until_everything_is_gone() {
    let org = Org::start(ContractConfig { error_rate_5xx: 0.15, reset_rate: 0.1, ..ContractConfig::default() }).await;
    let ours = org.seed_ours(40);
    let output =
        org.cli(&["--retries", "12", "--retry-delay", "50ms", "cleanup", "daytona", "--no-dry-run", "--json"]).await;
    output.assert_code(0);
    assert_gone(&org, &ours, &output);
    let report = output.json();
    let removed = report["removed"].as_u64().unwrap() + report["already_gone"].as_u64().unwrap();
    assert_eq!(removed, 40, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    let stats = org.server.stats();
    assert!(stats.injected_5xx > 0 && stats.injected_resets > 0, "no faults were injected: {stats:?}");
    assert!(stats.deletes_accepted >= 40, "{stats:?}");
    assert!(stats.route(DELETE) > 40, "some DELETE met a fault and was sent again: {stats:?}");

    // The list itself: its first page is certainly lost (a reset, then a 500), and asked for again.
    let org = Org::start(ContractConfig { reset_rate: 1.0, ..ContractConfig::default() }).await;
    let ours = org.seed_ours(3);
    let child = org.spawn(&["list", "--daytona", "--json"]);
    org.wait_for_requests(LIST, 1).await;
    org.server.set_config(|config| {
        config.reset_rate = 0.0;
        config.error_rate_5xx = 1.0;
    });
    org.wait_for_requests(LIST, 2).await;
    org.server.set_config(|config| config.error_rate_5xx = 0.0);
    let listed = org.wait(child).await;
    listed.assert_code(0);
    assert_eq!(set(&ids_in(&listed.json())), set(&ours));
    let lists: Vec<Option<u16>> =
        org.server.requests().iter().filter(|request| request.route == LIST).map(|request| request.status).collect();
    assert_eq!(lists, vec![None, Some(500), Some(200)], "reset, then 500, then the answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_stuck_in_destroying_is_reported_pending_while_the_others_go() {
    let org = Org::start(ContractConfig::default()).await;
    let ours = org.seed_ours(4);
    org.server.stick_in_destroying(&ours[0]);
    // Pending after two minutes of polling (the README's deadline for cleanup).
    let output = org.cli_within(Duration::from_secs(200), &["cleanup", "daytona", "--no-dry-run"]).await;
    output.assert_code(1);
    assert!(output.stdout.contains("pending"), "{output}");
    let pending_line = output.stdout.lines().find(|line| line.contains("pending:")).unwrap_or_default();
    assert!(pending_line.contains(&ours[0]), "the pending line names the stuck sandbox\n{output}");
    assert!(output.stdout.contains("3 removed"), "{output}");
    assert_gone(&org, &ours[1..], &output);
    assert!(org.server.exists(&ours[0]));
    let stuck = org.server.sandboxes();
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0]["state"], "destroying", "it was deleted, not skipped");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_is_a_clear_error_and_exit_2() {
    let org = Org::start(ContractConfig::default()).await;
    let ours = org.seed_ours(2);
    let wrong = format!("bw-wrong-{:016x}", fastrand::u64(..));
    for args in [
        vec!["list", "--daytona"],
        vec!["cleanup", "daytona"],
        vec!["cleanup", "daytona", "--no-dry-run"],
        vec!["cleanup", "daytona", "--any-owner", "--no-dry-run", "--json"],
    ] {
        let output = org.cli_with_key(&args, Some(&wrong)).await;
        output.assert_code(2);
        assert!(output.stderr.contains("DAYTONA_API_KEY"), "the error names the variable to check\n{output}");
        assert!(output.stderr.contains("401") || output.stderr.contains("Invalid credentials"), "{output}");
        assert!(!output.stdout.contains(&wrong) && !output.stderr.contains(&wrong), "the key was printed\n{output}");
    }
    let missing = org.cli_with_key(&["cleanup", "daytona"], None).await;
    missing.assert_code(2);
    assert!(missing.stderr.contains("DAYTONA_API_KEY"), "{missing}");
    assert_there(&org, &ours, &missing);
    assert_eq!(org.server.stats().route(DELETE), 0);
    assert!(org.server.stats().unauthorized_401 >= 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_with_daytona_and_no_credentials_stops_before_any_task() {
    let org = Org::start(ContractConfig::default()).await;
    let dir = org.state_dir().join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("harness-ran");
    for (section, variable) in [
        ("daytona:\n  enabled: true\n", "DAYTONA_API_KEY"),
        ("daytona:\n  api_key_env: BW_TEST_OTHER_KEY\n", "BW_TEST_OTHER_KEY"),
    ] {
        let benchmark = dir.join("benchmark.yaml");
        std::fs::write(
            &benchmark,
            format!(
                "name: creds\nharness:\n  command: [touch, {}]\ntasks: [a, b]\ndocker:\n  enabled: false\n{section}",
                marker.display()
            ),
        )
        .unwrap();
        // With api_key_env naming another variable, DAYTONA_API_KEY alone is not enough.
        let key = (variable != "DAYTONA_API_KEY").then_some(org.key.as_str());
        let mut command = org.command_with_key(&["run", benchmark.to_str().unwrap()], key);
        command.env_remove("BW_TEST_OTHER_KEY");
        let output = org.keep(run_cli(command).await);
        output.assert_code(2);
        assert!(output.stderr.contains(variable), "the error names {variable}\n{output}");
        assert!(!marker.exists(), "the harness ran\n{output}");
        assert_eq!(output.stderr.lines().filter(|line| line.contains("error")).count(), 1, "one clear error\n{output}");
    }
    let status = org.cli(&["status", "--json"]).await;
    status.assert_code(0);
    assert_eq!(status.json()["runs"], serde_json::json!([]), "no run was recorded");
    assert_eq!(org.server.stats().requests, 0);
}

// ---------------------------------------------------------------------------
// The key never shows
// ---------------------------------------------------------------------------

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                found.push((path.clone(), std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

/// Panics when the org's key is in any output of its commands or in any
/// file of its state directory (the ledger and its journal, run logs,
/// reports); returns the files searched.
#[track_caller]
fn assert_key_absent(org: &Org) -> Vec<String> {
    for output in org.outputs.lock().unwrap().iter() {
        assert!(!output.contains(&org.key), "the key was printed:\n{output}");
    }
    let files = files_under(org.state_dir());
    for (path, bytes) in &files {
        assert!(!contains(bytes, &org.key), "the key is in {}", path.display());
    }
    files.into_iter().map(|(path, _)| path.display().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_never_appears_in_any_output_report_log_or_ledger() {
    let org = Org::start(ContractConfig::default()).await;
    org.seed_ours(3);
    let dir = org.state_dir().join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    // The harness creates a sandbox through its proxy with curl, sending the key as the SDK does.
    let script = "set -e\n\
        curl -sf -X POST -H \"Authorization: Bearer $DAYTONA_API_KEY\" -H 'Content-Type: application/json' \
        -d '{\"labels\":{\"via\":\"curl\"}}' \"$DAYTONA_API_URL/sandbox\" > created.json\n\
        echo created\n";
    std::fs::write(dir.join("harness.sh"), script).unwrap();
    std::fs::write(
        dir.join("benchmark.yaml"),
        "name: key\nharness:\n  command: [sh, harness.sh]\n  cwd: .\ndocker:\n  enabled: false\ndaytona:\n  auto_stop_minutes: 5\n",
    )
    .unwrap();
    let benchmark = dir.join("benchmark.yaml");
    let benchmark = benchmark.to_str().unwrap();

    org.cli(&["-vv", "list", "--daytona"]).await.assert_code(0);
    org.cli(&["-vv", "list", "--daytona", "--json"]).await.assert_code(0);
    org.cli(&["-vv", "cleanup", "daytona"]).await.assert_code(0);
    let run = org.cli(&["-vv", "--retries", "8", "--retry-delay", "50ms", "run", benchmark, "-j", "1"]).await;
    run.assert_code(0);
    let created: Value = serde_json::from_slice(&std::fs::read(dir.join("created.json")).unwrap()).unwrap();
    let created = created["id"].as_str().unwrap().to_string();
    assert!(!org.server.exists(&created), "the run tore its sandbox down\n{run}");
    assert!(run.stdout.contains("1 resource(s) removed"), "{run}");
    org.cli(&["-vv", "status", "--json"]).await.assert_code(0);
    org.cli(&["-vv", "--retries", "8", "--retry-delay", "50ms", "cleanup", "daytona", "--no-dry-run", "--json"])
        .await
        .assert_code(0);
    org.cli(&["-vv", "recover"]).await.assert_code(0);
    let wrong = org.cli_with_key(&["-vv", "cleanup", "daytona", "--no-dry-run"], Some("bw-secret-wrong")).await;
    wrong.assert_code(2);

    assert!(org.outputs.lock().unwrap().len() >= 8);
    for output in org.outputs.lock().unwrap().iter() {
        assert!(!output.contains("bw-secret-wrong"), "a wrong key was printed:\n{output}");
    }
    let files = assert_key_absent(&org);
    assert!(files.iter().any(|name| name.ends_with("ledger.sqlite")), "{files:?}");
    assert!(files.iter().any(|name| name.ends_with("report.json")), "{files:?}");
    // And the check can fail: the key did travel, in the harness's own requests.
    let create = org.server.requests().into_iter().find(|request| request.route == "POST /api/sandbox").unwrap();
    assert_eq!(create.header("authorization"), Some(format!("Bearer {}", org.key).as_str()));
}

// ---------------------------------------------------------------------------
// The official Python SDK through the per-task proxy
// ---------------------------------------------------------------------------

fn python() -> PathBuf {
    common::venv_python("daytona")
}

/// The fixture harness: `harness.py TASK`. Every sandbox it creates is
/// printed as `created <id>` before anything else happens.
const SDK_HARNESS: &str = r#"
import json, os, sys, time, urllib.request
from daytona import Daytona, CreateSandboxFromSnapshotParams

task = sys.argv[1]
daytona = Daytona()

def create(**params):
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(labels={"fixture": task}, **params), timeout=60)
    print(f"created {sandbox.id}", flush=True)
    return sandbox

if task == "passes":
    create()
    create()
elif task == "crashes":
    create()
    raise RuntimeError("the harness crashes on purpose")
elif task == "hangs":
    create()
    print("hanging", flush=True)
    while True:
        time.sleep(1)
elif task == "own-intervals":
    create(auto_stop_interval=5, auto_delete_interval=7)
elif task == "busy":
    create()
    create()
    print("ready", flush=True)
    while True:
        time.sleep(1)
elif task == "until-released":
    create()
    create()
    print("ready", flush=True)
    while not os.path.exists("released"):
        time.sleep(0.05)
elif task == "null-intervals":
    # An explicit null, as some clients send for "not set".
    body = json.dumps({"labels": {"fixture": task}, "autoStopInterval": None, "autoDeleteInterval": None}).encode()
    request = urllib.request.Request(
        os.environ["DAYTONA_API_URL"] + "/sandbox",
        data=body,
        headers={"Authorization": "Bearer " + os.environ["DAYTONA_API_KEY"], "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        print("created " + json.load(answer)["id"], flush=True)
"#;

pub(crate) fn sdk_fixture(org: &Org, tasks: &[&str]) -> PathBuf {
    let dir = org.state_dir().join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("harness.py"), SDK_HARNESS).unwrap();
    let yaml = format!(
        "name: sdk\n\
         harness:\n  command: [\"{python}\", harness.py, \"{{task}}\"]\n  cwd: .\n  env: {{PYTHONUNBUFFERED: \"1\"}}\n\
         tasks: [{tasks}]\n\
         docker:\n  enabled: false\n\
         daytona:\n  auto_stop_minutes: 30\n  auto_delete_minutes: 0\n",
        python = python().display(),
        tasks = tasks.join(", "),
    );
    let benchmark = dir.join("benchmark.yaml");
    std::fs::write(&benchmark, yaml).unwrap();
    benchmark
}

/// `created <id>` lines of a task's log.
fn created_in_log(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix("created "))
        .map(|id| id.trim().to_string())
        .collect()
}

/// Sandbox rows of the ledger: id → (run, task, released).
pub(crate) fn ledger_sandboxes(state_dir: &Path) -> BTreeMap<String, (String, String, bool)> {
    let ledger = rusqlite::Connection::open_with_flags(
        state_dir.join("ledger.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the ledger");
    let mut statement =
        ledger.prepare("SELECT id, run_id, task_id, released_at FROM resources WHERE kind = 'sandbox'").unwrap();
    statement
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, (row.get(1)?, row.get(2)?, row.get::<_, Option<i64>>(3)?.is_some())))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The labels and the create body of every `POST /api/sandbox`, by the
/// fixture's task label.
pub(crate) fn creates_by_task(server: &ContractServer) -> BTreeMap<String, Vec<Value>> {
    let mut found: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for request in server.requests().into_iter().filter(|request| request.route == "POST /api/sandbox") {
        let body = request.json().unwrap_or_else(|| panic!("create body is not JSON: {request:?}"));
        let task = body["labels"]["fixture"].as_str().unwrap_or("?").to_string();
        found.entry(task).or_default().push(body);
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_sdk_through_the_proxy_every_ending_is_labelled_recorded_and_torn_down() {
    let org = Org::start(ContractConfig::default()).await;
    let untouched = org.seed(SeedSandbox::labelled(&[("team", "red")]));
    let tasks = ["passes", "crashes", "hangs", "own-intervals"];
    let benchmark = sdk_fixture(&org, &tasks);
    let output = org.cli(&["run", benchmark.to_str().unwrap(), "-j", "4", "--timeout", "30s", "--grace", "2s"]).await;
    output.assert_code(1);
    let report_path = output.stderr.lines().find_map(|line| line.strip_prefix("report: ")).unwrap();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(report_path).unwrap()).unwrap();
    let run_id = report["run_id"].as_str().unwrap().to_string();
    let host = this_host();
    let ledger = ledger_sandboxes(org.state_dir());
    let creates = creates_by_task(&org.server);

    let mut all_created = Vec::new();
    for (task, outcome, count) in
        [("passes", "passed", 2), ("crashes", "failed", 1), ("hangs", "timed_out", 1), ("own-intervals", "passed", 1)]
    {
        let entry = report["tasks"].as_array().unwrap().iter().find(|entry| entry["task"] == task).unwrap();
        assert_eq!(entry["outcome"], outcome, "{entry}\n{output}");
        let log = PathBuf::from(entry["log"].as_str().unwrap());
        let created = created_in_log(&log);
        assert_eq!(created.len(), count, "{task}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        // Labelled on the way in.
        let bodies = creates.get(task).unwrap_or_else(|| panic!("no create of {task} reached the server"));
        assert_eq!(bodies.len(), count, "{task}: {bodies:?}");
        for body in bodies {
            let labels = &body["labels"];
            assert_eq!(labels["benchwarden.run"], run_id.as_str(), "{body}");
            assert_eq!(labels["benchwarden.task"], task, "{body}");
            assert_eq!(labels["benchwarden.host"], host.as_str(), "{body}");
            assert_eq!(labels["code-toolbox-language"], "python", "the SDK's own labels stay: {body}");
            // The file's collection defaults fill gaps only.
            let (stop, delete) = if task == "own-intervals" { (5, 7) } else { (30, 0) };
            assert_eq!(body["autoStopInterval"], stop, "{task}: {body}");
            assert_eq!(body["autoDeleteInterval"], delete, "{task}: {body}");
        }
        // Recorded in the ledger under its task, released by the teardown.
        for id in &created {
            assert_eq!(ledger.get(id), Some(&(run_id.clone(), task.to_string(), true)), "{task}: {id}: {ledger:?}");
        }
        assert_eq!(entry["resources_found"], count, "{entry}");
        assert_eq!(entry["resources_removed"], count, "{entry}");
        assert_eq!(entry["resources_leaked"], serde_json::json!([]), "{entry}");
        all_created.extend(created);
    }
    assert_eq!(org.server.stats().creates, 5);
    assert_gone(&org, &all_created, &output);
    assert_eq!(org.left(), BTreeSet::from([untouched]), "only the sandbox nobody's task made is left\n{output}");
    assert!(output.stdout.contains("5 resource(s) removed, 0 leaked"), "{output}");
    assert_key_absent(&org);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_benchwarden_is_sigkilled_recover_deletes_what_the_sdk_created() {
    let org = Org::start(ContractConfig::default()).await;
    let benchmark = sdk_fixture(&org, &["busy"]);
    let mut running = Running::start(org.command(&["run", benchmark.to_str().unwrap(), "-j", "1"]));
    let run_id = run_id_of(&running.wait_for("INFO run ").await);
    running.wait_for("ready").await;
    running.send(Signal::SIGKILL);
    running.child.wait().await.unwrap();
    let log = org.state_dir().join("runs").join(&run_id).join("busy.log");
    let created = created_in_log(&log);
    assert_eq!(created.len(), 2, "{}", std::fs::read_to_string(&log).unwrap_or_default());
    for id in &created {
        assert!(org.server.exists(id), "{id} is gone before recover");
    }
    let sandboxes = org.server.sandboxes();
    for sandbox in &sandboxes {
        assert_eq!(sandbox["labels"]["benchwarden.run"], run_id.as_str(), "{sandbox}");
        assert_eq!(sandbox["labels"]["benchwarden.task"], "busy", "{sandbox}");
        assert_eq!(sandbox["labels"]["benchwarden.host"], this_host().as_str(), "{sandbox}");
    }

    // The ledger has both, unreleased, under an orphaned run.
    let status = org.cli(&["status", "--json"]).await;
    status.assert_code(0);
    let runs = status.json()["runs"].clone();
    let run =
        runs.as_array().unwrap().iter().find(|run| run["id"] == run_id.as_str()).unwrap_or_else(|| panic!("{runs}"));
    assert_eq!(run["state"], "orphaned", "{run}");
    let recorded: BTreeSet<String> = run["live_resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|resource| resource["kind"] == "sandbox")
        .map(|resource| resource["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(recorded, set(&created), "{run}");

    let recovered = org.cli(&["recover"]).await;
    recovered.assert_code(0);
    assert!(recovered.stdout.contains(&format!("run {run_id}: 2 resource(s) removed, 0 left")), "{recovered}");
    assert_gone(&org, &created, &recovered);
    assert!(org.left().is_empty(), "{recovered}");
    let harness = harness_processes(org.state_dir());
    assert!(harness.is_empty(), "recover left the SDK harness running: {harness:?}");
    let again = org.cli(&["recover"]).await;
    again.assert_code(0);
    assert!(again.stdout.contains("no orphaned runs"), "{again}");
    assert_key_absent(&org);
}

/// Live processes running this state dir's fixture harness.
fn harness_processes(state_dir: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !zombie && cwd.starts_with(state_dir) && String::from_utf8_lossy(&cmdline).contains("harness.py") {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_still_destroying_when_a_run_ends_keeps_the_run_open_for_recover() {
    let org = Org::start(ContractConfig::default()).await;
    let dir = org.state_dir().join("fixture-pending");
    std::fs::create_dir_all(&dir).unwrap();
    // The harness creates a sandbox through its proxy, then waits on a pipe until the test
    // has made that sandbox stick in `destroying`.
    let fifo = dir.join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let script = "set -e\n\
        curl -sf -X POST -H \"Authorization: Bearer $DAYTONA_API_KEY\" -H 'Content-Type: application/json' \
        -d '{}' \"$DAYTONA_API_URL/sandbox\" > created.json\n\
        read line < go\n";
    std::fs::write(dir.join("harness.sh"), script).unwrap();
    // A short deadline: the stuck sandbox is called pending after 2 s instead of minutes.
    std::fs::write(
        dir.join("benchmark.yaml"),
        "name: pending\nharness:\n  command: [sh, harness.sh]\n  cwd: .\ncleanup:\n  retry:\n    deadline: 2s\n\
         docker:\n  enabled: false\ndaytona:\n  enabled: true\n",
    )
    .unwrap();
    let benchmark = dir.join("benchmark.yaml");
    let child = org.spawn(&["--retry-delay", "100ms", "run", benchmark.to_str().unwrap(), "-j", "1"]);
    org.wait_for_requests("POST /api/sandbox", 1).await;
    let created = org.left().into_iter().next().expect("the harness created a sandbox");
    org.server.stick_in_destroying(&created);
    std::fs::write(&fifo, "go\n").unwrap();
    let run = org.wait(child).await;
    run.assert_code(3);
    assert!(run.stdout.contains("still being deleted"), "{run}");
    assert!(org.server.exists(&created));

    // The run was left open, so it is an orphan now and `recover` looks at the sandbox again.
    let status = org.cli(&["status", "--json"]).await;
    status.assert_code(0);
    let runs: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(runs["runs"][0]["state"], "orphaned", "{status}");
    // `recover` (here its dry run, which does not wait out the stuck deletion) takes it up again.
    let recovered = org.cli(&["recover", "--dry-run", "--json"]).await;
    recovered.assert_code(0);
    let plan: Value = serde_json::from_str(&recovered.stdout).unwrap();
    assert_eq!(plan[0]["found"][0]["id"], created.as_str(), "{recovered}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_gets_stops_deletes_and_reads_the_pre_cursor_list_shape() {
    use benchwarden::backend::daytona::{Credentials, DaytonaBackend, DaytonaConfig};
    use benchwarden::events::Events;
    use benchwarden::retry::RetryPolicy;
    let org = Org::start(ContractConfig { legacy_list: true, ..ContractConfig::default() }).await;
    let ids = org.seed_ours(3);
    let config = DaytonaConfig {
        api_url: org.server.api_url(),
        credentials: Credentials::ApiKey(org.key.clone()),
        target: None,
    };
    let client = DaytonaBackend::new(config, RetryPolicy::default(), Events::discard()).unwrap();
    // Before v0.180 the list was a bare array; it still reads.
    let listed: BTreeSet<String> =
        client.list(&BTreeMap::new()).await.unwrap().into_iter().map(|sandbox| sandbox.id).collect();
    assert_eq!(listed, set(&ids));

    client.stop(&ids[0], false).await.unwrap();
    let stopping = client.get(&ids[0]).await.unwrap().expect("still there");
    assert!(matches!(stopping.state.as_deref(), Some("stopping" | "stopped")), "{stopping:?}");
    let stops = org.server.requests().into_iter().filter(|request| request.method == "POST").count();
    assert_eq!(stops, 1);

    client.delete(&ids[1]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(&ids[1]).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the deleted sandbox never answered 404");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!org.server.exists(&ids[1]));
    assert!(org.server.exists(&ids[2]));
}
