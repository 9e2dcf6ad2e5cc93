//! One test's Daytona organisation: a contract server (the workspace crate
//! `daytona-contract`) on 127.0.0.1 with a key of its own, a state
//! directory, and every output of every command run against it (to look
//! for the key in); and the owner labels of runs, dead or on other hosts.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use daytona_contract::{ContractConfig, ContractServer, SeedSandbox};
use tempfile::TempDir;

use super::{benchwarden_command_in, run_cli, wait_cli, CliOutput};

/// A run id no ledger knows and no process owns: a dead run of this host.
pub const DEAD_RUN: &str = "20200101-0000-dead";
pub const OTHER_HOST: &str = "some-other-machine.example";
pub const DELETE: &str = "DELETE /api/sandbox/{idOrName}";
pub const LIST: &str = "GET /api/sandbox";

pub fn this_host() -> String {
    nix::unistd::gethostname().expect("host name").into_string().expect("a UTF-8 host name")
}

/// The owner labels benchwarden puts on a sandbox of `run` on `host`.
pub fn owner(run: &str, host: &str) -> Vec<(String, String)> {
    vec![
        ("benchwarden.run".to_string(), run.to_string()),
        ("benchwarden.task".to_string(), "t".to_string()),
        ("benchwarden.host".to_string(), host.to_string()),
    ]
}

pub fn seed_with(labels: &[(String, String)]) -> SeedSandbox {
    SeedSandbox { labels: labels.iter().cloned().collect(), ..SeedSandbox::default() }
}

/// One test's Daytona organisation: a contract server with a key of its own,
/// a state directory, and every output of every command it ran (to look for
/// the key in).
pub struct Org {
    pub server: ContractServer,
    state: TempDir,
    pub key: String,
    pub outputs: Mutex<Vec<String>>,
}

impl Org {
    pub async fn start(config: ContractConfig) -> Org {
        // Distinctive, so a search for it cannot match anything else.
        let key = format!("bw-secret-{:016x}", fastrand::u64(..));
        let server = ContractServer::start(ContractConfig { api_key: key.clone(), ..config }).await;
        let state = tempfile::Builder::new()
            .prefix("state-daytona-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("create a state directory");
        Org { server, state, key, outputs: Mutex::new(Vec::new()) }
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// `benchwarden --state-dir STATE ARGS` with this server's URL and key
    /// as the only `DAYTONA_*` variables.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        self.command_with_key(args, Some(&self.key))
    }

    pub fn command_with_key(&self, args: &[&str], key: Option<&str>) -> std::process::Command {
        let mut command = benchwarden_command_in(self.state_dir());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("DAYTONA_") {
                command.env_remove(name);
            }
        }
        command.env("DAYTONA_API_URL", self.server.api_url());
        if let Some(key) = key {
            command.env("DAYTONA_API_KEY", key);
        }
        command.args(args);
        command
    }

    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        self.keep(run_cli(self.command(args)).await)
    }

    pub async fn cli_with_key(&self, args: &[&str], key: Option<&str>) -> CliOutput {
        self.keep(run_cli(self.command_with_key(args, key)).await)
    }

    /// Starts `benchwarden ARGS` with piped output; collect it with [`Org::wait`].
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        let mut command = tokio::process::Command::from(self.command(args));
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        command.spawn().expect("start benchwarden")
    }

    pub async fn wait(&self, child: tokio::process::Child) -> CliOutput {
        self.keep(wait_cli(child).await)
    }

    /// Like [`Org::cli`], for a command that may take up to `limit`.
    pub async fn cli_within(&self, limit: Duration, args: &[&str]) -> CliOutput {
        let child = self.spawn(args);
        let output = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("benchwarden {args:?} took longer than {limit:?}"))
            .expect("wait for benchwarden");
        self.keep(CliOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Waits until the server has seen `count` requests on `route`.
    pub async fn wait_for_requests(&self, route: &str, count: usize) {
        let started = Instant::now();
        while self.server.requests().iter().filter(|request| request.route == route).count() < count {
            assert!(started.elapsed() < Duration::from_secs(30), "no {route} reached the server");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn keep(&self, output: CliOutput) -> CliOutput {
        self.outputs.lock().unwrap().push(format!("{}\n{}", output.stdout, output.stderr));
        output
    }

    pub fn seed(&self, sandbox: SeedSandbox) -> String {
        self.server.seed(sandbox)
    }

    /// `n` started sandboxes of a dead run of this host.
    pub fn seed_ours(&self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.seed(seed_with(&owner(DEAD_RUN, &this_host())))).collect()
    }

    pub fn left(&self) -> BTreeSet<String> {
        self.server.sandboxes().iter().map(|sandbox| sandbox["id"].as_str().unwrap().to_string()).collect()
    }
}

#[track_caller]
pub fn assert_gone(org: &Org, ids: &[String], context: &CliOutput) {
    let left: Vec<&String> = ids.iter().filter(|id| org.server.exists(id)).collect();
    assert!(left.is_empty(), "still on the server: {left:?}\n{context}");
}

#[track_caller]
pub fn assert_there(org: &Org, ids: &[String], context: &CliOutput) {
    let gone: Vec<&String> = ids.iter().filter(|id| !org.server.exists(id)).collect();
    assert!(gone.is_empty(), "deleted but should not have been: {gone:?}\n{context}");
}
