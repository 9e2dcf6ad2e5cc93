//! Text and JSON for people and scripts: tables, the closing summaries of
//! cleanups, runs and recoveries, and the JSON report of a run. Pure
//! functions from results to text; the commands print them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::backend::daytona::Sandbox;
use crate::backend::docker::Container;
use crate::cleanup::{CleanupReport, Skipped};
use crate::config::{IntervalSource, SandboxCollection};
use crate::events::{TaskOutcome, TaskReport};
use crate::ledger::retention::PruneReport;
use crate::ledger::{History, RunRecord};
use crate::limits::LimitsReport;
use crate::metrics::BackendFigures;
use crate::owner::LabelledOwner;
use crate::recover::RecoveredRun;
use crate::resource::{short_id, ImageFate, RemovalOutcome, RemovalReport, ResourceRef};
use crate::results::TaskResult;
use crate::sweep::daytona::DaytonaSweepResult;
use crate::sweep::docker::SweepResult;
use crate::sweep::images::DiskReport;

/// Formats an age for tables: `45s`, `12m`, `3h`, `2d`.
pub(crate) fn format_age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        7200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// Renders rows as a left-aligned table with two spaces between columns.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if index < widths.len() {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
    }
    let mut text = String::new();
    let mut push_row = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (index, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if index < last {
                let padding = widths[index].saturating_sub(cell.chars().count()) + 2;
                text.extend(std::iter::repeat_n(' ', padding));
            }
        }
        text.push('\n');
    };
    push_row(header.to_vec());
    for row in rows {
        push_row(row.iter().map(String::as_str).collect());
    }
    text
}

/// `list --docker`: newest first, as the caller sorted them.
pub(crate) fn container_table(containers: &[Container], now: i64) -> String {
    let rows: Vec<Vec<String>> = containers
        .iter()
        .map(|container| {
            vec![
                short_id(&container.id).to_string(),
                container.name.clone(),
                container.image.clone(),
                container.state.clone(),
                format_age(now - container.created),
                container.compose_project.clone().unwrap_or_else(|| "-".to_string()),
                LabelledOwner::column(&container.labels),
            ]
        })
        .collect();
    table(&["ID", "NAME", "IMAGE", "STATE", "AGE", "PROJECT", "OWNER"], &rows)
}

/// `list --daytona`.
pub(crate) fn sandbox_table(sandboxes: &[Sandbox], now: i64) -> String {
    let rows: Vec<Vec<String>> = sandboxes
        .iter()
        .map(|sandbox| {
            vec![
                short_id(&sandbox.id).to_string(),
                sandbox.name.clone().unwrap_or_default(),
                sandbox.state.clone().unwrap_or_else(|| "?".to_string()),
                sandbox.created_unix().map(|created| format_age(now - created)).unwrap_or_else(|| "?".to_string()),
                sandbox.target.clone().unwrap_or_default(),
                LabelledOwner::column(&sandbox.labels),
            ]
        })
        .collect();
    table(&["ID", "NAME", "STATE", "AGE", "TARGET", "OWNER"], &rows)
}

/// Everything `cleanup all --list` found, containers first, in one table.
pub(crate) fn resource_table(containers: &[Container], sandboxes: &[Sandbox], skipped: &[Skipped], now: i64) -> String {
    let container_rows = containers.iter().map(|container| {
        vec![
            "docker".to_string(),
            "container".to_string(),
            short_id(&container.id).to_string(),
            container.name.clone(),
            container.state.clone(),
            format_age(now - container.created),
            LabelledOwner::column(&container.labels),
        ]
    });
    let sandbox_rows = sandboxes.iter().map(|sandbox| {
        vec![
            "daytona".to_string(),
            "sandbox".to_string(),
            short_id(&sandbox.id).to_string(),
            sandbox.name.clone().unwrap_or_default(),
            sandbox.state.clone().unwrap_or_else(|| "?".to_string()),
            sandbox.created_unix().map(|created| format_age(now - created)).unwrap_or_else(|| "?".to_string()),
            LabelledOwner::column(&sandbox.labels),
        ]
    });
    let rows: Vec<Vec<String>> = container_rows.chain(sandbox_rows).collect();
    let mut text = table(&["BACKEND", "KIND", "ID", "NAME", "STATE", "AGE", "OWNER"], &rows);
    text.push_str(&skipped_lines(skipped));
    text
}

