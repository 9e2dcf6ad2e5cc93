//! Resolves the command line (and, for `run`, the benchmark file and the
//! environment) into plain settings, once. Nothing past this module reads
//! clap types or environment variables for configuration.

use std::path::PathBuf;
use std::time::Duration;

use crate::backend::LabelSelector;
use crate::cli;
use crate::errors::Error;
use crate::report::{OutputSettings, Verbosity};
use crate::retry::RetryPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Auto,
    Always,
    Never,
}

/// Settings every command shares.
#[derive(Debug, Clone)]
pub struct GlobalSettings {
    pub state_dir: PathBuf,
    pub retry: RetryPolicy,
    /// `--retries` and `--retry-delay` as given, so they can win over a benchmark file.
    pub retry_flags: (Option<u32>, Option<Duration>),
    pub output: OutputSettings,
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
        Ok(GlobalSettings {
            state_dir: resolve_state_dir(args.state_dir.clone())?,
            retry,
            retry_flags: (args.retries, args.retry_delay),
            output: OutputSettings::resolve(verbosity, color),
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
    if let Some(dir) = from_env("BENCHWARDEN_STATE_DIR") {
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

pub fn parse_labels(texts: &[String]) -> Result<Vec<LabelSelector>, Error> {
    texts.iter().map(|text| LabelSelector::parse(text).map_err(Error::Usage)).collect()
}

/// `list`.
#[derive(Debug, Clone)]
pub struct ListSettings {
    pub labels: Vec<LabelSelector>,
    pub all: bool,
    pub json: bool,
}

impl ListSettings {
    pub fn resolve(args: &cli::ListArgs) -> Result<Self, Error> {
        Ok(ListSettings { labels: parse_labels(&args.labels)?, all: args.all, json: args.json })
    }
}

/// `cleanup daytona`.
#[derive(Debug, Clone)]
pub struct DaytonaCleanupSettings {
    pub stopped: bool,
    pub older_than: Option<Duration>,
    pub labels: Vec<LabelSelector>,
    pub any_owner: bool,
    /// A dry run unless `--no-dry-run`: the organisation may be shared.
    pub dry_run: bool,
    pub fail_fast: bool,
    pub json: bool,
}

impl DaytonaCleanupSettings {
    pub fn resolve(args: &cli::CleanupDaytonaArgs) -> Result<Self, Error> {
        Ok(DaytonaCleanupSettings {
            stopped: args.stopped,
            older_than: args.older_than,
            labels: parse_labels(&args.labels)?,
            any_owner: args.any_owner,
            dry_run: !args.no_dry_run,
            fail_fast: args.fail_fast,
            json: args.json,
        })
    }
}

/// `cleanup docker`.
#[derive(Debug, Clone)]
pub struct DockerCleanupSettings {
    pub exited: bool,
    pub older_than: Option<Duration>,
    pub labels: Vec<LabelSelector>,
    pub all: bool,
    pub stop_timeout: Option<Duration>,
    pub volumes: bool,
    pub parallel: usize,
    pub dry_run: bool,
    pub fail_fast: bool,
    pub json: bool,
}

impl DockerCleanupSettings {
    pub fn resolve(args: &cli::CleanupDockerArgs) -> Result<Self, Error> {
        let labels = parse_labels(&args.labels)?;
        if !args.exited && args.older_than.is_none() && labels.is_empty() && !args.all {
            return Err(Error::usage(
                "cleanup docker needs a selection: --exited, --older-than DUR, --label K=V, \
                 or --all (every container on the host); add --dry-run to preview",
            ));
        }
        if args.parallel == 0 {
            return Err(Error::usage("--parallel must be at least 1"));
        }
        Ok(DockerCleanupSettings {
            exited: args.exited,
            older_than: args.older_than,
            labels,
            all: args.all,
            stop_timeout: args.stop_timeout,
            volumes: args.volumes,
            parallel: args.parallel,
            dry_run: args.dry_run,
            fail_fast: args.fail_fast,
            json: args.json,
        })
    }
}

/// `run`: the command line merged over the benchmark file, once.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub benchmark: crate::config::Benchmark,
    /// Where the benchmark came from, for messages and the report.
    pub source: String,
    /// Directory relative paths in the benchmark file are resolved against.
    pub base_dir: PathBuf,
    pub tasks: Vec<String>,
    pub jobs: usize,
    pub timeout: Option<Duration>,
    pub grace: Duration,
    pub skip_cleanup: bool,
    pub cleanup_age: Duration,
    pub cleanup_states: Vec<String>,
    pub report: Option<PathBuf>,
    pub harness_args: Vec<String>,
    pub retry: RetryPolicy,
}

const DEFAULT_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_CLEANUP_AGE: Duration = Duration::from_secs(86_400);

impl RunSettings {
    pub fn resolve(args: &cli::RunArgs, global: &GlobalSettings) -> Result<Self, Error> {
        use crate::config::{Benchmark, Harness};
        let (benchmark, source, base_dir, harness_args) = match (&args.benchmark, args.harness_args.is_empty()) {
            (Some(path), _) => {
                let benchmark = Benchmark::load(path)?;
                let base_dir = path.parent().map(PathBuf::from).unwrap_or_default();
                (benchmark, path.display().to_string(), base_dir, args.harness_args.clone())
            }
            (None, false) => {
                let benchmark = Benchmark {
                    name: "adhoc".to_string(),
                    harness: Harness {
                        command: args.harness_args.clone(),
                        env: Default::default(),
                        cwd: None,
                        timeout: None,
                        grace: None,
                    },
                    tasks: Vec::new(),
                    concurrency: None,
                    cleanup: Default::default(),
                    docker: Default::default(),
                    daytona: None,
                    limits: None,
                };
                (benchmark, "command line".to_string(), PathBuf::from("."), Vec::new())
            }
            (None, true) => {
                let path = materialize_smoke(&global.state_dir)?;
                let benchmark = Benchmark::load(&path)?;
                let base_dir = path.parent().map(PathBuf::from).unwrap_or_default();
                (benchmark, "embedded smoke benchmark".to_string(), base_dir, Vec::new())
            }
        };
        if benchmark.limits.is_some() {
            tracing::warn!("{source}: the `limits` section is not supported by this version and is ignored");
        }

        let all_tasks = if benchmark.tasks.is_empty() { vec!["main".to_string()] } else { benchmark.tasks.clone() };
        let tasks = if args.tasks.is_empty() {
            all_tasks
        } else {
            for wanted in &args.tasks {
                if !all_tasks.contains(wanted) {
                    return Err(Error::usage(format!(
                        "--tasks: no task {wanted:?} in {source}; valid names: {}",
                        all_tasks.join(", ")
                    )));
                }
            }
            all_tasks.into_iter().filter(|task| args.tasks.contains(task)).collect()
        };
        let jobs = args.jobs.or(benchmark.concurrency).unwrap_or(1);
        if jobs == 0 {
            return Err(Error::usage("-j must be at least 1"));
        }
        let cleanup_age = match (args.cleanup_days, args.cleanup_age) {
            (Some(days), _) => Duration::from_secs(u64::from(days) * 86_400),
            (None, Some(age)) => age,
            (None, None) => benchmark.cleanup.before_run.age.unwrap_or(DEFAULT_CLEANUP_AGE),
        };
        let mut retry = global.retry.clone();
        let section = &benchmark.cleanup.retry;
        // The command line wins over the benchmark file.
        if let (Some(retries), None) = (section.retries, global.retry_flags.0) {
            retry.retries = retries;
        }
        if let (Some(delay), None) = (section.first_delay, global.retry_flags.1) {
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
        Ok(RunSettings {
            timeout: args.timeout.or(benchmark.harness.timeout),
            grace: args.grace.or(benchmark.harness.grace).unwrap_or(DEFAULT_GRACE),
            cleanup_states: benchmark.cleanup.before_run.states.clone(),
            benchmark,
            source,
            base_dir,
            tasks,
            jobs,
            skip_cleanup: args.skip_cleanup,
            cleanup_age,
            report: args.report.clone(),
            harness_args,
            retry,
        })
    }

    /// The task specs of this run, placeholders filled.
    pub fn task_specs(&self, run_id: &str) -> Vec<crate::supervisor::task::TaskSpec> {
        use crate::config::{fill, Selector};
        let harness = &self.benchmark.harness;
        let cwd = harness.cwd.as_ref().map(|cwd| self.base_dir.join(cwd));
        self.tasks
            .iter()
            .enumerate()
            .map(|(index, task)| {
                let mut words = harness.command.iter().map(|word| fill(word, task, run_id, index));
                let mut program = words.next().unwrap_or_default();
                // A relative path is relative to the harness's working directory.
                if program.contains('/') && !program.starts_with('/') {
                    if let Some(cwd) = &cwd {
                        program = cwd.join(&program).display().to_string();
                    }
                }
                let mut arguments: Vec<String> = words.collect();
                arguments.extend(self.harness_args.iter().cloned());
                crate::supervisor::task::TaskSpec {
                    name: task.clone(),
                    index,
                    program,
                    args: arguments,
                    env: harness
                        .env
                        .iter()
                        .map(|(key, value)| (key.clone(), fill(value, task, run_id, index)))
                        .collect(),
                    cwd: cwd.clone(),
                    timeout: self.timeout,
                    grace: self.grace,
                    selectors: self
                        .benchmark
                        .docker
                        .selectors
                        .iter()
                        .map(|selector| match selector {
                            Selector::Label(label) => Selector::Label(fill(label, task, run_id, index)),
                            Selector::ComposeProjectPrefix(prefix) => {
                                Selector::ComposeProjectPrefix(fill(prefix, task, run_id, index))
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// Writes the embedded smoke benchmark and its harness under the state
/// directory, in the same layout as the repository, and returns the
/// benchmark's path: the default behaves exactly like the file on disk.
fn materialize_smoke(state_dir: &std::path::Path) -> Result<PathBuf, Error> {
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
