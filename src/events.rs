//! The event stream: what the lower layers (supervisor, teardown, sweeps,
//! recovery, backends, retries) tell about their work, as typed events, and
//! the handle they send them through. They never draw, print or format for
//! people; one consumer (the reporter in `report`) turns events into
//! progress bars, log lines and counts, and others (a metrics file) can
//! listen beside it.
//!
//! Events borrow what they describe, so emitting one copies nothing; a sink
//! that keeps data clones what it needs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Serialize;

use crate::errors::Service;
use crate::limits::{Refusal, Waiting};
use crate::resource::{ImageFate, Kind, RecordedImage, RemovalOutcome, ResourceRef};
use crate::results::TaskResult;

/// One thing that happened.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event<'a> {
    /// A run recorded itself in the ledger and is about to start its tasks.
    RunStarted {
        run_id: &'a str,
        tasks: usize,
        benchmark: &'a str,
        source: &'a str,
        jobs: usize,
        log_dir: &'a Path,
    },
    /// Ctrl-C, SIGTERM or SIGHUP: `press` says which step of the shutdown this is.
    ShutdownRequested {
        signal: Signal,
        press: Press,
    },
    /// Ctrl-Z (SIGTSTP): every running task's processes got SIGSTOP
    /// (`processes` of them were reached); benchwarden stops itself next.
    Suspended {
        processes: usize,
    },
    /// SIGCONT after a Ctrl-Z (`fg`, `bg`): the tasks' processes got SIGCONT
    /// (`processes` of them were reached) and their time limits and graces
    /// go on, `stopped_for` later than they would have ended.
    Resumed {
        processes: usize,
        stopped_for: Duration,
    },
    Task(TaskEvent<'a>),
    Removal(RemovalEvent<'a>),
    /// One call failed and will be tried again after `delay`.
    Retrying {
        call: Call<'a>,
        attempt: u32,
        attempts: u32,
        error: &'a str,
        delay: Duration,
    },
    /// A task created this resource: seen through its proxy, or by the creation watcher.
    Created {
        resource: &'a ResourceRef,
    },
    /// A proxy refused a create: a hard limit (`limits.hard`) is reached.
    Refused {
        task: &'a str,
        refusal: &'a Refusal,
    },
    /// The scheduler holds the next task back until there is room under a
    /// limit (`Some`), or goes on starting tasks (`None`).
    Waiting {
        waiting: Option<&'a Waiting>,
        /// It starts or stops waiting, or for another reason; otherwise only the counts moved.
        news: bool,
    },
    /// A sweep takes a sandbox that another machine left: its lease ended.
    LeaseExpired {
        resource: &'a ResourceRef,
        reason: &'a str,
    },
    /// A round of the run's lease renewals: `renewed` leases written, `failed`
    /// not (the first failure's `error`); the next round comes `next` later.
    LeasesRenewed {
        renewed: usize,
        failed: usize,
        error: Option<&'a str>,
        next: Duration,
    },
    /// A resource a sweep selected but left alone, and why.
    Protected {
        resource: &'a ResourceRef,
        reason: &'a str,
    },
    /// A dry run would remove this resource.
    WouldRemove {
        resource: &'a ResourceRef,
    },
    /// Still there after teardown, found by listing again.
    Leaked {
        resource: &'a ResourceRef,
    },
    /// A cleanup of both backends ended: `round` of `sweep`, or `None` for a `cleanup all`.
    SweepFinished {
        round: Option<u64>,
        counts: &'a SweepCounts,
        seconds: f64,
        at: i64,
    },
    /// A round of `sweep` failed; the next round tries again.
    SweepFailed {
        round: u64,
        error: &'a str,
    },
    /// SIGINT or SIGTERM reached `sweep`.
    SweepStopping {
        signal: Signal,
        when: StopWhen,
    },
    /// A sweep before a run ended with these counts.
    PreRunSweepFinished {
        removed: usize,
        failed: usize,
        protected: usize,
    },
    Orphan(OrphanEvent<'a>),
    /// Finished runs older than the retention that owned nothing were
    /// forgotten (in a dry run, would be): their ledger rows and run
    /// directories. `kept` are runs whose directory could not be removed,
    /// with why (they stay in the ledger for the next prune); `vacuum` the
    /// ledger's size in bytes before and after, when it was vacuumed.
    Pruned {
        runs: &'a [String],
        kept: &'a [(String, String)],
        retention: Duration,
        dry_run: bool,
        vacuum: Option<(u64, u64)>,
    },
    /// A task's Docker proxy recorded an image the task built, pulled or imported.
    ImageRecorded {
        image: &'a RecordedImage,
        task: &'a str,
    },
    /// What became of an image that a removal of images considered.
    Image {
        image: &'a RecordedImage,
        fate: &'a ImageFate,
    },
    /// The engine freed this much disk: removed images, or a build-cache prune.
    DiskReclaimed {
        what: DiskUse,
        bytes: u64,
    },
}

/// What disk space was freed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DiskUse {
    Images,
    BuildCache,
}

impl DiskUse {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DiskUse::Images => "images",
            DiskUse::BuildCache => "build_cache",
        }
    }
}

