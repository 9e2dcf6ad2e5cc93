//! The life of one task's processes as data. [`Lifecycle::on`] is a pure
//! function from a phase and a happening (the harness exited, the time limit
//! passed, a Ctrl-C, the grace ran out, no process is left) to the next
//! phase and what to do (signal, kill). [`stop_when_done`] is the small
//! async loop that waits for happenings and acts, over any [`Processes`], so
//! both are tested without spawning anything. The driver's clocks (the time
//! limit, the grace, the wait after SIGKILL) stand still while the run is
//! stopped by Ctrl-Z ([`Suspension`]) and go on from where they were.

use std::future::Future;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::Instant;

use super::signal::{Shutdown, Suspension};
use crate::events::{Events, TaskEvent, TaskOutcome};

/// After SIGKILL, how long to wait for the task's processes to vanish.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often process exits are looked for while stopping: exits of
/// processes that are not our children raise no event we can await.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// Why a task stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Exited(ExitStatus),
    TimedOut,
    Interrupted(Signal),
}

impl Ending {
    pub(crate) fn outcome(self) -> TaskOutcome {
        match self {
            Ending::Exited(status) if status.success() => TaskOutcome::Passed,
            Ending::Exited(_) => TaskOutcome::Failed,
            Ending::TimedOut => TaskOutcome::TimedOut,
            Ending::Interrupted(_) => TaskOutcome::Interrupted,
        }
    }
}

/// Where a task's processes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The harness runs: waiting for its exit, its time limit, or a shutdown.
    Running,
    /// Every process of the task got a signal; SIGKILL follows after the grace.
    Stopping,
    /// SIGKILL sent; waiting for the processes to vanish.
    Killing,
    /// No process is left, or some outlived SIGKILL: teardown is next.
    Stopped { survivors: bool },
}

/// What can happen to a task's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Happening {
    HarnessExited(ExitStatus),
    /// Waiting for the harness failed: its status will never be known.
    HarnessLost,
    TimeLimitReached,
    /// The run's shutdown state moved (a Ctrl-C, SIGTERM or SIGHUP).
    Shutdown(Shutdown),
    /// A look found no process of the task left.
    ProcessesGone,
    /// The phase's time ran out: the grace while stopping, the wait after SIGKILL.
    PhaseTimeOver,
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send this signal to every process of the task.
    Signal(Signal),
    /// SIGKILL every process of the task.
    Kill,
}

/// One task's processes, from spawn to the last one gone.
#[derive(Debug, Clone)]
pub(crate) struct Lifecycle {
    phase: Phase,
    grace: Duration,
    ending: Option<Ending>,
    status: Option<ExitStatus>,
    harness_done: bool,
}

