//! Who owns a resource, and whether that owner is still alive: this host's
//! name, process liveness (pid plus start time, so a reused pid is not
//! mistaken for the run that died), and the owner labels.

use std::collections::BTreeMap;

use crate::backend::{LABEL_HOST, LABEL_PID, LABEL_RUN, LABEL_TASK};

/// This machine's host name, as stamped in `benchwarden.host`.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// What `/proc/<pid>/stat` says of a process, as far as we need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStat {
    pub pid: u32,
    /// `R`, `S`, `D`, `Z` (zombie), ...
    pub state: char,
    pub parent: u32,
    pub group: u32,
    /// Clock ticks since boot (field 22).
    pub start_time: u64,
}

impl ProcessStat {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub fn process_stat(pid: u32) -> Option<ProcessStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; count after it.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    let start_time = fields.nth(16)?.parse().ok()?;
    Some(ProcessStat { pid, state, parent, group, start_time })
}

/// Every process on the machine, as far as `/proc` lets us see.
pub fn all_processes() -> Vec<ProcessStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()).filter_map(process_stat).collect()
}

/// The start time of a process in clock ticks since boot, or `None` when
/// there is no such process.
pub fn process_start_time(pid: u32) -> Option<u64> {
    process_stat(pid).map(|stat| stat.start_time)
}

/// Whether the process `pid` exists and is the one that started at
/// `start_time` (not a later process that reused the pid). Zombies count as
/// gone: they can no longer tear anything down.
pub fn process_is_alive(pid: u32, start_time: Option<u64>) -> bool {
    match process_stat(pid) {
        Some(stat) if !stat.is_zombie() => start_time.is_none_or(|expected| stat.start_time == expected),
        _ => false,
    }
}

/// The owner labels for a resource that `task` of `run` creates.
pub fn owner_labels(run_id: &str, task_id: &str, host: &str, pid: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_RUN.to_string(), run_id.to_string()),
        (LABEL_TASK.to_string(), task_id.to_string()),
        (LABEL_HOST.to_string(), host.to_string()),
        (LABEL_PID.to_string(), pid.to_string()),
    ])
}

/// The owner named by a resource's labels, if it carries benchwarden's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledOwner {
    pub run_id: String,
    pub task_id: Option<String>,
    pub host: Option<String>,
    pub pid: Option<u32>,
}

impl LabelledOwner {
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        Some(LabelledOwner {
            run_id: labels.get(LABEL_RUN)?.clone(),
            task_id: labels.get(LABEL_TASK).cloned(),
            host: labels.get(LABEL_HOST).cloned(),
            pid: labels.get(LABEL_PID).and_then(|pid| pid.parse().ok()),
        })
    }

    /// The owner as list tables show it: `run/task`, or `-` for a resource no run labelled.
    pub fn column(labels: &BTreeMap<String, String>) -> String {
        match Self::from_labels(labels) {
            Some(owner) => format!("{}/{}", owner.run_id, owner.task_id.as_deref().unwrap_or("?")),
            None => "-".to_string(),
        }
    }

    /// Whether the run that owns this resource may still be alive, judged
    /// from labels alone: same host and its pid runs a benchwarden. Another
    /// host's run cannot be judged from here, so it counts as alive.
    pub fn may_be_alive(&self, this_host: &str) -> bool {
        match (&self.host, self.pid) {
            (Some(host), Some(pid)) if host == this_host => {
                process_is_alive(pid, None) && process_name(pid).is_some_and(|name| name.starts_with("benchwarden"))
            }
            (Some(host), _) if host != this_host => true,
            // Labelled by a run, but without a pid: treat as ours and dead only if the host matches.
            _ => false,
        }
    }
}

fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|name| name.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_with_its_own_start_time() {
        let pid = std::process::id();
        let start = process_start_time(pid).unwrap();
        assert!(process_is_alive(pid, Some(start)));
        assert!(!process_is_alive(pid, Some(start + 1)));
    }

    #[test]
    fn start_times_tell_processes_apart() {
        let me = process_stat(std::process::id()).unwrap();
        let init = process_stat(1).unwrap();
        // Field 22: non-zero for a process started after boot, and later than init's.
        assert!(me.start_time > 0 && me.start_time >= init.start_time, "{me:?} vs {init:?}");
        assert_eq!(me.parent, nix::unistd::getppid().as_raw() as u32);
        assert_eq!(me.group, nix::unistd::getpgrp().as_raw() as u32);
    }

    #[test]
    fn a_pid_that_does_not_exist_is_dead() {
        assert!(!process_is_alive(u32::MAX - 1, None));
        assert_eq!(process_start_time(u32::MAX - 1), None);
    }
}
