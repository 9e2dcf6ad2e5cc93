//! Signals as data. Ctrl-C, SIGTERM and SIGHUP: each press moves the
//! shutdown state one step (graceful, then kill now, then exit at once).
//! Ctrl-Z (SIGTSTP) and SIGCONT: the run's [`Suspension`], whose stopped
//! time every task's clocks leave out. Every task watches both states.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::time::Instant;

use super::process;
use crate::events::{Event, Events, Press};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shutdown {
    Running,
    /// First press: start no new task; signal harness groups; kill after the grace.
    Graceful(Signal),
    /// Second press: kill every harness group now; teardown goes on.
    Kill(Signal),
}

impl Shutdown {
    pub(crate) fn is_requested(self) -> bool {
        !matches!(self, Shutdown::Running)
    }

    /// The signal that started the shutdown, if any.
    pub(crate) fn signal(self) -> Option<Signal> {
        match self {
            Shutdown::Running => None,
            Shutdown::Graceful(signal) | Shutdown::Kill(signal) => Some(signal),
        }
    }
}

/// Listens for SIGINT, SIGTERM and SIGHUP, telling each press. `on_third`
/// runs on the third press and must not return (it exits the process).
pub(crate) fn install(
    on_third: impl Fn(Signal) + Send + 'static,
    events: Events,
) -> std::io::Result<watch::Receiver<Shutdown>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let (sender, receiver) = watch::channel(Shutdown::Running);
    tokio::spawn(async move {
        let mut presses = 0u32;
        loop {
            let received = tokio::select! {
                Some(()) = interrupt.recv() => Signal::SIGINT,
                Some(()) = terminate.recv() => Signal::SIGTERM,
                Some(()) = hangup.recv() => Signal::SIGHUP,
                else => return,
            };
            presses += 1;
            let first = sender.borrow().signal().unwrap_or(received);
            match presses {
                1 => {
                    events.emit(Event::ShutdownRequested { signal: received, press: Press::First });
                    sender.send_replace(Shutdown::Graceful(first));
                }
                2 => {
                    events.emit(Event::ShutdownRequested { signal: received, press: Press::Second });
                    sender.send_replace(Shutdown::Kill(first));
                }
                _ => on_third(first),
            }
        }
    });
    Ok(receiver)
}

/// Whether the run is stopped by Ctrl-Z, and how long it has been stopped
/// in all: the time that time limits and graces must not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Suspension {
    /// When the current stop began, while the run is stopped.
    pub(crate) since: Option<Instant>,
    /// The length of every stop that has ended, summed.
    pub(crate) stopped_for: Duration,
}

impl Suspension {
    pub(crate) fn is_suspended(self) -> bool {
        self.since.is_some()
    }

    /// Stopped from `at` on; already stopped, the first stop's start stands.
    pub(crate) fn suspend(self, at: Instant) -> Self {
        Suspension { since: self.since.or(Some(at)), ..self }
    }

    /// Continued at `at`: the stop's length joins the total. A SIGCONT
    /// without a Ctrl-Z before it (someone's `kill -CONT`) changes nothing.
    pub(crate) fn resume(self, at: Instant) -> Self {
        match self.since {
            Some(since) => {
                Suspension { since: None, stopped_for: self.stopped_for + at.saturating_duration_since(since) }
            }
            None => self,
        }
    }
}

/// Listens for SIGTSTP and SIGCONT. On SIGTSTP (Ctrl-Z) the run is marked
/// stopped, every task's processes get SIGSTOP, and benchwarden stops itself
/// (handling SIGTSTP took away its default stop); once continued, the run is
/// marked running again and the tasks' processes get SIGCONT. Any SIGCONT
/// is passed on, as after `kill -STOP` of benchwarden by hand.
pub(crate) fn install_job_control(events: Events) -> std::io::Result<watch::Receiver<Suspension>> {
    let mut stops = signal(SignalKind::from_raw(Signal::SIGTSTP as i32))?;
    let mut continues = signal(SignalKind::from_raw(Signal::SIGCONT as i32))?;
    let (sender, receiver) = watch::channel(Suspension::default());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = stops.recv() => {
                    // Marked first: a task that wakes before benchwarden stops sees its clocks paused.
                    sender.send_modify(|state| *state = state.suspend(Instant::now()));
                    process::stop_every_task_then_self(|processes| events.emit(Event::Suspended { processes }));
                    // Continued. Marked running before the harnesses continue, so nothing
                    // they do afterwards is seen while the clocks still stand.
                    let before = *sender.borrow();
                    let after = before.resume(Instant::now());
                    sender.send_replace(after);
                    let processes = process::signal_every_task(Signal::SIGCONT);
                    let stopped_for = after.stopped_for.saturating_sub(before.stopped_for);
                    events.emit(Event::Resumed { processes, stopped_for });
                }
                Some(()) = continues.recv() => {
                    // Mostly the SIGCONT that just continued us, already handled above.
                    process::signal_every_task(Signal::SIGCONT);
                }
                else => return,
            }
        }
    });
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_counts_from_the_first_ctrl_z_to_the_continue() {
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let stopped = Suspension::default().suspend(at(1));
        assert!(stopped.is_suspended());
        assert_eq!(stopped.suspend(at(2)), stopped, "a second Ctrl-Z while stopped moves nothing");
        let continued = stopped.resume(at(5));
        assert_eq!(continued, Suspension { since: None, stopped_for: Duration::from_secs(4) });
        assert_eq!(continued.resume(at(9)), continued, "a SIGCONT without a stop changes nothing");
        let twice = continued.suspend(at(10)).resume(at(13));
        assert_eq!(twice.stopped_for, Duration::from_secs(7));
    }
}
