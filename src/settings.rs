//! Resolves the command line, the benchmark file and the environment into
//! plain settings, once. Nothing past this module reads clap types or
//! environment variables for configuration: `DOCKER_HOST`, the Daytona
//! variables, `NO_COLOR`, `BENCHWARDEN_RETENTION` and the state directory's
//! variables are read here and nowhere else.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::daytona::{Credentials, DaytonaConfig, DEFAULT_API_URL};
use crate::backend::DEFAULT_PARALLEL;
use crate::cleanup::CleanupPolicy;
use crate::cli;
use crate::config::{fill, Benchmark, DaytonaSection, Harness, Interval, IntervalSource, SandboxCollection};
use crate::errors::Error;
use crate::intercept::daytona_proxy::{ApiTarget, DaytonaProxySettings};
use crate::limits::Limits;
use crate::net::DockerEndpoint;
use crate::owner::lease::{DEFAULT_LEASE, DEFAULT_LEASE_GRACE};
use crate::report::text::StatusSelection;
use crate::report::{Color, OutputSettings, Verbosity};
use crate::retry::RetryPolicy;
use crate::supervisor::keep::KeepPolicy;
use crate::supervisor::process::{ENV_RUN_ID, ENV_STATE_DIR, ENV_TASK_ID};
use crate::supervisor::task::TaskSpec;
use crate::sweep::daytona::{SandboxOwners, SandboxSelection};

/// A variable of the environment, unset when empty or blank.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

/// `--retries` and `--retry-delay` as given, so they can win over a benchmark file.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RetryFlags {
    pub(crate) retries: Option<u32>,
    pub(crate) first_delay: Option<Duration>,
}

/// Settings every command shares.
#[derive(Debug, Clone)]
pub struct GlobalSettings {
    pub(crate) state_dir: PathBuf,
    pub(crate) retry: RetryPolicy,
    pub(crate) retry_flags: RetryFlags,
    pub output: OutputSettings,
    /// The Docker daemon, from `DOCKER_HOST` and `DOCKER_TLS_VERIFY`.
    pub(crate) docker: DockerEndpoint,
    /// Daytona as the environment describes it, or why it cannot be used.
    pub(crate) daytona: DaytonaAccess,
}

impl GlobalSettings {
    pub fn resolve(args: &cli::GlobalArgs) -> Result<Self, Error> {
        let verbosity = match (args.quiet, args.verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, 1) => Verbosity::Verbose,
            (false, _) => Verbosity::Trace,
        };
        let color = match args.color {
            cli::ColorChoice::Auto => Color::Auto,
            cli::ColorChoice::Always => Color::Always,
            cli::ColorChoice::Never => Color::Never,
        };
        let mut retry = RetryPolicy::default();
        if let Some(retries) = args.retries {
            retry.retries = retries;
        }
        if let Some(delay) = args.retry_delay {
            retry.first_delay = delay;
        }
        let no_color = std::env::var_os("NO_COLOR").is_some();
        Ok(GlobalSettings {
            state_dir: resolve_state_dir(args.state_dir.clone())?,
            retry,
            retry_flags: RetryFlags { retries: args.retries, first_delay: args.retry_delay },
            output: OutputSettings::resolve(verbosity, color, no_color),
            docker: DockerEndpoint::new(var("DOCKER_HOST").as_deref(), var("DOCKER_TLS_VERIFY").as_deref()),
            daytona: daytona_access(&DaytonaSection::default(), "-"),
        })
    }
}

/// `--state-dir`, else `BENCHWARDEN_STATE_DIR`, else `$XDG_STATE_HOME/benchwarden`,
/// else `~/.local/state/benchwarden`.
fn resolve_state_dir(flag: Option<PathBuf>) -> Result<PathBuf, Error> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    let from_env = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    if let Some(dir) = from_env(ENV_STATE_DIR) {
        return Ok(dir);
    }
    if let Some(dir) = from_env("XDG_STATE_HOME") {
        return Ok(dir.join("benchwarden"));
    }
    if let Some(home) = from_env("HOME") {
        return Ok(home.join(".local/state/benchwarden"));
    }
    Err(Error::usage("cannot find a state directory: HOME is not set; pass --state-dir or set BENCHWARDEN_STATE_DIR"))
}

/// The variable that sets the retention when no flag does.
const ENV_RETENTION: &str = "BENCHWARDEN_RETENTION";

/// How long finished runs that own nothing stay in the ledger by default.
const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// The retention: the flag, else `BENCHWARDEN_RETENTION`, else 30 days.
fn resolve_retention(flag: Option<Duration>) -> Result<Duration, Error> {
    retention_from(flag, var(ENV_RETENTION))
}

