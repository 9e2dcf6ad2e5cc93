//! Daytona sweeps: which sandboxes a selection (owner, state, age, labels)
//! picks, which a live run (or another host's current lease) protects, which
//! another host's run left with its lease ended, and their deletion seen
//! through to 404 (or, in a dry run, which would go).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{plan, Protected, Verdict};
use crate::backend::daytona::{remove_sandboxes, DaytonaBackend, Sandbox, VERIFY_FOR};
use crate::backend::RemovalOptions;
use crate::config::Selector;
use crate::errors::Error;
use crate::events::{Event, Events, RemovalEvent};
use crate::ledger::{Ledger, RunRecord};
use crate::owner::lease::{self, ExpiredLease};
use crate::owner::{protected_by_live_run, template_claims, LABEL_HOST, LABEL_RUN};
use crate::resource::{LabelSelector, RemovalOutcome, RemovalReport};

/// Whose sandboxes are candidates at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SandboxOwners {
    /// Sandboxes of benchwarden runs on this host, those the selectors
    /// claim, and those another host's run left with its lease ended:
    /// several machines may share one organisation.
    ThisHost { selectors: Vec<Selector> },
    /// Only those another host's run left with its lease ended (the pre-run sweep's).
    ExpiredLeases,
    /// Every sandbox of the organisation (what the old cleanup scripts did).
    Anyone,
    /// Sandboxes with all of these labels, whoever made them.
    Labelled(Vec<LabelSelector>),
}

/// Which sandboxes a sweep picks. Every set filter must match.
#[derive(Debug, Clone)]
pub(crate) struct SandboxSelection {
    pub(crate) owners: SandboxOwners,
    /// Only stopped, errored or failed-to-build sandboxes.
    pub(crate) stopped: bool,
    /// Only sandboxes created longer ago than this.
    pub(crate) older_than: Option<Duration>,
    /// How long after its end another host's lease still protects.
    pub(crate) lease_grace: Duration,
    /// Whether a sandbox whose lease ended goes whatever its state and age
    /// (the policies of `cleanup all` and `sweep`, whose defaults judge
    /// abandonment the lease already proves), or only past the filters
    /// (`cleanup daytona`, whose filters the user gave).
    pub(crate) expired_leases_go_whatever_state: bool,
}

impl SandboxSelection {
    /// The labels the API can filter the listing by (`K=V` selectors).
    fn label_filter(&self) -> BTreeMap<String, String> {
        match &self.owners {
            SandboxOwners::Labelled(labels) => {
                labels.iter().filter_map(|label| Some((label.key.clone(), label.value.clone()?))).collect()
            }
            SandboxOwners::ThisHost { .. } | SandboxOwners::ExpiredLeases | SandboxOwners::Anyone => BTreeMap::new(),
        }
    }

    fn is_candidate(&self, sandbox: &Sandbox, this_host: &str, expired: bool) -> bool {
        let labels = &sandbox.labels;
        match &self.owners {
            SandboxOwners::Anyone => true,
            SandboxOwners::Labelled(selectors) => selectors.iter().all(|label| label.matches(labels)),
            SandboxOwners::ExpiredLeases => expired,
            SandboxOwners::ThisHost { selectors } => {
                let ours =
                    labels.contains_key(LABEL_RUN) && labels.get(LABEL_HOST).is_some_and(|host| host == this_host);
                ours || expired || selectors.iter().any(|selector| template_claims(selector, labels, None))
            }
        }
    }

    /// Whether the owners chosen follow leases: this host's sweeps do; an
    /// explicit `--any-owner` or `--label` choice stands as given.
    fn follows_leases(&self) -> bool {
        matches!(self.owners, SandboxOwners::ThisHost { .. } | SandboxOwners::ExpiredLeases)
    }

    /// The lease another host's run left to lapse, when this sweep may collect for it.
    pub(crate) fn expired_lease(&self, sandbox: &Sandbox, this_host: &str, now: i64) -> Option<ExpiredLease> {
        self.follows_leases().then(|| lease::expired_elsewhere(&sandbox.labels, this_host, now, self.lease_grace))?
    }

