//! The terminal view: a bar for a batch of removals a person follows, and
//! during a run one overall bar (done, failed, timed out, and why the next
//! task waits when a limit holds it back) with a line per
//! running task (elapsed time, live containers, what it is doing). Drawn
//! only on a terminal and never with `-q`; log lines carry the same news
//! everywhere else. Harness output echoed with `-j 1` goes above the bars.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use super::terminal::{add_bar, remove_bar, write_above_bars};
use crate::events::{Event, RemovalEvent, TaskEvent, TaskOutcome, TaskReport};

pub(super) struct View {
    draw: bool,
    drawn: Mutex<Drawn>,
}

/// What is on the screen now.
#[derive(Default)]
struct Drawn {
    removals: Option<ProgressBar>,
    overall: Option<ProgressBar>,
    tasks: HashMap<String, TaskLine>,
    counts: TaskCounts,
    /// Why the next task waits, while it does.
    waiting: Option<String>,
}

struct TaskLine {
    bar: ProgressBar,
    /// Read by the line's template on every redraw; [`UNKNOWN`] until the
    /// creation watcher first tells (it does not run without Docker).
    live_containers: Arc<AtomicUsize>,
}

const UNKNOWN: usize = usize::MAX;

/// Tasks finished so far, for the overall bar.
#[derive(Default)]
struct TaskCounts {
    finished: usize,
    failed: usize,
    timed_out: usize,
}

impl TaskCounts {
    fn count(&mut self, report: &TaskReport) {
        self.finished += 1;
        match report.outcome {
            TaskOutcome::Passed => {}
            TaskOutcome::TimedOut => self.timed_out += 1,
            _ => self.failed += 1,
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

impl View {
    pub(super) fn new(draw: bool) -> Self {
        View { draw, drawn: Mutex::default() }
    }

    pub(super) fn show(&self, event: &Event<'_>) {
        if let Event::Task(TaskEvent::Output { bytes, .. }) = event {
            write_above_bars(bytes);
            return;
        }
        if !self.draw {
            return;
        }
        // A poisoned lock means a panic while drawing; what is drawn is still usable.
        let mut drawn = self.drawn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match event {
            Event::RunStarted { tasks, .. } => drawn.start_run(*tasks),
            Event::Task(task) => drawn.task(task),
            Event::Removal(removal) => drawn.removal(removal),
            Event::Waiting { waiting, .. } => {
                drawn.waiting = waiting.map(super::lines::waiting_text);
                drawn.show_overall();
            }
            _ => {}
        }
    }

    pub(super) fn clear(&self) {
        let mut drawn = self.drawn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for bar in drawn.removals.take().into_iter().chain(drawn.overall.take()) {
            remove_bar(&bar);
        }
        for (_, line) in drawn.tasks.drain() {
            remove_bar(&line.bar);
        }
    }
}

impl Drawn {
    fn start_run(&mut self, tasks: usize) {
        let bar = add_bar(ProgressBar::new(tasks as u64));
        bar.set_style(style("{spinner} [{bar:30}] {pos}/{len} tasks {msg} {elapsed}"));
        bar.enable_steady_tick(Duration::from_millis(200));
        self.overall = Some(bar);
    }

    fn task(&mut self, event: &TaskEvent<'_>) {
        match event {
            TaskEvent::Started { task } => {
                let line = task_line(task);
                self.tasks.insert(task.to_string(), line);
            }
            TaskEvent::Live { task, containers } => {
                if let Some(line) = self.tasks.get(*task) {
                    line.live_containers.store(*containers, Ordering::Relaxed);
                }
            }
            TaskEvent::TearingDown { task } => {
                if let Some(line) = self.tasks.get(*task) {
                    line.bar.set_message("tearing down");
                }
            }
            TaskEvent::Keeping { task } => {
                if let Some(line) = self.tasks.get(*task) {
                    line.bar.set_message("keeping its resources");
                }
            }
            TaskEvent::Finished { report } => {
                if let Some(line) = self.tasks.remove(&report.task) {
                    remove_bar(&line.bar);
                }
                self.counts.count(report);
                self.show_overall();
            }
            _ => {}
        }
    }

    fn show_overall(&self) {
        let Some(bar) = &self.overall else {
            return;
        };
        bar.set_position(self.counts.finished as u64);
        let counts = format!("({} failed, {} timed out)", self.counts.failed, self.counts.timed_out);
        match &self.waiting {
            Some(waiting) => bar.set_message(format!("{counts}; {waiting}")),
            None => bar.set_message(counts),
        }
    }

    fn removal(&mut self, event: &RemovalEvent<'_>) {
        match event {
            // One removal is over before a bar could tell anything.
            RemovalEvent::Started { what, total } if *total >= 2 => {
                let bar = add_bar(ProgressBar::new(*total as u64));
                bar.set_style(style("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}"));
                bar.set_message(what.to_string());
                bar.enable_steady_tick(Duration::from_millis(100));
                self.removals = Some(bar);
            }
            RemovalEvent::Outcome { .. } => {
                if let Some(bar) = &self.removals {
                    bar.inc(1);
                }
            }
            RemovalEvent::Finished => {
                if let Some(bar) = self.removals.take() {
                    remove_bar(&bar);
                }
            }
            _ => {}
        }
    }
}

fn task_line(task: &str) -> TaskLine {
    let live_containers = Arc::new(AtomicUsize::new(UNKNOWN));
    let count = Arc::clone(&live_containers);
    let bar = add_bar(ProgressBar::new_spinner());
    let style = ProgressStyle::with_template("  {spinner} {prefix} {elapsed} {live} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .with_key("live", move |_: &ProgressState, out: &mut dyn std::fmt::Write| {
            match count.load(Ordering::Relaxed) {
                UNKNOWN => {}
                count => {
                    let _ = write!(out, "{count} live container(s)");
                }
            }
        });
    bar.set_style(style);
    bar.set_prefix(task.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    TaskLine { bar, live_containers }
}
