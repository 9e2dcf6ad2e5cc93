//! `benchwarden cleanup docker`.

use super::{ledger_runs, print_json, print_stdout, Session};
use crate::backend::docker::DockerBackend;
use crate::backend::RemovalOptions;
use crate::clock::now_unix;
use crate::errors::{Error, ExitStatus};
use crate::host;
use crate::owner::protected_by_live_run;
use crate::report::text;
use crate::settings::{DockerCleanupSettings, GlobalSettings};
use crate::sweep::docker::{self, ContainerSelection, DockerSweep};
use crate::sweep::Verdict;

pub async fn cleanup_docker(
    global: &GlobalSettings,
    settings: &DockerCleanupSettings,
    session: &Session,
) -> Result<ExitStatus, Error> {
    let events = &session.events;
    let backend = DockerBackend::connect(&global.docker).await?;
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
    let result = docker::sweep_docker(&backend, &sweep, events, |container| {
        if !sweep.selection.matches(container, now) {
            return Verdict::Skip;
        }
        match protected_by_live_run(&container.labels, &runs, &this_host) {
            Some(reason) => Verdict::Protect(reason),
            None => Verdict::Take,
        }
    })
    .await?;
    if settings.json {
        print_json(&result)?;
    } else {
        print_stdout(&text::sweep_summary(&result))?;
    }
    session.write_metrics(settings.metrics_file.as_deref(), global).await?;
    Ok(if result.failed() > 0 { ExitStatus::Failure } else { ExitStatus::Success })
}
