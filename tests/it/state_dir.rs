//! The state directory's disk read-only, full before a run, and filling
//! while a run goes on, each on a real tmpfs of its own. A run that cannot
//! write its ledger stops before any task starts; a disk that fills while
//! tasks create resources loses no ledger row (the reserve is given back),
//! so a `kill -9` then still leaves `recover` everything to remove.
//!
//! Mounting needs root (CAP_SYS_ADMIN), as `.ci/run` has; these tests fail
//! with that said rather than skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::Signal;

use crate::common::{benchwarden_command_in, run_cli, CliOutput, Running, TestScope};
use crate::harnesses::run_processes;
use crate::run::{fixture, path};

/// A tmpfs of `size` mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(scope: &TestScope, size: &str) -> Tmpfs {
        let dir = scope.state_dir().join("tmpfs");
        std::fs::create_dir_all(&dir).unwrap();
        mount(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.to_str().unwrap()]);
        Tmpfs { dir }
    }

    fn read_only(&self) {
        mount(&["-o", "remount,ro", self.dir.to_str().unwrap()]);
    }

    /// Writes until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.dir.join("filler")).unwrap();
        let block = vec![b'x'; 1 << 16];
        while file.write_all(&block).is_ok() {}
        let free = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        assert_eq!(free.blocks_available(), 0, "the tmpfs is not full");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn mount(args: &[&str]) {
    let output = Command::new("mount").args(args).output().expect("run mount");
    assert!(
        output.status.success(),
        "mount {args:?}: {} (these tests need root to mount a tmpfs; they do not skip)",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A run of one task that would leave a marker and a container, with its
/// state directory on `disk`: refused before the task starts.
async fn refused_before_any_task(scope: &TestScope, disk: &Tmpfs, says: &str) {
    let marker = scope.state_dir().join("task-started");
    let body = format!("touch {}\nstart_container", marker.display());
    let fixture = fixture(scope, &[("would-start", &body)], "");
    let mut command = benchwarden_command_in(&disk.dir);
    command.args(["run", path(&fixture)]);
    let output = run_cli(command).await;
    output.assert_code(2);
    let error = output.stderr.lines().find(|line| line.starts_with("error: ")).unwrap_or_else(|| panic!("{output}"));
    assert!(error.contains(disk.dir.to_str().unwrap()) && error.contains(says), "{output}");
    assert!(output.stderr.contains("--state-dir"), "no way out is named\n{output}");
    assert!(!marker.exists(), "the task started\n{output}");
    assert!(scope.leftovers().await.is_empty(), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_state_directory_stops_the_run_before_any_task_starts() {
    let scope = TestScope::new("state-read-only").await;
    let disk = Tmpfs::mount(&scope, "16m");
    disk.read_only();
    refused_before_any_task(&scope, &disk, "read-only file system").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_directory_stops_the_run_before_any_task_starts() {
    let scope = TestScope::new("state-full").await;
    let disk = Tmpfs::mount(&scope, "16m");
    disk.fill();
    refused_before_any_task(&scope, &disk, "no room").await;
}

/// The ledger's rows of `run_id`'s containers, read straight from the file.
fn recorded_containers(state_dir: &Path) -> (String, Vec<String>) {
    let ledger = rusqlite::Connection::open(state_dir.join("ledger.sqlite")).unwrap();
    let run_id: String = ledger.query_row("SELECT id FROM runs", [], |row| row.get(0)).unwrap();
    let mut statement =
        ledger.prepare("SELECT id FROM resources WHERE run_id = ?1 AND kind = 'container' ORDER BY id").unwrap();
    let ids = statement.query_map([&run_id], |row| row.get(0)).unwrap().map(Result::unwrap).collect();
    (run_id, ids)
}

/// The harness floods its log until the state directory's disk is full, then
/// creates two containers; benchwarden is killed (-9) once they exist. Both
/// are in the ledger (written after the disk filled), and `recover`, once
/// space is freed, removes them and the harness left running.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_that_fills_during_a_run_loses_no_ledger_row() {
    let scope = TestScope::new("state-fills").await;
    let disk = Tmpfs::mount(&scope, "24m");
    // 32 MB of lines: more than the disk holds once the ledger's reserve is made.
    let body = "yes 'flooding the log until the disk is full' | head -c 32000000\n\
                start_container\nstart_container\necho created-both >&2\nsleep 3600";
    let fixture = fixture(&scope, &[("floods", body)], "");
    let mut command = benchwarden_command_in(&disk.dir);
    command.args(["run", path(&fixture), "-j", "1"]);
    let mut running = Running::start(command);
    running.wait_for("created-both").await;
    running.send(Signal::SIGKILL);
    let output: CliOutput = running.finish().await;
    assert!(output.stderr.contains("gave back its reserve"), "the full disk was not told\n{output}");
    assert!(!output.stderr.contains("cannot record"), "a ledger row was lost\n{output}");

    let on_engine = scope.leftovers().await.container_ids();
    assert_eq!(on_engine.len(), 2, "{output}");
    let (run_id, recorded) = recorded_containers(&disk.dir);
    assert_eq!(recorded.into_iter().collect::<std::collections::BTreeSet<_>>(), on_engine, "{output}");

    std::fs::remove_dir_all(disk.dir.join("runs")).unwrap();
    let mut recover = benchwarden_command_in(&disk.dir);
    recover.arg("recover");
    let recovered = run_cli(recover).await;
    recovered.assert_code(0);
    assert!(scope.leftovers().await.is_empty(), "{recovered}");
    assert_eq!(run_processes(&run_id), Vec::<String>::new(), "{recovered}");
}
