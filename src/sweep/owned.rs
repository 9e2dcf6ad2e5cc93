//! What benchmarks own, and when it may go: containers that carry
//! benchwarden's owner labels, or that a benchmark file's selectors claim
//! (its templates match any of its runs). The sweep before a run takes them
//! by age or listed state; `cleanup all` and `sweep` take the exited ones
//! (any with `--aggressive`). A live run's containers are never taken, nor
//! are those `run --keep-failed` kept, until the pre-run sweep's age.

use std::collections::BTreeSet;
use std::time::Duration;

use super::docker::{sweep_docker, ContainerSelection, DockerSweep, SweepResult};
use super::Verdict;
use crate::backend::docker::{Container, DockerBackend};
use crate::backend::RemovalOptions;
use crate::config::Selector;
use crate::errors::Error;
use crate::events::{Event, Events};
use crate::ledger::{ResourceRecord, RunRecord};
use crate::owner::{protected_by_live_run, template_claims, LABEL_RUN};
use crate::resource::Kind;

/// Which of the owned containers go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ContainerPick {
    /// Created longer ago than `age`, or in one of `states` whatever their age.
    OldOrInStates { age: Duration, states: Vec<String> },
    /// Not running: exited, dead, or created and never started.
    Exited,
    /// Whatever their state.
    Any,
}

/// A sweep of what benchmarks own.
#[derive(Debug, Clone)]
pub(crate) struct OwnedSweep<'a> {
    /// The benchmarks' selectors, as templates: they claim leftovers of any of their runs.
    pub(crate) selectors: &'a [Selector],
    pub(crate) pick: ContainerPick,
    /// A run about to start, which is alive but owns nothing yet.
    pub(crate) own_run: Option<&'a str>,
    /// Containers kept by `run --keep-failed` that this sweep leaves alone (by id).
    pub(crate) kept: &'a BTreeSet<String>,
    pub(crate) stop_timeout: Option<Duration>,
    pub(crate) dry_run: bool,
    pub(crate) removal: RemovalOptions,
}

impl OwnedSweep<'_> {
    /// What happens to one container. `live_runs` are the ids of the other
    /// runs that are alive; `runs` is the ledger, for the liveness of runs
    /// known by their labels.
    pub(crate) fn verdict(
        &self,
        container: &Container,
        now: i64,
        runs: &[RunRecord],
        live_runs: &[&str],
        host: &str,
    ) -> Verdict {
        let by_label = container.labels.contains_key(LABEL_RUN);
        let by_selector = self.selectors.iter().any(|selector| template_claims(selector, &container.labels, None));
        if (!by_label && !by_selector) || !self.picks(container, now) {
            return Verdict::Skip;
        }
        if self.kept.contains(&container.id) {
            return Verdict::Protect(
                "kept by `run --keep-failed`: `benchwarden recover --include-kept` removes it".into(),
            );
        }
        if let Some(reason) = protected_by_live_run(&container.labels, runs, host) {
            return Verdict::Protect(reason);
        }
        let claimed_by_live_run = live_runs
            .iter()
            .find(|run| self.selectors.iter().any(|selector| template_claims(selector, &container.labels, Some(run))));
        match claimed_by_live_run {
            Some(run) => Verdict::Protect(format!("claimed by run {run}, which is still alive")),
            None => Verdict::Take,
        }
    }

    fn picks(&self, container: &Container, now: i64) -> bool {
        match &self.pick {
            ContainerPick::OldOrInStates { age, states } => {
                container.created <= crate::clock::seconds_before(now, *age) || states.contains(&container.state)
            }
            ContainerPick::Exited => container.is_exited(),
            ContainerPick::Any => true,
        }
    }
}

/// The ids of the containers `run --keep-failed` kept after `since` (Unix
/// seconds): those a sweep leaves alone. `i64::MIN` spares every kept one.
pub(crate) fn kept_containers(rows: &[ResourceRecord], since: i64) -> BTreeSet<String> {
    rows.iter()
        .filter(|row| row.resource.kind == Kind::Container && row.kept_at.is_some_and(|kept_at| kept_at > since))
        .map(|row| row.resource.id.clone())
        .collect()
}

/// Sweeps the containers benchmarks own, never touching a live run's.
pub(crate) async fn sweep_owned(
    docker: &DockerBackend,
    runs: &[RunRecord],
    sweep: &OwnedSweep<'_>,
    host: &str,
    events: &Events,
) -> Result<SweepResult, Error> {
    let live_runs: Vec<&str> = runs
        .iter()
        .filter(|run| run.ended_at.is_none() && run.is_alive(host) && Some(run.id.as_str()) != sweep.own_run)
        .map(|run| run.id.as_str())
        .collect();
    let now = crate::clock::now_unix();
    let docker_sweep = DockerSweep {
        selection: ContainerSelection::default(),
        stop_timeout: sweep.stop_timeout,
        volumes: false,
        dry_run: sweep.dry_run,
        removal: sweep.removal.clone(),
    };
    sweep_docker(docker, &docker_sweep, events, |container| sweep.verdict(container, now, runs, &live_runs, host)).await
}

