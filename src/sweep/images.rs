//! Images that benchwarden runs made, and the build cache: which images may
//! go (never one that was on the engine before its run, one that another
//! live run recorded, or one a container uses), removing them at the end of
//! a run or by `cleanup docker --images`, and pruning the build cache down
//! to a size. What each frees is told as events and kept in the report.
//!
//! `recover` leaves a dead run's images alone on purpose: they are not
//! leaks of a task but disk a later run may reuse, and only the run's own
//! end (with `docker.remove_images`) or `cleanup docker --images` removes them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::backend::docker::DockerBackend;
use crate::backend::images::{EngineImage, ImageRemoved, ImageUser};
use crate::errors::Error;
use crate::events::{DiskUse, Event, Events};
use crate::ledger::{ImageRecord, Ledger, RunRecord};
use crate::owner::{image_owner, owner_is_alive, LabelledOwner, LABEL_IMAGE_RUN};
use crate::resource::{ImageFate, ImageOrigin, LabelSelector, RecordedImage};

/// Which images a removal considers.
#[derive(Debug, Clone)]
pub(crate) struct ImagePolicy<'a> {
    /// The run whose images go, at its end; `None`: every run's
    /// (`cleanup docker --images`), the labelled ones found on the engine too.
    pub(crate) run: Option<&'a str>,
    /// Only images created more than this long ago.
    pub(crate) older_than: Option<Duration>,
    /// Only images with these labels (`cleanup docker --images --label`).
    pub(crate) labels: Vec<LabelSelector>,
    pub(crate) dry_run: bool,
}

/// One image, and every run that recorded (or labelled) it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) image: RecordedImage,
    pub(crate) runs: BTreeSet<String>,
}

/// What happens to one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImageVerdict {
    Take,
    /// Not selected (too young).
    Skip,
    /// Not on the engine any more.
    Gone,
    Keep(String),
}

/// What the removal knows of the engine and the runs, for the verdicts.
pub(crate) struct Scene<'a> {
    pub(crate) engine: &'a BTreeMap<String, EngineImage>,
    pub(crate) users: &'a [ImageUser],
    /// Runs that are alive, the removing run left out.
    pub(crate) live_runs: &'a BTreeSet<String>,
    pub(crate) now: i64,
}

/// The one rule for whether an image may go.
pub(crate) fn verdict(candidate: &Candidate, scene: &Scene<'_>, policy: &ImagePolicy<'_>) -> ImageVerdict {
    let Some(on_engine) = scene.engine.get(&candidate.image.id) else {
        return ImageVerdict::Gone;
    };
    if !policy.labels.iter().all(|selector| selector.matches(&on_engine.labels)) {
        return ImageVerdict::Skip;
    }
    let older_than = policy.older_than;
    if candidate.image.existed_before {
        return ImageVerdict::Keep("it was on the engine before the run".to_string());
    }
    if older_than.is_some_and(|age| on_engine.created > crate::clock::seconds_before(scene.now, age)) {
        return ImageVerdict::Skip;
    }
    if let Some(run) = candidate.runs.iter().find(|run| scene.live_runs.contains(*run)) {
        return ImageVerdict::Keep(format!("run {run}, which is still alive, uses it"));
    }
    match scene.users.iter().find(|user| user.image_id == candidate.image.id) {
        Some(user) => ImageVerdict::Keep(format!("container {} uses it", user.container)),
        None => ImageVerdict::Take,
    }
}

/// One image and what became of it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ImageResult {
    pub(crate) image: RecordedImage,
    #[serde(flatten)]
    pub(crate) fate: ImageFate,
}

/// A build-cache prune, or in a dry run the one that would be.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BuildCachePrune {
    pub(crate) max_bytes: u64,
    /// The engine's `SpaceReclaimed`; `None` in a dry run or when it failed.
    pub(crate) reclaimed_bytes: Option<u64>,
    pub(crate) error: Option<String>,
}

/// What removing images and pruning the build cache did.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct DiskReport {
    pub(crate) images: Vec<ImageResult>,
    pub(crate) build_cache: Option<BuildCachePrune>,
    /// Images removed (their sizes) plus the build cache's `SpaceReclaimed`.
    pub(crate) reclaimed_bytes: u64,
}

