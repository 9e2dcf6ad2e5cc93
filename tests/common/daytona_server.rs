//! An in-process Daytona API server that follows `../shared/daytona/CONTRACT.md`
//! (the v0.190 API as the official Python SDK 0.226.1 sees it), for tests and
//! benchmarks. It listens on 127.0.0.1 (a random port unless told otherwise)
//! and serves HTTP/1.1 with keep-alive.
//!
//! What it does, by the contract's sections:
//! - §1: everything lives under `/api`; any other path answers the
//!   dashboard's HTML with 200. `Authorization: Bearer <key>` or 401
//!   `Invalid credentials` (before any rate limiting).
//! - §2: `GET /api/sandbox` with cursor paging (`limit` 1-200, default 100;
//!   opaque base64 JSON cursor `{sortValue,id}`; a bad one is a 400), the
//!   `labels` JSON containment filter, `states` / `states[]` (no `destroyed`),
//!   `id` / `name` case-insensitive prefixes, `snapshots`, `regionIds`,
//!   min/max resources, `isPublic`, `isRecoverable`, the created-at and
//!   last-event windows, `sort` / `order`; or, with
//!   [`ContractConfig::legacy_list`], the pre-v0.180 bare `Sandbox[]`.
//!   `GET /api/sandbox/paginated` (page / limit / total / totalPages), get,
//!   create, delete, stop, start, archive, `PUT …/labels`,
//!   `POST …/autostop|autoarchive|autodelete/{n}` (201, as NestJS answers a
//!   POST without `@HttpCode`), and `GET …/toolbox-proxy-url`.
//! - §3: Sandbox objects with integers as integers; list items leave out
//!   `env`, `volumes`, `buildInfo` and the allow lists. Two additions the
//!   contract's v0.190 spec does not have but the SDK 0.226.1 models require:
//!   `kvm` (bool) on a Sandbox, and `networkBlockAll` on list items too.
//! - §4: the reported state is derived from state and desiredState.
//! - §5: create validation: duplicate name 409, resources without
//!   `buildInfo` 400, `autoStopInterval` / `autoArchiveInterval` below 0 400,
//!   `autoArchiveInterval` 0 or above the maximum becomes 43200. A new
//!   sandbox is `creating` for [`CREATING_PHASE`], then `started`.
//! - §6: error bodies `{"path","timestamp","statusCode","error","message"}`;
//!   the throttlers `authenticated` (all authenticated routes except the
//!   lifecycle ones; fixed at [`AUTHENTICATED_LIMIT_PER_MINUTE`], Tier 1),
//!   `sandbox-create` (`POST /api/sandbox`, which also counts against
//!   `authenticated`) and `sandbox-lifecycle` (delete, start, stop, archive).
//!   Each response carries `X-RateLimit-Limit-{name}`,
//!   `X-RateLimit-Remaining-{name}` and `X-RateLimit-Reset-{name}` for every
//!   throttler with a limit on its route; a 429 adds `Retry-After-{name}` and
//!   the body `ThrottlerException: Too Many Requests`.
//! - §7: delete is an async soft delete: 200 with the sandbox shown
//!   `destroying` (or its raw state when archived or errored), renamed
//!   `DESTROYED_<name>_<epochMs>`, so a lookup by name fails at once; by id it
//!   answers until [`ContractConfig::destroy_delay`] has passed, then 404
//!   `Sandbox with ID or name X not found`. A deleted `error` / `build_failed`
//!   sandbox is 404 at once and hidden from lists unless
//!   `includeErroredDeleted=true`. DELETE, stop, start or archive while a
//!   change is pending: 409 `Sandbox state change in progress`.
//!
//! Rate limits count per minute but cannot be gamed with bursts: a limit `L`
//! per minute is enforced as `L` per fixed 60 s window *and*
//! `ceil(L / 60)` per fixed 1 s window, so 6,000 a minute allows about 100
//! a second. `Remaining` and `Reset` describe whichever window is tighter,
//! and `Retry-After-{name}` is the seconds (at least 1) until the exhausted
//! window ends. Refused requests do not count.
//!
//! Faults: [`ContractConfig::latency`] before every answer;
//! [`ContractConfig::error_rate_5xx`] answers 500 (after auth and rate
//! limiting, before the operation, so it has no effect);
//! [`ContractConfig::reset_rate`] performs the operation and then resets the
//! TCP connection (SO_LINGER 0, so the client sees ECONNRESET) instead of
//! answering, like a reply lost on the way; [`ContractServer::stick_in_destroying`].
//!
//! The SDK's Socket.IO websocket (`GET /api/socket.io/…`) gets a 404, and the
//! SDK falls back to polling. `GET /__contract/stats` (outside the API, not
//! counted) answers [`ContractStats`] as JSON for out-of-process benchmarks.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

