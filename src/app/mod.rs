//! One function per subcommand: each takes resolved settings, does the
//! work through the backends, prints its result, and returns the exit status.
//! `list` and `cleanup` live here; `run`, `recover` and `status` beside it.

mod daytona;
mod recover;
mod run;

pub use daytona::{cleanup_daytona, list_daytona};
pub use recover::{recover, recover_orphans, status, OrphanSource};
pub use run::run;

use std::io::Write;

use serde::Serialize;

use crate::backend::docker::{Container, ContainerQuery, DockerBackend};
use crate::backend::{short_id, RemovalOptions, RemovalOutcome, RemovalReport};
use crate::errors::{Error, ExitStatus};
use crate::ledger::{Ledger, RunRecord};
use crate::owner::{self, LabelledOwner};
use crate::report::{format_age, table};
use crate::settings::{DockerCleanupSettings, GlobalSettings, ListSettings};
use crate::sweep::{self, ContainerSelection, DockerSweep, SweepResult, Verdict};

/// `benchwarden list --docker`.
pub async fn list(global: &GlobalSettings, settings: &ListSettings) -> Result<ExitStatus, Error> {
    let _ = global;
    let backend = DockerBackend::connect().await?;
    let query = ContainerQuery { labels: settings.labels.clone(), all: settings.all };
    let mut containers = backend
        .list_containers(&query)
        .await
        .map_err(|error| Error::Docker { operation: "list containers".to_string(), reason: error.to_string() })?;
    containers.sort_by_key(|container| std::cmp::Reverse(container.created));
    if settings.json {
        print_json(&containers)?;
    } else {
        print_stdout(&container_table(&containers))?;
    }
    Ok(ExitStatus::Success)
}

fn container_table(containers: &[Container]) -> String {
    let now = sweep::now_unix();
    let rows: Vec<Vec<String>> = containers
        .iter()
        .map(|container| {
            let owner = LabelledOwner::column(&container.labels);
            vec![
                short_id(&container.id).to_string(),
                container.name.clone(),
                container.image.clone(),
                container.state.clone(),
                format_age(now - container.created),
                container.compose_project.clone().unwrap_or_else(|| "-".to_string()),
                owner,
            ]
        })
        .collect();
    table(&["ID", "NAME", "IMAGE", "STATE", "AGE", "PROJECT", "OWNER"], &rows)
}

/// `benchwarden cleanup docker`.
pub async fn cleanup_docker(global: &GlobalSettings, settings: &DockerCleanupSettings) -> Result<ExitStatus, Error> {
    let backend = DockerBackend::connect().await?;
    let sweep = DockerSweep {
        selection: ContainerSelection {
            exited: settings.exited,
            older_than: settings.older_than,
            labels: settings.labels.clone(),
        },
        stop_timeout: settings.stop_timeout,
        volumes: settings.volumes,
        dry_run: settings.dry_run,
        removal: RemovalOptions {
            parallel: settings.parallel,
            fail_fast: settings.fail_fast,
            retry: global.retry.clone().allowing_calls_of(settings.stop_timeout),
        },
    };
    let this_host = owner::host_name();
    let now = sweep::now_unix();
    let ledger_runs = open_ledger_runs(global).await;
    let result = sweep::sweep_docker(&backend, &sweep, &global.output, |container| {
        if !sweep.selection.matches(container, now) {
            return Verdict::Skip;
        }
        match live_owner(container, &ledger_runs, &this_host) {
            Some(reason) => Verdict::Protect(reason),
            None => Verdict::Take,
        }
    })
    .await?;
    if settings.json {
        print_json(&result)?;
    } else {
        print_stdout(&sweep_summary(&result))?;
    }
    Ok(if result.failed() > 0 { ExitStatus::Failure } else { ExitStatus::Success })
}

/// Runs in the ledger, for liveness checks; an unreadable ledger leaves the
/// labels to judge.
async fn open_ledger_runs(global: &GlobalSettings) -> Vec<RunRecord> {
    match Ledger::open(&global.state_dir) {
        Ok(ledger) => ledger.runs().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// Why a container must be left alone, if a live run owns it: judged by the
/// ledger when it knows the run, else by the owner labels.
pub fn live_owner(container: &Container, runs: &[RunRecord], this_host: &str) -> Option<String> {
    live_owner_of(&container.labels, runs, this_host)
}

/// Why a resource with these labels must be left alone, if a live run owns it.
pub fn live_owner_of(
    labels: &std::collections::BTreeMap<String, String>,
    runs: &[RunRecord],
    this_host: &str,
) -> Option<String> {
    let owner = LabelledOwner::from_labels(labels)?;
    let alive = match runs.iter().find(|run| run.id == owner.run_id) {
        Some(run) => run.ended_at.is_none() && run.is_alive(this_host),
        None => owner.may_be_alive(this_host),
    };
    alive.then(|| format!("owned by run {}, which is still alive", owner.run_id))
}

/// The closing lines of a sweep: counts, then each failure with its reason.
pub fn sweep_summary(result: &SweepResult) -> String {
    removal_summary(
        &[("containers", &result.containers), ("networks", &result.networks), ("volumes", &result.volumes)],
        result.dry_run,
        result.protected.len(),
    )
}

/// Counts per kind (the first kind says when nothing matched), what was
/// left alone, then each failure with its reason.
pub fn removal_summary(reports: &[(&str, &RemovalReport)], dry_run: bool, protected: usize) -> String {
    let mut text = String::new();
    for (index, (label, report)) in reports.iter().enumerate() {
        if report.results.is_empty() {
            if index == 0 {
                text.push_str(&format!("{label}: none matched\n"));
            }
            continue;
        }
        if dry_run {
            text.push_str(&format!("{label}: {} would be removed (dry run)\n", report.would_remove()));
            continue;
        }
        text.push_str(&format!(
            "{label}: {} removed, {} already gone, {} failed",
            report.removed(),
            report.already_gone(),
            report.failed()
        ));
        if report.pending() > 0 {
            text.push_str(&format!(", {} still being deleted (pending)", report.pending()));
        }
        if report.not_attempted() > 0 {
            text.push_str(&format!(", {} not attempted (--fail-fast)", report.not_attempted()));
        }
        text.push('\n');
    }
    if protected > 0 {
        text.push_str(&format!("{protected} left alone because a live run owns them\n"));
    }
    for (_, report) in reports {
        for (resource, outcome) in &report.results {
            match outcome {
                RemovalOutcome::Failed { error, attempts } => {
                    text.push_str(&format!("  failed: {resource}: {error} (after {attempts} attempt(s))\n"))
                }
                RemovalOutcome::Pending { .. } => text.push_str(&format!(
                    "  pending: {resource} is still being deleted; `benchwarden recover` or a later cleanup checks again\n"
                )),
                _ => {}
            }
        }
    }
    text
}

pub fn print_json(value: &impl Serialize) -> Result<(), Error> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|error| Error::Docker { operation: "encode JSON output".to_string(), reason: error.to_string() })?;
    text.push('\n');
    print_stdout(&text)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a message.
pub fn print_stdout(text: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::Io { what: "write to", path: "stdout".into(), source: error })
        }
        _ => Ok(()),
    }
}
