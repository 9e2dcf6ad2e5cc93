//! The operations on one sandbox: get, create (and its validation), delete
//! (the async soft delete), stop / start / archive, the labels, the
//! auto-stop / auto-archive / auto-delete intervals, and the toolbox proxy
//! URL.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::error::{bad_request, in_progress, not_found, ApiError, ApiResult};
use crate::model::{iso, new_uuid, Sandbox};
use crate::state::State;
use crate::{CREATING_PHASE, MAX_AUTO_ARCHIVE_INTERVAL, TRANSITION};

/// `GET /api/sandbox/{idOrName}`.
pub(crate) fn get(state: &State, x: &str) -> ApiResult {
    match state.find(x) {
        Some(i) => Ok((200, state.sandbox_json(&state.sandboxes[i], true))),
        None => Err(not_found(x)),
    }
}

/// `GET /api/sandbox/{sandboxId}/toolbox-proxy-url`.
pub(crate) fn toolbox_proxy_url(state: &State, x: &str) -> ApiResult {
    match state.find(x) {
        Some(_) => Ok((200, json!({ "url": state.toolbox_proxy_url }))),
        None => Err(not_found(x)),
    }
}

// ---------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------

/// A create body, read field by field.
struct CreateBody {
    name: Option<String>,
    labels: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    user: Option<String>,
    snapshot: Option<String>,
    target: Option<String>,
    public: Option<bool>,
    network_block_all: Option<bool>,
    kvm: Option<bool>,
    network_allow_list: Option<String>,
    domain_allow_list: Option<String>,
    auto_stop: Option<i64>,
    auto_archive: Option<i64>,
    auto_delete: Option<i64>,
    cpu: Option<i64>,
    gpu: Option<i64>,
    memory: Option<i64>,
    disk: Option<i64>,
    volumes: Vec<Value>,
    build_info: Option<Value>,
    /// Whether the body asks for resources (cpu, gpu, memory, disk or a GPU type).
    resources: bool,
}