const DASHBOARD_HTML: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"UTF-8\" />\
<title>Daytona</title></head><body><div id=\"root\"></div></body></html>";

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

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
        let mut inner = self.shared.lock();
        let now = Instant::now();
        inner.tick(now);
        let id = new_uuid();
        let name = sandbox.name.unwrap_or_else(|| id.clone());
        assert!(inner.find_live_by_name(&name).is_none(), "seed: a sandbox named {name} already exists");
        let state = sandbox.state;
        let (desired, pending, transition_at) = match state.as_str() {
            "started" | "error" | "build_failed" | "unknown" => ("started", false, None),
            "stopped" => ("stopped", false, None),
            "archived" => ("archived", false, None),
            "paused" => ("paused", false, None),
            "destroyed" => ("destroyed", false, None),
            "destroying" => ("destroyed", true, Some(now + inner.config.destroy_delay)),
            "stopping" => ("stopped", true, None),
            "archiving" => ("archived", true, None),
            "pausing" => ("paused", true, None),
            _ => ("started", true, None),
        };
        let mut sb = Sandbox::new(id.clone(), name, sandbox.created_at);
        sb.labels = sandbox.labels;
        sb.state = state.clone();
        sb.desired = desired.to_string();
        sb.pending = pending;
        sb.transition_at = transition_at;
        if state == "error" || state == "build_failed" {
            sb.error_reason = Some(format!("seeded in state {state}"));
        }
        inner.sandboxes.push(sb);
        id
    }

    /// DELETE of this sandbox (before or after it) answers 200 as usual, but it
    /// never reaches `destroyed`.
    pub fn stick_in_destroying(&self, id: &str) {
        let mut inner = self.shared.lock();
        inner.tick(Instant::now());
        if let Some(sb) = inner.sandboxes.iter_mut().find(|sb| sb.id == id) {
            sb.stuck = true;
        }
    }

    pub fn set_config(&self, f: impl FnOnce(&mut ContractConfig)) {
        f(&mut self.shared.lock().config);
    }

    pub fn config(&self) -> ContractConfig {
        self.shared.lock().config.clone()
    }

    /// Every sandbox not yet destroyed, as full Sandbox JSON (as GET shows it).
    pub fn sandboxes(&self) -> Vec<Value> {
        let mut inner = self.shared.lock();
        inner.tick(Instant::now());
        inner.sandboxes.iter().filter(|sb| sb.state != "destroyed").map(|sb| inner.sandbox_json(sb, true)).collect()
    }

    /// Whether a sandbox with this id exists and is not destroyed.
    pub fn exists(&self, id: &str) -> bool {
        let mut inner = self.shared.lock();
        inner.tick(Instant::now());
        inner.sandboxes.iter().any(|sb| sb.id == id && sb.state != "destroyed")
    }

    pub fn stats(&self) -> ContractStats {
        self.shared.lock().stats.clone()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn new(config: ContractConfig, addr: SocketAddr) -> Shared {
        Shared {
            inner: Mutex::new(Inner {
                config,
                toolbox_proxy_url: format!("http://{addr}/toolbox"),
                sandboxes: Vec::new(),
                started: Instant::now(),
                windows: BTreeMap::new(),
                stats: ContractStats::default(),
                requests: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Inner {
    config: ContractConfig,
    toolbox_proxy_url: String,
    /// Insertion order; destroyed ones stay (never listed, never found).
    sandboxes: Vec<Sandbox>,
    started: Instant,
    /// Per throttler: (minute index, used), (second index, used).
    windows: BTreeMap<&'static str, Windows>,
    stats: ContractStats,
    requests: Vec<RecordedRequest>,
}

#[derive(Default, Clone, Copy)]
struct Windows {
    minute: (u64, u32),
    second: (u64, u32),
}

#[derive(Clone, Debug)]
struct Sandbox {
    id: String,
    name: String,
    labels: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    user: String,
    snapshot: Option<String>,
    target: String,
    public: bool,
    network_block_all: bool,
    network_allow_list: Option<String>,
    domain_allow_list: Option<String>,
    kvm: bool,
    cpu: i64,
    gpu: i64,
    memory: i64,
    disk: i64,
    /// The stored state (what a state filter matches).
    state: String,
    desired: String,
    pending: bool,
    error_reason: Option<String>,
    auto_stop: i64,
    auto_archive: i64,
    auto_delete: i64,
    volumes: Vec<Value>,
    build_info: Option<Value>,
    created_at: SystemTime,
    updated_at: SystemTime,
    last_activity_at: SystemTime,
    /// When the pending change completes (state becomes the desired one).
    transition_at: Option<Instant>,
    /// Never completes a destroy.
    stuck: bool,
}

impl Sandbox {
    fn new(id: String, name: String, created_at: SystemTime) -> Sandbox {
        Sandbox {
            id,
            name,
            labels: BTreeMap::new(),
            env: BTreeMap::new(),
            user: "daytona".to_string(),
            snapshot: Some(DEFAULT_SNAPSHOT.to_string()),
            target: DEFAULT_TARGET.to_string(),
            public: false,
            network_block_all: false,
            network_allow_list: None,
            domain_allow_list: None,
            kvm: false,
            cpu: 2,
            gpu: 0,
            memory: 4,
            disk: 10,
            state: "started".to_string(),
            desired: "started".to_string(),
            pending: false,
            error_reason: None,
            auto_stop: 15,
            auto_archive: 10_080,
            auto_delete: -1,
            volumes: Vec::new(),
            build_info: None,
            created_at,
            updated_at: created_at,
            last_activity_at: created_at,
            transition_at: None,
            stuck: false,
        }
    }

    /// The state as the API reports it (contract §4).
    fn shown_state(&self) -> &str {
        match (self.state.as_str(), self.desired.as_str()) {
            ("started", "stopped") => "stopping",
            ("started" | "stopped", "destroyed") => "destroying",
            ("stopped", "started") => "starting",
            ("stopped", "archived") => "archiving",
            ("unknown", "started") => "creating",
            (state, _) => state,
        }
    }

    fn errored(&self) -> bool {
        self.state == "error" || self.state == "build_failed"
    }

    /// An errored sandbox whose delete was accepted: 404 at once, hidden from lists.
    fn errored_deleted(&self) -> bool {
        self.errored() && self.desired == "destroyed"
    }

    /// What GET and DELETE by id or name can find.
    fn findable(&self) -> bool {
        self.state != "destroyed" && !self.errored_deleted()
    }

    fn touch(&mut self) {
        self.updated_at = SystemTime::now();
    }
}

impl Inner {
    /// Completes the pending changes that are due.
    fn tick(&mut self, now: Instant) {
        for sb in &mut self.sandboxes {
            let Some(at) = sb.transition_at else { continue };
            if at > now || (sb.stuck && sb.desired == "destroyed") {
                continue;
            }
            sb.state = sb.desired.clone();
            if sb.desired == "started" {
                sb.last_activity_at = SystemTime::now();
            }
            sb.pending = false;
            sb.transition_at = None;
            sb.touch();
        }
    }

    fn find(&self, id_or_name: &str) -> Option<usize> {
        self.sandboxes
            .iter()
            .position(|sb| sb.findable() && sb.id == id_or_name)
            .or_else(|| self.sandboxes.iter().position(|sb| sb.findable() && sb.name == id_or_name))
    }

    fn find_live_by_name(&self, name: &str) -> Option<usize> {
        self.sandboxes.iter().position(|sb| sb.state != "destroyed" && sb.name == name)
    }

    fn sandbox_json(&self, sb: &Sandbox, full: bool) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(sb.id));
        m.insert("organizationId".into(), json!(ORGANIZATION_ID));
        m.insert("name".into(), json!(sb.name));
        m.insert("snapshot".into(), json!(sb.snapshot));
        m.insert("user".into(), json!(sb.user));
        if full {
            m.insert("env".into(), json!(sb.env));
        }
        m.insert("labels".into(), json!(sb.labels));
        m.insert("public".into(), json!(sb.public));
        m.insert("networkBlockAll".into(), json!(sb.network_block_all));
        if full {
            m.insert("kvm".into(), json!(sb.kvm));
            if let Some(list) = &sb.network_allow_list {
                m.insert("networkAllowList".into(), json!(list));
            }
            if let Some(list) = &sb.domain_allow_list {
                m.insert("domainAllowList".into(), json!(list));
            }
        }
        m.insert("target".into(), json!(sb.target));
        m.insert("cpu".into(), json!(sb.cpu));
        m.insert("gpu".into(), json!(sb.gpu));
        m.insert("memory".into(), json!(sb.memory));
        m.insert("disk".into(), json!(sb.disk));
        m.insert("state".into(), json!(sb.shown_state()));
        m.insert("desiredState".into(), json!(sb.desired));
        m.insert("errorReason".into(), json!(sb.error_reason));
        m.insert("recoverable".into(), json!(false));
        m.insert("backupState".into(), json!("None"));
        m.insert("autoStopInterval".into(), json!(sb.auto_stop));
        m.insert("autoArchiveInterval".into(), json!(sb.auto_archive));
        m.insert("autoDeleteInterval".into(), json!(sb.auto_delete));
        if full {
            m.insert("volumes".into(), Value::Array(sb.volumes.clone()));
            if let Some(info) = &sb.build_info {
                m.insert("buildInfo".into(), info.clone());
            }
        }
        m.insert("createdAt".into(), json!(iso(sb.created_at)));
        m.insert("updatedAt".into(), json!(iso(sb.updated_at)));
        m.insert("lastActivityAt".into(), json!(iso(sb.last_activity_at)));
        m.insert("sandboxClass".into(), json!("container"));
        m.insert("daemonVersion".into(), json!("0.190.0"));
        m.insert("runnerId".into(), json!("runner-contract-1"));
        m.insert("toolboxProxyUrl".into(), json!(self.toolbox_proxy_url));
        Value::Object(m)
    }
}

// ---------------------------------------------------------------------------
// Connections
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

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    // A second descriptor of the same socket, to set SO_LINGER 0 on a reset
    // while hyper owns the stream.
    let socket = stream.as_fd().try_clone_to_owned().ok();
    let reset = Arc::new(Notify::new());
    let service = {
        let reset = reset.clone();
        service_fn(move |request| handle(shared.clone(), reset.clone(), request))
    };
    let connection = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = &mut connection => {}
        _ = reset.notified() => {
            // Closing with a zero linger sends RST instead of FIN: the client
            // gets ECONNRESET with no answer.
            if let Some(socket) = &socket {
                let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
            }
        }
        _ = shutdown.cancelled() => {}
    }
    // Dropping `connection` (and `socket`) closes the socket.
}

type Reply = Response<Full<Bytes>>;

async fn handle(shared: Arc<Shared>, reset: Arc<Notify>, request: Request<Incoming>) -> Result<Reply, Infallible> {
    let method = request.method().as_str().to_string();
    let path_and_query = request.uri().path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_default();
    let path = request.uri().path().to_string();
    let query = Query::parse(request.uri().query().unwrap_or(""));
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };

    if path == "/__contract/stats" {
        let stats = shared.lock().stats.clone();
        return Ok(json_response(200, &serde_json::to_value(stats).unwrap_or(Value::Null), &[]));
    }

    let route = Route::parse(&method, &path);
    let route_key = route.key(&method);
    let latency = {
        let mut inner = shared.lock();
        inner.stats.requests += 1;
        *inner.stats.by_route.entry(route_key.clone()).or_insert(0) += 1;
        inner.config.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let reply = {
        let mut inner = shared.lock();
        let now = Instant::now();
        inner.tick(now);
        let call = Call { method: &method, path_and_query: &path_and_query, query: &query, body: &body };
        let outcome = respond(&mut inner, &route, &call, &headers, now);
        let reply = match outcome {
            Outcome::Reset => {
                inner.stats.injected_resets += 1;
                None
            }
            Outcome::Reply(reply) => Some(reply),
        };
        inner.requests.push(RecordedRequest {
            method,
            path: path_and_query,
            headers,
            body,
            status: reply.as_ref().map(|r| r.status().as_u16()),
            route: route_key,
        });
        reply
    };
    match reply {
        Some(reply) => Ok(reply),
        None => {
            reset.notify_one();
            // The connection task drops this connection; never answer.
            let never: Infallible = std::future::pending().await;
            match never {}
        }
    }
}

enum Outcome {
    Reply(Reply),
    Reset,
}

struct Call<'a> {
    method: &'a str,
    path_and_query: &'a str,
    query: &'a Query,
    body: &'a [u8],
}

