//! An in-process Daytona API server for benchwarden's tests and benchmarks.
//! It follows the Daytona API v0.190 as the official Python SDK 0.226.1 sees
//! it, listens on 127.0.0.1 (a random port unless told otherwise) and serves
//! HTTP/1.1 with keep-alive.
//!
//! This file is the public API: [`ContractServer`] (start, seed, inspect,
//! change the knobs, stop on drop), [`ContractConfig`], [`SeedSandbox`],
//! [`ContractStats`], [`RecordedRequest`] and the constants, and the server's
//! lifecycle (accepting connections, serving each until it closes or the
//! server stops). What the server does, by module:
//!
//! - `routing`: everything lives under `/api`; any other path answers the
//!   dashboard's HTML with 200. `Authorization: Bearer <key>` or 401
//!   `Invalid credentials` (before any rate limiting). Error bodies are
//!   `{"path","timestamp","statusCode","error","message"}`. The SDK's
//!   Socket.IO websocket (`GET /api/socket.io/…`) gets a 404, and the SDK
//!   falls back to polling. `GET /__contract/stats` (outside the API, not
//!   counted) answers [`ContractStats`] as JSON for out-of-process benchmarks.
//! - `paging`: `GET /api/sandbox` with cursor paging (`limit` 1-200, default
//!   100; an opaque base64 JSON cursor `{sortValue,id}`; a bad one is a 400),
//!   the `labels` JSON containment filter, `states` / `states[]` (no
//!   `destroyed`), `id` / `name` case-insensitive prefixes, `snapshots`,
//!   `regionIds`, min/max resources, `isPublic`, `isRecoverable`, the
//!   created-at and last-event windows, `sort` / `order`; or, with
//!   [`ContractConfig::legacy_list`], the pre-v0.180 bare `Sandbox[]`. And the
//!   deprecated `GET /api/sandbox/paginated` (page / limit / total /
//!   totalPages).
//! - `operations`: get, create, delete, stop, start, archive,
//!   `PUT …/labels`, `POST …/autostop|autoarchive|autodelete/{n}` (201, as
//!   NestJS answers a POST without `@HttpCode`), and
//!   `GET …/toolbox-proxy-url`. Create validates: duplicate name 409,
//!   resources without `buildInfo` 400, `autoStopInterval` /
//!   `autoArchiveInterval` below 0 400, `autoArchiveInterval` 0 or above the
//!   maximum becomes 43200; a new sandbox is `creating` for
//!   [`CREATING_PHASE`], then `started`. Delete is an async soft delete: 200
//!   with the sandbox shown `destroying` (or its raw state when archived or
//!   errored), renamed `DESTROYED_<name>_<epochMs>`, so a lookup by name
//!   fails at once; by id it answers until [`ContractConfig::destroy_delay`]
//!   has passed, then 404 `Sandbox with ID or name X not found`. A deleted
//!   `error` / `build_failed` sandbox is 404 at once and hidden from lists
//!   unless `includeErroredDeleted=true`. DELETE, stop, start or archive
//!   while a change is pending: 409 `Sandbox state change in progress`.
//! - `model`: Sandbox objects with integers as integers; list items leave
//!   out `env`, `volumes`, `buildInfo` and the allow lists. Two fields the
//!   v0.190 API spec lacks but the SDK 0.226.1 models require: `kvm` (bool)
//!   on a Sandbox, and `networkBlockAll` on list items too. The reported
//!   state is derived from the stored state and desiredState.
//! - `rate`: the throttlers `authenticated` (all authenticated routes except
//!   the lifecycle ones; fixed at [`AUTHENTICATED_LIMIT_PER_MINUTE`], Tier
//!   1), `sandbox-create` (`POST /api/sandbox`, which also counts against
//!   `authenticated`) and `sandbox-lifecycle` (delete, start, stop, archive),
//!   their `X-RateLimit-*` headers and 429s, and the per-minute and
//!   per-second windows that keep bursts from gaming a limit.
//! - `faults`: [`ContractConfig::latency`] before every answer,
//!   [`ContractConfig::error_rate_5xx`], [`ContractConfig::reset_rate`] and
//!   [`ContractServer::stick_in_destroying`] (lifted by
//!   [`ContractServer::unstick`]); and, for answers the contract
//!   does not promise, [`ContractConfig::rules`]: per route, the first N
//!   calls, every Nth or a share of them answered with a [`Fault`] (a 429
//!   whose `Retry-After-*` / `X-RateLimit-Reset-*` say `nan`, `inf`, `-1`,
//!   `1e309` or text; an empty body, 200 or 5xx; HTML instead of JSON, a
//!   proxy's 502 page or a 200 `text/html`; any status; a latency spike; a
//!   reset). With no rules (the default) the server keeps to the contract.
//! - `state` holds all of it behind one mutex; `query` reads query strings;
//!   `error` has the API errors the operations return.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod error;
mod faults;
mod model;
mod operations;
mod paging;
mod query;
mod rate;
mod routing;
mod state;

use faults::ConnectionReset;
pub use faults::{Fault, FaultRule, When, ANY_ROUTE};
use model::{new_uuid, Sandbox};
use state::Shared;

