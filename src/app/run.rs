//! `benchwarden run`: ledger, pre-run recovery and sweep, the tasks, the
//! summary, the JSON report and the exit status.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio_util::task::TaskTracker;

use super::{live_owner, print_stdout, recover_orphans, OrphanSource};
use crate::backend::daytona::{DaytonaBackend, DaytonaConfig, DaytonaOverrides};
use crate::backend::docker::{Container, DockerBackend, COMPOSE_PROJECT_LABEL};
use crate::backend::{LabelSelector, RemovalOptions, LABEL_RUN};
use crate::config::{matches_template, Selector};
use crate::errors::{Error, ExitStatus};
use crate::intercept::daytona_proxy::ApiTarget;
use crate::intercept::docker_proxy::upstream_from_docker_host;
use crate::ledger::{Ledger, RunRecord};
use crate::owner;
use crate::report::{self, RunView};
use crate::settings::{GlobalSettings, RunSettings};
use crate::supervisor::signal;
use crate::supervisor::task::{DaytonaProxySettings, ProxySettings, RunContext, TaskOutcome, TaskReport};
use crate::supervisor::watch::Watcher;
use crate::supervisor::{process, scheduler};
use crate::sweep::{self, ContainerSelection, DockerSweep, SweepResult, Verdict};
use crate::teardown::Backends;

/// The JSON report of a run.
#[derive(Debug, Serialize)]
struct RunReport<'a> {
    run_id: &'a str,
    benchmark: &'a str,
    source: &'a str,
    started_at: i64,
    ended_at: i64,
    exit_code: i32,
    interrupted_by: Option<String>,
    pre_run_sweep: Option<&'a SweepResult>,
    tasks: &'a [TaskReport],
}

