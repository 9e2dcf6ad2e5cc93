//! `benchwarden list --daytona` and `benchwarden cleanup daytona`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ledger_runs, print_json, print_stdout};
use crate::backend::daytona::{remove_sandboxes, DaytonaBackend, Sandbox, VERIFY_FOR};
use crate::backend::RemovalOptions;
use crate::clock::now_unix;
use crate::errors::{Error, ErrorClass, ExitStatus};
use crate::events::{Event, Events, RemovalEvent};
use crate::host;
use crate::ledger::RunRecord;
use crate::owner::{protected_by_live_run, LABEL_HOST, LABEL_RUN};
use crate::report::text;
use crate::resource::{LabelSelector, RemovalReport, ResourceRef};
use crate::settings::{DaytonaCleanupSettings, GlobalSettings, ListSettings};

/// Deletes in flight at once; the rate-limit headers pace them further.
const PARALLEL: usize = 32;

/// Label selectors as the API's containment filter takes them (`K=V` only);
/// `K` alone is checked here.
fn label_filter(labels: &[LabelSelector]) -> BTreeMap<String, String> {
    labels.iter().filter_map(|label| Some((label.key.clone(), label.value.clone()?))).collect()
}

/// Every sandbox with all of `labels`.
async fn listed(backend: &DaytonaBackend, labels: &[LabelSelector]) -> Result<Vec<Sandbox>, Error> {
    let sandboxes = backend.list(&label_filter(labels)).await.map_err(|error| error.during("list sandboxes"))?;
    Ok(sandboxes.into_iter().filter(|sandbox| labels.iter().all(|label| label.matches(&sandbox.labels))).collect())
}

pub async fn list_daytona(
    global: &GlobalSettings,
    settings: &ListSettings,
    events: &Events,
) -> Result<ExitStatus, Error> {
    let backend = DaytonaBackend::new(global.require_daytona()?, events.clone())?;
    let mut sandboxes = listed(&backend, &settings.labels).await?;
    sandboxes.sort_by_key(|sandbox| std::cmp::Reverse(sandbox.created_unix()));
    if settings.json {
        print_json(&sandboxes)?;
    } else {
        print_stdout(&text::sandbox_table(&sandboxes, now_unix()))?;
    }
    Ok(ExitStatus::Success)
}

#[derive(Debug, Serialize)]
struct CleanupResult {
    dry_run: bool,
    sandboxes: RemovalReport,
    removed: usize,
    already_gone: usize,
    pending: usize,
    failed: usize,
    protected: Vec<String>,
}

/// What a cleanup does with one sandbox.
enum Choice {
    Skip,
    Protect(String),
    Take,
}

/// Whether the cleanup's filters pick `sandbox`, and whether a live run
/// protects it. By default only this host's runs' sandboxes are candidates:
/// another host's run shares the organisation only.
fn choose(
    sandbox: &Sandbox,
    settings: &DaytonaCleanupSettings,
    runs: &[RunRecord],
    this_host: &str,
    now: i64,
) -> Choice {
    let labels = &sandbox.labels;
    let candidate = match settings.labels.is_empty() {
        true => {
            settings.any_owner
                || (labels.contains_key(LABEL_RUN) && labels.get(LABEL_HOST).is_some_and(|host| host == this_host))
        }
        false => settings.labels.iter().all(|label| label.matches(labels)),
    };
    let too_young = settings
        .older_than
        .is_some_and(|age| sandbox.created_unix().is_none_or(|created| created > now - age.as_secs() as i64));
    if !candidate || (settings.stopped && !sandbox.is_stopped()) || too_young {
        return Choice::Skip;
    }
    // Whether another host's run is alive cannot be told from here; such a sandbox got this
    // far only because `--any-owner` or a `--label` chose it, and that choice stands.
    let other_host = labels.get(LABEL_HOST).is_some_and(|host| host != this_host);
    match protected_by_live_run(labels, runs, this_host).filter(|_| !other_host) {
        Some(reason) => Choice::Protect(reason),
        None => Choice::Take,
    }
}

pub async fn cleanup_daytona(
    global: &GlobalSettings,
    settings: &DaytonaCleanupSettings,
    events: &Events,
) -> Result<ExitStatus, Error> {
    let backend = DaytonaBackend::new(global.require_daytona()?, events.clone())?;
    let this_host = host::host_name();
    let runs = ledger_runs(global).await;
    let now = now_unix();
    let mut picked = Vec::new();
    let mut protected = Vec::new();
    for sandbox in
        backend.list(&label_filter(&settings.labels)).await.map_err(|error| error.during("list sandboxes"))?
    {
        match choose(&sandbox, settings, &runs, &this_host, now) {
            Choice::Skip => {}
            Choice::Protect(reason) => {
                events.emit(Event::Protected { resource: &sandbox.resource(), reason: &reason });
                protected.push(sandbox.id);
            }
            Choice::Take => picked.push(sandbox.resource()),
        }
    }
    let report = delete(&backend, picked, settings, global, events).await;
    let result = CleanupResult {
        dry_run: settings.dry_run,
        removed: report.removed(),
        already_gone: report.already_gone(),
        pending: report.pending(),
        failed: report.failed(),
        sandboxes: report,
        protected,
    };
    print_cleanup(&result, settings.json)?;
    // Refused credentials are the user's to fix: a usage-class exit.
    let denied = result.sandboxes.failures().any(|(_, error)| error.class == ErrorClass::Denied);
    Ok(match (denied, result.failed > 0 || result.pending > 0) {
        (true, _) => ExitStatus::Usage,
        (false, true) => ExitStatus::Failure,
        (false, false) => ExitStatus::Success,
    })
}

/// Deletes the picked sandboxes, or in a dry run says which would go.
async fn delete(
    backend: &DaytonaBackend,
    picked: Vec<ResourceRef>,
    settings: &DaytonaCleanupSettings,
    global: &GlobalSettings,
    events: &Events,
) -> RemovalReport {
    if settings.dry_run {
        for resource in &picked {
            events.emit(Event::WouldRemove { resource });
        }
        return RemovalReport::planned(picked);
    }
    let options = RemovalOptions { parallel: PARALLEL, fail_fast: settings.fail_fast, retry: global.retry.clone() };
    events.removal(RemovalEvent::Started { what: "deleting sandboxes", total: picked.len() });
    let report = remove_sandboxes(backend, picked, &options, events, VERIFY_FOR).await;
    events.removal(RemovalEvent::Finished);
    report
}

fn print_cleanup(result: &CleanupResult, json: bool) -> Result<(), Error> {
    if json {
        return print_json(result);
    }
    let mut summary =
        text::removal_summary(&[("sandboxes", &result.sandboxes)], result.dry_run, result.protected.len());
    if result.dry_run && !result.sandboxes.results.is_empty() {
        summary.push_str("dry run: nothing was deleted; add --no-dry-run to delete\n");
    }
    print_stdout(&summary)
}
