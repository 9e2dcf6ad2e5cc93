//! Harnesses that misbehave, against the real engine: a flood of output,
//! stdout and stderr closed at once, a thousand processes, a harness that
//! stops itself with SIGSTOP. Each run must end, account for its task, and
//! leave no container and no process, as listing shows.

use std::time::{Duration, Instant};

use crate::common::TestScope;
use crate::harnesses::run_processes;
use crate::run::{fixture, fixture_processes, path, report_json};

/// Asserts that nothing of the run is left: no container of the scope, no
/// process with the run's id in its environment, no fixture process.
async fn assert_nothing_left(scope: &TestScope, output: &crate::common::CliOutput) {
    let report = report_json(output);
    let run_id = report["run_id"].as_str().unwrap();
    assert!(scope.leftovers().await.is_empty(), "resources left\n{output}");
    assert_eq!(run_processes(run_id), Vec::<String>::new(), "processes of the run left\n{output}");
    assert_eq!(fixture_processes(scope), Vec::<u32>::new(), "harness processes left\n{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_megabytes_of_output_all_reach_the_log() {
    let scope = TestScope::new("flood").await;
    let body = "start_container\nhead -c 100000000 /dev/zero | tr '\\0' x\necho\nexit 0";
    let fixture = fixture(&scope, &[("flood", body), ("quiet", "start_container")], "");
    let output = scope.cli(&["run", path(&fixture), "-j", "2"]).await;
    output.assert_code(0);
    let report = report_json(&output);
    let log = report["tasks"][0]["log"].as_str().unwrap();
    let size = std::fs::metadata(log).unwrap().len();
    assert_eq!(size, 100_000_001, "the log holds all of the output and nothing else");
    assert!(output.stdout.contains("2 passed"), "{output}");
    assert_nothing_left(&scope, &output).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_harness_that_closes_stdout_and_stderr_at_once_is_still_followed_to_its_end() {
    let scope = TestScope::new("closed-out").await;
    // Output closed first thing; the harness goes on, creates, and exits 3.
    let body = "exec >&- 2>&-\nstart_container\nstart_container\nexit 3";
    let fixture = fixture(&scope, &[("closed", body)], "");
    for jobs in ["1", "2"] {
        // -j 1 echoes through pipes, -j 2 gives the harness the log file itself.
        let output = scope.cli(&["run", path(&fixture), "-j", jobs]).await;
        output.assert_code(1);
        let report = report_json(&output);
        assert_eq!(report["tasks"][0]["exit_code"], 3, "{report}");
        assert_eq!(report["tasks"][0]["resources"]["created"], 2, "{report}");
        assert_nothing_left(&scope, &output).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_harness_that_leaves_a_thousand_processes_behind_has_every_one_killed() {
    let scope = TestScope::new("thousand").await;
    let body = "start_container\ni=0\nwhile [ $i -lt 1000 ]; do sleep 600 & i=$((i + 1)); done\nexit 0";
    let fixture = fixture(&scope, &[("many", body)], "");
    let started = Instant::now();
    let output = scope.cli(&["run", path(&fixture), "--grace", "2s"]).await;
    output.assert_code(0);
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}\n{output}", started.elapsed());
    assert_nothing_left(&scope, &output).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_harness_that_stops_itself_times_out_and_is_killed() {
    let scope = TestScope::new("self-stop").await;
    // SIGTERM stays pending on a stopped process; SIGKILL after the grace ends it.
    let body = "start_container\nkill -STOP $$\nexit 0";
    let fixture = fixture(&scope, &[("stopped", body)], "");
    let output = scope.cli(&["run", path(&fixture), "--timeout", "2s", "--grace", "1s"]).await;
    output.assert_code(1);
    let report = report_json(&output);
    assert_eq!(report["tasks"][0]["outcome"], "timed_out", "{report}");
    assert_nothing_left(&scope, &output).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_harness_killed_in_the_middle_of_a_create_leaves_nothing() {
    let scope = TestScope::new("mid-create").await;
    let (labels, image) = (crate::run::claimed_labels(&scope), crate::common::test_image());
    // Each task starts a create and dies by SIGKILL a moment later: before the request, during
    // it, or after the answer. The docker CLI it started goes on in the task's group.
    let delays = ["0", "0.02", "0.1", "0.3", "1"];
    let bodies: Vec<(String, String)> = delays
        .iter()
        .enumerate()
        .map(|(index, delay)| {
            (
                format!("crash{index}"),
                format!("docker run -d {labels} {image} sleep 3600 >/dev/null &\nsleep {delay}\nkill -9 $$"),
            )
        })
        .collect();
    let tasks: Vec<(&str, &str)> = bodies.iter().map(|(name, body)| (name.as_str(), body.as_str())).collect();
    let fixture = fixture(&scope, &tasks, "");
    let output = scope.cli(&["run", path(&fixture), "-j", "5", "--grace", "1s"]).await;
    output.assert_code(1);
    let report = report_json(&output);
    let mut created = 0;
    for task in report["tasks"].as_array().unwrap() {
        assert_eq!(task["signal"], "SIGKILL", "{task}");
        created += task["resources"]["created"].as_u64().unwrap();
    }
    eprintln!("containers created by the killed harnesses: {created}");
    assert!(created >= 1, "no create got through: the test proves nothing\n{output}");
    assert_nothing_left(&scope, &output).await;
}
