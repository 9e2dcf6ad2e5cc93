//! `benchwarden cleanup docker`: containers by policy, then, when asked,
//! the images benchwarden runs made and the build cache.

use serde::Serialize;

use super::{ledger_runs, print_json, print_stdout, Session};
use crate::backend::docker::DockerBackend;
use crate::backend::RemovalOptions;
use crate::clock::now_unix;
use crate::errors::{Error, ExitStatus};
use crate::host;
use crate::ledger::Ledger;
use crate::owner::protected_by_live_run;
use crate::report::text;
use crate::settings::{DockerCleanupSettings, GlobalSettings};
use crate::sweep::docker::{self, ContainerSelection, DockerSweep, SweepResult};
use crate::sweep::images::{self, DiskReport, ImagePolicy};
use crate::sweep::Verdict;

/// `--json`: the container sweep's fields, and the disk part when asked.
#[derive(Serialize)]
struct CleanupDockerJson<'a> {
    #[serde(flatten)]
    containers: Option<&'a SweepResult>,
    disk: Option<&'a DiskReport>,
    disk_reclaimed_bytes: u64,
}

pub async fn cleanup_docker(
    global: &GlobalSettings,
    settings: &DockerCleanupSettings,
    session: &Session,
) -> Result<ExitStatus, Error> {
    let backend =
        DockerBackend::connect(&global.docker).await?.retrying_reads(global.retry.clone(), session.events.clone());
    let containers = match settings.containers {
        true => Some(sweep_containers(&backend, global, settings, session).await?),
        false => None,
    };
    let disk = match settings.images || settings.build_cache_max.is_some() {
        true => Some(clean_disk(&backend, global, settings, session).await?),
        false => None,
    };
    let disk_reclaimed_bytes = disk.as_ref().map(|disk| disk.reclaimed_bytes).unwrap_or(0);
    if settings.json {
        print_json(&CleanupDockerJson { containers: containers.as_ref(), disk: disk.as_ref(), disk_reclaimed_bytes })?;
    } else {
        if let Some(result) = &containers {
            print_stdout(&text::sweep_summary(result))?;
        }
        if let Some(disk) = &disk {
            print_stdout(&text::disk_summary(disk))?;
        }
    }
    session.write_metrics(settings.metrics_file.as_deref(), global).await?;
    let failed =
        containers.as_ref().map(SweepResult::failed).unwrap_or(0) + disk.as_ref().map(DiskReport::failed).unwrap_or(0);
    Ok(if failed > 0 { ExitStatus::Failure } else { ExitStatus::Success })
}

async fn sweep_containers(
    backend: &DockerBackend,
    global: &GlobalSettings,
    settings: &DockerCleanupSettings,
    session: &Session,
) -> Result<SweepResult, Error> {
    let sweep = DockerSweep {
        selection: ContainerSelection {
            exited: settings.exited,
            older_than: settings.older_than,
            labels: settings.labels.clone(),
        },
        stop_timeout: settings.stop_timeout,
        volumes: settings.volumes,
        dry_run: settings.dry_run,
        removal: RemovalOptions {
            parallel: settings.parallel,
            fail_fast: settings.fail_fast,
            retry: global.retry.clone().allowing_calls_of(settings.stop_timeout),
        },
    };
    let this_host = host::host_name();
    let now = now_unix();
    let runs = ledger_runs(global).await;
    docker::sweep_docker(backend, &sweep, &session.events, |container| {
        if !sweep.selection.matches(container, now) {
            return Verdict::Skip;
        }
        match protected_by_live_run(&container.labels, &runs, &this_host) {
            Some(reason) => Verdict::Protect(reason),
            None => Verdict::Take,
        }
    })
    .await
}

/// `--images` and `--build-cache-max`.
async fn clean_disk(
    backend: &DockerBackend,
    global: &GlobalSettings,
    settings: &DockerCleanupSettings,
    session: &Session,
) -> Result<DiskReport, Error> {
    let ledger = Ledger::open(&global.state_dir)?;
    let policy = ImagePolicy {
        run: None,
        older_than: settings.older_than,
        labels: settings.labels.clone(),
        dry_run: settings.dry_run,
    };
    let images = settings.images.then_some(&policy);
    let this_host = host::host_name();
    images::clean_disk(
        backend,
        &ledger,
        images,
        settings.build_cache_max,
        settings.dry_run,
        &this_host,
        &session.events,
    )
    .await
}