/// The routes the server knows; `{x}` is an id or name.
enum Route {
    Dashboard,
    SocketIo,
    Unknown,
    List,
    Paginated,
    Create,
    Get(String),
    Delete(String),
    Lifecycle(String, &'static str),
    Labels(String),
    AutoInterval(String, &'static str, String),
    ToolboxProxyUrl(String),
}

impl Route {
    fn parse(method: &str, path: &str) -> Route {
        let Some(rest) = path.strip_prefix("/api") else { return Route::Dashboard };
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Route::Dashboard;
        }
        let rest = rest.trim_end_matches('/');
        let segments: Vec<String> = rest.split('/').skip(1).map(percent_decode).collect();
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (method, segs.as_slice()) {
            (_, ["socket.io", ..]) => Route::SocketIo,
            ("GET", ["sandbox"]) => Route::List,
            ("POST", ["sandbox"]) => Route::Create,
            ("GET", ["sandbox", "paginated"]) => Route::Paginated,
            ("GET", ["sandbox", x]) => Route::Get(x.to_string()),
            ("DELETE", ["sandbox", x]) => Route::Delete(x.to_string()),
            ("POST", ["sandbox", x, "stop"]) => Route::Lifecycle(x.to_string(), "stop"),
            ("POST", ["sandbox", x, "start"]) => Route::Lifecycle(x.to_string(), "start"),
            ("POST", ["sandbox", x, "archive"]) => Route::Lifecycle(x.to_string(), "archive"),
            ("PUT", ["sandbox", x, "labels"]) => Route::Labels(x.to_string()),
            ("POST", ["sandbox", x, "autostop", n]) => Route::AutoInterval(x.to_string(), "autostop", n.to_string()),
            ("POST", ["sandbox", x, "autoarchive", n]) => {
                Route::AutoInterval(x.to_string(), "autoarchive", n.to_string())
            }
            ("POST", ["sandbox", x, "autodelete", n]) => {
                Route::AutoInterval(x.to_string(), "autodelete", n.to_string())
            }
            ("GET", ["sandbox", x, "toolbox-proxy-url"]) => Route::ToolboxProxyUrl(x.to_string()),
            _ => Route::Unknown,
        }
    }

    fn key(&self, method: &str) -> String {
        let route = match self {
            Route::Dashboard => "(dashboard)",
            Route::SocketIo => "/api/socket.io",
            Route::Unknown => "(unknown)",
            Route::List => "/api/sandbox",
            Route::Paginated => "/api/sandbox/paginated",
            Route::Create => "/api/sandbox",
            Route::Get(_) | Route::Delete(_) => "/api/sandbox/{idOrName}",
            Route::Lifecycle(_, "stop") => "/api/sandbox/{idOrName}/stop",
            Route::Lifecycle(_, "start") => "/api/sandbox/{idOrName}/start",
            Route::Lifecycle(_, _) => "/api/sandbox/{idOrName}/archive",
            Route::Labels(_) => "/api/sandbox/{idOrName}/labels",
            Route::AutoInterval(_, "autostop", _) => "/api/sandbox/{idOrName}/autostop/{interval}",
            Route::AutoInterval(_, "autoarchive", _) => "/api/sandbox/{idOrName}/autoarchive/{interval}",
            Route::AutoInterval(_, _, _) => "/api/sandbox/{idOrName}/autodelete/{interval}",
            Route::ToolboxProxyUrl(_) => "/api/sandbox/{sandboxId}/toolbox-proxy-url",
        };
        format!("{method} {route}")
    }

    /// The throttlers that apply (contract §6).
    fn throttlers(&self) -> &'static [&'static str] {
        match self {
            Route::Dashboard | Route::SocketIo | Route::Unknown => &[],
            Route::Create => &[THROTTLER_AUTHENTICATED, THROTTLER_CREATE],
            Route::Delete(_) | Route::Lifecycle(_, _) => &[THROTTLER_LIFECYCLE],
            _ => &[THROTTLER_AUTHENTICATED],
        }
    }
}

