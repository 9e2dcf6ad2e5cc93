//! `benchwarden claim`, run from inside a task: records a resource the task
//! made where no proxy saw it (another Docker host, a client with a
//! hard-coded socket, a sandbox made around the Daytona proxy), so the
//! task's teardown removes it with the task's own.
//!
//! The claim is itself a process of the task (it inherits the task's
//! `BENCHWARDEN_*` environment), and a task's teardown starts only once
//! every process of the task is gone: a claim's row is committed before
//! teardown reads the ledger, or never.

use super::print_stdout;
use crate::backend::docker::DockerBackend;
use crate::errors::{Error, ExitStatus};
use crate::events::Events;
use crate::host;
use crate::intercept::sockets;
use crate::ledger::Ledger;
use crate::resource::{Kind, ResourceRef};
use crate::settings::{ClaimSettings, ClaimTarget, GlobalSettings};

pub async fn claim(global: &GlobalSettings, settings: &ClaimSettings) -> Result<ExitStatus, Error> {
    let ledger = open_existing_ledger(global)?;
    check_task(&ledger, settings).await?;
    let (resource, endpoint) = match &settings.target {
        ClaimTarget::Docker { container } => docker_container(global, settings, container).await?,
        // The sandbox is looked up at teardown, through the run's Daytona backend.
        ClaimTarget::Daytona { sandbox } => {
            (ResourceRef { kind: Kind::Sandbox, id: sandbox.clone(), name: String::new() }, None)
        }
    };
    let recorded =
        ledger.record_claimed(&settings.run_id, &settings.task_id, resource.clone(), endpoint.clone()).await?;
    let host = endpoint.map(|address| format!(" on {address}")).unwrap_or_default();
    let message = match recorded {
        true => format!("claimed {resource}{host} for task {} of run {}\n", settings.task_id, settings.run_id),
        false => format!("{resource} was already recorded; its first owner keeps it\n"),
    };
    print_stdout(&message)?;
    Ok(ExitStatus::Success)
}

/// The ledger the run writes: a claim never creates one, since a missing
/// ledger means the state directory is not the run's.
fn open_existing_ledger(global: &GlobalSettings) -> Result<Ledger, Error> {
    let path = global.state_dir.join("ledger.sqlite");
    if !path.exists() {
        return Err(Error::usage(format!(
            "no ledger at {}: `benchwarden claim` must see the run's state directory \
             (BENCHWARDEN_STATE_DIR, which benchwarden sets for the harness, or --state-dir)",
            path.display()
        )));
    }
    Ledger::open(&global.state_dir)
}

/// The run must be in the ledger and alive, and the task one of its started tasks.
async fn check_task(ledger: &Ledger, settings: &ClaimSettings) -> Result<(), Error> {
    let (run_id, task_id) = (&settings.run_id, &settings.task_id);
    let runs = ledger.runs().await?;
    let Some(run) = runs.iter().find(|run| &run.id == run_id) else {
        return Err(Error::usage(format!(
            "no run {run_id} in the ledger {}: BENCHWARDEN_RUN_ID names no run of this state directory",
            ledger.path().display()
        )));
    };
    if run.ended_at.is_some() || !run.is_alive(&host::host_name()) {
        return Err(Error::usage(format!(
            "run {run_id} has ended: its tasks were torn down; remove the resource yourself, \
             or with `benchwarden cleanup`"
        )));
    }
    let tasks = ledger.tasks(run_id).await?;
    if !tasks.contains(task_id) {
        return Err(Error::usage(format!(
            "run {run_id} has no task {task_id:?} (BENCHWARDEN_TASK_ID); its tasks: {}",
            tasks.join(", ")
        )));
    }
    Ok(())
}

/// The container on `DOCKER_HOST`, by its full id, and the host to record:
/// none when `DOCKER_HOST` is the task's own proxy (the run's engine).
async fn docker_container(
    global: &GlobalSettings,
    settings: &ClaimSettings,
    reference: &str,
) -> Result<(ResourceRef, Option<String>), Error> {
    let address = &global.docker.address;
    let docker = DockerBackend::connect(&global.docker).await?.retrying_reads(global.retry.clone(), Events::discard());
    let found = docker.find_container(reference).await.map_err(|error| error.during(format!("inspect {reference}")))?;
    let Some(resource) = found else {
        return Err(Error::usage(format!(
            "no container {reference:?} on {address} (DOCKER_HOST): claim it with the DOCKER_HOST it was created on"
        )));
    };
    let endpoint = (!sockets::is_proxy_socket_of(address, &settings.run_id)).then(|| address.clone());
    if endpoint.is_some() && global.docker.tls {
        // Teardown reaches a claimed host by its address alone, and would speak plain HTTP to it.
        return Err(Error::usage(format!(
            "{address} is a TLS Docker host (DOCKER_TLS_VERIFY): claims there are not supported; \
             create the container through the task's proxy, or remove it yourself"
        )));
    }
    Ok((resource, endpoint))
}
