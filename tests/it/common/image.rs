//! The engine connection and the test image. Tests talk to the real Docker
//! engine of the machine (no mocks, no registry): [`connect`] panics with a
//! clear message when it cannot be reached (nothing here skips silently),
//! and [`test_image`] makes sure the tiny image `benchwarden-test:busybox`
//! exists: a static busybox and its applet links, imported through the
//! Engine API once per test process (and safely when several processes
//! import it at the same time).

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use futures_util::StreamExt;

/// The image every test container runs.
const TEST_IMAGE: &str = "benchwarden-test:busybox";
/// The static busybox the image is made of; `BENCHWARDEN_TEST_BUSYBOX` overrides.
const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// The address tests talk to, as bollard resolves it.
fn docker_address() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

/// The engine's Unix socket (tests that proxy it need a unix `DOCKER_HOST`).
pub(super) fn docker_socket() -> PathBuf {
    let address = docker_address();
    let path =
        address.strip_prefix("unix://").unwrap_or_else(|| panic!("a unix DOCKER_HOST is needed here: {address}"));
    PathBuf::from(path)
}

/// Connects to the engine (honouring `DOCKER_HOST`) and negotiates the API
/// version. Panics with a clear message when the engine cannot be reached:
/// these tests need it and must not pass without it.
pub async fn connect() -> Docker {
    try_connect().await.unwrap_or_else(|reason| {
        panic!(
            "the integration tests need a running Docker engine, and none answers at {}: {reason}\n\
             start the daemon (or point DOCKER_HOST at one); these tests never skip",
            docker_address()
        )
    })
}

pub(super) async fn try_connect() -> Result<Docker, String> {
    let docker = Docker::connect_with_defaults().map_err(|error| error.to_string())?;
    match tokio::time::timeout(Duration::from_secs(15), docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(error)) => Err(error_chain(&error)),
        Err(_) => Err("no answer within 15s".to_string()),
    }
}

/// Runs `make` (which builds a future) to completion on a fresh
/// current-thread runtime in a thread of its own, so it works from sync code
/// and from inside a test's runtime alike.
pub(super) fn on_own_runtime<T, F, Fut>(make: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let worker = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a tokio runtime for test support")
            .block_on(make())
    });
    match worker.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Makes sure `benchwarden-test:busybox` exists and returns its name. The
/// image is imported at most once per test process; a lock file in Cargo's
/// target tmp dir keeps several processes (two test runs at once, or a
/// runner with a process per test) from importing it at the same time.
pub fn test_image() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| on_own_runtime(ensure_test_image));
    TEST_IMAGE
}

async fn ensure_test_image() {
    let docker = connect().await;
    if docker.inspect_image(TEST_IMAGE).await.is_ok() {
        return;
    }
    let lock_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("benchwarden-test-image.lock");
    let lock_file = File::create(&lock_path).unwrap_or_else(|error| panic!("create {}: {error}", lock_path.display()));
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, errno)| panic!("lock {}: {errno}", lock_path.display()));
    // Another process may have imported it while we waited for the lock.
    if docker.inspect_image(TEST_IMAGE).await.is_ok() {
        return;
    }
    let busybox = busybox_path();
    let root_fs = rootfs_tar(&busybox);
    let (repo, tag) = TEST_IMAGE.split_once(':').expect("image name has a tag");
    let options = CreateImageOptions {
        from_src: Some("-".to_string()),
        repo: Some(repo.to_string()),
        tag: Some(tag.to_string()),
        changes: vec!["CMD [\"/bin/sh\"]".to_string()],
        ..Default::default()
    };
    let mut progress = docker.create_image(Some(options), Some(bollard::body_full(root_fs.into())), None);
    while let Some(message) = progress.next().await {
        if let Err(error) = message {
            panic!("import {TEST_IMAGE} from {} through the Engine API: {}", busybox.display(), error_chain(&error));
        }
    }
    docker
        .inspect_image(TEST_IMAGE)
        .await
        .unwrap_or_else(|error| panic!("{TEST_IMAGE} is missing right after its import: {}", error_chain(&error)));
}