/// An API error: status and message (arrays already joined with ", ").
struct ApiError(u16, String);

type ApiResult = Result<(u16, Value), ApiError>;

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(400, message.into())
}

fn not_found(id_or_name: &str) -> ApiError {
    ApiError(404, format!("Sandbox with ID or name {id_or_name} not found"))
}

fn in_progress() -> ApiError {
    ApiError(409, "Sandbox state change in progress".to_string())
}

fn respond(inner: &mut Inner, route: &Route, call: &Call, headers: &[(String, String)], now: Instant) -> Outcome {
    let path = call.path_and_query;
    match route {
        Route::Dashboard => {
            let mut response = Response::new(Full::new(Bytes::from_static(DASHBOARD_HTML.as_bytes())));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            return Outcome::Reply(response);
        }
        Route::SocketIo | Route::Unknown => {
            let message = format!("Cannot {} {}", call.method, path.split('?').next().unwrap_or(path));
            return Outcome::Reply(error_response(404, path, &message, &[]));
        }
        _ => {}
    }

    let authorized = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .any(|(_, v)| v.strip_prefix("Bearer ").is_some_and(|key| key.trim() == inner.config.api_key));
    if !authorized {
        inner.stats.unauthorized_401 += 1;
        return Outcome::Reply(error_response(401, path, "Invalid credentials", &[]));
    }

    // Rate limiting: check every throttler of the route, then count in all.
    let mut rate_headers: Vec<(String, String)> = Vec::new();
    let mut refused: Vec<(&'static str, u64)> = Vec::new();
    let mut checks = Vec::new();
    for &name in route.throttlers() {
        let Some(limit) = inner.limit_of(name) else { continue };
        let check = inner.check_window(name, limit, now);
        if check.remaining == 0 {
            refused.push((name, check.retry_after));
        }
        checks.push((name, limit, check));
    }
    if !refused.is_empty() {
        for (name, limit, check) in &checks {
            rate_headers.push((format!("X-RateLimit-Limit-{name}"), limit.to_string()));
            rate_headers.push((format!("X-RateLimit-Remaining-{name}"), check.remaining.to_string()));
            rate_headers.push((format!("X-RateLimit-Reset-{name}"), check.reset.to_string()));
        }
        inner.stats.throttled_429 += 1;
        for (name, retry_after) in &refused {
            rate_headers.push((format!("Retry-After-{name}"), retry_after.to_string()));
            *inner.stats.throttled_by.entry(name.to_string()).or_insert(0) += 1;
        }
        return Outcome::Reply(error_response(429, path, "ThrottlerException: Too Many Requests", &rate_headers));
    }
    for (name, limit, _) in &checks {
        let check = inner.consume_window(name, *limit, now);
        rate_headers.push((format!("X-RateLimit-Limit-{name}"), limit.to_string()));
        rate_headers.push((format!("X-RateLimit-Remaining-{name}"), check.remaining.to_string()));
        rate_headers.push((format!("X-RateLimit-Reset-{name}"), check.reset.to_string()));
    }

    if inner.config.error_rate_5xx > 0.0 && fastrand::f64() < inner.config.error_rate_5xx {
        inner.stats.injected_5xx += 1;
        return Outcome::Reply(error_response(500, path, "Internal server error", &rate_headers));
    }

    let result = match route {
        Route::List if inner.config.legacy_list => list_legacy(inner, call.query),
        Route::List => list_cursor(inner, call.query),
        Route::Paginated => list_paginated(inner, call.query),
        Route::Create => create(inner, call.body, now),
        Route::Get(x) => match inner.find(x) {
            Some(i) => Ok((200, inner.sandbox_json(&inner.sandboxes[i], true))),
            None => Err(not_found(x)),
        },
        Route::Delete(x) => delete(inner, x, now),
        Route::Lifecycle(x, op) => lifecycle(inner, x, op, now),
        Route::Labels(x) => put_labels(inner, x, call.body),
        Route::AutoInterval(x, which, n) => auto_interval(inner, x, which, n),
        Route::ToolboxProxyUrl(x) => match inner.find(x) {
            Some(_) => Ok((200, json!({ "url": inner.toolbox_proxy_url }))),
            None => Err(not_found(x)),
        },
        Route::Dashboard | Route::SocketIo | Route::Unknown => unreachable!(),
    };

    if inner.config.reset_rate > 0.0 && fastrand::f64() < inner.config.reset_rate {
        return Outcome::Reset;
    }
    Outcome::Reply(match result {
        Ok((status, body)) => json_response(status, &body, &rate_headers),
        Err(ApiError(status, message)) => error_response(status, path, &message, &rate_headers),
    })
}

// ---------------------------------------------------------------------------
// Rate limiting
// ---------------------------------------------------------------------------

struct WindowCheck {
    remaining: u32,
    /// Seconds until the tighter window ends.
    reset: u64,
    /// Seconds until every exhausted window has ended (meaningful when remaining is 0).
    retry_after: u64,
}

impl Inner {
    fn limit_of(&self, name: &str) -> Option<u32> {
        match name {
            THROTTLER_AUTHENTICATED => Some(AUTHENTICATED_LIMIT_PER_MINUTE),
            THROTTLER_CREATE => self.config.create_limit_per_minute,
            THROTTLER_LIFECYCLE => self.config.lifecycle_limit_per_minute,
            _ => None,
        }
    }

    fn current_windows(&mut self, name: &'static str, now: Instant) -> (Windows, Duration) {
        let elapsed = now.saturating_duration_since(self.started);
        let minute = elapsed.as_secs() / 60;
        let second = elapsed.as_secs();
        let windows = self.windows.entry(name).or_default();
        if windows.minute.0 != minute {
            windows.minute = (minute, 0);
        }
        if windows.second.0 != second {
            windows.second = (second, 0);
        }
        (*windows, elapsed)
    }

    fn check_window(&mut self, name: &'static str, limit: u32, now: Instant) -> WindowCheck {
        let (windows, elapsed) = self.current_windows(name, now);
        window_check(windows, elapsed, limit)
    }

    fn consume_window(&mut self, name: &'static str, limit: u32, now: Instant) -> WindowCheck {
        let (_, elapsed) = self.current_windows(name, now);
        let windows = self.windows.get_mut(name).expect("windows exist");
        windows.minute.1 += 1;
        windows.second.1 += 1;
        window_check(*windows, elapsed, limit)
    }
}

fn window_check(windows: Windows, elapsed: Duration, limit: u32) -> WindowCheck {
    let per_second = limit.div_ceil(60).max(1);
    let minute_left = limit.saturating_sub(windows.minute.1);
    let second_left = per_second.saturating_sub(windows.second.1);
    let secs_to = |end: Duration| -> u64 { end.saturating_sub(elapsed).as_secs_f64().ceil().max(1.0) as u64 };
    let minute_end = Duration::from_secs((windows.minute.0 + 1) * 60);
    let second_end = Duration::from_secs(windows.second.0 + 1);
    let (remaining, reset) =
        if minute_left < second_left { (minute_left, secs_to(minute_end)) } else { (second_left, secs_to(second_end)) };
    let mut retry_after = 1;
    if minute_left == 0 {
        retry_after = retry_after.max(secs_to(minute_end));
    }
    if second_left == 0 {
        retry_after = retry_after.max(secs_to(second_end));
    }
    WindowCheck { remaining, reset, retry_after }
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

/// Visible to lists: never destroyed; errored-and-deleted only when asked.
fn listable(sb: &Sandbox, include_errored_deleted: bool) -> bool {
    sb.state != "destroyed" && (include_errored_deleted || !sb.errored_deleted())
}

/// The filters both list endpoints share.
struct Filters {
    id: Option<String>,
    name: Option<String>,
    labels: Option<Map<String, Value>>,
    include_errored_deleted: bool,
    states: Option<BTreeSet<String>>,
    snapshots: Option<BTreeSet<String>>,
    regions: Option<BTreeSet<String>>,
    min_cpu: Option<i64>,
    max_cpu: Option<i64>,
    min_memory: Option<i64>,
    max_memory: Option<i64>,
    min_disk: Option<i64>,
    max_disk: Option<i64>,
    is_public: Option<bool>,
    is_recoverable: Option<bool>,
    created_after: Option<SystemTime>,
    created_before: Option<SystemTime>,
    last_event_after: Option<SystemTime>,
    last_event_before: Option<SystemTime>,
}

impl Filters {
    fn parse(query: &Query, regions_key: &str) -> Result<Filters, ApiError> {
        let mut errors = Vec::new();
        let labels = match query.get("labels") {
            None | Some("") => None,
            Some(raw) => match serde_json::from_str::<Value>(raw) {
                Ok(Value::Object(map)) => Some(map),
                _ => return Err(bad_request("Invalid labels JSON format")),
            },
        };
        let states = query.list("states");
        if let Some(states) = &states {
            let allowed: Vec<&str> = SANDBOX_STATES.iter().copied().filter(|s| *s != "destroyed").collect();
            if states.iter().any(|s| !allowed.contains(&s.as_str())) {
                errors
                    .push(format!("each value in states must be one of the following values: {}", allowed.join(", ")));
            }
        }
        let mut int = |key: &str| -> Option<i64> {
            let raw = query.get(key)?;
            match raw.parse::<i64>() {
                Ok(n) if n >= 1 => Some(n),
                Ok(_) => {
                    errors.push(format!("{key} must not be less than 1"));
                    None
                }
                Err(_) => {
                    errors.push(format!("{key} must be an integer number"));
                    None
                }
            }
        };
        let (min_cpu, max_cpu) = (int("minCpu"), int("maxCpu"));
        let (min_memory, max_memory) = (int("minMemoryGiB"), int("maxMemoryGiB"));
        let (min_disk, max_disk) = (int("minDiskGiB"), int("maxDiskGiB"));
        let mut date = |key: &str| -> Option<SystemTime> {
            let raw = query.get(key)?;
            match humantime::parse_rfc3339_weak(raw.trim_end_matches('Z')) {
                Ok(t) => Some(t),
                Err(_) => {
                    errors.push(format!("{key} must be a valid ISO 8601 date string"));
                    None
                }
            }
        };
        let (created_after, created_before) = (date("createdAtAfter"), date("createdAtBefore"));
        let (last_event_after, last_event_before) = (date("lastEventAfter"), date("lastEventBefore"));
        if !errors.is_empty() {
            return Err(bad_request(errors.join(", ")));
        }
        Ok(Filters {
            id: query.get("id").filter(|s| !s.is_empty()).map(str::to_lowercase),
            name: query.get("name").filter(|s| !s.is_empty()).map(str::to_lowercase),
            labels,
            include_errored_deleted: query.get("includeErroredDeleted") == Some("true"),
            states,
            snapshots: query.list("snapshots"),
            regions: query.list(regions_key),
            min_cpu,
            max_cpu,
            min_memory,
            max_memory,
            min_disk,
            max_disk,
            is_public: query.get("isPublic").map(|v| v == "true"),
            is_recoverable: query.get("isRecoverable").map(|v| v == "true"),
            created_after,
            created_before,
            last_event_after,
            last_event_before,
        })
    }

    fn matches(&self, sb: &Sandbox) -> bool {
        if !listable(sb, self.include_errored_deleted) {
            return false;
        }
        if let Some(prefix) = &self.id {
            if !sb.id.to_lowercase().starts_with(prefix) {
                return false;
            }
        }
        if let Some(prefix) = &self.name {
            if !sb.name.to_lowercase().starts_with(prefix) {
                return false;
            }
        }
        if let Some(labels) = &self.labels {
            // JSONB containment: every pair of the filter is in the sandbox's labels.
            let contained =
                labels.iter().all(|(k, v)| v.as_str().is_some_and(|v| sb.labels.get(k).is_some_and(|x| x == v)));
            if !contained {
                return false;
            }
        }
        if self.states.as_ref().is_some_and(|states| !states.contains(&sb.state)) {
            return false;
        }
        if self.snapshots.as_ref().is_some_and(|s| !sb.snapshot.as_ref().is_some_and(|snap| s.contains(snap))) {
            return false;
        }
        if self.regions.as_ref().is_some_and(|r| !r.contains(&sb.target)) {
            return false;
        }
        let within =
            |v: i64, min: Option<i64>, max: Option<i64>| min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m);
        if !within(sb.cpu, self.min_cpu, self.max_cpu)
            || !within(sb.memory, self.min_memory, self.max_memory)
            || !within(sb.disk, self.min_disk, self.max_disk)
        {
            return false;
        }
        if self.is_public.is_some_and(|p| p != sb.public) || self.is_recoverable.is_some_and(|r| r) {
            return false;
        }
        let in_window = |t: SystemTime, after: Option<SystemTime>, before: Option<SystemTime>| {
            after.is_none_or(|a| t >= a) && before.is_none_or(|b| t <= b)
        };
        in_window(sb.created_at, self.created_after, self.created_before)
            && in_window(sb.last_activity_at, self.last_event_after, self.last_event_before)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SortValue {
    Num(i64),
    Str(String),
}

impl SortValue {
    fn to_json(&self) -> Value {
        match self {
            SortValue::Num(n) => json!(n),
            SortValue::Str(s) => json!(s),
        }
    }

    fn from_json(value: &Value) -> Option<SortValue> {
        match value {
            Value::Number(n) => n.as_i64().map(SortValue::Num),
            Value::String(s) => Some(SortValue::Str(s.clone())),
            _ => None,
        }
    }
}

fn sort_value(sb: &Sandbox, field: &str) -> SortValue {
    match field {
        "id" => SortValue::Str(sb.id.clone()),
        "name" => SortValue::Str(sb.name.clone()),
        "state" => SortValue::Str(sb.state.clone()),
        "snapshot" => SortValue::Str(sb.snapshot.clone().unwrap_or_default()),
        "region" => SortValue::Str(sb.target.clone()),
        "cpu" => SortValue::Num(sb.cpu),
        "memoryGib" => SortValue::Num(sb.memory),
        "diskGib" => SortValue::Num(sb.disk),
        "createdAt" => SortValue::Str(iso(sb.created_at)),
        "updatedAt" => SortValue::Str(iso(sb.updated_at)),
        _ => SortValue::Str(iso(sb.last_activity_at)),
    }
}

fn parse_limit(query: &Query, errors: &mut Vec<String>) -> usize {
    match query.get("limit") {
        None => 100,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if n < 1 => {
                errors.push("limit must not be less than 1".to_string());
                100
            }
            Ok(n) if n > 200 => {
                errors.push("limit must not be greater than 200".to_string());
                100
            }
            Ok(n) => n as usize,
            Err(_) => {
                errors.push("limit must be an integer number".to_string());
                100
            }
        },
    }
}

fn parse_enum<'q>(
    query: &'q Query,
    key: &str,
    allowed: &[&str],
    default: &'q str,
    errors: &mut Vec<String>,
) -> &'q str {
    match query.get(key) {
        None => default,
        Some(v) if allowed.contains(&v) => v,
        Some(_) => {
            errors.push(format!("{key} must be one of the following values: {}", allowed.join(", ")));
            default
        }
    }
}

