//! What the user sees: log lines (through tracing), progress bars on a
//! terminal (indicatif), and the plumbing that keeps the two from tearing
//! each other apart.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

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
    pub verbosity: Verbosity,
    pub color: bool,
    /// Progress bars are drawn only on a terminal, and never with `-q`.
    pub progress: bool,
}

impl OutputSettings {
    pub fn resolve(verbosity: Verbosity, color: crate::settings::Color) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let color = match color {
            crate::settings::Color::Always => true,
            crate::settings::Color::Never => false,
            crate::settings::Color::Auto => terminal && std::env::var_os("NO_COLOR").is_none(),
        };
        OutputSettings { verbosity, color, progress: terminal && verbosity != Verbosity::Quiet }
    }
}

fn multi() -> &'static MultiProgress {
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

/// A progress bar for a batch of removals, or nothing when not drawing.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn hidden() -> Self {
        Progress { bar: None }
    }

    /// A bar with `total` steps, drawn only when output allows and there is
    /// more than one step.
    pub fn bar(output: &OutputSettings, total: usize, message: &str) -> Self {
        if !output.progress || total < 2 {
            return Progress::hidden();
        }
        let bar = multi().add(ProgressBar::new(total as u64));
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(message.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress { bar: Some(bar) }
    }

    pub fn tick(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            multi().remove(&bar);
        }
    }
}

/// Formats an age for tables: `45s`, `12m`, `3h`, `2d`.
pub fn format_age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        7200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// Renders rows as a left-aligned table with two spaces between columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
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

/// The live view of a run: one overall bar with done/failed/timed-out
/// counts, and a line per running task with its elapsed time. Drawn only on
/// a terminal; otherwise log lines carry the same news.
pub struct RunView {
    overall: Option<ProgressBar>,
    draw: bool,
    counts: std::sync::Mutex<(usize, usize, usize)>,
}

/// One running task's line in the view.
pub struct TaskLine {
    bar: Option<ProgressBar>,
}

impl RunView {
    pub fn new(output: &OutputSettings, tasks: usize) -> Self {
        let overall = output.progress.then(|| {
            let bar = multi().add(ProgressBar::new(tasks as u64));
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} tasks {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        RunView { overall, draw: output.progress, counts: std::sync::Mutex::new((0, 0, 0)) }
    }

    /// A line for a task that just started; `live` counts the containers it
    /// has now, as the creation watcher sees them.
    pub fn task_started(
        &self,
        name: &str,
        live: Option<std::sync::Arc<crate::supervisor::watch::LiveCount>>,
    ) -> TaskLine {
        tracing::info!("task {name}: started");
        let bar = self.draw.then(|| {
            let bar = multi().add(ProgressBar::new_spinner());
            let style = ProgressStyle::with_template("  {spinner} {prefix} {elapsed} {live} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner())
                .with_key("live", move |_: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                    if let Some(live) = &live {
                        let _ = write!(out, "{} live container(s)", live.get());
                    }
                });
            bar.set_style(style);
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        TaskLine { bar }
    }

    /// Counts a finished task: `failed` and `timed_out` as reported.
    pub fn task_finished(&self, failed: bool, timed_out: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.0 += 1;
        counts.1 += usize::from(failed && !timed_out);
        counts.2 += usize::from(timed_out);
        if let Some(bar) = &self.overall {
            bar.set_position(counts.0 as u64);
            bar.set_message(format!("({} failed, {} timed out)", counts.1, counts.2));
        }
    }
}

impl Drop for RunView {
    fn drop(&mut self) {
        if let Some(bar) = self.overall.take() {
            bar.finish_and_clear();
            multi().remove(&bar);
        }
    }
}

impl TaskLine {
    pub fn set_message(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_string());
        }
    }
}

impl Drop for TaskLine {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            multi().remove(&bar);
        }
    }
}

/// Writes a harness's output line to the terminal above the progress bars.
pub fn echo_harness_output(bytes: &[u8]) {
    multi().suspend(|| {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(bytes);
        let _ = stderr.flush();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