impl DiskReport {
    pub(crate) fn count(&self, wanted: fn(&ImageFate) -> bool) -> usize {
        self.images.iter().filter(|result| wanted(&result.fate)).count()
    }

    pub(crate) fn failed(&self) -> usize {
        let prune_failed = self.build_cache.as_ref().is_some_and(|prune| prune.error.is_some());
        self.count(|fate| matches!(fate, ImageFate::Failed { .. })) + usize::from(prune_failed)
    }

    fn add_reclaimed(&mut self) {
        let images: u64 = self
            .images
            .iter()
            .map(|result| match result.fate {
                ImageFate::Removed { bytes } => bytes,
                _ => 0,
            })
            .sum();
        let cache = self.build_cache.as_ref().and_then(|prune| prune.reclaimed_bytes).unwrap_or(0);
        self.reclaimed_bytes = images + cache;
    }
}

/// Removes the images `policy` selects, as [`verdict`] rules, one at a
/// time (the engine deletes images one by one anyway), and marks them
/// removed in the ledger.
pub(crate) async fn remove_images(
    docker: &DockerBackend,
    ledger: &Ledger,
    policy: &ImagePolicy<'_>,
    this_host: &str,
    events: &Events,
) -> Result<DiskReport, Error> {
    let list = |error: crate::backend::docker::DockerError| error.during("list images");
    let engine: BTreeMap<String, EngineImage> =
        docker.list_images(&[], true).await.map_err(list)?.into_iter().map(|image| (image.id.clone(), image)).collect();
    // Found by label: final images only; the legacy builder labels each step's layer too.
    let labelled: BTreeSet<String> = match policy.run {
        Some(_) => BTreeSet::new(),
        None => docker.list_images(&[], false).await.map_err(list)?.into_iter().map(|image| image.id).collect(),
    };
    let users = docker.image_users().await.map_err(|error| error.during("list containers"))?;
    let runs = ledger.runs().await?;
    let candidates = gather(ledger.images(None).await?, &engine, &labelled, policy.run);
    let live_runs = live_runs(&candidates, &runs, &engine, policy.run, this_host);
    let scene = Scene { engine: &engine, users: &users, live_runs: &live_runs, now: crate::clock::now_unix() };
    let mut report = DiskReport::default();
    let mut gone = Vec::new();
    for candidate in candidates {
        let size = engine.get(&candidate.image.id).map(|image| image.size).unwrap_or(0);
        let fate = match verdict(&candidate, &scene, policy) {
            ImageVerdict::Skip => continue,
            ImageVerdict::Gone => ImageFate::AlreadyGone,
            ImageVerdict::Keep(reason) => ImageFate::Kept { reason },
            ImageVerdict::Take if policy.dry_run => ImageFate::WouldRemove { bytes: size },
            ImageVerdict::Take => remove_one(docker, &candidate.image, size).await,
        };
        if matches!(fate, ImageFate::Removed { .. } | ImageFate::AlreadyGone) {
            gone.push(candidate.image.id.clone());
        }
        events.emit(Event::Image { image: &candidate.image, fate: &fate });
        report.images.push(ImageResult { image: candidate.image, fate });
    }
    if !policy.dry_run {
        ledger.images_removed(gone).await?;
    }
    report.add_reclaimed();
    if report.reclaimed_bytes > 0 {
        events.emit(Event::DiskReclaimed { what: DiskUse::Images, bytes: report.reclaimed_bytes });
    }
    Ok(report)
}

async fn remove_one(docker: &DockerBackend, image: &RecordedImage, size: u64) -> ImageFate {
    match docker.remove_image(&image.id, &image.tags).await {
        Ok(ImageRemoved::Deleted) => ImageFate::Removed { bytes: size },
        Ok(ImageRemoved::Gone) => ImageFate::AlreadyGone,
        // In use after all (a container made since we looked, a child image): the engine keeps it.
        Err(error) if error.status == Some(409) => ImageFate::Kept { reason: format!("the engine keeps it: {error}") },
        Err(error) => ImageFate::Failed { error: error.to_string() },
    }
}

