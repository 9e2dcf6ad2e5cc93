//! Tests of the Daytona contract server itself (the workspace crate
//! `daytona-contract`, which follows the Daytona API v0.190 as the official
//! Python SDK 0.226.1 sees it), and a run of that SDK (`daytona` from PyPI,
//! in `target/py-venv`, which `scripts/test.sh` creates) as a real client of
//! it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use daytona_contract::{
    ContractConfig, ContractServer, Fault, FaultRule, SeedSandbox, When, ANY_ROUTE, CREATING_PHASE, TRANSITION,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;

const KEY: &str = "test-key";

// ---------------------------------------------------------------------------
// A small HTTP client (one connection per call)
// ---------------------------------------------------------------------------

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn header_u64(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number"))
    }

    fn rate_headers(&self) -> BTreeSet<String> {
        self.headers
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .filter(|k| k.starts_with("x-ratelimit-") || k.starts_with("retry-after"))
            .collect()
    }
}

/// `path` is relative to the API URL (`/sandbox?…`), or absolute from the
/// host when it does not start with `/sandbox` (e.g. `/api/socket.io/`).
async fn send(server: &ContractServer, method: &str, path: &str, auth: Option<&str>, body: Option<&Value>) -> Resp {
    let path = if path.starts_with("/sandbox") { format!("/api{path}") } else { path.to_string() };
    let stream = TcpStream::connect(server.addr()).await.expect("connect to the contract server");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP handshake");
    tokio::spawn(connection);
    let mut request = hyper::Request::builder().method(method).uri(&path).header("host", server.addr().to_string());
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let payload = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let response = sender.send_request(request.body(Full::new(payload)).unwrap()).await.expect("response");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = response.into_body().collect().await.expect("body").to_bytes().to_vec();
    Resp { status, headers, body }
}

async fn get(server: &ContractServer, path: &str) -> Resp {
    send(server, "GET", path, Some(&format!("Bearer {KEY}")), None).await
}

async fn delete(server: &ContractServer, id: &str) -> Resp {
    send(server, "DELETE", &format!("/sandbox/{id}"), Some(&format!("Bearer {KEY}")), None).await
}

async fn post(server: &ContractServer, path: &str, body: Option<&Value>) -> Resp {
    send(server, "POST", path, Some(&format!("Bearer {KEY}")), body).await
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Asserts the documented error body and returns its message.
fn assert_error(resp: &Resp, status: u16, error: &str) -> String {
    assert_eq!(resp.status, status, "body: {}", String::from_utf8_lossy(&resp.body));
    let body = resp.json();
    let keys: BTreeSet<&str> = body.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["path", "timestamp", "statusCode", "error", "message"]));
    assert_eq!(body["statusCode"], json!(status));
    assert_eq!(body["error"], json!(error));
    assert!(body["path"].as_str().unwrap().starts_with("/api"), "{body}");
    let timestamp = body["timestamp"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(timestamp).is_ok() && timestamp.ends_with('Z'), "{timestamp}");
    body["message"].as_str().unwrap().to_string()
}

/// Every page of `GET /sandbox?{query}` with this limit; returns the pages' ids.
async fn all_pages(server: &ContractServer, query: &str, limit: usize) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/sandbox?limit={limit}&{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={}", enc(cursor)));
        }
        let resp = get(server, &path).await;
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        let body = resp.json();
        let items = body["items"].as_array().expect("items");
        assert!(items.len() <= limit);
        pages.push(items.iter().map(|item| item["id"].as_str().unwrap().to_string()).collect());
        match &body["nextCursor"] {
            Value::Null => return pages,
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("nextCursor is {other}"),
        }
        assert!(pages.len() < 1000, "paging does not end");
    }
}

fn ids_of(body: &Value) -> BTreeSet<String> {
    let items = body.get("items").unwrap_or(body).as_array().expect("array of sandboxes");
    items.iter().map(|item| item["id"].as_str().unwrap().to_string()).collect()
}

fn seed_n(server: &ContractServer, n: usize, seed: impl Fn(usize) -> SeedSandbox) -> BTreeSet<String> {
    (0..n).map(|i| server.seed(seed(i))).collect()
}

// ---------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cursor_paging_covers_every_sandbox_once_across_pages() {
    let server = ContractServer::start(ContractConfig::default()).await;
    // The same creation time for all: the default sort (lastActivityAt) ties
    // everywhere, so the cursor must break ties by id.
    let created = SystemTime::now() - Duration::from_secs(3600);
    let ours = seed_n(&server, 250, |_| SeedSandbox { created_at: created, ..SeedSandbox::labelled(&[("run", "p")]) });
    let others = seed_n(&server, 5, |_| SeedSandbox::labelled(&[("run", "other")]));

    let pages = all_pages(&server, &format!("labels={}", enc(r#"{"run":"p"}"#)), 100).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![100, 100, 50]);
    let seen: Vec<&String> = pages.iter().flatten().collect();
    let unique: BTreeSet<String> = seen.iter().map(|s| s.to_string()).collect();
    assert_eq!(seen.len(), unique.len(), "duplicates across pages");
    assert_eq!(unique, ours, "gaps or strangers");

    // Without a filter, with the default limit of 100, and sorted by creation.
    let pages = all_pages(&server, "sort=createdAt&order=asc", 100).await;
    assert_eq!(pages.len(), 3);
    let all: BTreeSet<String> = pages.iter().flatten().cloned().collect();
    assert_eq!(all, ours.union(&others).cloned().collect());
    let resp = get(&server, "/sandbox").await;
    assert_eq!(resp.json()["items"].as_array().unwrap().len(), 100, "default limit");

    // Keyset paging: deleting what was already seen does not shift the rest.
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let mut path = format!("/sandbox?limit=30&labels={}", enc(r#"{"run":"p"}"#));
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", enc(c)));
        }
        let body = get(&server, &path).await.json();
        let page: Vec<String> = ids_of(&body).into_iter().collect();
        for id in page.iter().take(10) {
            assert_eq!(delete(&server, id).await.status, 200);
        }
        seen.extend(page);
        match body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 250, "every sandbox once while deleting between pages");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), ours);
}

