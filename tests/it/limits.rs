//! Resource limits and teardown order, against the real engine: the
//! scheduler keeps a run under `max_containers` (checked by following the
//! engine's own create and destroy events, so every moment counts, not just
//! the sampled ones), a hard cap refuses the create past it through the
//! docker CLI and docker-py, and a teardown removes running containers
//! before stopped ones, the oldest first.

use std::collections::{BTreeSet, HashMap};

use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;

use crate::common::daytona::Org;
use crate::common::{self, TestScope, SCOPE_LABEL};
use crate::run::{claimed_labels, fixture, path};
use daytona_contract::ContractConfig;

/// Follows the engine's container create and destroy events of a scope and
/// keeps the most containers live at once. Started before the run, read
/// after it.
struct LiveMonitor {
    /// Creates seen, containers live now, the most live at once.
    counts: tokio::sync::watch::Receiver<(usize, usize, usize)>,
    follower: tokio::task::JoinHandle<()>,
}

impl LiveMonitor {
    async fn start(scope: &TestScope) -> Self {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["create".to_string(), "destroy".to_string()]),
            ("label".to_string(), vec![scope.label_arg()]),
        ]);
        let options = EventsOptions { since: Some(chrono_now().to_string()), until: None, filters: Some(filters) };
        let docker = scope.docker().clone();
        let (sender, counts) = tokio::sync::watch::channel((0, 0, 0));
        let follower = tokio::spawn(async move {
            let mut live: BTreeSet<String> = BTreeSet::new();
            let mut stream = docker.events(Some(options));
            while let Some(Ok(event)) = stream.next().await {
                let id = event.actor.and_then(|actor| actor.id).unwrap_or_default();
                let created = event.action.as_deref() == Some("create");
                match created {
                    true => live.insert(id),
                    false => live.remove(&id),
                };
                sender.send_modify(|(creates, now, most)| {
                    *creates += usize::from(created);
                    *now = live.len();
                    *most = (*most).max(live.len());
                });
            }
        });
        LiveMonitor { counts, follower }
    }

    /// The most containers live at once, once the stream has shown `creates`
    /// creates and every one of them destroyed again.
    async fn most(mut self, creates: usize) -> usize {
        let settled = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            self.counts.wait_for(|(seen, now, _)| *seen >= creates && *now == 0),
        )
        .await
        .is_ok_and(|waited| waited.is_ok());
        let (seen, now, most) = *self.counts.borrow();
        self.follower.abort();
        assert!(settled, "saw {seen} creates (of {creates}), {now} still live");
        most
    }
}

