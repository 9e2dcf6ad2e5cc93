//! `--metrics-file`: the file parses with a real Prometheus text-format
//! parser (the `prometheus-parse` crate), and its counts match what the
//! run's JSON report, the cleanups' JSON output and the log say.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use daytona_contract::ContractConfig;
use prometheus_parse::{Scrape, Value as Sample};
use serde_json::Value;

use crate::cleanup_all::Both;
use crate::common::{ContainerSpec, SCOPE_LABEL};

/// Every sample of the file, by name and sorted labels.
fn parse(path: &Path) -> (Scrape, BTreeMap<String, f64>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let scrape =
        Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).unwrap_or_else(|error| panic!("{error}\n{text}"));
    let mut samples = BTreeMap::new();
    for sample in &scrape.samples {
        let labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let value = match &sample.value {
            Sample::Counter(value) | Sample::Gauge(value) | Sample::Untyped(value) => *value,
            Sample::Histogram(buckets) => buckets.last().map_or(0.0, |bucket| bucket.count),
            Sample::Summary(_) => continue,
        };
        samples.insert(format!("{}{{{}}}", sample.metric, labels.join(",")), value);
    }
    (scrape, samples)
}

fn sample(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or_else(|| panic!("no {key} in {samples:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runs_metrics_parse_and_match_its_report() {
    let both = Both::new("metrics-run").await;
    let harness = both.scope.state_dir().join("harness.sh");
    let label = format!("{SCOPE_LABEL}={}", both.scope.id());
    let image = crate::common::test_image();
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  makes) docker run -d --label {label} {image} sleep 600 >/dev/null; \
         docker run -d --label {label} {image} sleep 600 >/dev/null ;;\n  fails) exit 3 ;;\nesac\n"
    );
    std::fs::write(&harness, script).unwrap();
    let benchmark = both.scope.state_dir().join("bench.yaml");
    let yaml =
        format!("name: m\nharness:\n  command: [sh, {}, \"{{task}}\"]\ntasks: [makes, fails]\n", harness.display());
    std::fs::write(&benchmark, yaml).unwrap();
    let metrics = both.scope.state_dir().join("out/benchwarden.prom");

    let output = both
        .cli(&["run", benchmark.to_str().unwrap(), "--skip-cleanup", "--metrics-file", metrics.to_str().unwrap()])
        .await;
    output.assert_code(1);
    assert!(both.scope.leftovers().await.is_empty(), "{output}");
    let report_path = output.stderr.lines().find_map(|line| line.strip_prefix("report: ")).unwrap();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(report_path).unwrap()).unwrap();
    let removed: u64 =
        report["tasks"].as_array().unwrap().iter().map(|task| task["resources_removed"].as_u64().unwrap()).sum();

    let (scrape, samples) = parse(&metrics);
    assert_eq!(sample(&samples, "benchwarden_resources_created_total{backend=docker,kind=container}"), 2.0);
    assert_eq!(sample(&samples, "benchwarden_resources_removed_total{backend=docker,kind=container}"), removed as f64);
    assert_eq!(report["backends"]["docker"]["removed"], removed, "{report}");
    assert_eq!(report["backends"]["docker"]["success_rate"], 1.0, "{report}");
    assert_eq!(sample(&samples, "benchwarden_tasks_total{outcome=passed}"), 1.0);
    assert_eq!(sample(&samples, "benchwarden_tasks_total{outcome=failed}"), 1.0);
    assert_eq!(sample(&samples, "benchwarden_teardown_seconds{}"), 2.0, "one observation a task");
    assert!(scrape.docs.contains_key("benchwarden_live_resources"), "every family is described");
    assert!(scrape.docs.contains_key("benchwarden_retries_total"), "every family is described");
    assert!(!samples.keys().any(|key| key.starts_with("benchwarden_live_resources")), "nothing is owned any more");
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_metrics_count_removals_and_retries_as_the_output_and_log_do() {
    let both = Both::with("metrics-cleanup", ContractConfig { error_rate_5xx: 0.3, ..ContractConfig::default() }).await;
    for _ in 0..6 {
        both.container(ContainerSpec::exited(), true).await;
        both.sandbox("stopped", Duration::from_secs(2 * 86_400));
    }
    let metrics = both.scope.state_dir().join("cleanup.prom");
    let output = both
        .cli(&[
            "--retry-delay",
            "10ms",
            "--retries",
            "8",
            "cleanup",
            "all",
            "--no-dry-run",
            "--json",
            "--metrics-file",
            metrics.to_str().unwrap(),
        ])
        .await;
    output.assert_code(0);
    let json = output.json();
    let (_, samples) = parse(&metrics);
    assert_eq!(json["docker"]["containers"]["removed"], 6, "{json}");
    assert_eq!(sample(&samples, "benchwarden_resources_removed_total{backend=docker,kind=container}"), 6.0);
    assert_eq!(sample(&samples, "benchwarden_resources_removed_total{backend=daytona,kind=sandbox}"), 6.0);
    assert!(both.org.left().is_empty(), "{output}");
    let retried_in_log =
        output.stderr.lines().filter(|line| line.contains("failed:") && line.contains("retrying in")).count();
    assert!(retried_in_log > 0, "a 30 % error rate caused no retry\n{output}");
    let retried: f64 =
        samples.iter().filter(|(key, _)| key.starts_with("benchwarden_retries_total")).map(|(_, value)| value).sum();
    assert_eq!(retried, retried_in_log as f64, "{samples:#?}\n{output}");
    let swept = sample(&samples, "benchwarden_last_sweep_timestamp_seconds{}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - swept).abs() < 120.0, "the last sweep is now: {swept}");
}
