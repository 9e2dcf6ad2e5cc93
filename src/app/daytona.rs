//! `benchwarden list --daytona` and `benchwarden cleanup daytona`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{live_owner_of, open_ledger_runs, print_json, print_stdout, removal_summary};
use crate::backend::daytona::{remove_sandboxes, DaytonaBackend, DaytonaConfig, DaytonaError, Sandbox, VERIFY_FOR};
use crate::backend::{short_id, RemovalOptions, RemovalReport, LABEL_HOST, LABEL_RUN};
use crate::errors::{Error, ExitStatus};
use crate::owner::{self, LabelledOwner};
use crate::report::{format_age, table, Progress};
use crate::settings::{DaytonaCleanupSettings, GlobalSettings, ListSettings};
use crate::sweep::now_unix;

/// Deletes in flight at once; the rate-limit headers pace them further.
const PARALLEL: usize = 32;

fn connect() -> Result<DaytonaBackend, Error> {
    DaytonaBackend::new(DaytonaConfig::from_env(&Default::default())?)
}

fn list_error(error: DaytonaError) -> Error {
    let status = error.status;
    let error = Error::Daytona { operation: "list sandboxes".to_string(), reason: error.to_string() };
    match status {
        // Wrong credentials are the user's to fix: a usage-class exit.
        Some(401) | Some(403) => Error::Usage(error.to_string()),
        _ => error,
    }
}

/// Label selectors as the API's containment filter takes them (`K=V` only);
/// `K` alone is checked here.
fn split_labels(labels: &[crate::backend::LabelSelector]) -> BTreeMap<String, String> {
    labels.iter().filter_map(|label| Some((label.key.clone(), label.value.clone()?))).collect()
}

pub async fn list_daytona(settings: &ListSettings) -> Result<ExitStatus, Error> {
    let backend = connect()?;
    let mut sandboxes: Vec<Sandbox> = backend
        .list(&split_labels(&settings.labels))
        .await
        .map_err(list_error)?
        .into_iter()
        .filter(|sandbox| settings.labels.iter().all(|label| label.matches(&sandbox.labels)))
        .collect();
    sandboxes.sort_by_key(|sandbox| std::cmp::Reverse(sandbox.created_unix()));
    if settings.json {
        print_json(&sandboxes)?;
        return Ok(ExitStatus::Success);
    }
    let now = now_unix();
    let rows: Vec<Vec<String>> = sandboxes
        .iter()
        .map(|sandbox| {
            let owner = LabelledOwner::column(&sandbox.labels);
            vec![
                short_id(&sandbox.id).to_string(),
                sandbox.name.clone().unwrap_or_default(),
                sandbox.state.clone().unwrap_or_else(|| "?".to_string()),
                sandbox.created_unix().map(|created| format_age(now - created)).unwrap_or_else(|| "?".to_string()),
                sandbox.target.clone().unwrap_or_default(),
                owner,
            ]
        })
        .collect();
    print_stdout(&table(&["ID", "NAME", "STATE", "AGE", "TARGET", "OWNER"], &rows))?;
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

pub async fn cleanup_daytona(global: &GlobalSettings, settings: &DaytonaCleanupSettings) -> Result<ExitStatus, Error> {
    let backend = connect()?;
    let this_host = owner::host_name();
    let runs = open_ledger_runs(global).await;
    let listed = backend.list(&split_labels(&settings.labels)).await.map_err(list_error)?;
    let now = now_unix();
    let mut picked = Vec::new();
    let mut protected = Vec::new();
    for sandbox in &listed {
        let selected_by_label =
            !settings.labels.is_empty() && settings.labels.iter().all(|label| label.matches(&sandbox.labels));
        // Ours: owner labels of a run on this host. Another host's run shares the organisation only.
        let ours = sandbox.labels.contains_key(LABEL_RUN)
            && sandbox.labels.get(LABEL_HOST).is_some_and(|host| *host == this_host);
        let candidate = if settings.labels.is_empty() { settings.any_owner || ours } else { selected_by_label };
        if !candidate {
            continue;
        }
        if settings.stopped && !sandbox.is_stopped() {
            continue;
        }
        if let Some(age) = settings.older_than {
            match sandbox.created_unix() {
                Some(created) if created <= now - age.as_secs() as i64 => {}
                _ => continue,
            }
        }
        // Whether another host's run is alive cannot be told from here; such a sandbox got this
        // far only because `--any-owner` or a `--label` chose it, and that choice stands.
        let other_host = sandbox.labels.get(LABEL_HOST).is_some_and(|host| *host != this_host);
        if let Some(reason) = live_owner_of(&sandbox.labels, &runs, &this_host).filter(|_| !other_host) {
            tracing::info!("leaving sandbox {} alone: {reason}", sandbox.id);
            protected.push(sandbox.id.clone());
            continue;
        }
        picked.push(sandbox.resource());
    }

    let report = if settings.dry_run {
        for resource in &picked {
            tracing::info!("would remove {resource}");
        }
        RemovalReport::planned(picked)
    } else {
        let options = RemovalOptions { parallel: PARALLEL, fail_fast: settings.fail_fast, retry: global.retry.clone() };
        let progress = Progress::bar(&global.output, picked.len(), "deleting sandboxes");
        remove_sandboxes(&backend, picked, &options, &progress, VERIFY_FOR).await
    };
    let result = CleanupResult {
        dry_run: settings.dry_run,
        removed: report.removed(),
        already_gone: report.already_gone(),
        pending: report.pending(),
        failed: report.failed(),
        sandboxes: report,
        protected,
    };
    if settings.json {
        print_json(&result)?;
    } else {
        let mut text = removal_summary(&[("sandboxes", &result.sandboxes)], result.dry_run, result.protected.len());
        if result.dry_run && !result.sandboxes.results.is_empty() {
            text.push_str("dry run: nothing was deleted; add --no-dry-run to delete\n");
        }
        print_stdout(&text)?;
    }
    let fatal = result.sandboxes.failures().any(|(_, error)| error.contains("HTTP 401") || error.contains("HTTP 403"));
    Ok(if fatal {
        ExitStatus::Usage
    } else if result.failed > 0 || result.pending > 0 {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}
