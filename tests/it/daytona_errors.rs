//! Daytona mistakes a user makes, and what benchwarden says about them:
//! a wrong key or a malformed API URL stops at once with exit 2; the retry
//! flags reach every call; a teardown that could not verify is reported as
//! what the ledger recorded; a pending deletion is neither called removed
//! nor promised to a ledger that does not have it; an explicit `null`
//! interval is filled. Against the contract server, with the real binary.

use std::time::{Duration, Instant};

use daytona_contract::ContractConfig;
use serde_json::Value;

use crate::common::daytona::{assert_there, Org, DELETE};
use crate::common::Running;
use crate::daytona::{creates_by_task, ledger_sandboxes, sdk_fixture};

#[tokio::test(flavor = "multi_thread")]
async fn run_with_a_wrong_key_stops_before_anything_with_exit_2() {
    let org = Org::start(ContractConfig::default()).await;
    let benchmark = sdk_fixture(&org, &["busy", "passes"]);
    let wrong = format!("bw-wrong-{:016x}", fastrand::u64(..));
    // An orphaned run in the ledger: the pre-run recovery would be the first to meet the 401.
    let mut orphan = Running::start(org.command(&["run", benchmark.to_str().unwrap(), "--tasks", "busy", "-j", "1"]));
    orphan.wait_for("ready").await;
    orphan.send(nix::sys::signal::Signal::SIGKILL);
    orphan.child.wait().await.unwrap();
    let before = ledger_runs(&org);
    assert_eq!(before.len(), 1);
    let requests_before = org.server.stats().requests;

    let output = org.cli_with_key(&["run", benchmark.to_str().unwrap(), "--tasks", "passes"], Some(&wrong)).await;
    output.assert_code(2);
    assert!(output.stderr.contains("DAYTONA_API_KEY"), "the error names the variable\n{output}");
    assert!(!output.stderr.contains(&wrong) && !output.stdout.contains(&wrong), "the key was printed\n{output}");
    assert_eq!(ledger_runs(&org), before, "the run was recorded in the ledger\n{output}");
    assert!(!creates_by_task(&org.server).contains_key("passes"), "a task ran\n{output}");
    assert_eq!(org.server.stats().requests, requests_before + 1, "one call checked the key\n{output}");
    assert_eq!(org.server.stats().route(DELETE), 0);
    // With the right key the orphan is recovered.
    let recovered = org.cli(&["recover"]).await;
    recovered.assert_code(0);
    assert!(org.left().is_empty(), "{recovered}");
}

