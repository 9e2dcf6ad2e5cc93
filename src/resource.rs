//! What benchwarden tears down, and what became of it: resource identities
//! (kind and id, with a name for people), label selectors, and the outcome
//! of each removal with the class of its error kept, so that decisions such
//! as exit codes are made from types, never from message text.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

use crate::errors::{ErrorClass, Service};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Container,
    Network,
    Volume,
    Sandbox,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Network => "network",
            Kind::Volume => "volume",
            Kind::Sandbox => "sandbox",
        }
    }

    /// The plural, for people: "sandboxes".
    pub(crate) fn plural(self) -> &'static str {
        match self {
            Kind::Container => "containers",
            Kind::Network => "networks",
            Kind::Volume => "volumes",
            Kind::Sandbox => "sandboxes",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Kind> {
        match text {
            "container" => Some(Kind::Container),
            "network" => Some(Kind::Network),
            "volume" => Some(Kind::Volume),
            "sandbox" => Some(Kind::Sandbox),
            _ => None,
        }
    }

    /// The service this kind lives in.
    pub(crate) fn service(self) -> Service {
        match self {
            Kind::Container | Kind::Network | Kind::Volume => Service::Docker,
            Kind::Sandbox => Service::Daytona,
        }
    }

    /// The backend that owns this kind, as stored in the ledger.
    pub(crate) fn backend(self) -> &'static str {
        self.service().as_str()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resource: enough to name it in messages and to find it. Identity is
/// the kind and id; the name is for people (and may be unknown).
#[derive(Debug, Clone, Serialize)]
pub struct ResourceRef {
    pub kind: Kind,
    pub id: String,
    pub name: String,
}

impl PartialEq for ResourceRef {
    fn eq(&self, other: &Self) -> bool {
        (self.kind, &self.id) == (other.kind, &other.id)
    }
}

impl Eq for ResourceRef {}

impl std::hash::Hash for ResourceRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.kind, &self.id).hash(state);
    }
}

impl PartialOrd for ResourceRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ResourceRef {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.kind, &self.id).cmp(&(other.kind, &other.id))
    }
}

impl ResourceRef {
    /// Short id for people: 12 characters, as the docker CLI prints them.
    pub(crate) fn short_id(&self) -> &str {
        short_id(&self.id)
    }
}

/// What the removal order knows of a resource beside its kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Standing {
    /// A container that runs (or might: when unknown, it counts as running).
    pub(crate) running: bool,
    /// When it was created (Unix seconds), when known.
    pub(crate) created: Option<i64>,
}

/// Where a resource goes in the order removals start in when several kinds
/// go at once: sandboxes first, because they cost money by the minute; then
/// running containers, then stopped ones; then networks and volumes, which
/// containers free. Within a group the oldest go first, unknown ages last.
pub(crate) fn removal_rank(kind: Kind, standing: Standing) -> (u8, i64) {
    let group = match kind {
        Kind::Sandbox => 0,
        Kind::Container if standing.running => 1,
        Kind::Container => 2,
        Kind::Network => 3,
        Kind::Volume => 4,
    };
    (group, standing.created.unwrap_or(i64::MAX))
}

/// `resources` in removal order (see [`removal_rank`]); ties by kind and id, so the order is total.
pub(crate) fn in_removal_order(resources: impl IntoIterator<Item = (ResourceRef, Standing)>) -> Vec<ResourceRef> {
    let mut ranked: Vec<((u8, i64), ResourceRef)> =
        resources.into_iter().map(|(resource, standing)| (removal_rank(resource.kind, standing), resource)).collect();
    ranked.sort();
    ranked.into_iter().map(|(_, resource)| resource).collect()
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() || self.name == self.id {
            write!(f, "{} {}", self.kind, self.short_id())
        } else {
            write!(f, "{} {} ({})", self.kind, self.name, self.short_id())
        }
    }
}

pub(crate) fn short_id(id: &str) -> &str {
    if id.len() > 12 && id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        &id[..12]
    } else {
        id
    }
}

/// The longest id or name `claim` accepts.
const MAX_REF: usize = 255;