impl CreateBody {
    /// Reads the fields; every ill-typed or negative one is named in one 400.
    fn read(body: &Map<String, Value>) -> Result<CreateBody, ApiError> {
        let mut errors = Vec::new();
        let e = &mut errors;
        let mut read = CreateBody {
            name: string_field(body, "name", e).filter(|n| !n.is_empty()),
            labels: string_map(body, "labels", e),
            env: string_map(body, "env", e),
            user: string_field(body, "user", e),
            snapshot: string_field(body, "snapshot", e),
            target: string_field(body, "target", e),
            public: bool_field(body, "public", e),
            network_block_all: bool_field(body, "networkBlockAll", e),
            kvm: bool_field(body, "kvm", e),
            network_allow_list: string_field(body, "networkAllowList", e),
            domain_allow_list: string_field(body, "domainAllowList", e),
            auto_stop: int_field(body, "autoStopInterval", e),
            auto_archive: int_field(body, "autoArchiveInterval", e),
            auto_delete: int_field(body, "autoDeleteInterval", e),
            cpu: int_field(body, "cpu", e),
            gpu: int_field(body, "gpu", e),
            memory: int_field(body, "memory", e),
            disk: int_field(body, "disk", e),
            volumes: Vec::new(),
            build_info: body.get("buildInfo").filter(|v| !v.is_null()).cloned(),
            resources: body.contains_key("gpuType"),
        };
        if read.auto_stop.is_some_and(|n| n < 0) {
            errors.push("autoStopInterval must not be less than 0".to_string());
        }
        if read.auto_archive.is_some_and(|n| n < 0) {
            errors.push("autoArchiveInterval must not be less than 0".to_string());
        }
        read.volumes = match body.get("volumes") {
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
        read.resources |= read.cpu.is_some() || read.gpu.is_some() || read.memory.is_some() || read.disk.is_some();
        Ok(read)
    }

    /// The new sandbox, `creating` until [`CREATING_PHASE`] has passed.
    fn into_sandbox(self, now: Instant) -> Sandbox {
        let id = new_uuid();
        let created_at = SystemTime::now();
        let mut sb = Sandbox::new(id.clone(), self.name.unwrap_or_else(|| id.clone()), created_at);
        sb.labels = self.labels;
        sb.env = self.env;
        if let Some(user) = self.user {
            sb.user = user;
        }
        if let Some(info) = self.build_info {
            let stamp = iso(created_at);
            let mut info = info.as_object().cloned().unwrap_or_default();
            info.insert("createdAt".into(), json!(stamp));
            info.insert("updatedAt".into(), json!(stamp));
            info.insert("snapshotRef".into(), json!(format!("daytona-build-{}", &id[..8])));
            sb.build_info = Some(Value::Object(info));
            sb.snapshot = None;
        } else if let Some(snapshot) = self.snapshot {
            sb.snapshot = Some(snapshot);
        }
        if let Some(target) = self.target {
            sb.target = target;
        }
        sb.public = self.public.unwrap_or(false);
        sb.network_block_all = self.network_block_all.unwrap_or(false);
        sb.kvm = self.kvm.unwrap_or(false);
        sb.network_allow_list = self.network_allow_list;
        sb.domain_allow_list = self.domain_allow_list;
        sb.cpu = self.cpu.unwrap_or(sb.cpu);
        sb.gpu = self.gpu.unwrap_or(sb.gpu);
        sb.memory = self.memory.unwrap_or(sb.memory);
        sb.disk = self.disk.unwrap_or(sb.disk);
        sb.auto_stop = self.auto_stop.unwrap_or(sb.auto_stop);
        sb.auto_archive = self.auto_archive.map_or(sb.auto_archive, capped_auto_archive);
        sb.auto_delete = self.auto_delete.unwrap_or(sb.auto_delete);
        sb.volumes = self.volumes;
        sb.state = "creating".to_string();
        sb.desired = "started".to_string();
        sb.pending = true;
        sb.transition_at = Some(now + CREATING_PHASE);
        sb
    }
}

/// An auto-archive interval as stored: 0 or above the maximum is the maximum.
fn capped_auto_archive(n: i64) -> i64 {
    if n == 0 {
        MAX_AUTO_ARCHIVE_INTERVAL
    } else {
        n.min(MAX_AUTO_ARCHIVE_INTERVAL)
    }
}

/// The body as a JSON object; an empty body is an empty object.
fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad_request("The request body must be a JSON object")),
        Err(e) => Err(bad_request(format!("Unexpected token in JSON: {e}"))),
    }
}

