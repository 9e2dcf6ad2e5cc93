//! `benchwarden recover` and `benchwarden status`: orphaned runs (this
//! host, process gone, never finished) and what they still own.

use serde::Serialize;

use super::{print_json, print_stdout};
use std::collections::BTreeMap;

use crate::backend::daytona::{DaytonaBackend, DaytonaConfig};
use crate::backend::docker::{ContainerQuery, DockerBackend, DockerError};
use crate::backend::{LabelSelector, RemovalOptions, ResourceRef, LABEL_HOST};
use crate::errors::{Error, ExitStatus};
use crate::ledger::{Ledger, RunRecord};
use crate::owner::{self, LabelledOwner};
use crate::report::{format_age, table};
use crate::settings::GlobalSettings;
use crate::sweep::now_unix;
use crate::teardown::{self, Backends, Claims};

/// What recovery did for one orphaned run.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveredRun {
    pub run_id: String,
    pub found: Vec<ResourceRef>,
    pub removed: usize,
    pub leaked: Vec<ResourceRef>,
    /// Sandboxes whose deletion was accepted but has not finished: the run stays open.
    pub pending: Vec<ResourceRef>,
    pub dry_run: bool,
}

/// Where orphaned runs are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanSource {
    /// Runs in the ledger.
    Ledger,
    /// Also runs known only from owner labels on this host's resources
    /// (the ledger file was lost).
    LedgerAndLabels,
}

/// An orphaned run to recover, from either source.
struct Orphan {
    run_id: String,
    pid: Option<u32>,
    in_ledger: bool,
}

/// Runs on this host whose process is gone and that never finished.
async fn find_orphans(backends: Backends<'_>, ledger: &Ledger, source: OrphanSource) -> Result<Vec<Orphan>, Error> {
    let this_host = owner::host_name();
    let runs = ledger.runs().await?;
    let mut orphans: Vec<Orphan> = runs
        .iter()
        .filter(|run| run.is_orphaned(&this_host))
        .map(|run| Orphan { run_id: run.id.clone(), pid: Some(run.pid), in_ledger: true })
        .collect();
    if source == OrphanSource::LedgerAndLabels {
        let mut labelled: Vec<BTreeMap<String, String>> = Vec::new();
        if let Some(docker) = backends.docker {
            let host_label = [LabelSelector { key: LABEL_HOST.to_string(), value: Some(this_host.clone()) }];
            let docker_error = |operation: &str, error: DockerError| Error::Docker {
                operation: operation.to_string(),
                reason: error.to_string(),
            };
            let containers = docker
                .list_containers(&ContainerQuery { labels: host_label.to_vec(), all: true })
                .await
                .map_err(|error| docker_error("list containers", error))?;
            let networks =
                docker.list_networks(&host_label).await.map_err(|error| docker_error("list networks", error))?;
            let volumes =
                docker.list_volumes(&host_label).await.map_err(|error| docker_error("list volumes", error))?;
            labelled.extend(containers.into_iter().map(|container| container.labels));
            labelled.extend(networks.into_iter().chain(volumes).map(|item| item.labels));
        }
        if let Some(daytona) = backends.daytona {
            let host_label = BTreeMap::from([(LABEL_HOST.to_string(), this_host.clone())]);
            let sandboxes = daytona.list(&host_label).await.map_err(|error| Error::Daytona {
                operation: "list sandboxes".to_string(),
                reason: error.to_string(),
            })?;
            labelled.extend(sandboxes.into_iter().map(|sandbox| sandbox.labels));
        }
        for labels in &labelled {
            let Some(owner) = LabelledOwner::from_labels(labels) else { continue };
            if orphans.iter().any(|orphan| orphan.run_id == owner.run_id) {
                continue;
            }
            // The ledger, when it knows the run, is the better judge of liveness.
            let alive = match runs.iter().find(|run| run.id == owner.run_id) {
                Some(run) => run.ended_at.is_none() && run.is_alive(&this_host),
                None => owner.may_be_alive(&this_host),
            };
            if !alive {
                orphans.push(Orphan { run_id: owner.run_id.clone(), pid: owner.pid, in_ledger: false });
            }
        }
    }
    Ok(orphans)
}

