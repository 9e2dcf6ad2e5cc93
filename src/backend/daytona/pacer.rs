//! Pacing of our calls by the API's rate-limit headers
//! (`X-RateLimit-Remaining-*`, `X-RateLimit-Reset-*`), so that 429s are the
//! exception and not the plan, and the reading of a 429's
//! `Retry-After-<throttler>`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One throttler as the rate-limit headers describe it, and our calls
/// against it.
#[derive(Debug, Default)]
struct Throttle {
    /// Calls we may still start, and when the server's window ends (an upper
    /// bound: the headers give whole seconds, rounded up). `None` while
    /// unknown: before the first answer, and once a window has ended.
    budget: Option<(i64, Instant)>,
    /// Calls started so far.
    started: u64,
    /// The probe's place and the `Remaining` it was answered with: the
    /// reference that tells another client's spending from our own calls
    /// arriving out of order. `None` when the budget came from elsewhere.
    reference: Option<(u64, i64)>,
    /// Calls started and not answered yet.
    in_flight: u64,
    /// Counts ended windows: an answer to a call started in an earlier one
    /// says nothing about the current window.
    epoch: u64,
    /// While the budget is unknown, one call goes out to learn it; the
    /// others wait for its answer instead of bursting into a 429.
    probing: bool,
    /// The answers carry no headers for this throttler: nothing to pace by.
    unlimited: bool,
}

/// Paces calls from the `X-RateLimit-Remaining-*`/`X-RateLimit-Reset-*`
/// headers so that 429s are the exception: calls started after the one
/// answered count against the budget its answer reports, a spent budget waits for the window's end,
/// and a new window is probed by one call before the others follow.
#[derive(Default)]
pub(super) struct Pacer {
    throttles: Mutex<BTreeMap<String, Throttle>>,
    changed: tokio::sync::Notify,
}

/// One call's place in a throttler's budget; gives it back when dropped.
pub(super) struct Permit<'a> {
    pacer: &'a Pacer,
    throttler: String,
    epoch: u64,
    /// The throttle's `started` count with this call.
    number: u64,
    probe: bool,
    answered: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut throttles = self.pacer.lock();
        if let Some(throttle) = throttles.get_mut(&self.throttler) {
            throttle.in_flight = throttle.in_flight.saturating_sub(1);
            // A probe that got no answer (a connection error) learned nothing: let another try.
            if self.probe && !self.answered && throttle.epoch == self.epoch {
                throttle.probing = false;
            }
        }
        drop(throttles);
        self.pacer.changed.notify_waiters();
    }
}

impl Pacer {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Throttle>> {
        self.throttles.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `throttler` has budget for one more call.
    pub(super) async fn acquire(&self, throttler: &str) -> Permit<'_> {
        loop {
            // Registered before the state is read, so no wake-up is missed.
            let changed = self.changed.notified();
            let wait = {
                let mut throttles = self.lock();
                let throttle = throttles.entry(throttler.to_string()).or_default();
                let now = Instant::now();
                if throttle.budget.is_some_and(|(_, reset_at)| now >= reset_at) {
                    throttle.budget = None;
                    throttle.reference = None;
                    throttle.epoch += 1;
                    throttle.probing = false;
                }
                let probe = match throttle.budget.as_mut() {
                    _ if throttle.unlimited => Some(false),
                    Some((remaining, _)) if *remaining > 0 => {
                        *remaining -= 1;
                        Some(false)
                    }
                    Some(_) => None,
                    None if !throttle.probing => {
                        throttle.probing = true;
                        Some(true)
                    }
                    None => None,
                };
                match probe {
                    Some(probe) => {
                        throttle.started += 1;
                        throttle.in_flight += 1;
                        return Permit {
                            pacer: self,
                            throttler: throttler.to_string(),
                            epoch: throttle.epoch,
                            number: throttle.started,
                            probe,
                            answered: false,
                        };
                    }
                    // Until the window ends, or until an answer changes what we know.
                    None => throttle.budget.map(|(_, reset_at)| reset_at),
                }
            };
            let until = wait.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = changed => {}
            }
        }
    }

    /// Learns from an answer to the call `permit` let through.
    pub(super) fn observe(&self, permit: &mut Permit<'_>, headers: &reqwest::header::HeaderMap) {
        permit.answered = true;
        let throttler = permit.throttler.as_str();
        let header = |prefix: &str| {
            headers
                .get(format!("{prefix}{throttler}"))
                .and_then(|value| value.to_str().ok()?.trim().parse::<f64>().ok())
        };
        let mut throttles = self.lock();
        let throttle = throttles.entry(throttler.to_string()).or_default();
        match header("x-ratelimit-remaining-") {
            None => {
                throttle.unlimited = true;
                if permit.probe {
                    throttle.probing = false;
                }
            }
            Some(_) if permit.epoch != throttle.epoch => {}
            Some(remaining) => {
                throttle.unlimited = false;
                let reset_at = Instant::now() + reset_seconds(header("x-ratelimit-reset-"));
                let remaining = remaining as i64;
                match throttle.budget {
                    Some((known, known_reset)) => {
                        let spent = spent_elsewhere(throttle.reference, remaining, throttle.started);
                        // Another client spends the same budget: trust the server, less our calls
                        // that may not have reached it yet.
                        let known = if spent { known.min(remaining - throttle.in_flight as i64) } else { known };
                        throttle.budget = Some((known, known_reset.min(reset_at)));
                    }
                    None => {
                        // The calls started since this one will count too.
                        throttle.budget = Some((remaining - (throttle.started - permit.number) as i64, reset_at));
                        throttle.reference = permit.probe.then_some((permit.number, remaining));
                    }
                }
                if permit.probe {
                    throttle.probing = false;
                }
            }
        }
        drop(throttles);
        self.changed.notify_waiters();
    }
}

