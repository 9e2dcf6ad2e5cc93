//! `run --keep-failed`: whether a task's resources stay in place after it
//! ends (a pure decision), and keeping them: recorded in the ledger and
//! marked kept, so that only `recover --include-kept`, or a pre-run sweep
//! once they are older than the cleanup age, takes them.

use std::time::Duration;

use super::task::RunContext;
use crate::backend::daytona::DaytonaBackend;
use crate::clock::now_unix;
use crate::events::{ResourceFates, TaskEvent, TaskOutcome, TaskReport};
use crate::owner::{lease, Claims};
use crate::resource::{Kind, ResourceRef};
use crate::results::{TaskResult, Verdict};
use crate::teardown::{self, Backends};

/// What `run` was told about keeping resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeepPolicy {
    /// `--keep-failed`.
    pub(crate) keep_failed: bool,
    /// `--fail-on-unresolved`: an unresolved (or error) verdict fails the task.
    pub(crate) fail_on_unresolved: bool,
    /// How long a kept sandbox's lease lasts: the cleanup age, after which
    /// the pre-run sweep would take it anyway.
    pub(crate) kept_for: Duration,
}

/// Whether a task that ended so keeps its resources. A task keeps them
/// when it failed: it exited non-zero, timed out, or (with
/// `--fail-on-unresolved`, the same rule as the exit status) its harness's
/// own result is not resolved. An interrupted task does not: Ctrl-C asks
/// for everything to stop and go. A task that never started made nothing.
pub(crate) fn keeps(policy: KeepPolicy, outcome: TaskOutcome, result: Option<&TaskResult>) -> bool {
    if !policy.keep_failed {
        return false;
    }
    match outcome {
        TaskOutcome::Failed | TaskOutcome::TimedOut => true,
        TaskOutcome::Passed => {
            policy.fail_on_unresolved && result.is_some_and(|result| result.verdict != Verdict::Resolved)
        }
        TaskOutcome::Interrupted | TaskOutcome::SpawnFailed | TaskOutcome::NotStarted => false,
    }
}

/// Keeps the task's resources when [`keeps`] says so, and fills the report.
/// Returns `false` when the task's resources are to be torn down instead:
/// it did not fail, or keeping them failed (a teardown is then the safe
/// way out, and the failure is logged).
pub(crate) async fn keep_if_failed(
    context: &RunContext,
    claims: &Claims,
    report: &mut TaskReport,
) -> Option<Vec<ResourceRef>> {
    if !keeps(context.keep, report.outcome, report.result.as_ref()) {
        return None;
    }
    context.events.task(TaskEvent::Keeping { task: &report.task });
    let backends = Backends { docker: context.docker.as_ref(), daytona: context.daytona.as_deref() };
    match teardown::keep(backends, &context.ledger, claims).await {
        Ok(kept) => {
            report.resources_found = kept.kept.len();
            report.resources_kept = kept.kept.iter().map(ToString::to_string).collect();
            report.resources = ResourceFates {
                created: kept.kept.len() + kept.removed_by_others.len(),
                removed_by_harness: kept.removed_by_others.len(),
                kept: kept.kept.len(),
                ..ResourceFates::default()
            };
            if let Some(daytona) = &context.daytona {
                lease_kept(daytona, &kept.kept, context.keep.kept_for).await;
            }
            Some(kept.kept)
        }
        Err(error) => {
            tracing::error!("task {}: cannot keep its resources ({error}); tearing them down instead", report.task);
            None
        }
    }
}

/// Gives each kept sandbox a lease as long as the cleanup age, since no
/// run renews it once this one ends; other machines leave it alone until
/// then. A lease not written is logged: the sandbox keeps its current one.
async fn lease_kept(daytona: &DaytonaBackend, kept: &[ResourceRef], kept_for: Duration) {
    for sandbox in kept.iter().filter(|resource| resource.kind == Kind::Sandbox) {
        let written = match daytona.look_up(&sandbox.id).await {
            Ok(Some(found)) => {
                daytona.put_labels(&sandbox.id, &lease::renewed(&found.labels, now_unix(), kept_for)).await
            }
            Ok(None) => Ok(false),
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            tracing::warn!("{sandbox}: kept, but its lease could not be lengthened ({error}); it keeps a run's lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn result(verdict: Verdict) -> TaskResult {
        TaskResult { verdict, score: None, trials: 1, detail: None, path: PathBuf::from("r.json") }
    }

    #[test]
    fn failed_and_timed_out_tasks_keep_only_with_keep_failed() {
        let on = KeepPolicy { keep_failed: true, fail_on_unresolved: false, ..KeepPolicy::default() };
        assert!(keeps(on, TaskOutcome::Failed, None));
        assert!(keeps(on, TaskOutcome::TimedOut, None));
        assert!(!keeps(KeepPolicy::default(), TaskOutcome::Failed, None));
        assert!(!keeps(on, TaskOutcome::Passed, None));
    }

    #[test]
    fn interrupted_and_unstarted_tasks_never_keep() {
        let on = KeepPolicy { keep_failed: true, fail_on_unresolved: true, ..KeepPolicy::default() };
        for outcome in [TaskOutcome::Interrupted, TaskOutcome::SpawnFailed, TaskOutcome::NotStarted] {
            assert!(!keeps(on, outcome, None), "{outcome:?}");
        }
    }

    #[test]
    fn an_unresolved_verdict_keeps_only_with_fail_on_unresolved() {
        let unresolved = result(Verdict::Unresolved);
        let plain = KeepPolicy { keep_failed: true, fail_on_unresolved: false, ..KeepPolicy::default() };
        let strict = KeepPolicy { keep_failed: true, fail_on_unresolved: true, ..KeepPolicy::default() };
        assert!(!keeps(plain, TaskOutcome::Passed, Some(&unresolved)));
        assert!(keeps(strict, TaskOutcome::Passed, Some(&unresolved)));
        assert!(keeps(strict, TaskOutcome::Passed, Some(&result(Verdict::Error))));
        assert!(!keeps(strict, TaskOutcome::Passed, Some(&result(Verdict::Resolved))));
    }
}
