//! The creation watcher: follows the Docker engine's event stream while a
//! run lasts, and when a container, network or volume that a running task
//! claims (owner labels or selectors) is created, records it in the ledger
//! at once; for containers it also keeps the run's live count (see
//! [`crate::limits`]), which a destroy event counts down, and tells each
//! task's.
//!
//! This is how what harnesses make without the proxy (`docker.proxy:
//! false`, or a client that bypasses `DOCKER_HOST`) is recorded near the
//! moment of creation, so a crash of benchwarden between creation and
//! teardown still leaves a ledger row, and the report can tell what the
//! harness removed itself from what benchwarden removed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;

use crate::backend::docker::DockerBackend;
use crate::events::{Event, Events, TaskEvent};
use crate::ledger::Ledger;
use crate::limits::LiveResources;
use crate::owner::Claims;
use crate::resource::{Kind, ResourceRef};

/// What each registered task claims.
type Registry = Arc<Mutex<HashMap<String, Claims>>>;

/// Handle to the watcher of one run.
#[derive(Clone)]
pub(crate) struct Watcher {
    registry: Registry,
}

impl Watcher {
    /// Starts following events from `since_unix` on (so nothing created
    /// between now and the first poll is missed). Ends with the runtime.
    pub(crate) fn spawn(
        docker: DockerBackend,
        ledger: Ledger,
        since_unix: i64,
        live: LiveResources,
        events: Events,
    ) -> Self {
        let registry: Registry = Arc::default();
        let follower = Follower { docker, ledger, registry: Arc::clone(&registry), live, events };
        tokio::spawn(follower.follow(since_unix));
        Watcher { registry }
    }

    /// Starts attributing creations to `task`.
    pub(crate) fn register(&self, task: &str, claims: Claims) {
        lock(&self.registry).insert(task.to_string(), claims);
    }

    pub(crate) fn unregister(&self, task: &str) {
        lock(&self.registry).remove(task);
    }
}

fn lock(registry: &Registry) -> std::sync::MutexGuard<'_, HashMap<String, Claims>> {
    // A poisoned lock means a panic while counting; the counts are still usable.
    registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One event as the watcher reads it.
struct Seen {
    resource: ResourceRef,
    created: bool,
    /// The labels the event carries (containers' events carry them; networks' and volumes' do not).
    attributes: BTreeMap<String, String>,
}

/// What a Docker event says was created or destroyed, if it is one we follow.
fn seen(event: EventMessage) -> Option<Seen> {
    let kind = match event.typ? {
        EventMessageTypeEnum::CONTAINER => Kind::Container,
        EventMessageTypeEnum::NETWORK => Kind::Network,
        EventMessageTypeEnum::VOLUME => Kind::Volume,
        _ => return None,
    };
    let created = match event.action.as_deref()? {
        "create" => true,
        "destroy" => false,
        _ => return None,
    };
    let actor = event.actor?;
    let attributes: BTreeMap<String, String> = actor.attributes.unwrap_or_default().into_iter().collect();
    let id = actor.id?;
    let name = match kind {
        Kind::Volume => id.clone(),
        _ => attributes.get("name").cloned().unwrap_or_default(),
    };
    Some(Seen { resource: ResourceRef { kind, id, name }, created, attributes })
}

struct Follower {
    docker: DockerBackend,
    ledger: Ledger,
    registry: Registry,
    live: LiveResources,
    events: Events,
}

impl Follower {
    async fn follow(self, mut since: i64) {
        loop {
            let filters = HashMap::from([
                ("type".to_string(), vec!["container".into(), "network".into(), "volume".into()]),
                ("event".to_string(), vec!["create".into(), "destroy".into()]),
            ]);
            let options = EventsOptions { since: Some(since.to_string()), until: None, filters: Some(filters) };
            let mut stream = self.docker.client().events(Some(options));
            while let Some(Ok(event)) = stream.next().await {
                since = since.max(event.time.unwrap_or_default());
                if let Some(seen) = seen(event) {
                    self.attribute(seen).await;
                }
            }
            // The stream ended or broke (daemon restart, request timeout): follow again from the last event seen.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Records a claimed creation for every task that claims it, and counts containers.
    async fn attribute(&self, mut seen: Seen) {
        if seen.resource.kind != Kind::Container && seen.created {
            // A network's or volume's event carries no labels: ask, while some task may claim it.
            if lock(&self.registry).is_empty() {
                return;
            }
            match self.docker.labels_of(&seen.resource).await {
                Ok(Some(labels)) => seen.attributes = labels,
                // Gone already, or the daemon did not answer: teardown's listing still finds what is left.
                Ok(None) | Err(_) => return,
            }
        }
        for (task, run_id) in count(&self.registry, &self.live, &seen, &self.events) {
            self.events.emit(Event::Created { resource: &seen.resource });
            if let Err(error) = self.ledger.record_resources(&run_id, &task, vec![seen.resource.clone()]).await {
                tracing::warn!("task {task}: cannot record a new {} in the ledger: {error}", seen.resource.kind);
            }
        }
    }
}

/// Counts a created container for every task that claims it, and a
/// destroyed one for the task that had it, telling each changed count;
/// returns the (task, run) pairs that claim a created resource, for the
/// ledger.
fn count(registry: &Registry, live: &LiveResources, seen: &Seen, events: &Events) -> Vec<(String, String)> {
    let resource = &seen.resource;
    if !seen.created {
        if let Some((task, containers)) = live.remove(resource.kind, &resource.id) {
            events.task(TaskEvent::Live { task: &task, containers });
        }
        return Vec::new();
    }
    let mut claimed = Vec::new();
    for (task, claims) in lock(registry).iter() {
        if !claims.claims_labels(&seen.attributes) {
            continue;
        }
        if resource.kind == Kind::Container {
            if let Some(containers) = live.add(task, resource.kind, &resource.id) {
                events.task(TaskEvent::Live { task, containers });
            }
        }
        claimed.push((task.clone(), claims.run_id.clone()));
    }
    claimed
}
