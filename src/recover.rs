//! Recovery of orphaned runs: runs on this host whose benchwarden process is
//! gone and that never finished. Their processes are killed, everything they
//! own (ledger rows, owner labels, recorded selectors) is torn down, and the
//! runs are marked recovered. Runs known only from owner labels (the ledger
//! file was lost) are found and adopted when asked. What `run
//! --keep-failed` kept is left alone unless the teardown options take it;
//! then runs that ended, or whose process is gone, and that own kept
//! resources are recovered too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::backend::docker::ContainerQuery;
use crate::errors::Error;
use crate::events::{Event, Events, OrphanEvent};
use crate::host;
use crate::ledger::{Ledger, RunRecord};
use crate::owner::{owner_is_alive, Claims, LabelledOwner, LABEL_HOST};
use crate::resource::{LabelSelector, RemovalOutcome, ResourceRef};
use crate::supervisor::process::{kill_orphaned_run, run_processes, RunProcess};
use crate::teardown::{self, Backends, TakeKept, TeardownOptions};

/// How long after its first teardown an orphaned run is looked at again:
/// longer than the daemon takes to carry out a create it had already been sent.
const LATE_CREATE_WAIT: Duration = Duration::from_secs(1);

/// What recovery did for one orphaned run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RecoveredRun {
    pub(crate) run_id: String,
    pub(crate) found: Vec<ResourceRef>,
    pub(crate) removed: usize,
    pub(crate) leaked: Vec<ResourceRef>,
    /// Sandboxes whose deletion was accepted but has not finished: the run stays open.
    pub(crate) pending: Vec<ResourceRef>,
    /// Recorded for a backend this recovery was not given: the run stays open.
    pub(crate) kept: Vec<ResourceRef>,
    /// The run's processes that were killed (or, in a dry run, would be).
    pub(crate) processes: Vec<RunProcess>,
    pub(crate) dry_run: bool,
}

/// Where orphaned runs are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OrphanSource {
    /// Runs in the ledger.
    Ledger,
    /// Also runs known only from owner labels on this host's resources
    /// (the ledger file was lost).
    LedgerAndLabels,
}

/// An orphaned run to recover, from either source.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Orphan {
    run_id: String,
    pid: Option<u32>,
    in_ledger: bool,
    /// The run has ended (it is here for what it kept): its outcome stays.
    ended: bool,
}

/// Runs on this host whose process is gone and that never finished, and,
/// when `take_kept` takes any, those whose process is gone that own kept
/// resources it takes.
async fn find_orphans(
    backends: Backends<'_>,
    ledger: &Ledger,
    source: OrphanSource,
    take_kept: TakeKept,
) -> Result<Vec<Orphan>, Error> {
    let this_host = host::host_name();
    let runs = ledger.runs().await?;
    let labelled = match source {
        OrphanSource::Ledger => Vec::new(),
        OrphanSource::LedgerAndLabels => labels_on_this_host(backends, &this_host).await?,
    };
    let keeping: BTreeSet<String> = match take_kept.takes_any() {
        true => ledger
            .all_unreleased()
            .await?
            .into_iter()
            .filter(|row| row.kept_at.is_some() && take_kept.takes(row.kept_at))
            .map(|row| row.run_id)
            .collect(),
        false => BTreeSet::new(),
    };
    Ok(orphans_among(&runs, &labelled, &keeping, &this_host))
}

/// The orphans among the ledger's runs and the owners named by labels: a
/// labelled run counts once, and only when its owner is not alive. A run in
/// `keeping` (it owns kept resources to take) counts once its process is
/// gone, ended or not; a live run's never.
fn orphans_among(
    runs: &[RunRecord],
    labelled: &[BTreeMap<String, String>],
    keeping: &BTreeSet<String>,
    this_host: &str,
) -> Vec<Orphan> {
    let mut orphans: Vec<Orphan> = runs
        .iter()
        .filter(|run| run.is_orphaned(this_host))
        .map(|run| Orphan { run_id: run.id.clone(), pid: Some(run.pid), in_ledger: true, ended: false })
        .collect();
    for run in runs.iter().filter(|run| keeping.contains(&run.id)) {
        let mine_and_gone = run.host == this_host && !run.is_alive(this_host);
        if mine_and_gone && !orphans.iter().any(|orphan| orphan.run_id == run.id) {
            orphans.push(Orphan { run_id: run.id.clone(), pid: Some(run.pid), in_ledger: true, ended: true });
        }
    }
    for labels in labelled {
        let Some(owner) = LabelledOwner::from_labels(labels) else { continue };
        if orphans.iter().any(|orphan| orphan.run_id == owner.run_id) {
            continue;
        }
        if !owner_is_alive(&owner, runs, this_host) {
            orphans.push(Orphan { run_id: owner.run_id.clone(), pid: owner.pid, in_ledger: false, ended: false });
        }
    }
    orphans
}

