//! `benchwarden run`: connect, record the run, recover orphans and sweep
//! leftovers, run the tasks, then print the summary, write the JSON report
//! and decide the exit status.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::{print_stdout, Session};
use crate::backend::daytona::DaytonaBackend;
use crate::backend::docker::DockerBackend;
use crate::backend::RemovalOptions;
use crate::clock::now_unix;
use crate::errors::{Error, ExitStatus};
use crate::events::{Event, Events, OrphanEvent, TaskOutcome, TaskReport};
use crate::host;
use crate::intercept::docker_proxy::DockerProxySettings;
use crate::intercept::sockets::socket_roots;
use crate::ledger::{self, Ledger, RunRecord};
use crate::limits::{LimitsReport, LiveResources};
use crate::recover::{recover_orphans, OrphanFilter};
use crate::report::text::{self, RunReport};
use crate::results::Verdict;
use crate::settings::{GlobalSettings, RunSettings};
use crate::supervisor::lease::LeaseKeeper;
use crate::supervisor::task::RunContext;
use crate::supervisor::watch::Watcher;
use crate::supervisor::{process, scheduler, signal};
use crate::sweep::daytona::{sweep_daytona, DaytonaSweep, SandboxOwners, SandboxSelection};
use crate::sweep::docker::SweepResult;
use crate::sweep::images::{self, DiskReport, ImagePolicy};
use crate::sweep::owned::{self, kept_containers, ContainerPick, OwnedSweep};
use crate::teardown::{Backends, TakeKept, TeardownOptions};

/// A run as it starts: recorded in the ledger, its backends connected.
struct Started {
    run_id: String,
    started_at: i64,
    host: String,
    ledger: Ledger,
    docker: Option<DockerBackend>,
    daytona: Option<Arc<DaytonaBackend>>,
    log_dir: PathBuf,
}

/// How a run ended, for its report.
struct Ending<'a> {
    reports: &'a [TaskReport],
    disk: Option<&'a DiskReport>,
    pre_run: Option<&'a SweepResult>,
    status: ExitStatus,
    interrupted_by: Option<Signal>,
    limits: Option<LimitsReport>,
}

pub async fn run(global: &GlobalSettings, settings: &RunSettings, session: &Session) -> Result<ExitStatus, Error> {
    let events = session.events.clone();
    let started = start(global, settings, &events).await?;
    prepare_supervision();
    let third_press =
        third_press(started.ledger.path().to_path_buf(), started.run_id.clone(), global.state_dir.clone());
    let shutdown = signal::install(third_press, events.clone()).map_err(|source| Error::Io {
        what: "listen for signals in",
        path: "benchwarden".into(),
        source,
    })?;
    let teardown = TeardownOptions {
        removal: RemovalOptions { parallel: settings.parallel, fail_fast: false, retry: settings.retry.clone() },
        stop_timeout: settings.benchmark.docker.stop_timeout,
        take_kept: TakeKept::Never,
    };
    let pre_run = match settings.skip_cleanup {
        false => Some(pre_run_cleanup(&started, &global.state_dir, settings, &teardown, &events).await?),
        true => None,
    };
    let suspension = signal::install_job_control(events.clone()).map_err(|source| Error::Io {
        what: "listen for Ctrl-Z (SIGTSTP) and SIGCONT in",
        path: "benchwarden".into(),
        source,
    })?;
    let signals = (shutdown.clone(), suspension);
    let context = Arc::new(run_context(&started, global, settings, teardown, signals, &events));
    let leases = keep_leases(&started, settings, &events);
    let reports = scheduler::run_all(Arc::clone(&context), settings.task_specs(&started.run_id), settings.jobs).await;
    context.teardowns.close();
    context.teardowns.wait().await;
    if let Some(leases) = leases {
        leases.stop().await;
    }
    let limits = context.live.report();
    drop(context);
    session.reporter.clear();
    let interrupted_by = shutdown.borrow().signal();
    let status = exit_status(&reports, interrupted_by, settings.fail_on_unresolved);
    let disk = remove_run_images(&started, settings, &events).await;
    let ending =
        Ending { reports: &reports, disk: disk.as_ref(), pre_run: pre_run.as_ref(), status, interrupted_by, limits };
    finish(&started, global, settings, &ending, session).await?;
    Ok(status)
}