    /// What happens to one sandbox. Whether another host's run is alive
    /// cannot be told from here, but its lease tells: current, the sandbox
    /// is protected; ended past the grace, it is free to collect. Without a
    /// lease label (older versions, hand-made), the owners chosen decide.
    pub(crate) fn verdict(&self, sandbox: &Sandbox, runs: &[RunRecord], this_host: &str, now: i64) -> Verdict {
        let expired = self.expired_lease(sandbox, this_host, now).is_some();
        let too_young = self.older_than.is_some_and(|age| {
            sandbox.created_unix().is_none_or(|created| created > crate::clock::seconds_before(now, age))
        });
        let filtered_out = (self.stopped && !sandbox.is_stopped()) || too_young;
        if !self.is_candidate(sandbox, this_host, expired)
            || (filtered_out && !(expired && self.expired_leases_go_whatever_state))
        {
            return Verdict::Skip;
        }
        let other_host = sandbox.labels.get(LABEL_HOST).is_some_and(|host| host != this_host);
        if other_host && !expired && self.follows_leases() {
            if let Some(until) = lease::lease_until(&sandbox.labels) {
                let host = sandbox.labels.get(LABEL_HOST).map_or("?", String::as_str);
                return Verdict::Protect(format!("leased by host {host} until {until} (Unix time)"));
            }
        }
        match protected_by_live_run(&sandbox.labels, runs, this_host).filter(|_| !other_host) {
            Some(reason) => Verdict::Protect(reason),
            None => Verdict::Take,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DaytonaSweep {
    pub(crate) selection: SandboxSelection,
    pub(crate) dry_run: bool,
    pub(crate) removal: RemovalOptions,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct DaytonaSweepResult {
    pub(crate) dry_run: bool,
    pub(crate) sandboxes: RemovalReport,
    pub(crate) protected: Vec<Protected>,
    /// Taken because another host's run left them with its lease ended (a
    /// subset of `sandboxes`), each with whose lease it was.
    pub(crate) lease_expired: Vec<Protected>,
    /// The ledger run that holds the deletions still pending, for `recover`;
    /// `None` when none is pending, or the ledger could not record them.
    pub(crate) pending_run: Option<String>,
}

/// Runs one sweep of the organisation's sandboxes. Deletions still pending
/// at the end are recorded in `ledger`, when there is one, for `recover`.
pub(crate) async fn sweep_daytona(
    backend: &DaytonaBackend,
    sweep: &DaytonaSweep,
    runs: &[RunRecord],
    ledger: Option<&Ledger>,
    this_host: &str,
    events: &Events,
) -> Result<DaytonaSweepResult, Error> {
    let listed = backend.list(&sweep.selection.label_filter()).await.map_err(|error| error.during("list sandboxes"))?;
    let now = crate::clock::now_unix();
    let (mut picked, mut protected, mut lease_expired) = (Vec::new(), Vec::new(), Vec::new());
    for sandbox in &listed {
        match sweep.selection.verdict(sandbox, runs, this_host, now) {
            Verdict::Skip => {}
            Verdict::Protect(reason) => protected.push(Protected { resource: sandbox.resource(), reason }),
            Verdict::Take => {
                if let Some(expired) = sweep.selection.expired_lease(sandbox, this_host, now) {
                    lease_expired.push(Protected { resource: sandbox.resource(), reason: expired.reason() });
                }
                picked.push(sandbox.resource());
            }
        }
    }
    for item in &protected {
        events.emit(Event::Protected { resource: &item.resource, reason: &item.reason });
    }
    for item in &lease_expired {
        events.emit(Event::LeaseExpired { resource: &item.resource, reason: &item.reason });
    }
    let sandboxes = if sweep.dry_run {
        plan(picked, events)
    } else {
        events.removal(RemovalEvent::Started { what: "deleting sandboxes", total: picked.len() });
        let deleted = remove_sandboxes(backend, picked, &sweep.removal, events, VERIFY_FOR).await;
        events.removal(RemovalEvent::Finished);
        deleted
    };
    let pending_run = record_pending(&sandboxes, ledger).await;
    Ok(DaytonaSweepResult { dry_run: sweep.dry_run, sandboxes, protected, lease_expired, pending_run })
}

/// Records the pending deletions under a run of their own, so that they are
/// finished later; `None` when there are none or they cannot be recorded.
async fn record_pending(report: &RemovalReport, ledger: Option<&Ledger>) -> Option<String> {
    let pending = report.resources(|outcome| matches!(outcome, RemovalOutcome::Pending { .. }));
    if pending.is_empty() {
        return None;
    }
    match ledger?.record_pending_cleanup(pending).await {
        Ok(run_id) => Some(run_id),
        Err(error) => {
            tracing::error!("cannot record the pending deletions in the ledger: {error}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::LABEL_PID;

    fn sandbox(labels: &[(&str, &str)], state: &str, created: &str) -> Sandbox {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let json = serde_json::json!({"id": "s", "state": state, "createdAt": created, "labels": labels});
        serde_json::from_value(json).unwrap()
    }

    fn selection(owners: SandboxOwners) -> SandboxSelection {
        SandboxSelection {
            owners,
            stopped: true,
            older_than: Some(Duration::from_secs(86_400)),
            lease_grace: Duration::from_secs(120),
            expired_leases_go_whatever_state: true,
        }
    }

    #[test]
    fn this_hosts_dead_runs_and_claimed_sandboxes_go_when_stopped_and_old() {
        let dead = (u32::MAX - 1).to_string();
        let ours = [(LABEL_RUN, "r1"), (LABEL_HOST, "here"), (LABEL_PID, dead.as_str())];
        let theirs = [(LABEL_RUN, "r2"), (LABEL_HOST, "there"), (LABEL_PID, "1")];
        let claimed = [("bench.owner", "r7.a")];
        let now = 1_727_784_000 + 3 * 86_400;
        let selectors = vec![Selector::Label("bench.owner={run_id}.{task}".into())];
        let by_host = selection(SandboxOwners::ThisHost { selectors });
        let old = "2024-10-01T12:00:00.000Z";
        assert_eq!(by_host.verdict(&sandbox(&ours, "stopped", old), &[], "here", now), Verdict::Take);
        assert_eq!(by_host.verdict(&sandbox(&claimed, "error", old), &[], "here", now), Verdict::Take);
        assert_eq!(by_host.verdict(&sandbox(&ours, "started", old), &[], "here", now), Verdict::Skip);
        assert_eq!(
            by_host.verdict(&sandbox(&ours, "stopped", "2024-10-04T11:00:00Z"), &[], "here", now),
            Verdict::Skip
        );
        assert_eq!(by_host.verdict(&sandbox(&theirs, "stopped", old), &[], "here", now), Verdict::Skip);
        let anyone = selection(SandboxOwners::Anyone);
        assert_eq!(anyone.verdict(&sandbox(&theirs, "stopped", old), &[], "here", now), Verdict::Take);
        assert_eq!(anyone.verdict(&sandbox(&[], "stopped", "not a time"), &[], "here", now), Verdict::Skip);
    }
}
