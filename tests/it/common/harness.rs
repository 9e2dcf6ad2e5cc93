//! The real harnesses (Terminal-Bench's `tb`, Harbor's `harbor`) as
//! `scripts/harness-env.sh` prepares them: a cached virtualenv, a private
//! docker config dir with Compose v2 as a CLI plugin, and the base image the
//! fixture tasks of `tests/harnesses/` build from. `scripts/test.sh` runs
//! that script; here it is only asked (`--check --print`), never run to
//! install, and a missing piece is a panic, never a skip.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Where the harnesses are, as `scripts/harness-env.sh --print` says.
#[derive(Debug, Clone)]
pub struct HarnessEnv {
    /// The virtualenv's `bin`: `tb`, `harbor` (and a Python `docker-compose`
    /// that shadows the system's v1, so it goes on `PATH` for harnesses only).
    pub bin: PathBuf,
    /// A `DOCKER_CONFIG` whose `cli-plugins` has `docker-compose` (v2).
    pub docker_config: PathBuf,
    /// The image the fixture tasks' Dockerfiles build `FROM`.
    pub base_image: String,
}

impl HarnessEnv {
    /// The environment of a harness process (or of `benchwarden run` of
    /// one): `PATH` with the virtualenv first, then this process's `PATH`;
    /// the private `DOCKER_CONFIG`; and `LITELLM_LOCAL_MODEL_COST_MAP=True`,
    /// without which litellm fetches its price list from the network.
    pub fn command_env(&self) -> Vec<(String, String)> {
        let mut path = vec![self.bin.clone()];
        path.extend(std::env::var_os("PATH").iter().flat_map(std::env::split_paths));
        let path =
            std::env::join_paths(path).unwrap_or_else(|error| panic!("PATH with {}: {error}", self.bin.display()));
        vec![
            ("PATH".to_string(), path.to_string_lossy().into_owned()),
            ("DOCKER_CONFIG".to_string(), self.docker_config.to_string_lossy().into_owned()),
            ("LITELLM_LOCAL_MODEL_COST_MAP".to_string(), "True".to_string()),
        ]
    }
}

/// The harness environment, asked of `scripts/harness-env.sh --check
/// --print` once per test process. Panics, telling to run `scripts/test.sh`,
/// when it is not ready.
pub fn harness_env() -> HarnessEnv {
    static ENV: OnceLock<HarnessEnv> = OnceLock::new();
    ENV.get_or_init(ask_script).clone()
}

/// The fixture tasks of one harness (`terminal-bench` or `harbor`), in
/// that harness's own format: `hello`, `slow-a`, `slow-b` (see
/// `tests/harnesses/README.md`).
pub fn tasks_dir(harness: &str) -> PathBuf {
    assert!(
        matches!(harness, "terminal-bench" | "harbor"),
        "no fixture tasks for harness {harness:?}: there are terminal-bench and harbor"
    );
    let dir = repository().join("tests/harnesses").join(harness).join("tasks");
    assert!(dir.is_dir(), "{} is missing", dir.display());
    dir
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ask_script() -> HarnessEnv {
    let script = repository().join("scripts/harness-env.sh");
    let output = Command::new(&script)
        .args(["--check", "--print"])
        .output()
        .unwrap_or_else(|error| panic!("run {}: {error}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!(
            "the real harnesses are not ready ({} --check: {}): {}\n\
             run scripts/test.sh, which prepares them (scripts/harness-env.sh); these tests never skip",
            script.display(),
            output.status,
            stderr.trim()
        );
    }
    parse(&stdout)
        .unwrap_or_else(|missing| panic!("{} --check --print gave no {missing}:\n{stdout}{stderr}", script.display()))
}

/// The three values of `--print`'s `NAME=value` lines (a value may be
/// single-quoted, shell-style); `Err` names the first one missing.
fn parse(text: &str) -> Result<HarnessEnv, &'static str> {
    let value = |name: &'static str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .map(unquote)
            .filter(|value| !value.is_empty())
            .ok_or(name)
    };
    Ok(HarnessEnv {
        bin: value("BENCHWARDEN_HARNESS_BIN")?.into(),
        docker_config: value("BENCHWARDEN_HARNESS_DOCKER_CONFIG")?.into(),
        base_image: value("BENCHWARDEN_HARNESS_BASE_IMAGE")?,
    })
}

/// `'a b'` → `a b`, with `'\''` standing for a quote; a bare word as is.
fn unquote(value: &str) -> String {
    match value.strip_prefix('\'').and_then(|inner| inner.strip_suffix('\'')) {
        Some(inner) => inner.replace("'\\''", "'"),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bare_and_quoted_values() {
        let env = parse(
            "BENCHWARDEN_HARNESS_BIN=/c/venv-1/bin\n\
             BENCHWARDEN_HARNESS_DOCKER_CONFIG='/my cache/it'\\''s/docker-config-1'\n\
             BENCHWARDEN_HARNESS_BASE_IMAGE=benchwarden-harness-base:bookworm\n",
        )
        .unwrap();
        assert_eq!(env.bin, PathBuf::from("/c/venv-1/bin"));
        assert_eq!(env.docker_config, PathBuf::from("/my cache/it's/docker-config-1"));
        assert_eq!(env.base_image, "benchwarden-harness-base:bookworm");
        assert_eq!(parse("BENCHWARDEN_HARNESS_BIN=/x\n").unwrap_err(), "BENCHWARDEN_HARNESS_DOCKER_CONFIG");
    }
}