/// [`resolve_retention`] with the variable's value given.
fn retention_from(flag: Option<Duration>, from_env: Option<String>) -> Result<Duration, Error> {
    match (flag, from_env) {
        (Some(retention), _) => Ok(retention),
        (None, Some(text)) => crate::clock::parse_duration(&text)
            .map_err(|error| Error::usage(format!("{ENV_RETENTION}={text:?} is not a duration: {error}"))),
        (None, None) => Ok(DEFAULT_RETENTION),
    }
}

/// Daytona as the environment (and the benchmark file) describe it.
#[derive(Debug, Clone)]
pub(crate) enum DaytonaAccess {
    Ready(DaytonaConfig),
    /// No credentials: commands that need Daytona stop with this message;
    /// the others leave Daytona out and say so.
    NoCredentials(String),
    /// Credentials, but something else is malformed (the API URL, a token
    /// without its organisation): every command that would use Daytona stops.
    Invalid(String),
}

impl DaytonaAccess {
    /// The configuration, or a usage error for a command that cannot do without it.
    pub(crate) fn required(&self) -> Result<DaytonaConfig, Error> {
        match self {
            DaytonaAccess::Ready(config) => Ok(config.clone()),
            DaytonaAccess::NoCredentials(message) | DaytonaAccess::Invalid(message) => Err(Error::usage(message)),
        }
    }

    /// The configuration; `Ok(Err(why))` when there are no credentials, so
    /// that Daytona is left out; a usage error when it is malformed.
    pub(crate) fn optional(&self) -> Result<Result<DaytonaConfig, String>, Error> {
        match self {
            DaytonaAccess::Ready(config) => Ok(Ok(config.clone())),
            DaytonaAccess::NoCredentials(why) => Ok(Err(why.clone())),
            DaytonaAccess::Invalid(message) => Err(Error::usage(message)),
        }
    }
}

/// Reads `DAYTONA_API_KEY` (or the variable the benchmark file names; or
/// `DAYTONA_JWT_TOKEN` with `DAYTONA_ORGANIZATION_ID`), `DAYTONA_API_URL`
/// (falling back to the deprecated `DAYTONA_SERVER_URL`, then the public
/// API) and `DAYTONA_TARGET`, as the official SDK does; the benchmark
/// file's values win. `file` names the benchmark file, for messages.
fn daytona_access(section: &DaytonaSection, file: &str) -> DaytonaAccess {
    let key_variable = section.api_key_env.as_deref().unwrap_or("DAYTONA_API_KEY");
    let credentials = match (var(key_variable), var("DAYTONA_JWT_TOKEN"), var("DAYTONA_ORGANIZATION_ID")) {
        (Some(key), _, _) => Credentials::ApiKey(key),
        (None, Some(token), Some(organization_id)) => Credentials::Jwt { token, organization_id },
        (None, Some(_), None) => {
            return DaytonaAccess::Invalid(
                "DAYTONA_JWT_TOKEN is set without DAYTONA_ORGANIZATION_ID: set both, or set DAYTONA_API_KEY"
                    .to_string(),
            )
        }
        (None, None, _) => {
            return DaytonaAccess::NoCredentials(format!(
                "no Daytona credentials: set {key_variable} (or DAYTONA_JWT_TOKEN and DAYTONA_ORGANIZATION_ID)"
            ))
        }
    };
    let (api_url, source) = match (&section.api_url, var("DAYTONA_API_URL"), var("DAYTONA_SERVER_URL")) {
        (Some(url), _, _) => (url.clone(), format!("daytona.api_url in {file}")),
        (None, Some(url), _) => (url, "DAYTONA_API_URL".to_string()),
        (None, None, Some(url)) => (url, "DAYTONA_SERVER_URL".to_string()),
        (None, None, None) => (DEFAULT_API_URL.to_string(), "the default API URL".to_string()),
    };
    match checked_api_url(&api_url, &source) {
        Ok(api_url) => DaytonaAccess::Ready(DaytonaConfig {
            api_url,
            credentials,
            target: section.target.clone().or_else(|| var("DAYTONA_TARGET")),
        }),
        Err(message) => DaytonaAccess::Invalid(message),
    }
}

/// An API base URL, checked once here so that a typo is a usage error at
/// start and not a network error retried for half a minute: http or https,
/// with a host. `source` names where it came from. Any password in it is
/// masked in the message.
fn checked_api_url(url: &str, source: &str) -> Result<String, String> {
    let problem = match reqwest::Url::parse(url.trim()) {
        Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => format!("the scheme is {}", parsed.scheme()),
        Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => "it names no host".to_string(),
        Ok(parsed) => return Ok(parsed.as_str().trim_end_matches('/').to_string()),
        Err(error) => error.to_string(),
    };
    let shown = match reqwest::Url::parse(url.trim()) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    };
    Err(format!(
        "{source} is not an http(s) URL of the Daytona API: {shown:?} ({problem}); set it to the API's base, \
         e.g. {DEFAULT_API_URL}"
    ))
}

pub(crate) fn parse_labels(texts: &[String]) -> Result<Vec<crate::resource::LabelSelector>, Error> {
    texts.iter().map(|text| crate::resource::LabelSelector::parse(text).map_err(Error::Usage)).collect()
}

