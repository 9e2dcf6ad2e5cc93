//! Retention, against the real binary and the ledger file it writes: runs
//! past the retention that own nothing are forgotten (ledger rows and run
//! directories), those that own something never are, socket directories of
//! runs no longer running go, `status` shows a readable selection, and a
//! ledger of a newer release is refused untouched.
//!
//! Age: the tests move runs' recorded `started_at` and `ended_at` back
//! through the ledger file itself. The ledger compares those with the wall
//! clock, so this is exactly what the passing of days does to it, and the
//! binary needs no clock of its own for tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use crate::common::faulty::{Fault, FaultyEngine, Rule, When};
use crate::common::*;
use crate::run::{fixture, path, report_json};

const DAY: i64 = 86_400;

/// A benchmark whose one task exits at once and that uses no Docker.
fn short_benchmark(dir: &Path) -> PathBuf {
    let benchmark = dir.join("short.yaml");
    std::fs::write(&benchmark, "name: short\nharness:\n  command: [\"true\"]\ndocker:\n  enabled: false\n").unwrap();
    benchmark
}

/// Like [`short_benchmark`], with ten tasks of long names, so that the
/// ledger grows past its fixed pages (a root page per table and index) and
/// a prune leaves it mostly free, for the vacuum to give back.
fn ten_task_benchmark(dir: &Path) -> PathBuf {
    let benchmark = dir.join("ten-tasks.yaml");
    let tasks: Vec<String> = (0..10).map(|index| format!("task-{index}-{}", "x".repeat(150))).collect();
    let yaml = format!(
        "name: short\nharness:\n  command: [\"true\"]\ntasks: [{}]\nconcurrency: 10\ndocker:\n  enabled: false\n",
        tasks.join(", ")
    );
    std::fs::write(&benchmark, yaml).unwrap();
    benchmark
}

fn ledger(state_dir: &Path) -> rusqlite::Connection {
    let connection = rusqlite::Connection::open(state_dir.join("ledger.sqlite")).expect("open the ledger");
    connection.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    connection
}

/// Moves the recorded times of runs `days` back.
fn age(state_dir: &Path, run_ids: &[String], days: i64) {
    let connection = ledger(state_dir);
    for run_id in run_ids {
        let changed = connection
            .execute(
                "UPDATE runs SET started_at = started_at - ?2, ended_at = ended_at - ?2 WHERE id = ?1",
                rusqlite::params![run_id, days * DAY],
            )
            .unwrap();
        assert_eq!(changed, 1, "no run {run_id} in the ledger");
    }
}

fn count(state_dir: &Path, sql: &str) -> i64 {
    ledger(state_dir).query_row(sql, [], |row| row.get(0)).unwrap()
}

fn run_ids_in_ledger(state_dir: &Path) -> BTreeSet<String> {
    let connection = ledger(state_dir);
    let mut statement = connection.prepare("SELECT id FROM runs").unwrap();
    statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
}

