//! One cleanup for everything, as `cleanup all` and each round of `sweep`
//! run it: recover orphaned runs, then sweep what benchmarks own on each
//! backend, Daytona first (sandboxes cost money by the minute). By default
//! exited containers and stopped sandboxes older than a day go;
//! `aggressive` takes running containers too, and any sandbox older than an
//! hour. Docker acts unless it is a dry run; Daytona is a dry run unless
//! asked otherwise, because its organisation may be shared.

use std::time::Duration;

use serde::Serialize;

use crate::backend::daytona::DaytonaBackend;
use crate::backend::docker::DockerBackend;
use crate::backend::{RemovalOptions, DEFAULT_PARALLEL};
use crate::config::Selector;
use crate::errors::{Error, ErrorClass, ExitStatus, Service};
use crate::events::Events;
use crate::events::SweepCounts;
use crate::ledger::Ledger;
use crate::recover::{recover_orphans, OrphanFilter, RecoveredRun};
use crate::resource::{RemovalOutcome, RemovalReport};
use crate::retry::RetryPolicy;
use crate::sweep::daytona::{sweep_daytona, DaytonaSweep, DaytonaSweepResult, SandboxOwners, SandboxSelection};
use crate::sweep::docker::SweepResult;
use crate::sweep::images::{self, DiskReport, ImagePolicy};
use crate::sweep::owned::{kept_containers, sweep_owned, ContainerPick, OwnedSweep};
use crate::teardown::{Backends, TakeKept, TeardownOptions};

/// Sandbox deletions in flight at once; the rate-limit headers pace them further.
pub(crate) const SANDBOX_PARALLEL: usize = 64;
const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3_600);

/// What a cleanup of both backends takes, and how.
#[derive(Debug, Clone)]
pub(crate) struct CleanupPolicy {
    pub(crate) aggressive: bool,
    /// With `aggressive`: the build cache is pruned down to this many bytes.
    pub(crate) build_cache_max: u64,
    /// The benchmark files' selectors: what they claim is benchmark-owned too.
    pub(crate) selectors: Vec<Selector>,
    pub(crate) docker_dry_run: bool,
    pub(crate) daytona_dry_run: bool,
    pub(crate) fail_fast: bool,
    pub(crate) retry: RetryPolicy,
    /// How long after its end another host's lease still protects its sandboxes.
    pub(crate) lease_grace: Duration,
}

impl CleanupPolicy {
    fn container_pick(&self) -> ContainerPick {
        if self.aggressive {
            ContainerPick::Any
        } else {
            ContainerPick::Exited
        }
    }

    fn sandbox_selection(&self) -> SandboxSelection {
        let owners = SandboxOwners::ThisHost { selectors: self.selectors.clone() };
        let (stopped, older_than) = match self.aggressive {
            true => (false, Some(HOUR)),
            false => (true, Some(DAY)),
        };
        // A lease that ended proves what the state and age only suggest: such a sandbox goes.
        let lease_grace = self.lease_grace;
        SandboxSelection { owners, stopped, older_than, lease_grace, expired_leases_go_whatever_state: true }
    }

    fn removal(&self, parallel: usize) -> RemovalOptions {
        RemovalOptions { parallel, fail_fast: self.fail_fast, retry: self.retry.clone() }
    }
}

/// The backends a cleanup works on; a missing one was skipped, for `why`.
pub(crate) struct Targets<'a> {
    pub(crate) docker: Result<&'a DockerBackend, String>,
    pub(crate) daytona: Result<&'a DaytonaBackend, String>,
}

/// A backend left out of a cleanup, and why.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Skipped {
    pub(crate) backend: &'static str,
    pub(crate) reason: String,
}

/// What one cleanup of both backends did.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct CleanupReport {
    pub(crate) recovered: Vec<RecoveredRun>,
    pub(crate) docker: Option<SweepResult>,
    pub(crate) daytona: Option<DaytonaSweepResult>,
    /// With `aggressive`: the images benchwarden runs made, and the build cache.
    pub(crate) disk: Option<DiskReport>,
    pub(crate) skipped: Vec<Skipped>,
}

impl CleanupReport {
    /// Every removal report, with what it removed.
    fn reports(&self) -> Vec<&RemovalReport> {
        let docker = self.docker.iter().flat_map(|sweep| [&sweep.containers, &sweep.networks, &sweep.volumes]);
        docker.chain(self.daytona.iter().map(|sweep| &sweep.sandboxes)).collect()
    }

    pub(crate) fn counts(&self) -> SweepCounts {
        let reports = self.reports();
        let sum = |count: fn(&RemovalReport) -> usize| reports.iter().map(|report| count(report)).sum::<usize>();
        let protected = self.docker.as_ref().map_or(0, |sweep| sweep.protected.len())
            + self.daytona.as_ref().map_or(0, |sweep| sweep.protected.len());
        SweepCounts {
            recovered_runs: self.recovered.iter().filter(|run| !run.dry_run).count(),
            removed: sum(|report| report.removed() + report.already_gone()),
            would_remove: sum(RemovalReport::would_remove),
            failed: sum(RemovalReport::failed),
            pending: sum(RemovalReport::pending),
            protected,
        }
    }

