//! Everything the user sees. The [`Reporter`] is the one consumer of the
//! event stream: it turns events into log lines (through tracing) and, on a
//! terminal, into progress bars and a line per running task. [`text`]
//! renders tables, summaries and the JSON report for the commands to print.

mod lines;
mod terminal;
pub(crate) mod text;
mod view;

use std::sync::Arc;

pub use terminal::{init_logging, Color, OutputSettings, Verbosity};

use crate::events::{Event, EventSink};

/// Turns the event stream into log lines and the terminal view.
pub(crate) struct Reporter {
    view: view::View,
}

impl Reporter {
    pub(crate) fn new(output: &OutputSettings) -> Arc<Self> {
        Arc::new(Reporter { view: view::View::new(output.progress) })
    }

    /// Clears what the terminal view still draws, before a summary is printed.
    pub(crate) fn clear(&self) {
        self.view.clear();
    }
}

impl EventSink for Reporter {
    fn event(&self, event: &Event<'_>) {
        lines::log(event);
        self.view.show(event);
    }
}