pub async fn run(global: &GlobalSettings, settings: &RunSettings) -> Result<ExitStatus, Error> {
    // The daemon's answer is the slow part of starting; open the ledger meanwhile.
    let connecting = settings.benchmark.docker.enabled.then(|| tokio::spawn(DockerBackend::connect()));
    let ledger = Ledger::open(&global.state_dir)?;
    let docker = match connecting {
        Some(connecting) => Some(connecting.await.map_err(|error| Error::DockerUnreachable {
            address: "the Docker daemon".to_string(),
            reason: error.to_string(),
        })??),
        None => None,
    };
    // Daytona enabled without credentials stops here, before any task starts.
    let daytona = match settings.benchmark.daytona.as_ref().filter(|section| section.enabled) {
        Some(section) => {
            let overrides = DaytonaOverrides {
                api_url: section.api_url.clone(),
                api_key_env: section.api_key_env.clone(),
                target: section.target.clone(),
            };
            Some(Arc::new(DaytonaBackend::new(DaytonaConfig::from_env(&overrides)?)?))
        }
        None => None,
    };
    let host = owner::host_name();
    let run_id = new_run_id();
    let started_at = sweep::now_unix();
    ledger
        .start_run(RunRecord {
            id: run_id.clone(),
            pid: std::process::id(),
            start_time: owner::process_start_time(std::process::id()),
            host: host.clone(),
            benchmark: settings.benchmark.name.clone(),
            started_at,
            ended_at: None,
            outcome: None,
        })
        .await?;
    let log_dir = global.state_dir.join("runs").join(&run_id);
    std::fs::create_dir_all(&log_dir).map_err(|source| Error::Io {
        what: "create the run directory",
        path: log_dir.clone(),
        source,
    })?;
    tracing::info!(
        "run {run_id}: {} task(s) of {} ({}), {} at once; logs in {}",
        settings.tasks.len(),
        settings.benchmark.name,
        settings.source,
        settings.jobs,
        log_dir.display()
    );

    if let Err(error) = process::become_subreaper() {
        tracing::warn!("cannot become a child subreaper ({error}): double-forked harness processes may escape");
    }
    process::spawn_reaper();
    let shutdown = signal::install(third_press(ledger.path().to_path_buf(), run_id.clone(), global.state_dir.clone()))
        .map_err(|source| Error::Io { what: "listen for signals in", path: "benchwarden".into(), source })?;

    let retry = settings.retry.clone().allowing_calls_of(settings.benchmark.docker.stop_timeout);
    let removal = RemovalOptions { parallel: 16, fail_fast: false, retry };
    let backends = Backends { docker: docker.as_ref(), daytona: daytona.as_deref() };
    let pre_run = match settings.skip_cleanup {
        false => Some(pre_run_cleanup(backends, &ledger, settings, global, &removal, &run_id).await?),
        true => None,
    };

    let daytona_proxy = match (&daytona, settings.benchmark.daytona.as_ref()) {
        (Some(backend), Some(section)) => Some(DaytonaProxySettings {
            target: ApiTarget::parse(backend.api_url()).map_err(Error::Usage)?,
            host: host.clone(),
            auto_stop_minutes: section.auto_stop_minutes,
            auto_delete_minutes: section.auto_delete_minutes,
        }),
        _ => None,
    };
    let specs = settings.task_specs(&run_id);
    let watcher = docker.as_ref().map(|docker| Watcher::spawn(docker.clone(), ledger.clone(), started_at));
    let docker_proxy = docker.as_ref().and_then(|docker| match upstream_from_docker_host(docker.address()) {
        Some(upstream) => {
            Some(ProxySettings { upstream, socket_root: global.state_dir.join("sockets"), host: host.clone() })
        }
        None => {
            tracing::warn!(
                "{}: the per-task Docker proxy speaks only unix and plain tcp; tracking falls back to labels and selectors",
                docker.address()
            );
            None
        }
    });
    let context = Arc::new(RunContext {
        run_id: run_id.clone(),
        ledger: ledger.clone(),
        docker,
        daytona,
        removal,
        stop_timeout: settings.benchmark.docker.stop_timeout,
        log_dir: log_dir.clone(),
        echo_output: settings.jobs == 1,
        shutdown: shutdown.clone(),
        view: RunView::new(&global.output, specs.len()),
        teardowns: TaskTracker::new(),
        watcher,
        docker_proxy,
        daytona_proxy,
    });
    let reports = scheduler::run_all(Arc::clone(&context), specs, settings.jobs).await;
    context.teardowns.close();
    context.teardowns.wait().await;
    drop(context);

    let interrupted_by = shutdown.borrow().signal();
    let status = exit_status(&reports, interrupted_by);
    let ended_at = sweep::now_unix();
    let report_path = settings.report.clone().unwrap_or_else(|| log_dir.join("report.json"));
    let report = RunReport {
        run_id: &run_id,
        benchmark: &settings.benchmark.name,
        source: &settings.source,
        started_at,
        ended_at,
        exit_code: status.code(),
        interrupted_by: interrupted_by.map(|signal| signal.to_string()),
        pre_run_sweep: pre_run.as_ref(),
        tasks: &reports,
    };
    write_report(&report_path, &report)?;
    print_stdout(&summary(&reports))?;
    let leaked: usize =
        reports.iter().map(|report| report.resources_leaked.len() + report.resources_pending.len()).sum();
    let torn_down = reports.iter().all(|report| report.teardown_error.is_none());
    let outcome = match status {
        ExitStatus::Success => "passed",
        ExitStatus::Leaked => "leaked",
        ExitStatus::Interrupted | ExitStatus::Terminated => "interrupted",
        _ => "failed",
    };
    if leaked == 0 && torn_down {
        ledger.end_run(&run_id, outcome).await?;
    } else {
        // Left open (unended), the run becomes an orphan once we exit, so `recover` retries it.
        tracing::error!(
            "run {run_id}: {leaked} resource(s) left; retry with `benchwarden recover --state-dir {}`",
            global.state_dir.display()
        );
    }
    eprintln!("report: {}", report_path.display());
    Ok(status)
}

/// Leaked > interrupted > failed > passed.
fn exit_status(reports: &[TaskReport], interrupted_by: Option<nix::sys::signal::Signal>) -> ExitStatus {
    // A sandbox still being deleted is not proven gone: the run stays open for `recover`.
    let leaked = reports.iter().any(|report| {
        !report.resources_leaked.is_empty() || !report.resources_pending.is_empty() || report.teardown_error.is_some()
    });
    if leaked {
        return ExitStatus::Leaked;
    }
    match interrupted_by {
        Some(nix::sys::signal::Signal::SIGTERM) => return ExitStatus::Terminated,
        Some(_) => return ExitStatus::Interrupted,
        None => {}
    }
    if reports.iter().all(|report| report.outcome == TaskOutcome::Passed) {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    }
}

/// `YYYYMMDD-HHMM-xxxx` in UTC: sortable, and unique enough with four random characters.
fn new_run_id() -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // "2026-11-29T23:04:05Z"
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    let suffix: String = (0..4)
        .map(|_| {
            let alphabet = b"abcdefghijkmnpqrstuvwxyz23456789";
            alphabet[fastrand::usize(..alphabet.len())] as char
        })
        .collect();
    format!("{}-{}-{suffix}", &digits[..8], &digits[8..12])
}

