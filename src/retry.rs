//! Retry policy and exponential backoff with jitter. Each backend sorts its
//! errors into an [`ErrorClass`] once (by implementing [`Classify`]); this
//! module decides what to do with a class, and tells of every retry as an
//! event.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use backon::{ExponentialBuilder, Retryable};

pub use crate::errors::ErrorClass;
pub(crate) use crate::events::Call;
use crate::events::{Event, Events};

/// Implemented once per backend error type: the single place where errors
/// are sorted into classes.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

/// An error type that can express "this single call took too long".
pub trait CallTimeout {
    fn call_timed_out(after: Duration) -> Self;
}

/// How many server-dictated waits (a 429 with `Retry-After`) one operation
/// takes at most on top of its retries; the deadline comes first in practice.
const THROTTLED_RETRIES_MAX: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    pub first_delay: Duration,
    pub factor: f32,
    pub max_delay: Duration,
    pub jitter: bool,
    /// Bound on one call to the backend.
    pub call_timeout: Duration,
    /// Bound on the whole operation, retries included.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            first_delay: Duration::from_secs(2),
            factor: 2.0,
            max_delay: Duration::from_secs(30),
            jitter: true,
            call_timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(300),
        }
    }
}

/// How an operation under retry ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Success<T> {
    /// The operation did it.
    Done(T),
    /// Someone else had done it already (the error was classified `Done`).
    AlreadyDone,
}

/// How an operation under retry ended badly.
#[derive(Debug)]
pub(crate) struct Failure<E> {
    pub(crate) error: E,
    pub(crate) attempts: u32,
    pub(crate) class: ErrorClass,
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_factor(self.factor)
            .with_max_delay(self.max_delay)
            // Waits the server dictates do not count against `retries` (see `run`); the deadline bounds them.
            .with_max_times((self.retries as usize).saturating_add(THROTTLED_RETRIES_MAX));
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// Lets one call take `duration` (a graceful stop's timeout) plus a margin.
    pub(crate) fn allowing_calls_of(mut self, duration: Option<Duration>) -> Self {
        if let Some(duration) = duration {
            self.call_timeout = self.call_timeout.max(duration + Duration::from_secs(30));
        }
        self
    }

    /// Runs `operation` until it succeeds, reaches a `Done`, `Fatal` or
    /// `Denied` error, runs out of retries, or would pass the deadline.
    /// A failure whose server said how long to wait (a 429 with
    /// `Retry-After`) is waited out without spending a retry: under a shared
    /// rate limit every caller meets 429s, and spending retries on them made
    /// removals fail that only had to wait their turn. Each retry is told as
    /// an event about `call`, its allowed attempts counting those waits.
    pub(crate) async fn run<T, E, F, Fut>(
        &self,
        call: Call<'_>,
        events: &Events,
        mut operation: F,
    ) -> Result<(Success<T>, u32), Failure<E>>
    where
        E: Classify + CallTimeout + Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let budget = Budget::of(self);
        let call_timeout = self.call_timeout;
        let outcome = (|| {
            budget.attempts.fetch_add(1, Ordering::Relaxed);
            let call = operation();
            async move {
                match tokio::time::timeout(call_timeout, call).await {
                    Ok(result) => result,
                    Err(_) => Err(E::call_timed_out(call_timeout)),
                }
            }
        })
        .retry(self.backoff())
        .sleep(tokio::time::sleep)
        .when(|error: &E| budget.allows(error.class()))
        .adjust(|error: &E, proposed| budget.delay(error.class(), proposed?))
        .notify(|error: &E, delay| {
            let (attempt, attempts) = budget.told();
            let error = error.to_string();
            events.emit(Event::Retrying { call, attempt, attempts, error: &error, delay });
        })
        .await;
        let attempts = budget.attempts.load(Ordering::Relaxed);
        match outcome {
            Ok(value) => Ok((Success::Done(value), attempts)),
            Err(error) => match error.class() {
                ErrorClass::Done => Ok((Success::AlreadyDone, attempts)),
                class => Err(Failure { error, attempts, class }),
            },
        }
    }
}

/// One operation's retries as they are spent: calls made, failures that
/// count against `retries`, and waits the server dictated (which do not).
struct Budget<'a> {
    policy: &'a RetryPolicy,
    started: Instant,
    attempts: AtomicU32,
    counted: AtomicU32,
    throttled: AtomicU32,
}

impl<'a> Budget<'a> {
    fn of(policy: &'a RetryPolicy) -> Self {
        let zero = || AtomicU32::new(0);
        Budget { policy, started: Instant::now(), attempts: zero(), counted: zero(), throttled: zero() }
    }

    /// Whether a failure of `class` is tried again.
    fn allows(&self, class: ErrorClass) -> bool {
        match class {
            ErrorClass::Retryable { wait: Some(_) } => {
                self.throttled.fetch_add(1, Ordering::Relaxed);
                true
            }
            ErrorClass::Retryable { wait: None } => self.counted.fetch_add(1, Ordering::Relaxed) < self.policy.retries,
            _ => false,
        }
    }

