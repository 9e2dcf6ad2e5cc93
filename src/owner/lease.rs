//! Leases: how machines that share one Daytona organisation tell a lost
//! machine's sandboxes from a live one's, with no coordinator. A live run
//! keeps `benchwarden.lease-until=<unix seconds>` on every sandbox it owns,
//! stamped at creation and renewed every third of the lease. A sandbox whose
//! owner labels name another host and whose lease ended more than a grace
//! ago (for clock skew) is free for any machine to collect; one with a
//! current lease, or with no lease label at all, never is by this rule.
//!
//! All of it is pure: the times are Unix seconds given by the caller.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{LabelledOwner, LABEL_RUN};

/// The lease label.
pub(crate) const LABEL_LEASE: &str = "benchwarden.lease-until";
/// How long a lease lasts unless the benchmark file's `daytona.lease` says otherwise.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(600);
/// How long after its end a lease still protects: clocks of machines differ.
pub(crate) const DEFAULT_LEASE_GRACE: Duration = Duration::from_secs(120);

/// The end of the lease these labels carry; `None` without a readable one.
pub(crate) fn lease_until(labels: &BTreeMap<String, String>) -> Option<i64> {
    labels.get(LABEL_LEASE)?.trim().parse().ok()
}

/// A lease that lasts `lease` from `now`, as the label's value. `now` is in
/// whole seconds, rounded down: one more second keeps the lease from ending
/// before `lease` has passed.
pub(crate) fn lease_label(now: i64, lease: Duration) -> (String, String) {
    let until = now.saturating_add(i64::try_from(lease.as_secs()).unwrap_or(i64::MAX)).saturating_add(1);
    (LABEL_LEASE.to_string(), until.to_string())
}

/// How often a live run renews: every third of the lease, so that two
/// renewals in a row may fail (each retried at half a period, see
/// [`retry_after_failure`]) before the lease ends.
pub(crate) fn renewal_period(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_secs(1))
}

/// When to try again after a renewal round that failed: half a period, so
/// that a lease renewed at `t` is renewed again by `t + 2/3` of the lease
/// even when the rounds at a third and at a half of it both fail.
pub(crate) fn retry_after_failure(lease: Duration) -> Duration {
    (renewal_period(lease) / 2).max(Duration::from_millis(500))
}

/// Whether a run renewing leases of `lease` should renew this one now: it
/// has none, or it was last renewed half a period ago or more. A longer
/// lease (a kept sandbox's) is left as it is.
pub(crate) fn needs_renewal(labels: &BTreeMap<String, String>, now: i64, lease: Duration) -> bool {
    let Some(until) = lease_until(labels) else { return true };
    let fresh = i64::try_from((lease - renewal_period(lease) / 2).as_secs()).unwrap_or(i64::MAX);
    until <= now.saturating_add(fresh)
}

/// The labels with the lease renewed: the others kept as they are, since
/// the API replaces a sandbox's labels whole.
pub(crate) fn renewed(labels: &BTreeMap<String, String>, now: i64, lease: Duration) -> BTreeMap<String, String> {
    let mut renewed = labels.clone();
    let (key, value) = lease_label(now, lease);
    renewed.insert(key, value);
    renewed
}

/// A sandbox another machine left: whose, and until when it was leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExpiredLease {
    pub(crate) host: String,
    pub(crate) run_id: String,
    pub(crate) until: i64,
}

impl ExpiredLease {
    /// As sweeps report it.
    pub(crate) fn reason(&self) -> String {
        format!("lease expired (host {}, run {})", self.host, self.run_id)
    }
}

/// Whether these labels make a sandbox free for this machine to collect:
/// another host's run owns it and its lease ended more than `grace` ago.
pub(crate) fn expired_elsewhere(
    labels: &BTreeMap<String, String>,
    this_host: &str,
    now: i64,
    grace: Duration,
) -> Option<ExpiredLease> {
    let owner = LabelledOwner::from_labels(labels)?;
    let host = owner.host.filter(|host| host != this_host)?;
    let until = lease_until(labels)?;
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    (until.saturating_add(grace) < now).then_some(ExpiredLease { host, run_id: owner.run_id, until })
}

