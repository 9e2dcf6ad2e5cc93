//! The durable ledger: an SQLite database in the state directory holding
//! runs and the resources they own. A resource row is committed before
//! anything depends on it, so a `kill -9` of benchwarden loses nothing.
//!
//! rusqlite is blocking: every call runs on tokio's blocking pool, one
//! connection behind a mutex. WAL mode and a busy timeout let several runs
//! on one host share the file.
//!
//! A disk that fills while a run goes on does not cost rows: the `reserve`
//! is given back and the write tried again.
//!
//! The schema has a version, SQLite's `user_version`: a ledger of an
//! earlier release (version 0) is upgraded in place when it is opened (the
//! columns added since, `resources.kept_at` and `resources.endpoint`), and
//! one of a newer release is refused before anything is written to it.
//!
//! Retention (`ledger/retention.rs`): which finished runs may be forgotten,
//! forgetting them, and vacuuming the file once it is mostly free pages.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection};
use serde::Serialize;

use crate::clock::now_unix;
use crate::config::Selector;
use crate::errors::Error;
use crate::host;
use crate::resource::{ImageOrigin, Kind, RecordedImage, ResourceRef};

pub(crate) mod reserve;
pub(crate) mod retention;

/// The schema version this release writes (`PRAGMA user_version`). 0: the
/// releases before the version was kept, upgraded in place; anything above
/// [`SCHEMA_VERSION`] was made by a newer release and is never written.
pub(crate) const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    pid         INTEGER NOT NULL,
    start_time  INTEGER,
    host        TEXT NOT NULL,
    benchmark   TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    outcome     TEXT
);
CREATE TABLE IF NOT EXISTS claims (
    run_id      TEXT NOT NULL REFERENCES runs(id),
    task_id     TEXT NOT NULL,
    selector    TEXT NOT NULL,
    PRIMARY KEY (run_id, task_id, selector)
);
CREATE TABLE IF NOT EXISTS resources (
    backend     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    run_id      TEXT NOT NULL REFERENCES runs(id),
    task_id     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    released_at INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    kept_at     INTEGER,
    endpoint    TEXT,
    PRIMARY KEY (backend, kind, id)
);
CREATE INDEX IF NOT EXISTS resources_by_run ON resources (run_id, task_id);
CREATE TABLE IF NOT EXISTS tasks (
    run_id      TEXT NOT NULL REFERENCES runs(id),
    task_id     TEXT NOT NULL,
    PRIMARY KEY (run_id, task_id)
);
";

/// Images live in a table of their own, not in `resources`: they are not
/// torn down with their task (so teardown, `recover` and the leak count never
/// see them), and one image id may be recorded by several runs (a build
/// fully served from cache), each of which must know it used it. `tags` is
/// the task's tags, one per line.
const IMAGES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    run_id         TEXT NOT NULL REFERENCES runs(id),
    task_id        TEXT NOT NULL,
    id             TEXT NOT NULL,
    tags           TEXT NOT NULL,
    origin         TEXT NOT NULL,
    existed_before INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL,
    removed_at     INTEGER,
    PRIMARY KEY (run_id, id)
);
CREATE INDEX IF NOT EXISTS images_by_id ON images (id);
";

#[derive(Clone)]
pub(crate) struct Ledger {
    connection: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// A run as the ledger knows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunRecord {
    pub(crate) id: String,
    pub(crate) pid: u32,
    pub(crate) start_time: Option<u64>,
    pub(crate) host: String,
    pub(crate) benchmark: String,
    pub(crate) started_at: i64,
    pub(crate) ended_at: Option<i64>,
    pub(crate) outcome: Option<String>,
}

impl RunRecord {
    /// Alive: same host and its process (pid and start time) still runs.
    /// Another host's run cannot be judged from here and counts as alive.
    pub(crate) fn is_alive(&self, this_host: &str) -> bool {
        if self.host != this_host {
            return true;
        }
        host::process_is_alive(self.pid, self.start_time)
    }

    /// Orphaned: on this host, its process is gone, and it never finished.
    pub(crate) fn is_orphaned(&self, this_host: &str) -> bool {
        self.host == this_host && !self.is_alive(this_host) && self.ended_at.is_none()
    }
}

/// Removals over the ledger's whole history.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct History {
    /// Per backend: resources released, and resources whose removal failed and that are still owned.
    pub(crate) removals: Vec<(String, (u64, u64))>,
    /// When the oldest resource still owned was recorded (Unix seconds).
    pub(crate) oldest_owned: Option<i64>,
}

/// `YYYYMMDD-HHMM-xxxx` in UTC: sortable, and unique enough with four random characters.
pub(crate) fn new_run_id() -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // "2026-11-29T23:04:05Z"
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    let alphabet = b"abcdefghijkmnpqrstuvwxyz23456789";
    let suffix: String = (0..4).map(|_| alphabet[fastrand::usize(..alphabet.len())] as char).collect();
    format!("{}-{}-{suffix}", &digits[..8], &digits[8..12])
}