fn skipped_lines(skipped: &[Skipped]) -> String {
    skipped.iter().map(|skipped| format!("{}: skipped: {}\n", skipped.backend, skipped.reason)).collect()
}

/// The closing lines of `cleanup all`: recovery, each backend's sweep, and
/// which backend was skipped and why.
pub(crate) fn cleanup_summary(report: &CleanupReport) -> String {
    let mut text = match report.recovered.is_empty() {
        true => "recovery: no orphaned runs\n".to_string(),
        false => recovery_summary(&report.recovered),
    };
    if let Some(docker) = &report.docker {
        text.push_str(&sweep_summary(docker));
    }
    if let Some(disk) = &report.disk {
        text.push_str(&disk_summary(disk));
    }
    if let Some(daytona) = &report.daytona {
        text.push_str(&daytona_sweep_summary(daytona));
    }
    text.push_str(&skipped_lines(&report.skipped));
    text
}

/// The closing lines of a Docker sweep: counts, then each failure with its reason.
pub(crate) fn sweep_summary(result: &SweepResult) -> String {
    removal_summary(
        &[("containers", &result.containers), ("networks", &result.networks), ("volumes", &result.volumes)],
        result.dry_run,
        result.protected.len(),
    )
}

/// The closing lines of a Daytona sweep, with how to really delete after a dry run.
pub(crate) fn daytona_sweep_summary(result: &DaytonaSweepResult) -> String {
    let mut text = removal_summary(&[("sandboxes", &result.sandboxes)], result.dry_run, result.protected.len());
    for item in &result.lease_expired {
        text.push_str(&format!("  {}: {}\n", item.resource, item.reason));
    }
    if result.dry_run && !result.sandboxes.results.is_empty() {
        text.push_str("dry run: nothing was deleted; add --no-dry-run to delete\n");
    }
    match (&result.pending_run, result.sandboxes.pending()) {
        (_, 0) => {}
        (Some(run), _) => text.push_str(&format!(
            "the deletions still pending are recorded under run {run}: `benchwarden recover` finishes them\n"
        )),
        (None, _) => text.push_str("the deletions still pending could not be recorded: run this cleanup again later\n"),
    }
    text
}

/// Counts per kind (the first kind says when nothing matched), what was
/// left alone, then each failure with its reason.
pub(crate) fn removal_summary(reports: &[(&str, &RemovalReport)], dry_run: bool, protected: usize) -> String {
    let mut text = String::new();
    for (index, (label, report)) in reports.iter().enumerate() {
        if report.results.is_empty() {
            if index == 0 {
                text.push_str(&format!("{label}: none matched\n"));
            }
            continue;
        }
        text.push_str(&removal_counts(label, report, dry_run));
    }
    if protected > 0 {
        text.push_str(&format!("{protected} left alone because a live run owns them (or leases them)\n"));
    }
    for (resource, outcome) in reports.iter().flat_map(|(_, report)| &report.results) {
        match outcome {
            RemovalOutcome::Failed { error, attempts } => {
                text.push_str(&format!("  failed: {resource}: {error} (after {attempts} attempt(s))\n"))
            }
            RemovalOutcome::Pending { .. } => text.push_str(&format!("  pending: {resource} is still being deleted\n")),
            _ => {}
        }
    }
    text
}

fn removal_counts(label: &str, report: &RemovalReport, dry_run: bool) -> String {
    if dry_run {
        return format!("{label}: {} would be removed (dry run)\n", report.would_remove());
    }
    let mut text = format!(
        "{label}: {} removed, {} already gone, {} failed",
        report.removed(),
        report.already_gone(),
        report.failed()
    );
    if report.pending() > 0 {
        text.push_str(&format!(", {} still being deleted (pending)", report.pending()));
    }
    if report.not_attempted() > 0 {
        text.push_str(&format!(", {} not attempted (--fail-fast)", report.not_attempted()));
    }
    text.push('\n');
    text
}

