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