/// Connects to the backends (the daemon's answer is the slow part of
/// starting, so the ledger opens meanwhile), records the run, makes its log
/// directory, and tells that it started.
async fn start(global: &GlobalSettings, settings: &RunSettings, events: &Events) -> Result<Started, Error> {
    // A wrong key stops the run before anything starts or is recorded.
    let daytona = match &settings.daytona {
        Some(daytona) => {
            let backend = DaytonaBackend::new(daytona.config.clone(), settings.retry.clone(), events.clone())?;
            backend.check_credentials().await.map_err(|error| error.during("check the credentials"))?;
            Some(Arc::new(backend))
        }
        None => None,
    };
    let endpoint = global.docker.clone();
    let connecting =
        settings.benchmark.docker.enabled.then(|| tokio::spawn(async move { DockerBackend::connect(&endpoint).await }));
    // Before any task starts: a state directory that cannot take the ledger's rows stops the run here.
    ledger::reserve::ensure(&global.state_dir)?;
    let ledger = Ledger::open(&global.state_dir)?;
    let docker = match connecting {
        Some(connecting) => Some(
            connecting
                .await
                .map_err(|error| Error::DockerUnreachable {
                    address: global.docker.address.clone(),
                    reason: error.to_string(),
                })??
                .retrying_reads(settings.retry.clone(), events.clone()),
        ),
        None => None,
    };
    let host = host::host_name();
    let started_at = now_unix();
    // Another run on this state directory may draw the same id in the same minute: the ledger draws again.
    let run_id = ledger.start_new_run("", run_record(&host, &settings.benchmark.name, started_at)).await?;
    let log_dir = global.state_dir.join("runs").join(&run_id);
    std::fs::create_dir_all(&log_dir).map_err(|source| Error::Io {
        what: "create the run directory",
        path: log_dir.clone(),
        source,
    })?;
    events.emit(Event::RunStarted {
        run_id: &run_id,
        tasks: settings.tasks.len(),
        benchmark: &settings.benchmark.name,
        source: &settings.source,
        jobs: settings.jobs,
        log_dir: &log_dir,
    });
    if let Some(daytona) = &settings.daytona {
        tracing::debug!("{}", text::sandbox_collection_line(&daytona.collection));
    }
    Ok(Started { run_id, started_at, host, ledger, docker, daytona, log_dir })
}

/// The run's row; the ledger gives it its id.
fn run_record(host: &str, benchmark: &str, started_at: i64) -> RunRecord {
    RunRecord {
        id: String::new(),
        pid: std::process::id(),
        start_time: host::process_start_time(std::process::id()),
        host: host.to_string(),
        benchmark: benchmark.to_string(),
        started_at,
        ended_at: None,
        outcome: None,
    }
}

/// Makes benchwarden the reaper of its harnesses' orphans.
fn prepare_supervision() {
    if let Err(error) = process::become_subreaper() {
        tracing::warn!("cannot become a child subreaper ({error}): double-forked harness processes may escape");
    }
    process::spawn_reaper();
}