/// Whether `text` is one token of letters, digits, `_`, `.` and `-` that
/// starts with a letter or digit: how Docker spells container ids and names,
/// and safe as one segment of a Daytona URL path.
fn is_plain_token(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|first| first.is_ascii_alphanumeric())
        && chars.all(|char| char.is_ascii_alphanumeric() || matches!(char, '_' | '.' | '-'))
        && text.len() <= MAX_REF
}

/// A container named on `claim --docker`: an id (or a prefix of one) or a
/// name, as Docker spells them; a leading `/` (as `docker inspect` prints
/// names) is dropped.
pub(crate) fn check_container_ref(text: &str) -> Result<String, String> {
    let reference = text.trim().strip_prefix('/').unwrap_or(text.trim());
    match is_plain_token(reference) {
        true => Ok(reference.to_string()),
        false => Err(format!(
            "--docker {text:?} is not a container id or name: an id is hex (as `docker ps -q` prints it), \
             a name is letters, digits, `_`, `.` and `-`, starting with a letter or digit, at most {MAX_REF} long"
        )),
    }
}

/// A sandbox named on `claim --daytona`: its id, as the Daytona API gives it.
pub(crate) fn check_sandbox_id(text: &str) -> Result<String, String> {
    let id = text.trim();
    match is_plain_token(id) {
        true => Ok(id.to_string()),
        false => Err(format!(
            "--daytona {text:?} is not a sandbox id: ids are letters, digits, `_`, `.` and `-` \
             (a UUID such as 7f3c1d2e-…), as `benchwarden list --daytona` shows them"
        )),
    }
}

/// How a task came to have an image, as its Docker proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageOrigin {
    /// `POST /build`.
    Built,
    /// `POST /images/create?fromImage=…`.
    Pulled,
    /// `POST /images/create?fromSrc=…` (`docker import`).
    Imported,
}

impl ImageOrigin {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ImageOrigin::Built => "built",
            ImageOrigin::Pulled => "pulled",
            ImageOrigin::Imported => "imported",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "built" => Some(ImageOrigin::Built),
            "pulled" => Some(ImageOrigin::Pulled),
            "imported" => Some(ImageOrigin::Imported),
            _ => None,
        }
    }
}

/// An image a task built, pulled or imported. Images are not torn down
/// with the task (another task of the run may use them): they are recorded,
/// and removed at the end of the run only when the benchmark asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedImage {
    /// The full id, `sha256:…`.
    pub id: String,
    /// The tags the task gave it (`t` of a build, the reference of a pull).
    pub tags: Vec<String>,
    pub origin: ImageOrigin,
    /// The engine had this image before the task asked for it (a pull that
    /// found it up to date): never removed by benchwarden.
    pub existed_before: bool,
}

impl fmt::Display for RecordedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        match self.tags.first() {
            Some(tag) => write!(f, "image {tag} ({})", short_id(id)),
            None => write!(f, "image {}", short_id(id)),
        }
    }
}

/// What became of one image a removal of images considered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "fate", rename_all = "snake_case")]
pub enum ImageFate {
    /// Deleted; `bytes` is its size as the engine listed it (its layers may
    /// be shared with images that stay, so this is at most what was freed).
    Removed {
        bytes: u64,
    },
    /// Gone before we got to it.
    AlreadyGone,
    /// A dry run would remove it.
    WouldRemove {
        bytes: u64,
    },
    /// Left alone, and why: it existed before the run, a live run or a
    /// container uses it.
    Kept {
        reason: String,
    },
    Failed {
        error: String,
    },
}

/// A label selector: `key=value`, or `key` alone for any value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    pub(crate) key: String,
    pub(crate) value: Option<String>,
}

