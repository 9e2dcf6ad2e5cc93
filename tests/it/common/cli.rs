//! Running programs from tests: the `benchwarden` binary with a state
//! directory of its own (so runs never touch the user's ledger), what one
//! invocation did ([`CliOutput`]), a running one whose stderr a test can wait
//! on ([`Running`]), and the docker CLI for doing things behind
//! benchwarden's back.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// How long one CLI invocation may take before the test fails.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// The `benchwarden` binary with `--state-dir` set to a fresh directory
/// under Cargo's target tmp dir (so runs never touch the user's ledger), and
/// `NO_COLOR=1`. Add the subcommand and its arguments.
pub fn benchwarden_command() -> Command {
    let state_dir = tempfile::Builder::new()
        .prefix("state-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a state directory for benchwarden")
        .keep();
    benchwarden_command_in(&state_dir)
}

/// The `benchwarden` binary with `--state-dir DIR` and `NO_COLOR=1`.
pub fn benchwarden_command_in(state_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_benchwarden"));
    command
        .arg("--state-dir")
        .arg(state_dir)
        .env("NO_COLOR", "1")
        .env_remove("BENCHWARDEN_STATE_DIR")
        .stdin(Stdio::null());
    command
}

/// What one CLI invocation did.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Panics, showing stdout and stderr, unless the exit code is `expected`.
    #[track_caller]
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(self.status.code(), Some(expected), "unexpected exit status\n{self}");
        self
    }

    /// stdout parsed as one JSON value; panics, showing the output, otherwise.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not one JSON value: {error}\n{self}"))
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs a prepared command to completion (with a time limit) without blocking
/// the test's runtime.
pub async fn run_cli(command: Command) -> CliOutput {
    run_cli_within(command, CLI_TIMEOUT).await
}

/// [`run_cli`] with its own time limit (real harnesses start slowly).
pub async fn run_cli_within(command: Command, limit: Duration) -> CliOutput {
    let description = format!("{command:?}");
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{description} took longer than {limit:?}"))
        .unwrap_or_else(|error| panic!("start {description}: {error}"));
    CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Collects a spawned child (see [`TestScope::cli_spawn`]).
pub async fn wait_cli(child: tokio::process::Child) -> CliOutput {
    let output = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("benchwarden took longer than {CLI_TIMEOUT:?}"))
        .expect("wait for benchwarden");
    CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the docker CLI (for doing things "behind benchwarden's back");
/// panics with its output when it fails.
pub fn docker_cli(args: &[&str]) -> String {
    let output =
        Command::new("docker").args(args).output().unwrap_or_else(|error| panic!("run docker {args:?}: {error}"));
    assert!(output.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A running `benchwarden` whose stderr is read line by line, so a test
/// can wait for what it says (its log lines, and with `-j 1` the harness's
/// echoed output).
pub struct Running {
    pub child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: String,
}

impl Running {
    pub fn start(command: std::process::Command) -> Self {
        let mut command = tokio::process::Command::from(command);
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().expect("start benchwarden");
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = sender.send(line);
            }
        });
        Running { child, lines, seen: String::new() }
    }

    /// Waits until a line of stderr contains `text`; returns that line.
    pub async fn wait_for(&mut self, text: &str) -> String {
        match self.line_containing(text).await {
            Some(line) => line,
            None => panic!("benchwarden never said {text:?}:\n{}", self.seen),
        }
    }

    /// Waits until a line of stderr contains `text` (that line), or until
    /// stderr ends without one (`None`: benchwarden exited first); panics
    /// after 90 s of neither.
    pub async fn line_containing(&mut self, text: &str) -> Option<String> {
        let found = tokio::time::timeout(Duration::from_secs(90), async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push_str(&line);
                self.seen.push('\n');
                if line.contains(text) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        found.unwrap_or_else(|_| panic!("benchwarden said neither {text:?} nor ended within 90 s:\n{}", self.seen))
    }

    /// Starts `command` in a process group of its own, as a shell starts a
    /// foreground job, so that [`Running::press`] reaches it the way a
    /// terminal's Ctrl-C does. As such a shell does, it gives the job the
    /// default SIGINT: the tests may run under a shell's background job,
    /// which ignores SIGINT, and an ignored disposition outlives `exec`.
    pub fn start_as_job(mut command: std::process::Command) -> Self {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        // SAFETY: between fork and exec only sigaction runs, which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, nix::sys::signal::SigHandler::SigDfl)
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
        Running::start(command)
    }

    /// Sends `signal` to the job's process group, as the terminal sends
    /// Ctrl-C to the foreground group: benchwarden gets it, its harnesses
    /// (each in a group of their own) do not. A job that has ended is no error.
    pub fn press(&self, signal: nix::sys::signal::Signal) {
        let group = nix::unistd::Pid::from_raw(self.pid() as i32);
        match nix::sys::signal::killpg(group, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(error) => panic!("send {signal} to process group {group}: {error}"),
        }
    }

    /// Waits for a run's first line, `run <id>: N task(s) of ...`; returns the id.
    pub async fn run_id(&mut self) -> String {
        let line = self.wait_for(" task(s) of ").await;
        let id = line.split(" run ").nth(1).and_then(|rest| rest.split(':').next());
        id.unwrap_or_else(|| panic!("no run id in {line:?}")).trim().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("benchwarden is running")
    }

    pub fn send(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    pub async fn finish(mut self) -> CliOutput {
        let mut output = wait_cli(self.child).await;
        while let Some(line) = self.lines.recv().await {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        output.stderr = self.seen + &output.stderr;
        output
    }
}
