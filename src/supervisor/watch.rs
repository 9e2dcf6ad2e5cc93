//! The creation watcher: follows the Docker engine's event stream while a
//! run lasts, and when a container that a running task claims (owner labels
//! or selectors) is created, records it in the ledger at once and counts it
//! as live for that task's line; a destroy event counts it down.
//!
//! This is how containers of harnesses that do not go through a proxy are
//! recorded near the moment of creation, so a crash of benchwarden between
//! creation and teardown still leaves a ledger row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;

use crate::backend::docker::DockerBackend;
use crate::backend::{Kind, ResourceRef};
use crate::ledger::Ledger;
use crate::teardown::Claims;

/// Live containers of one task, as the event stream tells.
#[derive(Default)]
pub struct LiveCount {
    containers: Mutex<HashSet<String>>,
    count: AtomicUsize,
}

impl LiveCount {
    pub fn get(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn created(&self, id: &str) {
        let mut containers = self.containers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if containers.insert(id.to_string()) {
            self.count.store(containers.len(), Ordering::Relaxed);
        }
    }

    fn destroyed(&self, id: &str) {
        let mut containers = self.containers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if containers.remove(id) {
            self.count.store(containers.len(), Ordering::Relaxed);
        }
    }
}

type Registry = Arc<Mutex<HashMap<String, (Claims, Arc<LiveCount>)>>>;

/// Handle to the watcher of one run.
#[derive(Clone)]
pub struct Watcher {
    registry: Registry,
}

impl Watcher {
    /// Starts following events from `since_unix` on (so nothing created
    /// between now and the first poll is missed). Ends with the runtime.
    pub fn spawn(docker: DockerBackend, ledger: Ledger, since_unix: i64) -> Self {
        let registry: Registry = Arc::default();
        tokio::spawn(follow(docker, ledger, Arc::clone(&registry), since_unix));
        Watcher { registry }
    }

    /// Starts attributing creations to `task`.
    pub fn register(&self, task: &str, claims: Claims) -> Arc<LiveCount> {
        let live = Arc::new(LiveCount::default());
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(task.to_string(), (claims, Arc::clone(&live)));
        live
    }

    pub fn unregister(&self, task: &str) {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(task);
    }
}

async fn follow(docker: DockerBackend, ledger: Ledger, registry: Registry, mut since: i64) {
    loop {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["create".to_string(), "destroy".to_string()]),
        ]);
        let options = EventsOptions { since: Some(since.to_string()), until: None, filters: Some(filters) };
        let mut events = docker.client().events(Some(options));
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            if let Some(time) = event.time {
                since = since.max(time);
            }
            let Some(actor) = event.actor else { continue };
            let Some(id) = actor.id else { continue };
            let attributes: BTreeMap<String, String> = actor.attributes.unwrap_or_default().into_iter().collect();
            let action = event.action.unwrap_or_default();
            let claimed: Vec<(String, Claims, Arc<LiveCount>)> = registry
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .iter()
                .filter(|(_, (claims, _))| claims.claims_labels(&attributes))
                .map(|(task, (claims, live))| (task.clone(), claims.clone(), Arc::clone(live)))
                .collect();
            for (task, claims, live) in claimed {
                if action == "destroy" {
                    live.destroyed(&id);
                    continue;
                }
                live.created(&id);
                let name = attributes.get("name").cloned().unwrap_or_default();
                let resource = ResourceRef { kind: Kind::Container, id: id.clone(), name };
                if let Err(error) = ledger.record_resources(&claims.run_id, &task, vec![resource]).await {
                    tracing::warn!("task {task}: cannot record a new container in the ledger: {error}");
                }
            }
        }
        // The stream ended or broke (daemon restart, request timeout): follow again from the last event seen.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
