//! Two runs on one host at once, sharing one state directory (one ledger):
//! one of them under a [`FaultyEngine`]'s faults, the other sweeping by age 0
//! before it starts. Neither takes the other's resources while it lives; the
//! ledger keeps every row of both; a run killed by SIGKILL is recovered (by
//! `recover`, or by the next run) while the other lives on untouched.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bollard::query_parameters::{EventsOptions, ListContainersOptions, ListNetworksOptions};
use futures_util::{Stream, StreamExt};
use nix::sys::signal::Signal;

use crate::common::faulty::{Fault, FaultyEngine, Rule, When};
use crate::common::{CliOutput, Running, ScopedEngine, TestScope};
use crate::harnesses::run_processes;
use crate::run::{fixture, fixture_processes, path, report_json, Fixture};

/// The fixture: tasks that create and then hold on until the test drops the
/// file `release`, and tasks that create and exit.
struct Shared {
    scope: TestScope,
    engine: ScopedEngine,
    fixture: Fixture,
    release: std::path::PathBuf,
}

impl Shared {
    async fn new(name: &str) -> Self {
        let scope = TestScope::new(name).await;
        let engine = ScopedEngine::start(&scope.label_arg());
        let release = scope.state_dir().join("release");
        // The harness waits for the file; the test drops it when it has looked at everything.
        let hold = format!("echo holding-on; while [ ! -e {} ]; do sleep 0.1; done; exit 0", release.display());
        let creates = |count: usize| format!("i=0; while [ $i -lt {count} ]; do i=$((i + 1)); start_container; done");
        let (two, four) = (creates(2), creates(4));
        let tasks = [
            ("holds", format!("{two}\ncreate_network\n{hold}")),
            ("holds-longer", format!("{four}\ncreate_network\n{hold}")),
            ("quick", format!("{two}\ncreate_network\nexit 0")),
            ("quick-too", format!("{two}\ncreate_network\nexit 0")),
            ("noop", "exit 0".to_string()),
        ];
        let tasks: Vec<(&str, &str)> = tasks.iter().map(|(name, body)| (*name, body.as_str())).collect();
        let fixture = fixture(&scope, &tasks, "");
        Shared { scope, engine, fixture, release }
    }

    /// `benchwarden ARGS` of the shared state directory, through `docker_host`.
    fn command(&self, docker_host: &str, args: &[&str]) -> std::process::Command {
        let mut command = self.scope.benchwarden();
        command.args(args).env("DOCKER_HOST", docker_host);
        command
    }

    /// `run --tasks TASKS -j JOBS`, seeing the engine through the scoped
    /// socket, its pre-run sweep by age 0 (what it sees is this test's only).
    fn start(&self, tasks: &str, jobs: &str) -> Running {
        let args = ["run", path(&self.fixture), "--tasks", tasks, "-j", jobs, "--grace", "2s", "--cleanup-age", "0s"];
        Running::start(self.command(&self.engine.docker_host(), &args))
    }

    /// `run --tasks TASKS -j JOBS` through `engine`'s faults, with quick
    /// retries, and without a pre-run sweep: the faulty socket shows the
    /// whole engine, whose leftovers are not this test's to take.
    fn start_through(&self, engine: &FaultyEngine, tasks: &str, jobs: &str) -> Running {
        let run = ["run", path(&self.fixture), "--tasks", tasks, "-j", jobs, "--skip-cleanup"];
        let args = [&["--retries", "4", "--retry-delay", "100ms"][..], &run[..]].concat();
        Running::start(self.command(&engine.docker_host(), &args))
    }

    async fn cli(&self, args: &[&str]) -> CliOutput {
        crate::common::run_cli(self.command(&self.engine.docker_host(), args)).await
    }

    /// The ids of the containers and networks that carry `benchwarden.run=RUN`.
    async fn owned_by(&self, run_id: &str) -> BTreeSet<String> {
        let filters = HashMap::from([("label".to_string(), vec![format!("benchwarden.run={run_id}")])]);
        let docker = self.scope.docker();
        let options = ListContainersOptions { all: true, filters: Some(filters.clone()), ..Default::default() };
        let containers = docker.list_containers(Some(options)).await.unwrap();
        let networks = docker.list_networks(Some(ListNetworksOptions { filters: Some(filters) })).await.unwrap();
        containers
            .into_iter()
            .filter_map(|container| container.id)
            .chain(networks.into_iter().filter_map(|n| n.id))
            .collect()
    }

