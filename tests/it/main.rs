//! The integration tests, one binary compiled once: a module per area, all
//! against the real Docker engine and the real `benchwarden` binary, with the
//! shared support in `common`.

mod common;

mod cleanup_docker;
mod daytona;
mod daytona_contract;
mod docker_proxy;
mod run;
mod support;
