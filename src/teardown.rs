//! Teardown of exactly what one owner (a task, or a whole run) owns: found
//! through the ledger, benchwarden's owner labels and the benchmark's
//! selectors; recorded before removal; removed with retry (containers, then
//! networks, then volumes, then Daytona sandboxes, seen through to 404); then
//! listed again to prove nothing is left.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::backend::daytona::{remove_sandboxes, DaytonaBackend, VERIFY_FOR};
use crate::backend::docker::{Container, ContainerQuery, DockerBackend, DockerError, COMPOSE_PROJECT_LABEL};
use crate::backend::{remove_all, Kind, LabelSelector, RemovalOptions, RemovalOutcome, RemovalReport, ResourceRef};
use crate::backend::{LABEL_RUN, LABEL_TASK};
use crate::config::Selector;
use crate::errors::Error;
use crate::ledger::Ledger;
use crate::report::Progress;
use crate::retry::{RetryPolicy, Success};

/// What an owner claims: owner labels, plus selectors already filled with
/// the run id and task name.
#[derive(Debug, Clone)]
pub struct Claims {
    pub run_id: String,
    /// `None`: every task of the run.
    pub task_id: Option<String>,
    pub selectors: Vec<Selector>,
}

impl Claims {
    fn owner_labels(&self) -> Vec<LabelSelector> {
        let mut labels = vec![LabelSelector { key: LABEL_RUN.to_string(), value: Some(self.run_id.clone()) }];
        if let Some(task_id) = &self.task_id {
            labels.push(LabelSelector { key: LABEL_TASK.to_string(), value: Some(task_id.clone()) });
        }
        labels
    }

    /// Whether a resource with these labels is claimed: it carries the
    /// owner labels, or a selector matches.
    pub fn claims_labels(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        if self.owner_labels().iter().all(|selector| selector.matches(labels)) {
            return true;
        }
        self.selectors.iter().any(|selector| match selector {
            Selector::Label(label) => LabelSelector::parse(label).is_ok_and(|selector| selector.matches(labels)),
            Selector::ComposeProjectPrefix(prefix) => {
                labels.get(COMPOSE_PROJECT_LABEL).is_some_and(|project| project.starts_with(prefix.as_str()))
            }
        })
    }

    /// Selectors as stored in the ledger's `claims` table.
    pub fn encode_selector(selector: &Selector) -> String {
        match selector {
            Selector::Label(label) => format!("label:{label}"),
            Selector::ComposeProjectPrefix(prefix) => format!("compose_project_prefix:{prefix}"),
        }
    }

    pub fn decode_selector(text: &str) -> Option<Selector> {
        let (kind, value) = text.split_once(':')?;
        match kind {
            "label" => Some(Selector::Label(value.to_string())),
            "compose_project_prefix" => Some(Selector::ComposeProjectPrefix(value.to_string())),
            _ => None,
        }
    }
}

/// Rounds of list-and-remove before what is still there counts as leaked.
const TEARDOWN_ROUNDS: usize = 3;

fn ledger_outcomes(report: &RemovalReport) -> Vec<(ResourceRef, u32, Option<String>)> {
    report
        .results
        .iter()
        .filter_map(|(resource, outcome)| match outcome {
            RemovalOutcome::Removed { attempts } | RemovalOutcome::AlreadyGone { attempts } => {
                Some((resource.clone(), *attempts, None))
            }
            RemovalOutcome::Failed { attempts, error } => Some((resource.clone(), *attempts, Some(error.clone()))),
            RemovalOutcome::NotAttempted | RemovalOutcome::WouldRemove | RemovalOutcome::Pending { .. } => None,
        })
        .collect()
}

/// How a teardown ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TeardownReport {
    pub removal: RemovalReport,
    /// Still there after teardown, found by listing again.
    pub leaked: Vec<ResourceRef>,
    /// Deletion accepted, not finished by the deadline (sandboxes); kept in the ledger.
    pub pending: Vec<ResourceRef>,
    pub seconds: f64,
}

impl TeardownReport {
    pub fn found(&self) -> usize {
        self.removal.results.len()
    }
}

fn docker_error(operation: &str) -> impl Fn(DockerError) -> Error + '_ {
    move |error| Error::Docker { operation: operation.to_string(), reason: error.to_string() }
}

