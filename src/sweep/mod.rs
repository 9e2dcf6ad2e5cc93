//! Cleanup by policy. A sweep lists what a backend has, decides for each
//! resource whether it is taken, skipped, or protected because a live run
//! owns it, and removes what it takes (or, in a dry run, says what would
//! go). [`docker`] and [`daytona`] sweep one backend each; [`owned`] is the
//! policy for what benchmarks own, used before a run and by `cleanup all`.

pub(crate) mod daytona;
pub(crate) mod docker;
pub(crate) mod images;
pub(crate) mod owned;

use serde::Serialize;

use crate::events::{Event, Events};
use crate::resource::{RemovalReport, ResourceRef};

/// What a sweep does with one listed container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not selected.
    Skip,
    /// Selected, but a live run owns it: left alone, and said so.
    Protect(String),
    Take,
}

/// A container left alone because a run that is still alive owns it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Protected {
    pub(crate) resource: ResourceRef,
    pub(crate) reason: String,
}

/// A dry run's report, each resource told as one that would go.
fn plan(resources: Vec<ResourceRef>, events: &Events) -> RemovalReport {
    for resource in &resources {
        events.emit(Event::WouldRemove { resource });
    }
    RemovalReport::planned(resources)
}