impl Lifecycle {
    pub(crate) fn new(grace: Duration) -> Self {
        Lifecycle { phase: Phase::Running, grace, ending: None, status: None, harness_done: false }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Why the task stopped running, once it has.
    pub(crate) fn ending(&self) -> Option<Ending> {
        self.ending
    }

    /// The harness's own exit status, once it has exited.
    pub(crate) fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Whether the harness is still to be waited for.
    pub(crate) fn awaits_harness(&self) -> bool {
        !self.harness_done
    }

    /// How long the current phase may last before [`Happening::PhaseTimeOver`].
    pub(crate) fn phase_time(&self) -> Option<Duration> {
        match self.phase {
            Phase::Stopping => Some(self.grace),
            Phase::Killing => Some(KILL_WAIT),
            Phase::Running | Phase::Stopped { .. } => None,
        }
    }

    /// Takes in what happened; returns what to do about it.
    pub(crate) fn on(&mut self, happening: Happening) -> Vec<Action> {
        match happening {
            Happening::HarnessExited(status) => {
                self.status = Some(status);
                self.harness_done = true;
            }
            Happening::HarnessLost => self.harness_done = true,
            _ => {}
        }
        match (self.phase, happening) {
            (Phase::Running, Happening::HarnessExited(status)) => self.stop(Ending::Exited(status), Signal::SIGTERM),
            (Phase::Running, Happening::HarnessLost) => {
                self.stop(Ending::Interrupted(Signal::SIGTERM), Signal::SIGTERM)
            }
            (Phase::Running, Happening::TimeLimitReached) => self.stop(Ending::TimedOut, Signal::SIGTERM),
            (Phase::Running, Happening::Shutdown(Shutdown::Graceful(signal))) => {
                self.stop(Ending::Interrupted(signal), signal)
            }
            (Phase::Running, Happening::Shutdown(Shutdown::Kill(signal))) => {
                let mut actions = self.stop(Ending::Interrupted(signal), signal);
                actions.extend(self.kill());
                actions
            }
            (Phase::Stopping, Happening::PhaseTimeOver | Happening::Shutdown(Shutdown::Kill(_))) => self.kill(),
            (Phase::Stopping | Phase::Killing, Happening::ProcessesGone) => {
                self.phase = Phase::Stopped { survivors: false };
                Vec::new()
            }
            (Phase::Killing, Happening::PhaseTimeOver) => {
                self.phase = Phase::Stopped { survivors: true };
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Whatever the ending, every process of the task is stopped: a harness
    /// that exited may have left background processes that still create resources.
    fn stop(&mut self, ending: Ending, signal: Signal) -> Vec<Action> {
        self.ending = Some(ending);
        self.phase = Phase::Stopping;
        vec![Action::Signal(signal)]
    }

    fn kill(&mut self) -> Vec<Action> {
        self.phase = Phase::Killing;
        vec![Action::Kill]
    }
}

/// The harness process, as the driver waits for it.
pub(crate) trait Harness {
    /// Waits for the harness to exit. Must be cancel-safe.
    fn wait(&mut self) -> impl Future<Output = std::io::Result<ExitStatus>> + Send;
}

/// Every process of a task: its group, and descendants that left it.
pub(crate) trait ProcessSet {
    /// Sends `signal` to every process of the task; returns how many there were.
    fn signal(&self, signal: Signal) -> usize;
    /// Reaps adopted orphans, then says whether any process of the task is left.
    fn any_left(&self) -> bool;
}

/// What the driver waits on besides the processes.
pub(crate) struct Watch<'a> {
    pub(crate) task: &'a str,
    pub(crate) time_limit: Option<Duration>,
    pub(crate) shutdown: watch::Receiver<Shutdown>,
    /// Whether the run is stopped by Ctrl-Z: the clocks stand still meanwhile.
    pub(crate) suspension: watch::Receiver<Suspension>,
    pub(crate) events: &'a Events,
}

/// The driver's clocks and the shutdown state it has acted on.
struct Waits {
    time_limit: Option<Instant>,
    phase_ends: Option<Instant>,
    shutdown: watch::Receiver<Shutdown>,
    shutdown_seen: Shutdown,
    shutdown_open: bool,
    suspension: watch::Receiver<Suspension>,
    suspension_seen: Suspension,
    suspension_open: bool,
}

impl Waits {
    /// Takes in a new suspension state: the time stopped since the last one
    /// seen moves both deadlines that much later, so a stop longer than the
    /// time left does not end the task the moment it is continued.
    fn on_suspension(&mut self, state: Suspension) {
        let stopped = state.stopped_for.saturating_sub(self.suspension_seen.stopped_for);
        self.time_limit = self.time_limit.map(|at| at + stopped);
        self.phase_ends = self.phase_ends.map(|at| at + stopped);
        self.suspension_seen = state;
    }

    /// Whether the clocks stand still: the run is stopped, as last seen.
    fn clocks_stopped(&self) -> bool {
        self.suspension_seen.is_suspended()
    }
}

/// Waits for the task to end, then stops every process of it (signal,
/// grace, SIGKILL), and returns the lifecycle once no process is left.
pub(crate) async fn stop_when_done(
    mut lifecycle: Lifecycle,
    harness: &mut impl Harness,
    processes: &impl ProcessSet,
    watch: Watch<'_>,
) -> Lifecycle {
    let Watch { task, time_limit, shutdown, suspension, events } = watch;
    let suspension_seen = *suspension.borrow();
    let mut waits = Waits {
        time_limit: time_limit.map(|limit| Instant::now() + limit),
        phase_ends: None,
        shutdown,
        shutdown_seen: Shutdown::Running,
        shutdown_open: true,
        suspension,
        suspension_seen,
        suspension_open: true,
    };
    loop {
        if let Phase::Stopped { survivors } = lifecycle.phase() {
            if survivors {
                events.task(TaskEvent::Unkillable { task });
            }
            return lifecycle;
        }
        let Some(happening) = next_happening(&lifecycle, harness, processes, &mut waits).await else {
            continue;
        };
        let phase = lifecycle.phase();
        let mut reached = None;
        for action in lifecycle.on(happening) {
            reached = Some(act(action, processes, task, events));
        }
        if lifecycle.phase() != phase {
            waits.phase_ends = lifecycle.phase_time().map(|time| Instant::now() + time);
            // A signal that found nobody means nobody is left (the usual end of a clean exit);
            // processes told to go may also be gone at once: look before waiting out a grace.
            if reached == Some(0) || !processes.any_left() {
                lifecycle.on(Happening::ProcessesGone);
            }
        }
    }
}

/// Does what the lifecycle asked; returns how many processes the signal reached.
fn act(action: Action, processes: &impl ProcessSet, task: &str, events: &Events) -> usize {
    match action {
        Action::Signal(signal) => {
            let signalled = processes.signal(signal);
            tracing::debug!("task {task}: sent {signal} to {signalled} process(es)");
            signalled
        }
        Action::Kill => {
            let killed = processes.signal(Signal::SIGKILL);
            events.task(TaskEvent::Killed { task, processes: killed });
            killed
        }
    }
}

/// Waits for the next thing that matters in the current phase; `None`
/// when nothing the lifecycle takes did (the shutdown or job-control
/// listener went away, or the run was stopped or continued).
async fn next_happening(
    lifecycle: &Lifecycle,
    harness: &mut impl Harness,
    processes: &impl ProcessSet,
    waits: &mut Waits,
) -> Option<Happening> {
    let running = lifecycle.phase() == Phase::Running;
    let seen = waits.shutdown_seen;
    let (time_limit, phase_ends) = (waits.time_limit, waits.phase_ends);
    let (suspension_seen, clocks_run) = (waits.suspension_seen, !waits.clocks_stopped());
    let mut suspension = None;
    let happening = tokio::select! {
        biased;
        // First: once continued, a deadline that passed while stopped must be moved before it is looked at.
        changed = waits.suspension.wait_for(|state| *state != suspension_seen), if waits.suspension_open => {
            match changed.map(|state| *state) {
                Ok(state) => suspension = Some(state),
                Err(_) => waits.suspension_open = false,
            }
            None
        },
        changed = waits.shutdown.wait_for(|state| *state != seen), if waits.shutdown_open => match changed {
            Ok(state) => Some(Happening::Shutdown(*state)),
            Err(_) => {
                waits.shutdown_open = false;
                None
            }
        },
        status = harness.wait(), if lifecycle.awaits_harness() => match status {
            Ok(status) => Some(Happening::HarnessExited(status)),
            Err(error) => {
                tracing::error!("waiting for the harness failed: {error}");
                Some(Happening::HarnessLost)
            }
        },
        () = sleep_until(time_limit), if running && clocks_run => Some(Happening::TimeLimitReached),
        () = sleep_until(phase_ends), if !running && clocks_run => Some(Happening::PhaseTimeOver),
        () = all_gone(processes), if !running => Some(Happening::ProcessesGone),
    };
    if let Some(state) = suspension {
        waits.on_suspension(state);
    }
    if let Some(Happening::Shutdown(state)) = happening {
        waits.shutdown_seen = state;
    }
    happening
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Returns once a look finds no process of the task left.
async fn all_gone(processes: &impl ProcessSet) {
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        if !processes.any_left() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::sync::{Arc, Mutex};

    use tokio::sync::Notify;

    use super::*;
    use crate::events::{Event, EventSink};

    fn exit(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn an_exit_stops_the_rest_of_the_task_with_sigterm() {
        let mut lifecycle = Lifecycle::new(Duration::from_secs(10));
        assert_eq!(lifecycle.on(Happening::HarnessExited(exit(0))), [Action::Signal(Signal::SIGTERM)]);
        assert_eq!(lifecycle.phase(), Phase::Stopping);
        assert_eq!(lifecycle.phase_time(), Some(Duration::from_secs(10)));
        assert_eq!(lifecycle.on(Happening::TimeLimitReached), [], "a time limit after the end changes nothing");
        assert_eq!(lifecycle.on(Happening::ProcessesGone), []);
        assert_eq!(lifecycle.phase(), Phase::Stopped { survivors: false });
        assert_eq!(lifecycle.ending().map(Ending::outcome), Some(TaskOutcome::Passed));
        assert_eq!(lifecycle.status(), Some(exit(0)));
    }

    #[test]
    fn a_time_limit_escalates_to_sigkill_after_the_grace_and_gives_up_after_the_kill_wait() {
        let mut lifecycle = Lifecycle::new(Duration::from_secs(3));
        assert_eq!(lifecycle.on(Happening::TimeLimitReached), [Action::Signal(Signal::SIGTERM)]);
        assert_eq!(lifecycle.on(Happening::PhaseTimeOver), [Action::Kill]);
        assert_eq!(lifecycle.phase_time(), Some(KILL_WAIT));
        assert_eq!(lifecycle.on(Happening::HarnessExited(exit(137))), [], "the status is kept, nothing else");
        assert_eq!(lifecycle.on(Happening::PhaseTimeOver), []);
        assert_eq!(lifecycle.phase(), Phase::Stopped { survivors: true });
        assert_eq!(lifecycle.ending(), Some(Ending::TimedOut));
        assert_eq!(lifecycle.status(), Some(exit(137)));
    }

    #[test]
    fn the_first_press_forwards_its_signal_and_the_second_kills_at_once() {
        let mut lifecycle = Lifecycle::new(Duration::from_secs(300));
        let first = Happening::Shutdown(Shutdown::Graceful(Signal::SIGINT));
        assert_eq!(lifecycle.on(first), [Action::Signal(Signal::SIGINT)]);
        assert_eq!(lifecycle.on(Happening::Shutdown(Shutdown::Kill(Signal::SIGINT))), [Action::Kill]);
        assert_eq!(lifecycle.ending(), Some(Ending::Interrupted(Signal::SIGINT)));

        let mut both_at_once = Lifecycle::new(Duration::from_secs(300));
        let second = Happening::Shutdown(Shutdown::Kill(Signal::SIGTERM));
        assert_eq!(both_at_once.on(second), [Action::Signal(Signal::SIGTERM), Action::Kill]);
        assert_eq!(both_at_once.ending().map(Ending::outcome), Some(TaskOutcome::Interrupted));
    }

    #[test]
    fn a_lost_harness_is_stopped_like_an_interrupted_one_and_not_waited_for_again() {
        let mut lifecycle = Lifecycle::new(Duration::from_secs(1));
        assert_eq!(lifecycle.on(Happening::HarnessLost), [Action::Signal(Signal::SIGTERM)]);
        assert!(!lifecycle.awaits_harness());
        assert_eq!(lifecycle.status(), None);
        assert_eq!(lifecycle.ending(), Some(Ending::Interrupted(Signal::SIGTERM)));
    }

    /// A task's processes played by a script: a harness that exits at a
    /// time (or never), may ignore SIGTERM and SIGINT, may leave a
    /// background process behind, and may even outlive SIGKILL.
    #[derive(Default)]
    struct Script {
        exits_after: Option<Duration>,
        ignores_polite_signals: bool,
        leaves_background: bool,
        unkillable: bool,
    }

    struct FakeState {
        exit_at: Option<Instant>,
        harness_alive: bool,
        background_alive: bool,
        script: Script,
        signals: Vec<(Signal, usize)>,
    }

    #[derive(Clone)]
    struct Fake {
        state: Arc<Mutex<FakeState>>,
        changed: Arc<Notify>,
    }

    impl Fake {
        fn new(script: Script) -> Self {
            let state = FakeState {
                exit_at: script.exits_after.map(|after| Instant::now() + after),
                harness_alive: true,
                background_alive: script.leaves_background,
                script,
                signals: Vec::new(),
            };
            Fake { state: Arc::new(Mutex::new(state)), changed: Arc::new(Notify::new()) }
        }

        fn signals(&self) -> Vec<(Signal, usize)> {
            self.state.lock().unwrap().signals.clone()
        }
    }

    impl Harness for Fake {
        async fn wait(&mut self) -> std::io::Result<ExitStatus> {
            loop {
                let changed = self.changed.notified();
                let exit_at = self.state.lock().unwrap().exit_at;
                match exit_at {
                    Some(at) if Instant::now() >= at => {
                        self.state.lock().unwrap().harness_alive = false;
                        return Ok(exit(0));
                    }
                    Some(at) => tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = changed => {}
                    },
                    None => changed.await,
                }
            }
        }
    }

    impl ProcessSet for Fake {
        fn signal(&self, signal: Signal) -> usize {
            let mut state = self.state.lock().unwrap();
            let alive = usize::from(state.harness_alive) + usize::from(state.background_alive);
            state.signals.push((signal, alive));
            let dies = match signal {
                Signal::SIGKILL => !state.script.unkillable,
                _ => !state.script.ignores_polite_signals,
            };
            if dies {
                state.background_alive = false;
                if state.harness_alive {
                    state.exit_at = Some(Instant::now());
                }
            }
            drop(state);
            self.changed.notify_waiters();
            alive
        }

        fn any_left(&self) -> bool {
            let state = self.state.lock().unwrap();
            let harness_left = state.harness_alive && state.exit_at.is_none_or(|at| Instant::now() < at);
            harness_left || state.background_alive
        }
    }

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl EventSink for Seen {
        fn event(&self, event: &Event<'_>) {
            if let Event::Task(task) = event {
                let name = format!("{task:?}");
                self.0.lock().unwrap().push(name.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    }

    struct Outcome {
        lifecycle: Lifecycle,
        signals: Vec<(Signal, usize)>,
        events: Vec<String>,
        took: Duration,
    }

    async fn drive(script: Script, time_limit: Option<Duration>, presses: &[(Duration, Shutdown)]) -> Outcome {
        drive_stopped(script, time_limit, presses, &[]).await
    }

    /// [`drive`], with the run stopped by Ctrl-Z over each `(from, until)`.
    async fn drive_stopped(
        script: Script,
        time_limit: Option<Duration>,
        presses: &[(Duration, Shutdown)],
        stops: &[(Duration, Duration)],
    ) -> Outcome {
        let fake = Fake::new(script);
        let (stopper, suspension) = watch::channel(Suspension::default());
        let origin = Instant::now();
        let stops = stops.to_vec();
        tokio::spawn(async move {
            for (from, until) in stops {
                tokio::time::sleep_until(origin + from).await;
                stopper.send_modify(|state| *state = state.suspend(Instant::now()));
                tokio::time::sleep_until(origin + until).await;
                stopper.send_modify(|state| *state = state.resume(Instant::now()));
            }
            // Kept open: a listener that went away must not look like a change.
            std::future::pending::<()>().await;
        });
        let (sender, shutdown) = watch::channel(Shutdown::Running);
        for (after, state) in presses.iter().copied() {
            let sender = sender.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                sender.send_replace(state);
            });
        }
        let seen = Arc::new(Seen::default());
        let events = Events::to_all(vec![seen.clone()]);
        let started = Instant::now();
        let watch = Watch { task: "t", time_limit, shutdown, suspension, events: &events };
        let lifecycle = stop_when_done(Lifecycle::new(Duration::from_secs(10)), &mut fake.clone(), &fake, watch).await;
        let events = seen.0.lock().unwrap().clone();
        Outcome { lifecycle, signals: fake.signals(), events, took: started.elapsed() }
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_exit_signals_nobody_alive_and_passes() {
        let outcome = drive(Script { exits_after: Some(secs(1)), ..Default::default() }, None, &[]).await;
        assert_eq!(outcome.lifecycle.ending().map(Ending::outcome), Some(TaskOutcome::Passed));
        assert_eq!(outcome.signals, [(Signal::SIGTERM, 0)]);
        assert!(outcome.took < secs(2), "{:?}", outcome.took);
    }

    #[tokio::test(start_paused = true)]
    async fn a_background_process_left_by_a_harness_that_exited_gets_sigterm() {
        let script = Script { exits_after: Some(secs(1)), leaves_background: true, ..Default::default() };
        let outcome = drive(script, None, &[]).await;
        assert_eq!(outcome.lifecycle.ending().map(Ending::outcome), Some(TaskOutcome::Passed));
        assert_eq!(outcome.signals, [(Signal::SIGTERM, 1)]);
        assert_eq!(outcome.lifecycle.phase(), Phase::Stopped { survivors: false });
    }

    #[tokio::test(start_paused = true)]
    async fn a_hang_times_out_and_one_that_ignores_sigterm_is_killed_after_the_grace() {
        let polite = drive(Script::default(), Some(secs(60)), &[]).await;
        assert_eq!(polite.lifecycle.ending(), Some(Ending::TimedOut));
        assert_eq!(polite.signals, [(Signal::SIGTERM, 1)]);
        assert!(polite.took >= secs(60) && polite.took < secs(61), "{:?}", polite.took);

        let stubborn = drive(Script { ignores_polite_signals: true, ..Default::default() }, Some(secs(60)), &[]).await;
        assert_eq!(stubborn.signals, [(Signal::SIGTERM, 1), (Signal::SIGKILL, 1)]);
        assert!(stubborn.took >= secs(70) && stubborn.took < secs(71), "grace of 10 s: {:?}", stubborn.took);
        assert_eq!(stubborn.events, ["Killed"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_press_cuts_the_grace_short() {
        let presses = [(secs(5), Shutdown::Graceful(Signal::SIGINT)), (secs(7), Shutdown::Kill(Signal::SIGINT))];
        let outcome = drive(Script { ignores_polite_signals: true, ..Default::default() }, None, &presses).await;
        assert_eq!(outcome.lifecycle.ending(), Some(Ending::Interrupted(Signal::SIGINT)));
        assert_eq!(outcome.signals, [(Signal::SIGINT, 1), (Signal::SIGKILL, 1)]);
        assert!(outcome.took >= secs(7) && outcome.took < secs(8), "{:?}", outcome.took);
    }

    #[tokio::test(start_paused = true)]
    async fn processes_that_outlive_sigkill_are_given_up_on_after_the_kill_wait() {
        let script = Script { ignores_polite_signals: true, unkillable: true, ..Default::default() };
        let outcome = drive(script, Some(secs(1)), &[]).await;
        assert_eq!(outcome.lifecycle.phase(), Phase::Stopped { survivors: true });
        assert_eq!(outcome.events, ["Killed", "Unkillable"]);
        assert!(outcome.took >= secs(1) + secs(10) + KILL_WAIT, "{:?}", outcome.took);
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_limit_leaves_out_the_time_stopped_by_ctrl_z() {
        // Stopped at 10 s for 90 s: the 60 s limit is reached at 150 s, not at once on the continue at 100 s.
        let outcome = drive_stopped(Script::default(), Some(secs(60)), &[], &[(secs(10), secs(100))]).await;
        assert_eq!(outcome.lifecycle.ending(), Some(Ending::TimedOut));
        assert!(outcome.took >= secs(150) && outcome.took < secs(151), "{:?}", outcome.took);

        let twice = [(secs(10), secs(20)), (secs(30), secs(45))];
        let outcome = drive_stopped(Script::default(), Some(secs(60)), &[], &twice).await;
        assert!(outcome.took >= secs(85) && outcome.took < secs(86), "two stops, 25 s: {:?}", outcome.took);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_after_the_limit_would_have_passed_still_leaves_the_time_that_was_left() {
        // Stopped at 50 s, continued at 500 s: 10 s of the 60 s limit were left.
        let outcome = drive_stopped(Script::default(), Some(secs(60)), &[], &[(secs(50), secs(500))]).await;
        assert!(outcome.took >= secs(510) && outcome.took < secs(511), "{:?}", outcome.took);
        assert_eq!(outcome.signals, [(Signal::SIGTERM, 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_leaves_out_the_time_stopped_by_ctrl_z() {
        // SIGTERM at 1 s is ignored; stopped from 5 s to 25 s: SIGKILL at 1 + 10 + 20 s, not on the continue.
        let script = Script { ignores_polite_signals: true, ..Default::default() };
        let outcome = drive_stopped(script, Some(secs(1)), &[], &[(secs(5), secs(25))]).await;
        assert_eq!(outcome.signals, [(Signal::SIGTERM, 1), (Signal::SIGKILL, 1)]);
        assert!(outcome.took >= secs(31) && outcome.took < secs(32), "{:?}", outcome.took);
    }

    #[tokio::test(start_paused = true)]
    async fn a_press_while_the_clocks_stand_still_is_acted_on() {
        // Ctrl-C is not a clock: sent to a stopped run and seen once it is continued, it stops the task.
        let presses = [(secs(20), Shutdown::Graceful(Signal::SIGINT))];
        let outcome = drive_stopped(Script::default(), Some(secs(60)), &presses, &[(secs(10), secs(30))]).await;
        assert_eq!(outcome.lifecycle.ending(), Some(Ending::Interrupted(Signal::SIGINT)));
        assert!(outcome.took >= secs(20) && outcome.took < secs(21), "{:?}", outcome.took);
    }

    #[test]
    fn deadlines_move_by_the_time_stopped_since_the_state_last_seen() {
        let (_, suspension) = watch::channel(Suspension::default());
        let (_, shutdown) = watch::channel(Shutdown::Running);
        let now = Instant::now();
        let mut waits = Waits {
            time_limit: Some(now + secs(60)),
            phase_ends: None,
            shutdown,
            shutdown_seen: Shutdown::Running,
            shutdown_open: true,
            suspension,
            suspension_seen: Suspension::default(),
            suspension_open: true,
        };
        let stopped = Suspension::default().suspend(now);
        waits.on_suspension(stopped);
        assert!(waits.clocks_stopped());
        assert_eq!(waits.time_limit, Some(now + secs(60)), "nothing moves until the stop's length is known");
        // The watch may skip states: a stop and its continue seen at once count all the same.
        waits.on_suspension(stopped.resume(now + secs(7)).suspend(now + secs(8)).resume(now + secs(10)));
        assert!(!waits.clocks_stopped());
        assert_eq!(waits.time_limit, Some(now + secs(69)));
    }
}
