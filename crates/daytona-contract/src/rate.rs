//! The throttlers and their rate windows.
//!
//! Rate limits count per minute but cannot be gamed with bursts: a limit `L`
//! per minute is enforced as `L` per fixed 60 s window *and* `ceil(L / 60)`
//! per fixed 1 s window (both counted from the server's start), so 6,000 a
//! minute allows about 100 a second. Each response carries
//! `X-RateLimit-Limit-{name}`, `X-RateLimit-Remaining-{name}` and
//! `X-RateLimit-Reset-{name}` for every throttler with a limit on its route;
//! `Remaining` and `Reset` describe whichever window is tighter. A 429 adds
//! `Retry-After-{name}`: the seconds (at least 1) until the exhausted window
//! ends. Refused requests do not count. Which throttlers apply to a route is
//! `routing`'s call.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::{
    ContractConfig, AUTHENTICATED_LIMIT_PER_MINUTE, THROTTLER_AUTHENTICATED, THROTTLER_CREATE, THROTTLER_LIFECYCLE,
};

/// The windows of every throttler, counted from the server's start.
pub(crate) struct Throttles {
    started: Instant,
    windows: BTreeMap<&'static str, Windows>,
}

/// One throttler's fixed windows: (minute index, used), (second index, used).
#[derive(Default, Clone, Copy)]
struct Windows {
    minute: (u64, u32),
    second: (u64, u32),
}

struct WindowCheck {
    remaining: u32,
    /// Seconds until the tighter window ends.
    reset: u64,
    /// Seconds until every exhausted window has ended (meaningful when remaining is 0).
    retry_after: u64,
}

/// What the throttlers of a route say about one request.
pub(crate) enum Admission {
    /// Counted in every throttler; the rate-limit headers of the answer.
    Admitted(Vec<(String, String)>),
    /// Refused (and counted nowhere): the headers of the 429, and the
    /// throttlers that refused.
    Refused { headers: Vec<(String, String)>, refused: Vec<&'static str> },
}

/// A throttler's limit per minute under `config`; `None` for no limit.
fn limit_of(config: &ContractConfig, name: &str) -> Option<u32> {
    match name {
        THROTTLER_AUTHENTICATED => Some(AUTHENTICATED_LIMIT_PER_MINUTE),
        THROTTLER_CREATE => config.create_limit_per_minute,
        THROTTLER_LIFECYCLE => config.lifecycle_limit_per_minute,
        _ => None,
    }
}

impl Throttles {
    pub(crate) fn new() -> Throttles {
        Throttles { started: Instant::now(), windows: BTreeMap::new() }
    }

    /// Checks every throttler of `names` that has a limit; when none is
    /// exhausted, counts the request in all of them.
    pub(crate) fn admit(&mut self, names: &[&'static str], config: &ContractConfig, now: Instant) -> Admission {
        let mut refused: Vec<(&'static str, u64)> = Vec::new();
        let mut checks = Vec::new();
        for &name in names {
            let Some(limit) = limit_of(config, name) else { continue };
            let check = self.check(name, limit, now);
            if check.remaining == 0 {
                refused.push((name, check.retry_after));
            }
            checks.push((name, limit, check));
        }
        if !refused.is_empty() {
            let mut headers: Vec<(String, String)> =
                checks.iter().flat_map(|(name, limit, check)| rate_headers(name, *limit, check)).collect();
            for (name, retry_after) in &refused {
                headers.push((format!("Retry-After-{name}"), retry_after.to_string()));
            }
            return Admission::Refused { headers, refused: refused.into_iter().map(|(name, _)| name).collect() };
        }
        let mut headers = Vec::new();
        for (name, limit, _) in &checks {
            let check = self.consume(name, *limit, now);
            headers.extend(rate_headers(name, *limit, &check));
        }
        Admission::Admitted(headers)
    }

    fn current(&mut self, name: &'static str, now: Instant) -> (Windows, Duration) {
        let elapsed = now.saturating_duration_since(self.started);
        let minute = elapsed.as_secs() / 60;
        let second = elapsed.as_secs();
        let windows = self.windows.entry(name).or_default();
        if windows.minute.0 != minute {
            windows.minute = (minute, 0);
        }
        if windows.second.0 != second {
            windows.second = (second, 0);
        }
        (*windows, elapsed)
    }

    fn check(&mut self, name: &'static str, limit: u32, now: Instant) -> WindowCheck {
        let (windows, elapsed) = self.current(name, now);
        window_check(windows, elapsed, limit)
    }

    fn consume(&mut self, name: &'static str, limit: u32, now: Instant) -> WindowCheck {
        let (_, elapsed) = self.current(name, now);
        let windows = self.windows.get_mut(name).expect("windows exist");
        windows.minute.1 += 1;
        windows.second.1 += 1;
        window_check(*windows, elapsed, limit)
    }
}

fn rate_headers(name: &str, limit: u32, check: &WindowCheck) -> [(String, String); 3] {
    [
        (format!("X-RateLimit-Limit-{name}"), limit.to_string()),
        (format!("X-RateLimit-Remaining-{name}"), check.remaining.to_string()),
        (format!("X-RateLimit-Reset-{name}"), check.reset.to_string()),
    ]
}

fn window_check(windows: Windows, elapsed: Duration, limit: u32) -> WindowCheck {
    let per_second = limit.div_ceil(60).max(1);
    let minute_left = limit.saturating_sub(windows.minute.1);
    let second_left = per_second.saturating_sub(windows.second.1);
    let secs_to = |end: Duration| -> u64 { end.saturating_sub(elapsed).as_secs_f64().ceil().max(1.0) as u64 };
    let minute_end = Duration::from_secs((windows.minute.0 + 1) * 60);
    let second_end = Duration::from_secs(windows.second.0 + 1);
    let (remaining, reset) =
        if minute_left < second_left { (minute_left, secs_to(minute_end)) } else { (second_left, secs_to(second_end)) };
    let mut retry_after = 1;
    if minute_left == 0 {
        retry_after = retry_after.max(secs_to(minute_end));
    }
    if second_left == 0 {
        retry_after = retry_after.max(secs_to(second_end));
    }
    WindowCheck { remaining, reset, retry_after }
}