/// `GET /api/sandbox` since v0.180: `{"items": SandboxListItem[], "nextCursor"}`.
fn list_cursor(inner: &Inner, query: &Query) -> ApiResult {
    let mut errors = Vec::new();
    let limit = parse_limit(query, &mut errors);
    let sort_fields = ["name", "cpu", "memoryGib", "diskGib", "lastActivityAt", "createdAt"];
    let sort = parse_enum(query, "sort", &sort_fields, "lastActivityAt", &mut errors).to_string();
    let order = parse_enum(query, "order", &["asc", "desc"], "desc", &mut errors).to_string();
    if !errors.is_empty() {
        return Err(bad_request(errors.join(", ")));
    }
    let filters = Filters::parse(query, "regionIds")?;
    let after = match query.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| bad_request("Invalid cursor"))?),
    };

    let mut rows: Vec<(SortValue, &Sandbox)> =
        inner.sandboxes.iter().filter(|sb| filters.matches(sb)).map(|sb| (sort_value(sb, &sort), sb)).collect();
    let descending = order == "desc";
    rows.sort_by(|(a, x), (b, y)| {
        let ordering = a.cmp(b).then_with(|| x.id.cmp(&y.id));
        if descending {
            ordering.reverse()
        } else {
            ordering
        }
    });
    if let Some((value, id)) = &after {
        let key = (value.clone(), id.clone());
        rows.retain(|(v, sb)| {
            let row = (v.clone(), sb.id.clone());
            if descending {
                row < key
            } else {
                row > key
            }
        });
    }
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = match (more, rows.last()) {
        (true, Some((value, sb))) => json!(encode_cursor(value, &sb.id)),
        _ => Value::Null,
    };
    let items: Vec<Value> = rows.iter().map(|(_, sb)| inner.sandbox_json(sb, false)).collect();
    Ok((200, json!({ "items": items, "nextCursor": next_cursor })))
}

