//! Metrics: counts taken from the event stream (creations, removals,
//! failures, retries, task outcomes, teardown times, sweeps) and from the
//! ledger (what is still owned), rendered in the Prometheus text exposition
//! format and written atomically (a temporary file, then a rename) for
//! node_exporter's textfile collector. The same counts give the run
//! report's per-backend figures.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use crate::errors::Service;
use crate::events::{DiskUse, Event, EventSink, RemovalEvent, TaskEvent, TaskOutcome, TaskReport};
use crate::resource::{ImageFate, Kind, RemovalOutcome};

/// Upper bounds of the teardown-time histogram's buckets, in seconds.
const TEARDOWN_BUCKETS: [f64; 11] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Resources still owned, by service and kind, as the ledger says.
pub(crate) type Live = BTreeMap<(Service, Kind), u64>;

#[derive(Debug, Default)]
struct Histogram {
    /// Observations at most each bound of [`TEARDOWN_BUCKETS`], cumulative.
    buckets: [u64; TEARDOWN_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(TEARDOWN_BUCKETS) {
            if value <= bound {
                *bucket += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

/// Everything counted so far.
#[derive(Debug, Default)]
struct Tally {
    created: BTreeMap<(Service, Kind), u64>,
    /// A container made through the proxy is seen by the creation watcher too: counted once.
    seen: HashSet<(Kind, String)>,
    removed: BTreeMap<(Service, Kind), u64>,
    failures: BTreeMap<(Service, Kind), u64>,
    /// By service and kind; calls about no single resource (lists) have no kind.
    retries: BTreeMap<(Service, Option<Kind>), u64>,
    tasks: BTreeMap<&'static str, u64>,
    /// Tasks by the verdict of the harness's own result file.
    verdicts: BTreeMap<&'static str, u64>,
    /// The sum of those results' scores, and how many had one.
    score_sum: f64,
    scored: u64,
    /// What became of the resources tasks created, by fate.
    fates: BTreeMap<&'static str, u64>,
    /// Creates refused at a hard limit, by kind.
    refused: BTreeMap<Kind, u64>,
    teardown: Histogram,
    last_sweep: Option<i64>,
    /// Bytes the engine freed, by what from.
    reclaimed: BTreeMap<DiskUse, u64>,
    /// Images considered for removal, by fate.
    images: BTreeMap<&'static str, u64>,
}

/// Removal figures of one backend, for the run report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct BackendFigures {
    pub(crate) removed: u64,
    pub(crate) failed: u64,
    pub(crate) retries: u64,
    /// Removed over removed and failed; `None` when nothing was attempted.
    pub(crate) success_rate: Option<f64>,
}

fn image_fate(fate: &ImageFate) -> &'static str {
    match fate {
        ImageFate::Removed { .. } => "removed",
        ImageFate::AlreadyGone => "already_gone",
        ImageFate::WouldRemove { .. } => "would_remove",
        ImageFate::Kept { .. } => "kept",
        ImageFate::Failed { .. } => "failed",
    }
}

impl Tally {
    fn count(&mut self, event: &Event<'_>) {
        match event {
            Event::Created { resource } if self.seen.insert((resource.kind, resource.id.clone())) => {
                *self.created.entry((resource.kind.service(), resource.kind)).or_default() += 1;
            }
            Event::Removal(RemovalEvent::Outcome { resource, outcome }) => {
                let key = (resource.kind.service(), resource.kind);
                match outcome {
                    RemovalOutcome::Removed { .. } | RemovalOutcome::AlreadyGone { .. } => {
                        *self.removed.entry(key).or_default() += 1
                    }
                    RemovalOutcome::Failed { .. } => *self.failures.entry(key).or_default() += 1,
                    _ => {}
                }
            }
            Event::Retrying { call, .. } => *self.retries.entry((call.service, call.kind)).or_default() += 1,
            Event::Refused { refusal, .. } => *self.refused.entry(refusal.kind).or_default() += 1,
            Event::Task(TaskEvent::Finished { report }) if report.outcome != TaskOutcome::NotStarted => {
                *self.tasks.entry(outcome_label(report.outcome)).or_default() += 1;
                self.teardown.observe(report.teardown_seconds);
                self.count_result(report);
            }
            Event::SweepFinished { at, .. } => self.last_sweep = Some(*at),
            Event::DiskReclaimed { what, bytes } => *self.reclaimed.entry(*what).or_default() += bytes,
            Event::Image { fate, .. } => *self.images.entry(image_fate(fate)).or_default() += 1,
            Event::PreRunSweepFinished { .. } => self.last_sweep = Some(crate::clock::now_unix()),
            _ => {}
        }
    }

    fn count_result(&mut self, report: &TaskReport) {
        let fates = &report.resources;
        for (fate, count) in [
            ("created", fates.created),
            ("removed_by_harness", fates.removed_by_harness),
            ("removed_by_benchwarden", fates.removed_by_benchwarden),
            ("leaked", fates.leaked),
            ("kept", fates.kept),
        ] {
            *self.fates.entry(fate).or_default() += count as u64;
        }
        if let Some(result) = &report.result {
            *self.verdicts.entry(result.verdict.describe()).or_default() += 1;
            if let Some(score) = result.score {
                self.score_sum += score;
                self.scored += 1;
            }
        }
    }

    fn figures(&self, service: Service) -> BackendFigures {
        let sum = |counts: &BTreeMap<(Service, Kind), u64>| {
            counts.iter().filter(|((of, _), _)| *of == service).map(|(_, count)| count).sum::<u64>()
        };
        let (removed, failed) = (sum(&self.removed), sum(&self.failures));
        let retries = self.retries.iter().filter(|((of, _), _)| *of == service).map(|(_, count)| count).sum();
        let attempted = removed + failed;
        let success_rate = (attempted > 0).then(|| removed as f64 / attempted as f64);
        BackendFigures { removed, failed, retries, success_rate }
    }
}

fn outcome_label(outcome: TaskOutcome) -> &'static str {
    match outcome {
        TaskOutcome::Passed => "passed",
        TaskOutcome::Failed => "failed",
        TaskOutcome::TimedOut => "timed_out",
        TaskOutcome::Interrupted => "interrupted",
        TaskOutcome::SpawnFailed => "spawn_failed",
        TaskOutcome::NotStarted => "not_started",
    }
}

/// Listens to the event stream and keeps the counts.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    tally: Mutex<Tally>,
}

