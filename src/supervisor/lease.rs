//! Keeping the run's Daytona leases alive (see `owner::lease`): every third
//! of the lease, one listing of the run's sandboxes (by its owner label),
//! then `PUT …/labels` for each lease due, with the sandbox's other labels
//! kept. A round that fails is tried again after half a period, so two
//! failed rounds in a row still renew in time. The calls go through the
//! backend's pacer like every other, a few at once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::backend::daytona::{DaytonaBackend, DaytonaError};
use crate::clock::now_unix;
use crate::events::{Event, Events};
use crate::owner::lease;

/// Renewals in flight at once: a small share of the pacer's room.
const RENEWALS_AT_ONCE: usize = 4;

/// The renewals running for one run, until [`LeaseKeeper::stop`].
pub(crate) struct LeaseKeeper {
    stop: CancellationToken,
    renewing: tokio::task::JoinHandle<()>,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Round {
    renewed: usize,
    failed: usize,
    error: Option<String>,
}

impl LeaseKeeper {
    /// Starts renewing `run_id`'s leases of length `lease`.
    pub(crate) fn start(backend: Arc<DaytonaBackend>, run_id: String, lease: Duration, events: Events) -> Self {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let renewing = tokio::spawn(async move {
            let mut wait = lease::renewal_period(lease);
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                let round = renew_round(&backend, &run_id, lease).await;
                wait = match round.failed {
                    0 => lease::renewal_period(lease),
                    _ => lease::retry_after_failure(lease),
                };
                let error = round.error.as_deref();
                events.emit(Event::LeasesRenewed { renewed: round.renewed, failed: round.failed, error, next: wait });
            }
        });
        LeaseKeeper { stop, renewing }
    }

    /// Stops renewing (a round under way is abandoned: its leases stay as
    /// they were, the run's teardown deletes the sandboxes next).
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.renewing.await;
    }
}

/// One round: the run's sandboxes listed once, each lease due renewed.
async fn renew_round(backend: &DaytonaBackend, run_id: &str, lease: Duration) -> Round {
    let sandboxes = match backend.list(&lease::run_filter(run_id)).await {
        Ok(sandboxes) => sandboxes,
        Err(error) => {
            return Round { renewed: 0, failed: 1, error: Some(format!("list the run's sandboxes: {error}")) }
        }
    };
    let now = now_unix();
    let due = sandboxes
        .into_iter()
        .filter(|sandbox| !sandbox.is_being_deleted() && lease::needs_renewal(&sandbox.labels, now, lease));
    let answers: Vec<(String, Result<bool, DaytonaError>)> = futures_util::stream::iter(due)
        .map(|sandbox| async move {
            let labels = lease::renewed(&sandbox.labels, now, lease);
            (sandbox.id.clone(), backend.put_labels(&sandbox.id, &labels).await)
        })
        .buffer_unordered(RENEWALS_AT_ONCE)
        .collect()
        .await;
    tally(answers)
}

/// A round's answers counted; a sandbox gone meanwhile is neither.
fn tally(answers: Vec<(String, Result<bool, DaytonaError>)>) -> Round {
    let mut round = Round::default();
    for (id, answer) in answers {
        match answer {
            Ok(true) => round.renewed += 1,
            Ok(false) => {}
            Err(error) => {
                round.failed += 1;
                round.error.get_or_insert_with(|| format!("sandbox {id}: {error}"));
            }
        }
    }
    round
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_counts_renewals_and_failures_and_not_what_is_gone() {
        let failure = DaytonaError { status: Some(503), message: "unavailable".into(), retry_after: None };
        let answers = vec![
            ("a".to_string(), Ok(true)),
            ("b".to_string(), Ok(false)),
            ("c".to_string(), Err(failure.clone())),
            ("d".to_string(), Err(failure)),
        ];
        let round = tally(answers);
        assert_eq!((round.renewed, round.failed), (1, 2));
        assert!(round.error.unwrap().starts_with("sandbox c: unavailable"));
    }
}
