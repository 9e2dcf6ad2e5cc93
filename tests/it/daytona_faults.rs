//! The Daytona API misbehaving, in one suite: the contract server's knobs
//! (rate limits, 5xx, resets, latency, sandboxes stuck in `destroying`) and
//! its fault rules for answers the contract does not promise (a 429 whose
//! waits say `nan`, `inf`, `-1`, `1e309` or `soon`; an empty body, 200 or
//! 5xx; HTML instead of JSON, a proxy's 502 page or a 200 `text/html`), on
//! the list, the lookups and the deletes, against `cleanup daytona` of
//! seeded sandboxes and `run` of tasks that create theirs through the
//! per-task proxy.
//!
//! A fault that stops is retried through: everything removed, exit 0. One
//! that never stops ends with a message naming what was not confirmed gone
//! and what to do, a documented exit code, and the next cleanup or
//! `recover` finishing once it is lifted. Never a panic. Each case ends by
//! listing the contract server, not by trusting benchwarden's report, and
//! publishes its figures (`figures::record`) for RELIABILITY.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use daytona_contract::{ContractConfig, Fault, FaultRule, When, ANY_ROUTE};
use serde_json::json;

use crate::common::daytona::{Org, DELETE, LIST};
use crate::common::{figures, CliOutput};

/// A lookup of one sandbox.
const GET: &str = "GET /api/sandbox/{idOrName}";
const CREATE: &str = "POST /api/sandbox";
/// Quick retries, so a case waits milliseconds between attempts, not seconds.
const QUICK_RETRIES: [&str; 4] = ["--retries", "8", "--retry-delay", "50ms"];
/// Few quick retries, for a fault that never stops.
const FEW_RETRIES: [&str; 4] = ["--retries", "2", "--retry-delay", "50ms"];
/// How many sandboxes each `cleanup daytona` case seeds.
const SEEDED: usize = 6;

/// Every fault the server injected: by rule, its 5xx and reset rates, its
/// throttlers' 429s, and the sandboxes it made stick in `destroying`.
fn injected(org: &Org) -> u64 {
    let stats = org.server.stats();
    let by_rule: u64 = stats.injected_by_rule.values().sum();
    by_rule + stats.injected_5xx + stats.injected_resets + stats.throttled_429 + stats.stuck_in_destroying
}

#[track_caller]
fn assert_no_panic(output: &CliOutput) {
    assert!(!output.stderr.contains("panicked"), "benchwarden panicked\n{output}");
}

/// Asserts that the server has nothing left, and publishes the case's
/// figures: `output` is the command that met the fault; for a fault that
/// never stopped, `until_lifted` is what it left, before the next cleanup or
/// `recover` finished once the fault was lifted.
#[track_caller]
fn record(case: &str, org: &Org, output: &CliOutput, until_lifted: Option<usize>) {
    assert_no_panic(output);
    assert!(org.left().is_empty(), "left on the server: {:?}\n{output}", org.left());
    let stats = org.server.stats();
    let mut fields = json!({
        "runs": 1,
        "injected": injected(org),
        "by_rule": stats.injected_by_rule,
        "exit": output.status.code(),
        "left": 0,
    });
    if let Some(left) = until_lifted {
        fields["left_until_lifted"] = left.into();
    }
    figures::record(&format!("daytona-fault: {case}"), fields);
}

fn rule(route: &str, fault: Fault, when: When) -> FaultRule {
    FaultRule::new(route, fault, when)
}

/// `cleanup daytona --no-dry-run` of [`SEEDED`] sandboxes of a dead run
/// under `config`, with quick retries.
async fn cleanup_under(config: ContractConfig) -> (Org, CliOutput) {
    cleanup_with(config, &QUICK_RETRIES).await
}

