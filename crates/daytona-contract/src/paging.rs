//! The sandbox lists: `GET /api/sandbox` with cursor paging (since v0.180;
//! an opaque base64 JSON cursor `{sortValue,id}`), or the bare `Sandbox[]`
//! it was before; and the deprecated `GET /api/sandbox/paginated` with page
//! numbers and totals. Also the filters both paged lists share, and sorting
//! (ties broken by id).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::error::{bad_request, ApiError, ApiResult};
use crate::model::{iso, Sandbox};
use crate::query::Query;
use crate::state::State;
use crate::SANDBOX_STATES;

/// Visible to lists: never destroyed; errored-and-deleted only when asked.
fn listable(sb: &Sandbox, include_errored_deleted: bool) -> bool {
    sb.state != "destroyed" && (include_errored_deleted || !sb.errored_deleted())
}

/// The `labels` filter: a JSON object; anything else is a 400.
fn labels_filter(query: &Query) -> Result<Option<Map<String, Value>>, ApiError> {
    match query.get("labels") {
        None | Some("") => Ok(None),
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(map)) => Ok(Some(map)),
            _ => Err(bad_request("Invalid labels JSON format")),
        },
    }
}

/// JSONB containment: every pair of the filter is in the sandbox's labels.
fn labels_contain(filter: &Map<String, Value>, labels: &BTreeMap<String, String>) -> bool {
    filter.iter().all(|(k, v)| v.as_str().is_some_and(|v| labels.get(k).is_some_and(|x| x == v)))
}

/// The filters both paged list endpoints share.
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
    /// Reads the filters; every invalid value is named in one 400.
    fn parse(query: &Query, regions_key: &str) -> Result<Filters, ApiError> {
        let labels = labels_filter(query)?;
        let mut errors = Vec::new();
        let states = states_filter(query, &mut errors);
        let mut int = |key: &str| positive_int(query, key, &mut errors);
        let (min_cpu, max_cpu) = (int("minCpu"), int("maxCpu"));
        let (min_memory, max_memory) = (int("minMemoryGiB"), int("maxMemoryGiB"));
        let (min_disk, max_disk) = (int("minDiskGiB"), int("maxDiskGiB"));
        let mut date = |key: &str| date_param(query, key, &mut errors);
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
        let has_prefix = |value: &str, prefix: &Option<String>| {
            prefix.as_ref().is_none_or(|prefix| value.to_lowercase().starts_with(prefix))
        };
        if !has_prefix(&sb.id, &self.id) || !has_prefix(&sb.name, &self.name) {
            return false;
        }
        if self.labels.as_ref().is_some_and(|labels| !labels_contain(labels, &sb.labels)) {
            return false;
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

/// `states` / `states[]`: any state but `destroyed`.
fn states_filter(query: &Query, errors: &mut Vec<String>) -> Option<BTreeSet<String>> {
    let states = query.list("states");
    if let Some(states) = &states {
        let allowed: Vec<&str> = SANDBOX_STATES.iter().copied().filter(|s| *s != "destroyed").collect();
        if states.iter().any(|s| !allowed.contains(&s.as_str())) {
            errors.push(format!("each value in states must be one of the following values: {}", allowed.join(", ")));
        }
    }
    states
}

/// An optional integer parameter of at least 1.
fn positive_int(query: &Query, key: &str, errors: &mut Vec<String>) -> Option<i64> {
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
}

/// An optional ISO 8601 date parameter.
fn date_param(query: &Query, key: &str, errors: &mut Vec<String>) -> Option<SystemTime> {
    let raw = query.get(key)?;
    match humantime::parse_rfc3339_weak(raw.trim_end_matches('Z')) {
        Ok(t) => Some(t),
        Err(_) => {
            errors.push(format!("{key} must be a valid ISO 8601 date string"));
            None
        }
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

/// The sandboxes `filters` matches with their sort values, sorted by `sort`
/// (then by id), descending or not.
fn sorted<'a>(state: &'a State, filters: &Filters, sort: &str, descending: bool) -> Vec<(SortValue, &'a Sandbox)> {
    let mut rows: Vec<(SortValue, &Sandbox)> =
        state.sandboxes.iter().filter(|sb| filters.matches(sb)).map(|sb| (sort_value(sb, sort), sb)).collect();
    rows.sort_by(|(a, x), (b, y)| {
        let ordering = a.cmp(b).then_with(|| x.id.cmp(&y.id));
        if descending {
            ordering.reverse()
        } else {
            ordering
        }
    });
    rows
}

/// `limit`: 1-200, default 100.
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

/// `page`: from 1, default 1.
fn parse_page(query: &Query, errors: &mut Vec<String>) -> usize {
    match query.get("page") {
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
pub(crate) fn list_cursor(state: &State, query: &Query) -> ApiResult {
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

    let descending = order == "desc";
    let mut rows = sorted(state, &filters, &sort, descending);
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
    let items: Vec<Value> = rows.iter().map(|(_, sb)| state.sandbox_json(sb, false)).collect();
    Ok((200, json!({ "items": items, "nextCursor": next_cursor })))
}

/// `GET /api/sandbox` before v0.180: a bare `Sandbox[]`, newest first.
pub(crate) fn list_legacy(state: &State, query: &Query) -> ApiResult {
    let labels = labels_filter(query)?;
    let include = query.get("includeErroredDeleted") == Some("true");
    let mut rows: Vec<&Sandbox> = state
        .sandboxes
        .iter()
        .filter(|sb| listable(sb, include))
        .filter(|sb| labels.as_ref().is_none_or(|labels| labels_contain(labels, &sb.labels)))
        .collect();
    rows.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
    Ok((200, Value::Array(rows.iter().map(|sb| state.sandbox_json(sb, true)).collect())))
}

/// `GET /api/sandbox/paginated` (deprecated): page numbers and totals.
pub(crate) fn list_paginated(state: &State, query: &Query) -> ApiResult {
    let mut errors = Vec::new();
    let limit = parse_limit(query, &mut errors);
    let page = parse_page(query, &mut errors);
    let sort_fields = ["id", "name", "state", "snapshot", "region", "updatedAt", "createdAt", "lastActivityAt"];
    let sort = parse_enum(query, "sort", &sort_fields, "createdAt", &mut errors).to_string();
    let order = parse_enum(query, "order", &["asc", "desc"], "desc", &mut errors).to_string();
    if !errors.is_empty() {
        return Err(bad_request(errors.join(", ")));
    }
    let filters = Filters::parse(query, "regions")?;
    let rows = sorted(state, &filters, &sort, order == "desc");
    let total = rows.len();
    let items: Vec<Value> =
        rows.iter().skip((page - 1) * limit).take(limit).map(|(_, sb)| state.sandbox_json(sb, true)).collect();
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