/// The JSON report of a run.
#[derive(Debug, Serialize)]
pub(crate) struct RunReport<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) benchmark: &'a str,
    pub(crate) source: &'a str,
    /// The collection intervals the Daytona proxies set on creates that
    /// leave them unset, and where each came from; absent without Daytona.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) daytona: Option<&'a SandboxCollection>,
    pub(crate) started_at: i64,
    pub(crate) ended_at: i64,
    pub(crate) exit_code: i32,
    pub(crate) interrupted_by: Option<String>,
    pub(crate) pre_run_sweep: Option<&'a SweepResult>,
    /// Per backend: removed, failed, retries and the removal success rate.
    pub(crate) backends: BTreeMap<&'static str, BackendFigures>,
    /// The caps the run kept, the most it had live at once, the creates refused; absent without limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) limits: Option<LimitsReport>,
    pub(crate) tasks: &'a [TaskReport],
    /// The images removed at the end (`docker.remove_images`), and the disk
    /// that freed; `None` when the run kept its images.
    pub(crate) disk: Option<&'a DiskReport>,
    /// Bytes freed: `disk.reclaimed_bytes`, 0 without it.
    pub(crate) disk_reclaimed_bytes: u64,
}

/// A duration as people wrote it: `30d`, `36h`, `90m`; else humantime's words.
pub(crate) fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0 => "0s".to_string(),
        _ if seconds % 86_400 == 0 => format!("{}d", seconds / 86_400),
        _ if seconds % 3_600 == 0 => format!("{}h", seconds / 3_600),
        _ if seconds % 60 == 0 => format!("{}m", seconds / 60),
        _ => humantime::format_duration(duration).to_string(),
    }
}

/// The collection intervals in effect, for `-v` at the start of a run.
pub(crate) fn sandbox_collection_line(collection: &SandboxCollection) -> String {
    fn one(minutes: Option<String>, from: IntervalSource) -> String {
        match (minutes, from) {
            (Some(minutes), IntervalSource::File) => format!("{minutes} min (the benchmark file)"),
            (Some(minutes), _) => format!("{minutes} min (default)"),
            (None, _) => "off (the benchmark file)".to_string(),
        }
    }
    format!(
        "daytona: sandboxes created without their own get autoStopInterval {}, autoDeleteInterval {}",
        one(collection.auto_stop_minutes.map(|minutes| minutes.to_string()), collection.auto_stop_from),
        one(collection.auto_delete_minutes.map(|minutes| minutes.to_string()), collection.auto_delete_from)
    )
}

/// What `prune` did, for people.
pub(crate) fn prune_summary(report: &PruneReport) -> String {
    let age = format_duration(Duration::from_secs(report.retention_seconds));
    let verb = if report.dry_run { "would forget" } else { "forgot" };
    let mut text = match report.runs.len() {
        0 => format!("nothing to prune: no finished run older than {age} that owns nothing\n"),
        runs => format!(
            "{verb} {runs} finished run(s) older than {age} that owned nothing ({} run directories)\n",
            report.run_directories.len()
        ),
    };
    for (run_id, why) in &report.kept {
        text.push_str(&format!("  kept {run_id} in the ledger: {why}\n"));
    }
    if !report.socket_directories.is_empty() {
        let verb = if report.dry_run { "would remove" } else { "removed" };
        text.push_str(&format!(
            "{verb} {} socket directory(ies) of runs no longer running\n",
            report.socket_directories.len()
        ));
    }
    if let Some(vacuum) = report.vacuum {
        text.push_str(&format!(
            "ledger vacuumed: {} -> {}\n",
            human_bytes(vacuum.bytes_before),
            human_bytes(vacuum.bytes_after)
        ));
    }
    text
}

