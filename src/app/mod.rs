//! One function per subcommand: each takes resolved settings, does the work
//! through the domain modules, prints the result, and decides the exit
//! status. Nothing here decides what to remove or how; it wires the work
//! up, and says what happened.

mod claim;
mod cleanup;
mod cleanup_all;
mod daytona;
mod ledger;
mod prune;
mod run;
mod sweep;

pub use claim::claim;
pub use cleanup::cleanup_docker;
pub use cleanup_all::cleanup_all;
pub use daytona::{cleanup_daytona, list_daytona};
pub use ledger::{recover, status};
pub use prune::prune;
pub use run::run;
pub use sweep::sweep;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::backend::docker::{ContainerQuery, DockerBackend};
use crate::clock::now_unix;
use crate::errors::{Error, ExitStatus};
use crate::events::{EventSink, Events};
use crate::ledger::{Ledger, RunRecord};
use crate::metrics::{self, Live, Metrics};
use crate::report::{text, Reporter};
use crate::settings::{GlobalSettings, ListSettings};

/// What every command shares: the reporter, the metrics, and the event
/// stream that feeds both.
pub struct Session {
    reporter: Arc<Reporter>,
    metrics: Arc<Metrics>,
    events: Events,
}

impl Session {
    pub fn new(global: &GlobalSettings) -> Self {
        let reporter = Reporter::new(&global.output);
        let metrics = Arc::new(Metrics::default());
        let sinks: Vec<Arc<dyn EventSink>> = vec![reporter.clone(), metrics.clone()];
        Session { reporter, metrics, events: Events::to_all(sinks) }
    }

    /// Writes the metrics file, when one was asked for, with what the
    /// ledger still records as owned.
    async fn write_metrics(&self, path: Option<&Path>, global: &GlobalSettings) -> Result<(), Error> {
        let Some(path) = path else { return Ok(()) };
        let ledger = Ledger::open(&global.state_dir)?;
        let mut live = Live::new();
        for record in ledger.all_unreleased().await? {
            *live.entry((record.resource.kind.service(), record.resource.kind)).or_default() += 1;
        }
        metrics::write_atomically(path, &self.metrics.render(&live)).map_err(|source| Error::Io {
            what: "write the metrics file",
            path: path.to_path_buf(),
            source,
        })
    }
}

/// `benchwarden list`.
pub async fn list(global: &GlobalSettings, settings: &ListSettings, session: &Session) -> Result<ExitStatus, Error> {
    if settings.daytona {
        return list_daytona(global, settings, &session.events).await;
    }
    let backend =
        DockerBackend::connect(&global.docker).await?.retrying_reads(global.retry.clone(), session.events.clone());
    let query = ContainerQuery { labels: settings.labels.clone(), all: settings.all };
    let mut containers = backend.list_containers(&query).await.map_err(|error| error.during("list containers"))?;
    containers.sort_by_key(|container| std::cmp::Reverse(container.created));
    if settings.json {
        print_json(&containers)?;
    } else {
        print_stdout(&text::container_table(&containers, now_unix()))?;
    }
    Ok(ExitStatus::Success)
}

/// Runs in the ledger, for liveness checks; an unreadable ledger leaves the
/// labels to judge.
async fn ledger_runs(global: &GlobalSettings) -> Vec<RunRecord> {
    match Ledger::open(&global.state_dir) {
        Ok(ledger) => ledger.runs().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

fn print_json(value: &impl Serialize) -> Result<(), Error> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| Error::Json { what: "the output", source })?;
    text.push('\n');
    print_stdout(&text)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a message.
fn print_stdout(text: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::Io { what: "write to", path: "stdout".into(), source: error })
        }
        _ => Ok(()),
    }
}
