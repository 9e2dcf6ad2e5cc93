//! Locks in the state directory that one process holds at a time on this
//! host (`flock`, so a crashed holder's lock is gone with it), each saying
//! who holds it, so that the process turned away can tell the user whom to
//! stop.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::clock::now_unix;
use crate::errors::Error;
use crate::host;

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: Flock<File>,
}

impl StateLock {
    /// Takes `<state_dir>/<name>.lock` for `purpose` (e.g. "sweep"), or
    /// says who holds it: a usage-class error, since only the user can
    /// decide which of the two should go.
    pub(crate) fn acquire(state_dir: &Path, name: &str, purpose: &str) -> Result<Self, Error> {
        let path = state_dir.join(format!("{name}.lock"));
        let io_error = |what, source| Error::Io { what, path: path.clone(), source };
        std::fs::create_dir_all(state_dir).map_err(|source| io_error("create the directory of", source))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| io_error("open", source))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                write_holder(&mut locked, purpose).map_err(|source| io_error("write", source))?;
                Ok(StateLock { _file: locked })
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                Err(Error::usage(held_message(&path, purpose, &read_holder(&mut file))))
            }
            Err((_, errno)) => Err(io_error("lock", std::io::Error::from(errno))),
        }
    }
}

/// `pid <pid> on <host> since <unix seconds>`, replacing what a former holder wrote.
fn write_holder(file: &mut File, purpose: &str) -> std::io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{purpose}: pid {} on {} since {}", std::process::id(), host::host_name(), now_unix())?;
    file.flush()
}

fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text.trim().to_string()
}

fn held_message(path: &Path, purpose: &str, holder: &str) -> String {
    let holder = if holder.is_empty() { "another process".to_string() } else { holder.to_string() };
    format!(
        "another {purpose} is running ({holder}; lock {}): only one runs at a time on a host; \
         stop that one first, or wait for it",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_turned_away_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path(), "sweep", "sweep").unwrap();
        let error = StateLock::acquire(dir.path(), "sweep", "sweep").unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        assert_eq!(error.exit_status(), crate::errors::ExitStatus::Usage);
        drop(first);
        StateLock::acquire(dir.path(), "sweep", "sweep").expect("free again once the first let go");
    }
}