/// Whether the server counted more calls since the probe than we started
/// since: only another client spending the same budget explains that. Our
/// own calls reach the server in any order, so no single answer says more.
fn spent_elsewhere(reference: Option<(u64, i64)>, remaining: i64, started: u64) -> bool {
    let Some((probe, probe_remaining)) = reference else { return false };
    let counted_since = probe_remaining - remaining;
    counted_since > (started - probe) as i64
}

/// A `X-RateLimit-Reset-*` value as a wait: whole or fractional seconds, at
/// most an hour; one second when missing or not a finite number (`nan`,
/// `inf`, text), as a window of the usual length.
fn reset_seconds(value: Option<f64>) -> Duration {
    match value {
        Some(seconds) if seconds.is_finite() => Duration::from_secs_f64(seconds.clamp(0.0, 3600.0)),
        _ => Duration::from_secs(1),
    }
}

/// The longest `Retry-After-<throttler>` (or plain `Retry-After`) of a 429,
/// in seconds, at most an hour; values that are not finite numbers (`nan`,
/// `inf`, `1e309`, text, an HTTP date) are left out, so the retry policy's
/// own backoff applies.
pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("retry-after"))
        .filter_map(|(_, value)| value.to_str().ok()?.trim().parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite())
        .fold(None, |longest: Option<f64>, seconds| Some(longest.map_or(seconds, |longest| longest.max(seconds))))
        .map(|seconds| Duration::from_secs_f64(seconds.clamp(0.0, 3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate_headers(throttler: &str, remaining: i64, reset: u64) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        let name = |prefix: &str| reqwest::header::HeaderName::from_bytes(format!("{prefix}{throttler}").as_bytes());
        headers.insert(name("x-ratelimit-remaining-").unwrap(), remaining.to_string().parse().unwrap());
        headers.insert(name("x-ratelimit-reset-").unwrap(), reset.to_string().parse().unwrap());
        headers
    }

    /// Whether `acquire` would wait (for at least 10 ms of paused time).
    async fn waits(pacer: &Pacer, throttler: &str) -> bool {
        tokio::time::timeout(Duration::from_millis(10), pacer.acquire(throttler)).await.is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_probes_a_window_spends_its_budget_and_waits_for_the_reset() {
        let pacer = Pacer::default();
        let mut probe = pacer.acquire("lifecycle").await;
        assert!(probe.probe, "the first call learns the budget");
        assert!(waits(&pacer, "lifecycle").await, "nobody bursts while the probe is out");
        assert!(!waits(&pacer, "other").await, "throttlers are paced apart");
        pacer.observe(&mut probe, &rate_headers("lifecycle", 3, 1));
        drop(probe);
        let spent =
            [pacer.acquire("lifecycle").await, pacer.acquire("lifecycle").await, pacer.acquire("lifecycle").await];
        assert!(spent.iter().all(|permit| !permit.probe));
        assert!(waits(&pacer, "lifecycle").await, "the budget is spent");
        let before = Instant::now();
        let next = pacer.acquire("lifecycle").await;
        assert!(before.elapsed() >= Duration::from_millis(900), "waited for the window's end");
        assert!(next.probe, "a new window is probed before the others follow");
        drop(spent);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_count_the_calls_started_after_them_and_others_spending() {
        let pacer = Pacer::default();
        let mut probe = pacer.acquire("t").await;
        pacer.observe(&mut probe, &rate_headers("t", 10, 60));
        drop(probe);
        let mut permits: Vec<Permit> = Vec::new();
        for _ in 0..5 {
            permits.push(pacer.acquire("t").await);
        }
        // The first answer: the server counted it (10 → 9), not the four started after it.
        pacer.observe(&mut permits[0], &rate_headers("t", 9, 60));
        assert_eq!(pacer.lock()["t"].budget.map(|(remaining, _)| remaining), Some(5));
        // Out of order by one (the server took the third before the second): no change.
        pacer.observe(&mut permits[2], &rate_headers("t", 8, 60));
        assert_eq!(pacer.lock()["t"].budget.map(|(remaining, _)| remaining), Some(5));
        // Answered last after all the others reached the server: it says 5 were counted, as
        // many as we started since the probe; nothing new.
        pacer.observe(&mut permits[4], &rate_headers("t", 5, 60));
        assert_eq!(pacer.lock()["t"].budget.map(|(remaining, _)| remaining), Some(5));
        // Someone else spent 5 of the same budget: the server counted 8 since the probe, and we
        // started 5. Trust the server, less what of ours may not have reached it: 2 - 5 in flight.
        pacer.observe(&mut permits[1], &rate_headers("t", 2, 60));
        assert_eq!(pacer.lock()["t"].budget.map(|(remaining, _)| remaining), Some(-3));
        assert!(waits(&pacer, "t").await);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_answers_failed_probes_and_missing_headers() {
        let pacer = Pacer::default();
        let mut probe = pacer.acquire("t").await;
        pacer.observe(&mut probe, &rate_headers("t", 1, 1));
        drop(probe);
        let mut old = pacer.acquire("t").await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut fresh = pacer.acquire("t").await;
        assert!(fresh.probe, "the window ended: probe the next");
        // An answer to a call of the ended window says nothing about this one.
        pacer.observe(&mut old, &rate_headers("t", 0, 1));
        pacer.observe(&mut fresh, &rate_headers("t", 50, 1));
        drop((old, fresh));
        assert!(!waits(&pacer, "t").await, "the stale zero was ignored");

        // A probe that got no answer lets another call probe.
        let lost = pacer.acquire("u").await;
        assert!(waits(&pacer, "u").await);
        drop(lost);
        let mut second = pacer.acquire("u").await;
        assert!(second.probe);
        // No rate-limit headers at all: nothing to pace by.
        pacer.observe(&mut second, &reqwest::header::HeaderMap::new());
        let held: Vec<Permit> = futures_util::future::join_all((0..100).map(|_| pacer.acquire("u"))).await;
        assert!(held.iter().all(|permit| !permit.probe));
        drop(second);
    }

    fn headers_with(name: &str, value: &str) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        if let (Ok(name), Ok(value)) =
            (reqwest::header::HeaderName::from_bytes(name.as_bytes()), reqwest::header::HeaderValue::from_str(value))
        {
            headers.insert(name, value);
        }
        headers
    }

    proptest::proptest! {
        /// No answer of a server may panic benchwarden: any header value gives a wait of at most an hour.
        #[test]
        fn any_retry_after_or_reset_is_a_bounded_wait(value in ".*", number in proptest::num::f64::ANY) {
            for text in [value.clone(), number.to_string(), format!("{number:e}")] {
                let wait = retry_after(&headers_with("retry-after-sandbox-lifecycle", &text));
                proptest::prop_assert!(wait.is_none_or(|wait| wait <= Duration::from_secs(3600)));
                let reset = text.trim().parse::<f64>().ok();
                proptest::prop_assert!(reset_seconds(reset) <= Duration::from_secs(3600));
            }
        }
    }

    #[test]
    fn nonsense_waits_fall_back_to_the_policy() {
        for text in ["nan", "NaN", "inf", "-inf", "1e309", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", ""] {
            let wait = retry_after(&headers_with("retry-after-authenticated", text));
            assert!(wait.is_none(), "{text}: {wait:?}");
        }
        assert_eq!(retry_after(&headers_with("retry-after", "-1")), Some(Duration::ZERO));
        assert_eq!(reset_seconds(Some(f64::NAN)), Duration::from_secs(1));
        assert_eq!(reset_seconds(Some(1e12)), Duration::from_secs(3600));
    }

    #[test]
    fn the_longest_retry_after_wins() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after-sandbox-lifecycle", "2".parse().unwrap());
        headers.insert("retry-after-authenticated", "5".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(5)));
    }
}
