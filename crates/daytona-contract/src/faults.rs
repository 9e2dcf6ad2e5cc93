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
//!   a sandbox whose delete is accepted but never completes (until
//!   [`ContractServer::unstick`](crate::ContractServer::unstick));
//! - [`ContractConfig::rules`](crate::ContractConfig::rules): answers the
//!   contract does not promise, by rule ([`FaultRule`]): on one route (or
//!   every API route), the first N calls, every Nth, or a share of them get
//!   a [`Fault`] instead of (or on top of) the usual answer. Rules are
//!   deterministic unless they take a share, so a test that uses them cannot
//!   flake, and [`FaultRule::injected`] says how often each fired.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
        self.set_stuck(id, true);
    }

    /// Lifts [`State::stick_in_destroying`]: an accepted delete completes
    /// (at once, when its destroy delay has passed).
    pub(crate) fn unstick(&mut self, id: &str) {
        self.set_stuck(id, false);
    }

    fn set_stuck(&mut self, id: &str, stuck: bool) {
        if let Some(sb) = self.sandboxes.iter_mut().find(|sb| sb.id == id) {
            sb.stuck = stuck;
        }
    }
}

/// What a [`FaultRule`] does to a call it hits.
///
/// A fault that answers an error status (4xx, 5xx) answers instead of the
/// operation, which is not performed (as a proxy in front of the API that
/// never reached it); one that answers a 2xx performs the operation first
/// and then answers its own body instead of the operation's (an answer
/// mangled on the way back).
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Waits this long, then answers as usual (a latency spike).
    Latency(Duration),
    /// The API's error body with this status.
    Status(u16),
    /// A 429 whose `Retry-After-<throttler>` and plain `Retry-After` carry
    /// `retry_after`, and whose `X-RateLimit-Reset-<throttler>` carries
    /// `reset`, verbatim (`nan`, `inf`, `-1`, `1e309`, `soon`, ...), with
    /// `X-RateLimit-Remaining-<throttler>: 0`, for each throttler of the route.
    TooManyRequests { retry_after: String, reset: String },
    /// This status with an empty body (and `Content-Length: 0`).
    EmptyBody(u16),
    /// HTML instead of JSON: with a 2xx the dashboard's page (as a URL
    /// without `/api` gets), else a reverse proxy's error page for the status.
    Html(u16),
    /// Performs the operation, then resets the connection instead of answering.
    Reset,
}

impl Fault {
    /// A 429 whose every wait header says `text`.
    pub fn throttled(text: &str) -> Fault {
        Fault::TooManyRequests { retry_after: text.to_string(), reset: text.to_string() }
    }

    /// The status answered, when the fault answers in place of the operation.
    pub(crate) fn refusal(&self) -> Option<u16> {
        match self {
            Fault::Status(status) | Fault::EmptyBody(status) | Fault::Html(status) if *status >= 300 => Some(*status),
            Fault::TooManyRequests { .. } => Some(429),
            _ => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Latency(wait) => write!(f, "latency {}ms", wait.as_millis()),
            Fault::Status(status) => write!(f, "status {status}"),
            Fault::TooManyRequests { retry_after, reset } => {
                write!(f, "429 retry-after={retry_after:?} reset={reset:?}")
            }
            Fault::EmptyBody(status) => write!(f, "empty {status}"),
            Fault::Html(status) => write!(f, "html {status}"),
            Fault::Reset => f.write_str("reset"),
        }
    }
}

/// Which of the calls a rule matches it hits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum When {
    /// The first N.
    First(u64),
    /// The Nth, the 2Nth, ... (`EveryNth(1)`: every one).
    EveryNth(u64),
    /// This share of them (0.0-1.0), at random.
    Share(f64),
}

impl When {
    /// Whether the `ordinal`th matching call (from 1) is hit.
    pub fn hits(self, ordinal: u64) -> bool {
        match self {
            When::First(count) => ordinal <= count,
            When::EveryNth(period) => period > 0 && ordinal % period == 0,
            When::Share(share) => share > 0.0 && fastrand::f64() < share,
        }
    }
}

/// Every API route, for [`FaultRule::new`].
pub const ANY_ROUTE: &str = "*";

/// One rule: calls on `route`, a `"METHOD route"` key of
/// [`ContractStats::by_route`](crate::ContractStats::by_route) (e.g.
/// `"DELETE /api/sandbox/{idOrName}"`) or [`ANY_ROUTE`], get `fault` when
/// `when` says so. Only API routes (under `/api`, not the Socket.IO path)
/// are matched; the rules are tried in order as a call arrives (before
/// authentication and rate limiting), and the first that fires wins.
#[derive(Clone, Debug)]
pub struct FaultRule {
    pub route: String,
    pub fault: Fault,
    pub when: When,
    /// Calls matched, and calls hit; shared by the clones of the rule.
    seen: Arc<AtomicU64>,
    injected: Arc<AtomicU64>,
}

impl FaultRule {
    /// E.g. `FaultRule::new("GET /api/sandbox", Fault::Html(502), When::First(2))`.
    pub fn new(route: &str, fault: Fault, when: When) -> FaultRule {
        FaultRule { route: route.to_string(), fault, when, seen: Arc::default(), injected: Arc::default() }
    }

    /// How many calls this rule hit.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// The fault for this call, if the rule matches it and its turn has come.
    fn decide(&self, route_key: &str) -> Option<Fault> {
        if self.route != ANY_ROUTE && self.route != route_key {
            return None;
        }
        let ordinal = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        self.when.hits(ordinal).then(|| {
            self.injected.fetch_add(1, Ordering::SeqCst);
            self.fault.clone()
        })
    }
}

impl State {
    /// The fault of the first rule that fires for an API call on `route_key`
    /// (counted in the stats by what it does).
    pub(crate) fn rule_fault(&mut self, route_key: &str) -> Option<Fault> {
        let fault = self.config.rules.iter().find_map(|rule| rule.decide(route_key))?;
        *self.stats.injected_by_rule.entry(fault.to_string()).or_insert(0) += 1;
        Some(fault)
    }
}

/// A reverse proxy's error page, as nginx answers when the API behind it is down.
pub(crate) fn proxy_error_page(status: u16, reason: &str) -> String {
    format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n\
         <center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
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
