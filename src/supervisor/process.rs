//! Harness processes: spawning in a new process group, finding every
//! process of a task (group members, and descendants that escaped it, by
//! their inherited `BENCHWARDEN_RUN_ID`/`BENCHWARDEN_TASK_ID`), signal
//! escalation, and reaping of orphans adopted as a child subreaper.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::host::{self, all_processes as proc_stats};

pub(crate) const ENV_RUN_ID: &str = "BENCHWARDEN_RUN_ID";
pub(crate) const ENV_TASK_ID: &str = "BENCHWARDEN_TASK_ID";
/// This host's name and benchwarden's pid, as the owner labels carry them.
pub(crate) const ENV_HOST: &str = "BENCHWARDEN_HOST";
pub(crate) const ENV_PID: &str = "BENCHWARDEN_PID";
/// The state directory, as `--state-dir` and this variable name it: the
/// harness gets benchwarden's, so that `benchwarden claim` finds the ledger.
pub(crate) const ENV_STATE_DIR: &str = "BENCHWARDEN_STATE_DIR";

/// How often `recover` looks again for processes of a run it is killing.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Pids of harness processes that tokio is waiting for: the orphan reaper
/// must not steal their exit status.
fn tokio_children() -> &'static Mutex<HashSet<u32>> {
    static CHILDREN: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    CHILDREN.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Spawns a harness and registers its pid as tokio's before the orphan
/// reaper can look: a harness that exits at once must not be taken for an
/// adopted orphan and have its exit status stolen.
pub(crate) fn spawn_harness(command: &mut tokio::process::Command) -> std::io::Result<(tokio::process::Child, u32)> {
    let mut children = tokio_children().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let child = command.spawn()?;
    let pid = child.id().ok_or_else(|| std::io::Error::other("the harness exited before its pid could be read"))?;
    children.insert(pid);
    Ok((child, pid))
}

pub(crate) fn unregister_tokio_child(pid: u32) {
    tokio_children().lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&pid);
}

/// Makes this process a child subreaper, so that a harness's double-forked
/// descendants are re-parented to us instead of to init.
pub(crate) fn become_subreaper() -> Result<(), Errno> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Reaps zombie children of ours that tokio does not own (adopted orphans).
/// Waits on specific pids only, never `waitpid(-1)`.
pub(crate) fn reap_adopted() {
    reap_adopted_among(&proc_stats());
}