/// `list`.
#[derive(Debug, Clone)]
pub struct ListSettings {
    pub(crate) daytona: bool,
    pub(crate) labels: Vec<crate::resource::LabelSelector>,
    pub(crate) all: bool,
    pub(crate) json: bool,
}

impl ListSettings {
    pub fn resolve(args: &cli::ListArgs) -> Result<Self, Error> {
        Ok(ListSettings { daytona: args.daytona, labels: parse_labels(&args.labels)?, all: args.all, json: args.json })
    }
}

/// `cleanup daytona`.
#[derive(Debug, Clone)]
pub struct DaytonaCleanupSettings {
    pub(crate) selection: SandboxSelection,
    /// A dry run unless `--no-dry-run`: the organisation may be shared.
    pub(crate) dry_run: bool,
    pub(crate) fail_fast: bool,
    pub(crate) json: bool,
    pub(crate) metrics_file: Option<PathBuf>,
}

impl DaytonaCleanupSettings {
    pub fn resolve(args: &cli::CleanupDaytonaArgs) -> Result<Self, Error> {
        let labels = parse_labels(&args.labels)?;
        // Labels choose instead of the owner; `--any-owner` widens to the whole organisation.
        let owners = match (labels.is_empty(), args.any_owner) {
            (false, _) => SandboxOwners::Labelled(labels),
            (true, true) => SandboxOwners::Anyone,
            (true, false) => SandboxOwners::ThisHost { selectors: Vec::new() },
        };
        Ok(DaytonaCleanupSettings {
            selection: SandboxSelection {
                owners,
                stopped: args.stopped,
                older_than: args.older_than,
                lease_grace: args.lease_grace,
                expired_leases_go_whatever_state: false,
            },
            dry_run: !args.no_dry_run,
            fail_fast: args.fail_fast,
            json: args.json,
            metrics_file: args.metrics_file.clone(),
        })
    }
}

/// `cleanup docker`.
#[derive(Debug, Clone)]
pub struct DockerCleanupSettings {
    pub(crate) exited: bool,
    pub(crate) older_than: Option<Duration>,
    pub(crate) labels: Vec<crate::resource::LabelSelector>,
    pub(crate) stop_timeout: Option<Duration>,
    pub(crate) volumes: bool,
    pub(crate) parallel: usize,
    pub(crate) dry_run: bool,
    pub(crate) fail_fast: bool,
    pub(crate) json: bool,
    pub(crate) metrics_file: Option<PathBuf>,
    /// Sweep containers: a container filter was given (not only the disk flags).
    pub(crate) containers: bool,
    /// `--images`: remove the images benchwarden runs made.
    pub(crate) images: bool,
    /// `--build-cache-max`: prune the build cache down to this many bytes.
    pub(crate) build_cache_max: Option<u64>,
}

impl DockerCleanupSettings {
    pub fn resolve(args: &cli::CleanupDockerArgs) -> Result<Self, Error> {
        let labels = parse_labels(&args.labels)?;
        let disk = args.images || args.build_cache_max.is_some();
        if !args.exited && args.older_than.is_none() && labels.is_empty() && !args.all && !disk {
            return Err(Error::usage(
                "cleanup docker needs a selection: --exited, --older-than DUR, --label K=V, \
                 --all (every container on the host), --images or --build-cache-max SIZE; add --dry-run to preview",
            ));
        }
        // With only the disk flags (and perhaps --older-than, which then selects images), no container is touched.
        let containers = args.exited || !labels.is_empty() || args.all || (args.older_than.is_some() && !disk);
        let parallel = args.parallel.unwrap_or(DEFAULT_PARALLEL);
        if parallel == 0 {
            return Err(Error::usage("--parallel must be at least 1"));
        }
        Ok(DockerCleanupSettings {
            exited: args.exited,
            older_than: args.older_than,
            labels,
            stop_timeout: args.stop_timeout,
            volumes: args.volumes,
            parallel,
            dry_run: args.dry_run,
            fail_fast: args.fail_fast,
            json: args.json,
            metrics_file: args.metrics_file.clone(),
            containers,
            images: args.images,
            build_cache_max: args.build_cache_max,
        })
    }
}

/// Which backends `cleanup all` and `sweep` work on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backends {
    pub(crate) docker: bool,
    pub(crate) daytona: bool,
}

/// `cleanup all` and each round of `sweep`: the policy, the backends, and
/// where the metrics go.
#[derive(Debug, Clone)]
pub struct CleanupAllSettings {
    pub(crate) policy: CleanupPolicy,
    pub(crate) backends: Backends,
    pub(crate) list: bool,
    pub(crate) json: bool,
    pub(crate) metrics_file: Option<PathBuf>,
    /// Finished runs older than this that own nothing are pruned first.
    pub(crate) retention: Duration,
}