/// What removing images and pruning the build cache did, for people: a
/// line per image not simply removed, the build-cache prune, the total.
pub(crate) fn disk_summary(report: &DiskReport) -> String {
    let mut out = String::new();
    let count = |wanted: fn(&ImageFate) -> bool| report.count(wanted);
    if !report.images.is_empty() {
        out.push_str(&format!(
            "images: {} removed, {} already gone, {} would go (dry run), {} kept, {} failed\n",
            count(|fate| matches!(fate, ImageFate::Removed { .. })),
            count(|fate| matches!(fate, ImageFate::AlreadyGone)),
            count(|fate| matches!(fate, ImageFate::WouldRemove { .. })),
            count(|fate| matches!(fate, ImageFate::Kept { .. })),
            count(|fate| matches!(fate, ImageFate::Failed { .. })),
        ));
    }
    for result in &report.images {
        match &result.fate {
            ImageFate::Kept { reason } => out.push_str(&format!("  kept: {}: {reason}\n", result.image)),
            ImageFate::Failed { error } => out.push_str(&format!("  failed: {}: {error}\n", result.image)),
            ImageFate::WouldRemove { .. } => out.push_str(&format!("  would remove: {}\n", result.image)),
            ImageFate::Removed { .. } | ImageFate::AlreadyGone => {}
        }
    }
    if let Some(prune) = &report.build_cache {
        let limit = human_bytes(prune.max_bytes);
        match (&prune.error, prune.reclaimed_bytes) {
            (Some(error), _) => out.push_str(&format!("build cache: prune to {limit} failed: {error}\n")),
            (None, Some(bytes)) => {
                out.push_str(&format!("build cache: pruned to {limit}, {} freed\n", human_bytes(bytes)))
            }
            (None, None) => out.push_str(&format!("build cache: would be pruned to {limit} (dry run)\n")),
        }
    }
    out.push_str(&format!("disk freed: {}\n", human_bytes(report.reclaimed_bytes)));
    out
}

/// Bytes for people, in powers of 1000 as docker prints them: `1.2 GB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// The summary of a run: a row per task, the counts, then what went wrong.
pub(crate) fn run_summary(reports: &[TaskReport], limits: Option<&LimitsReport>) -> String {
    let rows: Vec<Vec<String>> = reports.iter().map(task_row).collect();
    let headers = [
        "TASK",
        "RESULT",
        "EXIT",
        "TIME",
        "VERDICT",
        "SCORE",
        "CREATED",
        "BY-HARNESS",
        "REMOVED",
        "LEAKED",
        "TEARDOWN",
    ];
    let mut text = table(&headers, &rows);
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
    let sum = |count: fn(&TaskReport) -> usize| reports.iter().map(count).sum::<usize>();
    let leaked = sum(|report| report.resources_leaked.len());
    let removed = sum(|report| report.resources_removed);
    let created = sum(|report| report.resources.created);
    let by_harness = sum(|report| report.resources.removed_by_harness);
    let counts: Vec<String> = counts.iter().map(|(key, count)| format!("{count} {key}")).collect();
    let pending = sum(|report| report.resources_pending.len());
    let pending = if pending > 0 { format!(", {pending} still being deleted") } else { String::new() };
    let kept = sum(|report| report.resources_kept.len());
    let kept = if kept > 0 { format!(", {kept} kept (--keep-failed)") } else { String::new() };
    text.push_str(&format!(
        "{}; {removed} resource(s) removed, {leaked} leaked{pending}{kept} ({created} created, {by_harness} removed by the harness itself)\n",
        counts.join(", ")
    ));
    text.push_str(&results_line(reports));
    text.push_str(&limits.map(limits_line).unwrap_or_default());
    for report in reports {
        text.push_str(&task_problems(report));
    }
    text
}

/// What the limits held: each cap, the most live at once, the creates refused.
fn limits_line(report: &LimitsReport) -> String {
    let (limits, figures) = (&report.limits, &report.figures);
    let mut parts = Vec::new();
    for (cap, peak, refused, what) in [
        (limits.max_containers, figures.peak_containers, figures.refused_containers, "containers"),
        (limits.max_sandboxes, figures.peak_sandboxes, figures.refused_sandboxes, "sandboxes"),
    ] {
        let Some(cap) = cap else { continue };
        let refused = match refused {
            0 => String::new(),
            count => format!(", {count} create(s) refused"),
        };
        parts.push(format!("at most {cap} {what} live (peak {peak}{refused})"));
    }
    let hard = if limits.hard { " (hard)" } else { "" };
    format!("limits{hard}: {}\n", parts.join("; "))
}