/// `GET /api/sandbox` before v0.180: a bare `Sandbox[]`, newest first.
fn list_legacy(inner: &Inner, query: &Query) -> ApiResult {
    let labels = match query.get("labels") {
        None | Some("") => None,
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(map)) => Some(map),
            _ => return Err(bad_request("Invalid labels JSON format")),
        },
    };
    let include = query.get("includeErroredDeleted") == Some("true");
    let mut rows: Vec<&Sandbox> = inner
        .sandboxes
        .iter()
        .filter(|sb| listable(sb, include))
        .filter(|sb| {
            labels.as_ref().is_none_or(|labels| {
                labels.iter().all(|(k, v)| v.as_str().is_some_and(|v| sb.labels.get(k).is_some_and(|x| x == v)))
            })
        })
        .collect();
    rows.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
    Ok((200, Value::Array(rows.iter().map(|sb| inner.sandbox_json(sb, true)).collect())))
}

/// `GET /api/sandbox/paginated` (deprecated): page numbers and totals.
fn list_paginated(inner: &Inner, query: &Query) -> ApiResult {
    let mut errors = Vec::new();
    let limit = parse_limit(query, &mut errors);
    let page = match query.get("page") {
        None => 1,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if n >= 1 => n as usize,
            Ok(_) => {
                errors.push("page must not be less than 1".to_string());
                1
            }
            Err(_) => {
                errors.push("page must be an integer number".to_string());
                1
            }
        },
    };
    let sort_fields = ["id", "name", "state", "snapshot", "region", "updatedAt", "createdAt", "lastActivityAt"];
    let sort = parse_enum(query, "sort", &sort_fields, "createdAt", &mut errors).to_string();
    let order = parse_enum(query, "order", &["asc", "desc"], "desc", &mut errors).to_string();
    if !errors.is_empty() {
        return Err(bad_request(errors.join(", ")));
    }
    let filters = Filters::parse(query, "regions")?;
    let mut rows: Vec<(SortValue, &Sandbox)> =
        inner.sandboxes.iter().filter(|sb| filters.matches(sb)).map(|sb| (sort_value(sb, &sort), sb)).collect();
    rows.sort_by(|(a, x), (b, y)| {
        let ordering = a.cmp(b).then_with(|| x.id.cmp(&y.id));
        if order == "desc" {
            ordering.reverse()
        } else {
            ordering
        }
    });
    let total = rows.len();
    let items: Vec<Value> =
        rows.iter().skip((page - 1) * limit).take(limit).map(|(_, sb)| inner.sandbox_json(sb, true)).collect();
    Ok((200, json!({ "items": items, "total": total, "page": page, "totalPages": total.div_ceil(limit) })))
}