impl EventSink for Metrics {
    fn event(&self, event: &Event<'_>) {
        self.lock().count(event);
    }
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Tally> {
        // A poisoned lock means a panic while counting; the counts are still usable.
        self.tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removal figures per backend that did anything, for the run report.
    pub(crate) fn backend_figures(&self) -> BTreeMap<&'static str, BackendFigures> {
        let tally = self.lock();
        [Service::Docker, Service::Daytona]
            .into_iter()
            .map(|service| (service.as_str(), tally.figures(service)))
            .filter(|(_, figures)| *figures != BackendFigures::default())
            .collect()
    }

    /// The text exposition of everything counted, with `live` from the ledger.
    pub(crate) fn render(&self, live: &Live) -> String {
        let tally = self.lock();
        let retries: Vec<(String, u64)> = tally
            .retries
            .iter()
            .map(|((service, kind), count)| {
                (labels(&[("backend", service.as_str()), ("kind", kind.map_or("api", Kind::as_str))]), *count)
            })
            .collect();
        let tasks = tally.tasks.iter().map(|(outcome, count)| (labels(&[("outcome", outcome)]), *count)).collect();
        let last_sweep = tally.last_sweep.map(|at| (String::new(), at.max(0) as u64)).into_iter().collect();
        let verdicts =
            tally.verdicts.iter().map(|(verdict, count)| (labels(&[("verdict", verdict)]), *count)).collect();
        let fates = tally.fates.iter().map(|(fate, count)| (labels(&[("fate", fate)]), *count)).collect();
        let families: [Family; 9] = [
            ("resources_created_total", "counter", "Resources tasks created.", by_kind(&tally.created)),
            (
                "resources_removed_total",
                "counter",
                "Resources removed (or found already gone).",
                by_kind(&tally.removed),
            ),
            ("removal_failures_total", "counter", "Removals that failed for good.", by_kind(&tally.failures)),
            ("retries_total", "counter", "Calls tried again after a failure.", retries),
            ("tasks_total", "counter", "Tasks run, by outcome.", tasks),
            ("task_results_total", "counter", "Tasks by the verdict of the harness's own result file.", verdicts),
            (
                "task_resources_total",
                "counter",
                "What became of the resources tasks created: created, removed_by_harness, removed_by_benchwarden, leaked.",
                fates,
            ),
            ("live_resources", "gauge", "Resources still owned, as the ledger records them.", by_kind(live)),
            ("last_sweep_timestamp_seconds", "gauge", "When the last sweep finished, in Unix seconds.", last_sweep),
        ];
        let mut text = String::new();
        for (name, kind, help, samples) in &families {
            family(&mut text, &format!("benchwarden_{name}"), kind, help, samples);
        }
        for (name, kind, help, samples) in disk_families(&tally).iter().chain(&[refused_family(&tally)]) {
            family(&mut text, &format!("benchwarden_{name}"), kind, help, samples);
        }
        histogram(&mut text, &tally.teardown);
        let name = "benchwarden_task_score_sum";
        let _ = writeln!(text, "# HELP {name} The sum of the scores in the harnesses' result files (mean: over benchwarden_task_scored_total).\n# TYPE {name} counter\n{name} {}", tally.score_sum);
        family(
            &mut text,
            "benchwarden_task_scored_total",
            "counter",
            "Tasks whose result file gave a score.",
            &[(String::new(), tally.scored)],
        );
        text
    }
}