/// The benchmark's own verdicts, when the harness's result files were read.
fn results_line(reports: &[TaskReport]) -> String {
    let results: Vec<&TaskResult> = reports.iter().filter_map(|report| report.result.as_ref()).collect();
    if results.is_empty() {
        return String::new();
    }
    let mut verdicts: BTreeMap<&str, usize> = BTreeMap::new();
    for result in &results {
        *verdicts.entry(result.verdict.describe()).or_default() += 1;
    }
    let verdicts: Vec<String> = verdicts.iter().map(|(verdict, count)| format!("{count} {verdict}")).collect();
    let scores: Vec<f64> = results.iter().filter_map(|result| result.score).collect();
    let mean = match scores.is_empty() {
        true => String::new(),
        false => format!(", mean score {:.2}", scores.iter().sum::<f64>() / scores.len() as f64),
    };
    format!("benchmark results: {}{mean}\n", verdicts.join(", "))
}

fn task_row(report: &TaskReport) -> Vec<String> {
    let exit = match (&report.exit_code, &report.signal) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => signal.clone(),
        (None, None) => "-".to_string(),
    };
    let (verdict, score) = match &report.result {
        Some(result) => (
            result.verdict.describe().to_string(),
            result.score.map_or_else(|| "-".to_string(), |score| format!("{score:.2}")),
        ),
        None => ("-".to_string(), "-".to_string()),
    };
    let fates = &report.resources;
    vec![
        report.task.clone(),
        report.outcome.describe().to_string(),
        exit,
        format!("{:.1}s", report.seconds),
        verdict,
        score,
        fates.created.to_string(),
        fates.removed_by_harness.to_string(),
        report.resources_removed.to_string(),
        report.resources_leaked.len().to_string(),
        format!("{:.1}s", report.teardown_seconds),
    ]
}

fn task_problems(report: &TaskReport) -> String {
    let task = &report.task;
    let mut text = String::new();
    if let Some(error) = &report.error {
        text.push_str(&format!("  {task}: {error}\n"));
    }
    if let Some(error) = &report.teardown_error {
        text.push_str(&format!("  {task}: teardown: {error}\n"));
    }
    if let Some(detail) = report.result.as_ref().and_then(|result| result.detail.as_ref()) {
        text.push_str(&format!("  {task}: result: {detail}\n"));
    }
    if let Some(error) = &report.log_error {
        text.push_str(&format!("  {task}: {error}; the log is incomplete\n"));
    }
    if report.refused_creates > 0 {
        text.push_str(&format!("  {task}: {} create(s) refused at a hard limit\n", report.refused_creates));
    }
    for resource in &report.resources_leaked {
        text.push_str(&format!("  {task}: leaked {resource}\n"));
    }
    for resource in &report.resources_pending {
        text.push_str(&format!("  {task}: {resource} is still being deleted; `benchwarden recover` checks it again\n"));
    }
    for resource in &report.resources_kept {
        text.push_str(&format!("  {task}: kept {resource}\n"));
    }
    text
}

/// The command that removes what `--keep-failed` kept in this run, exactly
/// that, when it kept anything.
pub(crate) fn kept_summary(reports: &[TaskReport], run_id: &str, state_dir: &std::path::Path) -> String {
    let kept: usize = reports.iter().map(|report| report.resources_kept.len()).sum();
    if kept == 0 {
        return String::new();
    }
    format!(
        "{kept} resource(s) of failed tasks kept in place; remove them with:\n  \
         benchwarden recover --include-kept --run {run_id} --state-dir {}\n",
        state_dir.display()
    )
}