/// The label a run's sandboxes all carry, for listing them to renew.
pub(crate) fn run_filter(run_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_RUN.to_string(), run_id.to_string())])
}

#[cfg(test)]
mod tests {
    use super::super::LABEL_HOST;
    use super::*;

    const TEN_MINUTES: Duration = Duration::from_secs(600);

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    #[test]
    fn only_another_hosts_lease_past_its_grace_is_free_to_collect() {
        let grace = Duration::from_secs(120);
        let theirs = labels(&[(LABEL_RUN, "r1"), (LABEL_HOST, "a"), (LABEL_LEASE, "1000")]);
        assert_eq!(expired_elsewhere(&theirs, "b", 1000, grace), None, "current");
        assert_eq!(expired_elsewhere(&theirs, "b", 1120, grace), None, "within the grace");
        let expired = expired_elsewhere(&theirs, "b", 1121, grace).unwrap();
        assert_eq!(expired.reason(), "lease expired (host a, run r1)");
        assert_eq!(expired_elsewhere(&theirs, "a", 9999, grace), None, "this host's own: the pid rules judge");
        let no_lease = labels(&[(LABEL_RUN, "r1"), (LABEL_HOST, "a")]);
        assert_eq!(expired_elsewhere(&no_lease, "b", 9999, grace), None, "no lease: today's rules");
        let unreadable = labels(&[(LABEL_RUN, "r1"), (LABEL_HOST, "a"), (LABEL_LEASE, "soon")]);
        assert_eq!(expired_elsewhere(&unreadable, "b", 9999, grace), None);
        let no_host = labels(&[(LABEL_RUN, "r1"), (LABEL_LEASE, "1")]);
        assert_eq!(expired_elsewhere(&no_host, "b", 9999, grace), None);
        let far_future = labels(&[(LABEL_RUN, "r1"), (LABEL_HOST, "a"), (LABEL_LEASE, &i64::MAX.to_string())]);
        assert_eq!(expired_elsewhere(&far_future, "b", i64::MAX, Duration::MAX), None, "no overflow");
    }

    #[test]
    fn a_lease_is_renewed_every_third_and_two_failed_rounds_do_not_let_it_lapse() {
        let period = renewal_period(TEN_MINUTES).as_secs() as i64;
        assert_eq!(period, 200);
        let (_, until) = lease_label(0, TEN_MINUTES);
        let stamped = labels(&[(LABEL_LEASE, &until)]);
        assert!(!needs_renewal(&stamped, 100, TEN_MINUTES), "renewed under half a period ago");
        assert!(needs_renewal(&stamped, 101, TEN_MINUTES));
        assert!(needs_renewal(&labels(&[]), 0, TEN_MINUTES), "no lease yet");
        // Renewed at 0; the rounds at one period and after a half-period retry fail; the next one
        // comes before the lease ends.
        let retry = retry_after_failure(TEN_MINUTES).as_secs() as i64;
        assert!(period + retry + retry < 600, "two failed rounds would let it lapse");
        // A kept sandbox's lease of a day is left alone by a run renewing ten-minute ones.
        let kept = labels(&[(LABEL_LEASE, "86400")]);
        assert!(!needs_renewal(&kept, 1000, TEN_MINUTES));
    }

    #[test]
    fn renewing_keeps_every_other_label() {
        let before = labels(&[(LABEL_RUN, "r1"), ("code-toolbox-language", "python"), (LABEL_LEASE, "5")]);
        let after = renewed(&before, 100, TEN_MINUTES);
        assert_eq!(after.len(), 3);
        assert_eq!(after["code-toolbox-language"], "python");
        assert_eq!(lease_until(&after), Some(701));
    }
}
