//! `benchwarden list --daytona` and `benchwarden cleanup daytona`.

use serde::Serialize;

use super::{print_json, print_stdout, Session};
use crate::backend::daytona::DaytonaBackend;
use crate::backend::RemovalOptions;
use crate::cleanup::SANDBOX_PARALLEL;
use crate::clock::now_unix;
use crate::errors::{Error, ExitStatus};
use crate::events::Events;
use crate::host;
use crate::ledger::Ledger;
use crate::report::text;
use crate::resource::RemovalReport;
use crate::settings::{DaytonaCleanupSettings, GlobalSettings, ListSettings};
use crate::sweep::daytona::{sweep_daytona, DaytonaSweep, DaytonaSweepResult};
use crate::sweep::Protected;

pub async fn list_daytona(
    global: &GlobalSettings,
    settings: &ListSettings,
    events: &Events,
) -> Result<ExitStatus, Error> {
    let backend = DaytonaBackend::new(global.daytona.required()?, global.retry.clone(), events.clone())?;
    let filter = settings.labels.iter().filter_map(|label| Some((label.key.clone(), label.value.clone()?))).collect();
    let mut sandboxes = backend.list(&filter).await.map_err(|error| error.during("list sandboxes"))?;
    // The API filters by `K=V`; `K` alone is checked here.
    sandboxes.retain(|sandbox| settings.labels.iter().all(|label| label.matches(&sandbox.labels)));
    sandboxes.sort_by_key(|sandbox| std::cmp::Reverse(sandbox.created_unix()));
    if settings.json {
        print_json(&sandboxes)?;
    } else {
        print_stdout(&text::sandbox_table(&sandboxes, now_unix()))?;
    }
    Ok(ExitStatus::Success)
}

/// `cleanup daytona --json`: the sweep with its counts, and the ids left alone.
#[derive(Debug, Serialize)]
struct CleanupResult<'a> {
    dry_run: bool,
    sandboxes: &'a RemovalReport,
    removed: usize,
    already_gone: usize,
    pending: usize,
    failed: usize,
    protected: Vec<&'a str>,
    /// Taken because another host's run left them with its lease ended, each with whose lease.
    lease_expired: &'a [Protected],
    /// The ledger run holding the deletions still pending, which `recover` finishes.
    pending_run: Option<&'a str>,
}

pub async fn cleanup_daytona(
    global: &GlobalSettings,
    settings: &DaytonaCleanupSettings,
    session: &Session,
) -> Result<ExitStatus, Error> {
    let events = &session.events;
    let backend = DaytonaBackend::new(global.daytona.required()?, global.retry.clone(), events.clone())?;
    let sweep = DaytonaSweep {
        selection: settings.selection.clone(),
        dry_run: settings.dry_run,
        removal: RemovalOptions {
            parallel: SANDBOX_PARALLEL,
            fail_fast: settings.fail_fast,
            retry: global.retry.clone(),
        },
    };
    // An unreadable ledger leaves the labels to judge liveness, and pending deletions unrecorded.
    let ledger = Ledger::open(&global.state_dir).ok();
    let runs = match &ledger {
        Some(ledger) => ledger.runs().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let result = sweep_daytona(&backend, &sweep, &runs, ledger.as_ref(), &host::host_name(), events).await?;
    if settings.json {
        let report = &result.sandboxes;
        print_json(&CleanupResult {
            dry_run: result.dry_run,
            sandboxes: report,
            removed: report.removed(),
            already_gone: report.already_gone(),
            pending: report.pending(),
            failed: report.failed(),
            protected: result.protected.iter().map(|item| item.resource.id.as_str()).collect(),
            lease_expired: &result.lease_expired,
            pending_run: result.pending_run.as_deref(),
        })?;
    } else {
        print_stdout(&text::daytona_sweep_summary(&result))?;
    }
    session.write_metrics(settings.metrics_file.as_deref(), global).await?;
    Ok(daytona_exit_status(&result))
}

/// Refused credentials are the user's to fix (exit 2); a failed or
/// unfinished deletion is a failure (exit 1).
pub(crate) fn daytona_exit_status(result: &DaytonaSweepResult) -> ExitStatus {
    let report = &result.sandboxes;
    if report.failures().any(|(_, error)| error.class == crate::errors::ErrorClass::Denied) {
        ExitStatus::Usage
    } else if report.failed() > 0 || report.pending() > 0 {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    }
}
