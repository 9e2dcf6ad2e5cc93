//! The integration tests, one binary compiled once: a module per area, all
//! against the real Docker engine and the real `benchwarden` binary, with the
//! shared support in `common`.

mod common;

mod architecture;
mod chaos;
mod cleanup_all;
mod cleanup_docker;
mod contract_server;
mod ctrl_z;
mod daytona;
mod daytona_defaults;
mod daytona_errors;
mod daytona_faults;
mod docker_proxy;
mod faults;
mod harnesses;
mod images;
mod keep;
mod leases;
mod limits;
mod metrics;
mod misbehaving;
mod retention;
mod run;
mod soak;
mod soak_daytona;
mod state_dir;
mod support;
mod sweep;
mod two_runs;
mod wrappers;