/// The candidates: the ledger's images (of `run`, or of every run), each
/// once with every run that recorded it; and without `run`, the images on
/// the engine that carry benchwarden's owner labels but no ledger row (a
/// lost ledger, another state directory).
pub(crate) fn gather(
    records: Vec<ImageRecord>,
    engine: &BTreeMap<String, EngineImage>,
    final_images: &BTreeSet<String>,
    run: Option<&str>,
) -> Vec<Candidate> {
    let mut by_id: BTreeMap<String, Candidate> = BTreeMap::new();
    let mut wanted = BTreeSet::new();
    for record in records {
        if run.is_none_or(|run| run == record.run_id) {
            wanted.insert(record.image.id.clone());
        }
        let entry = by_id
            .entry(record.image.id.clone())
            .or_insert_with(|| Candidate { image: record.image.clone(), runs: BTreeSet::new() });
        // Kept if any run found it already there; only the removing run's own record counts at its end.
        if run.is_none_or(|run| run == record.run_id) {
            entry.image.existed_before |= record.image.existed_before;
        }
        for tag in record.image.tags {
            if !entry.image.tags.contains(&tag) {
                entry.image.tags.push(tag);
            }
        }
        entry.runs.insert(record.run_id);
    }
    if run.is_none() {
        for image in engine.values().filter(|image| final_images.contains(&image.id)) {
            let Some(owner) = image.labels.get(LABEL_IMAGE_RUN) else { continue };
            wanted.insert(image.id.clone());
            let recorded = RecordedImage {
                id: image.id.clone(),
                tags: image.tags.clone(),
                origin: ImageOrigin::Built,
                existed_before: false,
            };
            by_id.entry(image.id.clone()).or_insert_with(|| Candidate { image: recorded, runs: BTreeSet::new() });
            by_id.get_mut(&image.id).map(|candidate| candidate.runs.insert(owner.clone()));
        }
    }
    by_id.into_values().filter(|candidate| wanted.contains(&candidate.image.id)).collect()
}

/// The runs among the candidates' that are alive, as the ledger (or, for a
/// run it does not know, the image's labels) says; the removing run left out.
fn live_runs(
    candidates: &[Candidate],
    runs: &[RunRecord],
    engine: &BTreeMap<String, EngineImage>,
    removing: Option<&str>,
    this_host: &str,
) -> BTreeSet<String> {
    let mut live = BTreeSet::new();
    for candidate in candidates {
        let labels = engine.get(&candidate.image.id).map(|image| image.labels.clone()).unwrap_or_default();
        let labelled = image_owner(&labels);
        for run in candidate.runs.iter().filter(|run| Some(run.as_str()) != removing) {
            let owner = match &labelled {
                Some(owner) if &owner.run_id == run => owner.clone(),
                _ => LabelledOwner { run_id: run.clone(), task_id: None, host: None, pid: None },
            };
            if owner_is_alive(&owner, runs, this_host) {
                live.insert(run.clone());
            }
        }
    }
    live
}

/// Prunes the build cache down to `max_bytes`; a dry run only says it would.
pub(crate) async fn prune_build_cache(
    docker: &DockerBackend,
    max_bytes: u64,
    dry_run: bool,
    events: &Events,
) -> BuildCachePrune {
    if dry_run {
        return BuildCachePrune { max_bytes, reclaimed_bytes: None, error: None };
    }
    match docker.prune_build_cache(max_bytes).await {
        Ok(bytes) => {
            events.emit(Event::DiskReclaimed { what: DiskUse::BuildCache, bytes });
            BuildCachePrune { max_bytes, reclaimed_bytes: Some(bytes), error: None }
        }
        Err(error) => BuildCachePrune { max_bytes, reclaimed_bytes: None, error: Some(error.to_string()) },
    }
}