/// What `recover` did (or would do), run by run.
pub(crate) fn recovery_summary(recovered: &[RecoveredRun]) -> String {
    if recovered.is_empty() {
        return "no orphaned runs\n".to_string();
    }
    let mut text = String::new();
    for run in recovered {
        if run.dry_run {
            text.push_str(&format!(
                "run {}: {} resource(s) would be removed and {} process(es) killed\n",
                run.run_id,
                run.found.len(),
                run.processes.len()
            ));
            for process in &run.processes {
                text.push_str(&format!("  would kill: pid {} {}\n", process.pid, process.command));
            }
            for resource in &run.found {
                text.push_str(&format!("  would remove: {resource}\n"));
            }
        } else {
            text.push_str(&format!(
                "run {}: {} resource(s) removed, {} left\n",
                run.run_id,
                run.removed,
                run.leaked.len()
            ));
        }
        for process in run.processes.iter().filter(|_| !run.dry_run) {
            text.push_str(&format!("  killed: pid {} {}\n", process.pid, process.command));
        }
        for resource in &run.leaked {
            text.push_str(&format!("  left: {resource}\n"));
        }
        for resource in &run.pending {
            text.push_str(&format!(
                "  pending: {resource} is still being deleted; `benchwarden recover` checks again\n"
            ));
        }
        for resource in &run.kept {
            text.push_str(&format!(
                "  kept: {resource}: its backend was not part of this recovery (no credentials, or a dry run); \
                 the run stays open\n"
            ));
        }
    }
    text
}

/// A run as `status` shows it.
#[derive(Debug, Serialize)]
pub(crate) struct RunStatus {
    #[serde(flatten)]
    pub(crate) run: RunRecord,
    /// `running`, `orphaned` or `finished`.
    pub(crate) state: &'static str,
    /// Still owned, and not kept.
    pub(crate) live_resources: Vec<ResourceRef>,
    /// Kept in place by `run --keep-failed`.
    pub(crate) kept_resources: Vec<ResourceRef>,
}

impl RunStatus {
    /// Running, orphaned, or owning something (kept or not): always shown.
    fn needs_attention(&self) -> bool {
        self.state != "finished" || !self.live_resources.is_empty() || !self.kept_resources.is_empty()
    }
}

/// How many finished runs a default `status` shows, besides those that need attention.
pub(crate) const RECENT_FINISHED_RUNS: usize = 20;

/// Which runs `status` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusSelection {
    /// The runs that own something, are running or orphaned, and the last
    /// [`RECENT_FINISHED_RUNS`] finished ones.
    Default,
    /// `--all`.
    All,
    /// `--since DUR`: the runs started within DUR.
    Since(Duration),
}

impl StatusSelection {
    /// The runs to show (`runs` in the ledger's order, oldest first, which
    /// they keep), and how many were left out.
    pub(crate) fn select(self, runs: Vec<RunStatus>, now: i64) -> (Vec<RunStatus>, usize) {
        let total = runs.len();
        let shown: Vec<RunStatus> = match self {
            StatusSelection::All => runs,
            StatusSelection::Since(since) => {
                let cutoff = crate::clock::seconds_before(now, since);
                runs.into_iter().filter(|status| status.run.started_at >= cutoff).collect()
            }
            StatusSelection::Default => {
                let recent: BTreeSet<usize> = (0..runs.len())
                    .rev()
                    .filter(|index| runs[*index].state == "finished")
                    .take(RECENT_FINISHED_RUNS)
                    .collect();
                let keep = |(index, status): &(usize, RunStatus)| recent.contains(index) || status.needs_attention();
                runs.into_iter().enumerate().filter(keep).map(|(_, status)| status).collect()
            }
        };
        let left_out = total - shown.len();
        (shown, left_out)
    }
}

/// `status`: the runs, and what the ledger's history says of removals.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub(crate) runs: Vec<RunStatus>,
    /// Runs in the ledger the selection did not show.
    pub(crate) runs_left_out: usize,
    /// Per backend: resources released over those released or failed, over the ledger's history.
    pub(crate) removal_success_rates: BTreeMap<String, f64>,
    /// How long ago the oldest resource still owned was recorded.
    pub(crate) oldest_owned_resource_age_seconds: Option<i64>,
}