/// A resource row.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ResourceRecord {
    pub(crate) resource: ResourceRef,
    pub(crate) run_id: String,
    pub(crate) task_id: String,
    pub(crate) created_at: i64,
    pub(crate) released_at: Option<i64>,
    pub(crate) attempts: u32,
    pub(crate) last_error: Option<String>,
    /// When `run --keep-failed` kept it in place: only `recover
    /// --include-kept`, or a pre-run sweep once it is older than the
    /// cleanup age, takes it.
    pub(crate) kept_at: Option<i64>,
    /// The Docker host it lives on (`DOCKER_HOST`'s form), when a claim
    /// named another than the run's own engine; `None`: the run's engine.
    pub(crate) endpoint: Option<String>,
}

/// Columns added to `resources` after the first release, with their types.
const ADDED_COLUMNS: [(&str, &str); 2] = [("kept_at", "INTEGER"), ("endpoint", "TEXT")];

/// Makes the tables, adds the columns an older ledger lacks, and records
/// the schema version. The checks and the changes are one immediate
/// transaction, so two processes opening the same old ledger do not both add
/// a column, and a newer release that wrote the file meanwhile is still seen.
fn upgrade(connection: &mut Connection, path: &Path) -> Result<(), Error> {
    let sql = |error: rusqlite::Error| Error::Ledger { path: path.to_path_buf(), source: error.into() };
    let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql)?;
    let version = check_version(&transaction, path)?;
    transaction.execute_batch(SCHEMA).and_then(|()| transaction.execute_batch(IMAGES_SCHEMA)).map_err(sql)?;
    add_missing_columns(&transaction).map_err(sql)?;
    if version < SCHEMA_VERSION {
        transaction.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sql)?;
    }
    transaction.commit().map_err(sql)
}

/// The ledger's schema version; a ledger a newer release made (its
/// `user_version` is above ours) is refused.
fn check_version(connection: &Connection, path: &Path) -> Result<i64, Error> {
    let version: i64 = connection
        .query_row("SELECT user_version FROM pragma_user_version", [], |row| row.get(0))
        .map_err(|error| not_a_database(error, path))?;
    match version > SCHEMA_VERSION {
        true => Err(Error::NewerLedger { path: path.to_path_buf(), version, known: SCHEMA_VERSION }),
        false => Ok(version),
    }
}