fn encode_cursor(value: &SortValue, id: &str) -> String {
    let json = json!({ "sortValue": value.to_json(), "id": id }).to_string();
    base64::engine::general_purpose::STANDARD.encode(json)
}

fn decode_cursor(cursor: &str) -> Option<(SortValue, String)> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let bytes = [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(cursor).ok())?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    let sort_value = SortValue::from_json(value.get("sortValue")?)?;
    let id = value.get("id")?.as_str()?.to_string();
    Some((sort_value, id))
}

/// An optional integer field of a create body; `Err` for a non-integer.
fn int_field(body: &Map<String, Value>, key: &str, errors: &mut Vec<String>) -> Option<i64> {
    match body.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Some(i),
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 => Some(f as i64),
                _ => {
                    errors.push(format!("{key} must be an integer number"));
                    None
                }
            },
        },
        Some(_) => {
            errors.push(format!("{key} must be an integer number"));
            None
        }
    }
}

fn string_map(body: &Map<String, Value>, key: &str, errors: &mut Vec<String>) -> BTreeMap<String, String> {
    match body.get(key) {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => {
            let mut out = BTreeMap::new();
            for (k, v) in map {
                match v {
                    Value::String(s) => {
                        out.insert(k.clone(), s.clone());
                    }
                    _ => {
                        errors.push(format!("{key} must be an object of strings"));
                        break;
                    }
                }
            }
            out
        }
        Some(_) => {
            errors.push(format!("{key} must be an object"));
            BTreeMap::new()
        }
    }
}

fn string_field(body: &Map<String, Value>, key: &str, errors: &mut Vec<String>) -> Option<String> {
    match body.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(format!("{key} must be a string"));
            None
        }
    }
}

fn bool_field(body: &Map<String, Value>, key: &str, errors: &mut Vec<String>) -> Option<bool> {
    match body.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            errors.push(format!("{key} must be a boolean value"));
            None
        }
    }
}

/// `POST /api/sandbox`.
fn create(inner: &mut Inner, body: &[u8], now: Instant) -> ApiResult {
    let body: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(bad_request("The request body must be a JSON object")),
            Err(e) => return Err(bad_request(format!("Unexpected token in JSON: {e}"))),
        }
    };
    let mut errors = Vec::new();
    let name = string_field(&body, "name", &mut errors).filter(|n| !n.is_empty());
    let labels = string_map(&body, "labels", &mut errors);
    let env = string_map(&body, "env", &mut errors);
    let user = string_field(&body, "user", &mut errors);
    let snapshot = string_field(&body, "snapshot", &mut errors);
    let target = string_field(&body, "target", &mut errors);
    let public = bool_field(&body, "public", &mut errors);
    let network_block_all = bool_field(&body, "networkBlockAll", &mut errors);
    let kvm = bool_field(&body, "kvm", &mut errors);
    let network_allow_list = string_field(&body, "networkAllowList", &mut errors);
    let domain_allow_list = string_field(&body, "domainAllowList", &mut errors);
    let auto_stop = int_field(&body, "autoStopInterval", &mut errors);
    let auto_archive = int_field(&body, "autoArchiveInterval", &mut errors);
    let auto_delete = int_field(&body, "autoDeleteInterval", &mut errors);
    let cpu = int_field(&body, "cpu", &mut errors);
    let gpu = int_field(&body, "gpu", &mut errors);
    let memory = int_field(&body, "memory", &mut errors);
    let disk = int_field(&body, "disk", &mut errors);
    if auto_stop.is_some_and(|n| n < 0) {
        errors.push("autoStopInterval must not be less than 0".to_string());
    }
    if auto_archive.is_some_and(|n| n < 0) {
        errors.push("autoArchiveInterval must not be less than 0".to_string());
    }
    let volumes = match body.get("volumes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => {
            errors.push("volumes must be an array".to_string());
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return Err(bad_request(errors.join(", ")));
    }
    let build_info = body.get("buildInfo").filter(|v| !v.is_null()).cloned();
    let resources =
        cpu.is_some() || gpu.is_some() || memory.is_some() || disk.is_some() || body.contains_key("gpuType");
    if resources && (build_info.is_none() || snapshot.is_some()) {
        return Err(bad_request("Cannot specify Sandbox resources when using a snapshot"));
    }
    if let Some(name) = &name {
        if inner.find_live_by_name(name).is_some() {
            return Err(ApiError(409, format!("Sandbox with name {name} already exists")));
        }
    }

    let id = new_uuid();
    let created_at = SystemTime::now();
    let mut sb = Sandbox::new(id.clone(), name.unwrap_or_else(|| id.clone()), created_at);
    sb.labels = labels;
    sb.env = env;
    if let Some(user) = user {
        sb.user = user;
    }
    if let Some(info) = build_info {
        let stamp = iso(created_at);
        let mut info = info.as_object().cloned().unwrap_or_default();
        info.insert("createdAt".into(), json!(stamp));
        info.insert("updatedAt".into(), json!(stamp));
        info.insert("snapshotRef".into(), json!(format!("daytona-build-{}", &id[..8])));
        sb.build_info = Some(Value::Object(info));
        sb.snapshot = None;
    } else if let Some(snapshot) = snapshot {
        sb.snapshot = Some(snapshot);
    }
    if let Some(target) = target {
        sb.target = target;
    }
    sb.public = public.unwrap_or(false);
    sb.network_block_all = network_block_all.unwrap_or(false);
    sb.kvm = kvm.unwrap_or(false);
    sb.network_allow_list = network_allow_list;
    sb.domain_allow_list = domain_allow_list;
    sb.cpu = cpu.unwrap_or(sb.cpu);
    sb.gpu = gpu.unwrap_or(sb.gpu);
    sb.memory = memory.unwrap_or(sb.memory);
    sb.disk = disk.unwrap_or(sb.disk);
    sb.auto_stop = auto_stop.unwrap_or(sb.auto_stop);
    sb.auto_archive = match auto_archive {
        None => sb.auto_archive,
        Some(0) => MAX_AUTO_ARCHIVE_INTERVAL,
        Some(n) => n.min(MAX_AUTO_ARCHIVE_INTERVAL),
    };
    sb.auto_delete = auto_delete.unwrap_or(sb.auto_delete);
    sb.volumes = volumes;
    sb.state = "creating".to_string();
    sb.desired = "started".to_string();
    sb.pending = true;
    sb.transition_at = Some(now + CREATING_PHASE);
    let json = inner.sandbox_json(&sb, true);
    inner.sandboxes.push(sb);
    inner.stats.creates += 1;
    Ok((200, json))
}