/// Tears down everything every orphaned run owns (ledger rows, owner
/// labels, recorded selectors), kills what it left running, and marks
/// those runs recovered.
pub async fn recover_orphans(
    backends: Backends<'_>,
    ledger: &Ledger,
    removal: &RemovalOptions,
    dry_run: bool,
    source: OrphanSource,
) -> Result<Vec<RecoveredRun>, Error> {
    let mut recovered = Vec::new();
    for run in find_orphans(backends, ledger, source).await? {
        let selectors = ledger
            .claims(&run.run_id)
            .await?
            .iter()
            .filter_map(|(_, selector)| Claims::decode_selector(selector))
            .collect();
        let claims = Claims { run_id: run.run_id.clone(), task_id: None, selectors };
        if dry_run {
            let found = teardown::discover(backends, ledger, &claims).await?;
            for resource in &found {
                tracing::info!("run {}: would remove {resource}", run.run_id);
            }
            recovered.push(RecoveredRun {
                run_id: run.run_id,
                removed: 0,
                leaked: Vec::new(),
                pending: Vec::new(),
                found,
                dry_run,
            });
            continue;
        }
        let pid = run.pid.map_or_else(|| "unknown".to_string(), |pid| pid.to_string());
        let known = if run.in_ledger { "" } else { " (known from labels only)" };
        tracing::info!("run {}{known} (pid {pid}) is gone: tearing down what it owns", run.run_id);
        if !run.in_ledger {
            ledger.adopt_run(&run.run_id, run.pid, &owner::host_name()).await?;
        }
        let killed = crate::supervisor::process::kill_orphaned_run(&run.run_id).await;
        if killed > 0 {
            tracing::info!("run {}: killed {killed} process(es) it left running", run.run_id);
        }
        let torn = teardown::teardown(backends, ledger, &claims, removal, None).await?;
        if torn.leaked.is_empty() && torn.pending.is_empty() {
            ledger.end_run(&run.run_id, "recovered").await?;
        }
        recovered.push(RecoveredRun {
            run_id: run.run_id,
            found: torn.removal.results.iter().map(|(resource, _)| resource.clone()).collect(),
            removed: torn.removal.removed() + torn.removal.already_gone(),
            leaked: torn.leaked,
            pending: torn.pending,
            dry_run,
        });
    }
    Ok(recovered)
}

/// The Daytona backend when credentials are in the environment. Without
/// them, sandboxes recorded in the ledger cannot be recovered: say so.
async fn daytona_if_configured(ledger: &Ledger) -> Result<Option<DaytonaBackend>, Error> {
    match DaytonaConfig::from_env(&Default::default()) {
        Ok(config) => Ok(Some(DaytonaBackend::new(config)?)),
        Err(why) => {
            let sandboxes = ledger
                .all_unreleased()
                .await?
                .iter()
                .filter(|record| record.resource.kind == crate::backend::Kind::Sandbox)
                .count();
            if sandboxes > 0 {
                tracing::warn!("{sandboxes} Daytona sandbox(es) recorded in the ledger are left alone: {why}");
            }
            Ok(None)
        }
    }
}

pub async fn recover(
    global: &GlobalSettings,
    dry_run: bool,
    from_labels: bool,
    json: bool,
) -> Result<ExitStatus, Error> {
    let ledger = Ledger::open(&global.state_dir)?;
    let docker = DockerBackend::connect().await?;
    let daytona = daytona_if_configured(&ledger).await?;
    let backends = Backends { docker: Some(&docker), daytona: daytona.as_ref() };
    let removal = RemovalOptions { parallel: 16, fail_fast: false, retry: global.retry.clone() };
    let source = if from_labels { OrphanSource::LedgerAndLabels } else { OrphanSource::Ledger };
    let recovered = recover_orphans(backends, &ledger, &removal, dry_run, source).await?;
    let leaked: usize = recovered.iter().map(|run| run.leaked.len() + run.pending.len()).sum();
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
            for resource in &run.pending {
                text.push_str(&format!(
                    "  pending: {resource} is still being deleted; `benchwarden recover` checks again\n"
                ));
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
