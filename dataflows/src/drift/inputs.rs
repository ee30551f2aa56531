//! The exact event-time sums drift reads: one annotator's ([`AnnotatorInputs`]) and its scope's
//! ([`ScopeInputs`]), and the range sums over days that every signal takes.

use super::*;

/// The exact event-time sums of one annotator within one scope.
#[derive(Clone, Debug, Default)]
pub struct AnnotatorInputs {
    /// `day -> [items, sum d, sum d^2]` of the agreement gap (fixed point).
    pub gap: BTreeMap<Day, [i64; 3]>,
    /// `(day, label) -> [own, peer share]` (peer share in fixed point).
    pub mix: BTreeMap<(Day, LabelId), [i64; 2]>,
    /// `(day, duration bucket) -> [labels]`.
    pub speed: BTreeMap<(Day, u16), [i64; 1]>,
    /// Gold answers per day (the answers themselves go to the gates,
    /// [`crate::gates::GoldAnswerLogic`]).
    pub gold_days: GoldDays,
    /// `day -> [left, right, ties]`: comparisons (preference events) by the side chosen.
    pub sides: BTreeMap<Day, [i64; 3]>,
}

impl AnnotatorInputs {
    pub fn is_empty(&self) -> bool {
        self.gap.is_empty()
            && self.mix.is_empty()
            && self.speed.is_empty()
            && self.gold_days.is_empty()
            && self.sides.is_empty()
    }

    /// Adds `m` gold answers given at `ts_ms`, right or not.
    pub fn add_gold(&mut self, ts_ms: i64, correct: bool, m: i64) {
        let day = day_of(ts_ms);
        self.gold_days.add(day, [m, if correct { 0 } else { m }]);
    }

    /// The days with any input, ascending. Each map is ordered by day first, so each gives its
    /// days in order; only the few days of all the maps together are sorted.
    pub(super) fn active_days(&self, gold_days: &BTreeMap<Day, [i64; 2]>) -> Vec<Day> {
        self.active_days_from(gold_days, Day::MIN)
    }

    /// The days with any input from `from` on, ascending. A map keyed by `(day, _)` is searched
    /// day by day, not walked entry by entry: a day holds up to a hundred duration buckets.
    pub(super) fn active_days_from(&self, gold_days: &BTreeMap<Day, [i64; 2]>, from: Day) -> Vec<Day> {
        /// Each day of `map` from `from` on, once.
        fn days_of<K: Ord + Copy, V>(map: &BTreeMap<(Day, K), V>, from: Day, least: K, out: &mut Vec<Day>) {
            let mut next = Some(from);
            while let Some((&(day, _), _)) = next.and_then(|next| map.range((next, least)..).next()) {
                out.push(day);
                next = day.checked_add(1);
            }
        }
        let mut days = Vec::new();
        days.extend(gold_days.range(from..).map(|(&day, _)| day));
        days.extend(self.gap.range(from..).map(|(&day, _)| day));
        days_of(&self.mix, from, LabelId::MIN, &mut days);
        days_of(&self.speed, from, u16::MIN, &mut days);
        days.extend(self.sides.range(from..).map(|(&day, _)| day));
        days.sort_unstable();
        days.dedup();
        days
    }
}

/// The scope-wide sums the signals compare against. An annotator's reading on day `d` uses
/// only the scope's days before `d`, so that the scope's current day can change without
/// re-evaluating every annotator.
#[derive(Clone, Debug, Default)]
pub struct ScopeInputs {
    /// Pooled gold answers per day.
    pub gold_days: GoldDays,
    /// All timed labels of the scope per day and duration bucket.
    pub speed: ScopeSpeed,
}

/// A scope's timed labels, `(day, duration bucket) -> [labels]`, with the median label time
/// its annotators' too-fast readings read of them ([`scope_medians`]), formed when first read
/// after a change: a re-evaluation of an annotator from a day of weeks of history read the
/// scope's median of the days before it, which took adding up every entry before that day for
/// each annotator. Changed only through [`ScopeSpeed::add`], [`ScopeSpeed::insert`],
/// [`ScopeSpeed::remove`] and [`ScopeSpeed::retain`], which drop the medians.
#[derive(Clone, Debug, Default)]
pub struct ScopeSpeed {
    by_day: BTreeMap<(Day, u16), [i64; 1]>,
    medians: std::cell::OnceCell<Vec<(Day, Option<u16>)>>,
}