/// The soft delete (contract §7); also what stop does to an ephemeral sandbox.
fn soft_delete(inner: &mut Inner, i: usize, now: Instant) {
    let delay = inner.config.destroy_delay;
    let sb = &mut inner.sandboxes[i];
    let epoch_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    sb.name = format!("DESTROYED_{}_{}", sb.name, epoch_ms);
    if sb.state == "started" || sb.state == "stopped" {
        sb.state = "destroying".to_string();
    }
    sb.desired = "destroyed".to_string();
    sb.pending = true;
    sb.transition_at = Some(now + delay);
    sb.touch();
}

fn delete(inner: &mut Inner, x: &str, now: Instant) -> ApiResult {
    let i = inner.find(x).ok_or_else(|| not_found(x))?;
    let sb = &inner.sandboxes[i];
    if sb.pending && sb.state != "pending_build" {
        return Err(in_progress());
    }
    soft_delete(inner, i, now);
    inner.stats.deletes_accepted += 1;
    Ok((200, inner.sandbox_json(&inner.sandboxes[i], true)))
}

/// `POST …/stop|start|archive` (contract §7).
fn lifecycle(inner: &mut Inner, x: &str, op: &str, now: Instant) -> ApiResult {
    let i = inner.find(x).ok_or_else(|| not_found(x))?;
    let sb = &inner.sandboxes[i];
    if sb.errored() {
        return Err(bad_request("Sandbox is in an errored state"));
    }
    if sb.pending || sb.state != sb.desired {
        return Err(in_progress());
    }
    let (state, ephemeral) = (sb.state.clone(), sb.auto_delete == 0);
    if op == "stop" && state == "started" && ephemeral {
        soft_delete(inner, i, now);
        inner.stats.deletes_accepted += 1;
        return Ok((200, inner.sandbox_json(&inner.sandboxes[i], true)));
    }
    let sb = &mut inner.sandboxes[i];
    match (op, state.as_str()) {
        ("stop", "started") => {
            sb.state = "stopping".to_string();
            sb.desired = "stopped".to_string();
            sb.pending = true;
            sb.transition_at = Some(now + TRANSITION);
            sb.touch();
        }
        ("stop", _) => return Err(bad_request("Sandbox is not in a stoppable state")),
        ("start", "started") => {}
        ("start", "stopped") => {
            sb.state = "started".to_string();
            sb.desired = "started".to_string();
            sb.last_activity_at = SystemTime::now();
            sb.touch();
        }
        ("start", "archived") => {
            sb.state = "restoring".to_string();
            sb.desired = "started".to_string();
            sb.pending = true;
            sb.transition_at = Some(now + TRANSITION);
            sb.touch();
        }
        ("start", _) => return Err(bad_request("Sandbox is not in a startable state")),
        ("archive", "stopped") if ephemeral => {
            return Err(bad_request("Ephemeral sandboxes cannot be archived"));
        }
        ("archive", "stopped") => {
            sb.state = "archiving".to_string();
            sb.desired = "archived".to_string();
            sb.pending = true;
            sb.transition_at = Some(now + TRANSITION);
            sb.touch();
        }
        (_, _) => return Err(bad_request("Sandbox is not stopped")),
    }
    Ok((200, inner.sandbox_json(&inner.sandboxes[i], true)))
}

/// `PUT …/labels` with `{"labels": {…}}`: replaces the labels.
fn put_labels(inner: &mut Inner, x: &str, body: &[u8]) -> ApiResult {
    let i = inner.find(x).ok_or_else(|| not_found(x))?;
    let body = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        _ => return Err(bad_request("labels must be an object")),
    };
    let mut errors = Vec::new();
    if !matches!(body.get("labels"), Some(Value::Object(_))) {
        errors.push("labels must be an object".to_string());
    }
    let labels = string_map(&body, "labels", &mut errors);
    if !errors.is_empty() {
        return Err(bad_request(errors.join(", ")));
    }
    let sb = &mut inner.sandboxes[i];
    sb.labels = labels;
    sb.touch();
    Ok((200, json!({ "labels": sb.labels })))
}

/// `POST …/autostop|autoarchive|autodelete/{interval}`: 201 with the Sandbox.
fn auto_interval(inner: &mut Inner, x: &str, which: &str, n: &str) -> ApiResult {
    let i = inner.find(x).ok_or_else(|| not_found(x))?;
    let n: i64 = n.parse().map_err(|_| bad_request("Validation failed (numeric string is expected)"))?;
    let sb = &mut inner.sandboxes[i];
    match which {
        "autostop" if n < 0 => return Err(bad_request("Auto-stop interval must be non-negative")),
        "autostop" => sb.auto_stop = n,
        "autoarchive" if n < 0 => return Err(bad_request("Auto-archive interval must be non-negative")),
        "autoarchive" => {
            sb.auto_archive = if n == 0 { MAX_AUTO_ARCHIVE_INTERVAL } else { n.min(MAX_AUTO_ARCHIVE_INTERVAL) }
        }
        _ => sb.auto_delete = n,
    }
    sb.touch();
    Ok((201, inner.sandbox_json(&inner.sandboxes[i], true)))
}

// ---------------------------------------------------------------------------
// Responses and helpers
// ---------------------------------------------------------------------------

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error")
}

fn json_response(status: u16, body: &Value, headers: &[(String, String)]) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            map.insert(name, value);
        }
    }
    response
}

/// The documented error body (contract §6).
fn error_response(status: u16, path: &str, message: &str, headers: &[(String, String)]) -> Reply {
    let body = json!({
        "path": path,
        "timestamp": iso(SystemTime::now()),
        "statusCode": status,
        "error": reason(status),
        "message": message,
    });
    json_response(status, &body, headers)
}

/// `toISOString()`: `2024-10-01T12:00:00.000Z`.
fn iso(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn new_uuid() -> String {
    let mut bytes = [0u8; 16];
    for b in &mut bytes {
        *b = fastrand::u8(..);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A query string's pairs, decoded (`+` is a space), in order.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Query {
        Query(
            raw.split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " ")))
                })
                .collect(),
        )
    }

    /// The last value of a key (Express keeps an array for a repeated key;
    /// the scalar parameters here take one).
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, `key[]` or `key[N]`; `None` when there is none.
    fn list(&self, key: &str) -> Option<BTreeSet<String>> {
        let bracket = format!("{key}[");
        let values: BTreeSet<String> = self
            .0
            .iter()
            .filter(|(k, _)| k == key || (k.starts_with(&bracket) && k.ends_with(']')))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
            .collect();
        (!values.is_empty()).then_some(values)
    }
}