impl Status {
    pub(crate) fn new(runs: Vec<RunStatus>, runs_left_out: usize, history: &History, now: i64) -> Self {
        let removal_success_rates = history
            .removals
            .iter()
            .filter(|(_, (released, failed))| released + failed > 0)
            .map(|(backend, (released, failed))| (backend.clone(), *released as f64 / (released + failed) as f64))
            .collect();
        let oldest_owned_resource_age_seconds = history.oldest_owned.map(|created| (now - created).max(0));
        Status { runs, runs_left_out, removal_success_rates, oldest_owned_resource_age_seconds }
    }
}

/// `status`: a row per run shown, how many more the ledger holds, the oldest
/// resource still owned, and how to recover orphans if there are any.
pub(crate) fn status_table(
    status: &Status,
    selection: StatusSelection,
    now: i64,
    state_dir: &std::path::Path,
) -> String {
    let statuses = &status.runs;
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|status| {
            vec![
                status.run.id.clone(),
                status.run.benchmark.clone(),
                status.state.to_string(),
                status.run.outcome.clone().unwrap_or_else(|| "-".to_string()),
                status.run.pid.to_string(),
                format_age(now - status.run.started_at),
                status.live_resources.len().to_string(),
                status.kept_resources.len().to_string(),
            ]
        })
        .collect();
    let mut text = table(&["RUN", "BENCHMARK", "STATE", "OUTCOME", "PID", "AGE", "RESOURCES", "KEPT"], &rows);
    text.push_str(&left_out_line(status.runs_left_out, selection));
    if let Some(age) = status.oldest_owned_resource_age_seconds {
        text.push_str(&format!("oldest resource still owned: recorded {} ago\n", format_age(age)));
    }
    for status in statuses.iter().filter(|status| !status.kept_resources.is_empty()) {
        text.push_str(&format!("run {} keeps (--keep-failed):\n", status.run.id));
        for resource in &status.kept_resources {
            text.push_str(&format!("  {resource}\n"));
        }
        text.push_str(&format!(
            "  `benchwarden recover --include-kept --run {} --state-dir {}` removes them once the run has ended\n",
            status.run.id,
            state_dir.display()
        ));
    }
    let orphans = statuses.iter().filter(|status| status.state == "orphaned").count();
    if orphans > 0 {
        text.push_str(&format!(
            "{orphans} orphaned run(s): `benchwarden recover --state-dir {}` tears down what they own\n",
            state_dir.display()
        ));
    }
    text
}

