//! One task's life: spawn the harness in its own process group, wait for
//! exit, timeout or shutdown, stop every process of the task (signal, grace,
//! SIGKILL, adopted orphans too), then tear down what it owns on a tracked
//! task that no cancellation can skip.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::process::{self, TaskProcesses, ENV_RUN_ID, ENV_TASK_ID};
use super::signal::Shutdown;
use crate::backend::daytona::DaytonaBackend;
use crate::backend::docker::DockerBackend;
use crate::backend::RemovalOptions;
use crate::config::Selector;
use crate::intercept::daytona_proxy::{ApiTarget, DaytonaPolicy, DaytonaProxy};
use crate::intercept::docker_proxy::{DockerPolicy, DockerProxy, Upstream};
use crate::intercept::proxy::Recorder;
use crate::ledger::Ledger;
use crate::owner;
use crate::report::{echo_harness_output, RunView};
use crate::teardown::{self, Backends, Claims, TeardownReport};

/// After SIGKILL, how long to wait for the task's processes to vanish.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Everything needed to run one task, resolved.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub name: String,
    pub index: usize,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub grace: Duration,
    pub selectors: Vec<Selector>,
}

/// What every task of a run shares.
pub struct RunContext {
    pub run_id: String,
    pub ledger: Ledger,
    pub docker: Option<DockerBackend>,
    pub daytona: Option<Arc<DaytonaBackend>>,
    pub removal: RemovalOptions,
    pub stop_timeout: Option<Duration>,
    pub log_dir: PathBuf,
    /// Harness output also goes to the terminal (with `-j 1`).
    pub echo_output: bool,
    pub shutdown: watch::Receiver<Shutdown>,
    pub view: RunView,
    pub teardowns: TaskTracker,
    /// Records claimed containers as they are created; `None` without Docker.
    pub watcher: Option<super::watch::Watcher>,
    /// Where each task's Docker proxy listens and forwards; `None` without Docker.
    pub docker_proxy: Option<ProxySettings>,
    /// Where each task's Daytona proxy forwards; `None` without Daytona.
    pub daytona_proxy: Option<DaytonaProxySettings>,
}

/// How tasks' Daytona proxies are set up.
pub struct DaytonaProxySettings {
    pub target: ApiTarget,
    pub host: String,
    pub auto_stop_minutes: Option<u32>,
    pub auto_delete_minutes: Option<i64>,
}

/// How tasks' Docker proxies are set up.
pub struct ProxySettings {
    pub upstream: Upstream,
    /// Each task gets a private directory with its socket under this.
    pub socket_root: PathBuf,
    pub host: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    Passed,
    Failed,
    TimedOut,
    Interrupted,
    /// The harness could not be started.
    SpawnFailed,
    /// Never started: the run was interrupted first.
    NotStarted,
}

