//! Backends list and destroy one kind of service's resources each. This
//! module holds what they share: the bounded, retried, parallel removal
//! used by cleanup, teardown and recovery alike, which tells of every
//! outcome as an event.

pub mod daytona;
pub mod docker;
pub(crate) mod images;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};

use crate::events::{Events, RemovalEvent};
use crate::resource::{RemovalError, RemovalOutcome, RemovalReport, ResourceRef};
use crate::retry::{Call, Failure, RetryPolicy, Success};

/// Removals at once, unless the user says otherwise (`--parallel`).
pub const DEFAULT_PARALLEL: usize = 16;

/// Options for a batch of removals.
#[derive(Debug, Clone)]
pub struct RemovalOptions {
    pub parallel: usize,
    pub fail_fast: bool,
    pub retry: RetryPolicy,
}

/// Something that can remove one resource with one call. Errors are
/// classified by the backend's error type.
pub trait Remover: Sync {
    type Error: crate::retry::Classify
        + crate::retry::CallTimeout
        + std::error::Error
        + fmt::Display
        + Send
        + Sync
        + 'static;

    /// A removal this remover's service accepts but finishes later (a
    /// Daytona delete): its success is told as accepted, and its outcome
    /// by whoever sees it through.
    const FINISHES_LATER: bool = false;

    fn remove_once(&self, resource: &ResourceRef) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
}

/// Removes `resources` with retry and bounded parallelism, telling each
/// outcome as an event. Never returns early: every resource gets an
/// outcome.
pub async fn remove_all<R: Remover>(
    remover: &R,
    resources: Vec<ResourceRef>,
    options: &RemovalOptions,
    events: &Events,
) -> RemovalReport {
    let stop_starting = Arc::new(AtomicBool::new(false));
    let mut indexed: Vec<(usize, ResourceRef, RemovalOutcome)> = stream::iter(resources.into_iter().enumerate())
        .map(|(index, resource)| {
            let stop_starting = Arc::clone(&stop_starting);
            async move {
                let outcome = if stop_starting.load(Ordering::SeqCst) {
                    RemovalOutcome::NotAttempted
                } else {
                    remove_one(remover, &resource, options, events).await
                };
                if options.fail_fast && matches!(outcome, RemovalOutcome::Failed { .. }) {
                    stop_starting.store(true, Ordering::SeqCst);
                }
                match outcome {
                    RemovalOutcome::Removed { .. } if R::FINISHES_LATER => {
                        events.removal(RemovalEvent::Accepted { resource: &resource })
                    }
                    _ => events.removal(RemovalEvent::Outcome { resource: &resource, outcome: &outcome }),
                }
                (index, resource, outcome)
            }
        })
        .buffer_unordered(options.parallel.max(1))
        .collect()
        .await;
    indexed.sort_by_key(|(index, _, _)| *index);
    RemovalReport { results: indexed.into_iter().map(|(_, resource, outcome)| (resource, outcome)).collect() }
}

/// One resource, with retry; the error of a failure keeps its class.
async fn remove_one<R: Remover>(
    remover: &R,
    resource: &ResourceRef,
    options: &RemovalOptions,
    events: &Events,
) -> RemovalOutcome {
    let what = format!("remove {resource}");
    let call = Call { what: &what, service: resource.kind.service(), kind: Some(resource.kind) };
    match options.retry.run(call, events, || remover.remove_once(resource)).await {
        Ok((Success::Done(()), attempts)) => RemovalOutcome::Removed { attempts },
        Ok((Success::AlreadyDone, attempts)) => RemovalOutcome::AlreadyGone { attempts },
        Err(Failure { error, attempts, class }) => {
            RemovalOutcome::Failed { attempts, error: RemovalError::new(class, error) }
        }
    }
}
