//! Daytona leases across machines, against the contract server: three
//! "machines" on this one, each benchwarden in a UTS namespace of its own
//! (`unshare --uts`, as root, which the tests are) with its own host name
//! and state directory. A UTS namespace rather than a test-only override
//! of the host name: benchwarden reads its host name as it does in
//! production, and no code path exists only for tests.
//!
//! Host A runs a task that creates sandboxes through the proxy, then A is
//! lost (kill -9, its harness killed, its state directory deleted). Host C
//! runs a long task meanwhile. Host B's `cleanup daytona --no-dry-run`
//! takes nothing while A's leases last, then exactly A's sandboxes; C's
//! stay, renewed, over several lease lengths.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daytona_contract::ContractConfig;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::common::daytona::Org;
use crate::common::{run_cli, CliOutput, Running};
use crate::harnesses::run_processes;

/// Lease length of the tests (renewed every 1.7 s): long enough that the
/// steps between losing host A and host B's first look fit well inside it.
const LEASE: Duration = Duration::from_secs(5);
const LEASE_GRACE: &str = "1s";

/// `benchwarden --state-dir STATE ARGS` as host `host`, against `org`.
fn as_host(org: &Org, host: &str, state_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("unshare");
    command
        .args(["--uts", "sh", "-c", "printf %s \"$0\" > /proc/sys/kernel/hostname && exec \"$@\"", host])
        .arg(env!("CARGO_BIN_EXE_benchwarden"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("BENCHWARDEN_STATE_DIR")
        .stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DAYTONA_") {
            command.env_remove(name);
        }
    }
    command.env("DAYTONA_API_URL", org.server.api_url()).env("DAYTONA_API_KEY", &org.key);
    command
}

/// A benchmark of one task that creates `count` sandboxes through its proxy,
/// says so, and runs until stopped; leases of [`LEASE`].
fn benchmark(dir: &Path, count: usize) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let script = format!(
        "set -e\nfor i in $(seq {count}); do\n  \
           curl -sf -X POST -H \"Authorization: Bearer $DAYTONA_API_KEY\" -H 'Content-Type: application/json' \
           -d '{{}}' \"$DAYTONA_API_URL/sandbox\" >/dev/null\n\
         done\necho created-all\nexec sleep 3600\n"
    );
    std::fs::write(dir.join("harness.sh"), script).unwrap();
    let yaml = format!(
        "name: leases\nharness:\n  command: [sh, harness.sh]\n  cwd: .\ndocker:\n  enabled: false\n\
         daytona:\n  lease: {}s\n",
        LEASE.as_secs()
    );
    std::fs::write(dir.join("benchmark.yaml"), yaml).unwrap();
    dir.join("benchmark.yaml").to_str().unwrap().to_string()
}

/// The sandboxes on the server whose owner labels name `host`, by id, with their labels.
fn sandboxes_of(org: &Org, host: &str) -> Vec<(String, Value)> {
    org.server
        .sandboxes()
        .into_iter()
        .filter(|sandbox| sandbox["labels"]["benchwarden.host"] == host && sandbox["state"] != "destroying")
        .map(|sandbox| (sandbox["id"].as_str().unwrap().to_string(), sandbox["labels"].clone()))
        .collect()
}

fn ids(sandboxes: &[(String, Value)]) -> BTreeSet<String> {
    sandboxes.iter().map(|(id, _)| id.clone()).collect()
}

