//! benchwarden itself interrupted at random moments, many times over: Ctrl-C
//! (once, twice, three times) during the pre-run sweep, during a create,
//! during a teardown and while `recover` runs; SIGKILL at those moments, then
//! `recover` or the next run's pre-run sweep. Each moment is an event (a line
//! benchwarden or its harness wrote) plus a random delay; the seed is printed,
//! and `BENCHWARDEN_CHAOS_SEED` replays it. Each iteration ends by listing the
//! engine and `/proc`: nothing of the test is left, whatever benchwarden said.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::common::{figures, CliOutput, Running, ScopedEngine, TestScope};
use crate::harnesses::run_processes;
use crate::run::{fixture, fixture_processes, path, Fixture};

/// A random source whose seed is printed, so that a failure can be replayed
/// with `BENCHWARDEN_CHAOS_SEED=<seed>`.
pub(crate) fn seeded(case: &str) -> (fastrand::Rng, u64) {
    let seed = match std::env::var("BENCHWARDEN_CHAOS_SEED") {
        Ok(seed) => seed.parse().unwrap_or_else(|_| panic!("BENCHWARDEN_CHAOS_SEED={seed:?} is not a number")),
        Err(_) => fastrand::u64(..),
    };
    eprintln!("{case}: seed {seed} (BENCHWARDEN_CHAOS_SEED={seed} replays it)");
    (fastrand::Rng::with_seed(seed), seed)
}

/// Where in a run the interruption is aimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Removing the old leftovers seeded before the run (`--cleanup-age 0s`).
    PreRunSweep,
    /// The harness is creating its containers through the proxy.
    Create,
    /// The harness has exited; its containers and network are being removed.
    Teardown,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::PreRunSweep, Phase::Create, Phase::Teardown];

    fn name(self) -> &'static str {
        match self {
            Phase::PreRunSweep => "pre-run sweep",
            Phase::Create => "create",
            Phase::Teardown => "teardown",
        }
    }

    /// The fixture task the run is given: one that holds on after its
    /// creates (so only the interruption ends the run), or one that exits.
    fn task(self) -> &'static str {
        match self {
            Phase::PreRunSweep | Phase::Create => "holds",
            Phase::Teardown => "finishes",
        }
    }
}

/// Three containers, one at a time, each announced first.
const CREATES: &str = "i=0; while [ $i -lt 3 ]; do i=$((i + 1)); echo creating-$i; start_container; done";

/// One iteration's corner: its scope, its view of the engine (the pre-run
/// sweep by age 0 must see only this test's containers), its fixture, and
/// the old leftovers it seeded for the pre-run sweep to take.
struct Stage {
    scope: TestScope,
    engine: ScopedEngine,
    fixture: Fixture,
    seeded: BTreeSet<String>,
}

impl Stage {
    async fn new(name: &str) -> Self {
        let scope = TestScope::new(name).await;
        let engine = ScopedEngine::start(&scope.label_arg());
        let holds = format!("{CREATES}\ncreate_network\necho holding-on\nwhile :; do sleep 1; done");
        let finishes = format!("{CREATES}\ncreate_network\necho created\nexit 0");
        let tasks = [("holds", holds.as_str()), ("finishes", finishes.as_str()), ("noop", "exit 0")];
        let fixture = fixture(&scope, &tasks, "");
        Stage { scope, engine, fixture, seeded: BTreeSet::new() }
    }

    /// Old leftovers of a run long gone, claimed by the fixture's selector:
    /// the pre-run sweep's work.
    async fn seed_leftovers(&mut self, count: usize) {
        let owner = format!("fixture.owner.{}", self.scope.id());
        for _ in 0..count {
            let id = self.scope.running(&[(owner.as_str(), "20200101-0000-gone.holds")]).await;
            self.seeded.insert(id);
        }
    }