impl ScopeSpeed {
    /// Adds `labels` to `(day, bucket)` (an entry back at zero is removed).
    pub fn add(&mut self, key: (Day, u16), labels: [i64; 1]) {
        crate::scopes::add(&mut self.by_day, key, labels);
        self.medians.take();
    }

    /// Sets `(day, bucket)` to `labels`; the entry it held, if any.
    pub fn insert(&mut self, key: (Day, u16), labels: [i64; 1]) -> Option<[i64; 1]> {
        self.medians.take();
        self.by_day.insert(key, labels)
    }

    /// Removes `(day, bucket)`; the entry it held, if any.
    pub fn remove(&mut self, key: &(Day, u16)) -> Option<[i64; 1]> {
        self.medians.take();
        self.by_day.remove(key)
    }

    /// Keeps only the entries `keep` says.
    pub fn retain(&mut self, keep: impl FnMut(&(Day, u16), &mut [i64; 1]) -> bool) {
        self.medians.take();
        self.by_day.retain(keep);
    }

    /// `(day, bucket) -> [labels]`, ascending.
    pub fn by_day(&self) -> &BTreeMap<(Day, u16), [i64; 1]> {
        &self.by_day
    }

    pub fn is_empty(&self) -> bool {
        self.by_day.is_empty()
    }

    /// [`scope_medians`] from the first day: for each day of the scope's label times, the
    /// duration bucket of the median over the days up to and including it.
    pub(super) fn medians(&self) -> &[(Day, Option<u16>)] {
        self.medians.get_or_init(|| {
            let mut histogram = Histogram::default();
            let mut medians: Vec<(Day, Option<u16>)> = Vec::new();
            for (&(day, bucket), &[n]) in &self.by_day {
                if medians.last().is_none_or(|&(last, _)| last != day) {
                    // The first entry of a day: the days before it are counted.
                    if let Some(last) = medians.last_mut() {
                        last.1 = histogram.median_bucket();
                    }
                    medians.push((day, None));
                }
                histogram.add(bucket, n);
            }
            if let Some(last) = medians.last_mut() {
                last.1 = histogram.median_bucket();
            }
            medians
        })
    }

    /// The scope's median label time (ms) over the days before `day`, as a too-fast reading of
    /// `day` reads it: `None` without labels before it. A binary search of [`ScopeSpeed::medians`].
    pub(super) fn median_ms_before(&self, day: Day) -> Option<f64> {
        let medians = self.medians();
        let at = medians.partition_point(|&(d, _)| d < day);
        at.checked_sub(1).and_then(|i| medians[i].1).map(bucket_center_ms)
    }
}

/// Gold answers per day, `day -> [answers, errors]`, with their running sums ([`DaySums`]),
/// formed when first read after a change: a gold reading sums weeks of them on every day it reads,
/// and every annotator of a scope reads the scope's, which a re-evaluation of each annotator formed
/// again. Changed only through [`GoldDays::add`] and [`GoldDays::insert`], which drop the sums.
#[derive(Clone, Debug, Default)]
pub struct GoldDays {
    by_day: BTreeMap<Day, [i64; 2]>,
    sums: std::cell::OnceCell<DaySums>,
}

impl GoldDays {
    /// Adds `[answers, errors]` to `day` (a day back at zero is removed).
    pub fn add(&mut self, day: Day, answers_errors: [i64; 2]) {
        crate::scopes::add(&mut self.by_day, day, answers_errors);
        self.sums.take();
    }

    /// Sets `day` to `[answers, errors]`.
    pub fn insert(&mut self, day: Day, answers_errors: [i64; 2]) {
        self.by_day.insert(day, answers_errors);
        self.sums.take();
    }

    /// `day -> [answers, errors]`, ascending by day.
    pub fn by_day(&self) -> &BTreeMap<Day, [i64; 2]> {
        &self.by_day
    }

    pub fn is_empty(&self) -> bool {
        self.by_day.is_empty()
    }

    /// The running sums, formed on the first read since the last change.
    pub(super) fn sums(&self) -> &DaySums {
        self.sums.get_or_init(|| DaySums::new(&self.by_day))
    }
}

/// A duration histogram `bucket -> labels`, dense by bucket (a `u32` of milliseconds reaches
/// bucket 177): adding to it is an index, where a tree of buckets took a search per label count
/// (a re-evaluation adds up every day of the scope's label times).
#[derive(Debug, Default)]
pub(super) struct Histogram {
    counts: Vec<i64>,
    total: i64,
}