/// Before the tasks: tear down what orphaned runs own, then sweep claimed
/// leftovers older than the cleanup age (or in a listed state), never
/// touching a live run's containers.
async fn pre_run_cleanup(
    backends: Backends<'_>,
    ledger: &Ledger,
    settings: &RunSettings,
    global: &GlobalSettings,
    removal: &RemovalOptions,
    own_run: &str,
) -> Result<SweepResult, Error> {
    // Runs known from labels alone wait for `recover --from-labels` or the age sweep below:
    // nothing the ledger does not know of goes without being asked.
    let recovered = recover_orphans(backends, ledger, removal, false, OrphanSource::Ledger).await?;
    if !recovered.is_empty() {
        tracing::info!("recovered {} orphaned run(s) before starting", recovered.len());
    }
    let Some(docker) = backends.docker else {
        return Ok(SweepResult::default());
    };
    let runs = ledger.runs().await?;
    let this_host = owner::host_name();
    let live_runs: Vec<&str> = runs
        .iter()
        .filter(|run| run.ended_at.is_none() && run.is_alive(&this_host) && run.id != own_run)
        .map(|run| run.id.as_str())
        .collect();
    let selectors = &settings.benchmark.docker.selectors;
    let now = sweep::now_unix();
    let age = settings.cleanup_age.as_secs() as i64;
    let sweep_settings = DockerSweep {
        selection: ContainerSelection::default(),
        stop_timeout: settings.benchmark.docker.stop_timeout,
        volumes: false,
        dry_run: false,
        removal: removal.clone(),
    };
    let result = sweep::sweep_docker(docker, &sweep_settings, &global.output, |container| {
        let by_label = container.labels.contains_key(LABEL_RUN);
        let by_selector = selectors.iter().any(|selector| selector_claims(selector, container, None));
        if !by_label && !by_selector {
            return Verdict::Skip;
        }
        let old = container.created <= now - age;
        let in_listed_state = settings.cleanup_states.contains(&container.state);
        if !old && !in_listed_state {
            return Verdict::Skip;
        }
        if let Some(reason) = live_owner(container, &runs, &this_host) {
            return Verdict::Protect(reason);
        }
        if let Some(run) = live_runs
            .iter()
            .find(|run| selectors.iter().any(|selector| selector_claims(selector, container, Some(run))))
        {
            return Verdict::Protect(format!("claimed by run {run}, which is still alive"));
        }
        Verdict::Take
    })
    .await?;
    let removed = result.containers.removed() + result.containers.already_gone();
    if removed > 0 || result.failed() > 0 {
        tracing::info!(
            "pre-run sweep: {removed} leftover container(s) removed, {} failed, {} left alone",
            result.failed(),
            result.protected.len()
        );
    }
    Ok(result)
}

/// Whether a selector template (placeholders as wildcards, `{run_id}`
/// filled when `run_id` is given) claims a container.
fn selector_claims(selector: &Selector, container: &Container, run_id: Option<&str>) -> bool {
    let fill_run = |template: &str| match run_id {
        Some(run_id) => template.replace("{run_id}", run_id),
        None => template.to_string(),
    };
    match selector {
        Selector::Label(template) => {
            let Ok(label) = LabelSelector::parse(&fill_run(template)) else {
                return false;
            };
            match (container.labels.get(&label.key), &label.value) {
                (Some(value), Some(pattern)) => matches_template(pattern, value),
                (Some(_), None) => true,
                (None, _) => false,
            }
        }
        Selector::ComposeProjectPrefix(template) => {
            let template = fill_run(template);
            container.labels.get(COMPOSE_PROJECT_LABEL).is_some_and(|project| {
                matches_template(&template, project) || matches_template(&format!("{template}{{task}}"), project)
            })
        }
    }
}

/// The third Ctrl-C: kill what still runs, say what is left, exit now.
fn third_press(ledger_path: PathBuf, run_id: String, state_dir: PathBuf) -> impl Fn(nix::sys::signal::Signal) + Send {
    move |signal| {
        process::kill_all_harnesses();
        eprintln!("error: {signal} a third time: exiting now, before teardown finished");
        match crate::ledger::unreleased_now(&ledger_path, &run_id) {
            Ok(left) if !left.is_empty() => {
                eprintln!("  resources recorded and not yet removed:");
                for record in left {
                    eprintln!("    {} (task {})", record.resource, record.task_id);
                }
            }
            _ => {}
        }
        eprintln!(
            "  run {run_id} is in the ledger; finish its teardown with: benchwarden recover --state-dir {}",
            state_dir.display()
        );
        let code = if signal == nix::sys::signal::Signal::SIGTERM { 143 } else { 130 };
        std::process::exit(code);
    }
}

fn write_report(path: &std::path::Path, report: &RunReport<'_>) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(report).unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"));
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            what: "create the report's directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, text + "\n").map_err(|source| Error::Io {
        what: "write the report",
        path: path.to_path_buf(),
        source,
    })
}