/// Adds the columns an older ledger lacks, inside the caller's transaction.
fn add_missing_columns(transaction: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let present: Vec<String> = {
        let mut statement = transaction.prepare("SELECT name FROM pragma_table_info('resources')")?;
        let names = statement.query_map([], |row| row.get(0))?;
        names.collect::<rusqlite::Result<_>>()?
    };
    for (column, kind) in ADDED_COLUMNS {
        if !present.iter().any(|name| name == column) {
            transaction.execute_batch(&format!("ALTER TABLE resources ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

impl Ledger {
    /// Opens (creating if needed) `<state_dir>/ledger.sqlite`.
    pub(crate) fn open(state_dir: &Path) -> Result<Self, Error> {
        let path = state_dir.join("ledger.sqlite");
        let ledger_error =
            |source: Box<dyn std::error::Error + Send + Sync>| Error::Ledger { path: path.clone(), source };
        std::fs::create_dir_all(state_dir)
            .map_err(|error| ledger_error(format!("cannot create {}: {error}", state_dir.display()).into()))?;
        let mut connection = Connection::open(&path).map_err(|error| ledger_error(error.into()))?;
        connection.busy_timeout(Duration::from_secs(30)).map_err(|error| ledger_error(error.into()))?;
        // Before anything is written to it (the journal mode too): a file with tables that are not a
        // ledger's, no database at all, or a newer release's ledger, is left as it is.
        check_shape(&connection, &path)?;
        check_version(&connection, &path)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| connection.pragma_update(None, "synchronous", "NORMAL"))
            // Closing the last connection would checkpoint the WAL, two fsyncs on every command's
            // exit. The WAL is as durable against a crash of ours, and SQLite's automatic
            // checkpoints still fold it back as it grows.
            .and_then(|()| {
                connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).map(drop)
            })
            .map_err(|error| ledger_error(error.into()))?;
        upgrade(&mut connection, &path)?;
        Ok(Ledger { connection: Arc::new(Mutex::new(connection)), path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` with the connection on the blocking pool, since rusqlite
    /// blocks. A full disk gives the reserve back and runs `work` once more.
    async fn on_blocking_pool<T: Send + 'static>(
        &self,
        mut work: impl FnMut(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let connection = Arc::clone(&self.connection);
        let path = self.path.clone();
        let worker_path = path.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            // A poisoned lock means a panic mid-statement; SQLite rolled the statement back.
            let mut guard = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match work(&mut guard) {
                Err(error) if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => {
                    let state_dir = worker_path.parent().unwrap_or(Path::new("."));
                    if !reserve::release(state_dir) {
                        return Err(error);
                    }
                    tracing::warn!(
                        "the disk of {} is full: the ledger gave back its reserve to keep recording; free some \
                         space before the next run",
                        state_dir.display()
                    );
                    work(&mut guard)
                }
                result => result,
            }
        })
        .await;
        match outcome {
            Ok(result) => result.map_err(|error| Error::Ledger { path, source: error.into() }),
            Err(join_error) => {
                Err(Error::Ledger { path, source: format!("ledger worker failed: {join_error}").into() })
            }
        }
    }

    /// Records a run under the id it has; an id already taken is an error.
    /// The program's runs take [`Ledger::start_new_run`], which draws their ids.
    #[cfg(test)]
    pub(crate) async fn start_run(&self, run: RunRecord) -> Result<(), Error> {
        self.on_blocking_pool(move |connection| insert_run(connection, &run, "")).await.map(drop)
    }

    /// Records a new run under a fresh id, `prefix` and a [`new_run_id`],
    /// and returns it. Ids are only unique enough (four random characters a
    /// minute): one that another run on this state directory took in the
    /// same minute is drawn again instead of failing the run.
    pub(crate) async fn start_new_run(&self, prefix: &str, run: RunRecord) -> Result<String, Error> {
        const DRAWS: usize = 16;
        for _ in 0..DRAWS {
            let run = RunRecord { id: format!("{prefix}{}", new_run_id()), ..run.clone() };
            let id = run.id.clone();
            let inserted =
                self.on_blocking_pool(move |connection| insert_run(connection, &run, "ON CONFLICT (id) DO NOTHING"));
            if inserted.await? == 1 {
                return Ok(id);
            }
        }
        let why = format!("the {DRAWS} run ids drawn were all taken already");
        Err(Error::Ledger { path: self.path.clone(), source: why.into() })
    }

    /// Records sandboxes whose deletion a cleanup started but did not see
    /// finish, under a run of their own (`cleanup-…`) that this process
    /// owns: once it exits, the run is orphaned, and `recover` (or the next
    /// cleanup or run) finishes the deletions. Returns the run's id.
    pub(crate) async fn record_pending_cleanup(&self, resources: Vec<ResourceRef>) -> Result<String, Error> {
        let run = RunRecord {
            id: String::new(),
            pid: std::process::id(),
            start_time: host::process_start_time(std::process::id()),
            host: host::host_name(),
            benchmark: "(pending deletions of a cleanup)".to_string(),
            started_at: now_unix(),
            ended_at: None,
            outcome: None,
        };
        let run_id = self.start_new_run("cleanup-", run).await?;
        self.record_resources(&run_id, "cleanup", resources).await?;
        Ok(run_id)
    }

    /// Records a run known only from labels (its ledger was lost), so that
    /// its resources can be recorded and its recovery marked.
    pub(crate) async fn adopt_run(&self, run_id: &str, pid: Option<u32>, host: &str) -> Result<(), Error> {
        let (run_id, host) = (run_id.to_string(), host.to_string());
        self.on_blocking_pool(move |connection| {
            connection.execute(
                "INSERT OR IGNORE INTO runs (id, pid, start_time, host, benchmark, started_at) VALUES (?1, ?2, NULL, ?3, ?4, ?5)",
                params![run_id, pid.unwrap_or(0), host, "(known from labels)", now_unix()],
            )
        })
        .await
        .map(drop)
    }

    pub(crate) async fn end_run(&self, run_id: &str, outcome: &str) -> Result<(), Error> {
        let (run_id, outcome) = (run_id.to_string(), outcome.to_string());
        self.on_blocking_pool(move |connection| {
            connection.execute(
                "UPDATE runs SET ended_at = ?2, outcome = ?3 WHERE id = ?1",
                params![run_id, now_unix(), outcome],
            )
        })
        .await
        .map(drop)
    }

    /// Records a task as started, and the selectors it claims, so `recover`
    /// can find what they matched after a crash and `benchwarden claim` can
    /// tell a task of the run from a typo.
    pub(crate) async fn record_claims(&self, run_id: &str, task_id: &str, selectors: &[Selector]) -> Result<(), Error> {
        let selectors: Vec<String> = selectors.iter().map(ToString::to_string).collect();
        let (run_id, task_id) = (run_id.to_string(), task_id.to_string());
        self.on_blocking_pool(move |connection| {
            let transaction = connection.transaction()?;
            transaction
                .execute("INSERT OR IGNORE INTO tasks (run_id, task_id) VALUES (?1, ?2)", params![run_id, task_id])?;
            for selector in &selectors {
                transaction.execute(
                    "INSERT OR IGNORE INTO claims (run_id, task_id, selector) VALUES (?1, ?2, ?3)",
                    params![run_id, task_id, selector],
                )?;
            }
            transaction.commit()
        })
        .await
    }

    /// The selectors every task of a run claimed; a row a newer version
    /// wrote in a form this one does not know is left to that version.
    pub(crate) async fn claims(&self, run_id: &str) -> Result<Vec<Selector>, Error> {
        let run_id = run_id.to_string();
        let texts: Vec<String> = self
            .on_blocking_pool(move |connection| {
                let mut statement = connection.prepare("SELECT selector FROM claims WHERE run_id = ?1")?;
                let rows = statement.query_map([&run_id], |row| row.get(0))?;
                rows.collect()
            })
            .await?;
        Ok(texts.iter().filter_map(|text| text.parse().ok()).collect())
    }

    /// Records resources as owned by a task. Idempotent: a resource already
    /// recorded keeps its first owner.
    pub(crate) async fn record_resources(
        &self,
        run_id: &str,
        task_id: &str,
        resources: Vec<ResourceRef>,
    ) -> Result<(), Error> {
        if resources.is_empty() {
            return Ok(());
        }
        let (run_id, task_id) = (run_id.to_string(), task_id.to_string());
        self.on_blocking_pool(move |connection| {
            let transaction = connection.transaction()?;
            for resource in &resources {
                // A name learnt later (a listing after a create that gave none) fills the gap.
                let on_conflict =
                    "DO UPDATE SET name = excluded.name WHERE resources.name = '' AND excluded.name != ''";
                insert_resource(&transaction, resource, &run_id, &task_id, None, on_conflict)?;
            }
            transaction.commit()
        })
        .await
    }

    /// The tasks of a run that have started, by name.
    pub(crate) async fn tasks(&self, run_id: &str) -> Result<Vec<String>, Error> {
        let run_id = run_id.to_string();
        self.on_blocking_pool(move |connection| {
            let mut statement = connection.prepare("SELECT task_id FROM tasks WHERE run_id = ?1 ORDER BY task_id")?;
            let rows = statement.query_map([&run_id], |row| row.get(0))?;
            rows.collect()
        })
        .await
    }

    /// Records a resource a task claimed itself (`benchwarden claim`), on
    /// `endpoint` when it is another Docker host than the run's. A resource
    /// already recorded keeps its first owner and host; returns whether this
    /// claim recorded it.
    pub(crate) async fn record_claimed(
        &self,
        run_id: &str,
        task_id: &str,
        resource: ResourceRef,
        endpoint: Option<String>,
    ) -> Result<bool, Error> {
        let (run_id, task_id) = (run_id.to_string(), task_id.to_string());
        self.on_blocking_pool(move |connection| {
            insert_resource(connection, &resource, &run_id, &task_id, endpoint.as_deref(), "DO NOTHING")
        })
        .await
        .map(|inserted| inserted > 0)
    }

    /// Marks what a task still owns as kept (`run --keep-failed`); returns how many rows.
    pub(crate) async fn keep(&self, run_id: &str, task_id: &str) -> Result<usize, Error> {
        let (run_id, task_id) = (run_id.to_string(), task_id.to_string());
        self.on_blocking_pool(move |connection| {
            connection.execute(
                "UPDATE resources SET kept_at = ?3
                 WHERE run_id = ?1 AND task_id = ?2 AND released_at IS NULL AND kept_at IS NULL",
                params![run_id, task_id, now_unix()],
            )
        })
        .await
    }

    /// Marks resources as released (gone), or records a failed attempt.
    pub(crate) async fn record_outcomes(&self, outcomes: Vec<(ResourceRef, u32, Option<String>)>) -> Result<(), Error> {
        self.on_blocking_pool(move |connection| {
            let transaction = connection.transaction()?;
            for (resource, attempts, error) in &outcomes {
                let key = params![resource.kind.backend(), resource.kind.as_str(), resource.id];
                match error {
                    None => transaction.execute(
                        "UPDATE resources SET released_at = ?4, attempts = attempts + ?5, last_error = NULL
                         WHERE backend = ?1 AND kind = ?2 AND id = ?3",
                        params![key[0], key[1], key[2], now_unix(), attempts],
                    )?,
                    Some(error) => transaction.execute(
                        "UPDATE resources SET attempts = attempts + ?4, last_error = ?5
                         WHERE backend = ?1 AND kind = ?2 AND id = ?3",
                        params![key[0], key[1], key[2], attempts, error],
                    )?,
                };
            }
            transaction.commit()
        })
        .await
    }

    /// Resources not yet released, of one run (and one task, if given).
    pub(crate) async fn unreleased(&self, run_id: &str, task_id: Option<&str>) -> Result<Vec<ResourceRecord>, Error> {
        let (run_id, task_id) = (run_id.to_string(), task_id.map(str::to_string));
        self.on_blocking_pool(move |connection| query_unreleased(connection, Some(&run_id), task_id.as_deref())).await
    }

    /// Every unreleased resource, across runs.
    pub(crate) async fn all_unreleased(&self) -> Result<Vec<ResourceRecord>, Error> {
        self.on_blocking_pool(|connection| query_unreleased(connection, None, None)).await
    }

    /// What the whole ledger says of removals: per backend, the resources
    /// released and those whose removal failed and that are still owned;
    /// and when the oldest resource still owned was recorded.
    pub(crate) async fn history(&self) -> Result<History, Error> {
        self.on_blocking_pool(|connection| {
            let mut statement = connection.prepare(
                "SELECT backend, SUM(released_at IS NOT NULL), SUM(released_at IS NULL AND last_error IS NOT NULL)
                 FROM resources GROUP BY backend ORDER BY backend",
            )?;
            let removals = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        (row.get::<_, i64>(1)?.max(0) as u64, row.get::<_, i64>(2)?.max(0) as u64),
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let oldest_owned =
                connection.query_row("SELECT MIN(created_at) FROM resources WHERE released_at IS NULL", [], |row| {
                    row.get::<_, Option<i64>>(0)
                })?;
            Ok(History { removals, oldest_owned })
        })
        .await
    }

    /// Every run, oldest first; runs started in the same second in the order they were recorded.
    pub(crate) async fn runs(&self) -> Result<Vec<RunRecord>, Error> {
        self.on_blocking_pool(|connection| {
            let mut statement = connection.prepare(
                "SELECT id, pid, start_time, host, benchmark, started_at, ended_at, outcome FROM runs
                 ORDER BY started_at, rowid",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(RunRecord {
                    id: row.get(0)?,
                    pid: row.get(1)?,
                    start_time: row.get::<_, Option<i64>>(2)?.map(|time| time as u64),
                    host: row.get(3)?,
                    benchmark: row.get(4)?,
                    started_at: row.get(5)?,
                    ended_at: row.get(6)?,
                    outcome: row.get(7)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

/// An image row: who recorded the image, and when.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ImageRecord {
    pub(crate) image: RecordedImage,
    pub(crate) run_id: String,
    pub(crate) task_id: String,
    pub(crate) recorded_at: i64,
}

/// Images: recorded by the Docker proxy, removed at the end of a run that
/// asks for it, or by `cleanup docker --images`.
impl Ledger {
    /// Records an image a task built, pulled or imported. Recorded again by
    /// the same run, its tags are merged, and it counts as pre-existing only
    /// if every record says so.
    pub(crate) async fn record_image(&self, run_id: &str, task_id: &str, image: RecordedImage) -> Result<(), Error> {
        let (run_id, task_id) = (run_id.to_string(), task_id.to_string());
        self.on_blocking_pool(move |connection| {
            let transaction = connection.transaction()?;
            let known: Option<String> = transaction
                .query_row("SELECT tags FROM images WHERE run_id = ?1 AND id = ?2", params![run_id, image.id], |row| {
                    row.get(0)
                })
                .map(Some)
                .or_else(|error| match error {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    other => Err(other),
                })?;
            let mut tags: Vec<String> = known.iter().flat_map(|text| text.lines().map(str::to_string)).collect();
            for tag in &image.tags {
                if !tags.contains(tag) {
                    tags.push(tag.clone());
                }
            }
            transaction.execute(
                "INSERT INTO images (run_id, task_id, id, tags, origin, existed_before, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (run_id, id) DO UPDATE SET tags = excluded.tags,
                     existed_before = MIN(images.existed_before, excluded.existed_before)",
                params![
                    run_id,
                    task_id,
                    image.id,
                    tags.join("\n"),
                    image.origin.as_str(),
                    image.existed_before,
                    now_unix()
                ],
            )?;
            transaction.commit()
        })
        .await
    }

    /// Images recorded and not yet removed: of one run, or of every run.
    pub(crate) async fn images(&self, run_id: Option<&str>) -> Result<Vec<ImageRecord>, Error> {
        let run_id = run_id.map(str::to_string);
        self.on_blocking_pool(move |connection| {
            let mut statement = connection.prepare(
                "SELECT id, tags, origin, existed_before, run_id, task_id, recorded_at FROM images
                 WHERE removed_at IS NULL AND (?1 IS NULL OR run_id = ?1) ORDER BY recorded_at, id",
            )?;
            let rows = statement.query_map(params![run_id], image_from_row)?;
            Ok(rows.filter_map(Result::ok).flatten().collect())
        })
        .await
    }

    /// Marks images as removed (gone from the engine), for every run that recorded them.
    pub(crate) async fn images_removed(&self, ids: Vec<String>) -> Result<(), Error> {
        self.on_blocking_pool(move |connection| {
            let transaction = connection.transaction()?;
            for id in &ids {
                transaction.execute(
                    "UPDATE images SET removed_at = ?2 WHERE id = ?1 AND removed_at IS NULL",
                    params![id, now_unix()],
                )?;
            }
            transaction.commit()
        })
        .await
    }
}

fn image_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<ImageRecord>> {
    let origin: String = row.get(2)?;
    let Some(origin) = ImageOrigin::parse(&origin) else {
        // An origin written by a newer version: leave it to that version.
        return Ok(None);
    };
    let tags: String = row.get(1)?;
    Ok(Some(ImageRecord {
        image: RecordedImage {
            id: row.get(0)?,
            tags: tags.lines().map(str::to_string).collect(),
            origin,
            existed_before: row.get(3)?,
        },
        run_id: row.get(4)?,
        task_id: row.get(5)?,
        recorded_at: row.get(6)?,
    }))
}

/// Inserts a run's row; `on_conflict` says what an id already there does
/// (nothing: an error). Returns the rows inserted.
fn insert_run(connection: &Connection, run: &RunRecord, on_conflict: &str) -> rusqlite::Result<usize> {
    connection.execute(
        &format!(
            "INSERT INTO runs (id, pid, start_time, host, benchmark, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             {on_conflict}"
        ),
        params![run.id, run.pid, run.start_time.map(|time| time as i64), run.host, run.benchmark, run.started_at],
    )
}

/// Inserts one resource row, owned by `task_id` of `run_id` from now;
/// `on_conflict` says what a row already there for it keeps.
fn insert_resource(
    connection: &Connection,
    resource: &ResourceRef,
    run_id: &str,
    task_id: &str,
    endpoint: Option<&str>,
    on_conflict: &str,
) -> rusqlite::Result<usize> {
    connection.execute(
        &format!(
            "INSERT INTO resources (backend, kind, id, name, run_id, task_id, created_at, endpoint)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (backend, kind, id) {on_conflict}"
        ),
        params![
            resource.kind.backend(),
            resource.kind.as_str(),
            resource.id,
            resource.name,
            run_id,
            task_id,
            now_unix(),
            endpoint
        ],
    )
}

/// A file SQLite cannot read as a database is another program's, or damaged:
/// not a writability problem, and said so.
fn not_a_database(error: rusqlite::Error, path: &Path) -> Error {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            Error::NotALedger { path: path.to_path_buf(), why: "not an SQLite database, or a damaged one".into() }
        }
        _ => Error::Ledger { path: path.to_path_buf(), source: error.into() },
    }
}

/// The tables and columns every version of the ledger has had: a database
/// with tables but without these is another program's.
const REQUIRED_COLUMNS: [(&str, &[&str]); 2] = [
    ("runs", &["id", "pid", "host", "started_at", "ended_at"]),
    ("resources", &["backend", "kind", "id", "run_id", "task_id", "created_at", "released_at"]),
];

/// Refuses a database that has tables but not a ledger's; an empty one (a
/// new ledger) passes, and is made a ledger.
fn check_shape(connection: &Connection, path: &Path) -> Result<(), Error> {
    let read = |sql: &str| -> Result<Vec<String>, Error> {
        connection
            .prepare(sql)
            .and_then(|mut statement| statement.query_map([], |row| row.get(0))?.collect())
            .map_err(|error| not_a_database(error, path))
    };
    if read("SELECT name FROM sqlite_master WHERE type = 'table'")?.is_empty() {
        return Ok(());
    }
    for (table, columns) in REQUIRED_COLUMNS {
        let present = read(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        if let Some(missing) = columns.iter().find(|column| !present.iter().any(|name| name == *column)) {
            let what =
                if present.is_empty() { format!("no table {table}") } else { format!("{table} has no {missing}") };
            return Err(Error::NotALedger {
                path: path.to_path_buf(),
                why: format!("{what}: another program's database"),
            });
        }
    }
    Ok(())
}

/// Unreleased resources, of one run and one task when given, oldest first.
fn query_unreleased(
    connection: &Connection,
    run_id: Option<&str>,
    task_id: Option<&str>,
) -> rusqlite::Result<Vec<ResourceRecord>> {
    let mut statement = connection.prepare(
        "SELECT kind, id, name, run_id, task_id, created_at, released_at, attempts, last_error, kept_at, endpoint
         FROM resources WHERE released_at IS NULL AND (?1 IS NULL OR run_id = ?1) AND (?2 IS NULL OR task_id = ?2)
         ORDER BY run_id, created_at, id",
    )?;
    let rows = statement.query_map(params![run_id, task_id], resource_from_row)?;
    Ok(rows.filter_map(Result::ok).flatten().collect())
}

fn resource_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<ResourceRecord>> {
    let kind: String = row.get(0)?;
    let Some(kind) = Kind::parse(&kind) else {
        // A kind written by a newer version: leave it to that version.
        return Ok(None);
    };
    Ok(Some(ResourceRecord {
        resource: ResourceRef { kind, id: row.get(1)?, name: row.get(2)? },
        run_id: row.get(3)?,
        task_id: row.get(4)?,
        created_at: row.get(5)?,
        released_at: row.get(6)?,
        attempts: row.get(7)?,
        last_error: row.get(8)?,
        kept_at: row.get(9)?,
        endpoint: row.get(10)?,
    }))
}

/// Unreleased resources of a run, read synchronously on a fresh connection:
/// for the moment when benchwarden exits at once and no runtime is left to ask.
pub(crate) fn unreleased_now(path: &Path, run_id: &str) -> rusqlite::Result<Vec<ResourceRecord>> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(2))?;
    query_unreleased(&connection, Some(run_id), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_or_foreign_file_is_refused_and_left_as_it_is() {
        let corrupt = tempfile::tempdir().unwrap();
        std::fs::write(corrupt.path().join("ledger.sqlite"), vec![b'x'; 4096]).unwrap();
        let error = Ledger::open(corrupt.path()).err().unwrap();
        assert!(matches!(error, Error::NotALedger { .. }), "{error}");
        assert_eq!(error.exit_status(), crate::errors::ExitStatus::Usage);

        let foreign = tempfile::tempdir().unwrap();
        let path = foreign.path().join("ledger.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE runs (x INTEGER); INSERT INTO runs VALUES (1);")
            .unwrap();
        let before = std::fs::read(&path).unwrap();
        let error = Ledger::open(foreign.path()).err().unwrap();
        assert!(error.to_string().contains("runs has no id"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "the foreign file was changed");

        let ours = tempfile::tempdir().unwrap();
        Ledger::open(ours.path()).unwrap();
        Ledger::open(ours.path()).expect("a ledger reopens");
    }

    fn run(id: &str) -> RunRecord {
        RunRecord {
            id: id.to_string(),
            pid: std::process::id(),
            start_time: host::process_start_time(std::process::id()),
            host: host::host_name(),
            benchmark: "test".to_string(),
            started_at: now_unix(),
            ended_at: None,
            outcome: None,
        }
    }

    fn container(id: &str) -> ResourceRef {
        ResourceRef { kind: Kind::Container, id: id.to_string(), name: format!("name-{id}") }
    }

    #[test]
    fn run_ids_sort_by_time_and_read_like_20261129_2304_k3f9() {
        let id = new_run_id();
        assert_eq!(id.len(), "20261129-2304-k3f9".len(), "{id}");
        assert_eq!(&id[8..9], "-");
        assert_eq!(&id[13..14], "-");
        assert_ne!(new_run_id(), new_run_id());
    }

    #[tokio::test]
    async fn a_new_run_draws_another_id_when_its_first_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        // The same seed draws the same id: the second run's first draw is taken.
        fastrand::seed(7);
        let first = ledger.start_new_run("", run("")).await.unwrap();
        fastrand::seed(7);
        let second = ledger.start_new_run("", run("")).await.unwrap();
        assert_ne!(first, second);
        assert!(ledger.start_run(run(&first)).await.is_err(), "an id is taken once");
        let cleanup = ledger.start_new_run("cleanup-", run("")).await.unwrap();
        assert!(cleanup.starts_with("cleanup-") && cleanup.len() == "cleanup-20261129-2304-k3f9".len(), "{cleanup}");
        assert_eq!(ledger.runs().await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn resources_are_recorded_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.start_run(run("r1")).await.unwrap();
        ledger.record_resources("r1", "a", vec![container("c1"), container("c2")]).await.unwrap();
        ledger.record_resources("r1", "b", vec![container("c3"), container("c1")]).await.unwrap();
        let unreleased = ledger.unreleased("r1", Some("a")).await.unwrap();
        assert_eq!(unreleased.len(), 2, "c1 keeps its first owner");
        ledger
            .record_outcomes(vec![(container("c1"), 1, None), (container("c2"), 4, Some("boom".into()))])
            .await
            .unwrap();
        let left = ledger.unreleased("r1", None).await.unwrap();
        let ids: Vec<&str> = left.iter().map(|record| record.resource.id.as_str()).collect();
        assert_eq!(ids, ["c2", "c3"]);
        assert_eq!(left[0].attempts, 4);
        assert_eq!(left[0].last_error.as_deref(), Some("boom"));
        let history = ledger.history().await.unwrap();
        assert_eq!(history.removals, [("docker".to_string(), (1, 1))], "c1 released; c2 failed; c3 never tried");
        assert!(history.oldest_owned.is_some());
    }

    #[tokio::test]
    async fn images_are_recorded_per_run_with_their_tags_merged() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.start_run(run("r1")).await.unwrap();
        ledger.start_run(run("r2")).await.unwrap();
        let image = |tags: &[&str], existed_before| RecordedImage {
            id: "sha256:aa".to_string(),
            tags: tags.iter().map(ToString::to_string).collect(),
            origin: ImageOrigin::Pulled,
            existed_before,
        };
        ledger.record_image("r1", "a", image(&["x:1"], false)).await.unwrap();
        ledger.record_image("r1", "b", image(&["x:1", "x:2"], true)).await.unwrap();
        ledger.record_image("r2", "a", image(&[], true)).await.unwrap();
        let of_r1 = ledger.images(Some("r1")).await.unwrap();
        assert_eq!(of_r1.len(), 1);
        assert_eq!(of_r1[0].image.tags, ["x:1", "x:2"]);
        assert!(!of_r1[0].image.existed_before, "the first record found it new");
        assert_eq!(of_r1[0].task_id, "a");
        assert_eq!(ledger.images(None).await.unwrap().len(), 2, "each run knows it used the image");
        ledger.images_removed(vec!["sha256:aa".to_string()]).await.unwrap();
        assert!(ledger.images(None).await.unwrap().is_empty());
        assert!(ledger.unreleased("r1", None).await.unwrap().is_empty(), "images are no resources to tear down");
    }

    #[tokio::test]
    async fn a_run_whose_process_is_gone_is_orphaned() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut dead = run("dead");
        dead.start_time = dead.start_time.map(|time| time + 1);
        ledger.start_run(run("live")).await.unwrap();
        ledger.start_run(dead).await.unwrap();
        let host = host::host_name();
        let runs = ledger.runs().await.unwrap();
        let orphaned: Vec<&str> = runs.iter().filter(|run| run.is_orphaned(&host)).map(|run| run.id.as_str()).collect();
        assert_eq!(orphaned, ["dead"]);
        ledger.end_run("dead", "recovered").await.unwrap();
        let runs = ledger.runs().await.unwrap();
        assert!(!runs.iter().any(|run| run.id == "dead" && run.is_orphaned(&host)));
    }

    #[tokio::test]
    async fn two_handles_share_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = Ledger::open(dir.path()).unwrap();
        let second = Ledger::open(dir.path()).unwrap();
        first.start_run(run("r1")).await.unwrap();
        second.start_run(run("r2")).await.unwrap();
        let writes = (0..50).map(|index| {
            let ledger = if index % 2 == 0 { first.clone() } else { second.clone() };
            async move { ledger.record_resources("r1", "t", vec![container(&format!("c{index}"))]).await }
        });
        for result in futures_util::future::join_all(writes).await {
            result.unwrap();
        }
        assert_eq!(first.unreleased("r1", None).await.unwrap().len(), 50);
    }

    #[tokio::test]
    async fn an_older_ledger_gains_the_new_columns_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The first release's tables, before `kept_at` and `endpoint`.
            let connection = Connection::open(dir.path().join("ledger.sqlite")).unwrap();
            connection
                .execute_batch(
                    "CREATE TABLE runs (id TEXT PRIMARY KEY, pid INTEGER NOT NULL, start_time INTEGER,
                     host TEXT NOT NULL, benchmark TEXT NOT NULL, started_at INTEGER NOT NULL, ended_at INTEGER,
                     outcome TEXT);
                     CREATE TABLE resources (backend TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL,
                     name TEXT NOT NULL, run_id TEXT NOT NULL, task_id TEXT NOT NULL, created_at INTEGER NOT NULL,
                     released_at INTEGER, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
                     PRIMARY KEY (backend, kind, id));
                     INSERT INTO resources (backend, kind, id, name, run_id, task_id, created_at)
                     VALUES ('docker', 'container', 'old', '', 'r1', 'a', 1);",
                )
                .unwrap();
        }
        let first = Ledger::open(dir.path()).unwrap();
        let second = Ledger::open(dir.path()).unwrap();
        let version: i64 = first
            .on_blocking_pool(|connection| connection.query_row("PRAGMA user_version", [], |row| row.get(0)))
            .await
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION, "version 0 is upgraded in place");
        let rows = second.unreleased("r1", None).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].kept_at, rows[0].endpoint.as_deref()), (None, None));
        assert_eq!(first.keep("r1", "a").await.unwrap(), 1);
        assert!(first.unreleased("r1", None).await.unwrap()[0].kept_at.is_some());
    }

    #[test]
    fn a_ledger_of_a_newer_release_is_refused_untouched_and_an_older_one_gains_the_version() {
        let version_of = |path: &Path| -> i64 {
            Connection::open(path).unwrap().query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap()
        };
        let fresh = tempfile::tempdir().unwrap();
        Ledger::open(fresh.path()).unwrap();
        assert_eq!(version_of(&fresh.path().join("ledger.sqlite")), SCHEMA_VERSION);

        let newer = tempfile::tempdir().unwrap();
        let path = newer.path().join("ledger.sqlite");
        {
            let connection = Connection::open(&path).unwrap();
            connection.execute_batch(SCHEMA).unwrap();
            connection.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let error = Ledger::open(newer.path()).err().expect("a newer ledger is refused");
        assert!(matches!(error, Error::NewerLedger { version, .. } if version == SCHEMA_VERSION + 1), "{error}");
        assert_eq!(error.exit_status(), crate::errors::ExitStatus::Usage);
        assert!(error.to_string().contains("newer benchwarden"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "the newer ledger was written");
        let names: Vec<String> = std::fs::read_dir(newer.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ledger.sqlite"], "no WAL or journal was made beside it");
    }

    #[tokio::test]
    async fn kept_rows_stay_unreleased_and_claims_record_their_host_and_first_owner() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.start_run(run("r1")).await.unwrap();
        ledger.record_claims("r1", "a", &[]).await.unwrap();
        assert_eq!(ledger.tasks("r1").await.unwrap(), ["a"]);
        ledger.record_resources("r1", "a", vec![container("c1")]).await.unwrap();
        let elsewhere = Some("tcp://10.0.0.2:2375".to_string());
        assert!(ledger.record_claimed("r1", "a", container("c2"), elsewhere.clone()).await.unwrap());
        assert!(!ledger.record_claimed("r1", "b", container("c1"), None).await.unwrap(), "c1 keeps its owner");
        assert_eq!(ledger.keep("r1", "a").await.unwrap(), 2);
        assert_eq!(ledger.keep("r1", "a").await.unwrap(), 0, "kept once");
        let rows = ledger.unreleased("r1", Some("a")).await.unwrap();
        assert!(rows.iter().all(|row| row.kept_at.is_some()), "{rows:?}");
        let c2 = rows.iter().find(|row| row.resource.id == "c2").unwrap();
        assert_eq!(c2.endpoint, elsewhere);
    }
}
