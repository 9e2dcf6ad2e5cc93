//! The Daytona soak: many tasks at once on the contract server, under 5xx
//! and 429 faults, each creating sandboxes through its per-task proxy; one
//! task in ten crashes right after a create, one in ten hangs past
//! `--timeout`. Afterwards the server has no sandbox of the run, and the
//! JSON report accounts for every task and every sandbox the server made.
//!
//! Quick in `.ci/run` (20 tasks at `-j 4`), long under
//! `scripts/reliability.sh` (200 at `-j 8`); see `common::figures`.
//!
//! The harness's client is curl in a shell loop: it starts in milliseconds,
//! where importing the official SDK takes about a second per task, which
//! at 200 tasks would be most of the soak.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use daytona_contract::{ContractConfig, Fault, FaultRule, When, ANY_ROUTE};
use serde_json::{json, Value};

use crate::common::daytona::{Org, DELETE};
use crate::common::figures;

/// The harness: `sh harness.sh KIND-N`. It creates sandboxes through its
/// proxy, asking again after a 429 or a 5xx, as a client of the real API
/// must; `crash` kills itself right after its create, `hang` never ends.
const HARNESS: &str = r#"
create() {
    attempt=0
    while [ $attempt -lt 200 ]; do
        code=$(curl -s -o "answer.$$" -w '%{http_code}' -X POST \
            -H "Authorization: Bearer $DAYTONA_API_KEY" -H 'Content-Type: application/json' \
            -d '{"labels":{"soak":"yes"}}' "$DAYTONA_API_URL/sandbox")
        if [ "$code" = 200 ]; then
            echo "created $(cat "answer.$$")"
            rm -f "answer.$$"
            return 0
        fi
        attempt=$((attempt + 1))
        sleep 0.1
    done
    echo "no create went through: $code" >&2
    exit 4
}
case "$1" in
    ok-*) create; create ;;
    crash-*) create; kill -KILL $$ ;;
    hang-*) create; echo hanging; exec sleep 600 ;;
esac
"#;

/// The task names: one in ten crashes, one in ten hangs, the rest pass.
fn task_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|n| match n % 10 {
            3 => format!("crash-{n:03}"),
            7 => format!("hang-{n:03}"),
            _ => format!("ok-{n:03}"),
        })
        .collect()
}

/// What a task of this name ends as.
fn expected_outcome(task: &str) -> &'static str {
    match task.split('-').next() {
        Some("crash") => "failed",
        Some("hang") => "timed_out",
        _ => "passed",
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daytona_soak_leaves_nothing_and_accounts_for_every_task() {
    let (tasks, jobs) = (figures::count(20, 200), figures::count(4, 8));
    let config = ContractConfig {
        error_rate_5xx: 0.05,
        create_limit_per_minute: Some(600),
        lifecycle_limit_per_minute: Some(600),
        rules: vec![
            // Certain to fire, whatever the dice of the rate above say.
            FaultRule::new(ANY_ROUTE, Fault::Status(502), When::EveryNth(25)),
            // Some deletes refused with waits that are not numbers.
            FaultRule::new(DELETE, Fault::throttled("nan"), When::Share(0.05)),
        ],
        ..ContractConfig::default()
    };
    let org = Org::start(config).await;
    let dir = org.state_dir().join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("harness.sh"), HARNESS).unwrap();
    let names = task_names(tasks);
    let yaml = format!(
        "name: soak-daytona\nharness:\n  command: [sh, harness.sh, \"{{task}}\"]\n  cwd: .\ntasks: [{}]\n\
         docker:\n  enabled: false\ndaytona:\n  enabled: true\n",
        names.join(", ")
    );
    std::fs::write(dir.join("benchmark.yaml"), yaml).unwrap();
    let report_path = dir.join("report.json");
    let (benchmark, report_arg) = (dir.join("benchmark.yaml"), report_path.to_str().unwrap().to_string());
    let jobs_arg = jobs.to_string();
    let args = [
        "--retries",
        "8",
        "--retry-delay",
        "100ms",
        "run",
        benchmark.to_str().unwrap(),
        "-j",
        &jobs_arg,
        "--timeout",
        "8s",
        "--grace",
        "1s",
        "--report",
        &report_arg,
    ];
    let started = Instant::now();
    let output = org.cli_within(Duration::from_secs(900), &args).await;
    let wall = started.elapsed();
    assert!(!output.stderr.contains("panicked"), "{output}");
    output.assert_code(1);

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let run_id = report["run_id"].as_str().unwrap().to_string();
    let entries = report["tasks"].as_array().unwrap_or_else(|| panic!("{report}"));
    assert_eq!(entries.len(), tasks, "every task once in the report\n{output}");
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let (mut found, mut removed) = (0, 0);
    for entry in entries {
        let task = entry["task"].as_str().unwrap();
        assert_eq!(entry["outcome"], expected_outcome(task), "{entry}\n{output}");
        assert_eq!(entry["resources_leaked"], json!([]), "{entry}");
        *outcomes.entry(entry["outcome"].as_str().unwrap().to_string()).or_default() += 1;
        found += entry["resources_found"].as_u64().unwrap();
        removed += entry["resources_removed"].as_u64().unwrap();
    }
    let reported: Vec<&str> = entries.iter().map(|entry| entry["task"].as_str().unwrap()).collect();
    let mut sorted = reported.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), tasks, "a task is in the report twice: {reported:?}");

    // Listing the server: nothing of the run is left, nor anything at all.
    let stats = org.server.stats();
    let of_run =
        org.server.sandboxes().into_iter().filter(|sandbox| sandbox["labels"]["benchwarden.run"] == run_id.as_str());
    assert_eq!(of_run.count(), 0, "{output}");
    assert!(org.left().is_empty(), "left: {:?}\n{output}", org.left());
    // Every sandbox the server made was found by the teardowns and removed.
    assert_eq!(found, stats.creates, "{output}");
    assert_eq!(removed, stats.creates, "{output}");
    // Normal tasks create two, the others one.
    let expected_creates: usize = names.iter().map(|name| if name.starts_with("ok-") { 2 } else { 1 }).sum();
    assert_eq!(stats.creates, expected_creates as u64, "{output}");
    let rule_5xx = stats.injected_by_rule.get("status 502").copied().unwrap_or(0);
    assert!(rule_5xx > 0, "no 5xx was injected: {stats:?}");

    figures::record(
        "daytona-soak",
        json!({
            "tasks": tasks,
            "jobs": jobs,
            "outcomes": outcomes,
            "sandboxes_created": stats.creates,
            "injected_5xx": stats.injected_5xx + rule_5xx,
            "throttled_429": stats.throttled_429,
            "throttled_by": stats.throttled_by,
            "injected_by_rule": stats.injected_by_rule,
            "requests": stats.requests,
            "wall_seconds": (wall.as_secs_f64() * 10.0).round() / 10.0,
            "left": 0,
        }),
    );
}