/// The sweep before a run, which tells its counts.
pub(crate) async fn pre_run(
    docker: &DockerBackend,
    runs: &[RunRecord],
    sweep: &OwnedSweep<'_>,
    host: &str,
    events: &Events,
) -> Result<SweepResult, Error> {
    let result = sweep_owned(docker, runs, sweep, host, events).await?;
    events.emit(Event::PreRunSweepFinished {
        removed: result.containers.removed() + result.containers.already_gone(),
        failed: result.failed(),
        protected: result.protected.len(),
    });
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(labels: &[(&str, &str)], state: &str, created: i64) -> Container {
        Container {
            id: "c".into(),
            name: "n".into(),
            image: "i".into(),
            state: state.into(),
            created,
            labels: labels.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
            compose_project: None,
        }
    }

    fn sweep<'a>(selectors: &'a [Selector], pick: ContainerPick, kept: &'a BTreeSet<String>) -> OwnedSweep<'a> {
        OwnedSweep {
            selectors,
            pick,
            own_run: Some("mine"),
            kept,
            stop_timeout: None,
            dry_run: false,
            removal: RemovalOptions { parallel: 1, fail_fast: false, retry: Default::default() },
        }
    }

    #[test]
    fn the_pre_run_sweep_takes_old_or_listed_claimed_leftovers_and_spares_live_runs() {
        let selectors = [Selector::Label("bench.owner={run_id}.{task}".into())];
        let pick = ContainerPick::OldOrInStates { age: Duration::from_secs(100), states: vec!["exited".to_string()] };
        let nothing_kept = BTreeSet::new();
        let sweep = sweep(&selectors, pick, &nothing_kept);
        let verdict = |container: &Container| sweep.verdict(container, 1000, &[], &["live"], "here");
        assert_eq!(verdict(&container(&[], "exited", 0)), Verdict::Skip, "claimed by nobody");
        assert_eq!(verdict(&container(&[("bench.owner", "old.a")], "running", 950)), Verdict::Skip, "young");
        assert_eq!(verdict(&container(&[("bench.owner", "old.a")], "running", 100)), Verdict::Take);
        assert_eq!(verdict(&container(&[("bench.owner", "old.a")], "exited", 950)), Verdict::Take, "listed state");
        assert!(matches!(verdict(&container(&[("bench.owner", "live.a")], "exited", 0)), Verdict::Protect(_)));
    }

    #[test]
    fn cleanup_takes_exited_owned_containers_and_running_ones_only_when_aggressive() {
        let owned = [(LABEL_RUN, "20200101-0000-dead")];
        let nothing_kept = BTreeSet::new();
        let gentle = sweep(&[], ContainerPick::Exited, &nothing_kept);
        let aggressive = sweep(&[], ContainerPick::Any, &nothing_kept);
        let verdict = |sweep: &OwnedSweep<'_>, container: &Container| sweep.verdict(container, 1000, &[], &[], "here");
        assert_eq!(verdict(&gentle, &container(&owned, "exited", 999)), Verdict::Take);
        assert_eq!(verdict(&gentle, &container(&owned, "running", 0)), Verdict::Skip);
        assert_eq!(verdict(&aggressive, &container(&owned, "running", 999)), Verdict::Take);
        assert_eq!(verdict(&aggressive, &container(&[], "exited", 0)), Verdict::Skip, "not a benchmark's");
    }

    #[test]
    fn kept_containers_are_left_alone_until_kept_long_enough() {
        let owned = [(LABEL_RUN, "20200101-0000-dead")];
        let record = |id: &str, kept_at: Option<i64>| ResourceRecord {
            resource: crate::resource::ResourceRef { kind: Kind::Container, id: id.into(), name: String::new() },
            run_id: "r".into(),
            task_id: "t".into(),
            created_at: 0,
            released_at: None,
            attempts: 0,
            last_error: None,
            kept_at,
            endpoint: None,
        };
        let rows = [record("young", Some(900)), record("old", Some(100)), record("plain", None)];
        let kept = kept_containers(&rows, 500);
        assert_eq!(kept, BTreeSet::from(["young".to_string()]));
        assert_eq!(kept_containers(&rows, i64::MIN).len(), 2);
        let sweep = sweep(&[], ContainerPick::Any, &kept);
        let mut young = container(&owned, "exited", 0);
        young.id = "young".into();
        assert!(matches!(sweep.verdict(&young, 1000, &[], &[], "here"), Verdict::Protect(_)));
        assert_eq!(sweep.verdict(&container(&owned, "exited", 0), 1000, &[], &[], "here"), Verdict::Take);
    }
}