impl TaskOutcome {
    pub fn describe(self) -> &'static str {
        match self {
            TaskOutcome::Passed => "passed",
            TaskOutcome::Failed => "failed",
            TaskOutcome::TimedOut => "timed out",
            TaskOutcome::Interrupted => "interrupted",
            TaskOutcome::SpawnFailed => "not started: spawn failed",
            TaskOutcome::NotStarted => "not started",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    pub task: String,
    pub outcome: TaskOutcome,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub error: Option<String>,
    pub seconds: f64,
    pub log: PathBuf,
    pub resources_found: usize,
    pub resources_removed: usize,
    pub resources_leaked: Vec<String>,
    /// Deletion accepted but not finished (sandboxes still `destroying`): kept for `recover`.
    pub resources_pending: Vec<String>,
    pub teardown_seconds: f64,
    pub teardown_error: Option<String>,
}

impl TaskReport {
    pub fn not_started(name: &str, log: PathBuf) -> Self {
        TaskReport {
            task: name.to_string(),
            outcome: TaskOutcome::NotStarted,
            exit_code: None,
            signal: None,
            error: None,
            seconds: 0.0,
            log,
            resources_found: 0,
            resources_removed: 0,
            resources_leaked: Vec::new(),
            resources_pending: Vec::new(),
            teardown_seconds: 0.0,
            teardown_error: None,
        }
    }
}

enum Ending {
    Exited(std::process::ExitStatus),
    TimedOut,
    Interrupted(Signal),
}

pub async fn run_task(context: Arc<RunContext>, spec: TaskSpec) -> TaskReport {
    let started = Instant::now();
    let log_path = context.log_dir.join(format!("{}.log", spec.name));
    let mut report = TaskReport::not_started(&spec.name, log_path.clone());
    let claims =
        Claims { run_id: context.run_id.clone(), task_id: Some(spec.name.clone()), selectors: spec.selectors.clone() };
    let live = context.watcher.as_ref().map(|watcher| watcher.register(&spec.name, claims.clone()));
    let line = context.view.task_started(&spec.name, live);
    let encoded = spec.selectors.iter().map(Claims::encode_selector).collect();
    if let Err(error) = context.ledger.record_claims(&context.run_id, &spec.name, encoded).await {
        tracing::error!("task {}: {error}", spec.name);
    }

    match supervise(&context, &spec, &log_path).await {
        Ok((ending, process_status)) => {
            report.exit_code = process_status.and_then(|status| status.code());
            report.signal = process_status
                .and_then(|status| std::os::unix::process::ExitStatusExt::signal(&status))
                .and_then(|number| Signal::try_from(number).ok())
                .map(|signal| signal.to_string());
            report.outcome = match ending {
                Ending::Exited(status) if status.success() => TaskOutcome::Passed,
                Ending::Exited(_) => TaskOutcome::Failed,
                Ending::TimedOut => TaskOutcome::TimedOut,
                Ending::Interrupted(_) => TaskOutcome::Interrupted,
            };
        }
        Err(message) => {
            tracing::error!("task {}: {message}", spec.name);
            report.outcome = TaskOutcome::SpawnFailed;
            report.error = Some(message);
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    match report.outcome {
        TaskOutcome::Passed => {
            tracing::info!("task {}: passed in {:.1}s", spec.name, report.seconds)
        }
        TaskOutcome::TimedOut => {
            tracing::warn!("task {}: timed out after {:.1}s", spec.name, report.seconds)
        }
        _ => tracing::warn!(
            "task {}: {} (exit {}) after {:.1}s; log: {}",
            spec.name,
            report.outcome.describe(),
            report
                .exit_code
                .map(|code| code.to_string())
                .or_else(|| report.signal.clone())
                .unwrap_or_else(|| "-".into()),
            report.seconds,
            log_path.display()
        ),
    }

    line.set_message("tearing down");
    tracing::info!("task {}: tearing down", spec.name);
    if context.docker.is_some() || context.daytona.is_some() {
        // Its own tracked task: a cancelled caller cannot cut a teardown short.
        let (docker, daytona) = (context.docker.clone(), context.daytona.clone());
        let ledger = context.ledger.clone();
        let removal = context.removal.clone();
        let stop_timeout = context.stop_timeout;
        let handle = context.teardowns.spawn(async move {
            let deadline = removal.retry.deadline * 2 + Duration::from_secs(30);
            let backends = Backends { docker: docker.as_ref(), daytona: daytona.as_deref() };
            tokio::time::timeout(deadline, teardown::teardown(backends, &ledger, &claims, &removal, stop_timeout)).await
        });
        match handle.await {
            Ok(Ok(Ok(torn))) => record_teardown(&mut report, &torn),
            Ok(Ok(Err(error))) => report.teardown_error = Some(error.to_string()),
            Ok(Err(_)) => report.teardown_error = Some("teardown passed its deadline".to_string()),
            Err(join_error) => report.teardown_error = Some(format!("teardown task failed: {join_error}")),
        }
        if let Some(error) = &report.teardown_error {
            tracing::error!("task {}: teardown: {error}; run `benchwarden recover` later", spec.name);
        }
    }
    if let Some(watcher) = &context.watcher {
        watcher.unregister(&spec.name);
    }
    let failed = !matches!(report.outcome, TaskOutcome::Passed);
    context.view.task_finished(failed, report.outcome == TaskOutcome::TimedOut);
    report
}

fn record_teardown(report: &mut TaskReport, torn: &TeardownReport) {
    report.resources_found = torn.found();
    report.resources_removed = torn.removal.removed() + torn.removal.already_gone();
    report.resources_leaked = torn.leaked.iter().map(ToString::to_string).collect();
    report.resources_pending = torn.pending.iter().map(ToString::to_string).collect();
    report.teardown_seconds = torn.seconds;
}

/// Spawns the harness and sees it through to the end of every process of
/// the task. `Err` only when the harness could not be started.
async fn supervise(
    context: &RunContext,
    spec: &TaskSpec,
    log_path: &std::path::Path,
) -> Result<(Ending, Option<std::process::ExitStatus>), String> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|error| format!("cannot open log file {}: {error}", log_path.display()))?;
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .env(ENV_RUN_ID, &context.run_id)
        .env(ENV_TASK_ID, &spec.name)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    // The task's Docker clients go through its own proxy, which labels and records every create.
    let proxy = match &context.docker_proxy {
        Some(settings) => {
            let policy = DockerPolicy {
                labels: owner::owner_labels(&context.run_id, &spec.name, &settings.host, std::process::id()),
            };
            let proxy =
                DockerProxy::start(&settings.socket_root, settings.upstream.clone(), policy, recorder(context, spec))
                    .await
                    .map_err(|error| {
                        format!("cannot start the Docker proxy in {}: {error}", settings.socket_root.display())
                    })?;
            command.env("DOCKER_HOST", proxy.docker_host()).env_remove("DOCKER_CONTEXT");
            Some(proxy)
        }
        None => None,
    };
    // Likewise its Daytona SDK, through a local HTTP proxy.
    let daytona_proxy = match &context.daytona_proxy {
        Some(settings) => {
            // The pid label too, beyond the three the design asks for: it lets another state
            // directory's cleanup tell that this run is alive.
            let labels = owner::owner_labels(&context.run_id, &spec.name, &settings.host, std::process::id());
            let policy = DaytonaPolicy {
                target: settings.target.clone(),
                labels,
                auto_stop_minutes: settings.auto_stop_minutes,
                auto_delete_minutes: settings.auto_delete_minutes,
            };
            let proxy = DaytonaProxy::start(policy, recorder(context, spec))
                .await
                .map_err(|error| format!("cannot start the Daytona proxy: {error}"))?;
            command.env("DAYTONA_API_URL", proxy.api_url()).env_remove("DAYTONA_SERVER_URL");
            Some(proxy)
        }
        None => None,
    };
    if context.echo_output {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        let stderr_file =
            log_file.try_clone().map_err(|error| format!("cannot share log file {}: {error}", log_path.display()))?;
        command.stdout(Stdio::from(log_file.try_clone().map_err(|error| error.to_string())?)).stderr(stderr_file);
    }
    let (mut child, pid) = process::spawn_harness(&mut command).map_err(|error| {
        let cwd = spec.cwd.as_ref().map(|cwd| format!(" in {}", cwd.display())).unwrap_or_default();
        format!("cannot start harness `{}`{cwd}: {error}; check harness.command in the benchmark file", spec.program)
    })?;
    // Read now, while the harness surely runs: its start time bounds the search for its descendants.
    let processes = TaskProcesses::new(pid, &context.run_id, &spec.name);
    let mut copies = Vec::new();
    if context.echo_output {
        let log = Arc::new(tokio::sync::Mutex::new(tokio::fs::File::from_std(log_file)));
        if let Some(stdout) = child.stdout.take() {
            copies.push(tokio::spawn(tee(stdout, Arc::clone(&log))));
        }
        if let Some(stderr) = child.stderr.take() {
            copies.push(tokio::spawn(tee(stderr, log)));
        }
    }
    tracing::debug!("task {}: harness pid {pid}", spec.name);

    let mut shutdown = context.shutdown.clone();
    let timeout = async {
        match spec.timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let ending = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => Ending::Exited(status),
            Err(error) => {
                tracing::error!("task {}: waiting for the harness failed: {error}", spec.name);
                Ending::Interrupted(Signal::SIGTERM)
            }
        },
        () = timeout => Ending::TimedOut,
        Ok(state) = shutdown.wait_for(|state| state.is_requested()) => {
            Ending::Interrupted(state.signal().unwrap_or(Signal::SIGTERM))
        }
    };

