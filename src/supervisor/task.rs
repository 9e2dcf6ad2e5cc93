//! One task's run: start its interceptors and spawn the harness in its own
//! process group, let the [`lifecycle`](super::lifecycle) see every process
//! of the task through to its end, then tear down what the task owns on a
//! tracked task that no cancellation can skip. What happens is told as
//! events; the report is the task's record.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;

use super::keep::{self, KeepPolicy};
use super::lifecycle::{self, Ending, Harness, Lifecycle, ProcessSet};
use super::process::{self, RunningTask, TaskProcesses, ENV_HOST, ENV_PID, ENV_RUN_ID, ENV_STATE_DIR, ENV_TASK_ID};
use super::signal::{Shutdown, Suspension};
use super::watch::Watcher;
use crate::backend::daytona::DaytonaBackend;
use crate::backend::docker::DockerBackend;
use crate::config::{ResultsFormat, Selector};
use crate::events::{Events, ResourceFates, TaskEvent, TaskOutcome, TaskReport};
use crate::intercept::daytona_proxy::{DaytonaProxy, DaytonaProxySettings};
use crate::intercept::docker_proxy::{DockerProxy, DockerProxySettings};
use crate::intercept::proxy::Recorder;
use crate::ledger::Ledger;
use crate::limits::LiveResources;
use crate::owner::{owner_labels, Claims};
use crate::resource::ResourceRef;
use crate::results::{self, TaskResult};
use crate::teardown::{self, Backends, TeardownOptions, TeardownReport};

/// Everything needed to run one task, resolved.
#[derive(Debug, Clone)]
pub(crate) struct TaskSpec {
    pub(crate) name: String,
    pub(crate) index: usize,
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) grace: Duration,
    pub(crate) selectors: Vec<Selector>,
    /// Whose result files to read once the harness has run to its end.
    pub(crate) results: Option<ResultsFormat>,
}

/// What every task of a run shares.
pub(crate) struct RunContext {
    pub(crate) run_id: String,
    /// This host's name, stamped in the owner labels.
    pub(crate) host: String,
    pub(crate) ledger: Ledger,
    pub(crate) docker: Option<DockerBackend>,
    pub(crate) daytona: Option<Arc<DaytonaBackend>>,
    pub(crate) teardown: TeardownOptions,
    pub(crate) log_dir: PathBuf,
    /// Harness output also goes to the terminal (with `-j 1`).
    pub(crate) echo_output: bool,
    pub(crate) shutdown: watch::Receiver<Shutdown>,
    /// Whether the run is stopped by Ctrl-Z: the tasks' clocks stand still meanwhile.
    pub(crate) suspension: watch::Receiver<Suspension>,
    pub(crate) events: Events,
    /// Teardowns run here, off the tasks' `-j` slots: the run waits for them at its end.
    pub(crate) teardowns: TaskTracker,
    /// Teardowns at once; a task's waits here once its processes are gone.
    pub(crate) teardown_slots: Arc<Semaphore>,
    /// The run's live containers and sandboxes, and its limits.
    pub(crate) live: LiveResources,
    /// Records claimed containers as they are created; `None` without Docker.
    pub(crate) watcher: Option<Watcher>,
    /// Where each task's Docker proxy listens and forwards; `None` without Docker.
    pub(crate) docker_proxy: Option<DockerProxySettings>,
    /// Where each task's Daytona proxy forwards; `None` without Daytona.
    pub(crate) daytona_proxy: Option<DaytonaProxySettings>,
    /// Whether a failed task's resources stay in place (`--keep-failed`).
    pub(crate) keep: KeepPolicy,
    /// The state directory, absolute: harnesses get it, so `benchwarden claim` finds the ledger.
    pub(crate) state_dir: PathBuf,
}