/// Before the tasks: tear down what orphaned runs own, and what `--keep-failed`
/// kept longer ago than the cleanup age, prune the ledger (runs past the
/// retention, socket directories of runs no longer running), then sweep
/// claimed leftovers older than the cleanup age (or in a listed state),
/// sparing what was kept since.
async fn pre_run_cleanup(
    started: &Started,
    state_dir: &Path,
    settings: &RunSettings,
    teardown: &TeardownOptions,
    events: &Events,
) -> Result<SweepResult, Error> {
    let backends = Backends { docker: started.docker.as_ref(), daytona: started.daytona.as_deref() };
    // Runs known from labels alone wait for `recover --from-labels` or the age sweep below:
    // nothing the ledger does not know of goes without being asked.
    let kept_before = crate::clock::seconds_before(now_unix(), settings.cleanup_age);
    let recovery = TeardownOptions { take_kept: TakeKept::KeptBefore(kept_before), ..teardown.clone() };
    let recovered = recover_orphans(backends, &started.ledger, &recovery, false, OrphanFilter::LEDGER, events).await?;
    events.orphan(OrphanEvent::Recovered { runs: recovered.len() });
    super::prune::prune_runs(state_dir, &started.ledger, settings.retention, false, events).await?;
    collect_expired_leases(started, settings, &teardown.removal, events).await;
    let Some(docker) = &started.docker else {
        return Ok(SweepResult::default());
    };
    let kept = kept_containers(&started.ledger.all_unreleased().await?, kept_before);
    let sweep = OwnedSweep {
        kept: &kept,
        selectors: &settings.benchmark.docker.selectors,
        pick: ContainerPick::OldOrInStates { age: settings.cleanup_age, states: settings.cleanup_states.clone() },
        own_run: Some(&started.run_id),
        stop_timeout: teardown.stop_timeout,
        dry_run: false,
        removal: teardown.removal.clone(),
    };
    let runs = started.ledger.runs().await?;
    owned::pre_run(docker, &runs, &sweep, &started.host, events).await
}

/// With Daytona: the run's leases renewed until its teardowns are done.
fn keep_leases(started: &Started, settings: &RunSettings, events: &Events) -> Option<LeaseKeeper> {
    let (backend, daytona) = (started.daytona.as_ref()?, settings.daytona.as_ref()?);
    Some(LeaseKeeper::start(Arc::clone(backend), started.run_id.clone(), daytona.proxy.lease, events.clone()))
}

/// With Daytona: the sandboxes other hosts' runs left, their leases ended,
/// collected before the tasks. A failure here is told and the run goes on:
/// another machine's leftovers are no reason not to run.
async fn collect_expired_leases(started: &Started, settings: &RunSettings, removal: &RemovalOptions, events: &Events) {
    let (Some(backend), Some(daytona)) = (started.daytona.as_deref(), settings.daytona.as_ref()) else { return };
    let selection = SandboxSelection {
        owners: SandboxOwners::ExpiredLeases,
        stopped: false,
        older_than: None,
        lease_grace: daytona.lease_grace,
        expired_leases_go_whatever_state: true,
    };
    let sweep = DaytonaSweep { selection, dry_run: false, removal: removal.clone() };
    if let Err(error) = sweep_daytona(backend, &sweep, &[], Some(&started.ledger), &started.host, events).await {
        tracing::warn!("pre-run sweep: sandboxes with an ended lease were not collected: {error}");
    }
}

fn run_context(
    started: &Started,
    global: &GlobalSettings,
    settings: &RunSettings,
    teardown: TeardownOptions,
    (shutdown, suspension): (
        tokio::sync::watch::Receiver<signal::Shutdown>,
        tokio::sync::watch::Receiver<signal::Suspension>,
    ),
    events: &Events,
) -> RunContext {
    // `docker.proxy: false`: the harness talks to the engine itself; the watcher and the selectors know what it made.
    let wants_proxy = settings.benchmark.docker.proxy;
    let docker_proxy = started.docker.as_ref().filter(|_| wants_proxy).and_then(|docker| match docker.endpoint().upstream() {
        Some(upstream) => Some(DockerProxySettings {
            upstream,
            socket_roots: socket_roots(&global.state_dir),
            run_id: started.run_id.clone(),
        }),
        None => {
            tracing::warn!(
                "{}: the per-task Docker proxy speaks only unix and plain tcp; tracking falls back to labels and selectors",
                docker.endpoint().address
            );
            None
        }
    });
    let live = LiveResources::new(settings.limits);
    let watcher = started.docker.as_ref().map(|docker| {
        Watcher::spawn(docker.clone(), started.ledger.clone(), started.started_at, live.clone(), events.clone())
    });
    RunContext {
        run_id: started.run_id.clone(),
        host: started.host.clone(),
        ledger: started.ledger.clone(),
        docker: started.docker.clone(),
        daytona: started.daytona.clone(),
        teardown,
        log_dir: started.log_dir.clone(),
        echo_output: settings.jobs == 1,
        shutdown,
        suspension,
        events: events.clone(),
        teardowns: TaskTracker::new(),
        teardown_slots: Arc::new(Semaphore::new(settings.jobs.max(1))),
        live,
        watcher,
        docker_proxy,
        daytona_proxy: settings.daytona.as_ref().map(|daytona| daytona.proxy.clone()),
        keep: settings.keep,
        // Absolute, since the harness may run elsewhere.
        state_dir: std::path::absolute(&global.state_dir).unwrap_or_else(|_| global.state_dir.clone()),
    }
}

