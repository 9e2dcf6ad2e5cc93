//! Ctrl-C, SIGTERM and SIGHUP, as data: each press moves the shutdown
//! state one step (graceful, then kill now, then exit at once), and every
//! task watches that state.

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

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
