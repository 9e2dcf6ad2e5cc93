//! Teardown of exactly what one owner (a task, or a whole run) owns: found
//! through the ledger, benchwarden's owner labels and the benchmark's
//! selectors; recorded before removal; removed with retry (Daytona
//! sandboxes first, seen through to 404 beside the Docker removals; then
//! running containers, stopped ones, networks and volumes, the oldest first
//! within each); then listed again to prove nothing is left. Resources kept
//! by `run --keep-failed` are left alone unless the options take them, and
//! resources a task claimed on another Docker host are removed there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::daytona::{remove_sandboxes, DaytonaBackend, DaytonaError, VERIFY_FOR};
use crate::backend::docker::{ContainerQuery, DockerBackend, DockerError};
use crate::backend::{remove_all, RemovalOptions};
use crate::errors::Error;
use crate::events::{Event, Events, RemovalEvent};
use crate::ledger::{Ledger, ResourceRecord};
use crate::net::DockerEndpoint;
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

    /// This teardown, then `later` of the same owner: the removals of both,
    /// and what is left as the later one found it.
    pub(crate) fn followed_by(&mut self, later: TeardownReport) {
        self.known += later.removal.results.len();
        self.removal.extend(later.removal);
        self.leaked = later.leaked;
        self.pending = later.pending;
        self.kept = later.kept;
        self.removed_by_others.extend(later.removed_by_others);
        self.seconds += later.seconds;
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
    /// Which resources kept by `run --keep-failed` this teardown takes.
    pub(crate) take_kept: TakeKept,
}

/// Which resources kept by `run --keep-failed` a teardown or recovery takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum TakeKept {
    /// None: they wait for `recover --include-kept` or the cleanup age.
    #[default]
    Never,
    /// All of them (`recover --include-kept`).
    All,
    /// Those kept at or before this Unix time (the pre-run sweep: older than the cleanup age).
    KeptBefore(i64),
}

impl TakeKept {
    /// Whether a row kept at `kept_at` (`None`: not kept) may be taken.
    pub(crate) fn takes(self, kept_at: Option<i64>) -> bool {
        match (self, kept_at) {
            (_, None) | (TakeKept::All, Some(_)) => true,
            (TakeKept::Never, Some(_)) => false,
            (TakeKept::KeptBefore(cutoff), Some(at)) => at <= cutoff,
        }
    }

    /// Whether any kept row is taken at all.
    pub(crate) fn takes_any(self) -> bool {
        self != TakeKept::Never
    }
}

/// The ledger's unreleased rows of an owner, split by how a teardown treats them.
#[derive(Debug, Default)]
struct Rows {
    /// On the run's own backends, and not spared: checked and removed there.
    here: Vec<ResourceRecord>,
    /// Claimed on another Docker host: removed through that host.
    elsewhere: Vec<ResourceRecord>,
    /// Kept, and not taken by this teardown: left alone, and never found by listing either.
    spared: BTreeSet<ResourceRef>,
}

