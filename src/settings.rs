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
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = from_env("BENCHWARDEN_STATE_DIR") {
        return Ok(dir);
    }
    if let Some(dir) = from_env("XDG_STATE_HOME") {
        return Ok(dir.join("benchwarden"));
    }
    if let Some(home) = from_env("HOME") {
        return Ok(home.join(".local/state/benchwarden"));
    }
    Err(Error::usage(
        "cannot find a state directory: HOME is not set; pass --state-dir or set BENCHWARDEN_STATE_DIR",
    ))
}

pub fn parse_labels(texts: &[String]) -> Result<Vec<LabelSelector>, Error> {
    texts
        .iter()
        .map(|text| LabelSelector::parse(text).map_err(Error::Usage))
        .collect()
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
        Ok(ListSettings {
            labels: parse_labels(&args.labels)?,
            all: args.all,
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
