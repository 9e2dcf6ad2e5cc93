//! Running harness processes: one per task, each in its own process group,
//! scheduled at most `-j` at once, stopped on timeout or interrupt (the
//! lifecycle), and followed by teardown of what the task owns.

pub mod lifecycle;
pub mod process;
pub mod scheduler;
pub mod signal;
pub mod task;
pub mod watch;