fn run_directories(state_dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(state_dir.join("runs")) {
        Ok(entries) => entries.map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn run_id_of(output: &CliOutput) -> String {
    report_json(output)["run_id"].as_str().unwrap_or_else(|| panic!("no run id\n{output}")).to_string()
}

/// `n` runs of `benchmark` with `--skip-cleanup`, a few at once; their ids, in order of starting.
async fn short_runs(state_dir: &Path, benchmark: &Path, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for batch in (0..n).collect::<Vec<_>>().chunks(4) {
        let runs = batch.iter().map(|_| {
            let mut command = benchwarden_command_in(state_dir);
            command.args(["run", benchmark.to_str().unwrap(), "--skip-cleanup"]);
            run_cli(command)
        });
        for output in futures_util::future::join_all(runs).await {
            output.assert_code(0);
            ids.push(run_id_of(&output));
        }
    }
    ids
}

async fn cli_in(state_dir: &Path, args: &[&str]) -> CliOutput {
    let mut command = benchwarden_command_in(state_dir);
    command.args(args).env_remove("BENCHWARDEN_RETENTION");
    run_cli(command).await
}

/// Runs that own something: one that leaked a container (its removal
/// answered 500 every time: the run stays open, orphaned once it exits) and
/// one whose failed task kept its container (`--keep-failed`: it ended).
async fn leaked_and_kept_runs(scope: &TestScope) -> (String, String) {
    let fixture = fixture(scope, &[("leaks", "start_container"), ("keeps", "start_container\nexit 1")], "");
    let engine = FaultyEngine::start(vec![Rule::new("DELETE", "/containers/", Fault::ServerError, When::EveryNth(1))]);
    let mut command = scope.benchwarden();
    command.env("DOCKER_HOST", engine.docker_host());
    command.args(["--retries", "0", "run", path(&fixture), "--tasks", "leaks", "--skip-cleanup"]);
    let leaked = run_cli(command).await;
    leaked.assert_code(3);
    let kept = scope.cli(&["run", path(&fixture), "--tasks", "keeps", "--skip-cleanup", "--keep-failed"]).await;
    kept.assert_code(1);
    assert_eq!(scope.leftovers().await.containers.len(), 2, "{leaked}\n{kept}");
    (run_id_of(&leaked), run_id_of(&kept))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_runs_aged_past_the_retention_are_pruned_and_runs_that_own_something_survive() {
    let started = Instant::now();
    let scope = TestScope::new("retention").await;
    let state = scope.state_dir().to_path_buf();
    let (leaked, kept) = leaked_and_kept_runs(&scope).await;
    let benchmark = ten_task_benchmark(&state);
    let total = figures::count(200, 1000);
    let short = short_runs(&state, &benchmark, total).await;
    let aged = total * 7 / 10;
    age(&state, &[leaked.clone(), kept.clone()], 40);
    age(&state, &short[..aged], 40);
    age(&state, &short[aged..aged + 10], 29);
    let (old, young): (Vec<String>, Vec<String>) = (short[..aged].to_vec(), short[aged..].to_vec());

    // A run that is running now, its harness waiting for a file.
    let waiting = state.join("waiting.yaml");
    let release = state.join("release");
    let command = format!("until [ -e {} ]; do sleep 0.05; done", release.display());
    std::fs::write(
        &waiting,
        format!("name: waiting\nharness:\n  command: [sh, -c, {command:?}]\ndocker:\n  enabled: false\n"),
    )
    .unwrap();
    let mut running_command = benchwarden_command_in(&state);
    running_command.args(["run", waiting.to_str().unwrap(), "--skip-cleanup"]);
    let mut running = Running::start(running_command);
    running.wait_for("task main: started").await;
    let running_id = only_run_of(&state, "waiting");

    // Socket directories as `kill -9`ed runs leave them, and one of the running run.
    let sockets = state.join("sockets");
    let socket_of = |run_id: &str| sockets.join(format!("{run_id}.abcdefghij"));
    for run_id in [&old[0], &leaked, &running_id] {
        std::fs::create_dir_all(socket_of(run_id)).unwrap();
    }

    // `status` by default: what needs attention and the last 20 finished runs.
    let status = cli_in(&state, &["status", "--json"]).await;
    status.assert_code(0);
    let status = status.json();
    let shown: BTreeSet<&str> =
        status["runs"].as_array().unwrap().iter().map(|run| run["id"].as_str().unwrap()).collect();
    let in_ledger = total + 3;
    assert_eq!(shown.len(), 3 + 20, "{shown:?}");
    assert!(shown.contains(leaked.as_str()) && shown.contains(kept.as_str()) && shown.contains(running_id.as_str()));
    let connection = ledger(&state);
    let mut last_finished = connection
        .prepare("SELECT id FROM runs WHERE ended_at IS NOT NULL ORDER BY started_at DESC, rowid DESC LIMIT 20")
        .unwrap();
    let last_finished: Vec<String> =
        last_finished.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect();
    assert!(last_finished.iter().all(|id| young.contains(id) && shown.contains(id.as_str())), "{shown:?}");
    assert_eq!(status["runs_left_out"], in_ledger - shown.len(), "{status}");
    let all = cli_in(&state, &["status", "--all", "--json"]).await.json();
    assert_eq!((all["runs"].as_array().unwrap().len(), all["runs_left_out"].clone()), (in_ledger, Value::from(0)));
    let recent = cli_in(&state, &["status", "--since", "1d", "--json"]).await.json();
    let recent: BTreeSet<&str> =
        recent["runs"].as_array().unwrap().iter().map(|run| run["id"].as_str().unwrap()).collect();
    let started_today: BTreeSet<&str> =
        short[aged + 10..].iter().map(String::as_str).chain([running_id.as_str()]).collect();
    assert_eq!(recent, started_today, "--since 1d shows the runs started within a day");
    let text = cli_in(&state, &["status"]).await;
    assert!(
        text.stdout.contains(&format!("{} older finished run(s) owning nothing not shown", in_ledger - 23)),
        "{text}"
    );

    // A dry run changes nothing.
    let directories_before = run_directories(&state);
    let dry = cli_in(&state, &["prune", "--dry-run", "--json"]).await;
    dry.assert_code(0);
    assert_eq!(dry.json()["runs"].as_array().unwrap().len(), aged, "{dry}");
    assert_eq!(run_ids_in_ledger(&state).len(), in_ledger, "{dry}");
    assert_eq!(run_directories(&state), directories_before);
    assert!(socket_of(&old[0]).exists() && socket_of(&leaked).exists());

    let pruned = cli_in(&state, &["prune", "--json"]).await;
    pruned.assert_code(0);
    let report = pruned.json();
    let forgotten: BTreeSet<String> =
        report["runs"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_string()).collect();
    assert_eq!(forgotten, old.iter().cloned().collect(), "{pruned}");
    assert_eq!(report["run_directories"].as_array().unwrap().len(), aged, "{pruned}");
    let (before, after) = (report["vacuum"]["bytes_before"].as_u64(), report["vacuum"]["bytes_after"].as_u64());
    let (Some(before), Some(after)) = (before, after) else { panic!("the ledger was not vacuumed\n{pruned}") };
    assert!(after * 2 < before, "{pruned}");
    let on_disk = std::fs::metadata(state.join("ledger.sqlite")).unwrap().len();
    assert_eq!(on_disk, after, "the vacuumed ledger's WAL was not folded back\n{pruned}");

    // What is left, read from the ledger file and the disk.
    let survivors: BTreeSet<String> =
        young.iter().cloned().chain([leaked.clone(), kept.clone(), running_id.clone()]).collect();
    assert_eq!(run_ids_in_ledger(&state), survivors);
    assert_eq!(run_directories(&state), survivors, "a directory per run the ledger still knows, no other");
    let rows_of_pruned = old.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",");
    for table in ["tasks", "claims", "resources", "images"] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE run_id IN ({rows_of_pruned})");
        assert_eq!(count(&state, &sql), 0, "{table} still has rows of pruned runs");
    }
    let owned =
        format!("SELECT COUNT(*) FROM resources WHERE released_at IS NULL AND run_id IN ('{leaked}', '{kept}')");
    assert_eq!(count(&state, &owned), 2, "the leaked and the kept container are still recorded");
    let (pages, free) = (count(&state, "PRAGMA page_count"), count(&state, "PRAGMA freelist_count"));
    assert!(free * 2 <= pages, "the ledger is more than half free pages after a prune: {free} of {pages}");
    assert!(!socket_of(&old[0]).exists() && !socket_of(&leaked).exists(), "{pruned}");
    assert!(socket_of(&running_id).exists(), "the running run's socket directory was removed\n{pruned}");

    let again = cli_in(&state, &["prune", "--json"]).await;
    assert_eq!(again.json()["runs"], serde_json::json!([]), "{again}");

    std::fs::write(&release, "").unwrap();
    running.finish().await.assert_code(0);
    std::fs::remove_dir_all(socket_of(&running_id)).unwrap();
    // What the two runs own goes with the commands meant for it, proven by listing.
    scope.cli(&["recover"]).await.assert_code(0);
    scope.cli(&["recover", "--include-kept", "--run", &kept]).await.assert_code(0);
    let left = scope.leftovers().await;
    assert!(left.is_empty(), "resources left: {left:?}");
    figures::record(
        "retention-prune",
        serde_json::json!({"runs": total + 3, "pruned": forgotten.len(), "survived": survivors.len(),
                           "seconds": started.elapsed().as_secs_f64(), "left": 0}),
    );
}

/// The id of the one run of benchmark `name` in the ledger.
fn only_run_of(state_dir: &Path, name: &str) -> String {
    ledger(state_dir)
        .query_row("SELECT id FROM runs WHERE benchmark = ?1", [name], |row| row.get(0))
        .unwrap_or_else(|error| panic!("no single run of {name}: {error}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn run_cleanup_all_and_sweep_prune_first_unless_told_not_to_with_the_retention_of_the_flag_or_variable() {
    let state = tempfile::Builder::new().prefix("state-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = state.path();
    let benchmark = short_benchmark(state);
    let first = short_runs(state, &benchmark, 4).await;
    age(state, &first, 40);
    let run = |retention: Option<&str>, extra: &[&str]| {
        let mut command = benchwarden_command_in(state);
        command.args(["run", benchmark.to_str().unwrap()]).args(extra).env_remove("BENCHWARDEN_RETENTION");
        if let Some(retention) = retention {
            command.env("BENCHWARDEN_RETENTION", retention);
        }
        run_cli(command)
    };

    let skipped = run(None, &["--skip-cleanup"]).await;
    skipped.assert_code(0);
    let longer = run(Some("60d"), &[]).await;
    longer.assert_code(0);
    assert_eq!(run_ids_in_ledger(state).len(), 6, "--skip-cleanup, and a retention of 60d, prune nothing");
    let flag_wins = run(Some("60d"), &["--retention", "35d"]).await;
    flag_wins.assert_code(0);
    assert!(flag_wins.stderr.contains("prune: forgot 4 finished run(s) older than 35d"), "{flag_wins}");
    let after_run: BTreeSet<String> = [&skipped, &longer, &flag_wins].into_iter().map(run_id_of).collect();
    assert_eq!(run_ids_in_ledger(state), after_run);
    assert_eq!(run_directories(state), after_run);

    age(state, &[run_id_of(&skipped), run_id_of(&longer)], 40);
    let no_daytona = |args: &[&str]| {
        let mut command = benchwarden_command_in(state);
        command.args(args).env_remove("BENCHWARDEN_RETENTION").env_remove("DAYTONA_API_KEY");
        command.env_remove("DAYTONA_JWT_TOKEN");
        run_cli(command)
    };
    let dry = no_daytona(&["cleanup", "all", "--daytona-only", "--dry-run"]).await;
    dry.assert_code(0);
    assert!(dry.stderr.contains("prune: would forget 2"), "{dry}");
    assert_eq!(run_ids_in_ledger(state).len(), 3, "a dry run prunes nothing");
    no_daytona(&["cleanup", "all", "--daytona-only"]).await.assert_code(0);
    let last = BTreeSet::from([run_id_of(&flag_wins)]);
    assert_eq!((run_ids_in_ledger(state), run_directories(state)), (last.clone(), last));

    age(state, &[run_id_of(&flag_wins)], 31);
    let swept = no_daytona(&["sweep", "--once", "--daytona-only"]).await;
    swept.assert_code(0);
    assert!(swept.stderr.contains("prune: forgot 1"), "{swept}");
    assert_eq!((run_ids_in_ledger(state), run_directories(state)), (BTreeSet::new(), BTreeSet::new()));

    let bad = no_daytona(&["prune", "--older-than", "300000000000y"]).await;
    bad.assert_code(2);
    let mut command = benchwarden_command_in(state);
    command.args(["prune"]).env("BENCHWARDEN_RETENTION", "forever");
    let bad_variable = run_cli(command).await;
    bad_variable.assert_code(2);
    assert!(bad_variable.stderr.contains("BENCHWARDEN_RETENTION=\"forever\""), "{bad_variable}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_of_a_newer_release_is_refused_with_exit_2_and_never_written() {
    let state = tempfile::Builder::new().prefix("state-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = state.path();
    let benchmark = short_benchmark(state);
    short_runs(state, &benchmark, 1).await;
    {
        // As a newer release would leave it: a higher version, in one file.
        let connection = ledger(state);
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, 1, "this release writes version 1");
        connection.pragma_update(None, "user_version", 2).unwrap();
        connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        connection.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let file = state.join("ledger.sqlite");
    let before = std::fs::read(&file).unwrap();
    for args in [
        vec!["status"],
        vec!["prune"],
        vec!["recover"],
        vec!["run", benchmark.to_str().unwrap()],
        vec!["cleanup", "all", "--daytona-only"],
    ] {
        let output = cli_in(state, &args).await;
        output.assert_code(2);
        assert!(output.stderr.contains("was made by a newer benchwarden (ledger schema version 2"), "{output}");
        assert_eq!(std::fs::read(&file).unwrap(), before, "{args:?} wrote the ledger\n{output}");
        assert!(!state.join("ledger.sqlite-wal").exists(), "{args:?} made a WAL beside it");
    }
}
