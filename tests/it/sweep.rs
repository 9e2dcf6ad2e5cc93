//! `benchwarden sweep` as the real binary: rounds on a short period, a
//! signal in the middle of a round (which finishes first), and a second
//! sweep refused while one holds the host's lock. Checked by listing the
//! engine (through the test's scoped socket) and asking the contract server.

use std::time::Duration;

use daytona_contract::ContractConfig;
use nix::sys::signal::Signal;

use crate::cleanup_all::Both;
use crate::common::daytona::DELETE;
use crate::common::{ContainerSpec, Running};

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test(flavor = "multi_thread")]
async fn every_round_cleans_up_and_a_stop_between_rounds_exits_at_once() {
    let both = Both::new("sweep-rounds").await;
    let first = both.container(ContainerSpec::exited(), true).await;
    let mut sweep = Running::start(both.command(&["sweep", "--every", "1s", "--docker-only"]));
    sweep.wait_for("sweep 1:").await;
    assert!(!both.scope.leftovers().await.container_ids().contains(&first), "round 1 kept an exited container");

    let second = both.container(ContainerSpec::exited(), true).await;
    sweep.wait_for("sweep 3:").await;
    assert!(both.scope.leftovers().await.is_empty(), "a later round kept a new exited container");

    sweep.send(Signal::SIGTERM);
    let output = sweep.finish().await;
    output.assert_code(0);
    assert!(output.stderr.contains("SIGTERM: no sweep in progress; exiting"), "{output}");
    let _ = second;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signal_in_the_middle_of_a_round_lets_the_round_finish() {
    let both =
        Both::with("sweep-signal", ContractConfig { latency: Duration::from_millis(150), ..ContractConfig::default() })
            .await;
    let sandboxes: Vec<String> = (0..8).map(|_| both.sandbox("stopped", 2 * DAY)).collect();
    let sweep = Running::start(both.command(&["sweep", "--every", "1h", "--daytona-only", "--no-dry-run"]));
    both.org.wait_for_requests(DELETE, 1).await;
    sweep.send(Signal::SIGINT);
    let output = sweep.finish().await;
    output.assert_code(0);
    assert!(output.stderr.contains("SIGINT: finishing this sweep, then exiting"), "{output}");
    assert!(output.stderr.contains("sweep 1:"), "the round ran to its end\n{output}");
    let left: Vec<&String> = sandboxes.iter().filter(|id| both.org.server.exists(id)).collect();
    assert!(left.is_empty(), "the interrupted round left {left:?}\n{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sweep_on_the_host_is_refused_and_told_who_holds_the_lock() {
    let both = Both::new("sweep-lock").await;
    let mut first = Running::start(both.command(&["sweep", "--every", "1h", "--docker-only"]));
    first.wait_for("sweep 1:").await;

    let second = both.cli(&["sweep", "--once", "--docker-only"]).await;
    second.assert_code(2);
    assert!(second.stderr.contains("another sweep is running"), "{second}");
    assert!(second.stderr.contains(&format!("pid {}", first.pid())), "the holder is named\n{second}");

    first.send(Signal::SIGINT);
    first.finish().await.assert_code(0);
    let once = both.cli(&["sweep", "--once", "--docker-only"]).await;
    once.assert_code(0);
    assert!(once.stderr.contains("sweep 1:"), "{once}");
}