fn lease_until(labels: &Value) -> i64 {
    labels["benchwarden.lease-until"].as_str().and_then(|until| until.parse().ok()).expect("a lease label")
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Until the clock passes `until` (Unix seconds): the lease being tested is
/// time itself, so this wait is on the clock.
async fn wait_past(until: i64) {
    while now() <= until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The run id a running benchwarden announced.
async fn run_id_of(running: &mut Running) -> String {
    let line = running.wait_for("task(s) of").await;
    let after = line.split("run ").nth(1).unwrap_or_else(|| panic!("{line}"));
    after.split(':').next().unwrap().trim().to_string()
}

/// Host B's `cleanup daytona --no-dry-run`.
async fn cleanup_as_b(org: &Org, state_dir: &Path) -> CliOutput {
    let args = ["cleanup", "daytona", "--no-dry-run", "--lease-grace", LEASE_GRACE, "--json"];
    org.keep(run_cli(as_host(org, "host-b", state_dir, &args)).await)
}

fn deleted(output: &CliOutput) -> BTreeSet<String> {
    let report = output.json();
    let results = report["sandboxes"]["results"].as_array().cloned().unwrap_or_default();
    results.iter().map(|result| result[0]["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_machines_sandboxes_are_collected_once_its_leases_end_and_a_live_ones_never() {
    let org = Org::start(ContractConfig::default()).await;
    let root = org.state_dir().to_path_buf();
    let (state_a, state_b, state_c) = (root.join("host-a"), root.join("host-b"), root.join("host-c"));
    let (bench_a, bench_c) = (benchmark(&root.join("bench-a"), 3), benchmark(&root.join("bench-c"), 2));

    let mut host_c = Running::start(as_host(&org, "host-c", &state_c, &["run", &bench_c, "-j", "1"]));
    let mut host_a = Running::start(as_host(&org, "host-a", &state_a, &["run", &bench_a, "-j", "1"]));
    let run_a = run_id_of(&mut host_a).await;
    host_a.wait_for("created-all").await;
    host_c.wait_for("created-all").await;
    let (of_a, of_c) = (ids(&sandboxes_of(&org, "host-a")), ids(&sandboxes_of(&org, "host-c")));
    assert_eq!((of_a.len(), of_c.len()), (3, 2));
    let c_created = Instant::now();

    // Machine A is lost: benchwarden and its harness killed, its state directory gone.
    host_a.send(Signal::SIGKILL);
    for process in run_processes(&run_a) {
        let pid: i32 = process.split(' ').next().unwrap().parse().unwrap();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = host_a.finish().await;
    std::fs::remove_dir_all(&state_a).unwrap();

    let early = cleanup_as_b(&org, &state_b).await;
    early.assert_code(0);
    assert_eq!(deleted(&early), BTreeSet::new(), "taken under a current lease\n{early}");
    assert_eq!(ids(&sandboxes_of(&org, "host-a")), of_a, "{early}");

    // Once A's last lease has ended, past the grace.
    let last = sandboxes_of(&org, "host-a").iter().map(|(_, labels)| lease_until(labels)).max().unwrap();
    wait_past(last + 1).await;
    let late = cleanup_as_b(&org, &state_b).await;
    late.assert_code(0);
    assert_eq!(deleted(&late), of_a, "exactly A's sandboxes\n{late}");
    assert!(late.stdout.contains(&format!("lease expired (host host-a, run {run_a})")), "{late}");
    assert!(sandboxes_of(&org, "host-a").is_empty(), "{late}");

    // C's leases, renewed, outlive several lease lengths, and B never takes them.
    while c_created.elapsed() < LEASE * 4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let of_c_now = sandboxes_of(&org, "host-c");
    assert_eq!(ids(&of_c_now), of_c, "C lost a sandbox");
    assert!(of_c_now.iter().all(|(_, labels)| lease_until(labels) >= now()), "C's leases lapsed: {of_c_now:?}");
    let again = cleanup_as_b(&org, &state_b).await;
    assert_eq!(deleted(&again), BTreeSet::new(), "C's were taken\n{again}");
    let renewals = org.server.requests().iter().filter(|request| request.route.starts_with("PUT")).count();
    assert!(renewals >= 2 * 3, "C renewed each lease every third of a lease: {renewals} renewals");

    host_c.send(Signal::SIGINT);
    let c_output = host_c.finish().await;
    c_output.assert_code(130);
    assert!(sandboxes_of(&org, "host-c").is_empty(), "C's run tore its sandboxes down\n{c_output}");
}

/// A started sandbox of `run` on another host, leased until `until` (none: no lease label).
fn seed_elsewhere(org: &Org, run: &str, until: Option<i64>) -> String {
    let mut labels = crate::common::daytona::owner(run, "host-x");
    if let Some(until) = until {
        labels.push(("benchwarden.lease-until".to_string(), until.to_string()));
    }
    org.seed(crate::common::daytona::seed_with(&labels))
}

/// `cleanup all`, `sweep` and the pre-run sweep collect what another host's
/// runs left once their leases ended (started and young: the lease is the
/// proof, not the state or the age), and leave alone a sandbox whose lease
/// is current and one with no lease label.
#[tokio::test(flavor = "multi_thread")]
async fn cleanup_all_sweep_and_the_pre_run_sweep_collect_ended_leases_only() {
    let org = Org::start(ContractConfig::default()).await;
    let ended = now() - 1_000;
    let current = seed_elsewhere(&org, "20261130-0900-live", Some(now() + 3_600));
    let unleased = seed_elsewhere(&org, "20261130-0800-old", None);
    let kept = [current.clone(), unleased.clone()];

    let for_cleanup_all = seed_elsewhere(&org, "20261130-0700-lost", Some(ended));
    let all = org.cli(&["cleanup", "all", "--daytona-only", "--no-dry-run", "--lease-grace", "1s"]).await;
    all.assert_code(0);
    assert!(!org.server.exists(&for_cleanup_all), "{all}");
    assert!(all.stderr.contains("lease expired (host host-x, run 20261130-0700-lost)"), "{all}");
    crate::common::daytona::assert_there(&org, &kept, &all);

    let for_sweep = seed_elsewhere(&org, "20261130-0600-lost", Some(ended));
    let sweep = org.cli(&["sweep", "--once", "--daytona-only", "--no-dry-run"]).await;
    sweep.assert_code(0);
    assert!(!org.server.exists(&for_sweep), "{sweep}");
    crate::common::daytona::assert_there(&org, &kept, &sweep);

    let for_pre_run = seed_elsewhere(&org, "20261130-0500-lost", Some(ended));
    let dir = org.state_dir().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = "name: nothing\nharness:\n  command: [\"true\"]\ndocker:\n  enabled: false\ndaytona: {}\n";
    std::fs::write(dir.join("benchmark.yaml"), yaml).unwrap();
    let run = org.cli(&["run", dir.join("benchmark.yaml").to_str().unwrap()]).await;
    run.assert_code(0);
    assert!(!org.server.exists(&for_pre_run), "{run}");
    assert!(run.stderr.contains("lease expired (host host-x, run 20261130-0500-lost)"), "{run}");
    crate::common::daytona::assert_there(&org, &kept, &run);

    let for_nobody = seed_elsewhere(&org, "20261130-0400-lost", Some(ended));
    let skipped = org.cli(&["run", dir.join("benchmark.yaml").to_str().unwrap(), "--skip-cleanup"]).await;
    skipped.assert_code(0);
    assert!(org.server.exists(&for_nobody), "--skip-cleanup collected\n{skipped}");
}

/// A renewal that meets a 429 and then 5xx keeps the lease alive: with no
/// retries inside a round (`--retries 0`; the 429's wait spends none), the
/// first two rounds fail outright (a 429 then a 503 for both sandboxes,
/// then a 503 for both), each tried again after half a period, and the
/// third renews before the lease ends.
/// Checked every 100 ms, to the millisecond, from the server's own labels,
/// over two lease lengths.
#[tokio::test(flavor = "multi_thread")]
async fn two_failed_renewal_rounds_in_a_row_do_not_let_a_lease_lapse() {
    use daytona_contract::{Fault, FaultRule, When};
    let route = "PUT /api/sandbox/{idOrName}/labels";
    let throttled = FaultRule::new(route, Fault::throttled("0"), When::First(2));
    // Asked only about the calls the first rule lets by. A 429 that says how long to wait spends
    // no retry, so each sandbox's first renewal meets the 429, then a 503 (a failed round), and
    // its second a 503 again (a second failed round).
    let unavailable = FaultRule::new(route, Fault::Status(503), When::First(4));
    let org =
        Org::start(ContractConfig { rules: vec![throttled.clone(), unavailable.clone()], ..ContractConfig::default() })
            .await;
    let root = org.state_dir().to_path_buf();
    let bench = benchmark(&root.join("bench"), 2);
    // Renewed every 2 s, tried again after 1 s: leases are written in whole seconds.
    let lease = std::fs::read_to_string(&bench).unwrap().replace("lease: 5s", "lease: 6s");
    std::fs::write(&bench, lease).unwrap();
    let mut host =
        Running::start(as_host(&org, "host-r", &root.join("state"), &["--retries", "0", "run", &bench, "-j", "1"]));
    host.wait_for("created-all").await;
    let created = Instant::now();
    let mut lowest_margin = i128::MAX;
    while created.elapsed() < Duration::from_secs(12) {
        let sandboxes = sandboxes_of(&org, "host-r");
        assert_eq!(sandboxes.len(), 2);
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i128;
        for (id, labels) in &sandboxes {
            let margin = i128::from(lease_until(labels)) * 1000 - now_ms;
            assert!(margin > 0, "the lease of {id} lapsed {} ms ago: {labels}", -margin);
            lowest_margin = lowest_margin.min(margin);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.send(Signal::SIGINT);
    let output = host.finish().await;
    output.assert_code(130);
    assert_eq!((throttled.injected(), unavailable.injected()), (2, 4), "{output}");
    let failed_rounds = output.stderr.matches("renewal(s) failed").count();
    assert!(failed_rounds >= 2, "two rounds should have failed: {failed_rounds}\n{output}");
    eprintln!("lowest lease margin seen: {lowest_margin} ms");
    assert!(sandboxes_of(&org, "host-r").is_empty(), "{output}");
}
