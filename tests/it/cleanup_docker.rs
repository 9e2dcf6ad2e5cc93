//! `benchwarden cleanup docker` against the real engine. Every test labels
//! what it creates with its own scope label, selects by that label (so it
//! can never touch anything else on the host), and proves its outcome by
//! listing what is left.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use benchwarden::backend::docker::DockerBackend;
use benchwarden::backend::{remove_all, RemovalOptions};
use benchwarden::events::Events;
use benchwarden::net::DockerEndpoint;
use benchwarden::resource::{Kind, RemovalOutcome, ResourceRef};
use benchwarden::retry::RetryPolicy;
use bollard::query_parameters::{EventsOptions, RemoveContainerOptions};
use futures_util::StreamExt;
use serde_json::Value;

use crate::common::*;

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

/// The counts of one section (`containers`, `networks`, `volumes`) of the
/// `--json` result: (removed, already gone, failed, would remove).
#[track_caller]
fn counts(json: &Value, section: &str) -> (u64, u64, u64, u64) {
    let count =
        |field: &str| json[section][field].as_u64().unwrap_or_else(|| panic!("no {section}.{field} count in {json:#}"));
    (count("removed"), count("already_gone"), count("failed"), count("would_remove"))
}

/// The outcome (`removed`, `already_gone`, ...) of each container in the
/// `--json` result, by full id.
fn outcomes(json: &Value) -> HashMap<String, String> {
    json["containers"]["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no containers.results in {json:#}"))
        .iter()
        .map(|entry| {
            (
                entry[0]["id"].as_str().unwrap_or_default().to_string(),
                entry[1]["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn labelled_running_containers_are_removed_and_nothing_else() {
    let scope = TestScope::new("running").await;
    let bystander = TestScope::new("bystander").await;
    scope.running(&[]).await;
    scope.running(&[]).await;
    let survivor = bystander.running(&[]).await;
    assert_eq!(scope.leftovers().await.containers.len(), 2);

    let out = scope.cli(&["cleanup", "docker", "--label", &scope.label_arg()]).await;

    out.assert_code(0);
    assert!(out.stdout.contains("containers: 2 removed, 0 already gone, 0 failed"), "{out}");
    assert!(scope.leftovers().await.is_empty());
    assert_eq!(bystander.leftovers().await.container_ids(), set(&[&survivor]));
}

#[tokio::test]
async fn exited_leaves_running_containers_alone() {
    let scope = TestScope::new("exited").await;
    let running = scope.running(&[]).await;
    let exited = scope.exited(&[]).await;
    let never_started = scope.container(ContainerSpec::created()).await;

    let out = scope.cli(&["cleanup", "docker", "--exited", "--label", &scope.label_arg(), "--json"]).await;

    out.assert_code(0);
    let json = out.json();
    assert_eq!(counts(&json, "containers"), (2, 0, 0, 0));
    let removed: BTreeSet<String> = outcomes(&json).into_keys().collect();
    assert_eq!(removed, set(&[&exited, &never_started]));
    let left = scope.leftovers().await;
    assert_eq!(left.container_ids(), set(&[&running]));
    assert_eq!(left.containers[0].state, "running");
}

#[tokio::test]
async fn older_than_keeps_young_containers() {
    let scope = TestScope::new("older").await;
    let young = scope.running(&[]).await;
    let stopped = scope.exited(&[]).await;

    let out = scope.cli(&["cleanup", "docker", "--older-than", "1h", "--label", &scope.label_arg()]).await;
    out.assert_code(0);
    assert!(out.stdout.contains("containers: none matched"), "{out}");
    assert_eq!(scope.leftovers().await.container_ids(), set(&[&young, &stopped]));

    // Any age at all: both go, whatever their state.
    let out = scope.cli(&["cleanup", "docker", "--older-than", "0s", "--label", &scope.label_arg()]).await;
    out.assert_code(0);
    assert!(scope.leftovers().await.containers.is_empty(), "{out}");
}

#[tokio::test]
async fn label_filters_combine_with_and() {
    let scope = TestScope::new("label-and").await;
    let team = ("bwtest.team", scope.id());
    let tier = ("bwtest.tier", scope.id());
    let both = scope.running(&[team, tier]).await;
    let team_only = scope.running(&[team]).await;
    let tier_only = scope.running(&[tier]).await;

    let out = scope
        .cli(&[
            "cleanup",
            "docker",
            "--label",
            &format!("bwtest.team={}", scope.id()),
            "--label",
            &format!("bwtest.tier={}", scope.id()),
        ])
        .await;

    out.assert_code(0);
    let left = scope.leftovers().await.container_ids();
    assert!(!left.contains(&both), "{out}");
    assert_eq!(left, set(&[&team_only, &tier_only]));
}

#[tokio::test]
async fn label_values_with_equals_commas_quotes_and_non_ascii_select_exactly_their_containers() {
    let scope = TestScope::new("label-odd").await;
    let key = format!("bwtest.odd.{}", scope.id());
    let values = ["a=b", "x,y", "say \"hi\"", "grüße, 世界", "a"];
    let mut ids = Vec::new();
    for value in values {
        ids.push(scope.running(&[(key.as_str(), value)]).await);
    }
    // Each selector takes its own container and no other: `a=b` is not `a`, `x,y` not two values.
    for (index, value) in values.iter().enumerate().take(4) {
        let out = scope.cli(&["cleanup", "docker", "--label", &format!("{key}={value}")]).await;
        out.assert_code(0);
        let left = scope.leftovers().await.container_ids();
        assert!(!left.contains(&ids[index]), "{value:?} did not take its container\n{out}");
        assert_eq!(left.len(), values.len() - index - 1, "{value:?} took more than its container\n{out}");
    }
    assert_eq!(scope.leftovers().await.container_ids(), set(&[&ids[4]]), "only `a` is left");
    let bad = scope.cli(&["cleanup", "docker", "--label", "=value"]).await;
    bad.assert_code(2);
}

/// The library: a removal whose target someone else removed after it was
/// listed is "already gone", in one attempt, and not a failure.
#[tokio::test]
async fn a_container_removed_by_someone_else_is_already_gone_not_failed() {
    let scope = TestScope::new("gone-lib").await;
    let id = scope.running(&[]).await;
    let listed = ResourceRef { kind: Kind::Container, id: id.clone(), name: "removed-behind-our-back".to_string() };
    docker_cli(&["rm", "-f", &id]);

    let endpoint = DockerEndpoint::new(std::env::var("DOCKER_HOST").ok().as_deref(), None);
    let backend = DockerBackend::connect(&endpoint).await.expect("connect to docker");
    let options = RemovalOptions {
        parallel: 4,
        fail_fast: true,
        retry: RetryPolicy {
            retries: 2,
            first_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            jitter: false,
            ..RetryPolicy::default()
        },
    };
    let report = remove_all(&backend.remover(None), vec![listed.clone()], &options, &Events::discard()).await;

    assert_eq!(report.results, vec![(listed, RemovalOutcome::AlreadyGone { attempts: 1 })]);
    assert_eq!((report.already_gone(), report.failed()), (1, 0));
}

/// The CLI: benchwarden lists two containers and removes them one at a
/// time; while it is busy stopping the first (`--stop-timeout`: busybox
/// `sleep` as PID 1 ignores SIGTERM, so the stop takes the whole timeout),
/// the test removes the second behind its back.
#[tokio::test]
async fn a_container_removed_mid_cleanup_is_already_gone_in_the_cli_json() {
    let scope = TestScope::new("gone-cli").await;
    let first = scope.running(&[]).await;
    let second = scope.running(&[]).await;
    let docker = scope.docker().clone();
    // `since` replays events from before the subscription, so none is missed.
    let since = (benchwarden::clock::now_unix() - 1).to_string();
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), vec!["kill".to_string()]),
        ("label".to_string(), vec![scope.label_arg()]),
    ]);
    let mut kills = docker.events(Some(EventsOptions { since: Some(since), until: None, filters: Some(filters) }));

    let child = scope.cli_spawn(&[
        "cleanup",
        "docker",
        "--label",
        &scope.label_arg(),
        "--parallel",
        "1",
        "--stop-timeout",
        "2s",
        "--retries",
        "0",
        "--json",
    ]);
    let event = tokio::time::timeout(Duration::from_secs(30), kills.next())
        .await
        .expect("benchwarden did not start stopping a container within 30s")
        .expect("the event stream ended")
        .expect("read docker events");
    let stopping = event.actor.and_then(|actor| actor.id).unwrap_or_default();
    let other = if stopping == first {
        &second
    } else {
        assert_eq!(stopping, second, "a kill event for a container we did not make");
        &first
    };
    docker
        .remove_container(other, Some(RemoveContainerOptions { force: true, ..Default::default() }))
        .await
        .expect("remove the second container behind benchwarden's back");
    let out = wait_cli(child).await;

    out.assert_code(0);
    let json = out.json();
    assert_eq!(counts(&json, "containers"), (1, 1, 0, 0), "{out}");
    let outcomes = outcomes(&json);
    assert_eq!(outcomes[&stopping], "removed");
    assert_eq!(outcomes[other], "already_gone");
    assert!(scope.leftovers().await.containers.is_empty());
}