/// A metric family: its name (after `benchwarden_`), type, help, and samples (labels, value).
type Family = (&'static str, &'static str, &'static str, Vec<(String, u64)>);

/// Creates refused at a hard limit, by backend and kind.
fn refused_family(tally: &Tally) -> Family {
    let refused = tally
        .refused
        .iter()
        .map(|(kind, count)| (labels(&[("backend", kind.service().as_str()), ("kind", kind.as_str())]), *count))
        .collect();
    ("creates_refused_total", "counter", "Creates refused at a hard limit (limits.hard).", refused)
}

/// The disk families: bytes freed (always both samples, so a rate is 0, not absent) and images by fate.
fn disk_families(tally: &Tally) -> [Family; 2] {
    let reclaimed = [DiskUse::Images, DiskUse::BuildCache]
        .into_iter()
        .map(|what| (labels(&[("what", what.as_str())]), tally.reclaimed.get(&what).copied().unwrap_or(0)))
        .collect();
    let images = tally.images.iter().map(|(fate, count)| (labels(&[("fate", fate)]), *count)).collect();
    [
        (
            "disk_reclaimed_bytes_total",
            "counter",
            "Disk the engine freed: removed images (their listed sizes) and build-cache prunes (SpaceReclaimed).",
            reclaimed,
        ),
        ("images_total", "counter", "Images a removal of images considered, by fate.", images),
    ]
}

/// Samples labelled by backend and kind.
fn by_kind(counts: &BTreeMap<(Service, Kind), u64>) -> Vec<(String, u64)> {
    counts
        .iter()
        .map(|((service, kind), count)| (labels(&[("backend", service.as_str()), ("kind", kind.as_str())]), *count))
        .collect()
}

/// `{a="x",b="y"}`, values escaped as the format asks.
fn labels(pairs: &[(&str, &str)]) -> String {
    let escaped: Vec<String> = pairs
        .iter()
        .map(|(name, value)| {
            let value = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{name}=\"{value}\"")
        })
        .collect();
    format!("{{{}}}", escaped.join(","))
}

fn family(text: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(text, "{name}{labels} {value}");
    }
}