/// Why a harness could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TaskStartError {
    #[error("cannot {what} log file {path}: {source}")]
    LogFile { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot start the Docker proxy in {root}: {source}")]
    DockerProxy { root: PathBuf, source: std::io::Error },
    #[error("cannot start the Daytona proxy: {source}")]
    DaytonaProxy { source: std::io::Error },
    #[error("cannot start harness `{program}`{cwd}: {source}; check harness.command in the benchmark file")]
    Harness { program: String, cwd: String, source: std::io::Error },
}

/// A task whose processes are all gone; its teardown is still ahead.
pub(crate) struct EndedTask {
    claims: Claims,
    report: TaskReport,
}

/// Runs one task until every process of it has gone: the part that holds
/// a `-j` slot. [`tear_down_task`] finishes it.
pub(crate) async fn run_task(context: &RunContext, spec: TaskSpec) -> EndedTask {
    let events = &context.events;
    let started = Instant::now();
    let log_path = context.log_dir.join(format!("{}.log", spec.name));
    let mut report = TaskReport::unstarted(&spec.name, log_path.clone());
    let claims =
        Claims { run_id: context.run_id.clone(), task_id: Some(spec.name.clone()), selectors: spec.selectors.clone() };
    if let Some(watcher) = &context.watcher {
        watcher.register(&spec.name, claims.clone());
    }
    events.task(TaskEvent::Started { task: &spec.name });
    if let Err(error) = context.ledger.record_claims(&context.run_id, &spec.name, &spec.selectors).await {
        tracing::error!("task {}: {error}", spec.name);
    }
    match supervise(context, &spec, &log_path).await {
        Ok((ending, status, log_error)) => {
            record_ending(&mut report, ending, status);
            report.log_error = log_error;
        }
        Err(error) => {
            report.outcome = TaskOutcome::SpawnFailed;
            report.error = Some(error.to_string());
        }
    }
    context.live.processes_ended(&spec.name);
    report.result = read_result(&spec, report.outcome).await;
    report.seconds = started.elapsed().as_secs_f64();
    events.task(TaskEvent::Ended { report: &report });
    EndedTask { claims, report }
}

/// Tears down what an ended task owns (or keeps it, `--keep-failed`), at
/// most `teardown_slots` at once, and returns its finished report.
pub(crate) async fn tear_down_task(context: &RunContext, ended: EndedTask) -> TaskReport {
    let EndedTask { claims, mut report } = ended;
    // The semaphore is never closed; were it, the teardown would go on unbounded rather than not at all.
    let _slot = context.teardown_slots.acquire().await.ok();
    report.refused_creates = context.live.refused(&report.task);
    let left = match keep::keep_if_failed(context, &claims, &mut report).await {
        Some(kept) => kept,
        None => {
            context.events.task(TaskEvent::TearingDown { task: &report.task });
            tear_down(context, claims, &mut report).await
        }
    };
    if let Some(watcher) = &context.watcher {
        watcher.unregister(&report.task);
    }
    context.live.torn_down(&report.task, &left);
    context.events.task(TaskEvent::Finished { report: &report });
    report
}

/// The harness's own verdict, when the benchmark names its result format
/// and the harness ran to its end (a stopped harness wrote no result).
async fn read_result(spec: &TaskSpec, outcome: TaskOutcome) -> Option<TaskResult> {
    let format = spec.results?;
    if !matches!(outcome, TaskOutcome::Passed | TaskOutcome::Failed) {
        return None;
    }
    let args = spec.args.clone();
    let cwd = spec.cwd.clone().or_else(|| std::env::current_dir().ok()).unwrap_or_default();
    // A few small files; off the runtime's threads all the same.
    tokio::task::spawn_blocking(move || results::read(format, &args, &cwd)).await.ok()
}

fn record_ending(report: &mut TaskReport, ending: Ending, status: Option<ExitStatus>) {
    report.outcome = ending.outcome();
    report.exit_code = status.and_then(|status| status.code());
    report.signal = status
        .and_then(|status| std::os::unix::process::ExitStatusExt::signal(&status))
        .and_then(|number| Signal::try_from(number).ok())
        .map(|signal| signal.to_string());
}

