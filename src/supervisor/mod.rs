//! Running harness processes: one per task, each in its own process group,
//! scheduled at most `-j` at once, stopped on timeout or interrupt (the
//! lifecycle), and followed by teardown of what the task owns.

pub(crate) mod keep;
pub(crate) mod lease;
pub(crate) mod lifecycle;
pub(crate) mod process;
pub(crate) mod scheduler;
pub(crate) mod signal;
pub(crate) mod task;
pub(crate) mod watch;
