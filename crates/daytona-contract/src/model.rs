//! The sandbox model: what the server stores of a sandbox, the state the API
//! reports (derived from the stored state and the desired one), which
//! sandboxes a lookup can find, and the Sandbox JSON (full, as GET shows it,
//! or as a list item, which leaves out `env`, `volumes`, `buildInfo` and the
//! allow lists). Also the ids and time stamps the API uses.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::{SeedSandbox, DEFAULT_SNAPSHOT, DEFAULT_TARGET, ORGANIZATION_ID};

#[derive(Clone, Debug)]
pub(crate) struct Sandbox {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) user: String,
    pub(crate) snapshot: Option<String>,
    pub(crate) target: String,
    pub(crate) public: bool,
    pub(crate) network_block_all: bool,
    pub(crate) network_allow_list: Option<String>,
    pub(crate) domain_allow_list: Option<String>,
    pub(crate) kvm: bool,
    pub(crate) cpu: i64,
    pub(crate) gpu: i64,
    pub(crate) memory: i64,
    pub(crate) disk: i64,
    /// The stored state (what a state filter matches).
    pub(crate) state: String,
    pub(crate) desired: String,
    pub(crate) pending: bool,
    pub(crate) error_reason: Option<String>,
    pub(crate) auto_stop: i64,
    pub(crate) auto_archive: i64,
    pub(crate) auto_delete: i64,
    pub(crate) volumes: Vec<Value>,
    pub(crate) build_info: Option<Value>,
    pub(crate) created_at: SystemTime,
    pub(crate) updated_at: SystemTime,
    pub(crate) last_activity_at: SystemTime,
    /// When the pending change completes (state becomes the desired one).
    pub(crate) transition_at: Option<Instant>,
    /// Never completes a destroy (see `faults`).
    pub(crate) stuck: bool,
}

impl Sandbox {
    pub(crate) fn new(id: String, name: String, created_at: SystemTime) -> Sandbox {
        Sandbox {
            id,
            name,
            labels: BTreeMap::new(),
            env: BTreeMap::new(),
            user: "daytona".to_string(),
            snapshot: Some(DEFAULT_SNAPSHOT.to_string()),
            target: DEFAULT_TARGET.to_string(),
            public: false,
            network_block_all: false,
            network_allow_list: None,
            domain_allow_list: None,
            kvm: false,
            cpu: 2,
            gpu: 0,
            memory: 4,
            disk: 10,
            state: "started".to_string(),
            desired: "started".to_string(),
            pending: false,
            error_reason: None,
            auto_stop: 15,
            auto_archive: 10_080,
            auto_delete: -1,
            volumes: Vec::new(),
            build_info: None,
            created_at,
            updated_at: created_at,
            last_activity_at: created_at,
            transition_at: None,
            stuck: false,
        }
    }

    /// A sandbox put on the server by a test, in the seeded state: settled
    /// states stay, `destroying` ends `destroyed` after `destroy_delay`, any
    /// other transitional state is pending for good.
    pub(crate) fn seeded(
        id: String,
        name: String,
        seed: SeedSandbox,
        now: Instant,
        destroy_delay: Duration,
    ) -> Sandbox {
        let SeedSandbox { labels, state, created_at, .. } = seed;
        let (desired, pending, transition_at) = match state.as_str() {
            "started" | "error" | "build_failed" | "unknown" => ("started", false, None),
            "stopped" => ("stopped", false, None),
            "archived" => ("archived", false, None),
            "paused" => ("paused", false, None),
            "destroyed" => ("destroyed", false, None),
            "destroying" => ("destroyed", true, Some(now + destroy_delay)),
            "stopping" => ("stopped", true, None),
            "archiving" => ("archived", true, None),
            "pausing" => ("paused", true, None),
            _ => ("started", true, None),
        };
        let mut sb = Sandbox::new(id, name, created_at);
        sb.labels = labels;
        sb.desired = desired.to_string();
        sb.pending = pending;
        sb.transition_at = transition_at;
        if state == "error" || state == "build_failed" {
            sb.error_reason = Some(format!("seeded in state {state}"));
        }
        sb.state = state;
        sb
    }

