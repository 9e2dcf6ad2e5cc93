//! Deleting sandboxes and seeing each deletion through: Daytona deletes
//! asynchronously (`destroying` can last), so every accepted delete is
//! followed by polling the sandbox until it answers 404.

use std::time::Duration;

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

/// How long after an accepted delete the first look is taken, and the
/// longest pause between looks.
const FIRST_LOOK: Duration = Duration::from_millis(250);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);

/// Deletes sandboxes with retry and bounded parallelism and, while the
/// other deletes go on, polls each accepted one until it answers 404, for at
/// most `verify_for` after its delete. One still there after that is
/// `Pending` (deletion is asynchronous: `destroying` can last). Deletes and
/// polls count against different throttlers, so overlapping them costs
/// nothing against the rate limits.
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

/// Polls every sandbox announced on `accepted` until it answers 404, at most
/// `parallel` calls at once; returns those still there `verify_for` after
/// their announcement.
async fn watch_until_gone(
    backend: &DaytonaBackend,
    mut accepted: tokio::sync::mpsc::UnboundedReceiver<String>,
    parallel: usize,
    verify_for: Duration,
) -> std::collections::BTreeSet<String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};

    let slots = tokio::sync::Semaphore::new(parallel.max(1));
    let watch = |id: String| {
        let slots = &slots;
        async move {
            let deadline = Instant::now() + verify_for;
            let mut pause = FIRST_LOOK;
            loop {
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
                let gone = {
                    let _slot = slots.acquire().await;
                    // An error while polling proves nothing: the sandbox counts as still there.
                    matches!(backend.get(&id).await, Ok(None))
                };
                if gone || Instant::now() >= deadline {
                    return (id, gone);
                }
                pause = (pause * 3 / 2).min(LONGEST_PAUSE);
            }
        }
    };
    let mut watches = FuturesUnordered::new();
    let mut still_there = std::collections::BTreeSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            announced = accepted.recv(), if open => match announced {
                Some(id) => watches.push(watch(id)),
                None => open = false,
            },
            Some((id, gone)) = watches.next(), if !watches.is_empty() => {
                if !gone {
                    still_there.insert(id);
                }
            }
            else => break,
        }
    }
    still_there
}
