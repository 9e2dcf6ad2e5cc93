//! Retention: which finished runs the ledger may forget (`prunable`),
//! forgetting them (`Ledger::forget_runs`), and giving the file's free pages
//! back once they are more than half of it (`Ledger::vacuum_if_sparse`).
//! The run directories and socket directories that go with a run are the
//! caller's: this module only knows the database.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection};
use serde::Serialize;

use super::{ImageRecord, Ledger, ResourceRecord, RunRecord};
use crate::clock::seconds_before;
use crate::errors::Error;

/// Whether a run may be forgotten: it finished (ended) at least `retention`
/// before `now`, and owns nothing the ledger still counts (`owners`: a
/// resource kept, pending or leaked is unreleased; an image not yet removed
/// is still recorded). A running or orphaned run never ended.
pub(crate) fn is_prunable(run: &RunRecord, owners: &BTreeSet<&str>, now: i64, retention: Duration) -> bool {
    let cutoff = seconds_before(now, retention);
    run.ended_at.is_some_and(|ended| ended <= cutoff) && !owners.contains(run.id.as_str())
}

/// The runs that may be forgotten (by [`is_prunable`]), in the ledger's
/// order: `unreleased` and `images` are what the ledger still records.
pub(crate) fn prunable<'a>(
    runs: &'a [RunRecord],
    unreleased: &[ResourceRecord],
    images: &[ImageRecord],
    now: i64,
    retention: Duration,
) -> Vec<&'a RunRecord> {
    let resource_owners = unreleased.iter().map(|record| record.run_id.as_str());
    let owners: BTreeSet<&str> = resource_owners.chain(images.iter().map(|image| image.run_id.as_str())).collect();
    runs.iter().filter(|run| is_prunable(run, &owners, now, retention)).collect()
}

/// Whether a run id can name its directory under `runs/`: one plain path
/// component. Ids come from this program, but a run adopted from labels
/// (`recover --from-labels`) has the id a label gave it, and `..` there must
/// never make a prune remove anything outside `runs/`.
pub(crate) fn is_directory_name(run_id: &str) -> bool {
    let mut components = Path::new(run_id).components();
    matches!((components.next(), components.next()), (Some(Component::Normal(_)), None)) && !run_id.contains('/')
}

/// Whether the file is worth vacuuming: more than half of its pages are free.
pub(crate) fn should_vacuum(page_count: i64, free_pages: i64) -> bool {
    page_count > 0 && free_pages * 2 > page_count
}

/// What a prune did (in a dry run: would do), for `prune --json` and its summary.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PruneReport {
    pub(crate) dry_run: bool,
    pub(crate) retention_seconds: u64,
    /// The runs forgotten, oldest first.
    pub(crate) runs: Vec<String>,
    /// Their directories under `runs/`, removed.
    pub(crate) run_directories: Vec<PathBuf>,
    /// Runs left in the ledger because their directory could not be removed, with why.
    pub(crate) kept: Vec<(String, String)>,
    /// Socket directories of runs no longer running, removed.
    pub(crate) socket_directories: Vec<PathBuf>,
    /// The ledger's size around its vacuum; `None` when it was not worth one.
    pub(crate) vacuum: Option<Vacuum>,
}

/// The ledger file's size around a vacuum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Vacuum {
    pub(crate) bytes_before: u64,
    pub(crate) bytes_after: u64,
}

/// The database's size in bytes, and how many of its pages are free.
fn pages(connection: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    let read = |pragma: &str| connection.query_row(&format!("SELECT * FROM pragma_{pragma}"), [], |row| row.get(0));
    Ok((read("page_count")?, read("freelist_count")?, read("page_size")?))
}

