//! Command-line types, and nothing else: clap derives only. Settings are
//! resolved from these in `settings.rs`; no other module sees clap.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Supervise benchmark harnesses and never leak a container.
///
/// benchwarden runs a harness (Terminal-Bench `tb run`, Harbor `harbor run`, or
/// any command) once per task, records every Docker resource each task
/// creates, tears those down when the task ends, times out or is interrupted,
/// and checks that nothing is left. It also finds and removes what earlier
/// runs leaked.
#[derive(Debug, Parser)]
#[command(name = "benchwarden", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Where the ledger and run logs live [env: BENCHWARDEN_STATE_DIR]
    /// [default: $XDG_STATE_HOME/benchwarden, else ~/.local/state/benchwarden]
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,

    /// Retries after a failed removal call (connection errors, timeouts, 5xx, 409 in progress)
    #[arg(long, global = true, value_name = "N")]
    pub(crate) retries: Option<u32>,

    /// First delay between retries; doubles each time, with jitter, up to 30s
    #[arg(long, global = true, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) retry_delay: Option<Duration>,

    /// More log output (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub(crate) verbose: u8,

    /// Only warnings and errors; no progress bars
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,

    /// When to use colors and progress bars [env: NO_COLOR disables]
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub(crate) color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a benchmark: one harness process per task, with teardown of what each task created
    Run(RunArgs),
    /// List Docker containers or Daytona sandboxes, with benchwarden's owner labels
    List(ListArgs),
    /// Remove leftovers by policy (state, age, labels)
    #[command(subcommand)]
    Cleanup(CleanupCommand),
    /// Tear down everything owned by runs whose benchwarden process is gone
    Recover(RecoverArgs),
    /// Run `cleanup all`'s policy every DUR (or --once) until SIGINT or SIGTERM
    Sweep(SweepArgs),
    /// Show runs in the ledger, the resources they still own (and keep), and orphans
    Status(StatusArgs),
    /// Forget finished runs older than the retention that own nothing: their ledger rows and
    /// run directories; also remove the socket directories of runs no longer running
    Prune(PruneArgs),
    /// From inside a task: record a resource the task made without benchwarden's proxies, so the
    /// task's teardown removes it
    Claim(ClaimArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    benchwarden run                                  # the embedded smoke benchmark\n  \
    benchwarden run benchmarks/terminal-bench.yaml --tasks hello-world -j 4\n  \
    benchwarden run --timeout 30m -- ./my-harness --flag   # one task named `main`")]
pub struct RunArgs {
    /// Benchmark file (YAML); without one, `-- COMMAND` runs a single task, and with
    /// neither the embedded smoke benchmark runs
    #[arg(value_name = "BENCHMARK.yaml")]
    pub(crate) benchmark: Option<PathBuf>,

    /// Run only these tasks (comma-separated names from the benchmark file)
    #[arg(long, value_delimiter = ',', value_name = "a,b")]
    pub(crate) tasks: Vec<String>,

    /// Tasks at once [default: the benchmark's `concurrency`, else 1]
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub(crate) jobs: Option<usize>,

    /// Time limit per task; then SIGTERM, and SIGKILL after the grace [default: benchmark's, else none]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,

    /// Time between SIGTERM and SIGKILL [default: benchmark's, else 10s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) grace: Option<Duration>,

    /// Skip the pre-run recovery of orphaned runs and the sweep of old leftovers
    #[arg(long)]
    pub(crate) skip_cleanup: bool,

    /// Pre-run sweep removes owned leftovers older than N days [default: 1]
    #[arg(long, value_name = "N", conflicts_with = "cleanup_age")]
    pub(crate) cleanup_days: Option<u32>,

    /// Pre-run sweep removes owned leftovers older than DUR (e.g. 36h)
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) cleanup_age: Option<Duration>,

    /// Before the tasks, forget finished runs older than DUR that own nothing (not with
    /// --skip-cleanup) [env: BENCHWARDEN_RETENTION] [default: 30d]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) retention: Option<Duration>,

    /// Where to write the JSON report [default: <state-dir>/runs/<run>/report.json]
    #[arg(long, value_name = "FILE")]
    pub(crate) report: Option<PathBuf>,

    /// Also write metrics there, in the Prometheus text format (for node_exporter's textfile collector)
    #[arg(long, value_name = "PATH")]
    pub(crate) metrics_file: Option<PathBuf>,

    /// A task whose harness result (`harness.results`) is unresolved or an error counts as failed (exit 1)
    #[arg(long)]
    pub(crate) fail_on_unresolved: bool,

    /// Removals at once in each task's teardown [default: 16]
    #[arg(long, value_name = "N")]
    pub(crate) parallel: Option<usize>,

    /// Start no task while this many containers of the run are live, or would be with the tasks
    /// already running (limits.max_containers)
    #[arg(long, value_name = "N")]
    pub(crate) max_containers: Option<usize>,

    /// Start no task while this many Daytona sandboxes of the run are live, or would be with the
    /// tasks already running (limits.max_sandboxes)
    #[arg(long, value_name = "N")]
    pub(crate) max_sandboxes: Option<usize>,

    /// Leave the resources of failed and timed-out tasks in place, to look at them (Harbor's
    /// --no-delete, Terminal-Bench's --no-cleanup); the end of the run prints the command that
    /// removes them, `status` shows them, and the pre-run sweep takes them once older than the
    /// cleanup age
    #[arg(long)]
    pub(crate) keep_failed: bool,

    /// Arguments appended to the harness command, or the whole command without a benchmark file
    #[arg(last = true, value_name = "HARNESS ARGS")]
    pub(crate) harness_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// List Docker containers (the default)
    #[arg(long, conflicts_with = "daytona")]
    pub(crate) docker: bool,

    /// List Daytona sandboxes instead (credentials from DAYTONA_API_KEY)
    #[arg(long)]
    pub(crate) daytona: bool,

    /// Only containers with this label (K=V, or K for any value); repeat to require several
    #[arg(long = "label", value_name = "K=V")]
    pub(crate) labels: Vec<String>,

    /// Include stopped containers, not only running ones
    #[arg(long)]
    pub(crate) all: bool,

    /// One JSON array on stdout instead of a table
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CleanupCommand {
    /// Remove Docker containers chosen by state, age and labels
    Docker(CleanupDockerArgs),
    /// Delete Daytona sandboxes chosen by state, age, labels and owner (a dry run unless --no-dry-run)
    Daytona(CleanupDaytonaArgs),
    /// Recover orphaned runs, then clean up what benchmarks own on Docker and Daytona
    All(CleanupAllArgs),
}

/// What `cleanup all` and `sweep` take, and how.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// How long after its end another host's lease still protects its sandboxes (clock skew)
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "2m")]
    pub(crate) lease_grace: Duration,

    /// Also remove running benchmark containers, any benchmark sandbox older than 1 hour, the images
    /// benchwarden runs made (none a live run or a container uses), and prune the build cache to
    /// --build-cache-max
    #[arg(long)]
    pub(crate) aggressive: bool,

    /// With --aggressive, prune the build cache down to this size (30GB, 500MB, 2GiB) [default: 30GB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "aggressive")]
    pub(crate) build_cache_max: Option<u64>,

    /// Only Docker: leave Daytona alone
    #[arg(long, conflicts_with = "daytona_only")]
    pub(crate) docker_only: bool,

    /// Only Daytona: leave Docker alone
    #[arg(long)]
    pub(crate) daytona_only: bool,

    /// A benchmark file whose selectors also say what benchmarks own (repeatable)
    #[arg(long = "benchmark", value_name = "FILE")]
    pub(crate) benchmarks: Vec<PathBuf>,

    /// Docker: show what would be removed, remove nothing (recovery too)
    #[arg(long, conflicts_with = "no_dry_run")]
    pub(crate) dry_run: bool,

    /// Daytona: really delete; without it, sandboxes are only listed as a dry run
    #[arg(long)]
    pub(crate) no_dry_run: bool,

    /// Start no new removal after the first one that fails for good
    #[arg(long)]
    pub(crate) fail_fast: bool,

    /// Also write metrics there, in the Prometheus text format (for node_exporter's textfile collector)
    #[arg(long, value_name = "PATH")]
    pub(crate) metrics_file: Option<PathBuf>,

    /// First forget finished runs older than DUR that own nothing (with --dry-run: only say
    /// which) [env: BENCHWARDEN_RETENTION] [default: 30d]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) retention: Option<Duration>,
}

