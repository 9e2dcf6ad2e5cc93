//! This machine as benchwarden sees it: its host name (stamped in
//! `benchwarden.host`) and its processes, read from `/proc`: state, parent,
//! group, start time (so a reused pid is never mistaken for the process that
//! died), name and inherited environment.

/// This machine's host name, as stamped in `benchwarden.host`.
pub(crate) fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// What `/proc/<pid>/stat` says of a process, as far as we need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessStat {
    pub(crate) pid: u32,
    /// `R`, `S`, `D`, `Z` (zombie), ...
    pub(crate) state: char,
    pub(crate) parent: u32,
    pub(crate) group: u32,
    /// Clock ticks since boot (field 22).
    pub(crate) start_time: u64,
}

impl ProcessStat {
    pub(crate) fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub(crate) fn process_stat(pid: u32) -> Option<ProcessStat> {
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
pub(crate) fn all_processes() -> Vec<ProcessStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()).filter_map(process_stat).collect()
}

/// The start time of a process in clock ticks since boot, or `None` when
/// there is no such process.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    process_stat(pid).map(|stat| stat.start_time)
}

/// Whether the process `pid` exists and is the one that started at
/// `start_time` (not a later process that reused the pid). Zombies count as
/// gone: they can no longer tear anything down.
pub(crate) fn process_is_alive(pid: u32, start_time: Option<u64>) -> bool {
    match process_stat(pid) {
        Some(stat) if !stat.is_zombie() => start_time.is_none_or(|expected| stat.start_time == expected),
        _ => false,
    }
}

/// The command name of a process (`/proc/<pid>/comm`).
pub(crate) fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|name| name.trim().to_string())
}

/// A process's command line (`/proc/<pid>/cmdline`, arguments joined by
/// spaces), or its name in brackets when it has none (kernel threads,
/// zombies); `None` once it is gone.
pub(crate) fn process_command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|byte| *byte == 0)
        .filter(|word| !word.is_empty())
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect();
    match words.is_empty() {
        true => process_name(pid).map(|name| format!("[{name}]")),
        false => Some(words.join(" ")),
    }
}

/// Whether a process's environment holds every one of `entries`
/// (`NAME=value`): how a task's descendants are known after they leave its
/// process group, since the environment is inherited across `setsid`.
pub(crate) fn environment_has(pid: u32, entries: &[&str]) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let present: Vec<&[u8]> = environ.split(|byte| *byte == 0).collect();
    entries.iter().all(|entry| present.contains(&entry.as_bytes()))
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
    fn the_command_line_is_read_back_as_words() {
        let line = process_command_line(std::process::id()).unwrap();
        let program = std::env::args().next().unwrap();
        assert!(line.starts_with(&program), "{line:?} should start with {program:?}");
        assert_eq!(process_command_line(u32::MAX - 1), None);
    }

    #[test]
    fn a_pid_that_does_not_exist_is_dead() {
        assert!(!process_is_alive(u32::MAX - 1, None));
        assert_eq!(process_start_time(u32::MAX - 1), None);
    }
}
