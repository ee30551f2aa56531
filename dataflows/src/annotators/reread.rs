//! Which of an annotator's readings an epoch's changes of its scope's drift inputs make read
//! again: per scope and day, computed once for all the scope's annotators.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::ChangedDays;
use crate::drift::{self, ScopeInputs};
use crate::source::{Day, ScopeId};

/// What this epoch's changes of `scope` (`reread_days`) make its annotators' readings read again:
/// whether the gold reading of a day does ([`reads_changed_gold`], kept per day in `gold_read`),
/// the earliest changed gold day (no gold reading of an earlier day reads a changed one; `Day::MAX`
/// where none changed), and the earliest changed day of its label times, after which too-fast
/// readings do.
pub(super) fn scope_reread<'a>(
    gold_read: &'a mut HashMap<ScopeId, DaysRead, RandomState>,
    reread_days: &'a HashMap<ScopeId, ChangedDays, RandomState>,
    scope: ScopeId,
    config: &'a drift::DriftConfig,
    basis: &'a ScopeInputs,
) -> (impl Fn(Day) -> bool + 'a, Day, Option<Day>) {
    let changed = reread_days.get(&scope);
    let gold_days = changed.map_or(&[][..], |c| &c.gold[..]);
    let memo = std::cell::RefCell::new(gold_read.entry(scope).or_default());
    let gold = move |day| reads_changed_gold(&mut memo.borrow_mut(), day, gold_days, config, basis);
    let gold_from = gold_days.first().copied().unwrap_or(Day::MAX);
    (gold, gold_from, changed.and_then(|c| c.speed))
}

/// Whether the gold reading of `day` in a scope reads one of the scope's `changed` gold days
/// ([`drift::reads_scope_gold_of`]). The same for every annotator of the scope: `memo` keeps it
/// per day for the epoch, for the annotators touched and then re-evaluated.
pub(super) fn reads_changed_gold(
    memo: &mut DaysRead,
    day: Day,
    changed: &[Day],
    config: &drift::DriftConfig,
    basis: &ScopeInputs,
) -> bool {
    !changed.is_empty()
        && memo.get(day, || changed.iter().any(|&g| drift::reads_scope_gold_of(config, basis, day, g)))
}

/// Of one scope in an epoch, a yes or no per day, computed once: `read[i]` is of day `first + i`
/// (`None` until computed). Dense, as every annotator of the scope asks for each of its days.
#[derive(Debug, Default)]
pub(super) struct DaysRead {
    first: Day,
    read: Vec<Option<bool>>,
}

impl DaysRead {
    /// Days one covers at most: a day beyond them is computed each time.
    const SPAN: usize = 1 << 16;

    /// The answer for `day`, from `compute` the first time.
    pub(super) fn get(&mut self, day: Day, compute: impl FnOnce() -> bool) -> bool {
        if self.read.is_empty() {
            self.first = day;
        }
        let offset = i64::from(day) - i64::from(self.first);
        if offset < 0 {
            let before = offset.unsigned_abs() as usize;
            if before + self.read.len() > Self::SPAN {
                return compute();
            }
            self.read.splice(0..0, std::iter::repeat_n(None, before));
            self.first = day;
        } else if offset as usize >= self.read.len() {
            if offset as usize >= Self::SPAN {
                return compute();
            }
            self.read.resize(offset as usize + 1, None);
        }
        let i = (i64::from(day) - i64::from(self.first)) as usize;
        *self.read[i].get_or_insert_with(compute)
    }
}
