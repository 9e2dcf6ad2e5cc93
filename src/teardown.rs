//! Teardown of exactly what one owner (a task, or a whole run) owns: found
//! through the ledger, benchwarden's owner labels and the benchmark's
//! selectors; recorded before removal; removed with retry (Daytona
//! sandboxes first, seen through to 404 beside the Docker removals; then
//! running containers, stopped ones, networks and volumes, the oldest first
//! within each); then listed again to prove nothing is left.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::daytona::{remove_sandboxes, DaytonaBackend, DaytonaError, VERIFY_FOR};
use crate::backend::docker::{ContainerQuery, DockerBackend, DockerError};
use crate::backend::{remove_all, RemovalOptions};
use crate::errors::Error;
use crate::events::{Event, Events, RemovalEvent};
use crate::ledger::Ledger;
use crate::owner::{Claims, COMPOSE_PROJECT_LABEL};
use crate::resource::{in_removal_order, Kind, LabelSelector, RemovalOutcome, RemovalReport, ResourceRef, Standing};

/// Rounds of list-and-remove before what is still there counts as leaked.
const TEARDOWN_ROUNDS: usize = 3;

/// How a teardown ended.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct TeardownReport {
    pub(crate) removal: RemovalReport,
    /// Still there after teardown, found by listing again.
    pub(crate) leaked: Vec<ResourceRef>,
    /// Deletion accepted, not finished by the deadline (sandboxes); kept in the ledger.
    pub(crate) pending: Vec<ResourceRef>,
    /// Recorded in the ledger for a backend this teardown was not given (no
    /// credentials, a dry run, one backend only): left alone, still owned.
    pub(crate) kept: Vec<ResourceRef>,
    /// Recorded as created, and gone before this teardown tried to remove
    /// them: the harness cleaned up after itself.
    pub(crate) removed_by_others: Vec<ResourceRef>,
    /// Every resource of the owner this teardown knew of: recorded at
    /// creation, or found by listing.
    pub(crate) known: usize,
    pub(crate) seconds: f64,
}

impl TeardownReport {
    pub(crate) fn found(&self) -> usize {
        self.removal.results.len()
    }

    /// Whether anything the owner had is still there or unaccounted for.
    pub(crate) fn left_something(&self) -> bool {
        !self.leaked.is_empty() || !self.pending.is_empty() || !self.kept.is_empty()
    }
}

/// The backends a teardown may use; a missing one is not asked.
#[derive(Clone, Copy, Default)]
pub(crate) struct Backends<'a> {
    pub(crate) docker: Option<&'a DockerBackend>,
    pub(crate) daytona: Option<&'a DaytonaBackend>,
}

/// How a teardown goes about its work.
#[derive(Debug, Clone)]
pub(crate) struct TeardownOptions {
    pub(crate) removal: RemovalOptions,
    /// Stop containers gracefully with this timeout before removing them.
    pub(crate) stop_timeout: Option<Duration>,
}

/// What the claims point at now, and what the ledger recorded that is gone.
#[derive(Debug, Default)]
pub(crate) struct Discovery {
    /// There now, in removal order: sandboxes, running containers, stopped
    /// ones, networks, volumes; the oldest first within each.
    pub(crate) found: Vec<ResourceRef>,
    /// Recorded in the ledger, not released, and gone: removed by someone
    /// else (the harness itself, as a rule). Discovery changes nothing, so a
    /// dry run can use it; a teardown releases these rows.
    pub(crate) gone: Vec<ResourceRef>,
}

/// What is there now, with what the removal order needs to know of each.
type Standings = BTreeMap<ResourceRef, Standing>;

/// Everything the claims point at now, in removal order, and the ledger's
/// rows whose resource is gone.
pub(crate) async fn discover(backends: Backends<'_>, ledger: &Ledger, claims: &Claims) -> Result<Discovery, Error> {
    let mut found = Standings::new();
    let mut gone = Vec::new();
    if let Some(docker) = backends.docker {
        let (there, vanished) = discover_docker(docker, ledger, claims).await?;
        found.extend(there);
        gone.extend(vanished);
    }
    if let Some(daytona) = backends.daytona {
        let (there, vanished) = discover_sandboxes(daytona, ledger, claims).await?;
        found.extend(there);
        gone.extend(vanished);
    }
    Ok(Discovery { found: in_removal_order(found), gone })
}

type Found = (Standings, Vec<ResourceRef>);

/// Sandboxes with the owner labels, and the ledger's sandbox rows: those that still exist, and those gone.
async fn discover_sandboxes(daytona: &DaytonaBackend, ledger: &Ledger, claims: &Claims) -> Result<Found, Error> {
    let listing_failed = |error: DaytonaError| error.during("list sandboxes");
    let labels = claims.owner_labels().into_iter().filter_map(|label| Some((label.key, label.value?))).collect();
    let standing = |created| Standing { running: false, created };
    let mut found: Standings = daytona
        .list(&labels)
        .await
        .map_err(listing_failed)?
        .iter()
        .map(|sandbox| (sandbox.resource(), standing(sandbox.created_unix())))
        .collect();
    let mut gone = Vec::new();
    for record in ledger.unreleased(&claims.run_id, claims.task_id.as_deref()).await? {
        if record.resource.kind != Kind::Sandbox || found.contains_key(&record.resource) {
            continue;
        }
        match daytona.look_up(&record.resource.id).await.map_err(listing_failed)? {
            Some(sandbox) => found.insert(record.resource, standing(sandbox.created_unix())),
            None => {
                gone.push(record.resource);
                None
            }
        };
    }
    Ok((found, gone))
}