pub(crate) fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|now| now.as_secs() as i64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_of_three_containers_under_a_cap_of_four_never_have_more_than_four_live() {
    let scope = TestScope::new("limits-soft").await;
    let body = "start_container; start_container; start_container; sleep 1";
    let tasks: Vec<(String, &str)> = (1..=4).map(|index| (format!("t{index}"), body)).collect();
    let tasks: Vec<(&str, &str)> = tasks.iter().map(|(name, body)| (name.as_str(), *body)).collect();
    let fixture = fixture(&scope, &tasks, "limits:\n  max_containers: 4\n");
    let monitor = LiveMonitor::start(&scope).await;
    let output = scope.cli(&["run", path(&fixture), "-j", "4"]).await;
    output.assert_code(0);
    let most = monitor.most(12).await;
    assert!(most <= 4, "{most} containers were live at once under a cap of 4\n{output}");
    // 3 + 3 > 4: one task at a time, and the report says so.
    assert!(output.stdout.contains("limits: at most 4 containers live (peak 3)"), "{output}");
    assert!(output.stderr.contains("learning how many containers a task makes"), "{output}");
    assert!(output.stdout.contains("4 passed"), "{output}");
    assert!(scope.leftovers().await.is_empty(), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_room_for_two_tasks_the_scheduler_runs_two_at_once_and_never_three() {
    let scope = TestScope::new("limits-two").await;
    let body = "start_container; sleep 2";
    let tasks: Vec<(String, &str)> = (1..=5).map(|index| (format!("t{index}"), body)).collect();
    let tasks: Vec<(&str, &str)> = tasks.iter().map(|(name, body)| (name.as_str(), *body)).collect();
    let fixture = fixture(&scope, &tasks, "");
    let monitor = LiveMonitor::start(&scope).await;
    let output = scope.cli(&["run", path(&fixture), "-j", "5", "--max-containers", "2"]).await;
    output.assert_code(0);
    let most = monitor.most(5).await;
    assert!(most <= 2, "{most} containers were live at once under a cap of 2\n{output}");
    assert!(output.stdout.contains("limits: at most 2 containers live (peak 2)"), "{output}");
    let report = crate::run::report_json(&output);
    assert_eq!(report["limits"]["max_containers"], 2, "{report}");
    assert_eq!(report["limits"]["peak_containers"], 2, "{report}");
    assert!(scope.leftovers().await.is_empty(), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_cap_refuses_the_create_past_it_through_the_docker_cli() {
    let scope = TestScope::new("limits-hard-cli").await;
    let (labels, image) = (claimed_labels(&scope), common::test_image());
    // The third create is refused; the harness shows the daemon's error, as a user would see it.
    let body = format!(
        "start_container; start_container\n\
         if docker run -d {labels} {image} sleep 3600; then echo 'third create passed' >&2; exit 3; fi\n\
         exit 0"
    );
    let fixture = fixture(&scope, &[("cli", body.as_str())], "limits:\n  max_containers: 2\n  hard: true\n");
    let output = scope.cli(&["run", path(&fixture), "-j", "1"]).await;
    output.assert_code(0);
    let report = crate::run::report_json(&output);
    let log = std::fs::read_to_string(report["tasks"][0]["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("Error response from daemon: benchwarden proxy: this run's limit of 2 containers is reached"),
        "the docker CLI does not show the refusal:\n{log}\n{output}"
    );
    assert_eq!(report["tasks"][0]["refused_creates"], 1, "{report}");
    assert_eq!(report["limits"]["refused_containers"], 1, "{report}");
    assert!(output.stdout.contains("cli: 1 create(s) refused at a hard limit"), "{output}");
    // The refused container never existed; the two that did are gone.
    assert!(scope.leftovers().await.is_empty(), "{output}");
}

const DOCKER_PY_HARD_CAP: &str = r#"
import sys

import docker

image, scope_key, scope_value = sys.argv[1:4]
client = docker.from_env()
labels = {scope_key: scope_value}
for index in range(2):
    client.containers.run(image, ["sleep", "3600"], detach=True, labels=labels)
try:
    client.containers.run(image, ["sleep", "3600"], detach=True, labels=labels)
except docker.errors.APIError as error:
    print(f"refused: {error.status_code} {error.explanation}")
    sys.exit(0)
print("third create passed", file=sys.stderr)
sys.exit(3)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_cap_refuses_the_create_past_it_through_docker_py() {
    let python = common::venv_python("docker");
    let scope = TestScope::new("limits-hard-py").await;
    let script = scope.state_dir().join("client.py");
    std::fs::write(&script, DOCKER_PY_HARD_CAP).unwrap();
    let body = format!(
        "\"{python}\" \"{script}\" {image} {SCOPE_LABEL} {id}",
        python = python.display(),
        script = script.display(),
        image = common::test_image(),
        id = scope.id()
    );
    let fixture = fixture(&scope, &[("py", body.as_str())], "limits:\n  max_containers: 2\n  hard: true\n");
    let output = scope.cli(&["run", path(&fixture), "-j", "1"]).await;
    output.assert_code(0);
    let report = crate::run::report_json(&output);
    let log = std::fs::read_to_string(report["tasks"][0]["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("refused: 429 benchwarden proxy: this run's limit of 2 containers is reached"),
        "docker-py does not show the refusal:\n{log}\n{output}"
    );
    assert_eq!(report["tasks"][0]["refused_creates"], 1, "{report}");
    assert!(scope.leftovers().await.is_empty(), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_cap_without_the_docker_proxy_is_refused_before_anything_starts() {
    let scope = TestScope::new("limits-hard-noproxy").await;
    let fixture = fixture(&scope, &[("t", "exit 0")], "  proxy: false\nlimits:\n  max_containers: 2\n  hard: true\n");
    let output = scope.cli(&["run", path(&fixture)]).await;
    output.assert_code(2);
    assert!(output.stderr.contains("limits.hard refuses creates at the Docker proxy"), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_teardown_removes_running_containers_before_stopped_ones_the_oldest_first() {
    let scope = TestScope::new("teardown-order").await;
    let (labels, image) = (claimed_labels(&scope), common::test_image());
    // Created in this order: running-1, stopped-1, running-2, stopped-2 (one second apart, the
    // resolution of a container's creation time in the list API).
    let body = format!(
        "for name in running-1 stopped-1 running-2 stopped-2; do\n\
           case $name in\n\
             running-*) docker run -d --name \"$BENCHWARDEN_RUN_ID-$name\" {labels} {image} sleep 3600 >/dev/null ;;\n\
             stopped-*) docker run --name \"$BENCHWARDEN_RUN_ID-$name\" {labels} {image} true ;;\n\
           esac\n\
           sleep 1\n\
         done"
    );
    let fixture = fixture(&scope, &[("order", body.as_str())], "");
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), vec!["destroy".to_string()]),
        ("label".to_string(), vec![scope.label_arg()]),
    ]);
    let options = EventsOptions { since: Some(chrono_now().to_string()), until: None, filters: Some(filters) };
    let mut destroys = scope.docker().events(Some(options));
    // One removal at a time, so the order they start in is the order they end in.
    let output = scope.cli(&["run", path(&fixture), "--parallel", "1"]).await;
    output.assert_code(0);
    let mut order = Vec::new();
    while order.len() < 4 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(30), destroys.next())
            .await
            .unwrap_or_else(|_| panic!("only {order:?} were seen destroyed\n{output}"));
        let attributes = event.unwrap().unwrap().actor.and_then(|actor| actor.attributes).unwrap_or_default();
        let name = attributes.get("name").cloned().unwrap_or_default();
        order.push(name.rsplit('-').take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("-"));
    }
    assert_eq!(order, ["running-1", "running-2", "stopped-1", "stopped-2"], "{output}");
    assert!(scope.leftovers().await.is_empty(), "{output}");
}

/// `harness.py COUNT`: creates COUNT sandboxes with the official SDK through
/// the task's proxy, printing `created <id>` or `refused: <error>` for each,
/// then holds them for a second.
const SDK_LIMIT_HARNESS: &str = r#"
import sys, time
from daytona import Daytona, CreateSandboxFromSnapshotParams

daytona = Daytona()
for index in range(int(sys.argv[1])):
    try:
        sandbox = daytona.create(CreateSandboxFromSnapshotParams(labels={"fixture": "limits"}), timeout=60)
        print(f"created {sandbox.id}", flush=True)
    except Exception as error:
        print(f"refused: {type(error).__name__}: {error}", flush=True)
time.sleep(1)
"#;

fn sdk_benchmark(org: &Org, tasks: &[&str], count: usize, limits: &str) -> String {
    let dir = org.state_dir().join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("harness.py"), SDK_LIMIT_HARNESS).unwrap();
    let yaml = format!(
        "name: sdk-limits\n\
         harness:\n  command: [\"{python}\", harness.py, \"{count}\"]\n  cwd: .\n\
         tasks: [{tasks}]\n\
         docker:\n  enabled: false\n\
         daytona:\n  auto_stop_minutes: 30\n\
         limits:\n{limits}",
        python = common::venv_python("daytona").display(),
        tasks = tasks.join(", "),
    );
    let benchmark = dir.join("benchmark.yaml");
    std::fs::write(&benchmark, yaml).unwrap();
    benchmark.to_str().unwrap().to_string()
}

/// The most sandboxes the server had at once that nobody had asked to delete, from its request log.
fn most_undeleted(org: &Org) -> usize {
    let (mut live, mut most) = (0usize, 0usize);
    for request in org.server.requests() {
        let succeeded = request.status.is_some_and(|status| (200..300).contains(&status));
        match (request.route.as_str(), succeeded) {
            ("POST /api/sandbox", true) => live += 1,
            (route, true) if route.starts_with("DELETE ") => live = live.saturating_sub(1),
            _ => {}
        }
        most = most.max(live);
    }
    most
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_of_two_sandboxes_under_a_cap_of_three_never_have_more_than_three() {
    let org = Org::start(ContractConfig::default()).await;
    let benchmark = sdk_benchmark(&org, &["a", "b", "c"], 2, "  max_sandboxes: 3\n");
    let output = org.cli(&["run", &benchmark, "-j", "3"]).await;
    output.assert_code(0);
    assert_eq!(org.server.stats().creates, 6, "{output}");
    let most = most_undeleted(&org);
    assert!(most <= 3, "{most} sandboxes at once under a cap of 3\n{output}");
    assert!(output.stdout.contains("limits: at most 3 sandboxes live (peak 2)"), "{output}");
    assert!(org.left().is_empty(), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_cap_refuses_the_sandbox_past_it_through_the_official_sdk() {
    let org = Org::start(ContractConfig::default()).await;
    let benchmark = sdk_benchmark(&org, &["sdk"], 3, "  max_sandboxes: 2\n  hard: true\n");
    let output = org.cli(&["run", &benchmark, "-j", "1"]).await;
    output.assert_code(0);
    let report = crate::run::report_json(&output);
    let log = std::fs::read_to_string(report["tasks"][0]["log"].as_str().unwrap()).unwrap();
    let refused = log.lines().find(|line| line.starts_with("refused: ")).unwrap_or_else(|| panic!("{log}\n{output}"));
    // The SDK raised its own error for a 429, with our message.
    assert!(refused.contains("DaytonaRateLimitError"), "{refused}");
    assert!(
        refused.contains("this run's limit of 2 sandboxs is reached") || refused.contains("limit of 2 sandbox"),
        "{refused}"
    );
    assert_eq!(org.server.stats().creates, 2, "the refused create never reached the server\n{output}");
    assert_eq!(report["tasks"][0]["refused_creates"], 1, "{report}");
    assert_eq!(report["limits"]["refused_sandboxes"], 1, "{report}");
    assert!(org.left().is_empty(), "{output}");
}