impl LabelSelector {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let (key, value) = match text.split_once('=') {
            Some((key, value)) => (key, Some(value.to_string())),
            None => (text, None),
        };
        if key.is_empty() {
            return Err(format!("invalid label selector {text:?}: expected K=V or K"));
        }
        Ok(LabelSelector { key: key.to_string(), value })
    }

    /// `key=value`: the form the Docker API's `label` filter takes.
    pub(crate) fn to_filter(&self) -> String {
        match &self.value {
            Some(value) => format!("{}={}", self.key, value),
            None => self.key.clone(),
        }
    }

    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match (labels.get(&self.key), &self.value) {
            (Some(found), Some(wanted)) => found == wanted,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// Why a removal failed for good: the backend's error, with the class the
/// retry layer acted on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source}")]
pub struct RemovalError {
    pub(crate) class: ErrorClass,
    source: Arc<dyn std::error::Error + Send + Sync>,
}

impl RemovalError {
    pub(crate) fn new(class: ErrorClass, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        RemovalError { class, source: Arc::new(source) }
    }
}

impl PartialEq for RemovalError {
    fn eq(&self, other: &Self) -> bool {
        self.class == other.class && self.to_string() == other.to_string()
    }
}

impl Eq for RemovalError {}

fn as_text<S: Serializer>(error: &RemovalError, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(error)
}

/// How one removal ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RemovalOutcome {
    Removed {
        attempts: u32,
    },
    AlreadyGone {
        attempts: u32,
    },
    Failed {
        attempts: u32,
        #[serde(serialize_with = "as_text")]
        error: RemovalError,
    },
    /// Not attempted: `--fail-fast` stopped new removals.
    NotAttempted,
    /// A dry run: this would have been removed.
    WouldRemove,
    /// Deletion accepted but not finished by the deadline (a Daytona sandbox
    /// still `destroying`); kept in the ledger for `recover`.
    Pending {
        attempts: u32,
    },
}

/// What a batch of removals did, resource by resource, in input order.
/// Serialized with its counts, so `--json` carries what the text summary says.
#[derive(Debug, Clone, Default)]
pub struct RemovalReport {
    pub results: Vec<(ResourceRef, RemovalOutcome)>,
}

impl Serialize for RemovalReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut report = serializer.serialize_struct("RemovalReport", 6)?;
        report.serialize_field("removed", &self.removed())?;
        report.serialize_field("already_gone", &self.already_gone())?;
        report.serialize_field("failed", &self.failed())?;
        report.serialize_field("not_attempted", &self.not_attempted())?;
        report.serialize_field("would_remove", &self.would_remove())?;
        report.serialize_field("results", &self.results)?;
        report.end()
    }
}

impl RemovalReport {
    pub(crate) fn count(&self, wanted: fn(&RemovalOutcome) -> bool) -> usize {
        self.results.iter().filter(|(_, outcome)| wanted(outcome)).count()
    }

    pub fn removed(&self) -> usize {
        self.count(|outcome| matches!(outcome, RemovalOutcome::Removed { .. }))
    }

    pub fn already_gone(&self) -> usize {
        self.count(|outcome| matches!(outcome, RemovalOutcome::AlreadyGone { .. }))
    }

    pub fn failed(&self) -> usize {
        self.count(|outcome| matches!(outcome, RemovalOutcome::Failed { .. }))
    }

    pub fn not_attempted(&self) -> usize {
        self.count(|outcome| matches!(outcome, RemovalOutcome::NotAttempted))
    }

    pub fn pending(&self) -> usize {
        self.count(|outcome| matches!(outcome, RemovalOutcome::Pending { .. }))
    }

    pub fn would_remove(&self) -> usize {
        self.count(|outcome| matches!(outcome, RemovalOutcome::WouldRemove))
    }

    /// A dry run's report: every resource marked as one that would go.
    pub(crate) fn planned(resources: Vec<ResourceRef>) -> Self {
        RemovalReport {
            results: resources.into_iter().map(|resource| (resource, RemovalOutcome::WouldRemove)).collect(),
        }
    }

    pub(crate) fn failures(&self) -> impl Iterator<Item = (&ResourceRef, &RemovalError)> {
        self.results.iter().filter_map(|(resource, outcome)| match outcome {
            RemovalOutcome::Failed { error, .. } => Some((resource, error)),
            _ => None,
        })
    }

    /// Resources whose outcome `wanted` picks, in order.
    pub(crate) fn resources(&self, wanted: fn(&RemovalOutcome) -> bool) -> Vec<ResourceRef> {
        self.results.iter().filter(|(_, outcome)| wanted(outcome)).map(|(resource, _)| resource.clone()).collect()
    }