#[derive(Debug, Args)]
#[command(after_help = "What goes, by default:\n  \
    - what orphaned runs own (runs on this host whose benchwarden process is gone)\n  \
    - exited containers that benchmarks own\n  \
    - stopped benchmark sandboxes older than 1 day\n  \
    - sandboxes another host's run left, once its lease ended (plus --lease-grace), whatever their state\n\
    With --aggressive: running benchmark containers too, any benchmark sandbox older than 1 hour, the images \
    benchwarden runs made (not one a live run or a container uses), and the build cache beyond --build-cache-max.\n\
    \"Benchmarks own\" means benchwarden's owner labels (for sandboxes: of runs on this host), or the \
    selectors of the files given with --benchmark. A live run's resources are never touched.\n\n\
    Dry runs: Docker acts unless --dry-run, as `cleanup docker` does; Daytona is a dry run unless \
    --no-dry-run, as `cleanup daytona` is, because its organisation may be shared. Without Daytona \
    credentials, Daytona is skipped with one line saying why.\n\n\
    Examples:\n  \
    benchwarden cleanup all --list                  # both backends in one table; changes nothing\n  \
    benchwarden cleanup all                         # Docker for real, Daytona as a dry run\n  \
    benchwarden cleanup all --no-dry-run --aggressive\n  \
    benchwarden cleanup all --dry-run --benchmark benchmarks/terminal-bench.yaml")]