pub fn busybox_path() -> PathBuf {
    std::env::var_os("BENCHWARDEN_TEST_BUSYBOX")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BUSYBOX))
}

/// The root file system of the test image, as an uncompressed tar: busybox
/// in /bin with one symlink per applet, and the usual empty directories.
fn rootfs_tar(busybox: &Path) -> Vec<u8> {
    let binary = std::fs::read(busybox).unwrap_or_else(|error| {
        panic!(
            "read {}: {error}\nthe test image is made of a static busybox; on Debian or Ubuntu: \
             apt-get install -y busybox-static (or set BENCHWARDEN_TEST_BUSYBOX)",
            busybox.display()
        )
    });
    if elf_is_dynamic(&binary) {
        panic!(
            "{} is dynamically linked, so it cannot run in an image with no libc; \
             install busybox-static (apt-get install -y busybox-static) or set \
             BENCHWARDEN_TEST_BUSYBOX to a static busybox",
            busybox.display()
        );
    }
    let mut builder = tar::Builder::new(Vec::new());
    let directory = |builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(mode);
        header.set_size(0);
        header.set_mtime(0);
        builder.append_data(&mut header, path, std::io::empty()).expect("append a directory to the image tar");
    };
    for path in ["bin", "etc", "root", "usr", "usr/bin", "var"] {
        directory(&mut builder, path, 0o755);
    }
    directory(&mut builder, "tmp", 0o1777);

    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o755);
    header.set_size(binary.len() as u64);
    header.set_mtime(0);
    builder.append_data(&mut header, "bin/busybox", binary.as_slice()).expect("append busybox to the image tar");

    for applet in busybox_applets(busybox) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        header.set_mtime(0);
        builder
            .append_link(&mut header, format!("bin/{applet}"), "busybox")
            .expect("append an applet link to the image tar");
    }
    builder.into_inner().expect("finish the image tar")
}

/// The applets this busybox has (`busybox --list`), or a basic set when it
/// cannot tell.
fn busybox_applets(busybox: &Path) -> Vec<String> {
    let listed = Command::new(busybox)
        .arg("--list")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    let mut applets: BTreeSet<String> = listed
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.contains('/') && *name != "busybox")
        .map(str::to_string)
        .collect();
    if applets.is_empty() {
        for name in [
            "sh", "sleep", "echo", "true", "false", "cat", "ls", "env", "kill", "ps", "rm", "mkdir", "touch", "test",
            "[", "wc", "grep", "sed", "head", "tail", "trap", "printf", "date", "id", "hostname", "uname", "wget",
            "nc",
        ] {
            applets.insert(name.to_string());
        }
    }
    applets.into_iter().collect()
}

/// Whether an ELF executable asks for a program interpreter (a dynamic
/// loader), i.e. whether it needs a libc in the image. Little-endian 32- and
/// 64-bit ELF are read; anything else is assumed static.
pub fn elf_is_dynamic(binary: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if binary.len() < 0x40 || &binary[..4] != b"\x7fELF" || binary[5] != 1 {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([binary[at], binary[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(binary[at..at + 4].try_into().unwrap());
    let (phoff, phentsize, phnum) = match binary[4] {
        1 => (u32_at(0x1c) as usize, u16_at(0x2a), u16_at(0x2c)),
        2 => {
            let phoff = u64::from_le_bytes(binary[0x20..0x28].try_into().unwrap()) as usize;
            (phoff, u16_at(0x36), u16_at(0x38))
        }
        _ => return false,
    };
    (0..phnum)
        .map(|index| phoff + index * phentsize)
        .take_while(|at| at + 4 <= binary.len())
        .any(|at| u32_at(at) == PT_INTERP)
}

/// An error and its causes on one line: the crate's own formatting.
pub(super) use benchwarden::errors::error_chain;
