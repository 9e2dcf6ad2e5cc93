//! Shared support for the integration tests, which run against the real
//! Docker engine of the machine (no mocks, no registry), by purpose:
//!
//! - `image`: the engine connection, and the test image made of a static
//!   busybox;
//! - `cli`: running the `benchwarden` binary ([`CliOutput`], [`Running`]) and
//!   the docker CLI;
//! - `scope`: [`TestScope`], one test's labelled corner of the engine, and
//!   what it leaves ([`Leftovers`]);
//! - `daytona`: one test's Daytona organisation ([`daytona::Org`]) on a
//!   contract server of its own;
//! - `python`: the virtualenv Python of docker-py and the Daytona SDK;
//! - `scoped`: [`ScopedEngine`], a socket whose listings show one test's
//!   resources only, for commands that clean up host-wide by policy;
//! - `faulty`: [`faulty::FaultyEngine`], a socket that injects 500s, 409s, 404s, late creates,
//!   slow answers, resets, truncated bodies and daemon restarts;
//! - `figures`: the reliability suite's scale (quick in `.ci/run`, long
//!   under `scripts/reliability.sh`) and the figures it publishes.
//!
//! Tests that need the engine panic with a clear message when it cannot be
//! reached; nothing here skips silently.

mod cli;
pub mod daytona;
pub mod faulty;
pub mod figures;
pub mod harness;
mod image;
mod python;
mod scope;
mod scoped;

pub use cli::{
    benchwarden_command, benchwarden_command_in, docker_cli, run_cli, run_cli_within, wait_cli, CliOutput, Running,
};
pub use image::{busybox_path, connect, elf_is_dynamic, test_image};
pub use python::venv_python;
pub use scope::{leftovers, ContainerSpec, Leftovers, TestScope, COMPOSE_PROJECT, COMPOSE_SERVICE, SCOPE_LABEL};
pub use scoped::ScopedEngine;
