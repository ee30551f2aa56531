//! When an alert's condition began and when it ended, in event-time days. A scope alert's
//! condition is read as of the end of each day from exact per-day sums (the scope's items by the
//! day of their newest label, its gold answers by the day they were given, its population
//! counts), so that `started` and `resolved` depend only on the data and its event time, as every
//! other decision does: the report and the live service agree on them, and a restart re-derives
//! the same ones.

use std::collections::BTreeMap;

use crate::label::LabelId;
use crate::source::Day;
use crate::stats::{Coincidences, Level};

/// The runs of a condition over days: `(day, holds)` in day order (days without data are not
/// listed, and do not break a run) give `(first day it held, first later day it did not)` for
/// each run, the second `None` for a run that still holds on the last day.
pub fn runs(days: impl IntoIterator<Item = (Day, bool)>) -> Vec<(Day, Option<Day>)> {
    let mut out: Vec<(Day, Option<Day>)> = Vec::new();
    let mut open: Option<Day> = None;
    for (day, holds) in days {
        match (open, holds) {
            (None, true) => open = Some(day),
            (Some(start), false) => {
                out.push((start, Some(day)));
                open = None;
            }
            _ => {}
        }
    }
    out.extend(open.map(|start| (start, None)));
    out
}

/// The scope's nominal Krippendorff's alpha as of the end of each day: over the items whose
/// newest label is on that day or before, with their current labels. `(day, pairable items,
/// alpha)` for each day with items, ascending; the last equals the scope's alpha now (up to the
/// order of float sums). The inputs are the scope's pairable sums by day: items `(day, raters) ->
/// [items]`, marginals `(day, raters, label) -> [labels]` and coincidence weights `(day, raters,
/// c, k) -> [weight]` (before division by `raters - 1`).
pub fn alpha_by_day(
    items: &BTreeMap<(Day, u32), [i64; 1]>,
    shares: &BTreeMap<(Day, u32, LabelId), [i64; 1]>,
    coincidences: &BTreeMap<(Day, u32, LabelId, LabelId), [i64; 1]>,
) -> Vec<(Day, i64, Option<f64>)> {
    let mut out = Vec::new();
    let (mut n_items, mut marginals, mut weights) = (0i64, BTreeMap::<LabelId, i64>::new(), BTreeMap::new());
    let (mut shares, mut coincidences) = (shares.iter().peekable(), coincidences.iter().peekable());
    let mut days = items.iter().peekable();
    while let Some(&(&(day, _), _)) = days.peek() {
        while let Some((_, [n])) = days.next_if(|((d, _), _)| *d == day) {
            n_items += n;
        }
        while let Some((&(_, _, label), [n])) = shares.next_if(|((d, ..), _)| *d <= day) {
            *marginals.entry(label).or_default() += n;
        }
        while let Some((&(_, raters, c, k), [w])) = coincidences.next_if(|((d, ..), _)| *d <= day) {
            *weights.entry((c, k)).or_insert(0.0) += *w as f64 / f64::from(raters - 1);
        }
        let labels: Vec<(LabelId, i64)> =
            marginals.iter().filter(|(_, n)| **n > 0).map(|(l, n)| (*l, *n)).collect();
        let index: BTreeMap<LabelId, usize> = labels.iter().enumerate().map(|(i, (l, _))| (*l, i)).collect();
        let mut matrix = vec![vec![0.0; labels.len()]; labels.len()];
        for (&(c, k), &o) in &weights {
            if let (Some(&ci), Some(&ki)) = (index.get(&c), index.get(&k)) {
                matrix[ci][ki] += o;
                if ci != ki {
                    matrix[ki][ci] += o;
                }
            }
        }
        let coincidences = Coincidences {
            values: vec![0.0; labels.len()],
            marginals: labels.iter().map(|(_, n)| *n).collect(),
            matrix,
        };
        out.push((day, n_items, coincidences.alpha(Level::Nominal)));
    }
    out
}

/// The scope's pooled gold accuracy as of the end of each day, over the gold answers given on
/// that day or before: `(day, answers, accuracy)` for each day with gold answers, ascending, from
/// `day -> [answers, errors]`.
pub fn gold_by_day(gold_days: &BTreeMap<Day, [i64; 2]>) -> Vec<(Day, i64, f64)> {
    let (mut n, mut errors) = (0, 0);
    gold_days
        .iter()
        .filter_map(|(&day, &[answers, wrong])| {
            n += answers;
            errors += wrong;
            (n > 0).then(|| (day, n, (n - errors) as f64 / n as f64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_a_condition() {
        let days = [(1, false), (2, true), (3, true), (5, false), (6, true)];
        assert_eq!(runs(days), vec![(2, Some(5)), (6, None)]);
        assert_eq!(runs([(1, false)]), vec![]);
        assert_eq!(runs([(4, true), (9, true)]), vec![(4, None)]);
    }

    #[test]
    fn alpha_and_gold_as_of_each_day() {
        // Day 1: two items labelled (a, a) and (b, b): perfect agreement. Day 2: two items
        // labelled (a, b): alpha drops to 1 - (n-1) Do/De with n = 8, Do = 4, De = 2*16 = 32.
        let (a, b) = (1, 2);
        let items = BTreeMap::from([((1, 2), [2]), ((2, 2), [2])]);
        let shares = BTreeMap::from([((1, 2, a), [2]), ((1, 2, b), [2]), ((2, 2, a), [2]), ((2, 2, b), [2])]);
        let coincidences = BTreeMap::from([((1, 2, a, a), [2]), ((1, 2, b, b), [2]), ((2, 2, a, b), [2])]);
        let by_day = alpha_by_day(&items, &shares, &coincidences);
        assert_eq!(by_day.len(), 2);
        assert_eq!((by_day[0].0, by_day[0].1, by_day[0].2), (1, 2, Some(1.0)));
        let (day, n, alpha) = by_day[1];
        assert_eq!((day, n), (2, 4));
        assert!((alpha.unwrap() - (1.0 - 7.0 * 4.0 / 32.0)).abs() < 1e-12, "{alpha:?}");

        let gold = gold_by_day(&BTreeMap::from([(3, [10, 1]), (4, [10, 5])]));
        assert_eq!(gold, vec![(3, 10, 0.9), (4, 20, 0.7)]);
    }
}
