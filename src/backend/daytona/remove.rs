//! Deleting sandboxes and seeing each deletion through: Daytona deletes
//! asynchronously (`destroying` can last), so every accepted delete is
//! followed by polling the sandbox until it answers 404.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::stream::StreamExt;
use tokio::time::Instant;

use super::client::DaytonaBackend;
use super::model::DaytonaError;
use crate::backend::{remove_all, RemovalOptions, Remover};
use crate::events::{Events, RemovalEvent};
use crate::resource::{RemovalOutcome, RemovalReport, ResourceRef};

/// How long accepted deletes are polled for 404 before they count as pending.
pub(crate) const VERIFY_FOR: Duration = Duration::from_secs(120);

/// Deletes one sandbox per call, for [`remove_all`].
pub(crate) struct DaytonaRemover<'a> {
    pub(crate) backend: &'a DaytonaBackend,
}

impl Remover for DaytonaRemover<'_> {
    type Error = DaytonaError;

    async fn remove_once(&self, resource: &ResourceRef) -> Result<(), DaytonaError> {
        match self.backend.delete(&resource.id).await {
            // 409 also answers a second delete of a sandbox already on its way out
            // (our own earlier attempt whose answer was lost): that is success.
            Err(conflict) if conflict.status == Some(409) => match self.backend.get(&resource.id).await? {
                None => Ok(()),
                Some(sandbox) if sandbox.is_being_deleted() => Ok(()),
                Some(_) => Err(conflict),
            },
            other => other,
        }
    }
}

/// A [`DaytonaRemover`] that hands each accepted delete to the watcher at once.
struct Announcing<'a> {
    remover: DaytonaRemover<'a>,
    accepted: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Remover for Announcing<'_> {
    type Error = DaytonaError;
    const FINISHES_LATER: bool = true;

    async fn remove_once(&self, resource: &ResourceRef) -> Result<(), DaytonaError> {
        let result = self.remover.remove_once(resource).await;
        if result.is_ok() {
            let _ = self.accepted.send(resource.id.clone());
        }
        result
    }
}

/// How often the sandboxes whose deletion was accepted are looked at.
const LOOK_EVERY: Duration = Duration::from_millis(50);
/// With this many or more due for a look, one list of the sandboxes still
/// `destroying` narrows down which may be gone, instead of one lookup each.
const LIST_FROM: usize = 4;
/// How long a sandbox that a lookup found still there waits for the next one, at most.
const LONGEST_PAUSE: Duration = Duration::from_secs(2);

/// Deletes sandboxes with retry and bounded parallelism and, while the
/// other deletes go on, sees each accepted one through to a 404, for at most
/// `verify_for` after its delete. One still there after that is `Pending`
/// (deletion is asynchronous: `destroying` can last). Deletes and looks
/// count against different throttlers, so overlapping them costs nothing
/// against the rate limits.
pub(crate) async fn remove_sandboxes(
    backend: &DaytonaBackend,
    sandboxes: Vec<ResourceRef>,
    options: &RemovalOptions,
    events: &Events,
    verify_for: Duration,
) -> RemovalReport {
    let (accepted, announced) = tokio::sync::mpsc::unbounded_channel();
    let deleting = async move {
        let remover = Announcing { remover: DaytonaRemover { backend }, accepted };
        // The remover, and with it the channel, ends with the deletes.
        remove_all(&remover, sandboxes, options, events).await
    };
    let (mut report, still_there) =
        tokio::join!(deleting, watch_until_gone(backend, announced, options.parallel, verify_for));
    // Accepted deletes end here: removed once the sandbox answered 404, else pending.
    for (resource, outcome) in &mut report.results {
        if let RemovalOutcome::Removed { attempts } = *outcome {
            if still_there.contains(&resource.id) {
                *outcome = RemovalOutcome::Pending { attempts };
            }
            events.removal(RemovalEvent::Outcome { resource, outcome });
        }
    }
    report
}

/// A sandbox whose deletion was accepted, waiting to answer 404.
struct Waiting {
    deadline: Instant,
    next_look: Instant,
    /// The wait before the look after a lookup that found it still there.
    pause: Duration,
}

/// Sees every sandbox announced on `accepted` through to a 404, for at
/// most `verify_for` after its announcement; returns those still there then.
///
/// Every `LOOK_EVERY`, the sandboxes due for a look are narrowed down by one
/// list of those still `destroying` (when several are due), and only those
/// absent from it are looked up: a list may show a sandbox absent that is
/// not gone, so only a lookup's 404 proves a deletion finished. That is one
/// lookup for most sandboxes, against the API's budget for reads.
async fn watch_until_gone(
    backend: &DaytonaBackend,
    mut accepted: tokio::sync::mpsc::UnboundedReceiver<String>,
    parallel: usize,
    verify_for: Duration,
) -> BTreeSet<String> {
    let mut waiting: BTreeMap<String, Waiting> = BTreeMap::new();
    let mut still_there = BTreeSet::new();
    let mut open = true;
    let mut ticks = tokio::time::interval(LOOK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while open || !waiting.is_empty() {
        tokio::select! {
            announced = accepted.recv(), if open => match announced {
                Some(id) => {
                    let now = Instant::now();
                    waiting.insert(id, Waiting { deadline: now + verify_for, next_look: now, pause: LOOK_EVERY });
                }
                None => open = false,
            },
            _ = ticks.tick(), if !waiting.is_empty() => {
                look(backend, &mut waiting, parallel).await;
                let now = Instant::now();
                let expired: Vec<String> =
                    waiting.iter().filter(|(_, wait)| now >= wait.deadline).map(|(id, _)| id.clone()).collect();
                for id in expired {
                    waiting.remove(&id);
                    still_there.insert(id);
                }
            }
        }
    }
    still_there
}

/// One round of looks at the sandboxes due: those found gone leave
/// `waiting`; those a lookup found still there wait longer for the next.
async fn look(backend: &DaytonaBackend, waiting: &mut BTreeMap<String, Waiting>, parallel: usize) {
    let now = Instant::now();
    let due: Vec<String> = waiting.iter().filter(|(_, wait)| now >= wait.next_look).map(|(id, _)| id.clone()).collect();
    let to_look_up = narrow_down(backend, due).await;
    let looks = futures_util::stream::iter(to_look_up.into_iter().map(|id| async move {
        // An error while looking proves nothing: the sandbox counts as still there.
        let gone = matches!(backend.get(&id).await, Ok(None));
        (id, gone)
    }));
    let results: Vec<(String, bool)> = looks.buffer_unordered(parallel.max(1)).collect().await;
    for (id, gone) in results {
        if gone {
            waiting.remove(&id);
        } else if let Some(wait) = waiting.get_mut(&id) {
            wait.next_look = Instant::now() + wait.pause;
            wait.pause = (wait.pause * 2).min(LONGEST_PAUSE);
        }
    }
}

/// The sandboxes of `due` that may be gone: with several due, those absent
/// from the list of sandboxes still `destroying`; else (or when the list
/// fails) all of them.
async fn narrow_down(backend: &DaytonaBackend, due: Vec<String>) -> Vec<String> {
    if due.len() < LIST_FROM {
        return due;
    }
    match backend.list_in_states(&["destroying"]).await {
        Ok(listed) => {
            let destroying: BTreeSet<&str> = listed.iter().map(|sandbox| sandbox.id.as_str()).collect();
            due.into_iter().filter(|id| !destroying.contains(id.as_str())).collect()
        }
        Err(_) => due,
    }
}