impl CleanupAllSettings {
    pub fn resolve(args: &cli::CleanupAllArgs, global: &GlobalSettings) -> Result<Self, Error> {
        let mut settings = Self::from_policy(&args.policy, global)?;
        settings.list = args.list;
        settings.json = args.json;
        Ok(settings)
    }

    fn from_policy(args: &cli::PolicyArgs, global: &GlobalSettings) -> Result<Self, Error> {
        // The benchmark files' selectors, as templates: they claim what any of their runs made.
        let mut selectors = Vec::new();
        for path in &args.benchmarks {
            selectors.extend(Benchmark::load(path)?.docker.selectors);
        }
        let policy = CleanupPolicy {
            aggressive: args.aggressive,
            build_cache_max: args.build_cache_max.unwrap_or(DEFAULT_BUILD_CACHE_MAX),
            selectors,
            docker_dry_run: args.dry_run,
            daytona_dry_run: !args.no_dry_run,
            fail_fast: args.fail_fast,
            retry: global.retry.clone(),
            lease_grace: args.lease_grace,
        };
        Ok(CleanupAllSettings {
            policy,
            backends: Backends { docker: !args.daytona_only, daytona: !args.docker_only },
            list: false,
            json: false,
            metrics_file: args.metrics_file.clone(),
            retention: resolve_retention(args.retention)?,
        })
    }
}

/// `sweep`: `cleanup all`'s settings, and how often.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    pub(crate) cleanup: CleanupAllSettings,
    /// `None`: once, for cron.
    pub(crate) every: Option<Duration>,
}

impl SweepSettings {
    pub fn resolve(args: &cli::SweepArgs, global: &GlobalSettings) -> Result<Self, Error> {
        if args.every.is_some_and(|every| every.is_zero()) {
            return Err(Error::usage("--every must be longer than 0s"));
        }
        Ok(SweepSettings { cleanup: CleanupAllSettings::from_policy(&args.policy, global)?, every: args.every })
    }
}

/// `recover`.
#[derive(Debug, Clone)]
pub struct RecoverSettings {
    pub(crate) dry_run: bool,
    pub(crate) from_labels: bool,
    pub(crate) json: bool,
    /// Also what `run --keep-failed` kept.
    pub(crate) include_kept: bool,
    /// Only this run.
    pub(crate) run: Option<String>,
}

impl RecoverSettings {
    pub fn resolve(args: &cli::RecoverArgs) -> Self {
        RecoverSettings {
            dry_run: args.dry_run,
            from_labels: args.from_labels,
            json: args.json,
            include_kept: args.include_kept,
            run: args.run.clone(),
        }
    }
}

/// What `claim` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimTarget {
    /// A container, by id or name, on the Docker host `DOCKER_HOST` names.
    Docker {
        container: String,
    },
    Daytona {
        sandbox: String,
    },
}

/// `claim`: what to record, and for which task, from the task's environment.
#[derive(Debug, Clone)]
pub struct ClaimSettings {
    pub(crate) run_id: String,
    pub(crate) task_id: String,
    pub(crate) target: ClaimTarget,
}

impl ClaimSettings {
    pub fn resolve(args: &cli::ClaimArgs) -> Result<Self, Error> {
        let from_task = |name: &str| {
            var(name).ok_or_else(|| {
                Error::usage(format!(
                    "{name} is not set: `benchwarden claim` runs inside a task of `benchwarden run`, \
                     whose harness gets BENCHWARDEN_RUN_ID, BENCHWARDEN_TASK_ID and BENCHWARDEN_STATE_DIR"
                ))
            })
        };
        let target = match (&args.docker, &args.daytona) {
            (Some(container), _) => ClaimTarget::Docker {
                container: crate::resource::check_container_ref(container).map_err(Error::Usage)?,
            },
            (None, Some(sandbox)) => {
                ClaimTarget::Daytona { sandbox: crate::resource::check_sandbox_id(sandbox).map_err(Error::Usage)? }
            }
            (None, None) => return Err(Error::usage("claim needs --docker ID or --daytona ID")),
        };
        Ok(ClaimSettings { run_id: from_task(ENV_RUN_ID)?, task_id: from_task(ENV_TASK_ID)?, target })
    }
}

/// `status`.
#[derive(Debug, Clone)]
pub struct StatusSettings {
    pub(crate) json: bool,
    /// Which runs to show.
    pub(crate) selection: StatusSelection,
}

impl StatusSettings {
    pub fn resolve(args: &cli::StatusArgs) -> Self {
        let selection = match (args.all, args.since) {
            (true, _) => StatusSelection::All,
            (false, Some(since)) => StatusSelection::Since(since),
            (false, None) => StatusSelection::Default,
        };
        StatusSettings { json: args.json, selection }
    }
}

/// `prune`.
#[derive(Debug, Clone)]
pub struct PruneSettings {
    /// Finished runs older than this that own nothing are forgotten.
    pub(crate) retention: Duration,
    pub(crate) dry_run: bool,
    pub(crate) json: bool,
}