/// The labels of everything on this host's backends that carries this host's owner label.
async fn labels_on_this_host(backends: Backends<'_>, this_host: &str) -> Result<Vec<BTreeMap<String, String>>, Error> {
    let mut labelled = Vec::new();
    if let Some(docker) = backends.docker {
        let host_label = vec![LabelSelector { key: LABEL_HOST.to_string(), value: Some(this_host.to_string()) }];
        let query = ContainerQuery { labels: host_label.clone(), all: true };
        let containers = docker.list_containers(&query).await.map_err(|error| error.during("list containers"))?;
        let networks = docker.list_networks(&host_label).await.map_err(|error| error.during("list networks"))?;
        let volumes = docker.list_volumes(&host_label).await.map_err(|error| error.during("list volumes"))?;
        labelled.extend(containers.into_iter().map(|container| container.labels));
        labelled.extend(networks.into_iter().chain(volumes).map(|item| item.labels));
    }
    if let Some(daytona) = backends.daytona {
        let host_label = BTreeMap::from([(LABEL_HOST.to_string(), this_host.to_string())]);
        let sandboxes = daytona.list(&host_label).await.map_err(|error| error.during("list sandboxes"))?;
        labelled.extend(sandboxes.into_iter().map(|sandbox| sandbox.labels));
    }
    Ok(labelled)
}

/// Which orphaned runs a recovery looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OrphanFilter<'a> {
    pub(crate) source: OrphanSource,
    /// Only this run, when given.
    pub(crate) only_run: Option<&'a str>,
}

impl OrphanFilter<'_> {
    /// Every orphan the ledger knows.
    pub(crate) const LEDGER: OrphanFilter<'static> = OrphanFilter { source: OrphanSource::Ledger, only_run: None };
}

/// Tears down everything every orphaned run owns (ledger rows, owner
/// labels, recorded selectors; kept resources as `options.take_kept`
/// says), kills what it left running, and marks those runs recovered.
/// With `dry_run`, only finds and tells.
pub(crate) async fn recover_orphans(
    backends: Backends<'_>,
    ledger: &Ledger,
    options: &TeardownOptions,
    dry_run: bool,
    filter: OrphanFilter<'_>,
    events: &Events,
) -> Result<Vec<RecoveredRun>, Error> {
    let mut recovered = Vec::new();
    let orphans = find_orphans(backends, ledger, filter.source, options.take_kept).await?;
    for orphan in orphans.into_iter().filter(|orphan| filter.only_run.is_none_or(|run| run == orphan.run_id)) {
        let selectors = ledger.claims(&orphan.run_id).await?;
        let claims = Claims { run_id: orphan.run_id.clone(), task_id: None, selectors };
        let run = match dry_run {
            true => plan_recovery(backends, ledger, &claims, options.take_kept, events).await?,
            false => recover_orphan(backends, ledger, &orphan, &claims, options, events).await?,
        };
        recovered.push(run);
    }
    Ok(recovered)
}

/// What recovering one orphan would remove.
async fn plan_recovery(
    backends: Backends<'_>,
    ledger: &Ledger,
    claims: &Claims,
    take_kept: TakeKept,
    events: &Events,
) -> Result<RecoveredRun, Error> {
    let found = teardown::discover(backends, ledger, claims, take_kept).await?.found;
    for resource in &found {
        events.emit(Event::WouldRemove { resource });
    }
    Ok(RecoveredRun {
        run_id: claims.run_id.clone(),
        removed: 0,
        leaked: Vec::new(),
        pending: Vec::new(),
        kept: Vec::new(),
        found,
        processes: run_processes(&claims.run_id),
        dry_run: true,
    })
}