#[tokio::test]
async fn dry_run_removes_nothing() {
    let scope = TestScope::new("dry-run").await;
    let network = scope.network(&[]).await;
    let a = scope.container(ContainerSpec::sleeping().network(&network)).await;
    let b = scope.exited(&[]).await;

    let out = scope.cli(&["cleanup", "docker", "--label", &scope.label_arg(), "--dry-run", "--json"]).await;
    out.assert_code(0);
    let json = out.json();
    assert_eq!(json["dry_run"], Value::Bool(true));
    assert_eq!(counts(&json, "containers"), (0, 0, 0, 2));
    assert_eq!(counts(&json, "networks"), (0, 0, 0, 1));

    let text = scope.cli(&["cleanup", "docker", "--label", &scope.label_arg(), "--dry-run"]).await;
    text.assert_code(0);
    assert!(text.stdout.contains("containers: 2 would be removed"), "{text}");

    let left = scope.leftovers().await;
    assert_eq!(left.container_ids(), set(&[&a, &b]));
    assert_eq!(left.networks, BTreeSet::from([network]));
}

/// A compose-style project: its network (labelled with the project only,
/// as compose labels it) stays while one of its containers remains, and
/// goes with the last one. Its named volume stays without `--volumes`.
#[tokio::test]
async fn a_compose_projects_network_goes_with_its_last_container() {
    let scope = TestScope::new("compose-net").await;
    let project = scope.project();
    let network = scope.project_network("default").await;
    let volume = scope.project_volume("data").await;
    let service = |name: &str| {
        ContainerSpec::sleeping()
            .label(COMPOSE_PROJECT, project.as_str())
            .label(COMPOSE_SERVICE, name)
            .network(&network)
    };
    let web = scope.container(service("web")).await;
    let db = scope.container(service("db").volume(&volume, "/data")).await;

    let out = scope
        .cli(&[
            "cleanup",
            "docker",
            "--label",
            &scope.label_arg(),
            "--label",
            &format!("{COMPOSE_SERVICE}=web"),
            "--json",
        ])
        .await;
    out.assert_code(0);
    let json = out.json();
    assert_eq!(counts(&json, "containers"), (1, 0, 0, 0));
    assert_eq!(counts(&json, "networks"), (0, 0, 0, 0));
    let left = scope.leftovers().await;
    assert!(!left.container_ids().contains(&web));
    assert_eq!(left.container_ids(), set(&[&db]));
    assert_eq!(left.networks, BTreeSet::from([network.clone()]), "{out}");

    // The last container: selected by the scope label, which the network
    // lacks, so only its project can take the network along.
    let out = scope.cli(&["cleanup", "docker", "--label", &scope.label_arg(), "--json"]).await;
    out.assert_code(0);
    let json = out.json();
    assert_eq!(counts(&json, "containers"), (1, 0, 0, 0));
    assert_eq!(counts(&json, "networks"), (1, 0, 0, 0), "{out}");
    let left = scope.leftovers().await;
    assert!(left.containers.is_empty());
    assert!(left.networks.is_empty(), "{out}");
    assert_eq!(left.volumes, BTreeSet::from([volume]), "{out}");
}

