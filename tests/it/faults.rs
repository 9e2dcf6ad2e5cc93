//! The Docker daemon misbehaving: benchwarden pointed (through `DOCKER_HOST`)
//! at a [`FaultyEngine`] that answers 500s and 409s, answers slowly, drops
//! connections, cuts a JSON body short, or vanishes for a while as a
//! restarting daemon does. Each test ends by listing, through the real
//! engine, what its scope left: nothing, whatever benchwarden reported.

use std::time::Duration;

use crate::common::faulty::{Fault, FaultyEngine, Rule, When};
use crate::common::*;
use crate::run::{fixture, path};

/// Quick retries, so a test waits milliseconds, not the default seconds.
const QUICK_RETRIES: [&str; 4] = ["--retries", "4", "--retry-delay", "100ms"];

/// `benchwarden ARGS` of `scope`, talking to the engine through `engine`.
async fn cli_through(scope: &TestScope, engine: &FaultyEngine, args: &[&str]) -> CliOutput {
    let mut command = scope.benchwarden();
    command.env("DOCKER_HOST", engine.docker_host()).args(args);
    run_cli(command).await
}

#[track_caller]
fn assert_nothing_left(left: &Leftovers, context: &CliOutput) {
    assert!(left.is_empty(), "resources left: {left:?}\n{context}");
}

/// `cleanup docker --label SCOPE` of `count` running containers through `rules`.
async fn cleanup_through_faults(name: &str, count: usize, rules: Vec<Rule>) -> (TestScope, FaultyEngine, CliOutput) {
    let scope = TestScope::new(name).await;
    for _ in 0..count {
        scope.running(&[]).await;
    }
    assert_eq!(scope.leftovers().await.containers.len(), count);
    let engine = FaultyEngine::start(rules);
    let label = scope.label_arg();
    let mut args = QUICK_RETRIES.to_vec();
    args.extend(["cleanup", "docker", "--label", &label]);
    let output = cli_through(&scope, &engine, &args).await;
    (scope, engine, output)
}

