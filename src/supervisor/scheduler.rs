//! Runs tasks at most `jobs` at once, and starts no new task once a
//! shutdown has been requested.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::task::{run_task, RunContext, TaskSpec};
use crate::events::TaskReport;

/// Runs every task and returns their reports in the benchmark's order.
pub(crate) async fn run_all(context: Arc<RunContext>, specs: Vec<TaskSpec>, jobs: usize) -> Vec<TaskReport> {
    let semaphore = Arc::new(Semaphore::new(jobs.max(1)));
    let mut running = JoinSet::new();
    let mut reports: Vec<Option<TaskReport>> = vec![None; specs.len()];
    let mut shutdown = context.shutdown.clone();
    for spec in specs.iter().cloned() {
        let permit = tokio::select! {
            biased;
            Ok(_) = shutdown.wait_for(|state| state.is_requested()) => break,
            permit = Arc::clone(&semaphore).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        if context.shutdown.borrow().is_requested() {
            break;
        }
        let context = Arc::clone(&context);
        running.spawn(async move {
            let index = spec.index;
            let report = run_task(context, spec).await;
            drop(permit);
            (index, report)
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