impl Histogram {
    /// Adds `n` labels in `bucket`.
    pub(super) fn add(&mut self, bucket: u16, n: i64) {
        let b = usize::from(bucket);
        if b >= self.counts.len() {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += n;
        self.total += n;
    }

    /// Removes `n` labels from `bucket` (which holds them).
    fn remove(&mut self, bucket: u16, n: i64) {
        self.add(bucket, -n);
    }

    /// Timed labels `(count, sum of ln ms, those under limit_ms)`: the log-times summed bucket by
    /// bucket, in bucket order, from the exact counts (so that the same labels give the same sum
    /// however they were gathered).
    pub(super) fn timing(&self, limit_ms: f64) -> (i64, f64, i64) {
        let (mut sum_ln, mut fast) = (0.0, 0);
        for (bucket, &count) in self.counts.iter().enumerate() {
            if count != 0 {
                let (center, ln_center) = bucket_center(bucket as u16);
                sum_ln += count as f64 * ln_center;
                if center < limit_ms {
                    fast += count;
                }
            }
        }
        (self.total, sum_ln, fast)
    }

    /// The bucket of the median label time: the first bucket by which half the labels are
    /// counted; `None` without labels.
    fn median_bucket(&self) -> Option<u16> {
        let mut seen = 0;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += n;
            if self.total > 0 && 2 * seen >= self.total {
                return Some(bucket as u16);
            }
        }
        None
    }
}

/// The scope's median label time as too-fast readings read it, day by day: for each day of the
/// scope's label times from `from` on, ascending, the duration bucket of the median over the days
/// up to and including it (`None`: no labels). A too-fast reading of day `d` reads the entry of
/// the last day before `d` (and nothing before the first): where two such lists agree, so do the
/// too-fast readings of every annotator of the scope, which is how a change of the scope's label
/// times that moves no median (one label of millions moved) re-evaluates nobody.
pub fn scope_medians(scope: &ScopeInputs, from: Day) -> Vec<(Day, Option<u16>)> {
    let medians = scope.speed.medians();
    medians[medians.partition_point(|&(day, _)| day < from)..].to_vec()
}

/// The label time (ms) a duration bucket stands for: `exp((bucket + 0.5) / DURATION_BUCKETS_PER_E)`.
pub(super) fn bucket_center_ms(bucket: u16) -> f64 {
    bucket_center(bucket).0
}

/// A duration bucket's centre (ms) and its natural logarithm, the same numbers as computing
/// them, read from a table for the buckets a `u32` of milliseconds reaches (0-177): the speed
/// signals sum them over every bucket of weeks of history, at every day of every annotator.
pub(super) fn bucket_center(bucket: u16) -> (f64, f64) {
    fn computed(bucket: u16) -> (f64, f64) {
        let center = ((f64::from(bucket) + 0.5) / DURATION_BUCKETS_PER_E).exp();
        (center, center.ln())
    }
    const TABLED: usize = 256;
    static TABLE: std::sync::LazyLock<[(f64, f64); TABLED]> =
        std::sync::LazyLock::new(|| std::array::from_fn(|b| computed(b as u16)));
    TABLE.get(usize::from(bucket)).copied().unwrap_or_else(|| computed(bucket))
}

/// An annotator's timed labels (`(day, bucket) -> labels`, as a sorted slice) over a window of
/// days that moves forward: each label enters and leaves the histogram once, where summing the
/// window's days anew on every day took weeks of buckets per reading. A window that moves back
/// starts again.
#[derive(Debug, Default)]
pub(super) struct SlidingTiming<'a> {
    entries: &'a [((Day, u16), i64)],
    /// `entries[from..to]` are in the window.
    from: usize,
    to: usize,
    window: Option<(Day, Day)>,
    histogram: Histogram,
}