fn delete_containers(fault: Fault, when: When) -> Rule {
    Rule::new("DELETE", "/containers/", fault, when)
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_removals_in_progress_are_retried_until_all_is_gone() {
    let rules = vec![
        delete_containers(Fault::ServerError, When::First(2)),
        delete_containers(Fault::RemovalInProgress, When::First(1)),
    ];
    let (scope, engine, output) = cleanup_through_faults("faults-5xx-409", 6, rules).await;
    output.assert_code(0);
    assert_eq!((engine.injected(0), engine.injected(1)), (2, 1), "{output}");
    assert!(output.stdout.contains("containers: 6 removed, 0 already gone, 0 failed"), "{output}");
    assert!(output.stderr.contains("retrying in"), "the retries are not shown\n{output}");
    assert!(output.stderr.contains("already in progress"), "{output}");
    assert_nothing_left(&scope.leftovers().await, &output);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_answers_are_waited_for() {
    let rules = vec![delete_containers(Fault::Slow(Duration::from_millis(300)), When::EveryNth(1))];
    let (scope, engine, output) = cleanup_through_faults("faults-slow", 6, rules).await;
    output.assert_code(0);
    assert_eq!(engine.injected(0), 6, "{output}");
    assert!(output.stdout.contains("containers: 6 removed, 0 already gone, 0 failed"), "{output}");
    assert_nothing_left(&scope.leftovers().await, &output);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_reset_without_an_answer_are_retried() {
    let rules = vec![delete_containers(Fault::Reset, When::First(3))];
    let (scope, engine, output) = cleanup_through_faults("faults-reset", 6, rules).await;
    output.assert_code(0);
    assert_eq!(engine.injected(0), 3, "{output}");
    assert!(output.stdout.contains("containers: 6 removed"), "{output}");
    assert!(output.stderr.contains("retrying in"), "the retries are not shown\n{output}");
    assert_nothing_left(&scope.leftovers().await, &output);
}

/// A listing cut short once is asked again: `cleanup docker` tells the retry
/// (with what broke) and removes all.
async fn a_listing_cut_short_is_retried(name: &str, fault: Fault, says: &str) {
    let rules = vec![Rule::new("GET", "/containers/json", fault, When::First(1))];
    let (scope, engine, output) = cleanup_through_faults(name, 3, rules).await;
    assert_eq!(engine.injected(0), 1, "{output}");
    output.assert_code(0);
    let retry =
        output.stderr.lines().find(|line| line.contains("list containers")).unwrap_or_else(|| panic!("{output}"));
    assert!(retry.contains("retrying in") && retry.contains(says), "{output}");
    assert!(output.stdout.contains("containers: 3 removed, 0 already gone, 0 failed"), "{output}");
    assert_nothing_left(&scope.leftovers().await, &output);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_broken_off_mid_body_is_retried() {
    let says = "connection closed before message completed";
    a_listing_cut_short_is_retried("faults-broken-off", Fault::TruncatedBody, says).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_of_half_a_json_document_is_retried() {
    a_listing_cut_short_is_retried("faults-half-json", Fault::CutJson, "EOF").await;
}

/// A listing that breaks on every attempt: once the retries are spent,
/// `cleanup docker` stops with exit 1 and one line naming the call, having
/// removed nothing; the next cleanup, on a healthy engine, removes all.
#[tokio::test(flavor = "multi_thread")]
async fn a_listing_that_always_breaks_fails_clearly_and_the_next_cleanup_removes_all() {
    let rules = vec![Rule::new("GET", "/containers/json", Fault::CutJson, When::EveryNth(1))];
    let (scope, engine, output) = cleanup_through_faults("faults-always-broken", 3, rules).await;
    assert_eq!(engine.injected(0), 1 + 4, "the first listing and 4 retries\n{output}");
    output.assert_code(1);
    let error = output.stderr.lines().find(|line| line.starts_with("error: ")).unwrap_or_else(|| panic!("{output}"));
    assert!(error.contains("docker list containers failed") && error.contains("EOF"), "{output}");
    assert_eq!(scope.leftovers().await.containers.len(), 3, "{output}");

    let mut healthy = scope.benchwarden();
    healthy.args(["cleanup", "docker", "--label", &scope.label_arg()]);
    let again = run_cli(healthy).await;
    again.assert_code(0);
    assert_nothing_left(&scope.leftovers().await, &again);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_restart_in_the_middle_of_a_teardown_is_waited_out() {
    let scope = TestScope::new("faults-restart").await;
    let fixture = fixture(&scope, &[("three", "start_container; start_container; start_container; exit 0")], "");
    let engine = FaultyEngine::start(vec![delete_containers(Fault::Vanish(Duration::from_secs(2)), When::First(1))]);
    let args = ["--retries", "5", "--retry-delay", "500ms", "run", path(&fixture)];
    let output = cli_through(&scope, &engine, &args).await;
    assert_eq!(engine.injected(0), 1, "{output}");
    output.assert_code(0);
    assert!(output.stderr.contains("No such file or directory"), "the daemon was never away\n{output}");
    assert!(output.stdout.contains("3 resource(s) removed, 0 leaked"), "{output}");
    assert_nothing_left(&scope.leftovers().await, &output);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_away_past_the_deadline_leaves_the_run_to_recover() {
    let scope = TestScope::new("faults-away").await;
    let fixture = fixture(&scope, &[("three", "start_container; start_container; start_container; exit 0")], "");
    let engine = FaultyEngine::start(vec![delete_containers(Fault::Vanish(Duration::from_secs(6)), When::First(1))]);
    let args = ["--retries", "1", "--retry-delay", "100ms", "run", path(&fixture)];
    let output = cli_through(&scope, &engine, &args).await;
    assert_eq!(engine.injected(0), 1, "{output}");
    output.assert_code(3);
    // A removal whose answer came back before the daemon went away counts as removed; the others are named.
    assert!(output.stderr.contains(" resource(s) left; retry with `benchwarden recover"), "{output}");
    assert!(!output.stdout.contains(" 0 leaked"), "{output}");
    // The daemon carried out whatever removal reached it before it went away (the removals go
    // at once); the rest is still there, and the run could not tell which: it names all three.
    let left = scope.leftovers().await.containers.len();
    assert!((1..=3).contains(&left), "{left} left: the daemon was away for every removal\n{output}");

    engine.back().await;
    let recovered = cli_through(&scope, &engine, &["recover"]).await;
    recovered.assert_code(0);
    assert!(recovered.stdout.contains(" removed, 0 left"), "{recovered}");
    assert_nothing_left(&scope.leftovers().await, &recovered);
}

/// The daemon lists a container from the start of its create, but answers
/// its removal 404 "No such container" until the create is done: what
/// `recover` meets when a dead run left a create in flight. A teardown that
/// still lists the container after that 404 tries it again, rather than
/// taking the 404 for gone and then counting the container as leaked.
#[tokio::test(flavor = "multi_thread")]
async fn a_removal_answered_no_such_container_while_it_is_listed_is_tried_again() {
    let scope = TestScope::new("faults-404-listed").await;
    let fixture = fixture(&scope, &[("two", "start_container; start_container; exit 0")], "");
    let engine = FaultyEngine::start(vec![delete_containers(Fault::NoSuchContainer, When::First(1))]);
    let mut args = QUICK_RETRIES.to_vec();
    args.extend(["run", path(&fixture)]);
    let output = cli_through(&scope, &engine, &args).await;
    assert_eq!(engine.injected(0), 1, "{output}");
    output.assert_code(0);
    assert!(output.stdout.contains("2 resource(s) removed, 0 leaked"), "{output}");
    assert_nothing_left(&scope.leftovers().await, &output);
}

/// A create the run had sent when it was killed, which the daemon carries
/// out only after `recover` first listed what the run owns (a run killed
/// mid-create and recovered at once): `recover` looks again and removes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_create_that_lands_after_recover_first_listed_is_removed_too() {
    let scope = TestScope::new("faults-late-create").await;
    let fixture = fixture(&scope, &[("late", "echo creating; start_container; while :; do sleep 1; done")], "");
    let late = Fault::Late(Duration::from_millis(700));
    let engine = FaultyEngine::start(vec![Rule::new("POST", "/containers/create", late, When::First(1))]);
    let filters = std::collections::HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), vec!["create".to_string()]),
        ("label".to_string(), vec![scope.label_arg()]),
    ]);
    let since = Some(crate::limits::chrono_now().to_string());
    let options = bollard::query_parameters::EventsOptions { since, until: None, filters: Some(filters) };
    let mut creates = scope.docker().events(Some(options));
    let mut command = scope.benchwarden();
    command.env("DOCKER_HOST", engine.docker_host()).args(["run", path(&fixture), "-j", "1"]);
    let mut running = Running::start(command);
    running.wait_for("creating").await;
    // The engine holds the create back (it raises no event of its own): kill benchwarden meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while engine.injected(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "the create never reached the engine");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.send(nix::sys::signal::Signal::SIGKILL);
    running.finish().await;

    let recovered = cli_through(&scope, &engine, &["recover"]).await;
    recovered.assert_code(0);
    let landed = tokio::time::timeout(Duration::from_secs(30), futures_util::StreamExt::next(&mut creates)).await;
    assert!(landed.is_ok_and(|event| event.is_some()), "the held-back create never landed\n{recovered}");
    assert!(recovered.stdout.contains("1 resource(s) removed, 0 left"), "{recovered}");
    assert_nothing_left(&scope.leftovers().await, &recovered);
}
