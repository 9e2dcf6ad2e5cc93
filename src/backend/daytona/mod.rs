//! The Daytona backend, split along the API's concerns: configuration and
//! credentials, the data model and its errors, pacing by the rate-limit
//! headers, the client, and deletion seen through to 404.

mod client;
mod config;
mod model;
mod pacer;
mod remove;

pub use client::DaytonaBackend;
pub(crate) use config::DEFAULT_API_URL;
pub use config::{Credentials, DaytonaConfig};
pub use model::{DaytonaError, Sandbox};
pub(crate) use remove::{remove_sandboxes, VERIFY_FOR};
