//! benchwarden: a supervisor for benchmark harnesses that never leaks a
//! container or a cloud sandbox.
//!
//! The binary (`main.rs`) parses the command line ([`cli`]), resolves it once
//! into [`settings`], and calls one function of [`app`] per subcommand.
//! The work is done by the domain modules ([`supervisor`], [`teardown`],
//! [`sweep`], [`recover`]) over the [`backend`]s and the [`ledger`]; they
//! tell what happens as [`events`], which the [`report`]er turns into what
//! people see. `ARCHITECTURE.md` says who owns what and who may import whom.

pub mod app;
pub mod backend;
pub mod cleanup;
pub mod cli;
pub mod clock;
pub mod config;
#[cfg(test)]
mod corpus;
pub mod errors;
pub mod events;
pub mod host;
pub mod intercept;
pub mod ledger;
pub mod limits;
pub mod lock;
pub mod metrics;
pub mod net;
pub mod owner;
pub mod recover;
pub mod report;
pub mod resource;
pub mod results;
pub mod retry;
pub mod settings;
pub mod supervisor;
pub mod sweep;
pub mod teardown;