impl PruneSettings {
    pub fn resolve(args: &cli::PruneArgs) -> Result<Self, Error> {
        Ok(PruneSettings { retention: resolve_retention(args.older_than)?, dry_run: args.dry_run, json: args.json })
    }
}

/// Daytona for a run: where the API is and how the tasks' proxies label
/// and bound what they create.
#[derive(Debug, Clone)]
pub(crate) struct RunDaytona {
    pub(crate) config: DaytonaConfig,
    pub(crate) proxy: DaytonaProxySettings,
    /// How long past its end another machine's lease protects its sandboxes from the pre-run sweep.
    pub(crate) lease_grace: Duration,
    /// The collection intervals the proxies set, and where each comes from.
    pub(crate) collection: SandboxCollection,
}

/// `run`: the command line merged over the benchmark file, once.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub(crate) benchmark: Benchmark,
    /// Where the benchmark came from, for messages and the report.
    pub(crate) source: String,
    /// Directory relative paths in the benchmark file are resolved against.
    pub(crate) base_dir: PathBuf,
    pub(crate) tasks: Vec<String>,
    pub(crate) jobs: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) grace: Duration,
    pub(crate) skip_cleanup: bool,
    pub(crate) cleanup_age: Duration,
    /// Finished runs older than this that own nothing are pruned before the tasks (unless `skip_cleanup`).
    pub(crate) retention: Duration,
    pub(crate) cleanup_states: Vec<String>,
    pub(crate) report: Option<PathBuf>,
    pub(crate) metrics_file: Option<PathBuf>,
    /// An unresolved (or error) harness result makes the task count as failed.
    pub(crate) fail_on_unresolved: bool,
    /// What stays in place after a task: `--keep-failed`, and what counts as failed.
    pub(crate) keep: KeepPolicy,
    pub(crate) harness_args: Vec<String>,
    pub(crate) retry: RetryPolicy,
    /// Removals at once in teardowns and sweeps.
    pub(crate) parallel: usize,
    /// `None` when the benchmark does not use Daytona.
    pub(crate) daytona: Option<RunDaytona>,
    /// Caps on live containers and sandboxes: the command line's over the file's.
    pub(crate) limits: Limits,
}

/// What `cleanup all --aggressive` prunes the build cache down to: Terminal-Bench's own CI keeps 30 GB.
const DEFAULT_BUILD_CACHE_MAX: u64 = 30_000_000_000;
const DEFAULT_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_CLEANUP_AGE: Duration = Duration::from_secs(86_400);

/// The run's caps: `--max-containers` / `--max-sandboxes` over the file's
/// `limits:`. A hard cap needs the proxy that enforces it.
fn resolve_limits(args: &cli::RunArgs, benchmark: &Benchmark, source: &str) -> Result<Limits, Error> {
    let section = &benchmark.limits;
    let limits = Limits {
        max_containers: args.max_containers.or(section.max_containers),
        max_sandboxes: args.max_sandboxes.or(section.max_sandboxes),
        hard: section.hard,
    };
    if limits.max_containers == Some(0) || limits.max_sandboxes == Some(0) {
        return Err(Error::usage(format!("{source}: a limit of 0 would start no task; give at least 1, or no limit")));
    }
    if limits.hard && limits.max_containers.is_some() && !benchmark.docker.proxy {
        return Err(Error::usage(format!(
            "{source}: limits.hard refuses creates at the Docker proxy, and docker.proxy is false; \
             turn the proxy on, or drop limits.hard to only hold new tasks back"
        )));
    }
    if limits.hard && !limits.any() {
        tracing::warn!("{source}: limits.hard is set without max_containers or max_sandboxes; nothing is capped");
    }
    Ok(limits)
}

/// A benchmark, where it came from, the directory its paths are relative
/// to, and the arguments to append to its harness command.
struct Loaded {
    benchmark: Benchmark,
    source: String,
    base_dir: PathBuf,
    harness_args: Vec<String>,
}