    /// The ledger's resource rows of `run_id`: how many, and how many are released.
    fn ledger_rows(&self, run_id: &str) -> (i64, i64) {
        let path = self.scope.state_dir().join("ledger.sqlite");
        let ledger = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        ledger
            .query_row("SELECT COUNT(*), COUNT(released_at) FROM resources WHERE run_id = ?1", [run_id], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .unwrap()
    }
}

/// The names of the networks the engine creates from now on (a network's
/// events carry no labels; the fixture's are named `<run id>-<task>`).
fn network_creates(scope: &TestScope) -> impl Stream<Item = String> + Unpin {
    let filters = HashMap::from([
        ("type".to_string(), vec!["network".to_string()]),
        ("event".to_string(), vec!["create".to_string()]),
    ]);
    let since = crate::limits::chrono_now().to_string();
    let options = EventsOptions { since: Some(since), until: None, filters: Some(filters) };
    Box::pin(scope.docker().events(Some(options)).filter_map(|event| {
        std::future::ready(event.ok().and_then(|event| event.actor?.attributes?.get("name").cloned()))
    }))
}

/// Waits for the create of the network of `run_id`'s task `task`.
async fn network_of(creates: &mut (impl Stream<Item = String> + Unpin), run_id: &str, task: &str) {
    let wanted = format!("{run_id}-{task}");
    let waiting = async {
        while let Some(name) = creates.next().await {
            if name == wanted {
                return;
            }
        }
        panic!("the engine's event stream ended")
    };
    tokio::time::timeout(Duration::from_secs(60), waiting).await.unwrap_or_else(|_| panic!("no network {wanted}"))
}

/// The `status --json` entry of `run_id`.
fn status_of<'a>(status: &'a serde_json::Value, run_id: &str) -> &'a serde_json::Value {
    let runs = status["runs"].as_array().unwrap_or_else(|| panic!("{status}"));
    runs.iter().find(|run| run["id"] == run_id).unwrap_or_else(|| panic!("run {run_id} is not in the ledger: {status}"))
}

