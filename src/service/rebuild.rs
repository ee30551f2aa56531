//! What a start of `labelqc run` rebuilds before it publishes: every input partition read up to
//! its end as it was at start ([`Rebuild`]), and what the epochs of an output group read
//! ([`Input`]): messages, timestamps and refused records.

use std::time::Instant;

use super::feed::{EpochMeta, InputDeadLetter};

/// What the epochs of a group read: messages per stream, their oldest and newest timestamps,
/// and the records refused.
#[derive(Default)]
pub(super) struct Input {
    pub(super) messages: [u64; 2],
    pub(super) oldest_ts: Option<i64>,
    pub(super) newest_ts: Option<i64>,
    pub(super) dead_letters: Vec<InputDeadLetter>,
}

impl Input {
    pub(super) fn add(&mut self, meta: EpochMeta) {
        self.messages[0] += meta.messages[0];
        self.messages[1] += meta.messages[1];
        self.oldest_ts = match (self.oldest_ts, meta.oldest_ts) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.newest_ts = self.newest_ts.max(meta.newest_ts);
        self.dead_letters.extend(meta.dead_letters);
    }
}

/// The state of a start: rebuilding until every input partition is read up to its end at start.
pub struct Rebuild {
    /// High watermark per input partition at start (`-1` for a partition with nothing to read).
    pub targets: Vec<i64>,
    /// Committed offset per input partition at start (`-1`: none): refused records before it
    /// were dead-lettered by an earlier run.
    pub committed: Vec<i64>,
    /// What the rebuild read, published and committed with the first group.
    pub(super) input: Input,
    pub started: Instant,
}

impl Rebuild {
    pub fn new(targets: Vec<i64>, committed: Vec<i64>) -> Rebuild {
        Rebuild { targets, committed, input: Input::default(), started: Instant::now() }
    }

    pub(super) fn caught_up(&self, positions: &[i64]) -> bool {
        self.targets.iter().zip(positions).all(|(&target, &position)| position >= target)
    }

    pub(super) fn absorb(&mut self, mut input: Input) {
        let committed = &self.committed;
        input.dead_letters.retain(|l| committed.get(l.index).is_none_or(|&c| l.offset >= c));
        self.input.add(EpochMeta {
            messages: input.messages,
            oldest_ts: input.oldest_ts,
            newest_ts: input.newest_ts,
            dead_letters: input.dead_letters,
            ..EpochMeta::default()
        });
    }
}