pub struct CleanupAllArgs {
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,

    /// List both backends in one table and change nothing
    #[arg(long)]
    pub(crate) list: bool,

    /// Print the result as one JSON object on stdout
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Each round runs `cleanup all` with the same flags and logs one line with its \
    counts. A round that would start while the last one still runs is skipped, not piled up. \
    SIGINT or SIGTERM stops the sweep: a round in progress finishes first (a second signal stops \
    at once). Only one sweep runs on a host at a time (a lock in the state directory); a second \
    one says who holds it and exits 2.\n\n\
    Examples:\n  \
    benchwarden sweep --every 30m --aggressive\n  \
    benchwarden sweep --once --no-dry-run            # from cron")]
pub struct SweepArgs {
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,

    /// How often to sweep (e.g. 30m, 1h); the first sweep starts at once
    #[arg(long, value_name = "DUR", value_parser = parse_duration, required_unless_present = "once")]
    pub(crate) every: Option<Duration>,

    /// Sweep once and exit (for cron)
    #[arg(long, conflicts_with = "every")]
    pub(crate) once: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Credentials come from DAYTONA_API_KEY (or DAYTONA_JWT_TOKEN with \
    DAYTONA_ORGANIZATION_ID); the API from DAYTONA_API_URL (default https://app.daytona.io/api).\n\n\
    By default only sandboxes labelled by benchwarden runs on this host are candidates, and those \
    another host's run left: its lease (benchwarden.lease-until) ended more than --lease-grace ago. \
    --label selects by label instead, --any-owner widens to the whole organisation. Sandboxes of a \
    live run, or under another host's current lease, are never touched. Filters combine with AND.\n\n\
    Examples:\n  \
    benchwarden cleanup daytona --stopped --older-than 1d            # preview\n  \
    benchwarden cleanup daytona --stopped --older-than 1d --no-dry-run\n  \
    benchwarden cleanup daytona --any-owner --older-than 2d --no-dry-run   # what the old scripts did")]
pub struct CleanupDaytonaArgs {
    /// Only sandboxes that are stopped, errored or failed to build
    #[arg(long)]
    pub(crate) stopped: bool,

    /// Only sandboxes created more than DUR ago
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) older_than: Option<Duration>,

    /// Only sandboxes with this label (K=V, or K for any value); repeat to require several
    #[arg(long = "label", value_name = "K=V")]
    pub(crate) labels: Vec<String>,

    /// Consider every sandbox of the organisation, not only those of benchwarden runs on this host
    /// (and those another host's run left with its lease ended)
    #[arg(long)]
    pub(crate) any_owner: bool,

    /// How long after its end another host's lease still protects its sandboxes (clock skew)
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "2m")]
    pub(crate) lease_grace: Duration,