/// What a retried call is about: named in its events, and counted by
/// service and kind in the metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// The operation and its target, for people ("remove container 3f2a…").
    pub(crate) what: &'a str,
    pub(crate) service: Service,
    /// The kind of resource, when the call concerns one.
    pub(crate) kind: Option<Kind>,
}

/// What one cleanup of both backends did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct SweepCounts {
    pub(crate) recovered_runs: usize,
    /// Removed, or found already gone.
    pub(crate) removed: usize,
    /// Would have been removed, had it not been a dry run.
    pub(crate) would_remove: usize,
    pub(crate) failed: usize,
    pub(crate) pending: usize,
    /// Left alone because a live run owns them.
    pub(crate) protected: usize,
}

/// When a stopped `sweep` exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopWhen {
    /// No round was running: at once.
    BetweenRounds,
    /// Once the round in progress has finished.
    AfterThisRound,
    /// At once, though a round was running: the second press.
    Now,
}

/// Which press of Ctrl-C (or SIGTERM, SIGHUP) a shutdown request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Press {
    /// No new tasks; harnesses get the signal, SIGKILL after the grace.
    First,
    /// SIGKILL every harness now; teardown goes on.
    Second,
}

/// The life of one task, in order.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TaskEvent<'a> {
    Started {
        task: &'a str,
    },
    /// The containers the task has live now, as the creation watcher sees them.
    Live {
        task: &'a str,
        containers: usize,
    },
    /// The harness wrote this to its stdout or stderr (only when its output
    /// is echoed, with `-j 1`); its log file already has it.
    Output {
        bytes: &'a [u8],
    },
    /// Writing the harness's output to its log failed (a full disk): told
    /// once; the output still reaches the terminal.
    LogFailed {
        task: &'a str,
        path: &'a Path,
        error: &'a str,
    },
    /// Processes of the task outlived the grace and got SIGKILL.
    Killed {
        task: &'a str,
        processes: usize,
    },
    /// Processes of the task outlived SIGKILL; teardown starts anyway.
    Unkillable {
        task: &'a str,
    },
    /// Every process of the task is gone: its outcome is known.
    Ended {
        report: &'a TaskReport,
    },
    TearingDown {
        task: &'a str,
    },
    /// The task failed and `--keep-failed` leaves its resources in place.
    Keeping {
        task: &'a str,
    },
    /// Teardown is over: the report is complete.
    Finished {
        report: &'a TaskReport,
    },
}

/// Removals by policy or by owner, resource by resource.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RemovalEvent<'a> {
    /// Teardown found this resource claimed by the owner it tears down.
    Found { resource: &'a ResourceRef },
    /// A batch of `total` removals that a person may want to follow.
    Started { what: &'a str, total: usize },
    /// The service accepted a removal it finishes later (a Daytona delete);
    /// its `Outcome` follows once it is seen through.
    Accepted { resource: &'a ResourceRef },
    /// One resource's removal ended (or was not attempted, or is still pending).
    Outcome { resource: &'a ResourceRef, outcome: &'a RemovalOutcome },
    /// The batch announced by the last `Started` is over.
    Finished,
}

/// Recovery of runs whose benchwarden process is gone.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OrphanEvent<'a> {
    Recovering {
        run_id: &'a str,
        pid: Option<u32>,
        from_labels: bool,
    },
    ProcessesKilled {
        run_id: &'a str,
        processes: usize,
    },
    /// Before a run: how many orphaned runs were recovered.
    Recovered {
        runs: usize,
    },
    /// Proxy socket directories left by runs that are gone: removed, or in a
    /// dry run, would be; those that could not be removed, with why.
    StaleSockets {
        directories: &'a [PathBuf],
        failed: &'a [(PathBuf, String)],
        dry_run: bool,
    },
}

/// Receives events; implementations must be quick and must not block, since
/// events are sent from the middle of the work they describe.
pub(crate) trait EventSink: Send + Sync {
    fn event(&self, event: &Event<'_>);
}

/// The handle lower layers emit events through. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    sink: Arc<dyn EventSink>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Events")
    }
}

struct FanOut(Vec<Arc<dyn EventSink>>);

