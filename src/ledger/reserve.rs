//! The ledger's reserve: a file of allocated blocks beside the ledger, given
//! back when the disk fills, so that the rows written after that (what the
//! tasks create) still reach the ledger. The harness logs share the state
//! directory's disk and are what most often fills it.
//!
//! A run makes sure of the reserve before any task starts; a state
//! directory that cannot hold it (read-only, or full) stops the run there.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::errors::Error;

/// Room for tens of thousands of resource rows and the WAL frames that carry them.
pub(crate) const RESERVE_BYTES: u64 = 8 << 20;

/// The reserve's file in `state_dir`.
pub(crate) fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join("ledger.reserve")
}

/// Makes sure the reserve is in `state_dir`, allocating it when it is not
/// (a run after a full disk allocates it again). An error names the
/// directory and why it cannot be written.
pub(crate) fn ensure(state_dir: &Path) -> Result<(), Error> {
    let path = path_in(state_dir);
    let unwritable = |error: std::io::Error| Error::StateDir { path: state_dir.to_path_buf(), why: describe(&error) };
    std::fs::create_dir_all(state_dir).map_err(unwritable)?;
    if std::fs::metadata(&path).is_ok_and(|metadata| metadata.len() >= RESERVE_BYTES) {
        // Still writable? A reserve made before the disk went read-only says nothing.
        return probe(state_dir).map_err(unwritable);
    }
    allocate(&path).map_err(|error| {
        let _ = std::fs::remove_file(&path);
        unwritable(error)
    })
}

/// Gives the reserve back; whether there was one to give.
pub(crate) fn release(state_dir: &Path) -> bool {
    std::fs::remove_file(path_in(state_dir)).is_ok()
}

/// Real blocks, not a sparse file: `posix_fallocate`, or zeros written
/// where the file system cannot allocate.
fn allocate(path: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
    let length = i64::try_from(RESERVE_BYTES).unwrap_or(i64::MAX);
    match nix::fcntl::posix_fallocate(&file, 0, length) {
        Ok(()) => {}
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => {
            let zeros = vec![0u8; 1 << 20];
            let mut file = &file;
            for _ in 0..RESERVE_BYTES / zeros.len() as u64 {
                file.write_all(&zeros)?;
            }
        }
        Err(errno) => return Err(std::io::Error::from(errno)),
    }
    file.sync_all()
}

/// Creates and removes a file, to learn whether the directory takes writes.
fn probe(state_dir: &Path) -> std::io::Result<()> {
    let path = state_dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&path, b"probe")?;
    std::fs::remove_file(&path)
}

fn describe(error: &std::io::Error) -> String {
    match error.raw_os_error().map(nix::errno::Errno::from_raw) {
        Some(nix::errno::Errno::ENOSPC) => {
            format!("has no room for the ledger's reserve of {} MiB (the disk is full)", RESERVE_BYTES >> 20)
        }
        Some(nix::errno::Errno::EROFS) => "is on a read-only file system".to_string(),
        Some(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM) => {
            format!("cannot be written by this user ({error})")
        }
        _ => format!("cannot be written: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_allocated_once_and_given_back() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path()).unwrap();
        let metadata = std::fs::metadata(path_in(dir.path())).unwrap();
        assert_eq!(metadata.len(), RESERVE_BYTES);
        // Allocated blocks, not a hole: st_blocks counts 512-byte units.
        use std::os::unix::fs::MetadataExt;
        assert!(metadata.blocks() * 512 >= RESERVE_BYTES, "a sparse reserve holds no room");
        ensure(dir.path()).unwrap();
        assert!(release(dir.path()));
        assert!(!release(dir.path()), "released twice");
        ensure(dir.path()).unwrap();
        assert!(path_in(dir.path()).exists(), "a later run makes it again");
    }

    #[test]
    fn errors_say_what_is_wrong_with_the_directory() {
        let full = describe(&std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
        assert!(full.contains("no room") && full.contains("8 MiB"), "{full}");
        let read_only = describe(&std::io::Error::from_raw_os_error(nix::libc::EROFS));
        assert_eq!(read_only, "is on a read-only file system");
    }
}