    /// Refused credentials (2) before anything recovery failed to remove (3),
    /// before a failed or unfinished removal (1). What a dry run or a
    /// skipped backend kept is said, not failed.
    pub(crate) fn exit_status(&self) -> ExitStatus {
        let failures = self.reports().into_iter().flat_map(|report| report.results.iter());
        let denied = failures
            .filter_map(|(_, outcome)| match outcome {
                RemovalOutcome::Failed { error, .. } => Some(error.class),
                _ => None,
            })
            .any(|class| class == ErrorClass::Denied);
        let left = self.recovered.iter().any(|run| !run.leaked.is_empty() || !run.pending.is_empty());
        let counts = self.counts();
        if denied {
            ExitStatus::Usage
        } else if left {
            ExitStatus::Leaked
        } else if counts.failed > 0 || counts.pending > 0 || self.disk.as_ref().is_some_and(|disk| disk.failed() > 0) {
            ExitStatus::Failure
        } else {
            ExitStatus::Success
        }
    }
}

/// Recovers orphaned runs, then sweeps what benchmarks own on each backend
/// that is not skipped.
pub(crate) async fn clean_up(
    targets: &Targets<'_>,
    ledger: &Ledger,
    policy: &CleanupPolicy,
    host: &str,
    events: &Events,
) -> Result<CleanupReport, Error> {
    let mut report = CleanupReport::default();
    for (service, target) in
        [(Service::Docker, targets.docker.as_ref().err()), (Service::Daytona, targets.daytona.as_ref().err())]
    {
        if let Some(reason) = target {
            report.skipped.push(Skipped { backend: service.as_str(), reason: reason.clone() });
        }
    }
    report.recovered = recover(targets, ledger, policy, events).await?;
    let runs = ledger.runs().await?;
    // Sandboxes first: they cost money by the minute.
    if let Ok(daytona) = targets.daytona {
        let sweep = DaytonaSweep {
            selection: policy.sandbox_selection(),
            dry_run: policy.daytona_dry_run,
            removal: policy.removal(SANDBOX_PARALLEL),
        };
        report.daytona = Some(sweep_daytona(daytona, &sweep, &runs, Some(ledger), host, events).await?);
    }
    if let Ok(docker) = targets.docker {
        let kept = kept_containers(&ledger.all_unreleased().await?, i64::MIN);
        let sweep = OwnedSweep {
            kept: &kept,
            selectors: &policy.selectors,
            pick: policy.container_pick(),
            own_run: None,
            stop_timeout: None,
            dry_run: policy.docker_dry_run,
            removal: policy.removal(DEFAULT_PARALLEL),
        };
        report.docker = Some(sweep_owned(docker, &runs, &sweep, host, events).await?);
        if policy.aggressive {
            report.disk = Some(clean_disk(docker, ledger, policy, host, events).await?);
        }
    }
    Ok(report)
}

/// `aggressive`'s disk: the images benchwarden runs made, of any age (never
/// one a live run or a container uses), then the build cache down to its cap.
async fn clean_disk(
    docker: &DockerBackend,
    ledger: &Ledger,
    policy: &CleanupPolicy,
    host: &str,
    events: &Events,
) -> Result<DiskReport, Error> {
    let images = ImagePolicy { run: None, older_than: None, labels: Vec::new(), dry_run: policy.docker_dry_run };
    let dry_run = policy.docker_dry_run;
    images::clean_disk(docker, ledger, Some(&images), Some(policy.build_cache_max), dry_run, host, events).await
}

/// Recovers orphaned runs with the backends that act: a backend in a dry
/// run, or skipped, is left out, so a run that owns something there stays
/// open. With no backend acting, recovery only says what it would do.
async fn recover(
    targets: &Targets<'_>,
    ledger: &Ledger,
    policy: &CleanupPolicy,
    events: &Events,
) -> Result<Vec<RecoveredRun>, Error> {
    let docker = targets.docker.as_ref().ok().copied().filter(|_| !policy.docker_dry_run);
    let daytona = targets.daytona.as_ref().ok().copied().filter(|_| !policy.daytona_dry_run);
    let dry_run = docker.is_none() && daytona.is_none();
    // A plan lists what every reachable backend holds, dry or not.
    let backends = match dry_run {
        true => {
            Backends { docker: targets.docker.as_ref().ok().copied(), daytona: targets.daytona.as_ref().ok().copied() }
        }
        false => Backends { docker, daytona },
    };
    // What `run --keep-failed` kept waits for `recover --include-kept` or a pre-run sweep.
    let options =
        TeardownOptions { removal: policy.removal(DEFAULT_PARALLEL), stop_timeout: None, take_kept: TakeKept::Never };
    recover_orphans(backends, ledger, &options, dry_run, OrphanFilter::LEDGER, events).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(aggressive: bool) -> CleanupPolicy {
        CleanupPolicy {
            aggressive,
            build_cache_max: 0,
            selectors: Vec::new(),
            docker_dry_run: false,
            daytona_dry_run: true,
            fail_fast: false,
            retry: RetryPolicy::default(),
            lease_grace: Duration::from_secs(120),
        }
    }

    #[test]
    fn the_default_takes_exited_containers_and_old_stopped_sandboxes_and_aggressive_takes_more() {
        let gentle = policy(false);
        assert_eq!(gentle.container_pick(), ContainerPick::Exited);
        let selection = gentle.sandbox_selection();
        assert!(selection.stopped);
        assert_eq!(selection.older_than, Some(DAY));
        let aggressive = policy(true);
        assert_eq!(aggressive.container_pick(), ContainerPick::Any);
        let selection = aggressive.sandbox_selection();
        assert!(!selection.stopped);
        assert_eq!(selection.older_than, Some(HOUR));
    }
}