fn histogram(text: &mut String, histogram: &Histogram) {
    let name = "benchwarden_teardown_seconds";
    let _ = writeln!(text, "# HELP {name} Time to tear down what one task owned.\n# TYPE {name} histogram");
    for (bound, count) in TEARDOWN_BUCKETS.iter().zip(histogram.buckets) {
        let _ = writeln!(text, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(text, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count);
    let _ = writeln!(text, "{name}_sum {}", histogram.sum);
    let _ = writeln!(text, "{name}_count {}", histogram.count);
}

/// Writes `text` to `path` so that a reader sees the old file or the new
/// one, never half of one: a temporary file beside it, then a rename.
pub(crate) fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory)?;
    let file_name = path.file_name().map(|name| name.to_string_lossy().to_string()).unwrap_or_default();
    let temporary = directory.join(format!(".{file_name}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Call, ResourceFates};
    use crate::resource::ResourceRef;
    use crate::results::{TaskResult, Verdict};

    fn container(id: &str) -> ResourceRef {
        ResourceRef { kind: Kind::Container, id: id.into(), name: String::new() }
    }

    #[test]
    fn events_become_counts_and_a_container_seen_twice_is_created_once() {
        let metrics = Metrics::default();
        let (first, second) = (container("a"), container("b"));
        for resource in [&first, &first, &second] {
            metrics.event(&Event::Created { resource });
        }
        let removed = RemovalOutcome::Removed { attempts: 1 };
        metrics.event(&Event::Removal(RemovalEvent::Outcome { resource: &first, outcome: &removed }));
        let call = Call { what: "list", service: Service::Daytona, kind: None };
        let delay = std::time::Duration::ZERO;
        metrics.event(&Event::Retrying { call, attempt: 1, attempts: 4, error: "reset", delay });
        let mut report = TaskReport::unstarted("t", "t.log".into());
        report.outcome = TaskOutcome::TimedOut;
        report.teardown_seconds = 0.3;
        report.resources =
            ResourceFates { created: 4, removed_by_harness: 3, removed_by_benchwarden: 1, leaked: 0, kept: 2 };
        report.result = Some(TaskResult {
            verdict: Verdict::Unresolved,
            score: Some(0.25),
            trials: 4,
            detail: None,
            path: "results.json".into(),
        });
        metrics.event(&Event::Task(TaskEvent::Finished { report: &report }));
        let text = metrics.render(&Live::from([((Service::Docker, Kind::Container), 1)]));
        assert!(
            text.contains("benchwarden_resources_created_total{backend=\"docker\",kind=\"container\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("benchwarden_resources_removed_total{backend=\"docker\",kind=\"container\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("benchwarden_retries_total{backend=\"daytona\",kind=\"api\"} 1\n"), "{text}");
        assert!(text.contains("benchwarden_tasks_total{outcome=\"timed_out\"} 1\n"), "{text}");
        assert!(text.contains("benchwarden_task_results_total{verdict=\"unresolved\"} 1\n"), "{text}");
        assert!(text.contains("benchwarden_task_resources_total{fate=\"removed_by_harness\"} 3\n"), "{text}");
        assert!(text.contains("benchwarden_task_resources_total{fate=\"kept\"} 2\n"), "{text}");
        assert!(text.contains("benchwarden_task_score_sum 0.25\n"), "{text}");
        assert!(text.contains("benchwarden_task_scored_total 1\n"), "{text}");
        assert!(text.contains("benchwarden_live_resources{backend=\"docker\",kind=\"container\"} 1\n"), "{text}");
        assert!(text.contains("benchwarden_teardown_seconds_bucket{le=\"0.25\"} 0\n"), "{text}");
        assert!(text.contains("benchwarden_teardown_seconds_bucket{le=\"0.5\"} 1\n"), "{text}");
        let sweep_samples = text.lines().filter(|line| line.starts_with("benchwarden_last_sweep_timestamp_seconds"));
        assert_eq!(sweep_samples.count(), 0, "no sweep, no sample\n{text}");
        let figures = metrics.backend_figures();
        assert_eq!(figures["docker"].success_rate, Some(1.0));
        assert_eq!(figures["daytona"].retries, 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("a", "x\"y\\z\n")]), "{a=\"x\\\"y\\\\z\\n\"}");
    }

    #[test]
    fn a_write_replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("benchwarden.prom");
        write_atomically(&path, "first\n").unwrap();
        write_atomically(&path, "second\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    }
}