    pub(crate) fn extend(&mut self, other: RemovalReport) {
        self.results.extend(other.results);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_go_sandboxes_then_running_then_stopped_containers_then_networks_and_volumes_oldest_first() {
        let item = |kind, id: &str, running, created| {
            (ResourceRef { kind, id: id.to_string(), name: String::new() }, Standing { running, created })
        };
        let order = in_removal_order([
            item(Kind::Volume, "v", false, Some(1)),
            item(Kind::Container, "stopped-new", false, Some(20)),
            item(Kind::Network, "n-unknown", false, None),
            item(Kind::Network, "n-old", false, Some(5)),
            item(Kind::Container, "running-new", true, Some(30)),
            item(Kind::Container, "stopped-old", false, Some(10)),
            item(Kind::Sandbox, "s-new", false, Some(50)),
            item(Kind::Container, "running-old", true, Some(15)),
            item(Kind::Sandbox, "s-old", false, Some(2)),
        ]);
        let ids: Vec<&str> = order.iter().map(|resource| resource.id.as_str()).collect();
        assert_eq!(
            ids,
            ["s-old", "s-new", "running-old", "running-new", "stopped-old", "stopped-new", "n-old", "n-unknown", "v"]
        );
    }

    #[test]
    fn label_selectors_parse_and_match() {
        let selector = LabelSelector::parse("team=eval").unwrap();
        let mut labels = BTreeMap::new();
        assert!(!selector.matches(&labels));
        labels.insert("team".to_string(), "eval".to_string());
        assert!(selector.matches(&labels));
        assert!(LabelSelector::parse("team").unwrap().matches(&labels));
        assert!(!LabelSelector::parse("team=other").unwrap().matches(&labels));
        assert!(LabelSelector::parse("=x").is_err());
        assert_eq!(selector.to_filter(), "team=eval");
    }

    #[test]
    fn short_ids_are_twelve_hex_characters() {
        assert_eq!(short_id("0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_id("my-volume-with-a-long-name"), "my-volume-with-a-long-name");
    }

    #[test]
    fn a_failure_keeps_its_class_and_serializes_as_its_message() {
        let error = RemovalError::new(ErrorClass::Denied, std::io::Error::other("no entry (HTTP 401)"));
        let outcome = RemovalOutcome::Failed { attempts: 1, error };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["error"], "no entry (HTTP 401)");
        let RemovalOutcome::Failed { error, .. } = outcome else { unreachable!() };
        assert_eq!(error.class, ErrorClass::Denied);
    }

    #[test]
    fn claims_take_container_ids_names_and_sandbox_ids_and_refuse_the_rest() {
        let id = "3f2a9c0b7d1e".repeat(5) + "abcd";
        assert_eq!(check_container_ref(&id).unwrap(), id);
        assert_eq!(check_container_ref("/web-1").unwrap(), "web-1");
        assert_eq!(check_container_ref(" tb_hello.1 ").unwrap(), "tb_hello.1");
        for bad in ["", "/", "-x", "a b", "a/b", "x;rm", "é"] {
            assert!(check_container_ref(bad).is_err(), "{bad:?}");
            assert!(check_sandbox_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_container_ref(&"a".repeat(256)).is_err());
        assert_eq!(check_sandbox_id("7f3c1d2e-0000-4000-8000-000000000000").unwrap().len(), 36);
        assert!(check_sandbox_id("../sandbox").is_err());
    }

    proptest::proptest! {
        /// Whatever the text, an accepted reference is a plain token: nothing
        /// that could change a URL path or a command line.
        #[test]
        fn accepted_references_are_plain_tokens(text in ".{0,300}") {
            for reference in [check_container_ref(&text), check_sandbox_id(&text)].into_iter().flatten() {
                proptest::prop_assert!(is_plain_token(&reference));
                proptest::prop_assert!(!reference.contains(['/', '?', '#', '%', ' ']));
            }
        }

        #[test]
        fn every_docker_like_token_is_accepted(text in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,100}") {
            proptest::prop_assert_eq!(check_container_ref(&text), Ok(text.clone()));
            proptest::prop_assert_eq!(check_sandbox_id(&text), Ok(text));
        }
    }
}
