//! Ctrl-Z of `benchwarden run`, with the real binary and real processes:
//! SIGTSTP stops benchwarden and every process of its task (the harness's
//! group and a `setsid`-escaped descendant), the time limit does not count
//! the stop, SIGCONT continues them all, and nothing is left at the end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::common::{Running, TestScope};
use crate::run::{fixture, path};

/// The state letter of `/proc/<pid>/stat` (`T` stopped, `Z` zombie), or
/// `None` once the process is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Waits (no sleep: `waitid` returns on the event) until our child
/// benchwarden has stopped, without reaping it (`WNOWAIT`), so that its
/// exit is still tokio's to collect.
async fn wait_until_stopped(pid: u32) -> WaitStatus {
    let flags = WaitPidFlag::WSTOPPED | WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
    let waiting = tokio::task::spawn_blocking(move || waitid(Id::Pid(Pid::from_raw(pid as i32)), flags));
    tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("benchwarden neither stopped nor exited within 30 s of SIGTSTP")
        .unwrap()
        .unwrap()
}

/// Polls `/proc` until `pid` shows `wanted` (a process that another one
/// stopped raises no event we can await); panics after five seconds.
async fn wait_for_state(pid: u32, wanted: char, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(pid) != Some(wanted) {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) is in state {:?}, not {wanted}", state(pid));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn beats(file: &Path) -> u64 {
    std::fs::read_to_string(file).unwrap_or_default().trim().parse().unwrap_or(0)
}

/// Polls until every heartbeat has moved past what it was; panics after five seconds.
async fn wait_for_beats_past(files: &[PathBuf], before: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while files.iter().zip(before).any(|(file, before)| beats(file) <= *before) {
        assert!(Instant::now() < deadline, "a heartbeat did not resume after SIGCONT: {files:?} still at {before:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_z_stops_every_harness_process_and_the_time_limit_leaves_the_stop_out() {
    let scope = TestScope::new("run-ctrl-z").await;
    let dir = scope.state_dir().join("fixture");
    let file = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (harness_beat, escaped_beat) = (file("harness.beat"), file("escaped.beat"));
    // A heartbeat every 50 ms in the harness's group, and one in a session of its own.
    let body = format!(
        "start_container\n\
         setsid sh -c 'echo $$ > {escaped_pid}; i=0; while :; do i=$((i+1)); echo $i > {escaped_beat}; sleep 0.05; done' &\n\
         echo $$ > {harness_pid}\n\
         i=0; while :; do i=$((i+1)); echo $i > {harness_beat}; \
         [ -s {escaped_beat} ] && [ ! -e {told} ] && touch {told} && echo heartbeats-started; sleep 0.05; done",
        escaped_pid = file("escaped.pid"),
        harness_pid = file("harness.pid"),
        told = file("told"),
    );
    let fixture = fixture(&scope, &[("beats", &body)], "");
    let timeout = Duration::from_secs(3);
    let stop = Duration::from_secs(4);
    let started = Instant::now();
    let mut command = scope.benchwarden();
    command.args(["run", path(&fixture), "-j", "1", "--timeout", "3s", "--grace", "1s"]);
    let mut running = Running::start(command);
    running.wait_for("heartbeats-started").await;
    let pid_of = |name: &str| std::fs::read_to_string(file(name)).unwrap().trim().parse::<u32>().unwrap();
    let harness = [("the harness", pid_of("harness.pid")), ("its setsid descendant", pid_of("escaped.pid"))];

    running.send(Signal::SIGTSTP);
    let stopped_at = Instant::now();
    let status = wait_until_stopped(running.pid()).await;
    assert!(matches!(status, WaitStatus::Stopped(_, Signal::SIGSTOP)), "benchwarden did not stop itself: {status:?}");
    for (what, pid) in harness {
        wait_for_state(pid, 'T', what).await;
    }
    let files = [PathBuf::from(&harness_beat), PathBuf::from(&escaped_beat)];
    let before: Vec<u64> = files.iter().map(|file| beats(file)).collect();
    // Stopped longer than the whole time limit: this wait is the stop being tested.
    tokio::time::sleep(stop).await;
    assert_eq!(state(running.pid()), Some('T'), "benchwarden went on while stopped");
    for (what, pid) in harness {
        assert_eq!(state(pid), Some('T'), "{what} went on while stopped");
    }
    let during: Vec<u64> = files.iter().map(|file| beats(file)).collect();
    assert_eq!(during, before, "a heartbeat went on while stopped");

    let continued_at = Instant::now();
    running.send(Signal::SIGCONT);
    wait_for_beats_past(&files, &before).await;
    let output = running.finish().await;
    let took = started.elapsed();
    let stopped_for = continued_at - stopped_at;

    output.assert_code(1);
    let line = output.stdout.lines().find(|line| line.starts_with("beats")).unwrap_or_else(|| panic!("{output}"));
    assert!(line.contains("timed out"), "{line}\n{output}");
    assert!(output.stderr.contains("SIGTSTP: stopped"), "{output}");
    assert!(output.stderr.contains("SIGCONT: continued"), "{output}");
    // Timed out on resume at once, the run would take the stop plus under a second.
    assert!(
        took >= timeout + stopped_for,
        "took {took:?}, stopped {stopped_for:?} of it: the time limit counted the stop"
    );
    let left = scope.leftovers().await;
    assert!(left.is_empty(), "resources left: {left:?}\n{output}");
    for (what, pid) in harness {
        assert!(matches!(state(pid), None | Some('Z')), "{what} (pid {pid}) outlived its task\n{output}");
    }
}
