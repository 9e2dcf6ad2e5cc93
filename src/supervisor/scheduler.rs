//! Runs tasks at most `jobs` at once, and starts no new task once a
//! shutdown has been requested, nor while the run's limits leave no room
//! (see [`crate::limits`]). A task gives its slot back as soon as every
//! process of it has gone; its teardown goes on beside the next task.

use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::signal::Shutdown;
use super::task::{run_task, tear_down_task, RunContext, TaskSpec};
use crate::events::{Event, TaskReport};
use crate::limits::{LiveResources, Waiting};

/// Runs every task and returns their reports in the benchmark's order.
pub(crate) async fn run_all(context: Arc<RunContext>, specs: Vec<TaskSpec>, jobs: usize) -> Vec<TaskReport> {
    let semaphore = Arc::new(Semaphore::new(jobs.max(1)));
    let mut running = JoinSet::new();
    let mut reports: Vec<Option<TaskReport>> = vec![None; specs.len()];
    let mut shutdown = context.shutdown.clone();
    for spec in specs.iter().cloned() {
        let Some(permit) = next_slot(&semaphore, &context.live, &mut shutdown, &context).await else {
            break;
        };
        // Counted as running before the next admission looks, so two tasks cannot take one place.
        context.live.start(&spec.name);
        let context = Arc::clone(&context);
        running.spawn(async move {
            let index = spec.index;
            let ended = run_task(&context, spec).await;
            drop(permit);
            (index, tear_down_task(&context, ended).await)
        });
    }
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok((index, report)) => reports[index] = Some(report),
            Err(error) => tracing::error!("a task supervisor failed: {error}"),
        }
    }
    specs
        .iter()
        .zip(reports)
        .map(|(spec, report)| {
            report.unwrap_or_else(|| {
                TaskReport::unstarted(&spec.name, context.log_dir.join(format!("{}.log", spec.name)))
            })
        })
        .collect()
}

/// A `-j` slot, once the limits leave room for one more task; `None` once
/// a shutdown has been requested.
async fn next_slot(
    semaphore: &Arc<Semaphore>,
    live: &LiveResources,
    shutdown: &mut watch::Receiver<Shutdown>,
    context: &RunContext,
) -> Option<OwnedSemaphorePermit> {
    let permit = tokio::select! {
        biased;
        Ok(_) = shutdown.wait_for(|state| state.is_requested()) => return None,
        permit = Arc::clone(semaphore).acquire_owned() => permit.ok()?,
    };
    let mut changes = live.subscribe();
    let mut told = None;
    loop {
        if shutdown.borrow().is_requested() {
            return None;
        }
        let admission = live.admission();
        if admission.err() != told {
            let reason = |waiting: Option<Waiting>| waiting.map(|waiting| (waiting.kind, waiting.learning));
            let news = reason(admission.err()) != reason(told);
            told = admission.err();
            context.events.emit(Event::Waiting { waiting: told.as_ref(), news });
        }
        if admission.is_ok() {
            return Some(permit);
        }
        tokio::select! {
            biased;
            Ok(_) = shutdown.wait_for(|state| state.is_requested()) => return None,
            changed = changes.changed() => changed.ok()?,
        }
    }
}