    /// The state as the API reports it: the stored state, or the transition
    /// towards the desired one.
    pub(crate) fn shown_state(&self) -> &str {
        match (self.state.as_str(), self.desired.as_str()) {
            ("started", "stopped") => "stopping",
            ("started" | "stopped", "destroyed") => "destroying",
            ("stopped", "started") => "starting",
            ("stopped", "archived") => "archiving",
            ("unknown", "started") => "creating",
            (state, _) => state,
        }
    }

    pub(crate) fn errored(&self) -> bool {
        self.state == "error" || self.state == "build_failed"
    }

    /// An errored sandbox whose delete was accepted: 404 at once, hidden from lists.
    pub(crate) fn errored_deleted(&self) -> bool {
        self.errored() && self.desired == "destroyed"
    }

    /// What GET and DELETE by id or name can find.
    pub(crate) fn findable(&self) -> bool {
        self.state != "destroyed" && !self.errored_deleted()
    }

    pub(crate) fn touch(&mut self) {
        self.updated_at = SystemTime::now();
    }

    /// Starts a change that completes at `at`: shown as `state` until then.
    pub(crate) fn begin_change(&mut self, state: &str, desired: &str, at: Instant) {
        self.state = state.to_string();
        self.desired = desired.to_string();
        self.pending = true;
        self.transition_at = Some(at);
        self.touch();
    }

    /// The Sandbox JSON: `full` as GET shows it, else as a list item.
    pub(crate) fn to_json(&self, full: bool, toolbox_proxy_url: &str) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("organizationId".into(), json!(ORGANIZATION_ID));
        m.insert("name".into(), json!(self.name));
        m.insert("snapshot".into(), json!(self.snapshot));
        m.insert("user".into(), json!(self.user));
        if full {
            m.insert("env".into(), json!(self.env));
        }
        m.insert("labels".into(), json!(self.labels));
        m.insert("public".into(), json!(self.public));
        m.insert("networkBlockAll".into(), json!(self.network_block_all));
        if full {
            self.insert_network_details(&mut m);
        }
        m.insert("target".into(), json!(self.target));
        m.insert("cpu".into(), json!(self.cpu));
        m.insert("gpu".into(), json!(self.gpu));
        m.insert("memory".into(), json!(self.memory));
        m.insert("disk".into(), json!(self.disk));
        m.insert("state".into(), json!(self.shown_state()));
        m.insert("desiredState".into(), json!(self.desired));
        m.insert("errorReason".into(), json!(self.error_reason));
        m.insert("recoverable".into(), json!(false));
        m.insert("backupState".into(), json!("None"));
        m.insert("autoStopInterval".into(), json!(self.auto_stop));
        m.insert("autoArchiveInterval".into(), json!(self.auto_archive));
        m.insert("autoDeleteInterval".into(), json!(self.auto_delete));
        if full {
            m.insert("volumes".into(), Value::Array(self.volumes.clone()));
            if let Some(info) = &self.build_info {
                m.insert("buildInfo".into(), info.clone());
            }
        }
        m.insert("createdAt".into(), json!(iso(self.created_at)));
        m.insert("updatedAt".into(), json!(iso(self.updated_at)));
        m.insert("lastActivityAt".into(), json!(iso(self.last_activity_at)));
        m.insert("sandboxClass".into(), json!("container"));
        m.insert("daemonVersion".into(), json!("0.190.0"));
        m.insert("runnerId".into(), json!("runner-contract-1"));
        m.insert("toolboxProxyUrl".into(), json!(toolbox_proxy_url));
        Value::Object(m)
    }

    /// `kvm` and the allow lists, which only the full Sandbox has.
    fn insert_network_details(&self, m: &mut Map<String, Value>) {
        m.insert("kvm".into(), json!(self.kvm));
        if let Some(list) = &self.network_allow_list {
            m.insert("networkAllowList".into(), json!(list));
        }
        if let Some(list) = &self.domain_allow_list {
            m.insert("domainAllowList".into(), json!(list));
        }
    }
}

/// `toISOString()`: `2024-10-01T12:00:00.000Z`.
pub(crate) fn iso(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A random (version 4) UUID, as sandbox ids are.
pub(crate) fn new_uuid() -> String {
    let mut bytes = [0u8; 16];
    for b in &mut bytes {
        *b = fastrand::u8(..);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}
