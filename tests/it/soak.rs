//! The Docker soak: one run of many tasks at once, each making two
//! containers and a network through the proxy; a tenth crash half way, a
//! tenth hang past `--timeout`, one in twenty double-forks a daemon that goes
//! on creating after the harness has gone; and one Ctrl-C at a random moment
//! after some tasks have finished. Afterwards the engine is listed: nothing
//! with the run's labels is left, and the report accounts for every task.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::chaos::seeded;
use crate::common::{self, figures, Running, TestScope};
use crate::harnesses::run_processes;
use crate::run::{fixture, fixture_processes, path, report_json};

/// What a soak task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Two containers and a network, then exit 0.
    Normal,
    /// One container, then exit 3 before the rest.
    Crash,
    /// Two containers and a network, then never ends.
    Hang,
    /// Two containers and a network, and a double-forked daemon that goes on creating; exit 0.
    DoubleFork,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Normal => "normal",
            Kind::Crash => "crash",
            Kind::Hang => "hang",
            Kind::DoubleFork => "double-fork",
        }
    }

    /// The outcome the task has when the Ctrl-C did not cut it short.
    fn outcome(self) -> &'static str {
        match self {
            Kind::Normal | Kind::DoubleFork => "passed",
            Kind::Crash => "failed",
            Kind::Hang => "timed_out",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Kind::Normal => "start_container; start_container; create_network; exit 0",
            Kind::Crash => "start_container; echo crashing >&2; exit 3",
            Kind::Hang => "start_container; start_container; create_network; while :; do sleep 1; done",
            Kind::DoubleFork => {
                "( ( exec >/dev/null 2>&1 </dev/null; while :; do start_container; sleep 0.2; done ) & ) &\n\
                 start_container; start_container; create_network; exit 0"
            }
        }
    }
}

/// `count` task kinds in a random order: a tenth crash, a tenth hang, a twentieth double-fork.
fn kinds(count: usize, rng: &mut fastrand::Rng) -> Vec<Kind> {
    let (crash, hang, double_fork) = (count / 10, count / 10, count.div_ceil(20));
    let mut kinds = [(Kind::Crash, crash), (Kind::Hang, hang), (Kind::DoubleFork, double_fork)]
        .iter()
        .flat_map(|(kind, times)| std::iter::repeat_n(*kind, *times))
        .collect::<Vec<_>>();
    kinds.resize(count, Kind::Normal);
    rng.shuffle(&mut kinds);
    kinds
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_soak_leaves_nothing_and_accounts_for_every_task() {
    let (mut rng, seed) = seeded("docker-soak");
    let (tasks, jobs) = (figures::count(24, 200), figures::count(4, 8));
    let scope = TestScope::new("soak").await;
    let kinds = kinds(tasks, &mut rng);
    let names: Vec<String> =
        kinds.iter().enumerate().map(|(index, kind)| format!("t{index:03}-{}", kind.name())).collect();
    let pairs: Vec<(&str, &str)> = names.iter().map(String::as_str).zip(kinds.iter().map(|kind| kind.body())).collect();
    let fixture = fixture(&scope, &pairs, "");

    let jobs_arg = jobs.to_string();
    let mut command = scope.benchwarden();
    command.args(["run", path(&fixture), "-j", &jobs_arg, "--timeout", "8s", "--grace", "1s"]);
    let started = Instant::now();
    let mut running = Running::start_as_job(command);
    // One Ctrl-C, once half to three quarters of the tasks have ended, and a moment more.
    let ended_before = rng.usize(tasks / 2..=tasks * 3 / 4);
    for _ in 0..ended_before {
        running.wait_for(": tearing down").await;
    }
    tokio::time::sleep(Duration::from_millis(rng.u64(0..=1000))).await;
    running.press(Signal::SIGINT);
    let output = running.finish().await;
    let wall = started.elapsed();
    let context = format!("seed {seed}: Ctrl-C after {ended_before} task(s) ended\n{output}");
    output.assert_code(130);

    let report = report_json(&output);
    let run_id = report["run_id"].as_str().unwrap().to_string();
    let reported = report["tasks"].as_array().unwrap();
    let named: std::collections::BTreeSet<&str> = reported.iter().filter_map(|task| task["task"].as_str()).collect();
    assert_eq!(named.len(), tasks, "a task is missing from the report\n{context}");
    let mut outcomes: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    let mut created = 0;
    let kind_of: BTreeMap<&str, Kind> = names.iter().map(String::as_str).zip(kinds.iter().copied()).collect();
    for task in reported {
        let name = task["task"].as_str().unwrap();
        let kind = kind_of.get(name).unwrap_or_else(|| panic!("{name} is not a task of the run\n{context}"));
        let outcome = task["outcome"].as_str().unwrap().to_string();
        let expected = [kind.outcome(), "interrupted", "not_started"];
        assert!(expected.contains(&outcome.as_str()), "{name}: {outcome}\n{task}\n{context}");
        assert_eq!(task["resources"]["leaked"], 0, "{name} leaked\n{task}\n{context}");
        created += task["resources"]["created"].as_u64().unwrap();
        *outcomes.entry(kind.name()).or_default().entry(outcome).or_default() += 1;
    }
    let cut_short = outcomes
        .values()
        .flat_map(|by_outcome| by_outcome.iter())
        .any(|(outcome, _)| outcome == "interrupted" || outcome == "not_started");
    assert!(cut_short, "the Ctrl-C came after every task had ended: it tested nothing\n{context}");

    let left = scope.leftovers().await;
    let by_run = common::leftovers(scope.docker(), &[format!("benchwarden.run={run_id}")]).await.unwrap();
    assert!(left.is_empty() && by_run.is_empty(), "resources left: {left:?} {by_run:?}\n{context}");
    assert_eq!(run_processes(&run_id), Vec::<String>::new(), "processes of the run left\n{context}");
    assert_eq!(fixture_processes(&scope), Vec::<u32>::new(), "harness processes left\n{context}");
    figures::record(
        "docker-soak",
        json!({"tasks": tasks, "jobs": jobs, "outcomes": outcomes, "wall_seconds": wall.as_secs_f64(),
               "created": created, "left": 0, "ctrl_c_after_tasks_ended": ended_before, "seed": seed}),
    );
}
