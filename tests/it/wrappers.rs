//! The wrappers in `scripts/` that keep the old Python cleanup scripts'
//! flags, run for real: every flag, against the real engine (through the
//! test's scoped socket) and a Daytona contract server, checked by listing
//! what is left afterwards.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use daytona_contract::SeedSandbox;
use serde_json::Value;

use crate::cleanup_all::Both;
use crate::common::{run_cli, CliOutput, ContainerSpec, TestScope};

const DAY: Duration = Duration::from_secs(86_400);

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

impl Both {
    /// `scripts/NAME ARGS` with this test's benchwarden, state directory,
    /// scoped engine and Daytona organisation.
    fn wrapper(&self, name: &str, args: &[&str]) -> Command {
        let mut command = Command::new(script(name));
        for (variable, _) in std::env::vars_os() {
            if variable.to_string_lossy().starts_with("DAYTONA_") {
                command.env_remove(variable);
            }
        }
        command
            .args(args)
            .env("BENCHWARDEN", env!("CARGO_BIN_EXE_benchwarden"))
            .env("BENCHWARDEN_STATE_DIR", self.org.state_dir())
            .env("DOCKER_HOST", self.engine.docker_host())
            .env("DAYTONA_API_URL", self.org.server.api_url())
            .env("DAYTONA_API_KEY", &self.org.key);
        command
    }

    async fn run_wrapper(&self, name: &str, args: &[&str]) -> CliOutput {
        self.org.keep(run_cli(self.wrapper(name, args)).await)
    }
}

#[track_caller]
fn assert_ran(output: &CliOutput, mapped: &str) {
    let ran = output
        .stderr
        .lines()
        .find(|line| line.starts_with("+ "))
        .unwrap_or_else(|| panic!("-v printed no command\n{output}"));
    assert!(ran.ends_with(mapped), "expected the command to end with `{mapped}`\n{output}");
}

