//! The creation watcher: follows the Docker engine's event stream while a
//! run lasts, and when a container that a running task claims (owner labels
//! or selectors) is created, records it in the ledger at once and tells the
//! task's live container count; a destroy event counts it down.
//!
//! This is how containers of harnesses that do not go through a proxy are
//! recorded near the moment of creation, so a crash of benchwarden between
//! creation and teardown still leaves a ledger row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;

use crate::backend::docker::DockerBackend;
use crate::events::{Event, Events, TaskEvent};
use crate::ledger::Ledger;
use crate::owner::Claims;
use crate::resource::{Kind, ResourceRef};

/// What a registered task claims, and its containers alive now.
struct Watched {
    claims: Claims,
    live: HashSet<String>,
}

type Registry = Arc<Mutex<HashMap<String, Watched>>>;

/// Handle to the watcher of one run.
#[derive(Clone)]
pub(crate) struct Watcher {
    registry: Registry,
}

impl Watcher {
    /// Starts following events from `since_unix` on (so nothing created
    /// between now and the first poll is missed). Ends with the runtime.
    pub(crate) fn spawn(docker: DockerBackend, ledger: Ledger, since_unix: i64, events: Events) -> Self {
        let registry: Registry = Arc::default();
        tokio::spawn(follow(docker, ledger, Arc::clone(&registry), since_unix, events));
        Watcher { registry }
    }

    /// Starts attributing creations to `task`.
    pub(crate) fn register(&self, task: &str, claims: Claims) {
        lock(&self.registry).insert(task.to_string(), Watched { claims, live: HashSet::new() });
    }

    pub(crate) fn unregister(&self, task: &str) {
        lock(&self.registry).remove(task);
    }
}

fn lock(registry: &Registry) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
    // A poisoned lock means a panic while counting; the counts are still usable.
    registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn follow(docker: DockerBackend, ledger: Ledger, registry: Registry, mut since: i64, events: Events) {
    loop {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["create".to_string(), "destroy".to_string()]),
        ]);
        let options = EventsOptions { since: Some(since.to_string()), until: None, filters: Some(filters) };
        let mut stream = docker.client().events(Some(options));
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { break };
            if let Some(time) = event.time {
                since = since.max(time);
            }
            let Some(actor) = event.actor else { continue };
            let Some(id) = actor.id else { continue };
            let attributes: BTreeMap<String, String> = actor.attributes.unwrap_or_default().into_iter().collect();
            let created = event.action.as_deref() != Some("destroy");
            for (task, run_id) in count(&registry, &id, &attributes, created, &events) {
                let name = attributes.get("name").cloned().unwrap_or_default();
                let resource = ResourceRef { kind: Kind::Container, id: id.clone(), name };
                events.emit(Event::Created { resource: &resource });
                if let Err(error) = ledger.record_resources(&run_id, &task, vec![resource]).await {
                    tracing::warn!("task {task}: cannot record a new container in the ledger: {error}");
                }
            }
        }
        // The stream ended or broke (daemon restart, request timeout): follow again from the last event seen.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Counts a created or destroyed container for every task that claims it,
/// telling each changed count; returns the (task, run) pairs that claim a
/// created one, for the ledger.
fn count(
    registry: &Registry,
    id: &str,
    attributes: &BTreeMap<String, String>,
    created: bool,
    events: &Events,
) -> Vec<(String, String)> {
    let mut claimed = Vec::new();
    for (task, watched) in lock(registry).iter_mut() {
        if !watched.claims.claims_labels(attributes) {
            continue;
        }
        let changed = if created { watched.live.insert(id.to_string()) } else { watched.live.remove(id) };
        if changed {
            events.task(TaskEvent::Live { task, containers: watched.live.len() });
        }
        if created {
            claimed.push((task.clone(), watched.claims.run_id.clone()));
        }
    }
    claimed
}
