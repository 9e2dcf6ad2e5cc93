//! Wall-clock time as the ledger, the age filters and the reports count it:
//! whole Unix seconds; and the one reading of durations people write
//! (`90s`, `30m`, `2d`), bounded so that no sum or cast of one can overflow.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest duration benchwarden accepts: a hundred years (of 365.25 days,
/// as humantime counts `100y`). Anything longer
/// means "never" to every use it has (an age, a timeout, a retry delay), and
/// past it sums with clocks and casts to `i64` seconds could overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// Seconds since the Unix epoch; 0 on a clock set before 1970, which no age
/// filter can then mistake for the future.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs() as i64).unwrap_or(0)
}

/// The Unix second `age` before `now`, saturating: an age longer than the
/// epoch is simply before everything.
pub fn seconds_before(now: i64, age: Duration) -> i64 {
    now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX))
}

/// A duration as people write it (`90s`, `30m`, `24h`, `2d`, `1h30m`), at
/// most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|error| format!("{error} (expected a duration such as 90s, 30m, 24h or 2d)"))?;
    if duration > MAX_DURATION {
        return Err(format!("{text:?} is longer than the longest duration benchwarden takes, 100y"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_duration_past_a_hundred_years_is_refused_not_wrapped() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("100y").map(|duration| duration <= MAX_DURATION), Ok(true));
        let refused = parse_duration("300000000000y").unwrap_err();
        assert!(refused.contains("100y"), "{refused}");
        assert!(parse_duration("1000000000000000000000000000s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn an_age_longer_than_the_epoch_is_before_everything() {
        assert_eq!(seconds_before(1_000, Duration::from_secs(400)), 600);
        assert_eq!(seconds_before(1_000, Duration::from_secs(u64::MAX)), 1_000 - i64::MAX);
        assert!(seconds_before(i64::MIN + 5, Duration::from_secs(10)) == i64::MIN);
    }

    proptest! {
        #[test]
        fn any_text_is_a_duration_within_bounds_or_an_error_never_a_panic(text in "\\PC{0,40}") {
            if let Ok(duration) = parse_duration(&text) {
                prop_assert!(duration <= MAX_DURATION);
            }
        }

        #[test]
        fn any_number_of_any_unit_is_bounded(count in any::<u64>(), unit in "(ns|us|ms|s|m|h|d|w|M|y)") {
            if let Ok(duration) = parse_duration(&format!("{count}{unit}")) {
                prop_assert!(duration <= MAX_DURATION);
                prop_assert!(seconds_before(crate::clock::now_unix(), duration) <= crate::clock::now_unix());
            }
        }
    }
}
