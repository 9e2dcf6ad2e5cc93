//! `benchwarden cleanup all`: a prune of the ledger, then one cleanup for
//! both backends; or with `--list` one table of what both have.

use serde::Serialize;

use super::{print_json, print_stdout, Session};
use crate::backend::daytona::{DaytonaBackend, Sandbox};
use crate::backend::docker::{Container, ContainerQuery, DockerBackend};
use crate::cleanup::{clean_up, Skipped, Targets};
use crate::clock::now_unix;
use crate::errors::{Error, ExitStatus};
use crate::events::{Event, Events};
use crate::host;
use crate::ledger::Ledger;
use crate::report::text;
use crate::settings::{CleanupAllSettings, GlobalSettings};

/// The backends of `cleanup all` and `sweep`, connected, or why one is left out.
pub(super) struct Connected {
    pub(super) docker: Result<DockerBackend, String>,
    pub(super) daytona: Result<DaytonaBackend, String>,
}

impl Connected {
    /// An unreachable daemon is an error (exit 2) unless Docker was left
    /// out; Daytona without credentials is only skipped, with the reason.
    pub(super) async fn connect(
        global: &GlobalSettings,
        settings: &CleanupAllSettings,
        events: &Events,
    ) -> Result<Self, Error> {
        let docker = match settings.backends.docker {
            true => {
                Ok(DockerBackend::connect(&global.docker).await?.retrying_reads(global.retry.clone(), events.clone()))
            }
            false => Err("left out by --daytona-only".to_string()),
        };
        let daytona = match settings.backends.daytona {
            false => Err("left out by --docker-only".to_string()),
            true => match global.daytona.optional()? {
                Ok(config) => Ok(DaytonaBackend::new(config, global.retry.clone(), events.clone())?),
                Err(why) => Err(why),
            },
        };
        Ok(Connected { docker, daytona })
    }

    pub(super) fn targets(&self) -> Targets<'_> {
        Targets {
            docker: self.docker.as_ref().map_err(Clone::clone),
            daytona: self.daytona.as_ref().map_err(Clone::clone),
        }
    }
}

pub async fn cleanup_all(
    global: &GlobalSettings,
    settings: &CleanupAllSettings,
    session: &Session,
) -> Result<ExitStatus, Error> {
    let events = &session.events;
    let connected = Connected::connect(global, settings, events).await?;
    if settings.list {
        return list_all(&connected, settings.json).await;
    }
    let ledger = Ledger::open(&global.state_dir)?;
    let started = std::time::Instant::now();
    let dry_run = settings.policy.docker_dry_run;
    super::prune::prune_runs(&global.state_dir, &ledger, settings.retention, dry_run, events).await?;
    let report = clean_up(&connected.targets(), &ledger, &settings.policy, &host::host_name(), events).await?;
    let counts = report.counts();
    let seconds = started.elapsed().as_secs_f64();
    events.emit(Event::SweepFinished { round: None, counts: &counts, seconds, at: now_unix() });
    if settings.json {
        print_json(&report)?;
    } else {
        print_stdout(&text::cleanup_summary(&report))?;
    }
    session.write_metrics(settings.metrics_file.as_deref(), global).await?;
    Ok(report.exit_status())
}

/// `cleanup all --list --json`: both backends' resources.
#[derive(Debug, Serialize)]
struct Listing {
    containers: Vec<Container>,
    sandboxes: Vec<Sandbox>,
    skipped: Vec<Skipped>,
}

/// Every container (running or not) and every sandbox of the organisation, in one table.
async fn list_all(connected: &Connected, json: bool) -> Result<ExitStatus, Error> {
    let mut listing = Listing { containers: Vec::new(), sandboxes: Vec::new(), skipped: Vec::new() };
    match &connected.docker {
        Ok(docker) => {
            let query = ContainerQuery { labels: Vec::new(), all: true };
            listing.containers =
                docker.list_containers(&query).await.map_err(|error| error.during("list containers"))?;
        }
        Err(reason) => listing.skipped.push(Skipped { backend: "docker", reason: reason.clone() }),
    }
    match &connected.daytona {
        Ok(daytona) => {
            let all = Default::default();
            listing.sandboxes = daytona.list(&all).await.map_err(|error| error.during("list sandboxes"))?;
        }
        Err(reason) => listing.skipped.push(Skipped { backend: "daytona", reason: reason.clone() }),
    }
    if json {
        print_json(&listing)?;
    } else {
        print_stdout(&text::resource_table(&listing.containers, &listing.sandboxes, &listing.skipped, now_unix()))?;
    }
    Ok(ExitStatus::Success)
}