/// The summary table, one row per task.
fn summary(reports: &[TaskReport]) -> String {
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|report| {
            let outcome = report.outcome.describe();
            let exit = match (&report.exit_code, &report.signal) {
                (Some(code), _) => code.to_string(),
                (None, Some(signal)) => signal.clone(),
                (None, None) => "-".to_string(),
            };
            vec![
                report.task.clone(),
                outcome.to_string(),
                exit,
                format!("{:.1}s", report.seconds),
                report.resources_found.to_string(),
                report.resources_removed.to_string(),
                report.resources_leaked.len().to_string(),
                format!("{:.1}s", report.teardown_seconds),
            ]
        })
        .collect();
    let mut text = report::table(&["TASK", "RESULT", "EXIT", "TIME", "FOUND", "REMOVED", "LEAKED", "TEARDOWN"], &rows);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for report in reports {
        let key = match report.outcome {
            TaskOutcome::Passed => "passed",
            TaskOutcome::TimedOut => "timed out",
            TaskOutcome::NotStarted => "not started",
            TaskOutcome::Interrupted => "interrupted",
            _ => "failed",
        };
        *counts.entry(key).or_default() += 1;
    }
    let leaked: usize = reports.iter().map(|report| report.resources_leaked.len()).sum();
    let removed: usize = reports.iter().map(|report| report.resources_removed).sum();
    let counts: Vec<String> = counts.iter().map(|(key, count)| format!("{count} {key}")).collect();
    let pending: usize = reports.iter().map(|report| report.resources_pending.len()).sum();
    let pending = if pending > 0 { format!(", {pending} still being deleted") } else { String::new() };
    text.push_str(&format!("{}; {removed} resource(s) removed, {leaked} leaked{pending}\n", counts.join(", ")));
    for report in reports {
        if let Some(error) = &report.error {
            text.push_str(&format!("  {}: {error}\n", report.task));
        }
        if let Some(error) = &report.teardown_error {
            text.push_str(&format!("  {}: teardown: {error}\n", report.task));
        }
        for resource in &report.resources_leaked {
            text.push_str(&format!("  {}: leaked {resource}\n", report.task));
        }
        for resource in &report.resources_pending {
            text.push_str(&format!(
                "  {}: {resource} is still being deleted; `benchwarden recover` checks it again\n",
                report.task
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time_and_look_like_the_design() {
        let id = new_run_id();
        assert_eq!(id.len(), "20261129-2304-k3f9".len(), "{id}");
        assert_eq!(&id[8..9], "-");
        assert_eq!(&id[13..14], "-");
        assert_ne!(new_run_id(), new_run_id());
    }

    #[test]
    fn leaks_outrank_interrupts_which_outrank_failures() {
        let report = |outcome, leaked: &[&str]| {
            let mut report = TaskReport::not_started("t", PathBuf::from("t.log"));
            report.outcome = outcome;
            report.resources_leaked = leaked.iter().map(ToString::to_string).collect();
            report
        };
        let passed = report(TaskOutcome::Passed, &[]);
        let failed = report(TaskOutcome::TimedOut, &[]);
        let leaked = report(TaskOutcome::Passed, &["container c"]);
        use nix::sys::signal::Signal::{SIGINT, SIGTERM};
        assert_eq!(exit_status(std::slice::from_ref(&passed), None), ExitStatus::Success);
        assert_eq!(exit_status(&[passed.clone(), failed.clone()], None), ExitStatus::Failure);
        assert_eq!(exit_status(std::slice::from_ref(&failed), Some(SIGINT)), ExitStatus::Interrupted);
        assert_eq!(exit_status(std::slice::from_ref(&passed), Some(SIGTERM)), ExitStatus::Terminated);
        assert_eq!(exit_status(&[failed, leaked], Some(SIGINT)), ExitStatus::Leaked);
    }

    #[test]
    fn selectors_claim_by_label_template_and_project_prefix() {
        let container = |labels: &[(&str, &str)]| Container {
            id: "c".into(),
            name: "n".into(),
            image: "i".into(),
            state: "running".into(),
            created: 0,
            labels: labels.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
            compose_project: None,
        };
        let label = Selector::Label("bench.owner={run_id}.{task}".into());
        let labelled = container(&[("bench.owner", "20261129-2304-k3f9.two")]);
        assert!(selector_claims(&label, &labelled, None));
        assert!(selector_claims(&label, &labelled, Some("20261129-2304-k3f9")));
        assert!(!selector_claims(&label, &labelled, Some("20261129-2304-zzzz")));
        let prefix = Selector::ComposeProjectPrefix("tb-{run_id}".into());
        let project = container(&[(COMPOSE_PROJECT_LABEL, "tb-r1-hello")]);
        assert!(selector_claims(&prefix, &project, None));
        assert!(selector_claims(&prefix, &project, Some("r1")));
        assert!(!selector_claims(&prefix, &project, Some("r2")));
    }
}
