//! What benchmarks own, and when it may go: containers that carry
//! benchwarden's owner labels, or that a benchmark file's selectors claim
//! (its templates match any of its runs). The sweep before a run takes them
//! by age or listed state; `cleanup all` and `sweep` take the exited ones
//! (any with `--aggressive`). A live run's containers are never taken.

use std::time::Duration;

use super::docker::{sweep_docker, ContainerSelection, DockerSweep, SweepResult};
use super::Verdict;
use crate::backend::docker::{Container, DockerBackend};
use crate::backend::RemovalOptions;
use crate::config::Selector;
use crate::errors::Error;
use crate::events::{Event, Events};
use crate::ledger::RunRecord;
use crate::owner::{protected_by_live_run, template_claims, LABEL_RUN};

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
                container.created <= now - age.as_secs() as i64 || states.contains(&container.state)
            }
            ContainerPick::Exited => container.is_exited(),
            ContainerPick::Any => true,
        }
    }
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

    fn sweep(selectors: &[Selector], pick: ContainerPick) -> OwnedSweep<'_> {
        OwnedSweep {
            selectors,
            pick,
            own_run: Some("mine"),
            stop_timeout: None,
            dry_run: false,
            removal: RemovalOptions { parallel: 1, fail_fast: false, retry: Default::default() },
        }
    }

    #[test]
    fn the_pre_run_sweep_takes_old_or_listed_claimed_leftovers_and_spares_live_runs() {
        let selectors = [Selector::Label("bench.owner={run_id}.{task}".into())];
        let pick = ContainerPick::OldOrInStates { age: Duration::from_secs(100), states: vec!["exited".to_string()] };
        let sweep = sweep(&selectors, pick);
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
        let gentle = sweep(&[], ContainerPick::Exited);
        let aggressive = sweep(&[], ContainerPick::Any);
        let verdict = |sweep: &OwnedSweep<'_>, container: &Container| sweep.verdict(container, 1000, &[], &[], "here");
        assert_eq!(verdict(&gentle, &container(&owned, "exited", 999)), Verdict::Take);
        assert_eq!(verdict(&gentle, &container(&owned, "running", 0)), Verdict::Skip);
        assert_eq!(verdict(&aggressive, &container(&owned, "running", 999)), Verdict::Take);
        assert_eq!(verdict(&aggressive, &container(&[], "exited", 0)), Verdict::Skip, "not a benchmark's");
    }
}