    /// `benchwarden ARGS` of this stage's state directory, seeing the engine through its scoped socket.
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.scope.benchwarden();
        command.args(args).env("DOCKER_HOST", self.engine.docker_host());
        command
    }

    /// Starts `run --tasks TASK` as a foreground job.
    fn start_run(&self, task: &str) -> Running {
        let args = ["run", path(&self.fixture), "--tasks", task, "-j", "1", "--grace", "2s", "--cleanup-age", "0s"];
        Running::start_as_job(self.command(&args))
    }

    async fn cli(&self, args: &[&str]) -> CliOutput {
        crate::common::run_cli(self.command(args)).await
    }

    /// The next run, of a task that does nothing: its pre-run recovery and sweep are the point.
    async fn next_run(&self) -> CliOutput {
        self.cli(&["run", path(&self.fixture), "--tasks", "noop", "--cleanup-age", "0s"]).await
    }

    /// Asserts that nothing of the scope is left on the engine and no process of `run_id` or of the fixture lives.
    async fn assert_nothing_left(&self, run_id: &str, context: &str) {
        let left = self.scope.leftovers().await;
        assert!(left.is_empty(), "resources left: {left:?}\n{context}");
        assert_eq!(run_processes(run_id), Vec::<String>::new(), "processes of run {run_id} left\n{context}");
        assert_eq!(fixture_processes(&self.scope), Vec::<u32>::new(), "harness processes left\n{context}");
    }

    /// After a run cut short, the orphaned run's recovery: what is left may
    /// only be the seeded leftovers the pre-run sweep did not reach (they
    /// were never the run's), and the next run's pre-run sweep takes those.
    async fn after_recovery(&self, run_id: &str, context: &str) {
        let left = self.scope.leftovers().await;
        let unexpected: Vec<_> =
            left.containers.iter().filter(|container| !self.seeded.contains(&container.id)).collect();
        assert!(
            unexpected.is_empty() && left.networks.is_empty() && left.volumes.is_empty(),
            "the run's own resources are left after recovery: {left:?}\n{context}"
        );
        if !left.is_empty() {
            let next = self.next_run().await;
            next.assert_code(0);
            self.assert_nothing_left(run_id, &format!("{context}\n--- the next run ---\n{next}")).await;
        }
        self.assert_nothing_left(run_id, context).await;
    }
}

/// Starts a run aimed at `phase` (seeding the pre-run sweep's leftovers
/// first when that is the phase), and waits for the phase's event and then
/// a random delay within the phase's usual length. Returns the run and its id.
async fn run_until(stage: &mut Stage, phase: Phase, rng: &mut fastrand::Rng) -> (Running, String) {
    if phase == Phase::PreRunSweep {
        stage.seed_leftovers(3).await;
    }
    let mut running = stage.start_run(phase.task());
    let run_id = running.run_id().await;
    let longest = match phase {
        Phase::PreRunSweep => 400,
        Phase::Create => {
            running.wait_for(&format!("creating-{}", rng.usize(1..=3))).await;
            400
        }
        Phase::Teardown => {
            running.wait_for("task finishes: tearing down").await;
            250
        }
    };
    tokio::time::sleep(Duration::from_millis(rng.u64(0..=longest))).await;
    (running, run_id)
}

/// What each press waits for before the next: that the one before took hold
/// (signals sent back to back may merge into one; a person's do not).
const TAKEN: [&str; 2] = ["SIGINT: starting no new tasks", "SIGINT again: killing every harness now"];

/// Presses Ctrl-C `presses` times; stops early when benchwarden exits.
async fn press_ctrl_c(running: &mut Running, presses: usize) {
    for press in 0..presses {
        if press > 0 && running.line_containing(TAKEN[press - 1]).await.is_none() {
            return;
        }
        running.press(Signal::SIGINT);
    }
}

/// Whether the first press landed inside `phase`, judged from the order of
/// what benchwarden said: before the pre-run sweep's count, before the
/// harness said it holds on, or before the last removal of the teardown.
fn landed_in(phase: Phase, stderr: &str) -> bool {
    let Some(pressed) = stderr.find(TAKEN[0]) else { return false };
    let before = |marker: &str| stderr.find(marker).is_none_or(|at| pressed < at);
    match phase {
        Phase::PreRunSweep => before("pre-run sweep:"),
        Phase::Create => before("holding-on"),
        Phase::Teardown => stderr[pressed..].contains("removed container"),
    }
}

/// How a process ended, as a figure: its exit code, or the signal that ended it.
fn ending(output: &CliOutput) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (output.status.code(), output.status.signal()) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => Signal::try_from(signal).map_or_else(|_| signal.to_string(), |s| s.to_string()),
        (None, None) => "unknown".to_string(),
    }
}

