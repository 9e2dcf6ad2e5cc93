//! Cleanup by policy: which containers a selection (state, age, labels)
//! picks, which are protected because a live run owns them, and removal of
//! the picked ones followed by the networks and volumes they leave unused.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::backend::docker::{Container, ContainerQuery, DockerBackend, COMPOSE_PROJECT_LABEL};
use crate::backend::{remove_all, LabelSelector, RemovalOptions, RemovalReport, ResourceRef};
use crate::errors::Error;
use crate::report::{OutputSettings, Progress};

/// Which containers a sweep picks. Every set filter must match.
#[derive(Debug, Clone, Default)]
pub struct ContainerSelection {
    /// Only exited, dead, or never-started containers.
    pub exited: bool,
    /// Only containers created longer ago than this.
    pub older_than: Option<Duration>,
    pub labels: Vec<LabelSelector>,
}

impl ContainerSelection {
    pub fn matches(&self, container: &Container, now_unix: i64) -> bool {
        if self.exited && !container.is_exited() {
            return false;
        }
        if let Some(age) = self.older_than {
            if container.created > now_unix - age.as_secs() as i64 {
                return false;
            }
        }
        self.labels.iter().all(|selector| selector.matches(&container.labels))
    }
}

#[derive(Debug, Clone)]
pub struct DockerSweep {
    pub selection: ContainerSelection,
    pub stop_timeout: Option<Duration>,
    /// Remove named volumes of emptied compose projects (and labelled ones).
    pub volumes: bool,
    pub dry_run: bool,
    pub removal: RemovalOptions,
}

/// What a sweep does with one listed container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not selected.
    Skip,
    /// Selected, but a live run owns it: left alone, and said so.
    Protect(String),
    Take,
}

/// A container left alone because a run that is still alive owns it.
#[derive(Debug, Clone, Serialize)]
pub struct Protected {
    pub resource: ResourceRef,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepResult {
    pub dry_run: bool,
    pub containers: RemovalReport,
    pub networks: RemovalReport,
    pub volumes: RemovalReport,
    pub protected: Vec<Protected>,
}

impl SweepResult {
    pub fn failed(&self) -> usize {
        self.containers.failed() + self.networks.failed() + self.volumes.failed()
    }
}

pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs() as i64).unwrap_or(0)
}

/// Runs one sweep. `verdict` decides for each listed container; the
/// selection's labels narrow the listing and say which labelled networks
/// and volumes may go.
pub async fn sweep_docker(
    backend: &DockerBackend,
    sweep: &DockerSweep,
    output: &OutputSettings,
    verdict: impl Fn(&Container) -> Verdict,
) -> Result<SweepResult, Error> {
    let query = ContainerQuery { labels: sweep.selection.labels.clone(), all: true };
    let listed = backend
        .list_containers(&query)
        .await
        .map_err(|error| Error::Docker { operation: "list containers".to_string(), reason: error.to_string() })?;
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
        tracing::info!("leaving {} alone: {}", item.resource, item.reason);
    }

    let resources: Vec<ResourceRef> = picked.iter().map(Container::resource).collect();
    let containers = if sweep.dry_run {
        for resource in &resources {
            tracing::info!("would remove {resource}");
        }
        RemovalReport::planned(resources)
    } else {
        let progress = Progress::bar(output, resources.len(), "removing containers");
        let remover = backend.remover(sweep.stop_timeout);
        remove_all(&remover, resources, &sweep.removal, &progress).await
    };

    let (networks, volumes) = sweep_unused_networks_and_volumes(backend, sweep, &picked, &containers).await?;
    Ok(SweepResult { dry_run: sweep.dry_run, containers, networks, volumes, protected })
}

/// After containers go, their compose projects' networks (and with
/// `--volumes`, named volumes) go too, but only for projects with no
/// container left. With label selectors, labelled networks and volumes go
/// when no container with those labels is left.
async fn sweep_unused_networks_and_volumes(
    backend: &DockerBackend,
    sweep: &DockerSweep,
    picked: &[Container],
    containers: &RemovalReport,
) -> Result<(RemovalReport, RemovalReport), Error> {
    let list_error = |what: &str, error: crate::backend::docker::DockerError| Error::Docker {
        operation: format!("list {what}"),
        reason: error.to_string(),
    };
    let gone: BTreeSet<&str> = containers
        .results
        .iter()
        .filter(|(_, outcome)| {
            use crate::backend::RemovalOutcome::*;
            matches!(outcome, Removed { .. } | AlreadyGone { .. } | WouldRemove)
        })
        .map(|(resource, _)| resource.id.as_str())
        .collect();
    let projects: BTreeSet<&str> = picked
        .iter()
        .filter(|container| gone.contains(container.id.as_str()))
        .filter_map(|container| container.compose_project.as_deref())
        .collect();
    if projects.is_empty() && sweep.selection.labels.is_empty() {
        return Ok(Default::default());
    }

    // What is left: in a dry run, everything but what would go.
    let remaining = backend
        .list_containers(&ContainerQuery { labels: Vec::new(), all: true })
        .await
        .map_err(|error| list_error("containers", error))?;
    let remaining: Vec<&Container> =
        remaining.iter().filter(|container| !sweep.dry_run || !gone.contains(container.id.as_str())).collect();
    let project_in_use =
        |project: &str| remaining.iter().any(|container| container.compose_project.as_deref() == Some(project));
    let labels_in_use = !sweep.selection.labels.is_empty()
        && remaining
            .iter()
            .any(|container| sweep.selection.labels.iter().all(|selector| selector.matches(&container.labels)));
    let emptied: BTreeSet<&str> = projects.into_iter().filter(|project| !project_in_use(project)).collect();

    let wanted = |labels: &BTreeMap<String, String>| {
        let by_project = labels.get(COMPOSE_PROJECT_LABEL).is_some_and(|project| emptied.contains(project.as_str()));
        let by_label = !sweep.selection.labels.is_empty()
            && !labels_in_use
            && sweep.selection.labels.iter().all(|selector| selector.matches(labels));
        by_project || by_label
    };

    let networks: Vec<ResourceRef> = backend
        .list_networks(&[])
        .await
        .map_err(|error| list_error("networks", error))?
        .into_iter()
        .filter(|network| wanted(&network.labels))
        .map(|network| network.resource)
        .collect();
    let volumes: Vec<ResourceRef> = if sweep.volumes {
        backend
            .list_volumes(&[])
            .await
            .map_err(|error| list_error("volumes", error))?
            .into_iter()
            .filter(|volume| wanted(&volume.labels))
            .map(|volume| volume.resource)
            .collect()
    } else {
        Vec::new()
    };

    if sweep.dry_run {
        for resource in networks.iter().chain(&volumes) {
            tracing::info!("would remove {resource}");
        }
        return Ok((RemovalReport::planned(networks), RemovalReport::planned(volumes)));
    }
    let remover = backend.remover(None);
    let hidden = Progress::hidden();
    let networks = remove_all(&remover, networks, &sweep.removal, &hidden).await;
    let volumes = remove_all(&remover, volumes, &sweep.removal, &hidden).await;
    Ok((networks, volumes))
}
