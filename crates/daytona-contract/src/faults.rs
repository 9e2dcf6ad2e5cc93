//! The faults the server injects on demand:
//!
//! - [`ContractConfig::latency`](crate::ContractConfig::latency) before every
//!   answer;
//! - [`ContractConfig::error_rate_5xx`](crate::ContractConfig::error_rate_5xx):
//!   a share of authenticated calls answered 500, after auth and rate
//!   limiting and before the operation (so it has no effect);
//! - [`ContractConfig::reset_rate`](crate::ContractConfig::reset_rate): a
//!   share of calls whose operation is performed and whose TCP connection is
//!   then reset (SO_LINGER 0, so the client sees ECONNRESET) instead of
//!   answered, like a reply lost on the way;
//! - [`ContractServer::stick_in_destroying`](crate::ContractServer::stick_in_destroying):
//!   a sandbox whose delete is accepted but never completes.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::state::State;
use crate::ContractConfig;

/// Waits `latency` (nothing when it is zero).
pub(crate) async fn add_latency(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// Whether this call is answered 500 instead (counted as injected).
pub(crate) fn inject_5xx(state: &mut State) -> bool {
    let rate = state.config.error_rate_5xx;
    let inject = rate > 0.0 && fastrand::f64() < rate;
    if inject {
        state.stats.injected_5xx += 1;
    }
    inject
}

/// Whether this call's connection is reset instead of answered.
pub(crate) fn inject_reset(config: &ContractConfig) -> bool {
    config.reset_rate > 0.0 && fastrand::f64() < config.reset_rate
}

impl State {
    /// Marks a sandbox so that its destroy never completes.
    pub(crate) fn stick_in_destroying(&mut self, id: &str) {
        if let Some(sb) = self.sandboxes.iter_mut().find(|sb| sb.id == id) {
            sb.stuck = true;
        }
    }
}

/// A connection's way to end in a TCP reset instead of an answer: the
/// request handler asks for it, the connection's task performs it.
pub(crate) struct ConnectionReset {
    /// A second descriptor of the same socket, to set SO_LINGER 0 on a reset
    /// while hyper owns the stream.
    socket: Option<OwnedFd>,
    requested: Notify,
}

impl ConnectionReset {
    pub(crate) fn of(stream: &TcpStream) -> ConnectionReset {
        ConnectionReset { socket: stream.as_fd().try_clone_to_owned().ok(), requested: Notify::new() }
    }

    /// Asks the connection's task to reset the connection.
    pub(crate) fn request(&self) {
        self.requested.notify_one();
    }

    /// Until a reset has been asked for.
    pub(crate) async fn requested(&self) {
        self.requested.notified().await;
    }

    /// Sets a zero linger: closing the socket then sends RST instead of FIN,
    /// and the client gets ECONNRESET with no answer.
    pub(crate) fn arm(&self) {
        if let Some(socket) = &self.socket {
            let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
        }
    }
}