/// [`reap_adopted`] over a scan of `/proc` already made.
fn reap_adopted_among(stats: &[host::ProcessStat]) {
    let me = std::process::id();
    let owned = tokio_children().lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    for stat in stats {
        if stat.parent == me && stat.state == 'Z' && !owned.contains(&stat.pid) {
            let _ = waitpid(Pid::from_raw(stat.pid as i32), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Runs [`reap_adopted`] whenever a child changes state, until the runtime
/// shuts down.
pub(crate) fn spawn_reaper() {
    tokio::spawn(async {
        let Ok(mut child_signals) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) else {
            tracing::warn!("cannot listen for SIGCHLD: adopted orphans are reaped only when their task ends");
            return;
        };
        while child_signals.recv().await.is_some() {
            reap_adopted();
        }
    });
}

/// One task's processes: its group, and every descendant that escaped it
/// (found by the `BENCHWARDEN_RUN_ID`/`BENCHWARDEN_TASK_ID` it inherited).
#[derive(Debug, Clone)]
pub(crate) struct TaskProcesses {
    pub(crate) process_group: u32,
    /// `BENCHWARDEN_RUN_ID=…` and `BENCHWARDEN_TASK_ID=…`, as found in `/proc/<pid>/environ`.
    run_entry: String,
    task_entry: String,
    /// The harness's start time: no process of the task can be older, so
    /// older ones are passed over without reading their environment.
    started: u64,
}

impl TaskProcesses {
    pub(crate) fn new(harness_pid: u32, run_id: &str, task_id: &str) -> Self {
        TaskProcesses {
            process_group: harness_pid,
            run_entry: format!("{ENV_RUN_ID}={run_id}"),
            task_entry: format!("{ENV_TASK_ID}={task_id}"),
            started: host::process_start_time(harness_pid).unwrap_or(0),
        }
    }

    /// Live (not zombie) processes of the task, wherever they went.
    pub(crate) fn find(&self) -> Vec<u32> {
        self.find_among(&proc_stats())
    }

    /// [`Self::find`] over a scan of `/proc` already made.
    fn find_among(&self, stats: &[host::ProcessStat]) -> Vec<u32> {
        let me = std::process::id();
        stats
            .iter()
            .filter(|stat| stat.pid != me && !stat.is_zombie() && stat.start_time >= self.started)
            .filter(|stat| stat.group == self.process_group || self.environment_names_task(stat.pid))
            .map(|stat| stat.pid)
            .collect()
    }

    /// Reaps adopted orphans, then says whether any process of the task is
    /// left: one scan of `/proc` for both.
    pub(crate) fn any_left(&self) -> bool {
        let stats = proc_stats();
        reap_adopted_among(&stats);
        !self.find_among(&stats).is_empty()
    }

    fn environment_names_task(&self, pid: u32) -> bool {
        host::environment_has(pid, &[&self.run_entry, &self.task_entry])
    }

    /// Sends `signal` to the group and to every process of the task found
    /// elsewhere; returns how many processes there were.
    pub(crate) fn signal(&self, signal: Signal) -> usize {
        let processes = self.find();
        if processes.is_empty() {
            // The group is empty too: its id may already belong to someone else.
            return 0;
        }
        let _ = killpg(Pid::from_raw(self.process_group as i32), signal);
        for pid in &processes {
            let _ = kill(Pid::from_raw(*pid as i32), signal);
        }
        processes.len()
    }
}

/// The running tasks' processes, by process group: what Ctrl-Z stops.
fn running_tasks() -> &'static Mutex<HashMap<u32, TaskProcesses>> {
    static RUNNING: OnceLock<Mutex<HashMap<u32, TaskProcesses>>> = OnceLock::new();
    RUNNING.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A task counted among the running ones until dropped, which must come
/// after [`unregister_tokio_child`]: a harness group that is tokio's child
/// but not registered gets Ctrl-Z's SIGSTOP by its group id alone.
pub(crate) struct RunningTask(u32);

impl RunningTask {
    pub(crate) fn register(processes: &TaskProcesses) -> Self {
        let mut running = running_tasks().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        running.insert(processes.process_group, processes.clone());
        RunningTask(processes.process_group)
    }
}

impl Drop for RunningTask {
    fn drop(&mut self) {
        running_tasks().lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.0);
    }
}

/// Sends `signal` to every process of every running task (group and
/// escaped descendants); returns how many processes it reached.
pub(crate) fn signal_every_task(signal: Signal) -> usize {
    let children = tokio_children().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    signal_tasks(&children, signal)
}

/// Ctrl-Z: SIGSTOP every process of every running task, tell how many
/// (`told`), then stop this process; returns once it is continued. No
/// harness starts in between: spawning waits for the lock held here.
pub(crate) fn stop_every_task_then_self(told: impl FnOnce(usize)) {
    let children = tokio_children().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let stopped = signal_tasks(&children, Signal::SIGSTOP);
    told(stopped);
    // To this thread, not `kill(getpid())`: a process-wide signal may be taken by another
    // thread, and this one would go on (and take the stop as over) before the stop holds.
    // Raised here, SIGSTOP stops every thread before `raise` returns, and `raise` returns
    // once something (`fg`, `bg`, `kill -CONT`) continues us.
    let _ = nix::sys::signal::raise(Signal::SIGSTOP);
    drop(children);
}

fn signal_tasks(children: &HashSet<u32>, signal: Signal) -> usize {
    let running = running_tasks().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut reached = running.values().map(|task| task.signal(signal)).sum();
    // A harness just spawned, not yet registered: its group is all it can have.
    for group in children.iter().filter(|group| !running.contains_key(group)) {
        if killpg(Pid::from_raw(*group as i32), signal).is_ok() {
            reached += 1;
        }
    }
    reached
}

/// SIGKILL every harness process group we are still waiting for: the
/// last resort of a third Ctrl-C.
pub(crate) fn kill_all_harnesses() {
    let groups = tokio_children().lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    for group in groups {
        let _ = killpg(Pid::from_raw(group as i32), Signal::SIGKILL);
    }
}

/// A process left of a run: what `recover` kills, or would kill.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct RunProcess {
    pub(crate) pid: u32,
    pub(crate) command: String,
}

/// The live processes of a run, found by their inherited `BENCHWARDEN_RUN_ID`.
pub(crate) fn run_processes(run_id: &str) -> Vec<RunProcess> {
    let run_entry = format!("{ENV_RUN_ID}={run_id}");
    let me = std::process::id();
    proc_stats()
        .into_iter()
        .filter(|stat| stat.pid != me && stat.state != 'Z')
        .filter(|stat| host::environment_has(stat.pid, &[&run_entry]))
        .filter_map(|stat| Some(RunProcess { pid: stat.pid, command: host::process_command_line(stat.pid)? }))
        .collect()
}

/// Kills every process left of a run whose supervisor is gone (found by
/// their inherited `BENCHWARDEN_RUN_ID`), so that nothing creates resources
/// while `recover` tears them down. Returns those killed.
pub(crate) async fn kill_orphaned_run(run_id: &str) -> Vec<RunProcess> {
    // Kill until none is found: a process caught between fork and exec, or
    // forked while we were killing its parent, shows up on a later look.
    let mut killed: Vec<RunProcess> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        reap_adopted();
        let found = run_processes(run_id);
        if found.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        for process in found {
            let _ = kill(Pid::from_raw(process.pid as i32), Signal::SIGKILL);
            if !killed.iter().any(|seen| seen.pid == process.pid) {
                killed.push(process);
            }
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
    killed
}