/// `POST /api/sandbox`.
pub(crate) fn create(state: &mut State, body: &[u8], now: Instant) -> ApiResult {
    let body = CreateBody::read(&json_object(body)?)?;
    if body.resources && (body.build_info.is_none() || body.snapshot.is_some()) {
        return Err(bad_request("Cannot specify Sandbox resources when using a snapshot"));
    }
    if let Some(name) = &body.name {
        if state.find_live_by_name(name).is_some() {
            return Err(ApiError(409, format!("Sandbox with name {name} already exists")));
        }
    }
    let sb = body.into_sandbox(now);
    let json = state.sandbox_json(&sb, true);
    state.sandboxes.push(sb);
    state.stats.creates += 1;
    Ok((200, json))
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

// ---------------------------------------------------------------------------
// Delete and the lifecycle
// ---------------------------------------------------------------------------

/// The soft delete: renamed `DESTROYED_<name>_<epochMs>` at once (so a lookup
/// by name fails), shown `destroying` (or its raw state when archived or
/// errored), `destroyed` when the destroy delay has passed. Also what stop
/// does to an ephemeral sandbox.
fn soft_delete(state: &mut State, i: usize, now: Instant) {
    let delay = state.config.destroy_delay;
    let sb = &mut state.sandboxes[i];
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

/// `DELETE /api/sandbox/{idOrName}`.
pub(crate) fn delete(state: &mut State, x: &str, now: Instant) -> ApiResult {
    let i = state.find(x).ok_or_else(|| not_found(x))?;
    let sb = &state.sandboxes[i];
    if sb.pending && sb.state != "pending_build" {
        return Err(in_progress());
    }
    soft_delete(state, i, now);
    state.stats.deletes_accepted += 1;
    Ok((200, state.sandbox_json(&state.sandboxes[i], true)))
}

/// `POST …/stop|start|archive`: 400 for an errored sandbox or a state the
/// operation does not apply to, 409 while a change is pending.
pub(crate) fn lifecycle(state: &mut State, x: &str, op: &str, now: Instant) -> ApiResult {
    let i = state.find(x).ok_or_else(|| not_found(x))?;
    let sb = &state.sandboxes[i];
    if sb.errored() {
        return Err(bad_request("Sandbox is in an errored state"));
    }
    if sb.pending || sb.state != sb.desired {
        return Err(in_progress());
    }
    let (current, ephemeral) = (sb.state.clone(), sb.auto_delete == 0);
    if op == "stop" && current == "started" && ephemeral {
        soft_delete(state, i, now);
        state.stats.deletes_accepted += 1;
    } else {
        transition(&mut state.sandboxes[i], op, &current, ephemeral, now)?;
    }
    Ok((200, state.sandbox_json(&state.sandboxes[i], true)))
}

/// What stop, start or archive does to a settled sandbox in state `current`.
fn transition(sb: &mut Sandbox, op: &str, current: &str, ephemeral: bool, now: Instant) -> Result<(), ApiError> {
    match (op, current) {
        ("stop", "started") => sb.begin_change("stopping", "stopped", now + TRANSITION),
        ("stop", _) => return Err(bad_request("Sandbox is not in a stoppable state")),
        ("start", "started") => {}
        ("start", "stopped") => {
            sb.state = "started".to_string();
            sb.desired = "started".to_string();
            sb.last_activity_at = SystemTime::now();
            sb.touch();
        }
        ("start", "archived") => sb.begin_change("restoring", "started", now + TRANSITION),
        ("start", _) => return Err(bad_request("Sandbox is not in a startable state")),
        ("archive", "stopped") if ephemeral => {
            return Err(bad_request("Ephemeral sandboxes cannot be archived"));
        }
        ("archive", "stopped") => sb.begin_change("archiving", "archived", now + TRANSITION),
        (_, _) => return Err(bad_request("Sandbox is not stopped")),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Labels and intervals
// ---------------------------------------------------------------------------

/// `PUT …/labels` with `{"labels": {…}}`: replaces the labels.
pub(crate) fn put_labels(state: &mut State, x: &str, body: &[u8]) -> ApiResult {
    let i = state.find(x).ok_or_else(|| not_found(x))?;
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
    let sb = &mut state.sandboxes[i];
    sb.labels = labels;
    sb.touch();
    Ok((200, json!({ "labels": sb.labels })))
}

/// `POST …/autostop|autoarchive|autodelete/{interval}`: 201 with the Sandbox.
pub(crate) fn auto_interval(state: &mut State, x: &str, which: &str, n: &str) -> ApiResult {
    let i = state.find(x).ok_or_else(|| not_found(x))?;
    let n: i64 = n.parse().map_err(|_| bad_request("Validation failed (numeric string is expected)"))?;
    let sb = &mut state.sandboxes[i];
    match which {
        "autostop" if n < 0 => return Err(bad_request("Auto-stop interval must be non-negative")),
        "autostop" => sb.auto_stop = n,
        "autoarchive" if n < 0 => return Err(bad_request("Auto-archive interval must be non-negative")),
        "autoarchive" => sb.auto_archive = capped_auto_archive(n),
        _ => sb.auto_delete = n,
    }
    sb.touch();
    Ok((201, state.sandbox_json(&state.sandboxes[i], true)))
}
