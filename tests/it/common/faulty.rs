//! A misbehaving Docker engine for the tests: a Unix socket that forwards
//! each request to the real daemon on a fresh connection, as
//! [`super::ScopedEngine`] does, except where a rule of the test says to
//! inject a fault instead: a 500, a 409 "removal already in progress", a
//! 404 for a container that is there (as during its create), a slow or a
//! late answer, a connection closed without an answer, a JSON body cut
//! short, or the socket vanishing for a while (a daemon restart).
//!
//! Rules are deterministic (the first N matching requests, or every Nth), so
//! a test that uses them cannot flake; [`FaultyEngine::injected`] says how
//! often each rule fired, so a test can prove its fault really happened.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// What to do instead of (or on top of) forwarding a request.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answer 500 with a JSON message, as a daemon in trouble does.
    ServerError,
    /// Answer 409 "removal of container X is already in progress".
    RemovalInProgress,
    /// Answer 404 "No such container: X" without forwarding, as the daemon
    /// answers for a container it lists while its create is not done.
    NoSuchContainer,
    /// Forward, but only after waiting this long.
    Slow(Duration),
    /// Forward after waiting this long, from a task of its own that goes on
    /// when the client has gone: the daemon carries out a create it was
    /// sent even when its sender is killed meanwhile.
    Late(Duration),
    /// Close the connection without answering.
    Reset,
    /// Forward, then send the full Content-Length but only half the body, and close.
    TruncatedBody,
    /// Forward, then send half the body as if it were all of it (its own
    /// Content-Length): well-formed HTTP, JSON cut short.
    CutJson,
    /// Remove the socket file and drop every connection, as a restarting
    /// daemon does, and bind again after this long.
    Vanish(Duration),
}

/// Which matching requests a rule hits: the first N, every Nth, or a share;
/// the same rule the Daytona contract server's faults follow.
pub use daytona_contract::When;

/// One rule: requests with `method` whose unversioned path starts with `path_prefix`.
#[derive(Debug)]
pub struct Rule {
    method: Method,
    path_prefix: String,
    fault: Fault,
    when: When,
    seen: AtomicU64,
    injected: AtomicUsize,
}

impl Rule {
    /// E.g. `Rule::new("DELETE", "/containers/", Fault::ServerError, When::First(2))`.
    pub fn new(method: &str, path_prefix: &str, fault: Fault, when: When) -> Self {
        Rule {
            method: method.parse().expect("an HTTP method"),
            path_prefix: path_prefix.to_string(),
            fault,
            when,
            seen: AtomicU64::new(0),
            injected: AtomicUsize::new(0),
        }
    }

    /// The fault for this request, if the rule matches it and its turn has come.
    fn decide(&self, method: &Method, path: &str) -> Option<Fault> {
        if method != self.method || !path.starts_with(&self.path_prefix) {
            return None;
        }
        let ordinal = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        self.when.hits(ordinal).then(|| {
            self.injected.fetch_add(1, Ordering::SeqCst);
            self.fault
        })
    }
}

struct State {
    rules: Vec<Rule>,
    socket: PathBuf,
    /// Bumped on a vanish: every open connection closes, the listener goes away.
    epoch: watch::Sender<u64>,
    vanish_for: Mutex<Duration>,
    /// Whether the socket is bound; false while vanished.
    bound: watch::Sender<bool>,
}

/// The faulty socket in front of the engine; stops when dropped.
pub struct FaultyEngine {
    _directory: TempDir,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyEngine {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FaultyEngine {
    /// Starts serving with `rules`, tried in order; the first that fires wins.
    pub fn start(rules: Vec<Rule>) -> Self {
        let directory = tempfile::Builder::new().prefix("faulty-").tempdir().expect("a directory for the socket");
        let socket = directory.path().join("docker.sock");
        let listener = UnixListener::bind(&socket).expect("bind the faulty engine's socket");
        let (epoch, _) = watch::channel(0);
        let (bound, _) = watch::channel(true);
        let state = Arc::new(State { rules, socket, epoch, vanish_for: Mutex::new(Duration::ZERO), bound });
        let server = tokio::spawn(serve(listener, state.clone()));
        FaultyEngine { _directory: directory, state, server }
    }

    /// The value for `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.state.socket.display())
    }

    /// How many times rule `index` (in the order given to `start`) fired.
    pub fn injected(&self, index: usize) -> usize {
        self.state.rules[index].injected.load(Ordering::SeqCst)
    }

    /// Returns once the socket is bound again after a vanish (at once if it is bound).
    pub async fn back(&self) {
        let mut bound = self.state.bound.subscribe();
        bound.wait_for(|bound| *bound).await.expect("the faulty engine is serving");
    }
}

/// Accepts until a vanish, then stays away for its duration and binds again.
async fn serve(mut listener: UnixListener, state: Arc<State>) {
    let mut epoch = state.epoch.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    tokio::spawn(connection(client, state.clone()));
                }
            }
            _ = epoch.changed() => {
                drop(listener);
                let away = *state.vanish_for.lock().unwrap();
                tokio::time::sleep(away).await;
                listener = bind_again(&state.socket);
                state.bound.send_replace(true);
                epoch.borrow_and_update();
            }
        }
    }
}