    /// The wait before the next try: the server's, else the backoff's
    /// `proposed`; `None` when it would pass the deadline.
    fn delay(&self, class: ErrorClass, proposed: Duration) -> Option<Duration> {
        let delay = match class {
            ErrorClass::Retryable { wait: Some(wait) } => wait,
            _ => proposed,
        };
        (self.started.elapsed() + delay <= self.policy.deadline).then_some(delay)
    }

    /// The attempt just failed, and how many are allowed so far (each
    /// server-dictated wait adds one).
    fn told(&self) -> (u32, u32) {
        let allowed = self.policy.retries + 1 + self.throttled.load(Ordering::Relaxed);
        (self.attempts.load(Ordering::Relaxed), allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum TestError {
        Gone,
        Flaky,
        Denied,
        Slow,
        Throttled(Duration),
    }

    impl Display for TestError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Classify for TestError {
        fn class(&self) -> ErrorClass {
            match self {
                TestError::Gone => ErrorClass::Done,
                TestError::Flaky | TestError::Slow => ErrorClass::Retryable { wait: None },
                TestError::Throttled(wait) => ErrorClass::Retryable { wait: Some(*wait) },
                TestError::Denied => ErrorClass::Fatal,
            }
        }
    }

    impl CallTimeout for TestError {
        fn call_timed_out(_: Duration) -> Self {
            TestError::Slow
        }
    }

    use crate::errors::Service;

    const OP: Call<'static> = Call { what: "op", service: Service::Docker, kind: None };

    fn instant_policy(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            first_delay: Duration::ZERO,
            factor: 2.0,
            max_delay: Duration::ZERO,
            jitter: false,
            call_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let result = instant_policy(3)
            .run(OP, &Events::discard(), || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(TestError::Flaky)
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!(result, (Success::Done(7), 3));
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let calls = AtomicU32::new(0);
        let failure = instant_policy(3)
            .run(OP, &Events::discard(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(TestError::Flaky)
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(failure.attempts, 4);
        assert!(matches!(failure.error, TestError::Flaky));
    }

    #[tokio::test]
    async fn done_means_already_done_without_retry() {
        let calls = AtomicU32::new(0);
        let result = instant_policy(3)
            .run(OP, &Events::discard(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(TestError::Gone)
            })
            .await
            .unwrap();
        assert_eq!(result, (Success::AlreadyDone, 1));
    }

    #[tokio::test]
    async fn fatal_errors_stop_at_once() {
        let calls = AtomicU32::new(0);
        let failure = instant_policy(3)
            .run(OP, &Events::discard(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(TestError::Denied)
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(failure.class, ErrorClass::Fatal);
    }

    #[tokio::test]
    async fn a_call_that_hangs_is_cut_off_and_retried() {
        let calls = AtomicU32::new(0);
        let mut policy = instant_policy(1);
        policy.call_timeout = Duration::from_millis(20);
        let result = policy
            .run(OP, &Events::discard(), || {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, TestError>(1)
                }
            })
            .await
            .unwrap();
        assert_eq!(result, (Success::Done(1), 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_dictated_wait_is_honoured_and_the_deadline_bounds_it() {
        let mut policy = instant_policy(5);
        policy.deadline = Duration::from_secs(10);
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let failure = policy
            .run(OP, &Events::discard(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(TestError::Throttled(Duration::from_secs(4)))
            })
            .await
            .unwrap_err();
        // 0 s, 4 s, 8 s; a fourth try at 12 s would pass the 10 s deadline.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(started.elapsed(), Duration::from_secs(8));
        assert!(matches!(failure.error, TestError::Throttled(_)));
    }

    /// Under a rate limit shared with other callers: more 429s with a wait
    /// than there are retries, then a flaky answer, then success. The waits
    /// spend no retry; the failures without one do.
    #[tokio::test(start_paused = true)]
    async fn server_dictated_waits_spend_no_retry_and_failures_without_one_do() {
        let calls = AtomicU32::new(0);
        let result = instant_policy(1)
            .run(OP, &Events::discard(), || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=5 => Err(TestError::Throttled(Duration::from_secs(1))),
                    6 => Err(TestError::Flaky),
                    _ => Ok(9),
                }
            })
            .await
            .unwrap();
        assert_eq!(result, (Success::Done(9), 8));
        let calls = AtomicU32::new(0);
        let failure = instant_policy(1)
            .run(OP, &Events::discard(), || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 2 => Err(TestError::Flaky),
                    _ => Err::<(), _>(TestError::Throttled(Duration::from_secs(1))),
                }
            })
            .await
            .unwrap_err();
        assert_eq!(failure.attempts, 3, "two failures without a wait spend the one retry");
        assert!(matches!(failure.error, TestError::Flaky));
    }

    #[test]
    fn defaults_are_three_retries_from_two_seconds_doubling_to_thirty() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.retries, 3);
        assert_eq!(policy.first_delay, Duration::from_secs(2));
        assert_eq!(policy.factor, 2.0);
        assert_eq!(policy.max_delay, Duration::from_secs(30));
    }
}