impl EventSink for FanOut {
    fn event(&self, event: &Event<'_>) {
        for sink in &self.0 {
            sink.event(event);
        }
    }
}

struct Discard;

impl EventSink for Discard {
    fn event(&self, _: &Event<'_>) {}
}

impl Events {
    /// A handle whose events go to each of `sinks`, in order.
    pub(crate) fn to_all(sinks: Vec<Arc<dyn EventSink>>) -> Self {
        Events { sink: Arc::new(FanOut(sinks)) }
    }

    /// A handle whose events go nowhere: for callers nobody watches.
    pub fn discard() -> Self {
        Events { sink: Arc::new(Discard) }
    }

    pub(crate) fn emit(&self, event: Event<'_>) {
        self.sink.event(&event);
    }

    pub(crate) fn task(&self, event: TaskEvent<'_>) {
        self.emit(Event::Task(event));
    }

    pub(crate) fn removal(&self, event: RemovalEvent<'_>) {
        self.emit(Event::Removal(event));
    }

    pub(crate) fn orphan(&self, event: OrphanEvent<'_>) {
        self.emit(Event::Orphan(event));
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TaskOutcome {
    Passed,
    Failed,
    TimedOut,
    Interrupted,
    /// The harness could not be started.
    SpawnFailed,
    /// Never started: the run was interrupted first.
    NotStarted,
}

impl TaskOutcome {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            TaskOutcome::Passed => "passed",
            TaskOutcome::Failed => "failed",
            TaskOutcome::TimedOut => "timed out",
            TaskOutcome::Interrupted => "interrupted",
            TaskOutcome::SpawnFailed => "not started: spawn failed",
            TaskOutcome::NotStarted => "not started",
        }
    }
}

/// Everything known about one task once it is over: the JSON report's
/// `tasks` entries and the summary's rows.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TaskReport {
    pub(crate) task: String,
    pub(crate) outcome: TaskOutcome,
    pub(crate) exit_code: Option<i32>,
    pub(crate) signal: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) seconds: f64,
    pub(crate) log: PathBuf,
    pub(crate) resources_found: usize,
    pub(crate) resources_removed: usize,
    pub(crate) resources_leaked: Vec<String>,
    /// Deletion accepted but not finished (sandboxes still `destroying`): kept for `recover`.
    pub(crate) resources_pending: Vec<String>,
    /// Left in place on purpose (`run --keep-failed`): marked kept in the ledger, not leaked.
    pub(crate) resources_kept: Vec<String>,
    pub(crate) teardown_seconds: f64,
    pub(crate) teardown_error: Option<String>,
    /// What became of everything the task created.
    pub(crate) resources: ResourceFates,
    /// What the harness's own result file says (`harness.results`), when
    /// the harness ran to its end.
    pub(crate) result: Option<TaskResult>,
    /// Creates of the task's that a hard limit (`limits.hard`) refused.
    pub(crate) refused_creates: usize,
    /// Writing the harness's output to its log failed: the log is incomplete.
    pub(crate) log_error: Option<String>,
}

/// What became of a task's resources. How often a harness cleans up after
/// itself, and how often it leaks, is the figure a user wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ResourceFates {
    /// Every resource of the task benchwarden knew of: recorded as it was
    /// created (proxy, creation watcher), or found by listing at teardown.
    pub(crate) created: usize,
    /// Gone before teardown: the harness removed them itself.
    pub(crate) removed_by_harness: usize,
    /// Removed by benchwarden's teardown.
    pub(crate) removed_by_benchwarden: usize,
    /// Still there after teardown, or unaccounted for because it failed.
    pub(crate) leaked: usize,
    /// Left in place on purpose (`run --keep-failed`, a failed task).
    pub(crate) kept: usize,
}

impl TaskReport {
    /// A report for a task that has not started: where every task's report begins.
    pub(crate) fn unstarted(name: &str, log: PathBuf) -> Self {
        TaskReport {
            task: name.to_string(),
            outcome: TaskOutcome::NotStarted,
            exit_code: None,
            signal: None,
            error: None,
            seconds: 0.0,
            log,
            resources_found: 0,
            resources_removed: 0,
            resources_leaked: Vec::new(),
            resources_pending: Vec::new(),
            resources_kept: Vec::new(),
            teardown_seconds: 0.0,
            teardown_error: None,
            resources: ResourceFates::default(),
            result: None,
            refused_creates: 0,
            log_error: None,
        }
    }

    /// What is still there: leaked, pending, or unknown because teardown failed.
    pub(crate) fn left_something(&self) -> bool {
        !self.resources_leaked.is_empty() || !self.resources_pending.is_empty() || self.teardown_error.is_some()
    }
}
