//! `benchwarden prune`, and the prune `run`, `cleanup all` and `sweep` do
//! at their start: forget finished runs older than the retention that own
//! nothing (their ledger rows and `runs/<id>/` directories), remove the
//! socket directories of runs no longer running, and vacuum the ledger
//! once it is mostly free pages. Which runs may go is decided in
//! `ledger::retention`; this wires it to the disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{print_json, print_stdout, Session};
use crate::clock::now_unix;
use crate::errors::{Error, ExitStatus};
use crate::events::{Event, Events};
use crate::ledger::retention::{self, PruneReport};
use crate::ledger::Ledger;
use crate::report::text;
use crate::settings::{GlobalSettings, PruneSettings};

pub async fn prune(global: &GlobalSettings, settings: &PruneSettings, session: &Session) -> Result<ExitStatus, Error> {
    let ledger = Ledger::open(&global.state_dir)?;
    let report = prune_runs(&global.state_dir, &ledger, settings.retention, settings.dry_run, &session.events).await?;
    if settings.json {
        print_json(&report)?;
    } else {
        print_stdout(&text::prune_summary(&report))?;
    }
    Ok(if report.kept.is_empty() { ExitStatus::Success } else { ExitStatus::Failure })
}

/// Prunes the ledger of `state_dir` (with `dry_run`, only says what would
/// go). A run whose directory cannot be removed stays in the ledger, so the
/// next prune tries again and no directory is left that nothing names.
pub(super) async fn prune_runs(
    state_dir: &Path,
    ledger: &Ledger,
    retention: Duration,
    dry_run: bool,
    events: &Events,
) -> Result<PruneReport, Error> {
    let runs = ledger.runs().await?;
    let (unreleased, images) = (ledger.all_unreleased().await?, ledger.images(None).await?);
    let mut report = PruneReport { dry_run, retention_seconds: retention.as_secs(), ..PruneReport::default() };
    let mut forgettable = Vec::new();
    for run in retention::prunable(&runs, &unreleased, &images, now_unix(), retention) {
        match remove_run_directory(state_dir, &run.id, dry_run) {
            Ok(directory) => {
                forgettable.push(run.id.clone());
                report.run_directories.extend(directory);
            }
            Err(why) => report.kept.push((run.id.clone(), why)),
        }
    }
    report.runs = match dry_run {
        true => forgettable,
        false => ledger.forget_runs(forgettable).await?,
    };
    report.socket_directories = super::ledger::remove_stale_sockets(state_dir, ledger, dry_run, events).await?;
    if !dry_run {
        report.vacuum = ledger.vacuum_if_sparse().await.unwrap_or_else(|error| {
            // The rows are gone already; the space comes back at the next prune.
            tracing::warn!("prune: the ledger could not be vacuumed: {error}");
            None
        });
    }
    events.emit(Event::Pruned {
        runs: &report.runs,
        kept: &report.kept,
        retention,
        dry_run,
        vacuum: report.vacuum.map(|vacuum| (vacuum.bytes_before, vacuum.bytes_after)),
    });
    Ok(report)
}

/// Removes `runs/<run id>/` (with `dry_run`, only finds it); returns it
/// when it was there. An id that is not one plain path component (a run
/// adopted from a label) names no directory of ours, and nothing is removed.
fn remove_run_directory(state_dir: &Path, run_id: &str, dry_run: bool) -> Result<Option<PathBuf>, String> {
    if !retention::is_directory_name(run_id) {
        return Ok(None);
    }
    let directory = state_dir.join("runs").join(run_id);
    let removed = match dry_run {
        true => std::fs::symlink_metadata(&directory).map(drop),
        false => std::fs::remove_dir_all(&directory),
    };
    match removed {
        Ok(()) => Ok(Some(directory)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("cannot remove its directory {}: {error}", directory.display())),
    }
}