impl Ledger {
    /// Forgets finished runs: their rows in `tasks`, `claims`, `resources`,
    /// `images` (all removed) and `runs`. A run that has not ended, or that
    /// by now owns an unreleased resource or an image not yet removed, is
    /// kept (checked in the same transaction): `cleanup docker --images`
    /// needs to know that a run made an image still on the engine. Returns
    /// the ids of the runs forgotten.
    pub(crate) async fn forget_runs(&self, run_ids: Vec<String>) -> Result<Vec<String>, Error> {
        self.on_blocking_pool(move |connection| {
            let transaction = connection.transaction()?;
            let mut forgotten = Vec::new();
            for run_id in &run_ids {
                let still_prunable: bool = transaction.query_row(
                    "SELECT EXISTS (SELECT 1 FROM runs WHERE id = ?1 AND ended_at IS NOT NULL)
                     AND NOT EXISTS (SELECT 1 FROM resources WHERE run_id = ?1 AND released_at IS NULL)
                     AND NOT EXISTS (SELECT 1 FROM images WHERE run_id = ?1 AND removed_at IS NULL)",
                    params![run_id],
                    |row| row.get(0),
                )?;
                if !still_prunable {
                    continue;
                }
                // The rows that refer to the run first: the schema's foreign keys are enforced.
                for table in ["tasks", "claims", "resources", "images"] {
                    transaction.execute(&format!("DELETE FROM {table} WHERE run_id = ?1"), params![run_id])?;
                }
                transaction.execute("DELETE FROM runs WHERE id = ?1", params![run_id])?;
                forgotten.push(run_id.clone());
            }
            transaction.commit()?;
            Ok(forgotten)
        })
        .await
    }

