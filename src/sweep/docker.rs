//! Docker sweeps: which containers a selection (state, age, labels) picks,
//! removal of the picked ones (those a live run owns are protected by the
//! caller's verdict), then of the networks and volumes they leave unused.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use super::{plan, Protected, Verdict};
use crate::backend::docker::{Container, ContainerQuery, DockerBackend};
use crate::backend::{remove_all, RemovalOptions};
use crate::errors::Error;
use crate::events::{Event, Events, RemovalEvent};
use crate::owner::COMPOSE_PROJECT_LABEL;
use crate::resource::{removal_rank, Kind, LabelSelector, RemovalOutcome, RemovalReport, ResourceRef, Standing};

/// Which containers a sweep picks. Every set filter must match.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContainerSelection {
    /// Only exited, dead, or never-started containers.
    pub(crate) exited: bool,
    /// Only containers created longer ago than this.
    pub(crate) older_than: Option<Duration>,
    pub(crate) labels: Vec<LabelSelector>,
}

impl ContainerSelection {
    pub(crate) fn matches(&self, container: &Container, now_unix: i64) -> bool {
        if self.exited && !container.is_exited() {
            return false;
        }
        if let Some(age) = self.older_than {
            if container.created > crate::clock::seconds_before(now_unix, age) {
                return false;
            }
        }
        self.labels.iter().all(|selector| selector.matches(&container.labels))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DockerSweep {
    pub(crate) selection: ContainerSelection,
    pub(crate) stop_timeout: Option<Duration>,
    /// Remove named volumes of emptied compose projects (and labelled ones).
    pub(crate) volumes: bool,
    pub(crate) dry_run: bool,
    pub(crate) removal: RemovalOptions,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SweepResult {
    pub(crate) dry_run: bool,
    pub(crate) containers: RemovalReport,
    pub(crate) networks: RemovalReport,
    pub(crate) volumes: RemovalReport,
    pub(crate) protected: Vec<Protected>,
}

impl SweepResult {
    pub(crate) fn failed(&self) -> usize {
        self.containers.failed() + self.networks.failed() + self.volumes.failed()
    }
}

/// Runs one sweep. `verdict` decides for each listed container; the
/// selection's labels narrow the listing and say which labelled networks
/// and volumes may go.
pub(crate) async fn sweep_docker(
    backend: &DockerBackend,
    sweep: &DockerSweep,
    events: &Events,
    verdict: impl Fn(&Container) -> Verdict,
) -> Result<SweepResult, Error> {
    let query = ContainerQuery { labels: sweep.selection.labels.clone(), all: true };
    let listed = backend.list_containers(&query).await.map_err(|error| error.during("list containers"))?;
    let mut picked = Vec::new();
    let mut protected = Vec::new();
    for container in &listed {
        match verdict(container) {
            Verdict::Skip => {}
            Verdict::Protect(reason) => protected.push(Protected { resource: container.resource(), reason }),
            Verdict::Take => picked.push(container.clone()),
        }
    }
    for item in &protected {
        events.emit(Event::Protected { resource: &item.resource, reason: &item.reason });
    }
    // Running containers first, then stopped ones, the oldest first within each.
    picked.sort_by_key(|container| {
        removal_rank(Kind::Container, Standing { running: !container.is_exited(), created: Some(container.created) })
    });
    let resources: Vec<ResourceRef> = picked.iter().map(Container::resource).collect();
    let containers = if sweep.dry_run {
        plan(resources, events)
    } else {
        events.removal(RemovalEvent::Started { what: "removing containers", total: resources.len() });
        let removed = remove_all(&backend.remover(sweep.stop_timeout), resources, &sweep.removal, events).await;
        events.removal(RemovalEvent::Finished);
        removed
    };
    let (networks, volumes) = sweep_unused_networks_and_volumes(backend, sweep, &picked, &containers, events).await?;
    Ok(SweepResult { dry_run: sweep.dry_run, containers, networks, volumes, protected })
}

/// Which networks and volumes a sweep's container removals leave unused:
/// those of compose projects with no container left, and with label
/// selectors, labelled ones once no container with those labels is left.
struct Unused<'a> {
    emptied_projects: BTreeSet<&'a str>,
    labels: &'a [LabelSelector],
    labels_in_use: bool,
}

impl<'a> Unused<'a> {
    /// `remaining` is what is still listed; in a dry run, what would go is not counted as remaining.
    fn new(sweep: &'a DockerSweep, picked: &'a [Container], removed: &RemovalReport, remaining: &[Container]) -> Self {
        let gone: BTreeSet<&str> = removed
            .results
            .iter()
            .filter(|(_, outcome)| {
                matches!(
                    outcome,
                    RemovalOutcome::Removed { .. } | RemovalOutcome::AlreadyGone { .. } | RemovalOutcome::WouldRemove
                )
            })
            .map(|(resource, _)| resource.id.as_str())
            .collect();
        let remaining: Vec<&Container> =
            remaining.iter().filter(|container| !sweep.dry_run || !gone.contains(container.id.as_str())).collect();
        let labels = sweep.selection.labels.as_slice();
        let emptied_projects = picked
            .iter()
            .filter(|container| gone.contains(container.id.as_str()))
            .filter_map(|container| container.compose_project.as_deref())
            .filter(|project| !remaining.iter().any(|container| container.compose_project.as_deref() == Some(*project)))
            .collect();
        let labels_in_use = !labels.is_empty()
            && remaining.iter().any(|container| labels.iter().all(|selector| selector.matches(&container.labels)));
        Unused { emptied_projects, labels, labels_in_use }
    }

    fn wants(&self, labels: &BTreeMap<String, String>) -> bool {
        let by_project =
            labels.get(COMPOSE_PROJECT_LABEL).is_some_and(|project| self.emptied_projects.contains(project.as_str()));
        let by_label = !self.labels.is_empty()
            && !self.labels_in_use
            && self.labels.iter().all(|selector| selector.matches(labels));
        by_project || by_label
    }
}

/// After containers go, the networks (and with `--volumes`, named volumes)
/// they leave unused go too.
async fn sweep_unused_networks_and_volumes(
    backend: &DockerBackend,
    sweep: &DockerSweep,
    picked: &[Container],
    containers: &RemovalReport,
    events: &Events,
) -> Result<(RemovalReport, RemovalReport), Error> {
    let touches_projects = picked.iter().any(|container| container.compose_project.is_some());
    if !touches_projects && sweep.selection.labels.is_empty() {
        return Ok(Default::default());
    }
    let remaining = backend
        .list_containers(&ContainerQuery { labels: Vec::new(), all: true })
        .await
        .map_err(|error| error.during("list containers"))?;
    let unused = Unused::new(sweep, picked, containers, &remaining);
    let networks = backend.list_networks(&[]).await.map_err(|error| error.during("list networks"))?;
    let networks: Vec<ResourceRef> =
        networks.into_iter().filter(|network| unused.wants(&network.labels)).map(|network| network.resource).collect();
    let volumes = match sweep.volumes {
        true => backend.list_volumes(&[]).await.map_err(|error| error.during("list volumes"))?,
        false => Vec::new(),
    };
    let volumes: Vec<ResourceRef> =
        volumes.into_iter().filter(|volume| unused.wants(&volume.labels)).map(|volume| volume.resource).collect();
    if sweep.dry_run {
        return Ok((plan(networks, events), plan(volumes, events)));
    }
    let remover = backend.remover(None);
    let networks = remove_all(&remover, networks, &sweep.removal, events).await;
    let volumes = remove_all(&remover, volumes, &sweep.removal, events).await;
    Ok((networks, volumes))
}
