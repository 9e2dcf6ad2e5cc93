//! Routes and request handling: every request is read whole, counted and
//! recorded; everything lives under `/api` (any other path answers the
//! dashboard's HTML with 200, the Socket.IO path and unknown routes a 404).
//! An API call needs `Authorization: Bearer <key>` (else 401 `Invalid
//! credentials`, before any rate limiting), then passes the throttlers of
//! its route (`rate`) and the injected faults (`faults`) before its
//! operation (`operations`, `paging`) runs. Answers are JSON; errors carry
//! the error body `{"path","timestamp","statusCode","error","message"}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::error::{ApiError, ApiResult};
use crate::faults::{self, ConnectionReset, Fault};
use crate::model::iso;
use crate::query::{percent_decode, Query};
use crate::rate::Admission;
use crate::state::{Shared, State};
use crate::{operations, paging, RecordedRequest, THROTTLER_AUTHENTICATED, THROTTLER_CREATE, THROTTLER_LIFECYCLE};

const DASHBOARD_HTML: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"UTF-8\" />\
<title>Daytona</title></head><body><div id=\"root\"></div></body></html>";

type Reply = Response<Full<Bytes>>;

/// One request, read whole.
struct Received {
    method: String,
    /// Path and query, as sent.
    path_and_query: String,
    path: String,
    query: Query,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    async fn read(request: Request<Incoming>) -> Received {
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
        Received { method, path_and_query, path, query, headers, body }
    }
}

/// The service of every connection: answers one request, or has the
/// connection reset and never answers.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    reset: Arc<ConnectionReset>,
    request: Request<Incoming>,
) -> Result<Reply, Infallible> {
    let received = Received::read(request).await;
    if received.path == "/__contract/stats" {
        let stats = shared.lock().stats.clone();
        return Ok(json_response(200, &serde_json::to_value(stats).unwrap_or(Value::Null), &[]));
    }

    let route = Route::parse(&received.method, &received.path);
    let route_key = route.key(&received.method);
    let (latency, fault) = {
        let mut state = shared.lock();
        state.stats.requests += 1;
        *state.stats.by_route.entry(route_key.clone()).or_insert(0) += 1;
        let fault = if route.is_api() { state.rule_fault(&route_key) } else { None };
        (state.config.latency, fault)
    };
    faults::add_latency(latency).await;
    if let Some(Fault::Latency(spike)) = fault {
        faults::add_latency(spike).await;
    }

    let reply = answer(&mut shared.lock(), &route, route_key, received, fault);
    match reply {
        Some(reply) => Ok(reply),
        None => {
            reset.request();
            // The connection task drops this connection; never answer.
            let never: Infallible = std::future::pending().await;
            match never {}
        }
    }
}

/// Answers under the lock and records the request; `None` when the
/// connection is to be reset instead.
fn answer(
    state: &mut State,
    route: &Route,
    route_key: String,
    received: Received,
    fault: Option<Fault>,
) -> Option<Reply> {
    let now = Instant::now();
    state.tick(now);
    let reply = match respond(state, route, &received, now, fault) {
        Outcome::Reset { by_rule } => {
            // A rule's reset is counted with the rule's other hits.
            state.stats.injected_resets += u64::from(!by_rule);
            None
        }
        Outcome::Reply(reply) => Some(reply),
    };
    state.requests.push(RecordedRequest {
        method: received.method,
        path: received.path_and_query,
        headers: received.headers,
        body: received.body,
        status: reply.as_ref().map(|r| r.status().as_u16()),
        route: route_key,
    });
    reply
}

enum Outcome {
    Reply(Reply),
    Reset { by_rule: bool },
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

    /// Whether this is a route of the API (which answers JSON and may have faults injected).
    fn is_api(&self) -> bool {
        !matches!(self, Route::Dashboard | Route::SocketIo | Route::Unknown)
    }

    /// The `"METHOD route"` key of the counters and recorded requests.
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

    /// The throttlers that apply: lifecycle routes count against
    /// `sandbox-lifecycle` only, create against `authenticated` and
    /// `sandbox-create`, every other API route against `authenticated`.
    fn throttlers(&self) -> &'static [&'static str] {
        match self {
            Route::Dashboard | Route::SocketIo | Route::Unknown => &[],
            Route::Create => &[THROTTLER_AUTHENTICATED, THROTTLER_CREATE],
            Route::Delete(_) | Route::Lifecycle(_, _) => &[THROTTLER_LIFECYCLE],
            _ => &[THROTTLER_AUTHENTICATED],
        }
    }
}