/// Recovers one orphan: adopt it if the ledger did not know it, kill its
/// processes, tear down, and mark it recovered once nothing is left.
async fn recover_orphan(
    backends: Backends<'_>,
    ledger: &Ledger,
    orphan: &Orphan,
    claims: &Claims,
    options: &TeardownOptions,
    events: &Events,
) -> Result<RecoveredRun, Error> {
    let run_id = orphan.run_id.as_str();
    events.orphan(OrphanEvent::Recovering { run_id, pid: orphan.pid, from_labels: !orphan.in_ledger });
    if !orphan.in_ledger {
        ledger.adopt_run(run_id, orphan.pid, &host::host_name()).await?;
    }
    // Nothing of the run may go on creating resources while they are torn down.
    let processes = kill_orphaned_run(run_id).await;
    if !processes.is_empty() {
        events.orphan(OrphanEvent::ProcessesKilled { run_id, processes: processes.len() });
    }
    let mut torn = teardown::teardown(backends, ledger, claims, options, events).await?;
    if !orphan.ended {
        // A create the dead run's proxy had forwarded may still be in the daemon's hands, not
        // listed yet (a run killed mid-create, recovered at once): look once more after a pause.
        tokio::time::sleep(LATE_CREATE_WAIT).await;
        torn.followed_by(teardown::teardown(backends, ledger, claims, options, events).await?);
    }
    // A run that ended and is here for what it kept keeps its outcome.
    if !torn.left_something() && !orphan.ended {
        ledger.end_run(run_id, "recovered").await?;
    }
    Ok(RecoveredRun {
        run_id: orphan.run_id.clone(),
        found: torn.removal.results.iter().map(|(resource, _)| resource.clone()).collect(),
        removed: torn
            .removal
            .count(|outcome| matches!(outcome, RemovalOutcome::Removed { .. } | RemovalOutcome::AlreadyGone { .. })),
        leaked: torn.leaked,
        pending: torn.pending,
        kept: torn.kept,
        processes,
        dry_run: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::{LABEL_PID, LABEL_RUN};

    fn run(id: &str, host: &str, pid: u32, ended: bool) -> RunRecord {
        RunRecord {
            id: id.into(),
            pid,
            start_time: None,
            host: host.into(),
            benchmark: "b".into(),
            started_at: 0,
            ended_at: ended.then_some(1),
            outcome: None,
        }
    }

    fn labels(run: &str, host: &str, pid: u32) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_RUN.to_string(), run.to_string()),
            (LABEL_HOST.to_string(), host.to_string()),
            (LABEL_PID.to_string(), pid.to_string()),
        ])
    }

    #[test]
    fn orphans_are_this_hosts_dead_unfinished_runs_and_the_dead_owners_of_labelled_leftovers_once() {
        // No process has pid u32::MAX - 1; ours is alive.
        let dead = u32::MAX - 1;
        let alive = std::process::id();
        let runs =
            [run("dead", "here", dead, false), run("done", "here", dead, true), run("away", "there", dead, false)];
        let labelled = [
            labels("dead", "here", dead),
            labels("lost", "here", dead),
            labels("lost", "here", dead),
            labels("done", "here", dead),
            labels("alive", "here", alive),
        ];
        let orphans = orphans_among(&runs, &labelled, &BTreeSet::new(), "here");
        let ids: Vec<(&str, bool)> = orphans.iter().map(|orphan| (orphan.run_id.as_str(), orphan.in_ledger)).collect();
        // A finished run whose labelled resources are still here owns leftovers too.
        assert_eq!(ids, [("dead", true), ("lost", false), ("done", false)]);
    }

    #[test]
    fn runs_keeping_resources_count_once_their_process_is_gone_and_never_while_alive() {
        let (dead, alive) = (u32::MAX - 1, std::process::id());
        let runs = [
            run("ended", "here", dead, true),
            run("killed", "here", dead, false),
            run("live", "here", alive, false),
            run("away", "there", dead, true),
            run("clean", "here", dead, true),
        ];
        let keeping: BTreeSet<String> = ["ended", "killed", "live", "away"].map(String::from).into();
        let orphans = orphans_among(&runs, &[], &keeping, "here");
        let ids: Vec<(&str, bool)> = orphans.iter().map(|orphan| (orphan.run_id.as_str(), orphan.ended)).collect();
        assert_eq!(ids, [("killed", false), ("ended", true)]);
    }
}