#[tokio::test]
async fn list_sorts_and_validates_its_parameters() {
    let server = ContractServer::start(ContractConfig::default()).await;
    let base = SystemTime::now() - Duration::from_secs(1000);
    for i in 0..12u64 {
        server.seed(SeedSandbox {
            name: Some(format!("box-{i:02}")),
            created_at: base + Duration::from_secs(i * 10),
            ..SeedSandbox::default()
        });
    }
    let created = |body: &Value| -> Vec<String> {
        body["items"].as_array().unwrap().iter().map(|i| i["createdAt"].as_str().unwrap().to_string()).collect()
    };
    let asc = created(&get(&server, "/sandbox?sort=createdAt&order=asc").await.json());
    let mut sorted = asc.clone();
    sorted.sort();
    assert_eq!(asc, sorted);
    let desc = created(&get(&server, "/sandbox?sort=createdAt").await.json());
    assert_eq!(desc, asc.iter().rev().cloned().collect::<Vec<_>>(), "order defaults to desc");
    let names: Vec<String> = get(&server, "/sandbox?sort=name&order=asc&limit=5").await.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["box-00", "box-01", "box-02", "box-03", "box-04"]);
    let pages = all_pages(&server, "sort=name&order=asc", 5).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [5, 5, 2]);

    // List items leave out what only a full Sandbox has; integers stay integers.
    let item = &get(&server, "/sandbox?limit=1").await.json()["items"][0];
    for absent in ["env", "volumes", "buildInfo", "backupCreatedAt", "linkedSandboxId"] {
        assert!(item.get(absent).is_none(), "{absent} in a list item");
    }
    for int in ["cpu", "gpu", "memory", "disk", "autoStopInterval", "autoArchiveInterval", "autoDeleteInterval"] {
        assert!(item[int].is_i64(), "{int} = {}", item[int]);
    }

    for (query, needle) in [
        ("limit=0", "limit must not be less than 1"),
        ("limit=201", "limit must not be greater than 200"),
        ("limit=ten", "limit must be an integer number"),
        ("sort=color", "sort must be one of the following values"),
        ("order=up", "order must be one of the following values"),
        ("cursor=not-a-cursor!!", "Invalid cursor"),
        ("cursor=e30%3D", "Invalid cursor"), // base64 of {}
        ("labels=%7Bnope", "Invalid labels JSON format"),
        ("states=destroyed", "each value in states must be one of the following values"),
        ("states[]=sleeping", "each value in states must be one of the following values"),
    ] {
        let resp = get(&server, &format!("/sandbox?{query}")).await;
        let message = assert_error(&resp, 400, "Bad Request");
        assert!(message.contains(needle), "{query}: {message}");
    }
    // Unknown parameters are ignored.
    assert_eq!(get(&server, "/sandbox?verbose=true&whatever=1").await.status, 200);
}

