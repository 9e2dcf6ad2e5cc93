//! The commands about what the ledger knows: `benchwarden recover` and
//! `benchwarden status`.

use std::path::{Path, PathBuf};

use super::{print_json, print_stdout, Session};
use crate::backend::daytona::DaytonaBackend;
use crate::backend::docker::DockerBackend;
use crate::backend::{RemovalOptions, DEFAULT_PARALLEL};
use crate::clock::now_unix;
use crate::errors::{Error, ExitStatus};
use crate::events::{Events, OrphanEvent};
use crate::host;
use crate::intercept::sockets;
use crate::ledger::{Ledger, ResourceRecord};
use crate::recover::{recover_orphans, OrphanFilter, OrphanSource};
use crate::report::text::{self, RunStatus, Status};
use crate::resource::Kind;
use crate::settings::{GlobalSettings, RecoverSettings, StatusSettings};
use crate::teardown::{Backends, TakeKept, TeardownOptions};

/// The Daytona backend when credentials are in the environment. Without
/// them, sandboxes recorded in the ledger cannot be recovered: say so.
async fn daytona_if_configured(
    global: &GlobalSettings,
    ledger: &Ledger,
    events: &Events,
) -> Result<Option<DaytonaBackend>, Error> {
    match global.daytona.optional()? {
        Ok(config) => Ok(Some(DaytonaBackend::new(config, global.retry.clone(), events.clone())?)),
        Err(why) => {
            let unreleased = ledger.all_unreleased().await?;
            let sandboxes = unreleased.iter().filter(|record| record.resource.kind == Kind::Sandbox).count();
            if sandboxes > 0 {
                tracing::warn!("{sandboxes} Daytona sandbox(es) recorded in the ledger are left alone: {why}");
            }
            Ok(None)
        }
    }
}

pub async fn recover(
    global: &GlobalSettings,
    settings: &RecoverSettings,
    session: &Session,
) -> Result<ExitStatus, Error> {
    let events = &session.events;
    let ledger = Ledger::open(&global.state_dir)?;
    let docker = DockerBackend::connect(&global.docker).await?.retrying_reads(global.retry.clone(), events.clone());
    let daytona = daytona_if_configured(global, &ledger, events).await?;
    let backends = Backends { docker: Some(&docker), daytona: daytona.as_ref() };
    let options = TeardownOptions {
        removal: RemovalOptions { parallel: DEFAULT_PARALLEL, fail_fast: false, retry: global.retry.clone() },
        stop_timeout: None,
        take_kept: if settings.include_kept { TakeKept::All } else { TakeKept::Never },
    };
    if let Some(run) = &settings.run {
        if !ledger.runs().await?.iter().any(|known| &known.id == run) {
            return Err(Error::usage(format!(
                "--run {run}: no such run in the ledger {}; `benchwarden status` lists the runs",
                ledger.path().display()
            )));
        }
    }
    let source = if settings.from_labels { OrphanSource::LedgerAndLabels } else { OrphanSource::Ledger };
    let filter = OrphanFilter { source, only_run: settings.run.as_deref() };
    let recovered = recover_orphans(backends, &ledger, &options, settings.dry_run, filter, events).await?;
    remove_stale_sockets(&global.state_dir, &ledger, settings.dry_run, events).await?;
    if settings.json {
        print_json(&recovered)?;
    } else {
        print_stdout(&text::recovery_summary(&recovered))?;
    }
    let left: usize = recovered.iter().map(|run| run.leaked.len() + run.pending.len() + run.kept.len()).sum();
    Ok(if left > 0 { ExitStatus::Leaked } else { ExitStatus::Success })
}

/// Removes the proxy socket directories of runs that are gone (a `kill -9`
/// leaves them), or with `dry_run` tells which would go; returns those.
pub(super) async fn remove_stale_sockets(
    state_dir: &Path,
    ledger: &Ledger,
    dry_run: bool,
    events: &Events,
) -> Result<Vec<PathBuf>, Error> {
    let runs = ledger.runs().await?;
    let stale = sockets::stale_directories(&sockets::socket_roots(state_dir), &runs, &host::host_name());
    let (directories, failed) = match dry_run {
        true => (stale, Vec::new()),
        false => sockets::remove_directories(stale),
    };
    let failed: Vec<(PathBuf, String)> =
        failed.into_iter().map(|(directory, error)| (directory, error.to_string())).collect();
    if !directories.is_empty() || !failed.is_empty() {
        events.orphan(OrphanEvent::StaleSockets { directories: &directories, failed: &failed, dry_run });
    }
    Ok(directories)
}

/// `status`: the runs the selection shows, and how many it leaves out.
pub async fn status(global: &GlobalSettings, settings: &StatusSettings) -> Result<ExitStatus, Error> {
    let ledger = Ledger::open(&global.state_dir)?;
    let this_host = host::host_name();
    let unreleased = ledger.all_unreleased().await?;
    let runs: Vec<RunStatus> = ledger
        .runs()
        .await?
        .into_iter()
        .map(|run| {
            let state = if run.ended_at.is_some() {
                "finished"
            } else if run.is_orphaned(&this_host) {
                "orphaned"
            } else {
                "running"
            };
            let (kept, live): (Vec<_>, Vec<_>) =
                unreleased.iter().filter(|record| record.run_id == run.id).partition(|record| record.kept_at.is_some());
            let resources =
                |records: Vec<&ResourceRecord>| records.into_iter().map(|record| record.resource.clone()).collect();
            RunStatus { run, state, live_resources: resources(live), kept_resources: resources(kept) }
        })
        .collect();
    let (runs, left_out) = settings.selection.select(runs, now_unix());
    let status = Status::new(runs, left_out, &ledger.history().await?, now_unix());
    if settings.json {
        print_json(&status)?;
    } else {
        print_stdout(&text::status_table(&status, settings.selection, now_unix(), &global.state_dir))?;
    }
    Ok(ExitStatus::Success)
}