fn tally(counts: &mut BTreeMap<String, usize>, key: impl Into<String>) {
    *counts.entry(key.into()).or_default() += 1;
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_at_random_moments_of_a_run_leaves_nothing() {
    let (mut rng, seed) = seeded("chaos: ctrl-c during a run");
    let iterations = figures::count(12, 100);
    let (mut exits, mut cases, mut landed) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut recovers = 0;
    for iteration in 0..iterations {
        let phase = Phase::ALL[rng.usize(..Phase::ALL.len())];
        let presses = rng.usize(1..=3);
        let mut stage = Stage::new(&format!("chaos-int-{iteration}")).await;
        let (mut running, run_id) = run_until(&mut stage, phase, &mut rng).await;
        press_ctrl_c(&mut running, presses).await;
        let output = running.finish().await;
        let context =
            format!("seed {seed}, iteration {iteration}: {presses} press(es) in the {}\n{output}", phase.name());
        // Only in the teardown can the run have ended before the press (its task exits by itself).
        let allowed: &[i32] = if phase == Phase::Teardown { &[130, 0] } else { &[130] };
        assert!(output.status.code().is_some_and(|code| allowed.contains(&code)), "{context}");
        tally(&mut exits, ending(&output));
        tally(&mut cases, format!("{} x{presses}", phase.name()));
        if landed_in(phase, &output.stderr) {
            tally(&mut landed, phase.name());
        }
        if output.stderr.contains("benchwarden recover --state-dir") {
            // The third press exits before teardown ends, and says what finishes it.
            assert_eq!(presses, 3, "only a third press leaves the teardown to `recover`\n{context}");
            recovers += 1;
            let recovered = stage.cli(&["recover"]).await;
            recovered.assert_code(0);
            stage.after_recovery(&run_id, &format!("{context}\n--- recover ---\n{recovered}")).await;
        } else {
            stage.assert_nothing_left(&run_id, &context).await;
        }
    }
    figures::record(
        "chaos: ctrl-c during a run",
        json!({"iterations": iterations, "left": 0, "exits": exits, "cases": cases,
               "landed_in_phase": landed, "recovered_after": recovers, "seed": seed}),
    );
}

/// Starts a run of the holding task through `stage`, and kills benchwarden
/// once the harness has made all it makes: an orphaned run with three
/// containers, a network and a live harness, for `recover` to take on.
async fn orphaned_run(stage: &Stage) -> String {
    let mut running = stage.start_run("holds");
    let run_id = running.run_id().await;
    running.wait_for("holding-on").await;
    running.send(Signal::SIGKILL);
    running.finish().await;
    run_id
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_while_recover_runs_then_recover_again_leaves_nothing() {
    let (mut rng, seed) = seeded("chaos: ctrl-c during recover");
    let iterations = figures::count(6, 100);
    let (mut exits, mut presses_made) = (BTreeMap::new(), BTreeMap::new());
    for iteration in 0..iterations {
        let stage = Stage::new(&format!("chaos-rec-{iteration}")).await;
        let run_id = orphaned_run(&stage).await;
        let presses = rng.usize(1..=3);
        let mut recovering = Running::start_as_job(stage.command(&["recover"]));
        // Aimed at its start (connecting, reading the ledger, finding the orphan), at its first
        // teardown (tens of milliseconds), or anywhere up to its second look a second later.
        let delay = match rng.u8(0..4) {
            0 => rng.u64(0..=200),
            aim => {
                recovering.wait_for("is gone: tearing down what it owns").await;
                rng.u64(0..=if aim == 3 { 1200 } else { 60 })
            }
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        for _ in 0..presses {
            recovering.press(Signal::SIGINT);
            tokio::time::sleep(Duration::from_millis(rng.u64(0..=50))).await;
        }
        let output = recovering.finish().await;
        let context = format!("seed {seed}, iteration {iteration}: {presses} press(es) during recover\n{output}");
        // `recover` keeps no state of its own between its steps: Ctrl-C ends it (SIGINT), unless it was done.
        let end = ending(&output);
        assert!(end == "SIGINT" || end == "0", "{context}");
        tally(&mut exits, end);
        tally(&mut presses_made, presses.to_string());
        let again = stage.cli(&["recover"]).await;
        again.assert_code(0);
        stage.assert_nothing_left(&run_id, &format!("{context}\n--- recover again ---\n{again}")).await;
        let status = stage.cli(&["status", "--json"]).await.json();
        assert_eq!(status["runs"][0]["state"], "finished", "{status}\n{context}");
    }
    figures::record(
        "chaos: ctrl-c during recover",
        json!({"iterations": iterations, "left": 0, "exits": exits, "presses": presses_made, "seed": seed}),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_then_recover_or_the_next_run_leaves_nothing() {
    let (mut rng, seed) = seeded("chaos: sigkill");
    let iterations = figures::count(12, 100);
    let (mut exits, mut cases) = (BTreeMap::new(), BTreeMap::new());
    for iteration in 0..iterations {
        let phase = Phase::ALL[rng.usize(..Phase::ALL.len())];
        let by_recover = rng.bool();
        let mut stage = Stage::new(&format!("chaos-kill-{iteration}")).await;
        let (running, run_id) = run_until(&mut stage, phase, &mut rng).await;
        running.send(Signal::SIGKILL);
        let output = running.finish().await;
        let then = if by_recover { "recover" } else { "the next run" };
        let context =
            format!("seed {seed}, iteration {iteration}: SIGKILL in the {}, then {then}\n{output}", phase.name());
        let end = ending(&output);
        assert!(end == "SIGKILL" || (phase == Phase::Teardown && end == "0"), "{context}");
        tally(&mut exits, end);
        tally(&mut cases, format!("{}, then {then}", phase.name()));
        let after = if by_recover { stage.cli(&["recover"]).await } else { stage.next_run().await };
        after.assert_code(0);
        let context = format!("{context}\n--- {then} ---\n{after}");
        match by_recover {
            true => stage.after_recovery(&run_id, &context).await,
            false => stage.assert_nothing_left(&run_id, &context).await,
        }
    }
    figures::record(
        "chaos: sigkill then recover or the next run",
        json!({"iterations": iterations, "left": 0, "exits": exits, "cases": cases, "seed": seed}),
    );
}