    // Stop every process of the task, whatever the ending: a harness that exited
    // may have left background processes that still create resources.
    let first_signal = match ending {
        Ending::Interrupted(signal) => signal,
        _ => Signal::SIGTERM,
    };
    stop_all(context, spec, &processes, first_signal).await;
    let status = match ending {
        Ending::Exited(status) => Some(status),
        _ => child.wait().await.ok(),
    };
    process::unregister_tokio_child(pid);
    if let Some(proxy) = proxy {
        proxy.stop();
    }
    if let Some(proxy) = daytona_proxy {
        proxy.stop();
    }
    for copy in copies {
        let _ = copy.await;
    }
    Ok((ending, status))
}

fn recorder(context: &RunContext, spec: &TaskSpec) -> Recorder {
    Recorder { run_id: context.run_id.clone(), task_id: spec.name.clone(), ledger: context.ledger.clone() }
}

/// Signal, grace (cut short by a second Ctrl-C), SIGKILL, and wait until no
/// process of the task is left.
async fn stop_all(context: &RunContext, spec: &TaskSpec, processes: &TaskProcesses, first_signal: Signal) {
    let task_id = &spec.name;
    if processes.find().is_empty() {
        return;
    }
    let signalled = processes.signal(first_signal);
    tracing::debug!("task {task_id}: sent {first_signal} to {signalled} process(es)");
    let mut shutdown = context.shutdown.clone();
    let killed_now = async { shutdown.wait_for(|state| matches!(state, Shutdown::Kill(_))).await.map(drop) };
    let gone = tokio::select! {
        gone = processes.wait_gone(spec.grace) => gone,
        Ok(()) = killed_now => false,
    };
    if gone {
        return;
    }
    let killed = processes.signal(Signal::SIGKILL);
    tracing::info!("task {task_id}: killed {killed} process(es) with SIGKILL");
    if !processes.wait_gone(KILL_WAIT).await {
        tracing::error!("task {task_id}: processes survive SIGKILL (uninterruptible sleep?); tearing down anyway");
    }
}

async fn tee(mut source: impl AsyncRead + Unpin, log: Arc<tokio::sync::Mutex<tokio::fs::File>>) {
    let mut buffer = vec![0u8; 8192];
    loop {
        match source.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(count) => {
                // The log first: it is the record that outlives us, so nothing seen on
                // the terminal is missing from it if we are killed right after.
                {
                    let mut log = log.lock().await;
                    let _ = log.write_all(&buffer[..count]).await;
                    let _ = log.flush().await;
                }
                echo_harness_output(&buffer[..count]);
            }
        }
    }
    let _ = log.lock().await.flush().await;
}