/// With `docker.remove_images`, removes the images the run's tasks made,
/// once every task is torn down: not at a task's teardown, since another
/// task of the run may use them. A failure to list is told and the images
/// stay recorded for `cleanup docker --images`; it does not change the
/// run's outcome, since nothing of a task leaked.
async fn remove_run_images(started: &Started, settings: &RunSettings, events: &Events) -> Option<DiskReport> {
    let docker = started.docker.as_ref().filter(|_| settings.benchmark.docker.remove_images)?;
    let policy = ImagePolicy { run: Some(&started.run_id), older_than: None, labels: Vec::new(), dry_run: false };
    match images::remove_images(docker, &started.ledger, &policy, &started.host, events).await {
        Ok(report) => Some(report),
        Err(error) => {
            tracing::error!(
                "run {}: cannot remove its images: {error}; `benchwarden cleanup docker --images` can",
                started.run_id
            );
            None
        }
    }
}

/// Writes the JSON report, prints the summary, and closes the run in the
/// ledger, or leaves it open for `recover` when something is left.
async fn finish(
    started: &Started,
    global: &GlobalSettings,
    settings: &RunSettings,
    ending: &Ending<'_>,
    session: &Session,
) -> Result<(), Error> {
    let Ending { reports, disk, pre_run, status, interrupted_by, limits } = *ending;
    let report_path = settings.report.clone().unwrap_or_else(|| started.log_dir.join("report.json"));
    let report = RunReport {
        run_id: &started.run_id,
        benchmark: &settings.benchmark.name,
        source: &settings.source,
        daytona: settings.daytona.as_ref().map(|daytona| &daytona.collection),
        started_at: started.started_at,
        ended_at: now_unix(),
        exit_code: status.code(),
        interrupted_by: interrupted_by.map(|signal| signal.to_string()),
        pre_run_sweep: pre_run,
        backends: session.metrics.backend_figures(),
        limits,
        tasks: reports,
        disk,
        disk_reclaimed_bytes: disk.map(|disk| disk.reclaimed_bytes).unwrap_or(0),
    };
    write_report(&report_path, &report)?;
    print_stdout(&text::run_summary(reports, limits.as_ref()))?;
    print_stdout(&text::kept_summary(reports, &started.run_id, &global.state_dir))?;
    if let Some(disk) = disk {
        print_stdout(&text::disk_summary(disk))?;
    }
    if reports.iter().any(TaskReport::left_something) {
        // Left open (unended), the run becomes an orphan once we exit, so `recover` retries it.
        let left: usize =
            reports.iter().map(|report| report.resources_leaked.len() + report.resources_pending.len()).sum();
        tracing::error!(
            "run {}: {left} resource(s) left; retry with `benchwarden recover --state-dir {}`",
            started.run_id,
            global.state_dir.display()
        );
    } else {
        started.ledger.end_run(&started.run_id, run_outcome(status)).await?;
    }
    session.write_metrics(settings.metrics_file.as_deref(), global).await?;
    eprintln!("report: {}", report_path.display());
    Ok(())
}

fn run_outcome(status: ExitStatus) -> &'static str {
    match status {
        ExitStatus::Success => "passed",
        ExitStatus::Leaked => "leaked",
        ExitStatus::Interrupted | ExitStatus::Terminated => "interrupted",
        _ => "failed",
    }
}