/// Tears down what the task owns on its own tracked task, so that a
/// cancelled caller cannot cut it short, and records how it went. Returns
/// what is still there (leaked, pending, or unknown after a failure).
async fn tear_down(context: &RunContext, claims: Claims, report: &mut TaskReport) -> Vec<ResourceRef> {
    if context.docker.is_none() && context.daytona.is_none() {
        return Vec::new();
    }
    let (docker, daytona) = (context.docker.clone(), context.daytona.clone());
    let (ledger, options, events) = (context.ledger.clone(), context.teardown.clone(), context.events.clone());
    let handle = context.teardowns.spawn(async move {
        let deadline = options.removal.retry.deadline * 2 + Duration::from_secs(30);
        let backends = Backends { docker: docker.as_ref(), daytona: daytona.as_deref() };
        tokio::time::timeout(deadline, teardown::teardown(backends, &ledger, &claims, &options, &events)).await
    });
    let failure = match handle.await {
        Ok(Ok(Ok(torn))) => {
            record_teardown(report, &torn);
            return torn.leaked.into_iter().chain(torn.pending).collect();
        }
        // The cause too: "list sandboxes failed" alone does not say what to fix.
        Ok(Ok(Err(error))) => error.with_causes(),
        Ok(Err(_)) => "teardown passed its deadline".to_string(),
        Err(join_error) => format!("teardown task failed: {join_error}"),
    };
    report.teardown_error = Some(failure);
    record_unverified(context, report).await
}

/// After a teardown that failed, what the ledger recorded for the task and
/// never saw released is still there as far as anyone can tell: it counts
/// as found and leaked, by id, not as nothing.
async fn record_unverified(context: &RunContext, report: &mut TaskReport) -> Vec<ResourceRef> {
    match context.ledger.unreleased(&context.run_id, Some(&report.task)).await {
        Ok(rows) => {
            report.resources_found = rows.len();
            report.resources_leaked = rows.iter().map(|row| row.resource.to_string()).collect();
            report.resources = ResourceFates { created: rows.len(), leaked: rows.len(), ..ResourceFates::default() };
            rows.into_iter().map(|row| row.resource).collect()
        }
        Err(error) => {
            tracing::error!("task {}: cannot read what the ledger recorded: {error}", report.task);
            Vec::new()
        }
    }
}

fn record_teardown(report: &mut TaskReport, torn: &TeardownReport) {
    report.resources_found = torn.found();
    report.resources_removed = torn.removal.removed() + torn.removal.already_gone();
    report.resources_leaked = torn.leaked.iter().map(ToString::to_string).collect();
    report.resources_pending = torn.pending.iter().map(ToString::to_string).collect();
    report.teardown_seconds = torn.seconds;
    report.resources = ResourceFates {
        created: torn.known,
        removed_by_harness: torn.removed_by_others.len(),
        removed_by_benchwarden: report.resources_removed,
        leaked: torn.leaked.len(),
        kept: 0,
    };
}

/// The harness as the lifecycle waits for it.
impl Harness for tokio::process::Child {
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        tokio::process::Child::wait(self).await
    }
}

impl ProcessSet for TaskProcesses {
    fn signal(&self, signal: Signal) -> usize {
        TaskProcesses::signal(self, signal)
    }

    fn any_left(&self) -> bool {
        TaskProcesses::any_left(self)
    }
}