impl<'a> SlidingTiming<'a> {
    pub(super) fn new(entries: &'a [((Day, u16), i64)]) -> SlidingTiming<'a> {
        SlidingTiming { entries, ..SlidingTiming::default() }
    }

    /// The histogram of the labels of `days`.
    pub(super) fn over(&mut self, days: std::ops::RangeInclusive<Day>) -> &Histogram {
        let (start, end) = (*days.start(), *days.end());
        if self.window.is_none_or(|(s, e)| start < s || end < e) {
            let at = self.entries.partition_point(|&((day, _), _)| day < start);
            (self.from, self.to, self.histogram) = (at, at, Histogram::default());
        }
        while let Some(&((_, bucket), n)) = self.entries.get(self.to).filter(|((day, _), _)| *day <= end) {
            self.histogram.add(bucket, n);
            self.to += 1;
        }
        while let Some(&((_, bucket), n)) =
            self.entries[..self.to].get(self.from).filter(|((day, _), _)| *day < start)
        {
            self.histogram.remove(bucket, n);
            self.from += 1;
        }
        self.window = Some((start, end));
        &self.histogram
    }
}

/// Per-day `[answers, errors]` as running sums, so that the sum over any range of days takes two
/// lookups: a gold reading sums weeks of them, on every day it reads. Where the days are dense
/// (their span at most [`DENSE_SPAN`] times their number, plus 64), a table by day gives how many
/// days come before it, where two binary searches per sum were about 6% of a gold relabel's work
/// after 10M events; else the days are searched.
#[derive(Clone, Debug, Default)]
pub(super) struct DaySums {
    days: Vec<Day>,
    /// `running[i]`: the sum over `days[..i]`.
    running: Vec<[i64; 2]>,
    /// Dense: the first day, and for each day from it to one past the last, how many days come
    /// before it.
    before: Option<(Day, Vec<u32>)>,
}

/// How much longer than their number the span of a [`DaySums`]'s days may be for its table.
const DENSE_SPAN: usize = 16;

impl DaySums {
    pub(super) fn new(by_day: &BTreeMap<Day, [i64; 2]>) -> DaySums {
        let mut running = Vec::with_capacity(by_day.len() + 1);
        let mut total = [0, 0];
        running.push(total);
        for [n, e] in by_day.values() {
            total = [total[0] + n, total[1] + e];
            running.push(total);
        }
        let days: Vec<Day> = by_day.keys().copied().collect();
        let before = match (days.first(), days.last()) {
            (Some(&first), Some(&last))
                if ((i64::from(last) - i64::from(first)) as usize) < DENSE_SPAN * days.len() + 64 =>
            {
                let mut table = Vec::with_capacity((last - first) as usize + 2);
                let mut i = 0;
                for day in i64::from(first)..=i64::from(last) + 1 {
                    while days.get(i).is_some_and(|&d| i64::from(d) < day) {
                        i += 1;
                    }
                    table.push(i as u32);
                }
                Some((first, table))
            }
            _ => None,
        };
        DaySums { days, running, before }
    }

    /// How many days come before `day`.
    fn before(&self, day: Day) -> usize {
        match &self.before {
            Some((first, table)) => {
                let offset = i64::from(day) - i64::from(*first);
                if offset <= 0 {
                    0
                } else {
                    table.get(offset as usize).map_or(self.days.len(), |&n| n as usize)
                }
            }
            None => self.days.partition_point(|&d| d < day),
        }
    }

    /// How many days come up to and including `day` (before `day + 1`).
    fn through(&self, day: Day) -> usize {
        day.checked_add(1).map_or(self.days.len(), |next| self.before(next))
    }

    /// The sums over each window of `windows` days that ends on `day` (`day - w + 1 ..= day`),
    /// in their order: [`DaySums::sum`] of each, with the end looked up once, as a gold reading
    /// sums its windows on every day it reads.
    pub(super) fn windows_ending<'a>(
        &'a self,
        day: Day,
        windows: &'a [u32],
    ) -> impl Iterator<Item = (u32, [i64; 2])> + 'a {
        let to = self.through(day);
        let [n1, e1] = self.running[to];
        windows.iter().map(move |&w| {
            let start = (i64::from(day) - i64::from(w) + 1).max(i64::from(Day::MIN)) as Day;
            let from = self.before(start).min(to);
            let [n0, e0] = self.running[from];
            (w, [n1 - n0, e1 - e0])
        })
    }

    /// The sum over the days of `range`, as [`sum_range`] over the map would give it.
    pub(super) fn sum(&self, range: impl std::ops::RangeBounds<Day>) -> [i64; 2] {
        use std::ops::Bound;
        let from = match range.start_bound() {
            Bound::Included(&d) => self.before(d),
            Bound::Excluded(&d) => self.through(d),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&d) => self.through(d),
            Bound::Excluded(&d) => self.before(d),
            Bound::Unbounded => self.days.len(),
        };
        if to <= from {
            return [0, 0];
        }
        let ([n1, e1], [n0, e0]) = (self.running[to], self.running[from]);
        [n1 - n0, e1 - e0]
    }
}

