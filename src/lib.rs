//! benchwarden: a supervisor for benchmark harnesses that never leaks a
//! container.
//!
//! The binary (`main.rs`) parses the command line ([`cli`]), resolves it once
//! into [`settings`], and calls one function of [`app`] per subcommand.
//! Backends ([`backend`]) list and remove resources; [`retry`] decides what
//! a failed call means; [`report`] is everything the user sees.

pub mod app;
pub mod backend;
pub mod cli;
pub mod config;
pub mod errors;
pub mod intercept;
pub mod ledger;
pub mod owner;
pub mod report;
pub mod retry;
pub mod settings;
pub mod supervisor;
pub mod sweep;
pub mod teardown;