/// The line saying how many runs `status` did not show, and how to see them.
fn left_out_line(left_out: usize, selection: StatusSelection) -> String {
    match (left_out, selection) {
        (0, _) | (_, StatusSelection::All) => String::new(),
        (_, StatusSelection::Since(since)) => format!(
            "{left_out} run(s) started longer than {} ago not shown; --all shows every run\n",
            format_duration(since)
        ),
        (_, StatusSelection::Default) => format!(
            "{left_out} older finished run(s) owning nothing not shown; --all shows every run, --since DUR the recent ones\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ResourceFates;
    use crate::results::Verdict;

    #[test]
    fn status_shows_what_needs_attention_and_the_last_finished_runs() {
        let status = |index: i64, state: &'static str, live: usize| RunStatus {
            run: RunRecord {
                id: format!("r{index:04}"),
                pid: 1,
                start_time: None,
                host: "h".into(),
                benchmark: "b".into(),
                started_at: index * 60,
                ended_at: (state == "finished").then_some(index * 60 + 1),
                outcome: None,
            },
            state,
            live_resources: (0..live)
                .map(|_| ResourceRef { kind: crate::resource::Kind::Container, id: "c".into(), name: String::new() })
                .collect(),
            kept_resources: Vec::new(),
        };
        let ledger = || {
            let mut runs: Vec<RunStatus> = (0..1000).map(|index| status(index, "finished", 0)).collect();
            runs[3] = status(3, "orphaned", 0);
            runs[5] = status(5, "finished", 2);
            runs[998] = status(998, "running", 0);
            runs
        };
        let (shown, left_out) = StatusSelection::Default.select(ledger(), 1000 * 60);
        let ids: Vec<&str> = shown.iter().map(|status| status.run.id.as_str()).collect();
        assert_eq!(shown.len(), 2 + RECENT_FINISHED_RUNS + 1, "{ids:?}");
        assert_eq!((ids[0], ids[1], ids[2]), ("r0003", "r0005", "r0979"), "oldest first");
        assert!(ids.contains(&"r0998") && ids.contains(&"r0999"));
        assert_eq!(left_out, 1000 - shown.len());
        let (all, none_left) = StatusSelection::All.select(ledger(), 1000 * 60);
        assert_eq!((all.len(), none_left), (1000, 0));
        let (recent, left) = StatusSelection::Since(Duration::from_secs(600)).select(ledger(), 1000 * 60);
        assert_eq!((recent.len(), left), (10, 990), "started within the last ten minutes");
        // A machine that ran 1,000 runs, all finished and owning nothing: a header, 20 rows, one line.
        let finished: Vec<RunStatus> = (0..1000).map(|index| status(index, "finished", 0)).collect();
        let (shown, left_out) = StatusSelection::Default.select(finished, 1000 * 60);
        let status = Status::new(shown, left_out, &History::default(), 1000 * 60);
        let text = status_table(&status, StatusSelection::Default, 1000 * 60, std::path::Path::new("/s"));
        assert_eq!(text.lines().count(), 1 + RECENT_FINISHED_RUNS + 1, "{text}");
        assert!(text.contains("980 older finished run(s) owning nothing not shown"), "{text}");
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(format_duration(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(format_duration(Duration::from_secs(36 * 3_600)), "36h");
        assert_eq!(format_duration(Duration::from_secs(90 * 60)), "90m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(format_age(5), "5s");
        assert_eq!(format_age(600), "10m");
        assert_eq!(format_age(3 * 3600), "3h");
        assert_eq!(format_age(5 * 86_400), "5d");
    }

    #[test]
    fn tables_align() {
        let text = table(&["ID", "NAME"], &[vec!["a".into(), "bb".into()], vec!["ccc".into(), "d".into()]]);
        assert_eq!(text, "ID   NAME\na    bb\nccc  d\n");
    }

    #[test]
    fn a_run_summary_counts_outcomes_and_names_what_was_left() {
        let mut passed = TaskReport::unstarted("a", "a.log".into());
        passed.outcome = TaskOutcome::Passed;
        passed.resources_removed = 2;
        let mut leaky = TaskReport::unstarted("b", "b.log".into());
        leaky.outcome = TaskOutcome::TimedOut;
        leaky.resources_leaked = vec!["container c".into()];
        passed.resources =
            ResourceFates { created: 3, removed_by_harness: 1, removed_by_benchwarden: 2, leaked: 0, kept: 0 };
        passed.result = Some(TaskResult {
            verdict: Verdict::Unresolved,
            score: Some(0.5),
            trials: 2,
            detail: None,
            path: "results.json".into(),
        });
        let text = run_summary(&[passed, leaky], None);
        assert!(
            text.contains(
                "1 passed, 1 timed out; 2 resource(s) removed, 1 leaked (3 created, 1 removed by the harness itself)\n"
            ),
            "{text}"
        );
        assert!(text.contains("benchmark results: 1 unresolved, mean score 0.50\n"), "{text}");
        assert!(text.contains("  b: leaked container c\n"), "{text}");
        let row = text.lines().nth(1).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[4..10], ["unresolved", "0.50", "3", "1", "2", "0"], "{text}");
    }

    #[test]
    fn kept_resources_are_not_leaked_and_the_summary_says_how_to_remove_exactly_them() {
        let mut failed = TaskReport::unstarted("f", "f.log".into());
        failed.outcome = TaskOutcome::Failed;
        failed.resources_kept = vec!["container abc".into()];
        let reports = [failed];
        let text = run_summary(&reports, None);
        assert!(text.contains("0 leaked, 1 kept (--keep-failed)"), "{text}");
        assert!(text.contains("  f: kept container abc\n"), "{text}");
        let kept = kept_summary(&reports, "r1", std::path::Path::new("/state"));
        assert!(kept.contains("benchwarden recover --include-kept --run r1 --state-dir /state"), "{kept}");
        assert_eq!(kept_summary(&[], "r1", std::path::Path::new("/state")), "");
    }
}