/// Containers, networks and volumes the claims point at, and the ledger's
/// Docker rows: those that still exist, and those gone.
async fn discover_docker(backend: &DockerBackend, ledger: &Ledger, claims: &Claims) -> Result<Found, Error> {
    // Every listing at once: each is a round trip to the daemon, and teardown
    // sits between a task's end and the next task's start.
    let (containers, networks, volumes, unreleased) = tokio::join!(
        claimed_containers(backend, claims),
        backend.list_networks(&[]),
        backend.list_volumes(&[]),
        ledger.unreleased(&claims.run_id, claims.task_id.as_deref())
    );
    let mut found: Standings = containers?;
    let networks = networks.map_err(|error| error.during("list networks"))?;
    let volumes = volumes.map_err(|error| error.during("list volumes"))?;
    for item in networks.iter().chain(&volumes) {
        if claims.claims_labels(&item.labels) {
            found.insert(item.resource.clone(), Standing::default());
        }
    }
    let mut gone = Vec::new();
    for record in unreleased? {
        if record.resource.kind == Kind::Sandbox {
            continue;
        }
        if let Some(standing) = found.get_mut(&record.resource) {
            // Networks and volumes are listed without their age; the ledger has it.
            standing.created = standing.created.or(Some(record.created_at));
            continue;
        }
        match backend.exists(&record.resource).await.map_err(|error| error.during("inspect"))? {
            // Its state is not known: a container counts as running, so it goes early.
            true => found.insert(record.resource, Standing { running: true, created: Some(record.created_at) }),
            false => {
                gone.push(record.resource);
                None
            }
        };
    }
    Ok((found, gone))
}

/// Containers with the owner labels, a claimed label, or in a claimed
/// compose project: one listing per way of claiming, all at once.
async fn claimed_containers(backend: &DockerBackend, claims: &Claims) -> Result<Standings, Error> {
    let mut queries: Vec<Vec<LabelSelector>> = vec![claims.owner_labels()];
    queries.extend(claims.label_selectors().into_iter().map(|selector| vec![selector]));
    let by_project = !claims.project_patterns().is_empty();
    if by_project {
        queries.push(vec![LabelSelector { key: COMPOSE_PROJECT_LABEL.to_string(), value: None }]);
    }
    let project_query = queries.len() - 1;
    let listings = futures_util::future::try_join_all(
        queries
            .into_iter()
            .map(|labels| async { backend.list_containers(&ContainerQuery { labels, all: true }).await }),
    )
    .await
    .map_err(|error: DockerError| error.during("list containers"))?;
    let mut found = Standings::new();
    for (index, containers) in listings.into_iter().enumerate() {
        // The project listing holds every compose container; keep the claimed projects' only.
        let claimed = |labels: &BTreeMap<String, String>| {
            !(by_project && index == project_query) || claims.in_claimed_project(labels)
        };
        found.extend(containers.iter().filter(|container| claimed(&container.labels)).map(|container| {
            (container.resource(), Standing { running: !container.is_exited(), created: Some(container.created) })
        }));
    }
    Ok(found)
}

