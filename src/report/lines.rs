//! Log lines for events: the plain record of a run on any output, a
//! terminal or a file. Levels follow what a person must notice: removals
//! and progress are info, retries and stopped tasks warnings, anything
//! left behind an error.

use crate::events::{Event, OrphanEvent, Press, RemovalEvent, StopWhen, TaskEvent, TaskOutcome, TaskReport};
use crate::limits::Waiting;
use crate::resource::{ImageFate, RecordedImage, RemovalOutcome};

fn log_image(image: &RecordedImage, fate: &ImageFate) {
    match fate {
        ImageFate::Removed { .. } => tracing::info!("removed {image}"),
        ImageFate::AlreadyGone => tracing::info!("{image} was already gone"),
        ImageFate::WouldRemove { .. } => tracing::info!("would remove {image}"),
        ImageFate::Kept { reason } => tracing::info!("leaving {image} alone: {reason}"),
        ImageFate::Failed { error } => tracing::error!("could not remove {image}: {error}"),
    }
}

/// Why the next task waits, for people.
pub(super) fn waiting_text(waiting: &Waiting) -> String {
    let Waiting { kind, live, limit, expected, learning } = *waiting;
    match learning {
        true => format!(
            "next task waits: learning how many {} a task makes before starting another (limit {limit})",
            kind.plural()
        ),
        false => format!(
            "next task waits for room: {live} {} live, {expected} with it and what running tasks may still make (limit {limit})",
            kind.plural()
        ),
    }
}

/// What a signal to benchwarden did: a shutdown press, a Ctrl-Z, a continue.
fn log_signal(event: &Event<'_>) {
    match event {
        Event::ShutdownRequested { signal, press: Press::First } => {
            tracing::warn!("{signal}: starting no new tasks; stopping running ones (again to kill them at once)")
        }
        Event::ShutdownRequested { signal, press: Press::Second } => {
            tracing::warn!("{signal} again: killing every harness now; teardown goes on (again to exit at once)")
        }
        Event::Suspended { processes } => tracing::warn!(
            "SIGTSTP: stopped {processes} harness process(es), then benchwarden; `fg` or `bg` continues them, \
             and time limits stand still meanwhile"
        ),
        Event::Resumed { processes, stopped_for } => tracing::warn!(
            "SIGCONT: continued {processes} harness process(es) after {:.1}s stopped; \
             time limits go on from where they were",
            stopped_for.as_secs_f64()
        ),
        _ => {}
    }
}

pub(super) fn log(event: &Event<'_>) {
    match event {
        Event::RunStarted { run_id, tasks, benchmark, source, jobs, log_dir } => tracing::info!(
            "run {run_id}: {tasks} task(s) of {benchmark} ({source}), {jobs} at once; logs in {}",
            log_dir.display()
        ),
        Event::ShutdownRequested { .. } | Event::Suspended { .. } | Event::Resumed { .. } => log_signal(event),
        Event::Task(task) => log_task(task),
        Event::Removal(RemovalEvent::Outcome { resource, outcome }) => match outcome {
            RemovalOutcome::Removed { .. } => tracing::info!("removed {resource}"),
            RemovalOutcome::AlreadyGone { .. } => tracing::info!("{resource} was already gone"),
            RemovalOutcome::Failed { attempts, error } => {
                tracing::error!("could not remove {resource} after {attempts} attempt(s): {error}")
            }
            RemovalOutcome::Pending { .. } => {
                tracing::warn!("{resource} is still being deleted after the wait; it is not gone yet")
            }
            RemovalOutcome::NotAttempted | RemovalOutcome::WouldRemove => {}
        },
        Event::Removal(RemovalEvent::Found { resource }) => tracing::debug!("found {resource}"),
        Event::Removal(RemovalEvent::Accepted { resource }) => {
            tracing::info!("delete of {resource} accepted; waiting for it to be gone")
        }
        Event::Removal(_) => {}
        Event::Retrying { call, attempt, attempts, error, delay } => {
            let what = call.what;
            let delay = std::time::Duration::from_millis(delay.as_millis() as u64);
            tracing::warn!(
                "{what}: attempt {attempt}/{attempts} failed: {error}; retrying in {}",
                humantime::format_duration(delay)
            )
        }
        Event::Created { resource } => tracing::debug!("created {resource}"),
        Event::Refused { .. } | Event::Waiting { .. } => log_limits(event),
        Event::Protected { resource, reason } => tracing::info!("leaving {resource} alone: {reason}"),
        Event::LeaseExpired { .. } | Event::LeasesRenewed { .. } => log_lease(event),
        Event::WouldRemove { resource } => tracing::info!("would remove {resource}"),
        Event::Leaked { resource } => tracing::error!("leaked: {resource} is still there after teardown"),
        Event::PreRunSweepFinished { removed, failed, protected } => {
            if *removed > 0 || *failed > 0 {
                tracing::info!(
                    "pre-run sweep: {removed} leftover container(s) removed, {failed} failed, {protected} left alone"
                );
            }
        }
        Event::SweepFinished { .. } | Event::SweepFailed { .. } | Event::SweepStopping { .. } => log_sweep(event),
        Event::Orphan(orphan) => log_orphan(orphan),
        Event::Pruned { .. } => log_prune(event),
        Event::ImageRecorded { image, task } => tracing::debug!("task {task}: recorded {image}"),
        Event::Image { image, fate } => log_image(image, fate),
        Event::DiskReclaimed { what, bytes } => {
            tracing::info!("{}: {} freed", what.as_str().replace('_', " "), super::text::human_bytes(*bytes))
        }
    }
}

