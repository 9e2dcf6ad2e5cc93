//! Fuzzing what the proxies read from outside: the requests the harnesses'
//! clients send and the answers the services give. Real messages are kept in
//! `tests/corpus/proxy/` (requests of the docker CLI, compose, docker-py and
//! the Daytona SDK; answers of the engine and the Daytona API); proptest
//! mutates them (flipped, inserted, deleted and spliced bytes, cuts) and, now
//! and then, makes arbitrary bytes. Each input goes through everything a
//! proxy does with it short of the sockets: head parsing and framing,
//! chunked bodies, keep-alive, the policy's create and image decisions, the
//! body rewrite, the head sent upstream and the id read from the answer.
//!
//! Beyond "never panics", two properties hold whenever a create is let
//! through: the rewritten body carries every owner label, and the head sent
//! upstream parses again with the rewritten body's length.
//!
//! `.ci/run` runs proptest's default number of cases; `scripts/reliability.sh`
//! runs many more (`PROPTEST_CASES`). A failing input proptest finds is kept
//! in `proptest-regressions/` and replayed first from then on.
#![cfg(test)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value;

use crate::corpus::mutated;

use super::daytona_proxy::{ApiTarget, DaytonaPolicy};
use super::docker_proxy::DockerPolicy;
use super::images::ImageCall;
use super::proxy::Policy;
use crate::net::http::{Buffered, Framing};

/// The owner labels every rewritten create must carry.
fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("benchwarden.run".to_string(), "20261130-1500-k3f9".to_string()),
        ("benchwarden.task".to_string(), "fix-git".to_string()),
    ])
}

fn docker_policy() -> DockerPolicy {
    DockerPolicy { labels: labels() }
}

fn daytona_policy() -> DaytonaPolicy {
    DaytonaPolicy {
        // Cannot fail: a fixed, valid URL.
        target: ApiTarget::parse("https://app.daytona.io/api").expect("a valid API URL"),
        labels: labels(),
        auto_stop_minutes: Some(30),
        auto_delete_minutes: Some(0),
    }
}

fn block_on<T>(work: impl std::future::Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime");
    runtime.block_on(work)
}

/// The decoded body of an answer, as a proxy reads it whole.
async fn body_of(answer: &[u8]) -> Vec<u8> {
    let mut input = Buffered::new(answer);
    let Ok(head) = input.read_head(false).await else { return Vec::new() };
    let Ok(framing) = head.response_framing("POST") else { return Vec::new() };
    input.copy_body(framing, &mut tokio::io::sink(), true).await.ok().flatten().unwrap_or_default()
}

/// One connection's requests through `policy`, with `answer` as the
/// upstream's reply to each; how many creates were let through.
async fn through_proxy<P: Policy>(
    policy: &P,
    field: &str,
    request: &[u8],
    answer: &[u8],
) -> Result<usize, TestCaseError> {
    let answer = body_of(answer).await;
    let mut input = Buffered::new(request);
    let mut let_through = 0;
    // A few requests on one kept-alive connection.
    for _ in 0..4 {
        let Ok(head) = input.read_head(true).await else { break };
        let _ = (policy.may_hijack(&head), head.is_upgrade(), head.wants_close(), policy.refusal(&head, "full"));
        if let Some(mut call) = policy.image_call(&head) {
            call.observe(&answer);
            let _ = call.finish();
        }
        let Ok(framing) = head.request_framing() else { break };
        let Ok(body) = input.copy_body(framing, &mut tokio::io::sink(), true).await else { break };
        let body = body.unwrap_or_default();
        let Some(kind) = policy.create_kind(&head) else {
            let _ = policy.upstream_head(&head, None);
            continue;
        };
        let Ok(rewritten) = policy.rewrite_create_body(kind, &body) else { continue };
        let value: Value =
            serde_json::from_slice(&rewritten).map_err(|error| TestCaseError::fail(error.to_string()))?;
        for (key, label) in labels() {
            prop_assert_eq!(value[field][&key].as_str(), Some(label.as_str()), "{} lost a label", field);
        }
        let upstream = policy.upstream_head(&head, Some(rewritten.len()));
        let again = Buffered::new(upstream.as_slice()).read_head(true).await;
        let again = again.map_err(|error| TestCaseError::fail(format!("the head sent upstream: {error}")))?;
        prop_assert_eq!(&again.method, &head.method);
        prop_assert_eq!(again.request_framing().ok(), Some(Framing::Length(rewritten.len() as u64)));
        let _ = policy.created(kind, &head.target, &body, &answer);
        let_through += 1;
    }
    Ok(let_through)
}

/// An answer as the proxy reads it back: head, framing, body, the image
/// call watching it, and the id a create would record.
async fn answer_read_back<P: Policy>(policy: &P, answer: &[u8]) {
    for method in ["POST", "GET", "HEAD"] {
        let mut input = Buffered::new(answer);
        let Ok(head) = input.read_head(false).await else { return };
        let Ok(framing) = head.response_framing(method) else { continue };
        let mut call = ImageCall::of("POST", "/build", "/build?t=x", &labels());
        let mut observe = |bytes: &[u8]| {
            if let Some(call) = call.as_mut() {
                call.observe(bytes);
            }
        };
        if let Ok(end) = input.copy_body_observed(framing, &mut tokio::io::sink(), &mut observe).await {
            let _ = policy.created(crate::resource::Kind::Container, "/containers/create?name=x", b"{}", &end);
        }
        let _ = call.and_then(ImageCall::finish);
    }
}

proptest! {
    #[test]
    fn docker_requests_never_panic_and_creates_keep_their_labels(
        request in mutated("proxy/requests"),
        answer in mutated("proxy/responses"),
    ) {
        block_on(through_proxy(&docker_policy(), "Labels", &request, &answer))?;
    }

    #[test]
    fn daytona_requests_never_panic_and_creates_keep_their_labels(
        request in mutated("proxy/requests"),
        answer in mutated("proxy/responses"),
    ) {
        block_on(through_proxy(&daytona_policy(), "labels", &request, &answer))?;
    }

    #[test]
    fn answers_never_panic_the_proxies(answer in mutated("proxy/responses")) {
        block_on(answer_read_back(&docker_policy(), &answer));
        block_on(answer_read_back(&daytona_policy(), &answer));
    }
}

#[test]
fn the_corpus_itself_goes_through_whole() {
    // Unmutated, every kept create is let through, with its labels: the
    // docker CLI's, compose's (chunked) and docker-py's container creates, a
    // network's and a volume's; the Daytona SDK's sandbox creates.
    let (requests, answers) = (crate::corpus::seeds("proxy/requests"), crate::corpus::seeds("proxy/responses"));
    let let_through = |policy: &dyn Fn(&[u8], &[u8]) -> usize| -> usize {
        requests.iter().map(|request| policy(request, &answers[0])).sum()
    };
    let docker = let_through(&|request, answer| {
        block_on(through_proxy(&docker_policy(), "Labels", request, answer)).expect("a corpus request")
    });
    let daytona = let_through(&|request, answer| {
        block_on(through_proxy(&daytona_policy(), "labels", request, answer)).expect("a corpus request")
    });
    assert_eq!((docker, daytona), (5, 2));
    for answer in &answers {
        block_on(answer_read_back(&docker_policy(), answer));
    }
}
