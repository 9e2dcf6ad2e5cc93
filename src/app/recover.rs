//! `benchwarden recover` and `benchwarden status`: orphaned runs (this
//! host, process gone, never finished) and what they still own.

use serde::Serialize;

use super::{print_json, print_stdout};
use crate::backend::docker::DockerBackend;
use crate::backend::{RemovalOptions, ResourceRef};
use crate::errors::{Error, ExitStatus};
use crate::ledger::{Ledger, RunRecord};
use crate::owner;
use crate::report::{format_age, table};
use crate::settings::GlobalSettings;
use crate::sweep::now_unix;
use crate::teardown::{self, Claims};

/// What recovery did for one orphaned run.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveredRun {
    pub run_id: String,
    pub found: Vec<ResourceRef>,
    pub removed: usize,
    pub leaked: Vec<ResourceRef>,
    pub dry_run: bool,
}

/// Tears down everything every orphaned run owns (ledger rows, owner
/// labels, recorded selectors) and marks those runs recovered.
pub async fn recover_orphans(
    docker: &DockerBackend,
    ledger: &Ledger,
    removal: &RemovalOptions,
    dry_run: bool,
) -> Result<Vec<RecoveredRun>, Error> {
    let this_host = owner::host_name();
    let mut recovered = Vec::new();
    for run in ledger.runs().await?.into_iter().filter(|run| run.is_orphaned(&this_host)) {
        let selectors = ledger
            .claims(&run.id)
            .await?
            .iter()
            .filter_map(|(_, selector)| Claims::decode_selector(selector))
            .collect();
        let claims = Claims { run_id: run.id.clone(), task_id: None, selectors };
        if dry_run {
            let found = teardown::discover(docker, ledger, &claims).await?;
            for resource in &found {
                tracing::info!("run {}: would remove {resource}", run.id);
            }
            recovered.push(RecoveredRun { run_id: run.id, removed: 0, leaked: Vec::new(), found, dry_run });
            continue;
        }
        tracing::info!("run {} (pid {}) is gone: tearing down what it owns", run.id, run.pid);
        let killed = crate::supervisor::process::kill_orphaned_run(&run.id).await;
        if killed > 0 {
            tracing::info!("run {}: killed {killed} process(es) it left running", run.id);
        }
        let torn = teardown::teardown(docker, ledger, &claims, removal, None).await?;
        if torn.leaked.is_empty() {
            ledger.end_run(&run.id, "recovered").await?;
        }
        recovered.push(RecoveredRun {
            run_id: run.id,
            found: torn.removal.results.iter().map(|(resource, _)| resource.clone()).collect(),
            removed: torn.removal.removed() + torn.removal.already_gone(),
            leaked: torn.leaked,
            dry_run,
        });
    }
    Ok(recovered)
}

pub async fn recover(global: &GlobalSettings, dry_run: bool, json: bool) -> Result<ExitStatus, Error> {
    let ledger = Ledger::open(&global.state_dir)?;
    let docker = DockerBackend::connect().await?;
    let removal = RemovalOptions { parallel: 16, fail_fast: false, retry: global.retry.clone() };
    let recovered = recover_orphans(&docker, &ledger, &removal, dry_run).await?;
    let leaked: usize = recovered.iter().map(|run| run.leaked.len()).sum();
    if json {
        print_json(&recovered)?;
    } else if recovered.is_empty() {
        print_stdout("no orphaned runs\n")?;
    } else {
        let mut text = String::new();
        for run in &recovered {
            if run.dry_run {
                text.push_str(&format!("run {}: {} resource(s) would be removed\n", run.run_id, run.found.len()));
            } else {
                text.push_str(&format!(
                    "run {}: {} resource(s) removed, {} left\n",
                    run.run_id,
                    run.removed,
                    run.leaked.len()
                ));
            }
            for resource in &run.leaked {
                text.push_str(&format!("  left: {resource}\n"));
            }
        }
        print_stdout(&text)?;
    }
    Ok(if leaked > 0 { ExitStatus::Leaked } else { ExitStatus::Success })
}

#[derive(Debug, Serialize)]
struct RunStatus {
    #[serde(flatten)]
    run: RunRecord,
    state: &'static str,
    live_resources: Vec<ResourceRef>,
}

pub async fn status(global: &GlobalSettings, json: bool) -> Result<ExitStatus, Error> {
    let ledger = Ledger::open(&global.state_dir)?;
    let this_host = owner::host_name();
    let unreleased = ledger.all_unreleased().await?;
    let statuses: Vec<RunStatus> = ledger
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
            let live_resources = unreleased
                .iter()
                .filter(|record| record.run_id == run.id)
                .map(|record| record.resource.clone())
                .collect();
            RunStatus { run, state, live_resources }
        })
        .collect();
    if json {
        print_json(&statuses)?;
        return Ok(ExitStatus::Success);
    }
    let now = now_unix();
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|status| {
            vec![
                status.run.id.clone(),
                status.run.benchmark.clone(),
                status.state.to_string(),
                status.run.outcome.clone().unwrap_or_else(|| "-".to_string()),
                status.run.pid.to_string(),
                format_age(now - status.run.started_at),
                status.live_resources.len().to_string(),
            ]
        })
        .collect();
    let mut text = table(&["RUN", "BENCHMARK", "STATE", "OUTCOME", "PID", "AGE", "RESOURCES"], &rows);
    let orphans = statuses.iter().filter(|status| status.state == "orphaned").count();
    if orphans > 0 {
        text.push_str(&format!(
            "{orphans} orphaned run(s): `benchwarden recover --state-dir {}` tears down what they own\n",
            global.state_dir.display()
        ));
    }
    print_stdout(&text)?;
    Ok(ExitStatus::Success)
}