/// Tears down what `claims` own and verifies by listing again. Every
/// resource found is written to the ledger first, so a crash mid-teardown
/// leaves a record for `recover`.
pub(crate) async fn teardown(
    backends: Backends<'_>,
    ledger: &Ledger,
    claims: &Claims,
    options: &TeardownOptions,
    events: &Events,
) -> Result<TeardownReport, Error> {
    let started = Instant::now();
    let task_for_rows = claims.task_id.clone().unwrap_or_else(|| "-".to_string());
    // What was recorded as it was created (proxy, watcher), before anyone here removed anything.
    let recorded = ledger.unreleased(&claims.run_id, claims.task_id.as_deref()).await?;
    let mut known: BTreeSet<ResourceRef> = recorded.into_iter().map(|row| row.resource).collect();
    let mut removal = RemovalReport::default();
    let mut attempted: BTreeSet<ResourceRef> = BTreeSet::new();
    let mut removed_by_others: BTreeSet<ResourceRef> = BTreeSet::new();
    // A create already in flight when the harness was killed can still land after
    // the first listing, so list again until a round finds nothing new.
    let mut found = discover(backends, ledger, claims).await?;
    for round in 0..=TEARDOWN_ROUNDS {
        release_gone(ledger, &found.gone, &attempted, &mut removed_by_others).await?;
        let fresh: Vec<ResourceRef> =
            found.found.iter().filter(|resource| !attempted.contains(*resource)).cloned().collect();
        if fresh.is_empty() || round == TEARDOWN_ROUNDS {
            break;
        }
        for resource in &fresh {
            events.removal(RemovalEvent::Found { resource });
        }
        ledger.record_resources(&claims.run_id, &task_for_rows, fresh.clone()).await?;
        let outcomes = remove_by_kind(backends, &fresh, options, events).await;
        ledger.record_outcomes(ledger_outcomes(&outcomes)).await?;
        attempted.extend(fresh);
        removal.extend(outcomes);
        found = discover(backends, ledger, claims).await?;
    }
    // Sandboxes whose deletion was accepted but has not finished are pending, not leaked.
    let pending = removal.resources(|outcome| matches!(outcome, RemovalOutcome::Pending { .. }));
    let leaked: Vec<ResourceRef> = found.found.into_iter().filter(|resource| !pending.contains(resource)).collect();
    for resource in &leaked {
        events.emit(Event::Leaked { resource });
    }
    let kept = not_asked(backends, ledger, claims).await?;
    known.extend(attempted.into_iter().chain(removed_by_others.iter().cloned()).chain(leaked.iter().cloned()));
    known.extend(kept.iter().cloned());
    let removed_by_others = removed_by_others.into_iter().collect();
    let seconds = started.elapsed().as_secs_f64();
    Ok(TeardownReport { removal, leaked, pending, kept, removed_by_others, known: known.len(), seconds })
}

/// Releases the ledger rows of resources found gone; those this teardown
/// never tried to remove were removed by someone else.
async fn release_gone(
    ledger: &Ledger,
    gone: &[ResourceRef],
    attempted: &BTreeSet<ResourceRef>,
    removed_by_others: &mut BTreeSet<ResourceRef>,
) -> Result<(), Error> {
    if gone.is_empty() {
        return Ok(());
    }
    ledger.record_outcomes(gone.iter().map(|resource| (resource.clone(), 0, None)).collect()).await?;
    removed_by_others.extend(gone.iter().filter(|resource| !attempted.contains(*resource)).cloned());
    Ok(())
}

/// The ledger's rows of the owner for a backend the teardown was not given.
async fn not_asked(backends: Backends<'_>, ledger: &Ledger, claims: &Claims) -> Result<Vec<ResourceRef>, Error> {
    let rows = ledger.unreleased(&claims.run_id, claims.task_id.as_deref()).await?;
    Ok(rows
        .into_iter()
        .map(|row| row.resource)
        .filter(|resource| match resource.kind {
            Kind::Sandbox => backends.daytona.is_none(),
            Kind::Container | Kind::Network | Kind::Volume => backends.docker.is_none(),
        })
        .collect())
}

/// One round of removals. Sandbox deletes start first, because sandboxes
/// cost money by the minute, and are seen through beside the Docker
/// removals rather than before them. Docker goes kind by kind in the order
/// `fresh` is in (running containers, stopped ones, then networks and
/// volumes, which the containers free).
async fn remove_by_kind(
    backends: Backends<'_>,
    fresh: &[ResourceRef],
    options: &TeardownOptions,
    events: &Events,
) -> RemovalReport {
    let of_kind =
        |kind: Kind| -> Vec<ResourceRef> { fresh.iter().filter(|resource| resource.kind == kind).cloned().collect() };
    let removal = &options.removal;
    let sandboxes = async {
        match (backends.daytona, of_kind(Kind::Sandbox)) {
            (Some(daytona), batch) if !batch.is_empty() => {
                let verify_for = removal.retry.deadline.min(VERIFY_FOR);
                remove_sandboxes(daytona, batch, removal, events, verify_for).await
            }
            _ => RemovalReport::default(),
        }
    };
    let docker = async {
        let mut report = RemovalReport::default();
        let Some(docker) = backends.docker else {
            return report;
        };
        for kind in [Kind::Container, Kind::Network, Kind::Volume] {
            let batch = of_kind(kind);
            if !batch.is_empty() {
                report.extend(remove_all(&docker.remover(options.stop_timeout), batch, removal, events).await);
            }
        }
        report
    };
    // `join!` polls in order: the sandbox deletes are sent before the first Docker removal.
    let (mut round, docker) = tokio::join!(sandboxes, docker);
    round.extend(docker);
    round
}

/// What the ledger keeps of a round: released rows, and failed attempts with their error.
fn ledger_outcomes(report: &RemovalReport) -> Vec<(ResourceRef, u32, Option<String>)> {
    report
        .results
        .iter()
        .filter_map(|(resource, outcome)| match outcome {
            RemovalOutcome::Removed { attempts } | RemovalOutcome::AlreadyGone { attempts } => {
                Some((resource.clone(), *attempts, None))
            }
            RemovalOutcome::Failed { attempts, error } => Some((resource.clone(), *attempts, Some(error.to_string()))),
            RemovalOutcome::NotAttempted | RemovalOutcome::WouldRemove | RemovalOutcome::Pending { .. } => None,
        })
        .collect()
}