pub(super) fn sum_range<K: Ord, const N: usize>(
    map: &BTreeMap<K, [i64; N]>,
    range: impl std::ops::RangeBounds<K>,
) -> [i64; N] {
    let mut total = [0; N];
    for v in map.range(range).map(|(_, v)| v) {
        for (t, x) in total.iter_mut().zip(v) {
            *t += x;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    #[test]
    fn day_sums_are_the_range_sums() {
        use super::{sum_range, DaySums};
        use std::collections::BTreeMap;
        // Dense days (a table by day), and the same days with one far away (searched).
        let dense: BTreeMap<i32, [i64; 2]> = [(-3, [2, 1]), (0, [5, 0]), (4, [7, 3]), (9, [1, 1])].into();
        let mut sparse = dense.clone();
        sparse.insert(5_000, [4, 2]);
        for (by_day, table) in [(dense, true), (sparse, false)] {
            let sums = DaySums::new(&by_day);
            assert_eq!(sums.before.is_some(), table);
            for a in (-5..12).chain([4_999, 5_000, 5_001, i32::MIN, i32::MAX]) {
                assert_eq!(sums.sum(..a), sum_range(&by_day, ..a), "..{a}");
                assert_eq!(sums.sum(..=a), sum_range(&by_day, ..=a), "..={a}");
                assert_eq!(sums.sum(a..), sum_range(&by_day, a..), "{a}..");
                assert_eq!(sums.sum(a..a), [0, 0]);
                for b in (a.max(-5)..12).chain([a, 5_000, i32::MAX]).filter(|&b| b >= a) {
                    assert_eq!(sums.sum(a..=b), sum_range(&by_day, a..=b), "{a}..={b}");
                    assert_eq!(sums.sum(a..b), sum_range(&by_day, a..b), "{a}..{b}");
                }
            }
            assert_eq!(sums.sum(..), sum_range(&by_day, ..));
            let windows = [1, 2, 3, 7, 14, 6_000, u32::MAX];
            for day in (-5..12).chain([4_999, 5_000, 5_001, i32::MIN, i32::MAX]) {
                let each: Vec<_> = sums.windows_ending(day, &windows).collect();
                let start = |w: u32| (i64::from(day) - i64::from(w) + 1).max(i64::from(i32::MIN)) as i32;
                let expected: Vec<_> =
                    windows.iter().map(|&w| (w, sum_range(&by_day, start(w)..=day))).collect();
                assert_eq!(each, expected, "windows ending on {day}");
            }
        }
        assert_eq!(DaySums::new(&BTreeMap::new()).sum(..), [0, 0]);
        assert_eq!(DaySums::new(&BTreeMap::new()).sum(3..=7), [0, 0]);
    }

    #[test]
    fn a_sliding_window_holds_the_labels_of_its_days() {
        use super::{Histogram, SlidingTiming};
        // Days -2..=20, some without labels, several buckets a day (one emptied again).
        let mut entries = Vec::new();
        for day in -2i32..=20 {
            if day % 4 == 1 {
                continue;
            }
            for bucket in [50u16, 57, 63, 90 + (day as u16 % 3)] {
                entries.push(((day, bucket), i64::from(bucket % 5) + i64::from(day.unsigned_abs() % 3)));
            }
        }
        let direct = |from: i32, to: i32| {
            let mut histogram = Histogram::default();
            for &((day, bucket), n) in &entries {
                if (from..=to).contains(&day) {
                    histogram.add(bucket, n);
                }
            }
            histogram
        };
        let mut sliding = SlidingTiming::new(&entries);
        // Forward a day at a time, by jumps past every label, and back.
        let windows = (-10..30).map(|d| (d - 6, d)).chain([(3, 9), (25, 40), (-40, -3), (0, 0), (0, 20)]);
        for (from, to) in windows {
            for limit in [0.0, 500.0, 1e9] {
                let expected = direct(from, to).timing(limit);
                assert_eq!(sliding.over(from..=to).timing(limit), expected, "{from}..={to} under {limit}");
            }
        }
    }

    #[test]
    fn tabled_bucket_centres_are_the_computed_ones() {
        for bucket in (0..=400u16).chain([u16::MAX]) {
            let center = ((f64::from(bucket) + 0.5) / super::DURATION_BUCKETS_PER_E).exp();
            assert_eq!(super::bucket_center(bucket), (center, center.ln()), "bucket {bucket}");
            assert_eq!(super::bucket_center_ms(bucket), center);
        }
    }
}