fn bind_again(socket: &Path) -> UnixListener {
    let _ = std::fs::remove_file(socket);
    UnixListener::bind(socket).expect("bind the faulty engine's socket again")
}

/// One client connection, closed early when the engine vanishes.
async fn connection(client: UnixStream, state: Arc<State>) {
    let mut epoch = state.epoch.subscribe();
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |request| answer(request, service_state.clone()));
    let serving = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(client), service);
    tokio::select! {
        _ = serving => {}
        _ = epoch.changed() => {}
    }
}

/// The answer to one request: a fault, or the daemon's.
async fn answer(request: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, BoxError> {
    let path = unversioned(request.uri().path()).to_string();
    let fault = state.rules.iter().find_map(|rule| rule.decide(request.method(), &path));
    match fault {
        None => Ok(forward(request).await),
        Some(Fault::ServerError) => Ok(json_answer(StatusCode::INTERNAL_SERVER_ERROR, "injected fault: server error")),
        Some(Fault::RemovalInProgress) => {
            let id = path.trim_start_matches("/containers/");
            let message = format!("removal of container {id} is already in progress");
            Ok(json_answer(StatusCode::CONFLICT, &message))
        }
        Some(Fault::NoSuchContainer) => {
            let id = path.trim_start_matches("/containers/");
            Ok(json_answer(StatusCode::NOT_FOUND, &format!("No such container: {id}")))
        }
        Some(Fault::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            Ok(forward(request).await)
        }
        Some(Fault::Late(delay)) => {
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            let late = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let answer = super::scoped::send_to_daemon(Request::from_parts(parts, Full::new(body))).await;
                match answer {
                    Ok(response) => {
                        let (parts, body) = response.into_parts();
                        let body = body.collect().await.map(|whole| whole.to_bytes()).unwrap_or_default();
                        Response::from_parts(parts, Full::new(body).map_err(|never| match never {}).boxed())
                    }
                    Err(error) => json_answer(StatusCode::BAD_GATEWAY, &error),
                }
            });
            Ok(late.await?)
        }
        Some(Fault::Reset) => Err("injected fault: connection reset".into()),
        Some(Fault::TruncatedBody) => Ok(truncated(forward(request).await, false).await),
        Some(Fault::CutJson) => Ok(truncated(forward(request).await, true).await),
        Some(Fault::Vanish(away)) => {
            *state.vanish_for.lock().unwrap() = away;
            let _ = std::fs::remove_file(&state.socket);
            state.bound.send_replace(false);
            state.epoch.send_modify(|epoch| *epoch += 1);
            Err("injected fault: the daemon went away".into())
        }
    }
}

fn json_answer(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().unwrap());
    response
}

/// The daemon's answer with half its body: announced as the full length and then
/// broken off, or (`honest_length`) announced as all there is.
async fn truncated(response: Response<Body>, honest_length: bool) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let whole = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return json_answer(StatusCode::BAD_GATEWAY, &error.to_string()),
    };
    let half = whole.slice(..whole.len() / 2);
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    let announced = if honest_length { half.len() } else { whole.len() };
    parts.headers.insert(hyper::header::CONTENT_LENGTH, announced.into());
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![Ok(Frame::data(half))];
    if !honest_length {
        frames.push(Err("injected fault: body cut short".into()));
    }
    Response::from_parts(parts, StreamBody::new(futures_util::stream::iter(frames)).boxed())
}

/// One request to the real daemon on a fresh connection; 502 when it cannot be reached.
async fn forward(request: Request<Incoming>) -> Response<Body> {
    let answer = super::scoped::send_to_daemon(request);
    match answer.await {
        Ok(response) => response.map(|body| body.map_err(BoxError::from).boxed()),
        Err(error) => json_answer(StatusCode::BAD_GATEWAY, &error),
    }
}

/// The path without its `/v1.xx` prefix.
fn unversioned(path: &str) -> &str {
    match path.strip_prefix("/v").and_then(|rest| rest.find('/').map(|slash| &rest[slash..])) {
        Some(rest) => rest,
        None => path,
    }
}

#[test]
fn rules_fire_on_their_turn_only() {
    let first = Rule::new("DELETE", "/containers/", Fault::ServerError, When::First(2));
    let delete = Method::DELETE;
    assert!(first.decide(&Method::GET, "/containers/json").is_none());
    assert!(first.decide(&delete, "/networks/abc").is_none());
    assert!(first.decide(&delete, "/containers/a").is_some());
    assert!(first.decide(&delete, "/containers/b").is_some());
    assert!(first.decide(&delete, "/containers/c").is_none());
    assert_eq!(first.injected.load(Ordering::SeqCst), 2);
    let every = Rule::new("GET", "/containers/json", Fault::Reset, When::EveryNth(3));
    let fired: Vec<bool> = (0..6).map(|_| every.decide(&Method::GET, "/containers/json").is_some()).collect();
    assert_eq!(fired, [false, false, true, false, false, true]);
    assert_eq!(unversioned("/v1.41/containers/abc"), "/containers/abc");
    assert_eq!(unversioned("/containers/json"), "/containers/json");
}
