//! How often input warnings are logged: one line per kind of warning a minute at most, counting
//! those held back.

use std::time::{Duration, Instant};

use labelqc_dataflows::event::InputWarning;

/// When each kind of input warning was last logged, and how many came since: one log line per
/// kind a minute at most.
#[derive(Default)]
pub(super) struct WarningLog {
    kinds: [(Option<Instant>, u64); InputWarning::ALL.len()],
}

impl WarningLog {
    const EVERY: Duration = Duration::from_secs(60);

    /// Notes one warning at `now`; returns the number of warnings of its kind to log (this one
    /// and those not logged before it) when a log line is due.
    pub(super) fn note(&mut self, warning: InputWarning, now: Instant) -> Option<u64> {
        let (last, since) = &mut self.kinds[warning as usize];
        *since += 1;
        if last.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_logged_once_a_minute_per_kind() {
        let mut log = WarningLog::default();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(log.note(InputWarning::TsBefore1973, at(0)), Some(1));
        assert_eq!(log.note(InputWarning::TsBefore1973, at(1)), None);
        assert_eq!(log.note(InputWarning::NumberAndString, at(2)), Some(1), "kinds are apart");
        assert_eq!(log.note(InputWarning::TsBefore1973, at(59)), None);
        assert_eq!(log.note(InputWarning::TsBefore1973, at(61)), Some(3), "the two held back, and this one");
        assert_eq!(log.note(InputWarning::TsBefore1973, at(62)), None);
    }
}