#[tokio::test]
async fn list_filters_by_labels_states_prefixes_and_dates() {
    let server = ContractServer::start(ContractConfig::default()).await;
    let old = SystemTime::now() - Duration::from_secs(7200);
    let a_started = server.seed(SeedSandbox::labelled(&[("team", "a"), ("env", "x")]).with_name("Alpha-1"));
    let a_stopped = server.seed(SeedSandbox::labelled(&[("team", "a")]).with_state("stopped").with_name("alpha-2"));
    let b_error =
        server.seed(SeedSandbox { created_at: old, ..SeedSandbox::labelled(&[("team", "b")]).with_state("error") });
    let b_failed = server.seed(SeedSandbox::labelled(&[("team", "b")]).with_state("build_failed"));
    let archived = server.seed(SeedSandbox::default().with_state("archived").aged(Duration::from_secs(7200)));

    let list = |query: String| {
        let server = &server;
        async move {
            let resp = get(server, &format!("/sandbox?{query}")).await;
            assert_eq!(resp.status, 200, "{query}: {}", String::from_utf8_lossy(&resp.body));
            ids_of(&resp.json())
        }
    };
    let set = |ids: &[&String]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();

    assert_eq!(list(format!("labels={}", enc(r#"{"team":"a"}"#))).await, set(&[&a_started, &a_stopped]));
    assert_eq!(list(format!("labels={}", enc(r#"{"team":"a","env":"x"}"#))).await, set(&[&a_started]));
    assert_eq!(list(format!("labels={}", enc(r#"{"team":"c"}"#))).await, set(&[]));
    assert_eq!(list(format!("labels={}", enc("{}"))).await.len(), 5);
    assert_eq!(list("states=stopped&states=error".into()).await, set(&[&a_stopped, &b_error]));
    assert_eq!(list("states[]=build_failed&states[]=archived".into()).await, set(&[&b_failed, &archived]));
    assert_eq!(list("name=ALPHA".into()).await, set(&[&a_started, &a_stopped]), "name prefix, case-insensitive");
    assert_eq!(list("name=lpha".into()).await, set(&[]), "a prefix, not a substring");
    assert_eq!(list(format!("id={}", &b_error[..8].to_uppercase())).await, set(&[&b_error]));
    let hour_ago = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(3600)).to_string();
    assert_eq!(list(format!("createdAtBefore={}", enc(&hour_ago))).await, set(&[&b_error, &archived]));
    assert_eq!(list(format!("createdAtAfter={}", enc(&hour_ago))).await.len(), 3);

    // Deleted errored sandboxes are hidden unless includeErroredDeleted.
    assert_eq!(delete(&server, &b_error).await.status, 200);
    let team_b = format!("labels={}", enc(r#"{"team":"b"}"#));
    assert_eq!(list(team_b.clone()).await, set(&[&b_failed]));
    assert_eq!(list(format!("{team_b}&includeErroredDeleted=true")).await, set(&[&b_error, &b_failed]));
    // A started one being deleted is still listed (as destroying), until destroyed.
    assert_eq!(delete(&server, &a_started).await.status, 200);
    let body = get(&server, &format!("/sandbox?labels={}", enc(r#"{"env":"x"}"#))).await.json();
    assert_eq!(body["items"][0]["state"], "destroying");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(list(format!("labels={}", enc(r#"{"team":"a"}"#))).await, set(&[&a_stopped]));
    assert_eq!(list(format!("{team_b}&includeErroredDeleted=true")).await, set(&[&b_failed]), "destroyed: never");
}

#[tokio::test]
async fn paginated_and_legacy_lists() {
    let server = ContractServer::start(ContractConfig::default()).await;
    let ours = seed_n(&server, 25, |i| SeedSandbox::labelled(&[("k", "v")]).aged(Duration::from_secs(i as u64)));
    server.seed(SeedSandbox::default());

    let labels = enc(r#"{"k":"v"}"#);
    let mut seen = BTreeSet::new();
    for page in 1..=3 {
        let body = get(&server, &format!("/sandbox/paginated?page={page}&limit=10&labels={labels}")).await.json();
        assert_eq!(body["total"], json!(25));
        assert_eq!(body["page"], json!(page));
        assert_eq!(body["totalPages"], json!(3));
        let items = body["items"].as_array().unwrap();
        assert_eq!(items.len(), if page == 3 { 5 } else { 10 });
        assert!(items[0].get("env").is_some() && items[0]["kvm"].is_boolean(), "full Sandbox objects");
        seen.extend(ids_of(&body));
    }
    assert_eq!(seen, ours);
    let body = get(&server, "/sandbox/paginated").await.json();
    assert_eq!((body["total"].clone(), body["totalPages"].clone()), (json!(26), json!(1)));
    let created: Vec<&str> =
        body["items"].as_array().unwrap().iter().map(|i| i["createdAt"].as_str().unwrap()).collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "createdAt desc by default");
    assert_error(&get(&server, "/sandbox/paginated?page=0").await, 400, "Bad Request");

    server.set_config(|c| c.legacy_list = true);
    let body = get(&server, &format!("/sandbox?labels={labels}&limit=3")).await.json();
    assert!(body.is_array(), "pre-v0.180: a bare array");
    assert_eq!(ids_of(&body), ours, "no paging in the legacy list");
    assert!(body[0].get("env").is_some(), "legacy items are full Sandbox objects");
}

// ---------------------------------------------------------------------------
// Create, get, delete, stop, start
// ---------------------------------------------------------------------------

#[tokio::test]
async fn create_validates_and_answers_a_sandbox_with_integers_and_kvm() {
    let server = ContractServer::start(ContractConfig::default()).await;
    let body = json!({"name": "job-1", "labels": {"benchwarden.run": "r1"}, "env": {}, "volumes": [],
                      "autoStopInterval": 30, "autoDeleteInterval": 60, "autoArchiveInterval": 0});
    let resp = post(&server, "/sandbox", Some(&body)).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert!(resp.header("x-ratelimit-limit-authenticated").is_some());
    let raw = String::from_utf8_lossy(&resp.body).to_string();
    assert!(raw.contains("\"cpu\":2,") && !raw.contains("2.0"), "integers as integers: {raw}");
    let sandbox = resp.json();
    let id = sandbox["id"].as_str().unwrap().to_string();
    assert_eq!(sandbox["name"], "job-1");
    assert_eq!(sandbox["labels"], json!({"benchwarden.run": "r1"}));
    assert_eq!(sandbox["kvm"], json!(false));
    assert_eq!(sandbox["state"], "creating");
    assert_eq!(sandbox["desiredState"], "started");
    assert_eq!(
        (&sandbox["autoStopInterval"], &sandbox["autoDeleteInterval"], &sandbox["autoArchiveInterval"]),
        (&json!(30), &json!(60), &json!(43200))
    );
    for required in ["organizationId", "user", "env", "public", "networkBlockAll", "target", "toolboxProxyUrl"] {
        assert!(sandbox.get(required).is_some(), "{required} missing");
    }
    // A delete while creating is a state change in progress.
    assert_eq!(assert_error(&delete(&server, &id).await, 409, "Conflict"), "Sandbox state change in progress");
    tokio::time::sleep(CREATING_PHASE + Duration::from_millis(50)).await;
    assert_eq!(get(&server, &format!("/sandbox/{id}")).await.json()["state"], "started");
    assert_eq!(get(&server, "/sandbox/job-1").await.json()["id"], json!(id), "lookup by name");
    assert_eq!(server.stats().creates, 1);

    // The recorded request shows what the client sent.
    let recorded = server.requests().into_iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(recorded.header("Authorization"), Some("Bearer test-key"));
    assert_eq!(recorded.json().unwrap()["labels"]["benchwarden.run"], "r1");
    assert_eq!(recorded.status, Some(200));

    let message = assert_error(&post(&server, "/sandbox", Some(&json!({"name": "job-1"}))).await, 409, "Conflict");
    assert_eq!(message, "Sandbox with name job-1 already exists");
    for (body, needle) in [
        (json!({"autoStopInterval": -1}), "autoStopInterval must not be less than 0"),
        (json!({"autoArchiveInterval": -5}), "autoArchiveInterval must not be less than 0"),
        (json!({"autoStopInterval": "soon"}), "autoStopInterval must be an integer number"),
        (json!({"cpu": 4}), "Cannot specify Sandbox resources when using a snapshot"),
        (json!({"snapshot": "x", "buildInfo": {"dockerfileContent": "FROM x"}, "memory": 8}), "Cannot specify"),
    ] {
        let message = assert_error(&post(&server, "/sandbox", Some(&body)).await, 400, "Bad Request");
        assert!(message.contains(needle), "{body}: {message}");
    }
    let built = post(&server, "/sandbox", Some(&json!({"buildInfo": {"dockerfileContent": "FROM x"}, "cpu": 4}))).await;
    assert_eq!(built.json()["cpu"], json!(4), "resources with buildInfo");
    let clamped = post(&server, "/sandbox", Some(&json!({"autoArchiveInterval": 99999}))).await.json();
    assert_eq!(clamped["autoArchiveInterval"], json!(43200));
    assert_eq!(clamped["name"], clamped["id"], "the name defaults to the id");
    assert_eq!(post(&server, "/sandbox", None).await.status, 200, "an empty body is fine");
}

#[tokio::test]
async fn delete_is_a_soft_delete_then_404_after_the_delay() {
    let server = ContractServer::start(ContractConfig::default()).await;
    let id = server.seed(SeedSandbox::labelled(&[("run", "r")]).with_name("alpha"));

    let before_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    let resp = delete(&server, "alpha").await;
    assert_eq!(resp.status, 200, "200 with the Sandbox, not 204");
    let body = resp.json();
    assert_eq!(body["id"], json!(id));
    assert_eq!(body["state"], "destroying");
    assert_eq!(body["desiredState"], "destroyed");
    let name = body["name"].as_str().unwrap();
    let ms: u128 = name.strip_prefix("DESTROYED_alpha_").expect(name).parse().unwrap();
    assert!(ms >= before_ms && ms < before_ms + 5000, "{name}");

    // The name fails at once; the id works until destroyed.
    let message = assert_error(&get(&server, "/sandbox/alpha").await, 404, "Not Found");
    assert_eq!(message, "Sandbox with ID or name alpha not found");
    assert_eq!(get(&server, &format!("/sandbox/{id}")).await.json()["state"], "destroying");
    assert!(server.exists(&id));
    // The old name is free again.
    assert_eq!(post(&server, "/sandbox", Some(&json!({"name": "alpha"}))).await.status, 200);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let message = assert_error(&get(&server, &format!("/sandbox/{id}")).await, 404, "Not Found");
    assert_eq!(message, format!("Sandbox with ID or name {id} not found"));
    assert_error(&delete(&server, &id).await, 404, "Not Found");
    assert!(!server.exists(&id));
    assert!(server.sandboxes().iter().all(|s| s["id"] != json!(id)));
    assert_eq!(server.stats().deletes_accepted, 1);
}

#[tokio::test]
async fn a_second_delete_while_pending_is_409_and_stuck_sandboxes_stay() {
    let server = ContractServer::start(ContractConfig::default()).await;
    let id = server.seed(SeedSandbox::default());
    assert_eq!(delete(&server, &id).await.status, 200);
    let message = assert_error(&delete(&server, &id).await, 409, "Conflict");
    assert_eq!(message, "Sandbox state change in progress");
    assert_eq!(server.stats().deletes_accepted, 1);

    let stuck = server.seed(SeedSandbox::default());
    server.stick_in_destroying(&stuck);
    assert_eq!(delete(&server, &stuck).await.status, 200, "DELETE is accepted as usual");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&server, &format!("/sandbox/{stuck}")).await.json()["state"], "destroying");
    assert_error(&delete(&server, &stuck).await, 409, "Conflict");
    assert!(server.exists(&stuck));
    assert!(!server.exists(&id));
    // Lifted, the accepted delete completes at once (its delay has long passed).
    server.unstick(&stuck);
    assert!(!server.exists(&stuck));
    assert_error(&get(&server, &format!("/sandbox/{stuck}")).await, 404, "Not Found");

    // Errored sandboxes: 200 showing the raw state, then 404 at once.
    let errored = server.seed(SeedSandbox::default().with_state("error"));
    let resp = delete(&server, &errored).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["state"], "error");
    assert_error(&get(&server, &format!("/sandbox/{errored}")).await, 404, "Not Found");
    // Archived ones show their raw state too.
    let archived = server.seed(SeedSandbox::default().with_state("archived"));
    assert_eq!(delete(&server, &archived).await.json()["state"], "archived");
    // A sandbox seeded as destroying goes by itself.
    let going = server.seed(SeedSandbox::default().with_state("destroying"));
    assert_error(&delete(&server, &going).await, 409, "Conflict");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!server.exists(&going));
}

#[tokio::test]
async fn stop_start_and_archive_follow_the_transition_rules() {
    let server = ContractServer::start(ContractConfig::default()).await;
    let id = server.seed(SeedSandbox::default());
    let stop = format!("/sandbox/{id}/stop");
    let start = format!("/sandbox/{id}/start");

    let resp = post(&server, &stop, None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["state"], "stopping");
    assert_eq!(assert_error(&post(&server, &stop, None).await, 409, "Conflict"), "Sandbox state change in progress");
    assert_error(&delete(&server, &id).await, 409, "Conflict");
    tokio::time::sleep(TRANSITION + Duration::from_millis(50)).await;
    assert_eq!(get(&server, &format!("/sandbox/{id}")).await.json()["state"], "stopped");
    let message = assert_error(&post(&server, &stop, None).await, 400, "Bad Request");
    assert_eq!(message, "Sandbox is not in a stoppable state");

    let resp = post(&server, &start, None).await;
    assert_eq!((resp.status, resp.json()["state"].clone()), (200, json!("started")));
    assert_eq!(post(&server, &start, None).await.status, 200, "start on started is a no-op");
    assert_eq!(
        assert_error(&post(&server, &format!("/sandbox/{id}/archive"), None).await, 400, "Bad Request"),
        "Sandbox is not stopped"
    );

    let errored = server.seed(SeedSandbox::default().with_state("error"));
    for op in ["start", "stop", "archive"] {
        let message = assert_error(&post(&server, &format!("/sandbox/{errored}/{op}"), None).await, 400, "Bad Request");
        assert_eq!(message, "Sandbox is in an errored state");
    }
    assert_error(&post(&server, "/sandbox/nope/stop", None).await, 404, "Not Found");

    // Stop on an ephemeral sandbox (autoDeleteInterval 0) is a delete.
    let ephemeral = post(&server, "/sandbox", Some(&json!({"autoDeleteInterval": 0}))).await.json();
    let eid = ephemeral["id"].as_str().unwrap();
    tokio::time::sleep(CREATING_PHASE + Duration::from_millis(50)).await;
    let body = post(&server, &format!("/sandbox/{eid}/stop"), None).await.json();
    assert_eq!(body["state"], "destroying");
    assert!(body["name"].as_str().unwrap().starts_with("DESTROYED_"));

    // Labels, auto intervals and the toolbox proxy URL.
    let resp = send(
        &server,
        "PUT",
        &format!("/sandbox/{id}/labels"),
        Some(&format!("Bearer {KEY}")),
        Some(&json!({"labels": {"a": "b"}})),
    )
    .await;
    assert_eq!(resp.json(), json!({"labels": {"a": "b"}}));
    let resp = post(&server, &format!("/sandbox/{id}/autostop/0"), None).await;
    assert_eq!((resp.status, resp.json()["autoStopInterval"].clone()), (201, json!(0)));
    let url = get(&server, &format!("/sandbox/{id}/toolbox-proxy-url")).await.json();
    assert!(url["url"].as_str().unwrap().starts_with("http://127.0.0.1:"));
}

// ---------------------------------------------------------------------------
// Auth, routing quirks, rate limits, faults
// ---------------------------------------------------------------------------

#[tokio::test]
async fn auth_is_a_bearer_key_and_paths_outside_api_get_the_dashboard() {
    let server = ContractServer::start(ContractConfig { api_key: "k-123".into(), ..ContractConfig::default() }).await;
    for auth in [None, Some("Bearer wrong"), Some("k-123"), Some("Basic k-123")] {
        let resp = send(&server, "GET", "/sandbox", auth, None).await;
        assert_eq!(assert_error(&resp, 401, "Unauthorized"), "Invalid credentials", "{auth:?}");
        assert!(resp.rate_headers().is_empty(), "401 comes before the throttlers");
    }
    assert_eq!(send(&server, "GET", "/sandbox", Some("Bearer k-123"), None).await.status, 200);
    assert_eq!(server.stats().unauthorized_401, 4);

    // Without /api: the dashboard's HTML with 200.
    let resp = send(&server, "GET", "/dashboard/sandboxes", Some("Bearer k-123"), None).await;
    let resp2 = send(&server, "GET", "/", None, None).await;
    for resp in [resp, resp2] {
        assert_eq!(resp.status, 200);
        assert!(resp.header("content-type").unwrap().starts_with("text/html"));
        assert!(String::from_utf8_lossy(&resp.body).starts_with("<!doctype html>"));
    }
    // The SDK's Socket.IO websocket is refused, so it polls.
    let resp = send(&server, "GET", "/api/socket.io/?EIO=4&transport=websocket", None, None).await;
    assert_error(&resp, 404, "Not Found");
    let resp = send(&server, "GET", "/api/nothing-here", Some("Bearer k-123"), None).await;
    assert_eq!(assert_error(&resp, 404, "Not Found"), "Cannot GET /api/nothing-here");
}

#[tokio::test]
async fn throttlers_send_their_headers_and_429_with_retry_after() {
    let server = ContractServer::start(ContractConfig {
        lifecycle_limit_per_minute: Some(2),
        create_limit_per_minute: Some(1),
        ..ContractConfig::default()
    })
    .await;
    let ids: Vec<String> = (0..3).map(|_| server.seed(SeedSandbox::default())).collect();

    let resp = get(&server, "/sandbox").await;
    assert_eq!(
        resp.rate_headers(),
        BTreeSet::from([
            "x-ratelimit-limit-authenticated".to_string(),
            "x-ratelimit-remaining-authenticated".to_string(),
            "x-ratelimit-reset-authenticated".to_string()
        ])
    );
    assert_eq!(resp.header_u64("X-RateLimit-Limit-authenticated"), 10_000);
    let remaining = resp.header_u64("X-RateLimit-Remaining-authenticated");
    assert!(remaining < 167, "the per-second window is the tighter: {remaining}");
    assert!((1..=60).contains(&resp.header_u64("X-RateLimit-Reset-authenticated")));

    // Lifecycle routes carry only sandbox-lifecycle (they skip authenticated).
    let first = delete(&server, &ids[0]).await;
    assert_eq!(first.status, 200);
    assert!(first.rate_headers().iter().all(|h| h.ends_with("-sandbox-lifecycle")), "{:?}", first.rate_headers());
    assert_eq!(first.header_u64("X-RateLimit-Limit-sandbox-lifecycle"), 2);
    assert_eq!(first.header_u64("X-RateLimit-Remaining-sandbox-lifecycle"), 0, "1 a second at 2 a minute");

    // Within one minute the third is refused whatever the second did.
    let mut refused = None;
    for id in &ids[1..] {
        let resp = delete(&server, id).await;
        if resp.status == 429 {
            refused = Some((id.clone(), resp));
            break;
        }
        assert_eq!(resp.status, 200);
    }
    let (refused_id, resp) = refused.expect("a 429 within the limit of 2 a minute");
    let message = assert_error(&resp, 429, "Too Many Requests");
    assert_eq!(message, "ThrottlerException: Too Many Requests");
    let retry = resp.header_u64("Retry-After-sandbox-lifecycle");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(resp.header("Retry-After").is_none(), "no plain Retry-After");
    assert_eq!(resp.header_u64("X-RateLimit-Remaining-sandbox-lifecycle"), 0);
    assert_eq!(get(&server, &format!("/sandbox/{refused_id}")).await.json()["state"], "started", "refused: no effect");
    let stats = server.stats();
    assert!(stats.throttled_429 >= 1);
    assert_eq!(stats.throttled_by.get("sandbox-lifecycle"), Some(&stats.throttled_429));

    // Create counts against authenticated and sandbox-create.
    let created = post(&server, "/sandbox", None).await;
    assert_eq!(created.status, 200);
    for name in ["authenticated", "sandbox-create"] {
        assert!(created.header(&format!("X-RateLimit-Remaining-{name}")).is_some(), "{name}");
    }
    let again = post(&server, "/sandbox", None).await;
    assert_error(&again, 429, "Too Many Requests");
    assert!(again.header("Retry-After-sandbox-create").is_some());
    assert!(again.header("Retry-After-authenticated").is_none());
    assert_eq!(server.stats().creates, 1);

    // Limits change at run time; None means no limit and no headers.
    server.set_config(|c| c.lifecycle_limit_per_minute = None);
    let resp = delete(&server, &refused_id).await;
    assert_eq!(resp.status, 200);
    assert!(resp.rate_headers().is_empty());
}

#[tokio::test]
async fn a_limit_of_6000_a_minute_allows_about_100_a_second() {
    let server = ContractServer::start(ContractConfig {
        lifecycle_limit_per_minute: Some(6000),
        destroy_delay: Duration::from_secs(60),
        ..ContractConfig::default()
    })
    .await;
    let started = tokio::time::Instant::now();
    let ids: Vec<String> = (0..600).map(|_| server.seed(SeedSandbox::default())).collect();
    // Hammer with 4 workers until 1.5 s after the server started: that spans
    // the first two 1 s windows only.
    let deadline = started + Duration::from_millis(1500);
    let queue = std::sync::Arc::new(std::sync::Mutex::new(ids));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let queue = queue.clone();
        let addr = server.addr();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut limited, mut retry_after) = (0u32, 0u32, BTreeSet::new());
            while tokio::time::Instant::now() < deadline {
                let Some(id) = queue.lock().unwrap().pop() else { break };
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let request = format!(
                    "DELETE /api/sandbox/{id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).await.unwrap();
                if response.starts_with("HTTP/1.1 200") {
                    ok += 1;
                } else if response.starts_with("HTTP/1.1 429") {
                    limited += 1;
                    let line = response.lines().find(|l| l.starts_with("retry-after-sandbox-lifecycle:")).unwrap();
                    retry_after.insert(line.split(':').nth(1).unwrap().trim().to_string());
                } else {
                    panic!("unexpected answer: {response}");
                }
            }
            (ok, limited, retry_after)
        }));
    }
    let (mut ok, mut limited, mut retry_after) = (0, 0, BTreeSet::new());
    for worker in workers {
        let (o, l, r) = worker.await.unwrap();
        ok += o;
        limited += l;
        retry_after.extend(r);
    }
    assert!((100..=200).contains(&ok), "accepted {ok} in two 1 s windows (limited {limited})");
    assert!(limited > 0, "a burst beyond 100 a second is refused");
    assert_eq!(retry_after, BTreeSet::from(["1".to_string()]), "the 1 s window is what runs out");
    assert_eq!(server.stats().deletes_accepted, ok as u64);
}

/// Sends `DELETE /api/sandbox/{id}` on a raw connection and asserts that
/// the connection is reset (ECONNRESET) with no answer at all.
async fn assert_delete_is_reset(server: &ContractServer, id: &str) {
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let request = format!("DELETE /api/sandbox/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let err = stream.read_to_end(&mut buf).await.expect_err("the connection is reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(buf.is_empty(), "no answer at all");
}

#[tokio::test]
async fn faults_latency_500s_and_connection_resets() {
    let server = ContractServer::start(ContractConfig::default()).await;
    let id = server.seed(SeedSandbox::default());

    server.set_config(|c| c.latency = Duration::from_millis(150));
    let t = tokio::time::Instant::now();
    assert_eq!(get(&server, "/sandbox").await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
    server.set_config(|c| c.latency = Duration::ZERO);

    // 500: the documented body, and the operation did not happen.
    server.set_config(|c| c.error_rate_5xx = 1.0);
    let message = assert_error(&delete(&server, &id).await, 500, "Internal Server Error");
    assert_eq!(message, "Internal server error");
    server.set_config(|c| c.error_rate_5xx = 0.0);
    assert_eq!(get(&server, &format!("/sandbox/{id}")).await.json()["state"], "started");
    assert_eq!(server.stats().injected_5xx, 1);

    // Reset: the operation happens, the reply is lost (ECONNRESET).
    server.set_config(|c| c.reset_rate = 1.0);
    assert_delete_is_reset(&server, &id).await;
    server.set_config(|c| c.reset_rate = 0.0);
    let message = assert_error(&delete(&server, &id).await, 409, "Conflict");
    assert_eq!(message, "Sandbox state change in progress", "the lost delete happened");
    let stats = server.stats();
    assert_eq!((stats.injected_resets, stats.deletes_accepted), (1, 1));
    let recorded = server.requests();
    let reset = recorded.iter().find(|r| r.method == "DELETE" && r.status.is_none()).expect("recorded");
    assert_eq!(reset.route, "DELETE /api/sandbox/{idOrName}");
    assert_eq!(stats.route("DELETE /api/sandbox/{idOrName}"), 3);
    assert_eq!(stats.requests, 5);
}

#[tokio::test]
async fn fault_rules_answer_what_the_contract_does_not_promise_on_their_turn_only() {
    let list = "GET /api/sandbox";
    let one = "DELETE /api/sandbox/{idOrName}";
    let server = ContractServer::start(ContractConfig {
        rules: vec![
            FaultRule::new(list, Fault::Html(502), When::First(1)),
            FaultRule::new(list, Fault::Html(200), When::First(1)),
            FaultRule::new(list, Fault::EmptyBody(200), When::First(1)),
            FaultRule::new(list, Fault::EmptyBody(503), When::First(1)),
            FaultRule::new(list, Fault::throttled("nan"), When::First(1)),
            FaultRule::new(one, Fault::EmptyBody(200), When::EveryNth(2)),
        ],
        destroy_delay: Duration::from_secs(30),
        ..ContractConfig::default()
    })
    .await;
    let ids: Vec<String> = (0..2).map(|_| server.seed(SeedSandbox::default())).collect();

    // A proxy's 502 page: HTML, and the list was not asked for.
    let page = get(&server, "/sandbox").await;
    assert_eq!(page.status, 502);
    assert!(page.header("content-type").unwrap().starts_with("text/html"), "{:?}", page.headers);
    assert!(String::from_utf8_lossy(&page.body).contains("<h1>502 Bad Gateway</h1>"));
    // A 200 text/html: the dashboard's page.
    let html = get(&server, "/sandbox").await;
    assert_eq!(html.status, 200);
    assert!(html.header("content-type").unwrap().starts_with("text/html"));
    assert!(String::from_utf8_lossy(&html.body).contains("<div id=\"root\">"));
    // Empty bodies, 200 and 503.
    for status in [200, 503] {
        let empty = get(&server, "/sandbox").await;
        assert_eq!((empty.status, empty.body.len()), (status, 0));
        assert_eq!(empty.header("content-length"), Some("0"));
    }
    // A 429 whose waits are not numbers.
    let throttled = get(&server, "/sandbox").await;
    assert_eq!(throttled.status, 429);
    for name in ["retry-after", "retry-after-authenticated", "x-ratelimit-reset-authenticated"] {
        assert_eq!(throttled.header(name), Some("nan"), "{name}: {:?}", throttled.headers);
    }
    assert_eq!(throttled.header("x-ratelimit-remaining-authenticated"), Some("0"));
    // Each rule fired once, in order: the list answers again.
    assert_eq!(ids_of(&get(&server, "/sandbox").await.json()), ids.iter().cloned().collect());

    // Every second DELETE: 200 with its body lost, and the delete performed all the same.
    assert_eq!(delete(&server, &ids[0]).await.status, 200);
    let lost = delete(&server, &ids[1]).await;
    assert_eq!((lost.status, lost.body.len()), (200, 0));
    assert_eq!(get(&server, &format!("/sandbox/{}", ids[1])).await.json()["state"], "destroying");
    let rules = server.config().rules;
    assert_eq!(rules.iter().map(FaultRule::injected).collect::<Vec<_>>(), [1, 1, 1, 1, 1, 1]);
    let by_rule = server.stats().injected_by_rule;
    assert_eq!(by_rule.get("html 502"), Some(&1), "{by_rule:?}");
    assert_eq!(by_rule.get("empty 200"), Some(&2), "{by_rule:?}");
    assert_eq!(by_rule.values().sum::<u64>(), 6, "{by_rule:?}");

    // A latency spike on every call, then a reset on any route: the operation happens, no answer.
    server.set_config(|config| {
        config.rules = vec![
            FaultRule::new(one, Fault::Reset, When::First(1)),
            FaultRule::new(ANY_ROUTE, Fault::Latency(Duration::from_millis(200)), When::EveryNth(1)),
        ]
    });
    let started = tokio::time::Instant::now();
    assert_eq!(get(&server, "/sandbox").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    let third = server.seed(SeedSandbox::default());
    assert_delete_is_reset(&server, &third).await;
    assert_eq!(get(&server, &format!("/sandbox/{third}")).await.json()["state"], "destroying");
    // Outside the API nothing is injected.
    server.set_config(|config| config.rules = vec![FaultRule::new(ANY_ROUTE, Fault::Status(500), When::EveryNth(1))]);
    assert_eq!(send(&server, "GET", "/dashboard", None, None).await.status, 200);
    assert_eq!(assert_error(&get(&server, "/sandbox").await, 500, "Internal Server Error"), "Injected fault");
}

// ---------------------------------------------------------------------------
// The official Python SDK as a client
// ---------------------------------------------------------------------------

fn python() -> PathBuf {
    common::venv_python("daytona")
}

const SDK_SCRIPT: &str = r#"
import json, sys, time
from daytona import Daytona, CreateSandboxFromSnapshotParams, DaytonaError

def state(s):
    return getattr(s.state, "value", s.state)

out = {}
daytona = Daytona()
t = time.monotonic()
sandbox = daytona.create(CreateSandboxFromSnapshotParams(labels={"suite": "contract"}), timeout=30)
out["create_seconds"] = time.monotonic() - t
out["created"] = sandbox.id
out["created_state"] = state(sandbox)
out["listed"] = sorted(s.id for s in daytona.list())
out["got_name"] = daytona.get(sandbox.id).name
daytona.delete(sandbox)
out["deleted_state"] = state(sandbox)
try:
    daytona.delete(sandbox)
    out["second_delete"] = "accepted"
except DaytonaError as e:
    out["second_delete"] = type(e).__name__ + ": " + str(e)
other = daytona.create(timeout=30)
daytona.delete(other, wait=True)
out["waited"] = other.id
out["waited_state"] = state(other)
print(json.dumps(out))
"#;

/// `python -c SCRIPT ARGS` with only our `DAYTONA_*` variables, in an empty
/// directory (no `.env` files), stdin and stdout piped.
fn sdk_command(server: &ContractServer, script: &str, args: &[&str], dir: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(python());
    command.arg("-c").arg(script).args(args).current_dir(dir).kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DAYTONA_") {
            command.env_remove(key);
        }
    }
    command
        .env("DAYTONA_API_URL", server.api_url())
        .env("DAYTONA_API_KEY", KEY)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

fn print_wire(title: &str, server: &ContractServer) {
    println!("--- {title}:");
    for r in server.requests() {
        let headers: BTreeMap<&str, &str> = r
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "host" | "content-length" | "sec-websocket-key"))
            .map(|(k, v)| (k.as_str(), if k == "authorization" { "Bearer <key>" } else { v.as_str() }))
            .collect();
        println!("{} {} -> {:?} {:?} {}", r.method, r.path, r.status, headers, String::from_utf8_lossy(&r.body));
    }
}

/// The script's last stdout line as JSON; panics with its output otherwise.
fn script_result(output: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "SDK script failed:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_creates_lists_and_deletes() {
    let server = ContractServer::start(ContractConfig::default()).await;
    let seeded = server.seed(SeedSandbox::labelled(&[("benchwarden.run", "r0")]));
    let dir = tempfile::tempdir().unwrap();
    let mut command = sdk_command(&server, SDK_SCRIPT, &[], dir.path());
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the SDK script finishes within 2 minutes")
        .expect("run python");
    print_wire("what the SDK sent", &server);
    let out = script_result(&output);
    println!("--- script result: {out}");

    let created = out["created"].as_str().unwrap().to_string();
    assert_eq!(out["created_state"], "started", "create() waited for started");
    let listed: BTreeSet<&str> = out["listed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(listed, BTreeSet::from([created.as_str(), seeded.as_str()]));
    assert_eq!(out["got_name"], json!(created));
    assert_eq!(out["deleted_state"], "destroying");
    assert!(out["second_delete"].as_str().unwrap().contains("state change in progress"), "{}", out["second_delete"]);
    assert_eq!(out["waited_state"], "destroyed", "delete(wait=True) polled until 404");

    // What the server saw.
    let requests = server.requests();
    let create = requests.iter().find(|r| r.method == "POST" && r.route == "POST /api/sandbox").unwrap();
    assert_eq!(create.header("authorization"), Some("Bearer test-key"));
    assert_eq!(create.header("x-daytona-source"), Some("sdk-python"));
    assert!(create.header("x-daytona-organization-id").is_none(), "no organisation header with an API key");
    let body = create.json().unwrap();
    assert_eq!(body["labels"], json!({"suite": "contract", "code-toolbox-language": "python"}));
    let sockets: Vec<_> = requests.iter().filter(|r| r.route == "GET /api/socket.io").collect();
    assert!(!sockets.is_empty(), "the SDK tries its websocket");
    assert!(sockets.iter().all(|r| r.header("authorization").is_none() && r.status == Some(404)));
    assert!(sockets[0].path.contains("transport=websocket"), "{}", sockets[0].path);
    let stats = server.stats();
    assert_eq!((stats.creates, stats.deletes_accepted), (2, 2));
    assert!(stats.route("GET /api/sandbox/{idOrName}") >= 2, "create() polled the sandbox until started");

    // Server state: the waited one is gone, the other goes after the delay.
    assert!(!server.exists(out["waited"].as_str().unwrap()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!server.exists(&created));
    assert!(server.exists(&seeded));
    assert_eq!(server.sandboxes().len(), 1);
}

const SDK_RESET_SCRIPT: &str = r#"
import json, sys
from daytona import Daytona
daytona = Daytona()
sandbox = daytona.get(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
out = {}
for name, call in [("refresh", sandbox.refresh_data), ("create", lambda: daytona.create(timeout=10)),
                   ("delete", lambda: daytona.delete(sandbox))]:
    try:
        call()
        out[name] = "ok"
    except Exception as e:
        out[name] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"#;

/// How the SDK 0.226.1 retries: after a connection reset it silently
/// re-sends GET and DELETE (3 more times), never POST; the reset DELETE and
/// POST still took effect on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_retries_get_and_delete_after_resets_but_not_post() {
    use tokio::io::AsyncBufReadExt;
    let server =
        ContractServer::start(ContractConfig { destroy_delay: Duration::from_secs(60), ..ContractConfig::default() })
            .await;
    let id = server.seed(SeedSandbox::default());
    let dir = tempfile::tempdir().unwrap();
    let mut child = sdk_command(&server, SDK_RESET_SCRIPT, &[&id], dir.path()).spawn().expect("run python");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await.expect("ready in time");
    assert_eq!(ready.unwrap().as_deref(), Some("ready"));
    let before = server.requests().len();
    server.set_config(|c| c.reset_rate = 1.0);
    child.stdin.take().unwrap().write_all(b"go\n").await.unwrap();
    let line = tokio::time::timeout(Duration::from_secs(90), stdout.next_line()).await.expect("done in time");
    let _ = child.wait().await;
    print_wire(&format!("what the SDK sent (resets from request {before} on)"), &server);
    let out: Value = serde_json::from_str(&line.unwrap().unwrap_or_default()).expect("the script's JSON");
    println!("--- script result: {out}");
    for op in ["refresh", "create", "delete"] {
        assert!(out[op].as_str().unwrap().contains("reset"), "{op} fails with the reset: {}", out[op]);
    }
    let after: Vec<_> =
        server.requests().into_iter().skip(before).filter(|r| r.route != "GET /api/socket.io").collect();
    let count = |route: &str| after.iter().filter(|r| r.route == route).count();
    assert_eq!(count("GET /api/sandbox/{idOrName}"), 4, "GET: once and 3 retries");
    assert_eq!(count("POST /api/sandbox"), 1, "POST is never re-sent");
    assert_eq!(count("DELETE /api/sandbox/{idOrName}"), 4, "DELETE: once and 3 retries");
    assert!(after.iter().all(|r| r.status.is_none()), "every one was reset");
    let stats = server.stats();
    assert_eq!((stats.creates, stats.deletes_accepted), (1, 1), "the lost POST and the first DELETE took effect");
    server.set_config(|c| c.reset_rate = 0.0);
    assert_eq!(get(&server, &format!("/sandbox/{id}")).await.json()["state"], "destroying");
}