#[track_caller]
fn assert_refused(output: &CliOutput, what: &str) {
    output.assert_code(2);
    assert!(output.stderr.contains(what), "{output}");
    assert!(output.stderr.contains("usage:"), "a refusal shows the usage\n{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_docker_keeps_the_old_flags() {
    let both = Both::new("wrap-docker").await;
    let exited_team = both.scope.exited(&[("team", "x")]).await;
    let exited = both.scope.exited(&[]).await;
    let running_team = both.scope.running(&[("team", "x")]).await;
    let running = both.scope.running(&[]).await;
    let left = || async { both.scope.leftovers().await.container_ids() };

    let listed = both.run_wrapper("cleanup_docker", &[]).await;
    listed.assert_code(0);
    for id in [&exited_team, &exited, &running_team, &running] {
        assert!(listed.stdout.contains(&id[..12]), "no flag lists every container\n{listed}");
    }
    let labelled = both.run_wrapper("cleanup_docker", &["--list", "--label", "team=x"]).await;
    labelled.assert_code(0);
    assert!(labelled.stdout.contains(&running_team[..12]) && !labelled.stdout.contains(&running[..12]), "{labelled}");

    let by_label =
        both.run_wrapper("cleanup_docker", &["-v", "--cleanup-exited", "--label", "team=x", "--fail-fast"]).await;
    by_label.assert_code(0);
    assert_ran(&by_label, "cleanup docker --exited --label team=x --fail-fast");
    assert!(!left().await.contains(&exited_team) && left().await.contains(&exited), "{by_label}");
    both.run_wrapper("cleanup_docker", &["--cleanup-exited"]).await.assert_code(0);
    assert!(!left().await.contains(&exited));

    let unlabelled = both.run_wrapper("cleanup_docker", &["--cleanup-all"]).await;
    assert_refused(&unlabelled, "--cleanup-all needs --label");
    assert_eq!(left().await.len(), 2, "a refused --cleanup-all removed something");
    both.run_wrapper("cleanup_docker", &["--cleanup-all", "--label", "team=x"]).await.assert_code(0);
    assert_eq!(left().await.into_iter().collect::<Vec<_>>(), std::slice::from_ref(&running));

    let old = both.run_wrapper("cleanup_docker", &["-v", "--cleanup-old", "--hours", "0"]).await;
    old.assert_code(0);
    assert_ran(&old, "cleanup docker --older-than 0h");
    assert!(left().await.is_empty(), "{old}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_docker_refuses_what_it_does_not_know_and_explains_itself() {
    let both = Both::new("wrap-usage").await;
    let kept = both.scope.exited(&[]).await;
    for (name, args, what) in [
        ("cleanup_docker", &["--bogus"][..], "unknown flag: --bogus"),
        ("cleanup_docker", &["--cleanup-old", "--hours", "soon"], "--hours needs a whole number"),
        ("cleanup_daytona", &["--delete-old", "--days"], "--days needs a whole number"),
        ("cleanup_all", &["--docker-only", "--daytona-only"], "exclude each other"),
        ("run_benchmark_with_cleanup", &["--tasks"], "--tasks needs at least one task name"),
        ("run_benchmark_with_cleanup", &["--no-such-flag"], "unknown flag"),
    ] {
        assert_refused(&both.run_wrapper(name, args).await, what);
    }
    for name in ["cleanup_docker", "cleanup_daytona", "cleanup_all", "run_benchmark_with_cleanup"] {
        let help = both.run_wrapper(name, &["--help"]).await;
        help.assert_code(0);
        assert!(help.stdout.starts_with(&format!("usage: {name}")), "{help}");
    }
    assert!(both.scope.leftovers().await.container_ids().contains(&kept));
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_daytona_keeps_the_old_flags_and_is_a_dry_run_by_default() {
    let both = Both::new("wrap-daytona").await;
    let seed = |state: &str, age: Duration, labels: &[(&str, &str)]| {
        let created_at = std::time::SystemTime::now() - age;
        let labels = labels.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        both.org.seed(SeedSandbox { labels, state: state.to_string(), created_at, ..SeedSandbox::default() })
    };
    let stopped = seed("stopped", Duration::from_secs(60), &[("team", "x")]);
    let errored_elsewhere = seed("error", Duration::from_secs(60), &[("benchwarden.host", "another-machine")]);
    let old = seed("started", 2 * DAY, &[]);
    let young = seed("started", Duration::from_secs(60), &[]);

    let listed = both.run_wrapper("cleanup_daytona", &[]).await;
    listed.assert_code(0);
    for id in [&stopped, &errored_elsewhere, &old, &young] {
        assert!(listed.stdout.contains(&id[..12.min(id.len())]), "no flag lists every sandbox\n{listed}");
    }
    both.run_wrapper("cleanup_daytona", &["--list"]).await.assert_code(0);

    let dry = both.run_wrapper("cleanup_daytona", &["--delete-stopped"]).await;
    dry.assert_code(0);
    assert!(dry.stdout.contains("2 would be removed"), "{dry}");
    assert_eq!(both.org.left().len(), 4, "a dry run deleted something\n{dry}");

    let stopped_run =
        both.run_wrapper("cleanup_daytona", &["-v", "--delete-stopped", "--no-dry-run", "--fail-fast"]).await;
    stopped_run.assert_code(0);
    assert_ran(&stopped_run, "cleanup daytona --any-owner --stopped --no-dry-run --fail-fast");
    assert!(!both.org.server.exists(&stopped) && !both.org.server.exists(&errored_elsewhere), "{stopped_run}");

    let aged = both.run_wrapper("cleanup_daytona", &["-v", "--delete-old", "--days", "1", "--no-dry-run"]).await;
    aged.assert_code(0);
    assert_ran(&aged, "cleanup daytona --any-owner --older-than 1d --no-dry-run");
    assert!(!both.org.server.exists(&old) && both.org.server.exists(&young), "{aged}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_all_keeps_the_old_flags_and_deletes_for_real_like_the_old_script() {
    let both = Both::new("wrap-all").await;
    let exited = both.container(ContainerSpec::exited(), true).await;
    let running = both.container(ContainerSpec::sleeping(), true).await;
    let stopped = both.sandbox("stopped", 2 * DAY);
    let started = both.sandbox("started", Duration::from_secs(3 * 3600));
    let left = || async { both.scope.leftovers().await.container_ids() };

    let listed = both.run_wrapper("cleanup_all", &["--list"]).await;
    listed.assert_code(0);
    assert!(
        listed.stdout.contains(&exited[..12]) && listed.stdout.contains(&stopped[..12.min(stopped.len())]),
        "{listed}"
    );
    assert_eq!(left().await.len(), 2, "--list changed something");

    let docker_only = both.run_wrapper("cleanup_all", &["--docker-only"]).await;
    docker_only.assert_code(0);
    assert!(!left().await.contains(&exited) && left().await.contains(&running), "{docker_only}");
    assert!(both.org.server.exists(&stopped), "--docker-only touched Daytona\n{docker_only}");

    let daytona_only = both.run_wrapper("cleanup_all", &["-v", "--daytona-only"]).await;
    daytona_only.assert_code(0);
    assert_ran(&daytona_only, "cleanup all --daytona-only --no-dry-run");
    assert!(!both.org.server.exists(&stopped) && both.org.server.exists(&started), "{daytona_only}");

    let aggressive = both.run_wrapper("cleanup_all", &["-v", "--aggressive", "--fail-fast"]).await;
    aggressive.assert_code(0);
    assert_ran(&aggressive, "cleanup all --no-dry-run --aggressive --fail-fast");
    assert!(left().await.is_empty(), "{aggressive}");
    assert!(!both.org.server.exists(&started), "{aggressive}");

    let fresh = both.container(ContainerSpec::exited(), true).await;
    let plain = both.run_wrapper("cleanup_all", &[]).await;
    plain.assert_code(0);
    assert!(!left().await.contains(&fresh), "no flag cleans up for real\n{plain}");
}

/// A benchmark of three tasks that pass, claiming containers by a label of this scope.
fn small_benchmark(scope: &TestScope) -> (PathBuf, String) {
    let key = format!("wrap.owner.{}", scope.id());
    let yaml = format!(
        "name: small\nharness:\n  command: [\"true\"]\ntasks: [a, b, c]\n\
         docker:\n  selectors:\n    - label: \"{key}={{run_id}}.{{task}}\"\n"
    );
    let path = scope.state_dir().join("small.yaml");
    std::fs::write(&path, yaml).unwrap();
    (path, key)
}

fn report_tasks(output: &CliOutput) -> Vec<String> {
    let path =
        output.stderr.lines().find_map(|line| line.strip_prefix("report: ")).unwrap_or_else(|| panic!("{output}"));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    report["tasks"].as_array().unwrap().iter().map(|task| task["task"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_benchmark_with_cleanup_keeps_the_old_flags() {
    let both = Both::new("wrap-run").await;
    let (benchmark, key) = small_benchmark(&both.scope);
    let benchmark = benchmark.to_str().unwrap();
    let leftover = both.scope.running(&[(key.as_str(), "20200101-0000-gone.a")]).await;
    let left = || async { both.scope.leftovers().await.container_ids() };

    let skipped =
        both.run_wrapper("run_benchmark_with_cleanup", &[benchmark, "-v", "--skip-cleanup", "--tasks", "a", "b"]).await;
    skipped.assert_code(0);
    assert_ran(&skipped, &format!("run {benchmark} --skip-cleanup --tasks a\\,b"));
    assert_eq!(report_tasks(&skipped), ["a", "b"]);
    assert!(left().await.contains(&leftover), "--skip-cleanup swept\n{skipped}");

    let young =
        both.run_wrapper("run_benchmark_with_cleanup", &[benchmark, "--cleanup-days", "1", "--tasks", "c"]).await;
    young.assert_code(0);
    assert_eq!(report_tasks(&young), ["c"]);
    assert!(left().await.contains(&leftover), "a day-old sweep took a young leftover\n{young}");
    let swept = both.run_wrapper("run_benchmark_with_cleanup", &[benchmark, "--cleanup-days", "0"]).await;
    swept.assert_code(0);
    assert_eq!(report_tasks(&swept), ["a", "b", "c"]);
    assert!(!left().await.contains(&leftover), "--cleanup-days 0 kept the leftover\n{swept}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_benchmark_with_cleanup_runs_the_smoke_benchmark_by_default() {
    let scope = TestScope::new("wrap-smoke").await;
    let mut command = Command::new(script("run_benchmark_with_cleanup"));
    command
        .arg("-v")
        .env("BENCHWARDEN", env!("CARGO_BIN_EXE_benchwarden"))
        .env("BENCHWARDEN_STATE_DIR", scope.state_dir());
    let output = run_cli(command).await;
    // The smoke benchmark ends with one task failed and one timed out, and nothing left.
    output.assert_code(1);
    assert_ran(&output, "run");
    assert_eq!(report_tasks(&output), ["two-containers", "fails", "hangs", "double-fork"]);
    assert!(output.stdout.contains("0 leaked"), "{output}");
}
