//! Per-task interceptors: local endpoints that a task's clients talk to
//! instead of the real service, so that every resource the task creates is
//! labelled with its owner and recorded in the ledger before the harness
//! learns its id.

pub(crate) mod daytona_proxy;
pub(crate) mod docker_proxy;
#[cfg(test)]
mod fuzz;
pub(crate) mod images;
pub(crate) mod proxy;
pub(crate) mod sockets;
