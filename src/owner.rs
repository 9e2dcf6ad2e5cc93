//! Who owns a resource, and whether that owner is still alive: the
//! `benchwarden.*` owner labels, what a task or run claims (its owner labels
//! and the benchmark's selectors), and the one rule for judging whether the
//! run that owns something is alive; across machines, its [`lease`].

use std::collections::BTreeMap;

use crate::config::{compose_project_matches, matches_template, Selector};
use crate::host;
use crate::ledger::RunRecord;
use crate::resource::LabelSelector;

pub(crate) mod lease;

/// Owner labels stamped on everything a task creates.
pub(crate) const LABEL_RUN: &str = "benchwarden.run";
pub(crate) const LABEL_TASK: &str = "benchwarden.task";
pub(crate) const LABEL_HOST: &str = "benchwarden.host";
pub(crate) const LABEL_PID: &str = "benchwarden.pid";
/// The owner labels as the Docker proxy stamps them on built images (see
/// `intercept::docker_proxy::image_labels`): other keys than a resource's,
/// since containers inherit their image's labels.
pub(crate) const LABEL_IMAGE_PREFIX: &str = "benchwarden.image.";
pub(crate) const LABEL_IMAGE_RUN: &str = "benchwarden.image.run";

/// The owner an image's labels name, read as a resource's owner labels.
pub(crate) fn image_owner(labels: &BTreeMap<String, String>) -> Option<LabelledOwner> {
    let as_owner: BTreeMap<String, String> = labels
        .iter()
        .filter_map(|(key, value)| {
            Some((format!("benchwarden.{}", key.strip_prefix(LABEL_IMAGE_PREFIX)?), value.clone()))
        })
        .collect();
    LabelledOwner::from_labels(&as_owner)
}

/// The label docker compose puts on everything of a project.
pub(crate) const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";

/// The owner labels for a resource that `task` of `run` creates.
pub(crate) fn owner_labels(run_id: &str, task_id: &str, host: &str, pid: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_RUN.to_string(), run_id.to_string()),
        (LABEL_TASK.to_string(), task_id.to_string()),
        (LABEL_HOST.to_string(), host.to_string()),
        (LABEL_PID.to_string(), pid.to_string()),
    ])
}

/// The owner named by a resource's labels, if it carries benchwarden's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelledOwner {
    pub(crate) run_id: String,
    pub(crate) task_id: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) pid: Option<u32>,
}

impl LabelledOwner {
    pub(crate) fn from_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        Some(LabelledOwner {
            run_id: labels.get(LABEL_RUN)?.clone(),
            task_id: labels.get(LABEL_TASK).cloned(),
            host: labels.get(LABEL_HOST).cloned(),
            pid: labels.get(LABEL_PID).and_then(|pid| pid.parse().ok()),
        })
    }

    /// The owner as list tables show it: `run/task`, or `-` for a resource no run labelled.
    pub(crate) fn column(labels: &BTreeMap<String, String>) -> String {
        match Self::from_labels(labels) {
            Some(owner) => format!("{}/{}", owner.run_id, owner.task_id.as_deref().unwrap_or("?")),
            None => "-".to_string(),
        }
    }

    /// Whether the run that owns this resource may still be alive, judged
    /// from labels alone: same host and its pid runs a benchwarden. Another
    /// host's run cannot be judged from here, so it counts as alive.
    pub(crate) fn may_be_alive(&self, this_host: &str) -> bool {
        match (&self.host, self.pid) {
            (Some(host), Some(pid)) if host == this_host => {
                host::process_is_alive(pid, None)
                    && host::process_name(pid).is_some_and(|name| name.starts_with("benchwarden"))
            }
            (Some(host), _) if host != this_host => true,
            // Labelled by a run, but without a pid: treat as ours and dead only if the host matches.
            _ => false,
        }
    }
}

/// Whether the run that labelled a resource may still be alive. The ledger,
/// when it knows the run, is the better judge; else the labels are.
pub(crate) fn owner_is_alive(owner: &LabelledOwner, runs: &[RunRecord], this_host: &str) -> bool {
    match runs.iter().find(|run| run.id == owner.run_id) {
        Some(run) => run.ended_at.is_none() && run.is_alive(this_host),
        None => owner.may_be_alive(this_host),
    }
}

/// Why a resource with these labels must be left alone, if a live run owns it.
pub(crate) fn protected_by_live_run(
    labels: &BTreeMap<String, String>,
    runs: &[RunRecord],
    this_host: &str,
) -> Option<String> {
    let owner = LabelledOwner::from_labels(labels)?;
    owner_is_alive(&owner, runs, this_host).then(|| format!("owned by run {}, which is still alive", owner.run_id))
}

/// What an owner claims: owner labels, plus selectors already filled with
/// the run id and task name.
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    pub(crate) run_id: String,
    /// `None`: every task of the run.
    pub(crate) task_id: Option<String>,
    pub(crate) selectors: Vec<Selector>,
}

impl Claims {
    /// The owner labels every claimed resource carries, as selectors.
    pub(crate) fn owner_labels(&self) -> Vec<LabelSelector> {
        let mut labels = vec![LabelSelector { key: LABEL_RUN.to_string(), value: Some(self.run_id.clone()) }];
        if let Some(task_id) = &self.task_id {
            labels.push(LabelSelector { key: LABEL_TASK.to_string(), value: Some(task_id.clone()) });
        }
        labels
    }