impl RunSettings {
    pub fn resolve(args: &cli::RunArgs, global: &GlobalSettings) -> Result<Self, Error> {
        let Loaded { benchmark, source, base_dir, harness_args } = load_benchmark(args, &global.state_dir)?;
        let limits = resolve_limits(args, &benchmark, &source)?;
        let parallel = args.parallel.unwrap_or(DEFAULT_PARALLEL);
        if parallel == 0 {
            return Err(Error::usage("--parallel must be at least 1"));
        }
        let tasks = select_tasks(&benchmark, &args.tasks, &source)?;
        let jobs = args.jobs.or(benchmark.concurrency).unwrap_or(1);
        if jobs == 0 {
            return Err(Error::usage("-j must be at least 1"));
        }
        let cleanup_age = match (args.cleanup_days, args.cleanup_age) {
            (Some(days), _) => Duration::from_secs(u64::from(days) * 86_400),
            (None, Some(age)) => age,
            (None, None) => benchmark.cleanup.before_run.age.unwrap_or(DEFAULT_CLEANUP_AGE),
        };
        let timeout = args.timeout.or(benchmark.harness.timeout);
        // Daytona enabled without credentials stops here, before anything is started or recorded.
        let daytona = match benchmark.daytona.as_ref().filter(|section| section.enabled) {
            Some(section) => Some(run_daytona(section, &source, timeout)?),
            None => None,
        };
        Ok(RunSettings {
            retention: resolve_retention(args.retention)?,
            timeout,
            grace: args.grace.or(benchmark.harness.grace).unwrap_or(DEFAULT_GRACE),
            cleanup_states: benchmark.cleanup.before_run.states.clone(),
            retry: retry_policy(&benchmark, global),
            benchmark,
            source,
            base_dir,
            tasks,
            jobs,
            skip_cleanup: args.skip_cleanup,
            cleanup_age,
            report: args.report.clone(),
            metrics_file: args.metrics_file.clone(),
            fail_on_unresolved: args.fail_on_unresolved,
            keep: KeepPolicy {
                keep_failed: args.keep_failed,
                fail_on_unresolved: args.fail_on_unresolved,
                kept_for: cleanup_age,
            },
            harness_args,
            parallel,
            daytona,
            limits,
        })
    }

    /// The task specs of this run, placeholders filled.
    pub(crate) fn task_specs(&self, run_id: &str) -> Vec<TaskSpec> {
        let harness = &self.benchmark.harness;
        let cwd = harness.cwd.as_ref().map(|cwd| self.base_dir.join(cwd));
        let benchmark_dir = std::path::absolute(&self.base_dir).unwrap_or_else(|_| self.base_dir.clone());
        let benchmark_dir = benchmark_dir.display().to_string();
        self.tasks
            .iter()
            .enumerate()
            .map(|(index, task)| {
                let fill = |template: &str| fill(template, task, run_id, index);
                let mut words =
                    harness.command.iter().map(|word| fill(&word.replace("{benchmark_dir}", &benchmark_dir)));
                let mut program = words.next().unwrap_or_default();
                // A relative path is relative to the harness's working directory.
                if program.contains('/') && !program.starts_with('/') {
                    if let Some(cwd) = &cwd {
                        program = cwd.join(&program).display().to_string();
                    }
                }
                let mut arguments: Vec<String> = words.collect();
                arguments.extend(self.harness_args.iter().cloned());
                TaskSpec {
                    name: task.clone(),
                    index,
                    program,
                    args: arguments,
                    env: harness.env.iter().map(|(key, value)| (key.clone(), fill(value))).collect(),
                    cwd: cwd.clone(),
                    timeout: self.timeout,
                    grace: self.grace,
                    selectors: self.benchmark.docker.selectors.iter().map(|selector| selector.map(fill)).collect(),
                    results: harness.results,
                }
            })
            .collect()
    }
}

fn load_benchmark(args: &cli::RunArgs, state_dir: &Path) -> Result<Loaded, Error> {
    let from_file = |path: &Path, source: String, harness_args: Vec<String>| -> Result<Loaded, Error> {
        let benchmark = Benchmark::load(path)?;
        let base_dir = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        Ok(Loaded { benchmark, source, base_dir, harness_args })
    };
    match (&args.benchmark, args.harness_args.is_empty()) {
        (Some(path), _) => from_file(path, path.display().to_string(), args.harness_args.clone()),
        (None, false) => Ok(Loaded {
            benchmark: adhoc_benchmark(args.harness_args.clone()),
            source: "command line".to_string(),
            base_dir: PathBuf::from("."),
            harness_args: Vec::new(),
        }),
        (None, true) => from_file(&materialize_smoke(state_dir)?, "embedded smoke benchmark".to_string(), Vec::new()),
    }
}

/// `run -- CMD ARGS` without a file: one task named `main`.
fn adhoc_benchmark(command: Vec<String>) -> Benchmark {
    Benchmark {
        name: "adhoc".to_string(),
        harness: Harness { command, env: Default::default(), cwd: None, timeout: None, grace: None, results: None },
        tasks: Vec::new(),
        concurrency: None,
        cleanup: Default::default(),
        docker: Default::default(),
        daytona: None,
        limits: Default::default(),
    }
}

/// The benchmark's tasks, narrowed to `wanted` when given; an unknown name
/// is a usage error that lists the valid ones.
fn select_tasks(benchmark: &Benchmark, wanted: &[String], source: &str) -> Result<Vec<String>, Error> {
    let all_tasks = if benchmark.tasks.is_empty() { vec!["main".to_string()] } else { benchmark.tasks.clone() };
    if wanted.is_empty() {
        return Ok(all_tasks);
    }
    if let Some(unknown) = wanted.iter().find(|name| !all_tasks.contains(name)) {
        return Err(Error::usage(format!(
            "--tasks: no task {unknown:?} in {source}; valid names: {}",
            all_tasks.join(", ")
        )));
    }
    Ok(all_tasks.into_iter().filter(|task| wanted.contains(task)).collect())
}