/// Leaked > interrupted > failed > passed. With `fail_on_unresolved`, a
/// task the harness's own result calls unresolved (or an error) failed.
fn exit_status(reports: &[TaskReport], interrupted_by: Option<Signal>, fail_on_unresolved: bool) -> ExitStatus {
    // A sandbox still being deleted is not proven gone: the run stays open for `recover`.
    if reports.iter().any(TaskReport::left_something) {
        return ExitStatus::Leaked;
    }
    let passed = |report: &TaskReport| {
        report.outcome == TaskOutcome::Passed
            && !(fail_on_unresolved && report.result.as_ref().is_some_and(|result| result.verdict != Verdict::Resolved))
    };
    match interrupted_by {
        Some(Signal::SIGTERM) => ExitStatus::Terminated,
        Some(_) => ExitStatus::Interrupted,
        None if reports.iter().all(passed) => ExitStatus::Success,
        None => ExitStatus::Failure,
    }
}

/// The third Ctrl-C: kill what still runs, say what is left, exit now.
fn third_press(ledger_path: PathBuf, run_id: String, state_dir: PathBuf) -> impl Fn(Signal) + Send {
    move |signal| {
        process::kill_all_harnesses();
        eprintln!("error: {signal} a third time: exiting now, before teardown finished");
        match ledger::unreleased_now(&ledger_path, &run_id) {
            Ok(left) if !left.is_empty() => {
                eprintln!("  resources recorded and not yet removed:");
                for record in left {
                    eprintln!("    {} (task {})", record.resource, record.task_id);
                }
            }
            _ => {}
        }
        eprintln!(
            "  run {run_id} is in the ledger; finish its teardown with: benchwarden recover --state-dir {}",
            state_dir.display()
        );
        let code = if signal == Signal::SIGTERM { 143 } else { 130 };
        std::process::exit(code);
    }
}

fn write_report(path: &Path, report: &RunReport<'_>) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(report).map_err(|source| Error::Json { what: "the report", source })?;
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            what: "create the report's directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, text + "\n").map_err(|source| Error::Io {
        what: "write the report",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::TaskResult;

    #[test]
    fn leaks_outrank_interrupts_which_outrank_failures() {
        let report = |outcome, leaked: &[&str]| {
            let mut report = TaskReport::unstarted("t", PathBuf::from("t.log"));
            report.outcome = outcome;
            report.resources_leaked = leaked.iter().map(ToString::to_string).collect();
            report
        };
        let passed = report(TaskOutcome::Passed, &[]);
        let failed = report(TaskOutcome::TimedOut, &[]);
        let leaked = report(TaskOutcome::Passed, &["container c"]);
        use nix::sys::signal::Signal::{SIGINT, SIGTERM};
        assert_eq!(exit_status(std::slice::from_ref(&passed), None, false), ExitStatus::Success);
        assert_eq!(exit_status(&[passed.clone(), failed.clone()], None, false), ExitStatus::Failure);
        assert_eq!(exit_status(std::slice::from_ref(&failed), Some(SIGINT), false), ExitStatus::Interrupted);
        assert_eq!(exit_status(std::slice::from_ref(&passed), Some(SIGTERM), false), ExitStatus::Terminated);
        assert_eq!(exit_status(&[failed, leaked], Some(SIGINT), false), ExitStatus::Leaked);
    }

    #[test]
    fn an_unresolved_result_fails_the_run_only_when_asked() {
        let with = |verdict| {
            let mut report = TaskReport::unstarted("t", PathBuf::from("t.log"));
            report.outcome = TaskOutcome::Passed;
            let path = PathBuf::from("results.json");
            report.result = Some(TaskResult { verdict, score: None, trials: 1, detail: None, path });
            report
        };
        let (resolved, unresolved, error) = (with(Verdict::Resolved), with(Verdict::Unresolved), with(Verdict::Error));
        assert_eq!(exit_status(std::slice::from_ref(&unresolved), None, false), ExitStatus::Success);
        assert_eq!(exit_status(std::slice::from_ref(&unresolved), None, true), ExitStatus::Failure);
        assert_eq!(exit_status(std::slice::from_ref(&error), None, true), ExitStatus::Failure);
        assert_eq!(exit_status(std::slice::from_ref(&resolved), None, true), ExitStatus::Success);
        let no_result = TaskReport { result: None, ..resolved };
        assert_eq!(exit_status(&[no_result], None, true), ExitStatus::Success);
    }
}