/// Spawns the harness and sees it through to the end of every process of
/// the task: why it ended, and the harness's exit status when known.
async fn supervise(
    context: &RunContext,
    spec: &TaskSpec,
    log_path: &Path,
) -> Result<(Ending, Option<ExitStatus>, Option<String>), TaskStartError> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|source| TaskStartError::LogFile { what: "open", path: log_path.to_path_buf(), source })?;
    let mut command = harness_command(context, spec);
    let interceptors = Interceptors::start(context, spec, &mut command).await?;
    let output = Output::wire(&mut command, log_file, context.echo_output, log_path)?;
    let (mut child, pid) = process::spawn_harness(&mut command).map_err(|source| TaskStartError::Harness {
        program: spec.program.clone(),
        cwd: spec.cwd.as_ref().map(|cwd| format!(" in {}", cwd.display())).unwrap_or_default(),
        source,
    })?;
    // Read now, while the harness surely runs: its start time bounds the search for its descendants.
    let processes = TaskProcesses::new(pid, &context.run_id, &spec.name);
    let running = RunningTask::register(&processes);
    let copies = output.start(&mut child, &context.events, &spec.name, log_path);
    tracing::debug!("task {}: harness pid {pid}", spec.name);
    let watch = lifecycle::Watch {
        task: &spec.name,
        time_limit: spec.timeout,
        shutdown: context.shutdown.clone(),
        suspension: context.suspension.clone(),
        events: &context.events,
    };
    let stopped = lifecycle::stop_when_done(Lifecycle::new(spec.grace), &mut child, &processes, watch).await;
    let status = match stopped.awaits_harness() {
        true => child.wait().await.ok(),
        false => stopped.status(),
    };
    process::unregister_tokio_child(pid);
    drop(running);
    // Every process of the task is gone; creates it sent that the daemon still carries out are recorded first.
    interceptors.stop().await;
    // The first write error on the log, whichever copy met it.
    let mut log_error = None;
    for copy in copies {
        if let Ok(Some(error)) = copy.await {
            log_error.get_or_insert(error);
        }
    }
    // Every way out of running sets an ending; a lifecycle without one was interrupted.
    let ending = stopped.ending().unwrap_or(Ending::Interrupted(Signal::SIGTERM));
    Ok((ending, status, log_error))
}

/// The harness's command: its own process group, the run and task ids in
/// its environment (inherited by every descendant, so `setsid` cannot hide
/// them), no stdin.
fn harness_command(context: &RunContext, spec: &TaskSpec) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .env(ENV_RUN_ID, &context.run_id)
        .env(ENV_TASK_ID, &spec.name)
        // For harness files that label what they create themselves (Harbor's compose override).
        .env(ENV_HOST, &context.host)
        .env(ENV_PID, std::process::id().to_string())
        // So that `benchwarden claim`, run by the harness, finds this run's ledger.
        .env(ENV_STATE_DIR, &context.state_dir)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    command
}

/// A task's proxies: its Docker and Daytona clients go through them, and
/// every create is labelled and recorded before the harness learns its id.
struct Interceptors {
    docker: Option<DockerProxy>,
    daytona: Option<DaytonaProxy>,
}

impl Interceptors {
    async fn start(
        context: &RunContext,
        spec: &TaskSpec,
        command: &mut tokio::process::Command,
    ) -> Result<Self, TaskStartError> {
        // The pid label lets another state directory's cleanup tell that this run is alive.
        let labels = || owner_labels(&context.run_id, &spec.name, &context.host, std::process::id());
        let recorder = || Recorder {
            run_id: context.run_id.clone(),
            task_id: spec.name.clone(),
            ledger: context.ledger.clone(),
            events: context.events.clone(),
            live: context.live.clone(),
            creates: TaskTracker::new(),
        };
        let mut interceptors = Interceptors { docker: None, daytona: None };
        if let Some(settings) = &context.docker_proxy {
            let proxy = DockerProxy::start_for_task(settings, labels(), recorder())
                .await
                .map_err(|source| TaskStartError::DockerProxy { root: settings.socket_roots[0].clone(), source })?;
            command.env("DOCKER_HOST", proxy.docker_host()).env_remove("DOCKER_CONTEXT");
            interceptors.docker = Some(proxy);
        }
        if let Some(settings) = &context.daytona_proxy {
            let proxy = DaytonaProxy::start_for_task(settings, labels(), recorder())
                .await
                .map_err(|source| TaskStartError::DaytonaProxy { source })?;
            command.env("DAYTONA_API_URL", proxy.api_url()).env_remove("DAYTONA_SERVER_URL");
            interceptors.daytona = Some(proxy);
        }
        Ok(interceptors)
    }