/// The global retry settings with the benchmark file's over them, and the
/// command line's flags over both.
fn retry_policy(benchmark: &Benchmark, global: &GlobalSettings) -> RetryPolicy {
    let mut retry = global.retry.clone();
    let section = &benchmark.cleanup.retry;
    if let (Some(retries), None) = (section.retries, global.retry_flags.retries) {
        retry.retries = retries;
    }
    if let (Some(delay), None) = (section.first_delay, global.retry_flags.first_delay) {
        retry.first_delay = delay;
    }
    if let Some(factor) = section.factor {
        retry.factor = factor;
    }
    if let Some(max_delay) = section.max_delay {
        retry.max_delay = max_delay;
    }
    if let Some(deadline) = section.deadline {
        retry.deadline = deadline;
    }
    retry.allowing_calls_of(benchmark.docker.stop_timeout)
}

fn run_daytona(section: &DaytonaSection, file: &str, timeout: Option<Duration>) -> Result<RunDaytona, Error> {
    let config = daytona_access(section, file).required()?;
    let target = ApiTarget::parse(&config.api_url).map_err(Error::Usage)?;
    let collection = sandbox_collection(section, timeout);
    let proxy = DaytonaProxySettings {
        target,
        auto_stop_minutes: collection.auto_stop_minutes,
        auto_delete_minutes: collection.auto_delete_minutes,
        lease: section.lease.unwrap_or(DEFAULT_LEASE),
    };
    let lease_grace = section.lease_grace.unwrap_or(DEFAULT_LEASE_GRACE);
    Ok(RunDaytona { config, proxy, lease_grace, collection })
}

/// Minutes to slack past a task's timeout before the provider stops its
/// idle sandboxes, and the stop without a timeout.
const AUTO_STOP_SLACK_MINUTES: u32 = 30;
const AUTO_STOP_WITHOUT_TIMEOUT_MINUTES: u32 = 60;
/// A stopped sandbox is deleted by the provider after a day.
const AUTO_DELETE_MINUTES: i64 = 24 * 60;

/// The collection intervals the Daytona proxies set on creates that leave
/// them unset. Sandboxes a killed run leaves are otherwise never collected
/// by the provider's own defaults; so, unless the file sets a value or
/// `off`: auto-stop after the task's timeout plus 30 minutes (an hour
/// without a timeout), auto-delete a day after stopping. Each interval is
/// decided on its own: a file that sets one keeps the other's default.
fn sandbox_collection(section: &DaytonaSection, timeout: Option<Duration>) -> SandboxCollection {
    let default_stop = match timeout {
        Some(timeout) => {
            let minutes = u32::try_from(timeout.as_secs().div_ceil(60)).unwrap_or(u32::MAX);
            minutes.saturating_add(AUTO_STOP_SLACK_MINUTES)
        }
        None => AUTO_STOP_WITHOUT_TIMEOUT_MINUTES,
    };
    let (auto_stop_minutes, auto_stop_from) = interval_in_effect(section.auto_stop_minutes, default_stop);
    let (auto_delete_minutes, auto_delete_from) = interval_in_effect(section.auto_delete_minutes, AUTO_DELETE_MINUTES);
    SandboxCollection { auto_stop_minutes, auto_stop_from, auto_delete_minutes, auto_delete_from }
}

/// The file's value, `off` (none), or the default when the file is silent.
fn interval_in_effect<T>(set: Option<Interval<T>>, default: T) -> (Option<T>, IntervalSource) {
    match set {
        None => (Some(default), IntervalSource::Default),
        Some(Interval::Minutes(minutes)) => (Some(minutes), IntervalSource::File),
        Some(Interval::Off) => (None, IntervalSource::Off),
    }
}

