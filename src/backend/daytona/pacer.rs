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
    /// Calls started so far: an answer's `Remaining` has counted the calls
    /// started before it (the server takes them in order), not those after.
    started: u64,
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
                let reset = header("x-ratelimit-reset-").unwrap_or(1.0).clamp(0.0, 3600.0);
                let reset_at = Instant::now() + Duration::from_secs_f64(reset);
                // The server counted this call and those before it; the ones started since will count too.
                let fresh = remaining as i64 - (throttle.started - permit.number) as i64;
                throttle.budget = Some(match throttle.budget {
                    // Our own count is exact unless someone else spends the same budget (another
                    // machine of the organisation); the answer's count is off by at most the calls
                    // in flight, which the server may take out of order. Only a larger gap says so.
                    Some((known, known_reset)) => {
                        let spent_elsewhere = fresh + (throttle.in_flight as i64) < known;
                        (if spent_elsewhere { fresh } else { known }, known_reset.min(reset_at))
                    }
                    None => (fresh, reset_at),
                });
                if permit.probe {
                    throttle.probing = false;
                }
            }
        }
        drop(throttles);
        self.changed.notify_waiters();
    }
}

pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("retry-after"))
        .filter_map(|(_, value)| value.to_str().ok()?.trim().parse::<f64>().ok())
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
        // Someone else spent 5 of the same budget: the gap exceeds what is in flight.
        pacer.observe(&mut permits[1], &rate_headers("t", 2, 60));
        assert_eq!(pacer.lock()["t"].budget.map(|(remaining, _)| remaining), Some(-1));
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

    #[test]
    fn the_longest_retry_after_wins() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after-sandbox-lifecycle", "2".parse().unwrap());
        headers.insert("retry-after-authenticated", "5".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(5)));
    }
}
