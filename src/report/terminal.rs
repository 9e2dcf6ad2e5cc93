//! The terminal: output settings resolved once (verbosity, colour, whether
//! to draw), the log subscriber, and the plumbing that keeps log lines and
//! progress bars (indicatif) from tearing each other apart.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// When to use colours and progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Auto,
    Always,
    Never,
}

/// How chatty the output is, resolved once from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
    Trace,
}

/// Output settings, resolved once.
#[derive(Debug, Clone, Copy)]
pub struct OutputSettings {
    pub(crate) verbosity: Verbosity,
    pub(crate) color: bool,
    /// Progress bars are drawn only on a terminal, and never with `-q`.
    pub(crate) progress: bool,
}

impl OutputSettings {
    /// `no_color`: whether `NO_COLOR` is set (read once, by settings).
    pub(crate) fn resolve(verbosity: Verbosity, color: Color, no_color: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let color = match color {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => terminal && !no_color,
        };
        OutputSettings { verbosity, color, progress: terminal && verbosity != Verbosity::Quiet }
    }
}

/// Every bar is drawn through this one, so log lines can be written above them all.
pub(super) fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Writes log lines above any progress bars instead of through them.
#[derive(Clone, Copy)]
struct SuspendingStderr;

impl Write for SuspendingStderr {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        multi().suspend(|| std::io::stderr().write_all(buffer))?;
        Ok(buffer.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for SuspendingStderr {
    type Writer = SuspendingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

/// Installs the log subscriber. `RUST_LOG` wins over `-v`/`-q`.
pub fn init_logging(output: &OutputSettings) {
    let default = match output.verbosity {
        Verbosity::Quiet => "warn",
        Verbosity::Normal => "info",
        Verbosity::Verbose => "benchwarden=debug,info",
        Verbosity::Trace => "benchwarden=trace,debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(SuspendingStderr)
        .with_ansi(output.color)
        .with_target(false);
    // On a terminal people read along, so time stamps are clutter; in a log file they matter.
    let installed =
        if std::io::stderr().is_terminal() { builder.without_time().try_init() } else { builder.try_init() };
    // A second init (tests driving the library) keeps the first subscriber.
    drop(installed);
}

/// Writes bytes to stderr above any progress bars.
pub(super) fn write_above_bars(bytes: &[u8]) {
    multi().suspend(|| {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(bytes);
        let _ = stderr.flush();
    });
}

/// Adds a bar to the drawing.
pub(super) fn add_bar(bar: ProgressBar) -> ProgressBar {
    multi().add(bar)
}

/// Takes a bar off the screen for good.
pub(super) fn remove_bar(bar: &ProgressBar) {
    bar.finish_and_clear();
    multi().remove(bar);
}
