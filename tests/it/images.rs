//! Images and the build cache, against the real engine: a harness builds
//! (legacy builder) and imports images through its task's proxy; the test
//! proves by inspecting the engine what went and what stayed: with
//! `docker.remove_images` at the end of the run, without it by `cleanup
//! docker --images`, and the build-cache prune.
//!
//! What cannot be tested here, honestly: a pull (no registry; the parsing of
//! a pull's answer, and "up to date" meaning the image existed before, are
//! unit tests in `src/intercept/images.rs`), and a build-cache prune that
//! frees something, since the cache is shared by every build on the engine
//! and cannot be scoped to a test: the test prunes down to a size above any
//! use, which proves the call is made and its answer read, and frees nothing
//! of anyone's.

use std::path::PathBuf;
use std::process::Command;

use crate::common::{self, CliOutput, TestScope, SCOPE_LABEL};

/// Removes images (and a container using one) when dropped, so a failing test leaves none behind.
struct Guard {
    images: Vec<String>,
    container: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.container]).output();
        for image in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

struct Images {
    built: String,
    used: String,
    imported: String,
    container: String,
}

impl Images {
    fn new(scope: &TestScope) -> (Self, Guard) {
        let tag = |what: &str| format!("bwtest-{}:{what}", scope.id());
        let images = Images {
            built: tag("built"),
            used: tag("used"),
            imported: tag("imported"),
            container: scope.unique_name("image-user"),
        };
        let guard = Guard {
            images: vec![images.built.clone(), images.used.clone(), images.imported.clone()],
            container: images.container.clone(),
        };
        (images, guard)
    }
}

/// A benchmark whose one task builds two images and imports one through
/// its proxy, then makes a container of the second image behind the
/// proxy's back (straight to the engine, as a run that is not this one
/// would), which must keep that image.
fn benchmark(scope: &TestScope, images: &Images, remove_images: bool) -> PathBuf {
    let dir = scope.state_dir().join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    let engine = std::env::var("DOCKER_HOST").ok().filter(|host| !host.is_empty());
    let engine = engine.unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
    let script = format!(
        r#"#!/bin/sh
set -eu
DIR='{dir}'
mkdir -p "$DIR/a" "$DIR/b"
printf 'FROM {image}\nRUN echo a > /a.txt\n' > "$DIR/a/Dockerfile"
printf 'FROM {image}\nRUN echo b > /b.txt\n' > "$DIR/b/Dockerfile"
docker build -t '{built}' "$DIR/a" > "$DIR/a.log" 2>&1 || {{ cat "$DIR/a.log"; exit 1; }}
docker build -t '{used}' "$DIR/b" > "$DIR/b.log" 2>&1 || {{ cat "$DIR/b.log"; exit 1; }}
echo "built: $(docker image inspect -f '{{{{.Id}}}}' '{built}')"
echo "owner: $(docker image inspect -f '{{{{index .Config.Labels "benchwarden.image.run"}}}}' '{built}')"
tar -C "$DIR/a" -cf - Dockerfile | docker import - '{imported}' > /dev/null
DOCKER_HOST='{engine}' docker create --name '{container}' --label '{SCOPE_LABEL}={id}' '{used}' true > /dev/null
"#,
        dir = dir.display(),
        image = common::test_image(),
        built = images.built,
        used = images.used,
        imported = images.imported,
        container = images.container,
        id = scope.id(),
    );
    std::fs::write(dir.join("harness.sh"), script).unwrap();
    let yaml = format!(
        "name: images\nharness:\n  command: [sh, harness.sh]\n  cwd: .\ndocker:\n  remove_images: {remove_images}\n"
    );
    let benchmark = dir.join("benchmark.yaml");
    std::fs::write(&benchmark, yaml).unwrap();
    benchmark
}

fn report(output: &CliOutput) -> serde_json::Value {
    let path = output.stderr.lines().find_map(|line| line.strip_prefix("report: ")).expect("a report path");
    serde_json::from_str(&std::fs::read_to_string(path.trim()).unwrap()).unwrap()
}

/// Whether the engine still has this image (by tag or id).
fn exists(image: &str) -> bool {
    Command::new("docker").args(["image", "inspect", image]).output().unwrap().status.success()
}