/// The `authenticated` throttler's limit (the documented Tier 1).
pub const AUTHENTICATED_LIMIT_PER_MINUTE: u32 = 10_000;
/// How long a new sandbox stays `creating` before it is `started`.
pub const CREATING_PHASE: Duration = Duration::from_millis(250);
/// How long stop, archive and a restore from archive take.
pub const TRANSITION: Duration = Duration::from_millis(100);
/// The organization every sandbox belongs to.
pub const ORGANIZATION_ID: &str = "5b2b8f0e-7c1d-4e37-9d55-0c0ffee0da7a";
/// `MAX_AUTO_ARCHIVE_INTERVAL`'s default, in minutes.
pub const MAX_AUTO_ARCHIVE_INTERVAL: i64 = 43_200;
/// The snapshot a sandbox gets when the create body names none.
pub const DEFAULT_SNAPSHOT: &str = "daytonaio/sandbox:0.4.3";
/// The region a sandbox gets when the create body names none.
pub const DEFAULT_TARGET: &str = "us";

pub const THROTTLER_AUTHENTICATED: &str = "authenticated";
pub const THROTTLER_CREATE: &str = "sandbox-create";
pub const THROTTLER_LIFECYCLE: &str = "sandbox-lifecycle";

/// The 22 values of `SandboxState`.
pub const SANDBOX_STATES: [&str; 22] = [
    "creating",
    "restoring",
    "destroyed",
    "destroying",
    "started",
    "stopped",
    "starting",
    "stopping",
    "error",
    "build_failed",
    "pending_build",
    "building_snapshot",
    "unknown",
    "pulling_snapshot",
    "archived",
    "archiving",
    "resizing",
    "snapshotting",
    "forking",
    "pausing",
    "paused",
    "resuming",
];

/// The server's knobs; [`ContractServer::set_config`] changes them at run time.
#[derive(Clone, Debug)]
pub struct ContractConfig {
    /// The one valid API key.
    pub api_key: String,
    /// Added before every answer.
    pub latency: Duration,
    /// The share of authenticated API calls answered 500 (0.0-1.0).
    pub error_rate_5xx: f64,
    /// The share of API calls whose connection is reset instead of answered (0.0-1.0).
    pub reset_rate: f64,
    /// `sandbox-lifecycle` limit per minute; `None` for no limit (and no headers).
    pub lifecycle_limit_per_minute: Option<u32>,
    /// `sandbox-create` limit per minute; `None` for no limit (and no headers).
    pub create_limit_per_minute: Option<u32>,
    /// Time from DELETE to `destroyed` (then 404).
    pub destroy_delay: Duration,
    /// Answer `GET /api/sandbox` with a bare `Sandbox[]` (pre-v0.180).
    pub legacy_list: bool,
    /// Answers the contract does not promise, by rule (see [`FaultRule`]);
    /// tried in order, the first that fires wins. None by default.
    pub rules: Vec<FaultRule>,
}

impl Default for ContractConfig {
    fn default() -> Self {
        ContractConfig {
            api_key: "test-key".to_string(),
            latency: Duration::ZERO,
            error_rate_5xx: 0.0,
            reset_rate: 0.0,
            lifecycle_limit_per_minute: None,
            create_limit_per_minute: None,
            destroy_delay: Duration::from_millis(200),
            legacy_list: false,
            rules: Vec::new(),
        }
    }
}

/// A sandbox to put on the server before a test.
#[derive(Clone, Debug)]
pub struct SeedSandbox {
    /// Defaults to the id.
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `started`, `stopped`, `error`, `build_failed`, `archived`, … Transitional
    /// states (`creating`, `stopping`, …) stay so for good (any change is a
    /// 409), except `destroying`, which ends `destroyed` after the destroy delay.
    pub state: String,
    pub created_at: SystemTime,
}

impl Default for SeedSandbox {
    fn default() -> Self {
        SeedSandbox { name: None, labels: BTreeMap::new(), state: "started".to_string(), created_at: SystemTime::now() }
    }
}

impl SeedSandbox {
    /// A started sandbox, created now, with these labels.
    pub fn labelled(labels: &[(&str, &str)]) -> SeedSandbox {
        SeedSandbox {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..SeedSandbox::default()
        }
    }

    pub fn with_state(mut self, state: &str) -> SeedSandbox {
        self.state = state.to_string();
        self
    }

    pub fn with_name(mut self, name: &str) -> SeedSandbox {
        self.name = Some(name.to_string());
        self
    }

    /// Created this long ago.
    pub fn aged(mut self, age: Duration) -> SeedSandbox {
        self.created_at = SystemTime::now() - age;
        self
    }
}

