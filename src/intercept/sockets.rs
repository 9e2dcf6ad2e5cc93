//! The directories the per-task Docker proxies keep their sockets in: each
//! named after its run (`<run id>.<random>`), under the state directory's
//! `sockets/` or, when that path is too long for a Unix socket, the temp
//! directory's `benchwarden-sockets/`; and finding those a `kill -9` left
//! behind, so `recover` and the pre-run sweep can remove them.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::ledger::RunRecord;

/// The socket's file name in its directory.
pub(crate) const SOCKET_NAME: &str = "docker.sock";

/// Longest socket path we bind: `sun_path` holds 108 bytes on Linux, fewer elsewhere.
const MAX_SOCKET_PATH: usize = 100;

/// Where socket directories go: the state directory's `sockets/` first, the
/// temp directory's `benchwarden-sockets/` for paths too long.
pub(crate) fn socket_roots(state_dir: &Path) -> [PathBuf; 2] {
    [state_dir.join("sockets"), std::env::temp_dir().join("benchwarden-sockets")]
}

/// A new 0700 directory for one socket of `run_id`, under the first root
/// where the socket's path fits.
pub(crate) fn private_directory(roots: &[PathBuf; 2], run_id: &str) -> std::io::Result<PathBuf> {
    let random: String = (0..10).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect();
    let name = format!("{run_id}.{random}");
    let fits = |root: &Path| root.join(&name).join(SOCKET_NAME).as_os_str().len() < MAX_SOCKET_PATH;
    let base = if fits(&roots[0]) { &roots[0] } else { &roots[1] };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(base)?;
    let directory = base.join(name);
    std::fs::DirBuilder::new().mode(0o700).create(&directory)?;
    Ok(directory)
}

/// The run a socket directory belongs to, read from its name; `None` for a
/// name this version does not make.
fn run_of(directory_name: &str) -> Option<&str> {
    let (run_id, random) = directory_name.rsplit_once('.')?;
    (!run_id.is_empty() && !random.is_empty()).then_some(run_id)
}

/// Whether `DOCKER_HOST`'s value names a proxy socket of run `run_id`
/// (`unix://…/<run id>.<random>/docker.sock`): inside a task, that is the
/// run's own engine, so a resource claimed through it needs no host of its own.
pub(crate) fn is_proxy_socket_of(docker_host: &str, run_id: &str) -> bool {
    let Some(path) = docker_host.strip_prefix("unix://") else { return false };
    let path = Path::new(path);
    let directory = path.parent().and_then(Path::file_name).and_then(|name| name.to_str());
    path.file_name().is_some_and(|name| name == SOCKET_NAME) && directory.and_then(run_of) == Some(run_id)
}

/// Whether a socket directory is stale: its run is known to the ledger and
/// gone (ended, or orphaned on this host); or the ledger does not know it
/// (another state directory's run shares the temp root, or a name this
/// version does not make) and nothing answers on its socket.
pub(crate) fn is_stale(
    directory_name: &str,
    runs: &[RunRecord],
    this_host: &str,
    socket_answers: impl FnOnce() -> bool,
) -> bool {
    let known = run_of(directory_name).and_then(|run_id| runs.iter().find(|run| run.id == run_id));
    match known {
        Some(run) => run.ended_at.is_some() || !run.is_alive(this_host),
        None => !socket_answers(),
    }
}

/// The stale socket directories under `roots`, by [`is_stale`].
pub(crate) fn stale_directories(roots: &[PathBuf; 2], runs: &[RunRecord], this_host: &str) -> Vec<PathBuf> {
    let mut stale = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() && is_stale(&name, runs, this_host, || answers(&path.join(SOCKET_NAME))) {
                stale.push(path);
            }
        }
    }
    stale
}

/// Whether something accepts connections on the socket at `path`.
fn answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Removes stale socket directories; returns those removed, and those that
/// could not be, with why.
pub(crate) fn remove_directories(directories: Vec<PathBuf>) -> (Vec<PathBuf>, Vec<(PathBuf, std::io::Error)>) {
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for directory in directories {
        match std::fs::remove_dir_all(&directory) {
            Ok(()) => removed.push(directory),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => failed.push((directory, error)),
        }
    }
    (removed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, pid: u32, ended: bool) -> RunRecord {
        RunRecord {
            id: id.into(),
            pid,
            start_time: None,
            host: "here".into(),
            benchmark: "b".into(),
            started_at: 0,
            ended_at: ended.then_some(1),
            outcome: None,
        }
    }

    #[test]
    fn a_directory_is_stale_when_its_run_is_gone_or_unknown_and_silent() {
        // No process has pid u32::MAX - 1; ours is alive.
        let (dead, alive) = (u32::MAX - 1, std::process::id());
        let runs = [run("r-ended", alive, true), run("r-dead", dead, false), run("r-live", alive, false)];
        let never_asked = || panic!("a run the ledger knows is judged by the ledger");
        assert!(is_stale("r-ended.abcdefghij", &runs, "here", never_asked));
        assert!(is_stale("r-dead.abcdefghij", &runs, "here", never_asked));
        assert!(!is_stale("r-live.abcdefghij", &runs, "here", never_asked));
        // Unknown runs and old random names: only when nothing listens.
        assert!(is_stale("r-other.abcdefghij", &runs, "here", || false));
        assert!(!is_stale("r-other.abcdefghij", &runs, "here", || true));
        assert!(is_stale("abcdefghij", &runs, "here", || false));
        assert!(!is_stale(".abcdefghij", &runs, "here", || true));
    }

    #[test]
    fn directories_are_named_after_their_run_and_fall_back_when_too_long() {
        let temp = std::env::temp_dir().join(format!("benchwarden-sockets-test-{}", std::process::id()));
        let long = temp.join("x".repeat(120));
        let roots = [long.clone(), temp.join("fallback")];
        let directory = private_directory(&roots, "20261130-1016-k3f9").unwrap();
        assert_eq!(directory.parent(), Some(roots[1].as_path()));
        let name = directory.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(run_of(&name), Some("20261130-1016-k3f9"));
        std::fs::remove_dir_all(&temp).unwrap();
    }

    #[test]
    fn a_tasks_proxy_socket_is_told_from_another_docker_host() {
        let run = "20261129-2304-k3f9";
        assert!(is_proxy_socket_of(&format!("unix:///s/sockets/{run}.ab12cd34ef/docker.sock"), run));
        assert!(!is_proxy_socket_of(&format!("unix:///s/sockets/{run}.ab12cd34ef/docker.sock"), "20261129-2304-zzzz"));
        assert!(!is_proxy_socket_of("unix:///var/run/docker.sock", run));
        assert!(!is_proxy_socket_of(&format!("tcp://{run}.x:2375"), run));
        assert!(!is_proxy_socket_of(&format!("unix:///s/{run}.ab/other.sock"), run));
    }
}
