//! `benchwarden sweep`: `cleanup all`'s policy every DUR, or once for
//! cron; one sweep per host at a time; SIGINT or SIGTERM lets the current
//! round finish (a second one exits at once).

use std::time::Instant;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::MissedTickBehavior;

use super::cleanup_all::Connected;
use super::Session;
use crate::cleanup::{clean_up, CleanupReport};
use crate::clock::now_unix;
use crate::errors::{error_chain, Error, ExitStatus};
use crate::events::{Event, Events, StopWhen};
use crate::host;
use crate::ledger::Ledger;
use crate::lock::StateLock;
use crate::settings::{GlobalSettings, SweepSettings};

/// SIGINT and SIGTERM, as presses.
struct Stop {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    requested: Option<Signal>,
}

impl Stop {
    fn listen() -> Result<Self, Error> {
        let io = |source| Error::Io { what: "listen for signals in", path: "benchwarden".into(), source };
        Ok(Stop {
            interrupt: signal(SignalKind::interrupt()).map_err(io)?,
            terminate: signal(SignalKind::terminate()).map_err(io)?,
            requested: None,
        })
    }

    /// The next press.
    async fn pressed(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
        }
    }
}

pub async fn sweep(global: &GlobalSettings, settings: &SweepSettings, session: &Session) -> Result<ExitStatus, Error> {
    let _lock = StateLock::acquire(&global.state_dir, "sweep", "sweep")?;
    let events = &session.events;
    let connected = Connected::connect(global, &settings.cleanup, events).await?;
    let ledger = Ledger::open(&global.state_dir)?;
    let mut stop = Stop::listen()?;
    let sweeper = Sweeper { connected, ledger, global, settings, session };
    let Some(every) = settings.every else {
        return Ok(sweeper.round(1, &mut stop).await?.exit_status());
    };
    let mut ticks = tokio::time::interval(every);
    // A round that outlasts the period is not followed by a burst of catch-up rounds.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    for number in 1.. {
        tokio::select! {
            _ = ticks.tick() => {}
            signal = stop.pressed() => {
                events.emit(Event::SweepStopping { signal, when: StopWhen::BetweenRounds });
                break;
            }
        }
        if let Err(error) = sweeper.round(number, &mut stop).await {
            events.emit(Event::SweepFailed { round: number, error: &error_chain(&error) });
        }
        if stop.requested.is_some() {
            break;
        }
    }
    Ok(ExitStatus::Success)
}

/// What every round uses.
struct Sweeper<'a> {
    connected: Connected,
    ledger: Ledger,
    global: &'a GlobalSettings,
    settings: &'a SweepSettings,
    session: &'a Session,
}

impl Sweeper<'_> {
    /// One round: a prune of the ledger, then the cleanup, seen through even when a stop is requested
    /// meanwhile (a second press exits at once), then its line and the metrics.
    async fn round(&self, number: u64, stop: &mut Stop) -> Result<CleanupReport, Error> {
        let events = &self.session.events;
        let started = Instant::now();
        let policy = &self.settings.cleanup.policy;
        let (targets, host) = (self.connected.targets(), host::host_name());
        let (state_dir, retention) = (&self.global.state_dir, self.settings.cleanup.retention);
        super::prune::prune_runs(state_dir, &self.ledger, retention, policy.docker_dry_run, events).await?;
        let cleaning = clean_up(&targets, &self.ledger, policy, &host, events);
        tokio::pin!(cleaning);
        let report = loop {
            tokio::select! {
                report = &mut cleaning => break report?,
                signal = stop.pressed() => pressed_during_round(stop, signal, events),
            }
        };
        let counts = report.counts();
        let seconds = started.elapsed().as_secs_f64();
        events.emit(Event::SweepFinished { round: Some(number), counts: &counts, seconds, at: now_unix() });
        self.session.write_metrics(self.settings.cleanup.metrics_file.as_deref(), self.global).await?;
        Ok(report)
    }
}

fn pressed_during_round(stop: &mut Stop, signal: Signal, events: &Events) {
    if stop.requested.is_none() {
        stop.requested = Some(signal);
        events.emit(Event::SweepStopping { signal, when: StopWhen::AfterThisRound });
        return;
    }
    events.emit(Event::SweepStopping { signal, when: StopWhen::Now });
    let code = if signal == Signal::SIGTERM { ExitStatus::Terminated } else { ExitStatus::Interrupted };
    std::process::exit(code.code());
}