/// Counters since the server started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ContractStats {
    /// Every request, including refused and reset ones (not `/__contract/…`).
    pub requests: u64,
    /// By `"METHOD route"`, e.g. `"DELETE /api/sandbox/{idOrName}"`,
    /// `"GET /api/sandbox"`, `"GET /api/socket.io"`, `"GET (dashboard)"`.
    pub by_route: BTreeMap<String, u64>,
    /// 429s sent.
    pub throttled_429: u64,
    /// 429s by the throttler that refused (a request refused by two counts for both).
    pub throttled_by: BTreeMap<String, u64>,
    /// 401s sent.
    pub unauthorized_401: u64,
    /// 500s injected by `error_rate_5xx`.
    pub injected_5xx: u64,
    /// Connections reset by `reset_rate`.
    pub injected_resets: u64,
    /// Calls to [`ContractServer::stick_in_destroying`].
    pub stuck_in_destroying: u64,
    /// Calls hit by [`ContractConfig::rules`], by what the fault did (its
    /// `Display`, e.g. `"html 502"`, `"empty 200"`, `"429 retry-after=\"nan\" reset=\"nan\""`).
    pub injected_by_rule: BTreeMap<String, u64>,
    /// DELETEs answered 200 (including ones whose reply was then reset).
    pub deletes_accepted: u64,
    /// Sandboxes created through the API.
    pub creates: u64,
}

impl ContractStats {
    /// Requests seen for `"METHOD route"` (see [`ContractStats::by_route`]).
    pub fn route(&self, key: &str) -> u64 {
        self.by_route.get(key).copied().unwrap_or(0)
    }
}

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Header names lower-case, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status answered; `None` when the connection was reset instead.
    pub status: Option<u16>,
    /// The `"METHOD route"` key of [`ContractStats::by_route`].
    pub route: String,
}

impl RecordedRequest {
    /// The first value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The running server; dropping it stops it (and closes its connections).
pub struct ContractServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl Drop for ContractServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl ContractServer {
    /// Listens on 127.0.0.1 with a random port.
    pub async fn start(config: ContractConfig) -> ContractServer {
        Self::start_on(config, 0).await
    }

    /// Listens on 127.0.0.1:`port` (0 for a random one).
    pub async fn start_on(config: ContractConfig, port: u16) -> ContractServer {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("daytona contract server: cannot listen on 127.0.0.1:{port}: {e}"));
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared::new(config, addr));
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), shutdown.clone()));
        ContractServer { addr, shared, shutdown }
    }

    /// `http://127.0.0.1:PORT/api`, what `DAYTONA_API_URL` should be.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Puts a sandbox on the server; returns its id. Panics on a duplicate name.
    pub fn seed(&self, sandbox: SeedSandbox) -> String {
        let mut state = self.shared.lock();
        let now = Instant::now();
        state.tick(now);
        let id = new_uuid();
        let name = sandbox.name.clone().unwrap_or_else(|| id.clone());
        assert!(state.find_live_by_name(&name).is_none(), "seed: a sandbox named {name} already exists");
        let destroy_delay = state.config.destroy_delay;
        state.sandboxes.push(Sandbox::seeded(id.clone(), name, sandbox, now, destroy_delay));
        id
    }

    /// DELETE of this sandbox (before or after it) answers 200 as usual, but it
    /// never reaches `destroyed`.
    pub fn stick_in_destroying(&self, id: &str) {
        let mut state = self.shared.lock();
        state.tick(Instant::now());
        state.stick_in_destroying(id);
        state.stats.stuck_in_destroying += 1;
    }

    /// Lifts [`ContractServer::stick_in_destroying`]: an accepted delete
    /// completes (at once, when its destroy delay has passed).
    pub fn unstick(&self, id: &str) {
        let mut state = self.shared.lock();
        state.unstick(id);
        state.tick(Instant::now());
    }

    pub fn set_config(&self, f: impl FnOnce(&mut ContractConfig)) {
        f(&mut self.shared.lock().config);
    }

    pub fn config(&self) -> ContractConfig {
        self.shared.lock().config.clone()
    }

    /// Every sandbox not yet destroyed, as full Sandbox JSON (as GET shows it).
    pub fn sandboxes(&self) -> Vec<Value> {
        let mut state = self.shared.lock();
        state.tick(Instant::now());
        state.sandboxes.iter().filter(|sb| sb.state != "destroyed").map(|sb| state.sandbox_json(sb, true)).collect()
    }

    /// Whether a sandbox with this id exists and is not destroyed.
    pub fn exists(&self, id: &str) -> bool {
        let mut state = self.shared.lock();
        state.tick(Instant::now());
        state.sandboxes.iter().any(|sb| sb.id == id && sb.state != "destroyed")
    }

    pub fn stats(&self) -> ContractStats {
        self.shared.lock().stats.clone()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }
}

// ---------------------------------------------------------------------------
// Lifecycle: connections
// ---------------------------------------------------------------------------

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, shared.clone(), shutdown.clone()));
                }
                // Out of file descriptors and the like: wait instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// Serves one connection until the client closes it, the handler asks for a
/// reset (see `faults`), or the server stops.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let reset = Arc::new(ConnectionReset::of(&stream));
    let service = {
        let reset = reset.clone();
        service_fn(move |request| routing::handle(shared.clone(), reset.clone(), request))
    };
    let connection = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = &mut connection => {}
        _ = reset.requested() => reset.arm(),
        _ = shutdown.cancelled() => {}
    }
    // Dropping `connection` (and then `reset`, the last descriptor) closes the socket.
}