    async fn stop(self) {
        let docker = async {
            if let Some(proxy) = self.docker {
                proxy.stop().await;
            }
        };
        let daytona = async {
            if let Some(proxy) = self.daytona {
                proxy.stop().await;
            }
        };
        tokio::join!(docker, daytona);
    }
}

/// Where the harness's output goes: its log file, and with `-j 1` also the
/// terminal, through the event stream.
enum Output {
    LogOnly,
    Echoed(std::fs::File),
}

impl Output {
    fn wire(
        command: &mut tokio::process::Command,
        log_file: std::fs::File,
        echo: bool,
        log_path: &Path,
    ) -> Result<Self, TaskStartError> {
        if echo {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            return Ok(Output::Echoed(log_file));
        }
        let shared = |file: &std::fs::File| {
            file.try_clone().map_err(|source| TaskStartError::LogFile {
                what: "share",
                path: log_path.to_path_buf(),
                source,
            })
        };
        command.stdout(Stdio::from(shared(&log_file)?)).stderr(Stdio::from(log_file));
        Ok(Output::LogOnly)
    }

    /// Starts copying piped output; the copies end when the harness's pipes close.
    fn start(
        self,
        child: &mut tokio::process::Child,
        events: &Events,
        task: &str,
        log_path: &Path,
    ) -> Vec<tokio::task::JoinHandle<Option<String>>> {
        let Output::Echoed(log_file) = self else {
            return Vec::new();
        };
        let log = Arc::new(tokio::sync::Mutex::new(tokio::fs::File::from_std(log_file)));
        let mut copies = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let log = LogFile { file: Arc::clone(&log), task: task.to_string(), path: log_path.to_path_buf() };
            copies.push(tokio::spawn(tee(stdout, log, events.clone())));
        }
        if let Some(stderr) = child.stderr.take() {
            let log = LogFile { file: log, task: task.to_string(), path: log_path.to_path_buf() };
            copies.push(tokio::spawn(tee(stderr, log, events.clone())));
        }
        copies
    }
}

/// A task's log file, shared by the copies of its stdout and stderr.
struct LogFile {
    file: Arc<tokio::sync::Mutex<tokio::fs::File>>,
    task: String,
    path: PathBuf,
}

/// Copies the harness's output to its log, then to the terminal. A write
/// error on the log (a full disk) is told once, and returned: the output
/// still reaches the terminal, and the report names the failure.
async fn tee(mut source: impl AsyncRead + Unpin, log: LogFile, events: Events) -> Option<String> {
    let mut buffer = vec![0u8; 8192];
    let mut failed: Option<String> = None;
    loop {
        let count = match source.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(count) => count,
        };
        // The log first: it is the record that outlives us, so nothing seen on
        // the terminal is missing from it if we are killed right after.
        if failed.is_none() {
            let mut file = log.file.lock().await;
            if let Err(error) = write_flushed(&mut file, &buffer[..count]).await {
                let error = error.to_string();
                events.task(TaskEvent::LogFailed { task: &log.task, path: &log.path, error: &error });
                failed = Some(format!("writing its log {}: {error}", log.path.display()));
            }
        }
        events.task(TaskEvent::Output { bytes: &buffer[..count] });
    }
    if failed.is_none() {
        if let Err(error) = log.file.lock().await.flush().await {
            failed = Some(format!("writing its log {}: {error}", log.path.display()));
        }
    }
    failed
}

async fn write_flushed(file: &mut tokio::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes).await?;
    file.flush().await
}