/// The backends a teardown may use; a missing one is not asked.
#[derive(Clone, Copy, Default)]
pub struct Backends<'a> {
    pub docker: Option<&'a DockerBackend>,
    pub daytona: Option<&'a DaytonaBackend>,
}

/// Everything the claims point at now, containers first, sandboxes last.
pub async fn discover(backends: Backends<'_>, ledger: &Ledger, claims: &Claims) -> Result<Vec<ResourceRef>, Error> {
    let mut found: BTreeSet<ResourceRef> = BTreeSet::new();
    if let Some(docker) = backends.docker {
        found.extend(discover_docker(docker, ledger, claims).await?);
    }
    if let Some(daytona) = backends.daytona {
        found.extend(discover_sandboxes(daytona, ledger, claims).await?);
    }
    // BTreeSet order is by kind: containers, networks, volumes, sandboxes.
    Ok(found.into_iter().collect())
}

/// Sandboxes with the owner labels, and the ledger's sandbox rows that still exist.
async fn discover_sandboxes(
    daytona: &DaytonaBackend,
    ledger: &Ledger,
    claims: &Claims,
) -> Result<Vec<ResourceRef>, Error> {
    let daytona_error = |error: crate::backend::daytona::DaytonaError| Error::Daytona {
        operation: "list sandboxes".to_string(),
        reason: error.to_string(),
    };
    let labels = claims.owner_labels().into_iter().filter_map(|label| Some((label.key, label.value?))).collect();
    let mut found: BTreeSet<ResourceRef> =
        daytona.list(&labels).await.map_err(daytona_error)?.iter().map(|sandbox| sandbox.resource()).collect();
    for record in ledger.unreleased(&claims.run_id, claims.task_id.as_deref()).await? {
        if record.resource.kind != Kind::Sandbox || found.contains(&record.resource) {
            continue;
        }
        let what = format!("look up {}", record.resource);
        let looked_up = RetryPolicy::default().run(&what, || daytona.get(&record.resource.id)).await;
        match looked_up.map_err(|failure| daytona_error(failure.error))? {
            (Success::Done(Some(_)), _) => {
                found.insert(record.resource);
            }
            (Success::Done(None) | Success::AlreadyDone, _) => {
                ledger.record_outcomes(vec![(record.resource, 0, None)]).await?
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// Containers, networks and volumes the claims point at.
async fn discover_docker(backend: &DockerBackend, ledger: &Ledger, claims: &Claims) -> Result<Vec<ResourceRef>, Error> {
    let mut found: BTreeSet<ResourceRef> = BTreeSet::new();
    let owner_labels = claims.owner_labels();
    let label_selectors: Vec<LabelSelector> = claims
        .selectors
        .iter()
        .filter_map(|selector| match selector {
            Selector::Label(label) => LabelSelector::parse(label).ok(),
            Selector::ComposeProjectPrefix(_) => None,
        })
        .collect();
    let prefixes: Vec<&str> = claims
        .selectors
        .iter()
        .filter_map(|selector| match selector {
            Selector::ComposeProjectPrefix(prefix) => Some(prefix.as_str()),
            Selector::Label(_) => None,
        })
        .collect();
    let in_claimed_project = |labels: &std::collections::BTreeMap<String, String>| {
        labels
            .get(COMPOSE_PROJECT_LABEL)
            .is_some_and(|project| prefixes.iter().any(|prefix| project.starts_with(prefix)))
    };

    let mut container_queries = vec![owner_labels.clone()];
    container_queries.extend(label_selectors.iter().map(|selector| vec![selector.clone()]));
    if !prefixes.is_empty() {
        container_queries.push(vec![LabelSelector { key: COMPOSE_PROJECT_LABEL.to_string(), value: None }]);
    }
    // Every listing at once: each is a round trip to the daemon, and teardown
    // sits on the path between a task's end and the next task's start.
    let container_lists = futures_util::future::try_join_all(container_queries.into_iter().map(|labels| async {
        let prefix_query =
            labels.first().is_some_and(|label| label.key == COMPOSE_PROJECT_LABEL && label.value.is_none());
        let containers = backend.list_containers(&ContainerQuery { labels, all: true }).await?;
        Ok::<_, DockerError>((prefix_query, containers))
    }));
    let (container_lists, networks, volumes, unreleased) = tokio::join!(
        container_lists,
        backend.list_networks(&[]),
        backend.list_volumes(&[]),
        ledger.unreleased(&claims.run_id, claims.task_id.as_deref())
    );
    for (prefix_query, containers) in container_lists.map_err(docker_error("list containers"))? {
        found.extend(
            containers
                .iter()
                .filter(|container| !prefix_query || in_claimed_project(&container.labels))
                .map(Container::resource),
        );
    }
    let networks = networks.map_err(docker_error("list networks"))?;
    let volumes = volumes.map_err(docker_error("list volumes"))?;
    for item in networks.iter().chain(&volumes) {
        let owned = owner_labels.iter().all(|selector| selector.matches(&item.labels))
            || label_selectors.iter().any(|selector| selector.matches(&item.labels))
            || in_claimed_project(&item.labels);
        if owned {
            found.insert(item.resource.clone());
        }
    }

    for record in unreleased? {
        if record.resource.kind == Kind::Sandbox || found.contains(&record.resource) {
            continue;
        }
        if backend.exists(&record.resource).await.map_err(docker_error("inspect"))? {
            found.insert(record.resource);
        } else {
            // Gone already (removed by the harness itself): release the row.
            ledger.record_outcomes(vec![(record.resource, 0, None)]).await?;
        }
    }
    // BTreeSet order is by kind: containers, networks, volumes.
    Ok(found.into_iter().collect())
}

/// Tears down what `claims` own and verifies by listing again. Every
/// resource found is written to the ledger first, so a crash mid-teardown
/// leaves a record for `recover`.
pub async fn teardown(
    backends: Backends<'_>,
    ledger: &Ledger,
    claims: &Claims,
    options: &RemovalOptions,
    stop_timeout: Option<std::time::Duration>,
) -> Result<TeardownReport, Error> {
    let started = std::time::Instant::now();
    let task_for_rows = claims.task_id.clone().unwrap_or_else(|| "-".to_string());
    let hidden = Progress::hidden();
    let mut removal = RemovalReport::default();
    let mut attempted: BTreeSet<ResourceRef> = BTreeSet::new();
    // A create already in flight when the harness was killed can still land after
    // the first listing, so list again until a round finds nothing new.
    let mut found = discover(backends, ledger, claims).await?;
    for _round in 0..TEARDOWN_ROUNDS {
        let fresh: Vec<ResourceRef> = found.iter().filter(|resource| !attempted.contains(*resource)).cloned().collect();
        if fresh.is_empty() {
            break;
        }
        ledger.record_resources(&claims.run_id, &task_for_rows, fresh.clone()).await?;
        let mut round = RemovalReport::default();
        for kind in [Kind::Container, Kind::Network, Kind::Volume, Kind::Sandbox] {
            let batch: Vec<ResourceRef> = fresh.iter().filter(|resource| resource.kind == kind).cloned().collect();
            if batch.is_empty() {
                continue;
            }
            match (kind, backends.docker, backends.daytona) {
                (Kind::Sandbox, _, Some(daytona)) => round.extend(
                    remove_sandboxes(daytona, batch, options, &hidden, options.retry.deadline.min(VERIFY_FOR)).await,
                ),
                (Kind::Sandbox, _, None) => {}
                (_, Some(docker), _) => {
                    round.extend(remove_all(&docker.remover(stop_timeout), batch, options, &hidden).await)
                }
                (_, None, _) => {}
            }
        }
        ledger.record_outcomes(ledger_outcomes(&round)).await?;
        attempted.extend(fresh);
        removal.extend(round);
        found = discover(backends, ledger, claims).await?;
    }

    // Sandboxes whose deletion was accepted but has not finished are pending, not leaked.
    let pending: Vec<ResourceRef> = removal
        .results
        .iter()
        .filter(|(_, outcome)| matches!(outcome, RemovalOutcome::Pending { .. }))
        .map(|(resource, _)| resource.clone())
        .collect();
    let leaked: Vec<ResourceRef> = found.into_iter().filter(|resource| !pending.contains(resource)).collect();
    for resource in &leaked {
        tracing::error!("leaked: {resource} is still there after teardown");
    }
    Ok(TeardownReport { removal, leaked, pending, seconds: started.elapsed().as_secs_f64() })
}