/// The containers and networks a run's report says its tasks created.
fn created(report: &serde_json::Value) -> i64 {
    report["tasks"].as_array().unwrap().iter().map(|task| task["resources"]["created"].as_i64().unwrap()).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_at_once_with_one_state_directory_take_nothing_of_each_other_and_the_ledger_keeps_every_row() {
    let shared = Shared::new("two-runs").await;
    let faulty = FaultyEngine::start(vec![
        Rule::new("POST", "/containers/create", Fault::Slow(Duration::from_millis(200)), When::EveryNth(1)),
        Rule::new("DELETE", "/containers/", Fault::ServerError, When::First(2)),
        Rule::new("DELETE", "/containers/", Fault::RemovalInProgress, When::First(1)),
        Rule::new("DELETE", "/networks/", Fault::Reset, When::First(1)),
    ]);
    let mut creates = network_creates(&shared.scope);
    // The first run, under faults: every create slowed, its first removals failing.
    let mut first = shared.start_through(&faulty, "holds,holds-longer", "2");
    let first_id = first.run_id().await;
    network_of(&mut creates, &first_id, "holds").await;
    // The second starts while the first holds two containers and a network and goes on creating;
    // its pre-run sweep by age 0 sees them, claimed by the benchmark's selector.
    let second = shared.start("quick,quick-too", "2").finish().await;
    second.assert_code(0);
    let second_report = report_json(&second);
    let second_id = second_report["run_id"].as_str().unwrap().to_string();
    let protected = second_report["pre_run_sweep"]["protected"].as_array().map_or(0, Vec::len);
    assert!(protected >= 2, "the second run's sweep did not see the first run's containers\n{second}");
    assert_eq!(shared.owned_by(&second_id).await, BTreeSet::new(), "the second run left something\n{second}");

    network_of(&mut creates, &first_id, "holds-longer").await;
    let first_owned = shared.owned_by(&first_id).await;
    assert_eq!(first_owned.len(), 2 + 1 + 4 + 1, "the first run lost resources while it lived\n{second}");
    let status = shared.cli(&["status", "--json"]).await.json();
    let (first_status, second_status) = (status_of(&status, &first_id), status_of(&status, &second_id));
    assert_eq!(first_status["state"], "running", "{status}");
    assert_eq!(first_status["live_resources"].as_array().unwrap().len(), first_owned.len(), "{status}");
    assert_eq!(second_status["state"], "finished", "{status}");
    assert_eq!(second_status["live_resources"], serde_json::json!([]), "{status}");

    std::fs::write(&shared.release, "").unwrap();
    let first = first.finish().await;
    first.assert_code(0);
    let injected: Vec<usize> = (0..4).map(|rule| faulty.injected(rule)).collect();
    assert_eq!(injected, [6, 2, 1, 1], "the faults did not all happen\n{first}");
    assert!(first.stderr.contains("retrying in"), "the retries are not shown\n{first}");
    for (run_id, report, made) in [(&first_id, report_json(&first), 8), (&second_id, second_report, 6)] {
        assert_eq!(created(&report), made, "{report}");
        assert_eq!(shared.ledger_rows(run_id), (made, made), "run {run_id}: a ledger row is missing or unreleased");
        assert_eq!(run_processes(run_id), Vec::<String>::new(), "processes of run {run_id} left");
    }
    let status = shared.cli(&["status", "--json"]).await.json();
    for run_id in [&first_id, &second_id] {
        assert_eq!(status_of(&status, run_id)["state"], "finished", "{status}");
    }
    let left = shared.scope.leftovers().await;
    assert!(left.is_empty(), "resources left: {left:?}\n{first}");
    assert_eq!(fixture_processes(&shared.scope), Vec::<u32>::new(), "harness processes left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_while_another_lives_is_recovered_without_touching_the_live_one() {
    let shared = Shared::new("two-runs-kill").await;
    let mut live = shared.start("holds", "1");
    let live_id = live.run_id().await;
    live.wait_for("holding-on").await;
    let live_owned = shared.owned_by(&live_id).await;
    assert_eq!(live_owned.len(), 3, "two containers and a network");
    let mut killed = Vec::new();
    for finisher in ["recover", "the next run"] {
        let mut doomed = shared.start("holds-longer", "1");
        let doomed_id = doomed.run_id().await;
        doomed.wait_for("holding-on").await;
        assert_eq!(shared.owned_by(&doomed_id).await.len(), 5, "four containers and a network");
        doomed.send(Signal::SIGKILL);
        doomed.finish().await;
        assert!(!run_processes(&doomed_id).is_empty(), "the killed run's harness should outlive it");
        let after = match finisher {
            "recover" => shared.cli(&["recover"]).await,
            _ => shared.cli(&["run", path(&shared.fixture), "--tasks", "noop", "--cleanup-age", "0s"]).await,
        };
        after.assert_code(0);
        let context = format!("{finisher} after SIGKILL of run {doomed_id}\n{after}");
        assert_eq!(shared.owned_by(&doomed_id).await, BTreeSet::new(), "{context}");
        assert_eq!(run_processes(&doomed_id), Vec::<String>::new(), "{context}");
        assert_eq!(shared.owned_by(&live_id).await, live_owned, "the live run's resources were touched: {context}");
        assert!(!run_processes(&live_id).is_empty(), "the live run's harness was killed: {context}");
        killed.push(doomed_id);
    }
    std::fs::write(&shared.release, "").unwrap();
    let output = live.finish().await;
    output.assert_code(0);
    let status = shared.cli(&["status", "--json"]).await.json();
    assert_eq!(status_of(&status, &live_id)["outcome"], "passed", "{status}");
    for run_id in &killed {
        assert_eq!(status_of(&status, run_id)["outcome"], "recovered", "{status}");
        assert_eq!(shared.ledger_rows(run_id), (5, 5), "run {run_id}: a ledger row is missing or unreleased");
    }
    assert_eq!(shared.ledger_rows(&live_id), (3, 3), "the live run's ledger rows");
    let left = shared.scope.leftovers().await;
    assert!(left.is_empty(), "resources left: {left:?}\n{output}");
    assert_eq!(fixture_processes(&shared.scope), Vec::<u32>::new(), "harness processes left");
}