    /// The label selectors among the claims.
    pub(crate) fn label_selectors(&self) -> Vec<LabelSelector> {
        self.selectors
            .iter()
            .filter_map(|selector| match selector {
                Selector::Label(label) => LabelSelector::parse(label).ok(),
                Selector::ComposeProjectPrefix(_) | Selector::ComposeProject(_) => None,
            })
            .collect()
    }

    /// The compose-project patterns among the claims.
    pub(crate) fn project_patterns(&self) -> Vec<String> {
        self.selectors.iter().filter_map(Selector::project_pattern).collect()
    }

    /// Whether a resource with these labels is claimed: it carries the
    /// owner labels, or a selector matches.
    pub(crate) fn claims_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.owner_labels().iter().all(|selector| selector.matches(labels))
            || self.label_selectors().iter().any(|selector| selector.matches(labels))
            || self.in_claimed_project(labels)
    }

    /// Whether the labels put a resource in a compose project the claims' patterns name.
    pub(crate) fn in_claimed_project(&self, labels: &BTreeMap<String, String>) -> bool {
        let patterns = self.project_patterns();
        labels
            .get(COMPOSE_PROJECT_LABEL)
            .is_some_and(|project| patterns.iter().any(|pattern| compose_project_matches(pattern, project)))
    }
}

/// Whether a benchmark file's selector template (placeholders as wildcards,
/// `{run_id}` filled when `run_id` is given) claims a resource with these
/// labels: how a sweep knows leftovers of any run, or of one run, of the
/// benchmark.
pub(crate) fn template_claims(selector: &Selector, labels: &BTreeMap<String, String>, run_id: Option<&str>) -> bool {
    let fill_run = |template: &str| match run_id {
        Some(run_id) => template.replace("{run_id}", run_id),
        None => template.to_string(),
    };
    match selector {
        Selector::Label(template) => {
            let Ok(label) = LabelSelector::parse(&fill_run(template)) else {
                return false;
            };
            match (labels.get(&label.key), &label.value) {
                (Some(value), Some(pattern)) => matches_template(pattern, value),
                (Some(_), None) => true,
                (None, _) => false,
            }
        }
        Selector::ComposeProjectPrefix(_) | Selector::ComposeProject(_) => {
            let pattern = selector.project_pattern().map(|pattern| fill_run(&pattern)).unwrap_or_default();
            labels.get(COMPOSE_PROJECT_LABEL).is_some_and(|project| compose_project_matches(&pattern, project))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    #[test]
    fn selectors_claim_by_label_template_and_project_prefix() {
        let label = Selector::Label("bench.owner={run_id}.{task}".into());
        let labelled = labels(&[("bench.owner", "20261129-2304-k3f9.two")]);
        assert!(template_claims(&label, &labelled, None));
        assert!(template_claims(&label, &labelled, Some("20261129-2304-k3f9")));
        assert!(!template_claims(&label, &labelled, Some("20261129-2304-zzzz")));
        let prefix = Selector::ComposeProjectPrefix("tb-{run_id}".into());
        let project = labels(&[(COMPOSE_PROJECT_LABEL, "tb-r1-hello")]);
        assert!(template_claims(&prefix, &project, None));
        assert!(template_claims(&prefix, &project, Some("r1")));
        assert!(!template_claims(&prefix, &project, Some("r2")));
        // Terminal-Bench's project: `{task}.{attempt}-of-{attempts}.{its run id}`, dots as dashes.
        let terminal_bench = Selector::ComposeProject("{task}-*-of-*-{run_id}-{task}".into());
        let project = labels(&[(COMPOSE_PROJECT_LABEL, "hello-1-of-1-r1-hello")]);
        assert!(template_claims(&terminal_bench, &project, None));
        assert!(template_claims(&terminal_bench, &project, Some("r1")));
        assert!(!template_claims(&terminal_bench, &project, Some("r2")));
    }

    #[test]
    fn claims_cover_owner_labels_label_selectors_and_project_prefixes() {
        let claims = Claims {
            run_id: "r1".into(),
            task_id: Some("a".into()),
            selectors: vec![Selector::Label("mine=yes".into()), Selector::ComposeProjectPrefix("tb-r1-a".into())],
        };
        assert!(claims.claims_labels(&labels(&[(LABEL_RUN, "r1"), (LABEL_TASK, "a")])));
        assert!(!claims.claims_labels(&labels(&[(LABEL_RUN, "r1"), (LABEL_TASK, "b")])));
        assert!(claims.claims_labels(&labels(&[("mine", "yes")])));
        assert!(claims.claims_labels(&labels(&[(COMPOSE_PROJECT_LABEL, "tb-r1-a-web")])));
        assert!(!claims.claims_labels(&labels(&[(COMPOSE_PROJECT_LABEL, "tb-r2-a")])));
    }

    #[test]
    fn an_unlabelled_resource_has_no_owner_and_another_hosts_run_counts_as_alive() {
        assert_eq!(LabelledOwner::column(&labels(&[])), "-");
        assert_eq!(protected_by_live_run(&labels(&[]), &[], "here"), None);
        let elsewhere = labels(&[(LABEL_RUN, "r9"), (LABEL_HOST, "elsewhere"), (LABEL_PID, "1")]);
        assert!(protected_by_live_run(&elsewhere, &[], "here").is_some());
    }
}