fn log_lease(event: &Event<'_>) {
    match event {
        Event::LeaseExpired { resource, reason } => tracing::info!("{resource} is free to collect: {reason}"),
        Event::LeasesRenewed { renewed, failed: 0, next, .. } => {
            tracing::debug!("leases: {renewed} renewed; next round in {}", humantime::format_duration(*next))
        }
        Event::LeasesRenewed { renewed, failed, error, next } => tracing::warn!(
            "leases: {failed} renewal(s) failed ({}), {renewed} renewed; trying again in {}",
            error.unwrap_or("unknown error"),
            humantime::format_duration(*next)
        ),
        _ => {}
    }
}

/// A prune: one line for the runs forgotten, one per run kept, one for the vacuum.
fn log_prune(event: &Event<'_>) {
    let Event::Pruned { runs, kept, retention, dry_run, vacuum } = event else { return };
    let age = super::text::format_duration(*retention);
    if !runs.is_empty() {
        let verb = if *dry_run { "would forget" } else { "forgot" };
        tracing::info!("prune: {verb} {} finished run(s) older than {age} that owned nothing", runs.len());
        tracing::debug!("prune: {}", runs.join(", "));
    }
    for (run_id, why) in kept.iter() {
        tracing::warn!("prune: run {run_id} stays in the ledger: {why}");
    }
    if let Some((before, after)) = vacuum {
        let (before, after) = (super::text::human_bytes(*before), super::text::human_bytes(*after));
        tracing::info!("prune: the ledger was vacuumed from {before} to {after}");
    }
}

fn log_limits(event: &Event<'_>) {
    match event {
        Event::Refused { task, refusal } => {
            tracing::warn!("task {task}: a {} create was refused: {}", refusal.kind, refusal.message())
        }
        Event::Waiting { waiting: Some(waiting), news: true } => tracing::info!("{}", waiting_text(waiting)),
        Event::Waiting { waiting: Some(waiting), news: false } => tracing::debug!("{}", waiting_text(waiting)),
        Event::Waiting { waiting: None, .. } => tracing::info!("room under the limits: starting the next task"),
        _ => {}
    }
}

