//! The server's state behind one mutex: the knobs, the sandboxes (in
//! insertion order; destroyed ones stay, never listed, never found), the rate
//! windows, the counters and the recorded requests. Pending changes complete
//! lazily: every access first calls [`State::tick`].

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use serde_json::Value;
use tokio::time::Instant;

use crate::model::Sandbox;
use crate::rate::Throttles;
use crate::{ContractConfig, ContractStats, RecordedRequest};

pub(crate) struct Shared {
    inner: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(config: ContractConfig, addr: SocketAddr) -> Shared {
        Shared {
            inner: Mutex::new(State {
                config,
                toolbox_proxy_url: format!("http://{addr}/toolbox"),
                sandboxes: Vec::new(),
                throttles: Throttles::new(),
                stats: ContractStats::default(),
                requests: Vec::new(),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(crate) struct State {
    pub(crate) config: ContractConfig,
    pub(crate) toolbox_proxy_url: String,
    /// Insertion order; destroyed ones stay (never listed, never found).
    pub(crate) sandboxes: Vec<Sandbox>,
    pub(crate) throttles: Throttles,
    pub(crate) stats: ContractStats,
    pub(crate) requests: Vec<RecordedRequest>,
}

impl State {
    /// Completes the pending changes that are due.
    pub(crate) fn tick(&mut self, now: Instant) {
        for sb in &mut self.sandboxes {
            let Some(at) = sb.transition_at else { continue };
            if at > now || (sb.stuck && sb.desired == "destroyed") {
                continue;
            }
            sb.state = sb.desired.clone();
            if sb.desired == "started" {
                sb.last_activity_at = SystemTime::now();
            }
            sb.pending = false;
            sb.transition_at = None;
            sb.touch();
        }
    }

    /// A findable sandbox by id, else by name.
    pub(crate) fn find(&self, id_or_name: &str) -> Option<usize> {
        self.sandboxes
            .iter()
            .position(|sb| sb.findable() && sb.id == id_or_name)
            .or_else(|| self.sandboxes.iter().position(|sb| sb.findable() && sb.name == id_or_name))
    }

    /// A sandbox not yet destroyed by this name (names are unique among them).
    pub(crate) fn find_live_by_name(&self, name: &str) -> Option<usize> {
        self.sandboxes.iter().position(|sb| sb.state != "destroyed" && sb.name == name)
    }

    /// The Sandbox JSON of `sb` on this server (see [`Sandbox::to_json`]).
    pub(crate) fn sandbox_json(&self, sb: &Sandbox, full: bool) -> Value {
        sb.to_json(full, &self.toolbox_proxy_url)
    }
}