    /// Vacuums the file when more than half of it is free pages (after a
    /// prune), and folds the WAL back so the file on disk shrinks; `None`
    /// when it was not worth it. Another process reading the ledger at that
    /// moment only delays the fold to a later checkpoint.
    pub(crate) async fn vacuum_if_sparse(&self) -> Result<Option<Vacuum>, Error> {
        self.on_blocking_pool(|connection| {
            let (page_count, free_pages, page_size) = pages(connection)?;
            if !should_vacuum(page_count, free_pages) {
                return Ok(None);
            }
            connection.execute_batch("VACUUM")?;
            // Busy readers only make the checkpoint partial: the WAL is folded back later.
            let _ = connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            let (pages_after, _, _) = pages(connection)?;
            let bytes = |pages: i64| (pages.max(0) as u64) * (page_size.max(0) as u64);
            Ok(Some(Vacuum { bytes_before: bytes(page_count), bytes_after: bytes(pages_after) }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Kind, ResourceRef};

    const DAY: i64 = 86_400;

    fn run(id: &str, ended_at: Option<i64>) -> RunRecord {
        RunRecord {
            id: id.to_string(),
            pid: 1,
            start_time: None,
            host: "here".to_string(),
            benchmark: "b".to_string(),
            started_at: ended_at.unwrap_or(0) - 60,
            ended_at,
            outcome: ended_at.map(|_| "passed".to_string()),
        }
    }

    fn owned_by(run_id: &str, kept: bool) -> ResourceRecord {
        ResourceRecord {
            resource: ResourceRef { kind: Kind::Container, id: format!("c-{run_id}"), name: String::new() },
            run_id: run_id.to_string(),
            task_id: "t".to_string(),
            created_at: 0,
            released_at: None,
            attempts: 0,
            last_error: None,
            kept_at: kept.then_some(1),
            endpoint: None,
        }
    }

    #[test]
    fn only_runs_finished_longer_ago_than_the_retention_and_owning_nothing_go() {
        let now = 100 * DAY;
        let thirty_days = Duration::from_secs(30 * DAY as u64);
        let runs = [
            run("old", Some(now - 31 * DAY)),
            run("exactly", Some(now - 30 * DAY)),
            run("recent", Some(now - 29 * DAY)),
            run("never-ended", None),
            run("old-keeps", Some(now - 40 * DAY)),
            run("old-leaked", Some(now - 40 * DAY)),
        ];
        let unreleased = [owned_by("old-keeps", true), owned_by("old-leaked", false), owned_by("never-ended", false)];
        let ids: Vec<&str> =
            prunable(&runs, &unreleased, &[], now, thirty_days).iter().map(|run| run.id.as_str()).collect();
        assert_eq!(ids, ["old", "exactly"]);
        let everything = prunable(&runs, &[], &[], now, Duration::ZERO);
        assert_eq!(everything.len(), 5, "a run that never ended is never pruned");
        assert!(prunable(&runs, &[], &[], now, crate::clock::MAX_DURATION).is_empty(), "100y keeps everything");
        let image = ImageRecord {
            image: crate::resource::RecordedImage {
                id: "sha256:aa".into(),
                tags: vec![],
                origin: crate::resource::ImageOrigin::Built,
                existed_before: false,
            },
            run_id: "old".into(),
            task_id: "t".into(),
            recorded_at: 0,
        };
        let with_image = prunable(&runs, &unreleased, std::slice::from_ref(&image), now, thirty_days);
        assert_eq!(with_image.iter().map(|run| run.id.as_str()).collect::<Vec<_>>(), ["exactly"]);
    }

    #[test]
    fn a_run_id_names_a_directory_only_as_one_plain_component() {
        assert!(is_directory_name("20261130-1016-k3f9"));
        assert!(is_directory_name("cleanup-20261130-1016-k3f9"));
        for bad in ["", ".", "..", "../x", "a/b", "/abs", "a/", "./a"] {
            assert!(!is_directory_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_file_is_vacuumed_once_more_than_half_of_it_is_free() {
        assert!(!should_vacuum(0, 0));
        assert!(!should_vacuum(100, 50));
        assert!(should_vacuum(100, 51));
        assert!(should_vacuum(3, 2));
    }

    #[tokio::test]
    async fn forgetting_runs_keeps_owners_and_unremoved_images_and_a_vacuum_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let padding = "x".repeat(4000);
        for index in 0..300 {
            let id = format!("r{index}");
            let mut record = run(&id, Some(1));
            record.benchmark = padding.clone();
            ledger.start_run(record).await.unwrap();
            ledger.end_run(&id, "passed").await.unwrap();
            let container = ResourceRef { kind: Kind::Container, id: format!("c{index}"), name: String::new() };
            ledger.record_resources(&id, "t", vec![container.clone()]).await.unwrap();
            if index != 7 {
                ledger.record_outcomes(vec![(container, 1, None)]).await.unwrap();
            }
        }
        let image = crate::resource::RecordedImage {
            id: "sha256:aa".into(),
            tags: vec![],
            origin: crate::resource::ImageOrigin::Built,
            existed_before: false,
        };
        ledger.record_image("r3", "t", image.clone()).await.unwrap();
        ledger
            .record_image("r4", "t", crate::resource::RecordedImage { id: "sha256:bb".into(), ..image })
            .await
            .unwrap();
        ledger.images_removed(vec!["sha256:bb".into()]).await.unwrap();
        ledger.record_claims("r5", "t", &[]).await.unwrap();
        let ids: Vec<String> = (0..300).map(|index| format!("r{index}")).collect();
        let forgotten = ledger.forget_runs(ids).await.unwrap();
        assert_eq!(forgotten.len(), 298, "r7 still owns c7, r3 an image still on the engine");
        let runs = ledger.runs().await.unwrap();
        assert_eq!(runs.iter().map(|run| run.id.as_str()).collect::<Vec<_>>(), ["r3", "r7"]);
        assert_eq!(ledger.images(None).await.unwrap().len(), 1);
        let vacuum = ledger.vacuum_if_sparse().await.unwrap().expect("mostly free pages");
        assert!(vacuum.bytes_after * 4 < vacuum.bytes_before, "{vacuum:?}");
        assert_eq!(ledger.vacuum_if_sparse().await.unwrap(), None, "nothing more to give back");
        let on_disk = std::fs::metadata(dir.path().join("ledger.sqlite")).unwrap().len();
        assert_eq!(on_disk, vacuum.bytes_after, "the WAL was folded back");
    }
}