fn respond(state: &mut State, route: &Route, call: &Received, now: Instant, fault: Option<Fault>) -> Outcome {
    let path = call.path_and_query.as_str();
    match route {
        Route::Dashboard => return Outcome::Reply(dashboard()),
        Route::SocketIo | Route::Unknown => {
            let message = format!("Cannot {} {}", call.method, path.split('?').next().unwrap_or(path));
            return Outcome::Reply(error_response(404, path, &message, &[]));
        }
        _ => {}
    }
    if !authorized(&call.headers, &state.config.api_key) {
        state.stats.unauthorized_401 += 1;
        return Outcome::Reply(error_response(401, path, "Invalid credentials", &[]));
    }
    if let Some(fault) = fault.as_ref().filter(|fault| fault.refusal().is_some()) {
        return Outcome::Reply(refusal(fault, route, path));
    }
    let rate_headers = match state.throttles.admit(route.throttlers(), &state.config, now) {
        Admission::Admitted(headers) => headers,
        Admission::Refused { headers, refused } => {
            state.stats.throttled_429 += 1;
            for name in refused {
                *state.stats.throttled_by.entry(name.to_string()).or_insert(0) += 1;
            }
            return Outcome::Reply(error_response(429, path, "ThrottlerException: Too Many Requests", &headers));
        }
    };
    if faults::inject_5xx(state) {
        return Outcome::Reply(error_response(500, path, "Internal server error", &rate_headers));
    }
    let result = dispatch(state, route, call, now);
    if fault == Some(Fault::Reset) {
        return Outcome::Reset { by_rule: true };
    }
    if faults::inject_reset(&state.config) {
        return Outcome::Reset { by_rule: false };
    }
    match fault {
        Some(Fault::EmptyBody(status)) => return Outcome::Reply(raw_response(status, None, "", &rate_headers)),
        Some(Fault::Html(status)) => {
            return Outcome::Reply(raw_response(status, Some(HTML), DASHBOARD_HTML, &rate_headers))
        }
        Some(Fault::Status(status)) => return Outcome::Reply(json_response(status, &json!({}), &rate_headers)),
        _ => {}
    }
    Outcome::Reply(match result {
        Ok((status, body)) => json_response(status, &body, &rate_headers),
        Err(ApiError(status, message)) => error_response(status, path, &message, &rate_headers),
    })
}

/// Whether an `Authorization: Bearer <key>` header has the API key.
fn authorized(headers: &[(String, String)], api_key: &str) -> bool {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .any(|(_, v)| v.strip_prefix("Bearer ").is_some_and(|key| key.trim() == api_key))
}

/// Runs the operation of an API route.
fn dispatch(state: &mut State, route: &Route, call: &Received, now: Instant) -> ApiResult {
    match route {
        Route::List if state.config.legacy_list => paging::list_legacy(state, &call.query),
        Route::List => paging::list_cursor(state, &call.query),
        Route::Paginated => paging::list_paginated(state, &call.query),
        Route::Create => operations::create(state, &call.body, now),
        Route::Get(x) => operations::get(state, x),
        Route::Delete(x) => operations::delete(state, x, now),
        Route::Lifecycle(x, op) => operations::lifecycle(state, x, op, now),
        Route::Labels(x) => operations::put_labels(state, x, &call.body),
        Route::AutoInterval(x, which, n) => operations::auto_interval(state, x, which, n),
        Route::ToolboxProxyUrl(x) => operations::toolbox_proxy_url(state, x),
        Route::Dashboard | Route::SocketIo | Route::Unknown => unreachable!(),
    }
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

const HTML: &str = "text/html; charset=utf-8";

fn dashboard() -> Reply {
    raw_response(200, Some(HTML), DASHBOARD_HTML, &[])
}

/// The answer of a fault that answers in place of the operation (see
/// [`Fault::refusal`]): the API's error body, an empty one, a proxy's HTML
/// page, or a 429 with the fault's wait headers.
fn refusal(fault: &Fault, route: &Route, path: &str) -> Reply {
    match fault {
        Fault::TooManyRequests { retry_after, reset } => {
            let mut headers = vec![("Retry-After".to_string(), retry_after.clone())];
            for name in route.throttlers() {
                headers.push((format!("X-RateLimit-Remaining-{name}"), "0".to_string()));
                headers.push((format!("X-RateLimit-Reset-{name}"), reset.clone()));
                headers.push((format!("Retry-After-{name}"), retry_after.clone()));
            }
            error_response(429, path, "ThrottlerException: Too Many Requests", &headers)
        }
        Fault::EmptyBody(status) => raw_response(*status, None, "", &[]),
        Fault::Html(status) => {
            raw_response(*status, Some(HTML), &faults::proxy_error_page(*status, reason(*status)), &[])
        }
        Fault::Status(status) => error_response(*status, path, "Injected fault", &[]),
        Fault::Latency(_) | Fault::Reset => error_response(500, path, "not a refusal", &[]),
    }
}

/// An answer with this body as it is (and this content type, if any).
fn raw_response(status: u16, content_type: Option<&'static str>, body: &str, headers: &[(String, String)]) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    if let Some(content_type) = content_type {
        map.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    insert_headers(map, headers);
    response
}

fn insert_headers(map: &mut hyper::HeaderMap, headers: &[(String, String)]) {
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            map.insert(name, value);
        }
    }
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error")
}

fn json_response(status: u16, body: &Value, headers: &[(String, String)]) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    insert_headers(map, headers);
    response
}

/// The error body: `{"path","timestamp","statusCode","error","message"}`.
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