async fn cleanup_with(config: ContractConfig, retries: &[&str]) -> (Org, CliOutput) {
    let org = Org::start(config).await;
    org.seed_ours(SEEDED);
    let mut args = retries.to_vec();
    args.extend(["cleanup", "daytona", "--no-dry-run", "--json"]);
    let output = org.cli(&args).await;
    (org, output)
}

/// A fault that stops: every sandbox deleted and seen gone, exit 0.
#[track_caller]
fn assert_all_removed(case: &str, org: &Org, output: &CliOutput, at_least: u64) {
    output.assert_code(0);
    let report = output.json();
    assert_eq!(
        report["removed"].as_u64().unwrap() + report["already_gone"].as_u64().unwrap(),
        SEEDED as u64,
        "{report}"
    );
    assert_eq!((report["failed"].as_u64(), report["pending"].as_u64()), (Some(0), Some(0)), "{report}");
    let injected = injected(org);
    assert!(injected >= at_least, "{case}: {injected} faults injected, expected at least {at_least}\n{output}");
    record(case, org, output, None);
}

// ---------------------------------------------------------------------------
// cleanup daytona: faults that stop
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_waits_out_a_429_storm() {
    // The first 8 deletes refused with a one-second wait, and a lifecycle limit of 2 a second.
    // The pacer lets one delete probe each window, and that one may meet every 429 of the
    // storm. A 429 that says how long to wait spends no retry: with `--retries 2` the storm is
    // four times longer than the retries (it used to end that sandbox as failed).
    let storm = 8;
    let rules = vec![rule(DELETE, Fault::throttled("1"), When::First(storm))];
    let config = ContractConfig { rules, lifecycle_limit_per_minute: Some(120), ..ContractConfig::default() };
    let started = Instant::now();
    let (org, output) = cleanup_with(config, &["--retries", "2", "--retry-delay", "50ms"]).await;
    // Each 429 says to wait a second, and the next delete waits for the window's end.
    assert!(started.elapsed() >= Duration::from_secs(storm), "the 429s' wait was not honoured\n{output}");
    assert!(output.stderr.contains("429"), "the 429s are not shown\n{output}");
    assert_all_removed("429 storm on deletes", &org, &output, storm);
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_retries_server_errors_on_every_call() {
    let rules = vec![
        rule(LIST, Fault::Status(502), When::First(1)),
        rule(LIST, Fault::Status(500), When::First(1)),
        rule(DELETE, Fault::Status(500), When::First(4)),
        rule(DELETE, Fault::Status(503), When::EveryNth(3)),
        rule(GET, Fault::Status(500), When::EveryNth(2)),
    ];
    let config = ContractConfig { rules, error_rate_5xx: 0.1, ..ContractConfig::default() };
    let (org, output) = cleanup_under(config).await;
    assert!(output.stderr.contains("retrying in"), "the retries are not shown\n{output}");
    assert_all_removed("5xx on list, delete and lookup", &org, &output, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_retries_connections_reset_after_the_server_acted() {
    // A reset delete was carried out: the next one answers 409, and the sandbox is on its way out.
    let rules = vec![
        rule(LIST, Fault::Reset, When::First(1)),
        rule(DELETE, Fault::Reset, When::First(3)),
        rule(GET, Fault::Reset, When::First(2)),
    ];
    let (org, output) = cleanup_under(ContractConfig { rules, ..ContractConfig::default() }).await;
    assert_all_removed("connection resets on list, delete and lookup", &org, &output, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_waits_for_answers_through_latency_spikes() {
    let spike = Duration::from_millis(1500);
    let rules = vec![rule(ANY_ROUTE, Fault::Latency(spike), When::EveryNth(4))];
    let started = Instant::now();
    let (org, output) = cleanup_under(ContractConfig { rules, ..ContractConfig::default() }).await;
    assert!(started.elapsed() >= spike, "{output}");
    assert_all_removed("latency spikes of 1.5 s on every 4th call", &org, &output, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_treats_nonsense_waits_as_no_wait_given() {
    let mut rules = Vec::new();
    for text in ["nan", "inf", "-1", "1e309", "soon"] {
        rules.push(rule(DELETE, Fault::throttled(text), When::First(1)));
    }
    for text in ["nan", "soon"] {
        rules.push(rule(LIST, Fault::throttled(text), When::First(1)));
    }
    for text in ["1e309", "-1"] {
        rules.push(rule(GET, Fault::throttled(text), When::First(1)));
    }
    let started = Instant::now();
    let (org, output) = cleanup_under(ContractConfig { rules, ..ContractConfig::default() }).await;
    assert!(started.elapsed() < Duration::from_secs(60), "a nonsense wait was taken literally\n{output}");
    assert_all_removed("429 whose Retry-After / X-RateLimit-Reset say nan, inf, -1, 1e309, soon", &org, &output, 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_retries_empty_bodies_and_html_pages() {
    type Answer = fn(u16) -> Fault;
    let kinds: [(&str, Answer); 2] =
        [("empty bodies", Fault::EmptyBody), ("HTML (a 200 text/html, a proxy's error page)", Fault::Html)];
    for (what, fault) in kinds {
        let rules = vec![
            rule(LIST, fault(200), When::First(1)),
            rule(LIST, fault(502), When::First(1)),
            // A 200 whose body is not the sandbox: the delete happened all the same.
            rule(DELETE, fault(200), When::First(2)),
            rule(DELETE, fault(503), When::First(2)),
            rule(GET, fault(200), When::First(2)),
            rule(GET, fault(500), When::First(1)),
        ];
        let (org, output) = cleanup_under(ContractConfig { rules, ..ContractConfig::default() }).await;
        assert_all_removed(&format!("{what}, 200 and 5xx, on list, delete and lookup"), &org, &output, 9);
    }
}

// ---------------------------------------------------------------------------
// cleanup daytona: faults that never stop, then lifted
// ---------------------------------------------------------------------------

/// After a case whose fault never stopped: lifted, the next cleanup removes everything.
async fn the_next_cleanup_finishes(case: &str, org: &Org) {
    org.server.set_config(|config| config.rules.clear());
    let again = org.cli(&["cleanup", "daytona", "--no-dry-run"]).await;
    again.assert_code(0);
    assert_no_panic(&again);
    assert!(org.left().is_empty(), "{case}: the next cleanup left {:?}\n{again}", org.left());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_that_keeps_answering_html_is_a_clear_error_and_nothing_is_touched() {
    for (case, fault) in
        [("list always a 200 text/html", Fault::Html(200)), ("list always a proxy's 502 page", Fault::Html(502))]
    {
        let rules = vec![rule(LIST, fault, When::EveryNth(1))];
        let (org, output) = cleanup_with(ContractConfig { rules, ..ContractConfig::default() }, &FEW_RETRIES).await;
        output.assert_code(1);
        let error =
            output.stderr.lines().find(|line| line.starts_with("error: ")).unwrap_or_else(|| panic!("{output}"));
        assert!(error.contains("list sandboxes") && error.contains("DAYTONA_API_URL"), "{case}: {error}\n{output}");
        assert!(error.contains("an HTML page"), "{case}: what came back is not said: {error}");
        assert_eq!(org.server.stats().route(LIST), 3, "{case}: one attempt and two retries\n{output}");
        assert_eq!(org.server.stats().route(DELETE), 0, "{output}");
        assert_eq!(org.left().len(), SEEDED, "{output}");
        the_next_cleanup_finishes(case, &org).await;
        record(case, &org, &output, Some(SEEDED));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_that_keep_failing_name_each_sandbox_and_the_next_cleanup_finishes() {
    let rules = vec![rule(DELETE, Fault::Html(502), When::EveryNth(1))];
    let (org, output) = cleanup_with(ContractConfig { rules, ..ContractConfig::default() }, &FEW_RETRIES).await;
    output.assert_code(1);
    let report = output.json();
    assert_eq!(report["failed"], SEEDED, "{report}");
    for id in org.left() {
        let named = output.stderr.lines().any(|line| line.contains(&id) && line.contains("could not remove"));
        assert!(named, "{id} is not named as not removed\n{output}");
    }
    assert!(output.stderr.contains("502"), "the cause is not named\n{output}");
    assert_eq!(org.left().len(), SEEDED, "{output}");
    the_next_cleanup_finishes("delete always a proxy's 502 page", &org).await;
    record("delete always a proxy's 502 page", &org, &output, Some(SEEDED));
}

// ---------------------------------------------------------------------------
// run: tasks create sandboxes through the per-task proxy
// ---------------------------------------------------------------------------

/// A benchmark of `tasks`, each creating `creates` sandboxes through its
/// proxy with curl, with the teardown's deadline `deadline`.
fn curl_fixture(org: &Org, tasks: &[&str], creates: usize, deadline: &str) -> PathBuf {
    let dir = org.state_dir().join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("harness.sh"), harness_script(creates)).unwrap();
    let yaml = format!(
        "name: daytona-faults\nharness:\n  command: [sh, harness.sh]\n  cwd: .\ntasks: [{tasks}]\n\
         cleanup:\n  retry:\n    deadline: {deadline}\ndocker:\n  enabled: false\ndaytona:\n  enabled: true\n",
        tasks = tasks.join(", ")
    );
    let benchmark = dir.join("benchmark.yaml");
    std::fs::write(&benchmark, yaml).unwrap();
    benchmark
}

/// A shell harness creating `creates` sandboxes through its proxy with curl, one after the other.
fn harness_script(creates: usize) -> String {
    format!(
        "for i in $(seq {creates}); do\n\
         curl -s -X POST -H \"Authorization: Bearer $DAYTONA_API_KEY\" -H 'Content-Type: application/json' \
         -d '{{}}' \"$DAYTONA_API_URL/sandbox\"; echo\n\
         done\n"
    )
}

/// `run` of two tasks creating two sandboxes each, under `config`.
async fn run_under(config: ContractConfig, deadline: &str) -> (Org, CliOutput) {
    let org = Org::start(config).await;
    let benchmark = curl_fixture(&org, &["a", "b"], 2, deadline);
    let mut args = QUICK_RETRIES.to_vec();
    args.extend(["run", benchmark.to_str().unwrap(), "-j", "2"]);
    let output = org.cli(&args).await;
    (org, output)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_tears_down_through_429s_5xx_resets_and_odd_answers() {
    let rules = vec![
        rule(LIST, Fault::Status(503), When::First(1)),
        rule(LIST, Fault::Html(200), When::First(1)),
        rule(LIST, Fault::EmptyBody(200), When::First(1)),
        rule(LIST, Fault::throttled("nan"), When::First(1)),
        rule(DELETE, Fault::throttled("1e309"), When::First(1)),
        rule(DELETE, Fault::Reset, When::First(1)),
        rule(DELETE, Fault::Html(502), When::First(1)),
        rule(DELETE, Fault::EmptyBody(200), When::First(1)),
        rule(GET, Fault::Status(500), When::EveryNth(2)),
        rule(GET, Fault::Html(200), When::First(1)),
    ];
    let (org, output) = run_under(ContractConfig { rules, ..ContractConfig::default() }, "30s").await;
    output.assert_code(0);
    assert_eq!(org.server.stats().creates, 4, "{output}");
    assert!(output.stdout.contains("4 resource(s) removed, 0 leaked"), "{output}");
    assert!(injected(&org) >= 9, "{output}");
    record("run: 429s, 5xx, resets, HTML and empty bodies in the teardown", &org, &output, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_whose_answer_was_lost_is_found_by_its_labels() {
    // The server created the sandbox, but the harness (and the proxy) got an empty 200, an HTML
    // page, or a connection reset instead of its answer.
    let rules = vec![
        rule(CREATE, Fault::EmptyBody(200), When::First(1)),
        rule(CREATE, Fault::Html(200), When::First(1)),
        rule(CREATE, Fault::Reset, When::First(1)),
    ];
    let (org, output) = run_under(ContractConfig { rules, ..ContractConfig::default() }, "30s").await;
    output.assert_code(0);
    assert_eq!(org.server.stats().creates, 4, "{output}");
    assert!(output.stdout.contains("4 resource(s) removed, 0 leaked"), "{output}");
    record("run: create answered with an empty body, HTML or a reset after the server created it", &org, &output, None);
}

/// A run whose fault never stopped: exit 3, each sandbox left named with
/// `benchwarden recover`; lifted, `recover` finishes.
async fn recover_finishes(case: &str, org: &Org, output: &CliOutput, lift: impl FnOnce(&Org)) {
    output.assert_code(3);
    let left = org.left();
    assert!(!left.is_empty(), "{case}: nothing was left\n{output}");
    for id in &left {
        assert!(
            output.stdout.contains(id.as_str()) || output.stderr.contains(id.as_str()),
            "{id} is not named\n{output}"
        );
    }
    assert!(output.stderr.contains("retry with `benchwarden recover"), "{case}: what to do is not said\n{output}");
    lift(org);
    let recovered = org.cli(&["recover"]).await;
    assert_no_panic(&recovered);
    recovered.assert_code(0);
    assert!(org.left().is_empty(), "{case}: recover left {:?}\n{recovered}", org.left());
    record(case, org, output, Some(left.len()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_stuck_in_destroying_leaves_the_run_to_recover() {
    let org = Org::start(ContractConfig::default()).await;
    let benchmark = curl_fixture(&org, &["a"], 2, "2s");
    // The harness waits on a pipe after its creates until the first sandbox is made to stick.
    let go = benchmark.with_file_name("go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::write(benchmark.with_file_name("harness.sh"), format!("{}read line < go\n", harness_script(2))).unwrap();
    let child = org.spawn(&["--retry-delay", "50ms", "run", benchmark.to_str().unwrap()]);
    org.wait_for_requests(CREATE, 1).await;
    // A create is recorded with its answer, so the sandbox exists by now.
    let stuck = org.left().into_iter().next().expect("the harness created a sandbox");
    org.server.stick_in_destroying(&stuck);
    std::fs::write(&go, "go\n").unwrap();
    let output = org.wait(child).await;
    assert!(output.stdout.contains("still being deleted"), "{output}");
    assert_eq!(org.left().into_iter().collect::<Vec<_>>(), std::slice::from_ref(&stuck), "{output}");
    recover_finishes("run: a sandbox stuck in destroying", &org, &output, |org| org.server.unstick(&stuck)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_teardown_whose_deletes_keep_answering_html_leaves_the_run_to_recover() {
    let rules = vec![rule(DELETE, Fault::Html(502), When::EveryNth(1))];
    let (org, output) = run_under(ContractConfig { rules, ..ContractConfig::default() }, "5s").await;
    let lift = |org: &Org| org.server.set_config(|config| config.rules.clear());
    recover_finishes("run: delete always a proxy's 502 page", &org, &output, lift).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_teardown_whose_list_keeps_answering_html_leaves_the_run_to_recover() {
    let rules = vec![rule(LIST, Fault::Html(200), When::EveryNth(1))];
    let (org, output) = run_under(ContractConfig { rules, ..ContractConfig::default() }, "5s").await;
    // The summary says why, not only which call failed.
    let line = output.stdout.lines().find(|line| line.contains("teardown:")).unwrap_or_else(|| panic!("{output}"));
    assert!(line.contains("list sandboxes failed") && line.contains("an HTML page"), "{line}\n{output}");
    let lift = |org: &Org| org.server.set_config(|config| config.rules.clear());
    recover_finishes("run: list always a 200 text/html", &org, &output, lift).await;
}