#[tokio::test]
async fn volumes_flag_removes_the_projects_named_volume() {
    let scope = TestScope::new("compose-vol").await;
    let network = scope.project_network("default").await;
    let volume = scope.project_volume("data").await;
    scope
        .container(
            ContainerSpec::sleeping()
                .label(COMPOSE_PROJECT, scope.project())
                .label(COMPOSE_SERVICE, "db")
                .network(&network)
                .volume(&volume, "/data"),
        )
        .await;
    assert_eq!(scope.leftovers().await.volumes.len(), 1);

    let out = scope.cli(&["cleanup", "docker", "--label", &scope.label_arg(), "--volumes", "--json"]).await;

    out.assert_code(0);
    let json = out.json();
    assert_eq!(counts(&json, "containers"), (1, 0, 0, 0));
    assert_eq!(counts(&json, "networks"), (1, 0, 0, 0));
    assert_eq!(counts(&json, "volumes"), (1, 0, 0, 0), "{out}");
    assert!(scope.leftovers().await.is_empty());
}

#[tokio::test]
async fn an_unreachable_daemon_is_exit_2_with_the_address() {
    let mut command = benchwarden_command();
    command.env("DOCKER_HOST", "unix:///nonexistent").args([
        "cleanup",
        "docker",
        "--label",
        "benchwarden.test=unreachable",
    ]);

    let out = run_cli(command).await;

    out.assert_code(2);
    assert!(out.stderr.contains("unix:///nonexistent"), "the message does not name the address\n{out}");
    assert!(out.stderr.contains("DOCKER_HOST"), "{out}");
    assert!(!out.stderr.contains("panicked"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
}

#[tokio::test]
async fn no_selection_flag_is_exit_2_and_removes_nothing() {
    let scope = TestScope::new("no-selection").await;
    let survivor = scope.running(&[]).await;

    let out = scope.cli(&["cleanup", "docker"]).await;

    out.assert_code(2);
    for flag in ["--exited", "--older-than", "--label", "--all"] {
        assert!(out.stderr.contains(flag), "{flag} is not named\n{out}");
    }
    assert_eq!(scope.leftovers().await.container_ids(), set(&[&survivor]));
}

#[tokio::test]
async fn json_output_is_one_object_with_counts() {
    let scope = TestScope::new("json").await;
    let a = scope.running(&[]).await;
    let b = scope.running(&[]).await;
    let c = scope.exited(&[]).await;

    let out = scope.cli(&["cleanup", "docker", "--label", &scope.label_arg(), "--json"]).await;

    out.assert_code(0);
    let json = out.json();
    assert!(json.is_object(), "{json:#}");
    assert_eq!(json["dry_run"], Value::Bool(false));
    assert_eq!(counts(&json, "containers"), (3, 0, 0, 0));
    assert_eq!(counts(&json, "networks"), (0, 0, 0, 0));
    assert_eq!(counts(&json, "volumes"), (0, 0, 0, 0));
    let outcomes = outcomes(&json);
    for id in [&a, &b, &c] {
        assert_eq!(outcomes[id.as_str()], "removed", "{json:#}");
    }
    assert!(scope.leftovers().await.containers.is_empty());
}

#[tokio::test]
async fn list_shows_the_labelled_containers() {
    let scope = TestScope::new("list").await;
    let running = scope.running(&[]).await;
    let exited = scope.exited(&[]).await;

    let out = scope.cli(&["list", "--docker", "--label", &scope.label_arg(), "--json"]).await;
    out.assert_code(0);
    let ids: BTreeSet<String> = out
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("not an array\n{out}"))
        .iter()
        .map(|container| container["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, set(&[&running]), "without --all, only running ones");

    let out = scope.cli(&["list", "--docker", "--all", "--label", &scope.label_arg()]).await;
    out.assert_code(0);
    assert!(out.stdout.starts_with("ID"), "{out}");
    assert!(out.stdout.contains(&running[..12]), "{out}");
    assert!(out.stdout.contains(&exited[..12]), "{out}");
    assert!(!out.stdout.contains(&running[..13]), "ids are 12 characters\n{out}");
}