impl Rows {
    fn split(rows: Vec<ResourceRecord>, take_kept: TakeKept) -> Self {
        let mut split = Rows::default();
        for row in rows {
            if !take_kept.takes(row.kept_at) {
                split.spared.insert(row.resource);
            } else if row.endpoint.is_some() {
                split.elsewhere.push(row);
            } else {
                split.here.push(row);
            }
        }
        split
    }
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
/// rows whose resource is gone. Kept rows that `take_kept` does not take
/// are left out, however found; rows on another Docker host are not looked
/// at here.
pub(crate) async fn discover(
    backends: Backends<'_>,
    ledger: &Ledger,
    claims: &Claims,
    take_kept: TakeKept,
) -> Result<Discovery, Error> {
    let rows = Rows::split(ledger.unreleased(&claims.run_id, claims.task_id.as_deref()).await?, take_kept);
    let mut found = Standings::new();
    let mut gone = Vec::new();
    if let Some(docker) = backends.docker {
        let (there, vanished) = discover_docker(docker, &rows.here, claims).await?;
        found.extend(there);
        gone.extend(vanished);
    }
    if let Some(daytona) = backends.daytona {
        let (there, vanished) = discover_sandboxes(daytona, &rows.here, claims).await?;
        found.extend(there);
        gone.extend(vanished);
    }
    found.retain(|resource, _| !rows.spared.contains(resource));
    Ok(Discovery { found: in_removal_order(found), gone })
}

type Found = (Standings, Vec<ResourceRef>);

/// Sandboxes with the owner labels, and the ledger's sandbox rows: those that still exist, and those gone.
async fn discover_sandboxes(
    daytona: &DaytonaBackend,
    rows: &[ResourceRecord],
    claims: &Claims,
) -> Result<Found, Error> {
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
    for record in rows {
        if record.resource.kind != Kind::Sandbox || found.contains_key(&record.resource) {
            continue;
        }
        match daytona.look_up(&record.resource.id).await.map_err(listing_failed)? {
            Some(sandbox) => found.insert(record.resource.clone(), standing(sandbox.created_unix())),
            None => {
                gone.push(record.resource.clone());
                None
            }
        };
    }
    Ok((found, gone))
}

/// Containers, networks and volumes the claims point at, and the ledger's
/// Docker rows: those that still exist, and those gone.
async fn discover_docker(backend: &DockerBackend, rows: &[ResourceRecord], claims: &Claims) -> Result<Found, Error> {
    // Every listing at once: each is a round trip to the daemon, and teardown
    // sits between a task's end and the next task's start.
    let (containers, networks, volumes) =
        tokio::join!(claimed_containers(backend, claims), backend.list_networks(&[]), backend.list_volumes(&[]));
    let mut found: Standings = containers?;
    let networks = networks.map_err(|error| error.during("list networks"))?;
    let volumes = volumes.map_err(|error| error.during("list volumes"))?;
    for item in networks.iter().chain(&volumes) {
        if claims.claims_labels(&item.labels) {
            found.insert(item.resource.clone(), Standing::default());
        }
    }
    let mut gone = Vec::new();
    for record in rows {
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
            true => found.insert(record.resource.clone(), Standing { running: true, created: Some(record.created_at) }),
            false => {
                gone.push(record.resource.clone());
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
    // What was recorded as it was created (proxy, watcher, claims), before anyone here removed anything.
    let rows = Rows::split(ledger.unreleased(&claims.run_id, claims.task_id.as_deref()).await?, options.take_kept);
    let mut known: BTreeSet<ResourceRef> =
        rows.here.iter().chain(&rows.elsewhere).map(|row| row.resource.clone()).collect();
    let elsewhere = tear_down_elsewhere(ledger, &rows.elsewhere, options, events).await?;
    let mut rounds = Rounds { removal: elsewhere.removal, ..Rounds::default() };
    let found = remove_in_rounds(backends, ledger, claims, options, events, &mut rounds).await?;
    let Rounds { removal, attempted, removed_by_others, .. } = rounds;
    // Sandboxes whose deletion was accepted but has not finished are pending, not leaked.
    let pending = removal.resources(|outcome| matches!(outcome, RemovalOutcome::Pending { .. }));
    let mut leaked: Vec<ResourceRef> = found.into_iter().filter(|resource| !pending.contains(resource)).collect();
    leaked.extend(elsewhere.unreached);
    for resource in &leaked {
        events.emit(Event::Leaked { resource });
    }
    let kept = not_asked(backends, ledger, claims, options.take_kept).await?;
    known.extend(attempted.into_iter().chain(removed_by_others.iter().cloned()).chain(leaked.iter().cloned()));
    known.extend(kept.iter().cloned());
    let removed_by_others = removed_by_others.into_iter().collect();
    let seconds = started.elapsed().as_secs_f64();
    Ok(TeardownReport { removal, leaked, pending, kept, removed_by_others, known: known.len(), seconds })
}

/// What the rounds of a teardown did so far.
#[derive(Default)]
struct Rounds {
    removal: RemovalReport,
    attempted: BTreeSet<ResourceRef>,
    removed_by_others: BTreeSet<ResourceRef>,
    /// Answered "no such resource" by the last round's removals.
    answered_gone: BTreeSet<ResourceRef>,
}

/// Lists and removes, round after round, until a listing finds nothing new
/// or the rounds run out; returns what the last listing still found.
///
/// A create already in flight when the harness was killed can still land
/// after the first listing, so each round lists again. And a resource still
/// listed after its removal answered "no such resource" is tried again,
/// after a pause: the Docker daemon lists a container from the start of its
/// create, but knows it by id, and so removes it, only once the create is
/// done (a create a dead run left in flight).
async fn remove_in_rounds(
    backends: Backends<'_>,
    ledger: &Ledger,
    claims: &Claims,
    options: &TeardownOptions,
    events: &Events,
    rounds: &mut Rounds,
) -> Result<Vec<ResourceRef>, Error> {
    let task_for_rows = claims.task_id.clone().unwrap_or_else(|| "-".to_string());
    let mut found = discover(backends, ledger, claims, options.take_kept).await?;
    for round in 0..=TEARDOWN_ROUNDS {
        release_gone(ledger, &found.gone, &rounds.attempted, &mut rounds.removed_by_others).await?;
        let again: BTreeSet<ResourceRef> =
            found.found.iter().filter(|resource| rounds.answered_gone.contains(*resource)).cloned().collect();
        let fresh: Vec<ResourceRef> = found
            .found
            .iter()
            .filter(|resource| !rounds.attempted.contains(*resource) || again.contains(*resource))
            .cloned()
            .collect();
        if fresh.is_empty() || round == TEARDOWN_ROUNDS {
            break;
        }
        if !again.is_empty() {
            tokio::time::sleep(options.removal.retry.first_delay).await;
            // The earlier "already gone" was wrong: this round's outcome replaces it.
            rounds.removal.results.retain(|(resource, _)| !again.contains(resource));
        }
        for resource in fresh.iter().filter(|resource| !again.contains(*resource)) {
            events.removal(RemovalEvent::Found { resource });
        }
        ledger.record_resources(&claims.run_id, &task_for_rows, fresh.clone()).await?;
        let outcomes = remove_by_kind(backends, &fresh, options, events).await;
        ledger.record_outcomes(ledger_outcomes(&outcomes)).await?;
        rounds.answered_gone =
            outcomes.resources(|outcome| matches!(outcome, RemovalOutcome::AlreadyGone { .. })).into_iter().collect();
        rounds.attempted.extend(fresh);
        rounds.removal.extend(outcomes);
        found = discover(backends, ledger, claims, options.take_kept).await?;
    }
    Ok(found.found)
}

/// What a teardown did on other Docker hosts.
#[derive(Default)]
struct Elsewhere {
    removal: RemovalReport,
    /// On a host that could not be reached, or whose removal failed: still there.
    unreached: Vec<ResourceRef>,
}

/// Removes what a task claimed on another Docker host (`benchwarden claim`
/// with a `DOCKER_HOST` of its own) through a connection to that host, and
/// releases the rows of what went. Removal there treats 404 as gone, so no
/// listing is needed first. A host that cannot be reached leaves its
/// resources recorded and unreleased, for `recover` to try again.
async fn tear_down_elsewhere(
    ledger: &Ledger,
    rows: &[ResourceRecord],
    options: &TeardownOptions,
    events: &Events,
) -> Result<Elsewhere, Error> {
    let mut by_host: BTreeMap<&str, Vec<ResourceRef>> = BTreeMap::new();
    for row in rows {
        if let Some(endpoint) = &row.endpoint {
            by_host.entry(endpoint.as_str()).or_default().push(row.resource.clone());
        }
    }
    let mut done = Elsewhere::default();
    for (address, resources) in by_host {
        match DockerBackend::connect(&DockerEndpoint::new(Some(address), None)).await {
            Ok(docker) => {
                let docker = docker.retrying_reads(options.removal.retry.clone(), events.clone());
                let outcomes =
                    remove_all(&docker.remover(options.stop_timeout), resources, &options.removal, events).await;
                done.unreached.extend(outcomes.failures().map(|(resource, _)| resource.clone()));
                done.removal.extend(outcomes);
            }
            Err(error) => {
                tracing::warn!("cannot remove what was claimed on {address}: {error}");
                done.unreached.extend(resources);
            }
        }
    }
    ledger.record_outcomes(ledger_outcomes(&done.removal)).await?;
    Ok(done)
}

/// What keeping an owner's resources in place found.
#[derive(Debug, Default)]
pub(crate) struct KeptReport {
    /// Still there, and now marked kept in the ledger.
    pub(crate) kept: Vec<ResourceRef>,
    /// Recorded as created, and already gone: the harness removed them itself.
    pub(crate) removed_by_others: Vec<ResourceRef>,
}

/// Leaves what `claims` own in place (`run --keep-failed`): everything
/// found is recorded, the rows of what is gone are released, and the rest
/// is marked kept, so that only `recover --include-kept`, or a pre-run
/// sweep once it is older than the cleanup age, takes it.
pub(crate) async fn keep(backends: Backends<'_>, ledger: &Ledger, claims: &Claims) -> Result<KeptReport, Error> {
    let task = claims.task_id.clone().unwrap_or_else(|| "-".to_string());
    let found = discover(backends, ledger, claims, TakeKept::All).await?;
    ledger.record_resources(&claims.run_id, &task, found.found).await?;
    ledger.record_outcomes(found.gone.iter().map(|resource| (resource.clone(), 0, None)).collect()).await?;
    ledger.keep(&claims.run_id, &task).await?;
    let rows = ledger.unreleased(&claims.run_id, claims.task_id.as_deref()).await?;
    Ok(KeptReport { kept: rows.into_iter().map(|row| row.resource).collect(), removed_by_others: found.gone })
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

/// The ledger's rows of the owner for a backend the teardown was not given
/// (rows it spares, and rows on other Docker hosts, are not its backends').
async fn not_asked(
    backends: Backends<'_>,
    ledger: &Ledger,
    claims: &Claims,
    take_kept: TakeKept,
) -> Result<Vec<ResourceRef>, Error> {
    let rows = Rows::split(ledger.unreleased(&claims.run_id, claims.task_id.as_deref()).await?, take_kept);
    Ok(rows
        .here
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_rows_are_taken_only_when_asked_or_old_enough() {
        assert!(TakeKept::Never.takes(None), "a row nobody kept is always taken");
        assert!(!TakeKept::Never.takes(Some(5)));
        assert!(TakeKept::All.takes(Some(5)));
        assert!(TakeKept::KeptBefore(10).takes(Some(10)));
        assert!(!TakeKept::KeptBefore(10).takes(Some(11)));
        assert!(!TakeKept::Never.takes_any() && TakeKept::KeptBefore(0).takes_any());
    }

    #[test]
    fn rows_split_into_here_elsewhere_and_spared() {
        let row = |id: &str, kept_at: Option<i64>, endpoint: Option<&str>| ResourceRecord {
            resource: ResourceRef { kind: Kind::Container, id: id.into(), name: String::new() },
            run_id: "r".into(),
            task_id: "t".into(),
            created_at: 0,
            released_at: None,
            attempts: 0,
            last_error: None,
            kept_at,
            endpoint: endpoint.map(str::to_string),
        };
        let rows = || vec![row("a", None, None), row("b", Some(1), None), row("c", None, Some("tcp://h:2375"))];
        let split = Rows::split(rows(), TakeKept::Never);
        let ids = |rows: &[ResourceRecord]| rows.iter().map(|row| row.resource.id.clone()).collect::<Vec<_>>();
        assert_eq!((ids(&split.here), ids(&split.elsewhere)), (vec!["a".to_string()], vec!["c".to_string()]));
        assert_eq!(split.spared.iter().map(|resource| resource.id.as_str()).collect::<Vec<_>>(), ["b"]);
        let all = Rows::split(rows(), TakeKept::All);
        assert_eq!(ids(&all.here), ["a", "b"]);
        assert!(all.spared.is_empty());
    }
}