fn log_task(event: &TaskEvent<'_>) {
    match event {
        TaskEvent::Started { task } => tracing::info!("task {task}: started"),
        TaskEvent::LogFailed { task, path, error } => tracing::error!(
            "task {task}: cannot write its log {}: {error}; its output still reaches the terminal, the log is incomplete",
            path.display()
        ),
        TaskEvent::Killed { task, processes } => {
            tracing::info!("task {task}: killed {processes} process(es) with SIGKILL")
        }
        TaskEvent::Unkillable { task } => {
            tracing::error!("task {task}: processes survive SIGKILL (uninterruptible sleep?); tearing down anyway")
        }
        TaskEvent::Ended { report } => log_task_ended(report),
        TaskEvent::TearingDown { task } => tracing::info!("task {task}: tearing down"),
        TaskEvent::Keeping { task } => tracing::info!("task {task}: keeping its resources (--keep-failed)"),
        TaskEvent::Finished { report } => {
            if let Some(error) = &report.teardown_error {
                tracing::error!("task {}: teardown: {error}; run `benchwarden recover` later", report.task);
            }
            if !report.resources_kept.is_empty() {
                tracing::warn!("task {}: kept {} resource(s) in place", report.task, report.resources_kept.len());
            }
        }
        TaskEvent::Live { .. } | TaskEvent::Output { .. } => {}
    }
}

fn log_task_ended(report: &TaskReport) {
    let task = &report.task;
    match report.outcome {
        TaskOutcome::Passed => tracing::info!("task {task}: passed in {:.1}s", report.seconds),
        TaskOutcome::TimedOut => tracing::warn!("task {task}: timed out after {:.1}s", report.seconds),
        outcome => {
            if let Some(error) = &report.error {
                tracing::error!("task {task}: {error}");
            }
            let exit = report.exit_code.map(|code| code.to_string()).or_else(|| report.signal.clone());
            tracing::warn!(
                "task {task}: {} (exit {}) after {:.1}s; log: {}",
                outcome.describe(),
                exit.unwrap_or_else(|| "-".into()),
                report.seconds,
                report.log.display()
            )
        }
    }
}

fn log_orphan(event: &OrphanEvent<'_>) {
    match event {
        OrphanEvent::Recovering { run_id, pid, from_labels } => {
            let pid = pid.map_or_else(|| "unknown".to_string(), |pid| pid.to_string());
            let known = if *from_labels { " (known from labels only)" } else { "" };
            tracing::info!("run {run_id}{known} (pid {pid}) is gone: tearing down what it owns");
        }
        OrphanEvent::ProcessesKilled { run_id, processes } => {
            tracing::info!("run {run_id}: killed {processes} process(es) it left running")
        }
        OrphanEvent::Recovered { runs } => {
            if *runs > 0 {
                tracing::info!("recovered {runs} orphaned run(s) before starting");
            }
        }
        OrphanEvent::StaleSockets { directories, failed, dry_run } => {
            let verb = if *dry_run { "would remove" } else { "removed" };
            for directory in directories.iter() {
                tracing::info!("{verb} the proxy socket directory {} (its run is gone)", directory.display());
            }
            for (directory, error) in failed.iter() {
                tracing::warn!(
                    "cannot remove the stale proxy socket directory {}: {error}; remove it by hand",
                    directory.display()
                );
            }
        }
    }
}

fn log_sweep(event: &Event<'_>) {
    match event {
        Event::SweepFinished { round: Some(round), counts, seconds, .. } => tracing::info!(
            "sweep {round}: {} orphaned run(s) recovered; {} removed, {} would go (dry run), {} failed, \
             {} still being deleted, {} left alone ({seconds:.1}s)",
            counts.recovered_runs,
            counts.removed,
            counts.would_remove,
            counts.failed,
            counts.pending,
            counts.protected
        ),
        Event::SweepFinished { round: None, .. } => {}
        Event::SweepFailed { round, error } => {
            tracing::error!("sweep {round} failed: {error}; the next round tries again")
        }
        Event::SweepStopping { signal, when: StopWhen::BetweenRounds } => {
            tracing::warn!("{signal}: no sweep in progress; exiting")
        }
        Event::SweepStopping { signal, when: StopWhen::AfterThisRound } => {
            tracing::warn!("{signal}: finishing this sweep, then exiting (again to exit at once)")
        }
        Event::SweepStopping { signal, when: StopWhen::Now } => tracing::warn!("{signal} again: exiting now"),
        _ => {}
    }
}