/// Removes images and prunes the build cache, as `cleanup` asks: images
/// when `images` is set, the build cache when `build_cache_max` is.
pub(crate) async fn clean_disk(
    docker: &DockerBackend,
    ledger: &Ledger,
    images: Option<&ImagePolicy<'_>>,
    build_cache_max: Option<u64>,
    dry_run: bool,
    this_host: &str,
    events: &Events,
) -> Result<DiskReport, Error> {
    let mut report = match images {
        Some(policy) => remove_images(docker, ledger, policy, this_host, events).await?,
        None => DiskReport::default(),
    };
    if let Some(max_bytes) = build_cache_max {
        let dry_run = images.map(|policy| policy.dry_run).unwrap_or(dry_run);
        report.build_cache = Some(prune_build_cache(docker, max_bytes, dry_run, events).await);
        report.add_reclaimed();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, existed_before: bool) -> RecordedImage {
        RecordedImage { id: id.to_string(), tags: vec![format!("{id}:1")], origin: ImageOrigin::Built, existed_before }
    }

    fn record(run: &str, id: &str, existed_before: bool) -> ImageRecord {
        ImageRecord { image: image(id, existed_before), run_id: run.to_string(), task_id: "t".into(), recorded_at: 0 }
    }

    fn engine(ids: &[(&str, i64)]) -> BTreeMap<String, EngineImage> {
        ids.iter()
            .map(|(id, created)| {
                let image = EngineImage {
                    id: id.to_string(),
                    tags: Vec::new(),
                    created: *created,
                    size: 10,
                    labels: BTreeMap::new(),
                };
                (id.to_string(), image)
            })
            .collect()
    }

    #[test]
    fn an_image_goes_unless_it_was_there_before_or_someone_else_uses_it() {
        let engine = engine(&[("a", 100), ("b", 100), ("c", 100), ("d", 100), ("e", 990)]);
        let users = [ImageUser { image_id: "d".into(), container: "web".into(), labels: BTreeMap::new() }];
        let live = BTreeSet::from(["other".to_string()]);
        let scene = Scene { engine: &engine, users: &users, live_runs: &live, now: 1000 };
        let candidate = |id: &str, existed_before, runs: &[&str]| Candidate {
            image: image(id, existed_before),
            runs: runs.iter().map(ToString::to_string).collect(),
        };
        let any = ImagePolicy { run: Some("mine"), older_than: None, labels: Vec::new(), dry_run: false };
        assert_eq!(verdict(&candidate("a", false, &["mine"]), &scene, &any), ImageVerdict::Take);
        assert!(
            matches!(verdict(&candidate("b", true, &["mine"]), &scene, &any), ImageVerdict::Keep(why) if why.contains("before"))
        );
        assert!(
            matches!(verdict(&candidate("c", false, &["mine", "other"]), &scene, &any), ImageVerdict::Keep(why) if why.contains("other"))
        );
        assert!(
            matches!(verdict(&candidate("d", false, &["mine"]), &scene, &any), ImageVerdict::Keep(why) if why.contains("web"))
        );
        let old = ImagePolicy { older_than: Some(Duration::from_secs(60)), ..any.clone() };
        assert_eq!(verdict(&candidate("e", false, &["mine"]), &scene, &old), ImageVerdict::Skip, "too young");
        assert_eq!(verdict(&candidate("a", false, &["mine"]), &scene, &old), ImageVerdict::Take);
        assert_eq!(verdict(&candidate("z", false, &["mine"]), &scene, &any), ImageVerdict::Gone);
        let labelled = ImagePolicy { labels: vec![LabelSelector::parse("team=x").unwrap()], ..any.clone() };
        assert_eq!(verdict(&candidate("a", false, &["mine"]), &scene, &labelled), ImageVerdict::Skip);
    }

    #[test]
    fn candidates_gather_every_run_that_recorded_an_image() {
        let records = vec![record("r1", "a", false), record("r2", "a", true), record("r2", "b", false)];
        let at_end_of_r1 = gather(records.clone(), &BTreeMap::new(), &BTreeSet::new(), Some("r1"));
        assert_eq!(at_end_of_r1.len(), 1);
        assert_eq!(at_end_of_r1[0].runs, BTreeSet::from(["r1".to_string(), "r2".to_string()]));
        assert!(!at_end_of_r1[0].image.existed_before, "r1 made it; r2 found it there");
        let mut labelled = engine(&[("c", 0)]);
        labelled.get_mut("c").unwrap().labels.insert(LABEL_IMAGE_RUN.to_string(), "r3".to_string());
        let mut layer = engine(&[("d", 0)]).remove("d").unwrap();
        layer.labels.insert(LABEL_IMAGE_RUN.to_string(), "r3".to_string());
        labelled.insert("d".to_string(), layer);
        let everything = gather(records, &labelled, &BTreeSet::from(["c".to_string()]), None);
        let ids: Vec<&str> = everything.iter().map(|candidate| candidate.image.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(everything[0].image.existed_before, "a cleanup keeps what any run found already there");
        assert_eq!(everything[2].runs, BTreeSet::from(["r3".to_string()]));
    }
}