    /// Really delete; without it this only shows what would go
    #[arg(long)]
    pub(crate) no_dry_run: bool,

    /// Start no new deletion after the first one that fails for good
    #[arg(long)]
    pub(crate) fail_fast: bool,

    /// Also write metrics there, in the Prometheus text format (for node_exporter's textfile collector)
    #[arg(long, value_name = "PATH")]
    pub(crate) metrics_file: Option<PathBuf>,

    /// Print the result as one JSON object on stdout
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Filters combine with AND. At least one of --exited, --older-than, --label, \
    --all, --images, --build-cache-max is required, so a bare `cleanup docker` never wipes a host. \
    With --images or --build-cache-max alone, no container is touched; --older-than then selects images.\n\n\
    Examples:\n  \
    benchwarden cleanup docker --exited --older-than 1d\n  \
    benchwarden cleanup docker --images --older-than 2d --dry-run   # images benchwarden runs built\n  \
    benchwarden cleanup docker --build-cache-max 30GB               # as Terminal-Bench's CI prunes\n  \
    benchwarden cleanup docker --label com.docker.compose.project=tb-run --dry-run\n  \
    benchwarden cleanup docker --all --volumes        # every container on this host")]
pub struct CleanupDockerArgs {
    /// Only containers that are not running: exited, dead, or created but never started
    #[arg(long)]
    pub(crate) exited: bool,

    /// Only containers created more than DUR ago (90s, 30m, 24h, 2d), in any state
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) older_than: Option<Duration>,

    /// Only containers with this label (K=V, or K for any value); repeat to require several
    #[arg(long = "label", value_name = "K=V")]
    pub(crate) labels: Vec<String>,

    /// Select every container the other filters match, running ones included (alone: all of them)
    #[arg(long)]
    pub(crate) all: bool,

    /// Also remove the images benchwarden runs built, pulled or imported (owner labels or the
    /// ledger), older than --older-than if given; never one a live run or a container uses, nor
    /// one that was there before its run
    #[arg(long)]
    pub(crate) images: bool,

    /// Also prune the engine's build cache down to SIZE (30GB, 500MB, 2GiB, or bytes), least
    /// recently used first; the cache is shared by every build on the engine
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) build_cache_max: Option<u64>,

    /// Stop gracefully with this timeout before removing, instead of force-removing at once
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) stop_timeout: Option<Duration>,

    /// Also remove named volumes of removed compose projects (and, with --label, labelled volumes)
    #[arg(long)]
    pub(crate) volumes: bool,

    /// Removals at once [default: 16]
    #[arg(long, value_name = "N")]
    pub(crate) parallel: Option<usize>,

    /// Show what would be removed; remove nothing
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Start no new removal after the first one that fails for good
    #[arg(long)]
    pub(crate) fail_fast: bool,

    /// Also write metrics there, in the Prometheus text format (for node_exporter's textfile collector)
    #[arg(long, value_name = "PATH")]
    pub(crate) metrics_file: Option<PathBuf>,

    /// Print the result as one JSON object on stdout
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Show what would be torn down; change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Also find orphaned runs from owner labels on this host's containers, networks and
    /// volumes (for when the ledger file is lost): a run whose benchwarden pid is gone
    #[arg(long)]
    pub(crate) from_labels: bool,

    /// Print the result as one JSON object on stdout
    #[arg(long)]
    pub(crate) json: bool,

    /// Also tear down what `run --keep-failed` kept, of runs whose process is gone
    #[arg(long)]
    pub(crate) include_kept: bool,

    /// Only this run (its id, as `status` shows it)
    #[arg(long, value_name = "RUN")]
    pub(crate) run: Option<String>,
}