/// A line the harness printed (with `-j 1` its output is echoed on stderr).
fn printed(output: &CliOutput, prefix: &str) -> String {
    let mut lines = output.stdout.lines().chain(output.stderr.lines());
    lines.find_map(|line| line.strip_prefix(prefix)).unwrap_or_default().to_string()
}

async fn run(scope: &TestScope, benchmark: &std::path::Path) -> CliOutput {
    let mut command = scope.benchwarden();
    command.args(["run", benchmark.to_str().unwrap(), "-j", "1", "--skip-cleanup"]).env("DOCKER_BUILDKIT", "0");
    common::run_cli(command).await
}

fn fate_of<'a>(report: &'a serde_json::Value, tag: &str) -> &'a serde_json::Value {
    let images = report["disk"]["images"].as_array().expect("disk.images");
    images
        .iter()
        .find(|image| image["image"]["tags"].as_array().unwrap().iter().any(|t| t == tag))
        .unwrap_or_else(|| panic!("{tag} not in {images:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_with_remove_images_removes_what_it_made_and_keeps_what_others_use() {
    let scope = TestScope::new("images-run").await;
    let (images, _guard) = Images::new(&scope);
    let output = run(&scope, &benchmark(&scope, &images, true)).await;
    output.assert_code(0);
    let report = report(&output);
    let built_id = printed(&output, "built: ");
    assert!(built_id.starts_with("sha256:"), "{output}");
    assert_eq!(printed(&output, "owner: "), report["run_id"].as_str().unwrap(), "the proxy labelled the build");

    // Listed on the engine, not taken from our report: the built and imported images are gone,
    // the one a container outside the run uses stays, and so does the base image.
    assert!(!exists(&images.built) && !exists(&built_id), "{output}");
    assert!(!exists(&images.imported), "{output}");
    assert!(exists(&images.used), "{output}");
    assert!(exists(common::test_image()), "the base image existed before the run");
    assert_eq!(fate_of(&report, &images.built)["fate"], "removed", "{report:#}");
    assert_eq!(fate_of(&report, &images.imported)["fate"], "removed", "{report:#}");
    let kept = fate_of(&report, &images.used);
    assert_eq!(kept["fate"], "kept", "{report:#}");
    assert!(kept["reason"].as_str().unwrap().contains(&images.container), "{report:#}");
    assert!(report["disk_reclaimed_bytes"].as_u64().unwrap() > 0, "{report:#}");
    assert!(output.stdout.contains("disk freed: "), "{output}");
    // Images are no leaks of a task: nothing counted as leaked, and the run ended.
    assert_eq!(report["tasks"][0]["resources_leaked"].as_array().map(Vec::len), Some(0), "{report:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_remove_images_they_stay_until_cleanup_docker_images() {
    let scope = TestScope::new("images-cleanup").await;
    let (images, _guard) = Images::new(&scope);
    let output = run(&scope, &benchmark(&scope, &images, false)).await;
    output.assert_code(0);
    let run_id = report(&output)["run_id"].as_str().unwrap().to_string();
    assert!(report(&output)["disk"].is_null(), "{output}");
    assert!(exists(&images.built) && exists(&images.imported) && exists(&images.used), "kept without the key");

    // Scoped to this run by its owner label, so images of other people's runs are not touched.
    let owner = format!("benchwarden.image.run={run_id}");
    let too_young =
        scope.cli(&["cleanup", "docker", "--images", "--older-than", "1h", "--label", &owner, "--json"]).await;
    too_young.assert_code(0);
    assert_eq!(too_young.json()["disk"]["images"].as_array().map(Vec::len), Some(0), "{too_young}");
    let dry = scope.cli(&["cleanup", "docker", "--images", "--label", &owner, "--dry-run", "--json"]).await;
    dry.assert_code(0);
    let fates: Vec<String> = dry.json()["disk"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| {
            format!("{} {}", image["image"]["tags"][0].as_str().unwrap_or(""), image["fate"].as_str().unwrap())
        })
        .collect();
    assert!(fates.contains(&format!("{} would_remove", images.built)), "{fates:?}");
    assert!(fates.contains(&format!("{} kept", images.used)), "{fates:?}");
    assert!(exists(&images.built), "a dry run changes nothing");

    let real = scope.cli(&["cleanup", "docker", "--images", "--label", &owner]).await;
    real.assert_code(0);
    assert!(!exists(&images.built), "{real}");
    // The container made from `used` inherited the image's labels, so `--label` selected it too:
    // it went first, and then its image, which nothing used any more.
    assert!(real.stdout.contains("containers: 1 removed"), "{real}");
    assert!(!exists(&images.used), "{real}");
    assert!(real.stdout.contains("disk freed: "), "{real}");
    // The import carries no labels, so `--label` left it; the ledger knows it, and without --label it goes.
    assert!(exists(&images.imported), "{real}");
    let everything_of_ours = scope.cli(&["cleanup", "docker", "--images", "--dry-run", "--json"]).await;
    let listed = everything_of_ours.json()["disk"]["images"].to_string();
    assert!(listed.contains(&images.imported), "{everything_of_ours}");
}

#[tokio::test(flavor = "multi_thread")]
async fn build_cache_max_prunes_through_the_engine_api() {
    let scope = TestScope::new("build-cache").await;
    // Far above any machine's cache: the call is made and answered, and frees nothing of anyone's.
    let output = scope.cli(&["cleanup", "docker", "--build-cache-max", "1000TB", "--json"]).await;
    output.assert_code(0);
    let json = output.json();
    assert_eq!(json["disk"]["build_cache"]["max_bytes"], 1_000_000_000_000_000u64, "{output}");
    assert_eq!(json["disk"]["build_cache"]["reclaimed_bytes"], 0, "{output}");
    assert!(json["disk"]["build_cache"]["error"].is_null(), "{output}");
    assert!(json.get("removed").is_none(), "no container was swept: {output}");
    let dry = scope.cli(&["cleanup", "docker", "--build-cache-max", "1GB", "--dry-run"]).await;
    dry.assert_code(0);
    assert!(dry.stdout.contains("would be pruned to 1.0 GB (dry run)"), "{dry}");
    let bad = scope.cli(&["cleanup", "docker", "--build-cache-max", "lots"]).await;
    bad.assert_code(2);
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_all_aggressive_takes_the_images_runs_made_and_prunes_the_build_cache() {
    let scope = TestScope::new("images-all").await;
    let (images, _guard) = Images::new(&scope);
    let output = run(&scope, &benchmark(&scope, &images, false)).await;
    output.assert_code(0);
    let run_id = report(&output)["run_id"].as_str().unwrap().to_string();
    assert!(exists(&images.built) && exists(&images.used), "kept without the key");
    // The engine as this run's images (and the container that inherited their labels) show it, so
    // that no other test's images or containers are in sight; a build-cache prune through it
    // prunes nothing of anyone's.
    let engine = common::ScopedEngine::start(&format!("benchwarden.image.run={run_id}"));
    let mut command = scope.benchwarden();
    command
        .args(["cleanup", "all", "--aggressive", "--docker-only", "--build-cache-max", "2GB", "--json"])
        .env("DOCKER_HOST", engine.docker_host());
    let cleaned = common::run_cli(command).await;
    cleaned.assert_code(0);
    let json = cleaned.json();
    assert!(!exists(&images.built), "{cleaned}");
    // The container made outside the run is no benchmark's: it stays, and so does its image.
    assert!(exists(&images.used), "{cleaned}");
    let fates: Vec<String> = json["disk"]["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no disk report: {cleaned}"))
        .iter()
        .map(|image| {
            format!("{} {}", image["image"]["tags"][0].as_str().unwrap_or(""), image["fate"].as_str().unwrap())
        })
        .collect();
    assert!(fates.contains(&format!("{} removed", images.built)), "{fates:?}");
    assert!(fates.contains(&format!("{} kept", images.used)), "{fates:?}");
    assert_eq!(json["disk"]["build_cache"]["max_bytes"], 2_000_000_000u64, "{cleaned}");
    assert!(json["disk"]["build_cache"]["error"].is_null(), "{cleaned}");
}