/// The ids of the runs the ledger knows.
fn ledger_runs(org: &Org) -> Vec<String> {
    let path = org.state_dir().join("ledger.sqlite");
    if !path.exists() {
        return Vec::new();
    }
    let ledger = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut statement = ledger.prepare("SELECT id FROM runs ORDER BY id").unwrap();
    statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_api_url_is_exit_2_at_once_naming_the_variable_and_the_value() {
    let org = Org::start(ContractConfig::default()).await;
    let benchmark = sdk_fixture(&org, &["passes"]);
    for url in ["not-a-url", "ftp://example.com/api", "/api"] {
        for args in [
            vec!["list", "--daytona"],
            vec!["cleanup", "daytona", "--no-dry-run"],
            vec!["run", benchmark.to_str().unwrap()],
        ] {
            let mut command = org.command(&args);
            command.env("DAYTONA_API_URL", url);
            let started = Instant::now();
            let output = org.keep(crate::common::run_cli(command).await);
            output.assert_code(2);
            assert!(started.elapsed() < Duration::from_secs(5), "not at once: {:?}\n{output}", started.elapsed());
            assert!(
                output.stderr.contains("DAYTONA_API_URL") && output.stderr.contains(&format!("{url:?}")),
                "{output}"
            );
            assert!(!output.stderr.contains(&org.key), "the key was printed\n{output}");
            assert!(!output.stderr.contains("retrying"), "a malformed URL was retried\n{output}");
        }
    }
    assert_eq!(org.server.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retry_flags_reach_the_list_calls() {
    let org = Org::start(ContractConfig::default()).await;
    // A port nothing listens on: every call fails to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let api = format!("http://{closed}/api");
    let attempt = |args: &[&str]| {
        let mut command = org.command(args);
        command.env("DAYTONA_API_URL", &api);
        command
    };
    let started = Instant::now();
    let none = org.keep(crate::common::run_cli(attempt(&["--retries", "0", "list", "--daytona"])).await);
    assert_eq!(none.status.code(), Some(1), "{none}");
    assert!(started.elapsed() < Duration::from_secs(5), "--retries 0 still waited {:?}\n{none}", started.elapsed());
    assert!(!none.stderr.contains("retrying"), "{none}");
    let two = org
        .keep(crate::common::run_cli(attempt(&["--retries", "2", "--retry-delay", "50ms", "list", "--daytona"])).await);
    assert_eq!(two.status.code(), Some(1), "{two}");
    assert_eq!(two.stderr.lines().filter(|line| line.contains("retrying in")).count(), 2, "{two}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_teardown_that_cannot_authenticate_reports_what_the_ledger_recorded_as_left() {
    let org = Org::start(ContractConfig::default()).await;
    let benchmark = sdk_fixture(&org, &["until-released"]);
    let mut running = Running::start(org.command(&["run", benchmark.to_str().unwrap(), "-j", "1"]));
    running.wait_for("ready").await;
    // The key is revoked while the task runs: teardown cannot list or delete.
    org.server.set_config(|config| config.api_key = "revoked".to_string());
    std::fs::write(benchmark.parent().unwrap().join("released"), "").unwrap();
    let output = running.finish().await;
    output.assert_code(3);
    let recorded: Vec<String> = ledger_sandboxes(org.state_dir()).keys().cloned().collect();
    assert_eq!(recorded.len(), 2, "{output}");
    assert_eq!(org.server.sandboxes().len(), 2, "both are still there");
    let row =
        output.stdout.lines().find(|line| line.starts_with("until-released")).unwrap_or_else(|| panic!("{output}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[cells.len() - 3..cells.len() - 1], ["0", "2"], "REMOVED 0, LEAKED 2\n{output}");
    for id in &recorded {
        assert!(output.stdout.contains(&format!("leaked sandbox {id}")), "{id} is named\n{output}");
    }
    assert!(output.stdout.contains("0 resource(s) removed, 2 leaked"), "{output}");
    assert!(output.stderr.contains("2 resource(s) left"), "{output}");
    let report_path = output.stderr.lines().find_map(|line| line.strip_prefix("report: ")).unwrap();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(report_path).unwrap()).unwrap();
    assert_eq!(report["tasks"][0]["resources_leaked"].as_array().unwrap().len(), 2, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_deletion_is_accepted_not_removed_and_recorded_for_recover() {
    let org = Org::start(ContractConfig::default()).await;
    let ours = org.seed_ours(3);
    org.server.stick_in_destroying(&ours[0]);
    let output = org.cli_within(Duration::from_secs(200), &["cleanup", "daytona", "--no-dry-run"]).await;
    output.assert_code(1);
    assert!(output.stderr.contains(&format!("delete of sandbox {} accepted", ours[0])), "{output}");
    assert!(
        !output.stderr.contains(&format!("removed sandbox {}", ours[0])),
        "a pending sandbox was logged removed\n{output}"
    );
    assert!(output.stderr.contains(&format!("removed sandbox {}", ours[1])), "{output}");
    assert!(output.stdout.contains("recorded under run cleanup-"), "{output}");
    let plan = org.cli(&["recover", "--dry-run", "--json"]).await;
    plan.assert_code(0);
    let found: Vec<String> = plan.json()[0]["found"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(found, [ours[0].clone()], "{plan}");
    assert_there(&org, &ours[..1], &plan);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_explicit_null_interval_counts_as_unset_and_gets_the_files_value() {
    let org = Org::start(ContractConfig::default()).await;
    let benchmark = sdk_fixture(&org, &["null-intervals"]);
    let output = org.cli(&["run", benchmark.to_str().unwrap()]).await;
    output.assert_code(0);
    let creates = creates_by_task(&org.server);
    let body = &creates["null-intervals"][0];
    assert_eq!((body["autoStopInterval"].clone(), body["autoDeleteInterval"].clone()), (30.into(), 0.into()), "{body}");
}