/// Writes the embedded smoke benchmark and its harness under the state
/// directory, in the same layout as the repository, and returns the
/// benchmark's path: the default behaves exactly like the file on disk.
fn materialize_smoke(state_dir: &Path) -> Result<PathBuf, Error> {
    let root = state_dir.join("embedded");
    let files = [
        (root.join("benchmarks/smoke.yaml"), crate::config::SMOKE_BENCHMARK),
        (root.join("scripts/smoke-harness.sh"), crate::config::SMOKE_HARNESS),
    ];
    for (path, text) in &files {
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text)
        };
        write().map_err(|source| Error::Io { what: "write the embedded benchmark to", path: path.clone(), source })?;
    }
    Ok(files[0].0.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_must_be_http_with_a_host_and_say_where_they_came_from() {
        assert_eq!(checked_api_url("https://app.daytona.io/api/", "X").unwrap(), "https://app.daytona.io/api");
        assert_eq!(checked_api_url("http://127.0.0.1:3000/api", "X").unwrap(), "http://127.0.0.1:3000/api");
        for bad in ["not-a-url", "ftp://example.com/api", "/api", "http://", "file:///api", ""] {
            let message = checked_api_url(bad, "DAYTONA_API_URL").unwrap_err();
            assert!(message.starts_with("DAYTONA_API_URL is not an http(s) URL"), "{bad}: {message}");
            assert!(message.contains(&format!("{bad:?}")), "{bad}: {message}");
        }
        let masked = checked_api_url("ftp://user:hunter2@example.com/api", "X").unwrap_err();
        assert!(!masked.contains("hunter2") && masked.contains("***"), "{masked}");
    }

    fn benchmark(tasks: &[&str]) -> Benchmark {
        let mut benchmark = adhoc_benchmark(vec!["true".into()]);
        benchmark.tasks = tasks.iter().map(ToString::to_string).collect();
        benchmark
    }

    #[test]
    fn tasks_keep_the_files_order_and_unknown_names_list_the_valid_ones() {
        let file = benchmark(&["alpha", "beta", "gamma"]);
        let wanted = ["gamma".to_string(), "alpha".to_string()];
        assert_eq!(select_tasks(&file, &wanted, "b.yaml").unwrap(), ["alpha", "gamma"]);
        let error = select_tasks(&file, &["nope".to_string()], "b.yaml").unwrap_err().to_string();
        assert!(error.contains("\"nope\"") && error.contains("alpha, beta, gamma"), "{error}");
        assert_eq!(select_tasks(&benchmark(&[]), &[], "b.yaml").unwrap(), ["main"]);
    }

    #[test]
    fn the_retention_is_the_flag_else_the_variable_else_thirty_days() {
        let day = Duration::from_secs(86_400);
        assert_eq!(retention_from(Some(day), Some("7d".into())).unwrap(), day);
        assert_eq!(retention_from(None, Some("7d".into())).unwrap(), 7 * day);
        assert_eq!(retention_from(None, None).unwrap(), 30 * day);
        let error = retention_from(None, Some("forever".into())).unwrap_err();
        assert_eq!(error.exit_status(), crate::errors::ExitStatus::Usage);
        assert!(error.to_string().contains("BENCHWARDEN_RETENTION=\"forever\""), "{error}");
    }

    #[test]
    fn sandboxes_are_collected_after_the_timeout_and_a_day_unless_the_file_says_otherwise() {
        use IntervalSource::{Default as Defaulted, File, Off};
        let section = |stop, delete| DaytonaSection {
            enabled: true,
            auto_stop_minutes: stop,
            auto_delete_minutes: delete,
            ..DaytonaSection::default()
        };
        let read = |collection: SandboxCollection| {
            (
                (collection.auto_stop_minutes, collection.auto_stop_from),
                (collection.auto_delete_minutes, collection.auto_delete_from),
            )
        };
        let silent = section(None, None);
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(read(sandbox_collection(&silent, hour)), ((Some(90), Defaulted), (Some(1440), Defaulted)));
        assert_eq!(read(sandbox_collection(&silent, None)).0, (Some(60), Defaulted), "no timeout: an hour");
        let partial_minute = Some(Duration::from_secs(61));
        assert_eq!(read(sandbox_collection(&silent, partial_minute)).0, (Some(32), Defaulted), "rounded up");
        let huge = Some(crate::clock::MAX_DURATION);
        assert!(read(sandbox_collection(&silent, huge)).0 .0.is_some_and(|minutes| minutes > 30));
        let set = section(Some(Interval::Minutes(5)), Some(Interval::Minutes(0)));
        assert_eq!(read(sandbox_collection(&set, hour)), ((Some(5), File), (Some(0), File)));
        let off = section(Some(Interval::Off), Some(Interval::Off));
        assert_eq!(read(sandbox_collection(&off, hour)), ((None, Off), (None, Off)));
        let one = section(Some(Interval::Minutes(5)), None);
        assert_eq!(read(sandbox_collection(&one, hour)), ((Some(5), File), (Some(1440), Defaulted)));
    }

    #[test]
    fn the_command_line_wins_over_the_file_which_wins_over_the_defaults() {
        let mut file = benchmark(&[]);
        file.cleanup.retry.retries = Some(9);
        file.cleanup.retry.factor = Some(3.0);
        let args = cli::GlobalArgs {
            state_dir: Some("/tmp/x".into()),
            retries: Some(1),
            retry_delay: None,
            verbose: 0,
            quiet: false,
            color: cli::ColorChoice::Never,
        };
        let global = GlobalSettings::resolve(&args).unwrap();
        let retry = retry_policy(&file, &global);
        assert_eq!((retry.retries, retry.factor), (1, 3.0));
        assert_eq!(retry.first_delay, RetryPolicy::default().first_delay);
    }
}