#[derive(Debug, Args)]
#[command(
    group(clap::ArgGroup::new("resource").required(true).args(["docker", "daytona"])),
    after_help = "Run it from inside a task of `benchwarden run` (a harness, or anything it starts): the \
    run and task come from BENCHWARDEN_RUN_ID and BENCHWARDEN_TASK_ID, the ledger from \
    BENCHWARDEN_STATE_DIR, all three set by benchwarden for the harness. The claimed resource is torn \
    down with the task's own. A container is looked up on DOCKER_HOST, and torn down there: inside a \
    task, DOCKER_HOST is the task's proxy (the run's own engine) unless the harness points it \
    elsewhere. A claim for an unknown or ended run, or an unknown task, is exit 2.\n\n\
    Examples:\n  \
    export DOCKER_HOST=tcp://builder:2375; benchwarden claim --docker \"$(docker run -d image)\"\n  \
    benchwarden claim --daytona 7f3c1d2e-0000-4000-8000-000000000000"
)]
pub struct ClaimArgs {
    /// A Docker container, by id or name, on DOCKER_HOST
    #[arg(long, value_name = "ID")]
    pub(crate) docker: Option<String>,

    /// A Daytona sandbox, by id
    #[arg(long, value_name = "ID")]
    pub(crate) daytona: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "By default: the runs that still own something, that are running or orphaned, and the \
    last 20 finished runs; a line (and `runs_left_out` in the JSON) says how many more the ledger holds.")]
pub struct StatusArgs {
    /// Print the status as one JSON object on stdout
    #[arg(long)]
    pub(crate) json: bool,

    /// Show every run in the ledger
    #[arg(long, conflicts_with = "since")]
    pub(crate) all: bool,

    /// Show only the runs started within DUR (e.g. 2d)
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) since: Option<Duration>,
}

#[derive(Debug, Args)]
#[command(after_help = "A run is forgotten when it finished longer than the retention ago and owns nothing: \
    no resource kept (--keep-failed), pending or leaked, and no image still recorded (`cleanup docker \
    --images` removes those). Its ledger rows and its directory under \
    <state-dir>/runs/ go; then the ledger is vacuumed when more than half of it is free. Socket \
    directories of runs no longer running go too. `run`, `cleanup all` and `sweep` do the same at \
    their start.\n\n\
    Examples:\n  \
    benchwarden prune --dry-run                     # which runs would go\n  \
    benchwarden prune --older-than 7d")]
pub struct PruneArgs {
    /// Forget finished runs older than DUR [env: BENCHWARDEN_RETENTION] [default: 30d]
    #[arg(long, visible_alias = "retention", value_name = "DUR", value_parser = parse_duration)]
    pub(crate) older_than: Option<Duration>,

    /// Show what would be pruned; change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Print the result as one JSON object on stdout
    #[arg(long)]
    pub(crate) json: bool,
}

/// Parses human durations: `90s`, `30m`, `24h`, `2d`, `1h30m`.
/// A size in bytes: a number with an optional unit, `B`, `kB`/`KB`, `MB`,
/// `GB`, `TB` (powers of 1000, as docker prints sizes) or `KiB`, `MiB`,
/// `GiB`, `TiB` (powers of 1024); case and a space before the unit do not matter.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size {text:?} (expected a size such as 30GB, 500MB, 2GiB or 1073741824)");
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(invalid()),
    };
    let bytes = number * factor as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes.round() as u64)
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::clock::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes_read_as_docker_prints_them() {
        assert_eq!(parse_size("30GB"), Ok(30_000_000_000));
        assert_eq!(parse_size("1.5 gb"), Ok(1_500_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "GB", "-1GB", "1PB", "1e400", "1.2.3MB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_size_text_parses_or_is_refused_without_panicking(text in proptest::prelude::any::<String>()) {
            let _ = parse_size(&text);
        }

        #[test]
        fn whole_numbers_of_a_unit_read_back(number in 0u64..1_000_000, unit in 0usize..4) {
            let (suffix, factor) = [("B", 1u64), ("kB", 1_000), ("MiB", 1 << 20), ("GB", 1_000_000_000)][unit];
            proptest::prop_assert_eq!(parse_size(&format!("{number}{suffix}")), Ok(number * factor));
        }
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_read_like_the_docs() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(2 * 86400));
        assert!(parse_duration("soon").is_err());
    }
}
