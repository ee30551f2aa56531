//! Live refits in the background. A refit of a large scope takes about a second (a million labels,
//! a few hundred EM iterations cold): done in the worker that owns the scope, it would hold back
//! every epoch of that worker, and so the freshness of every output, for that long. Instead the
//! worker takes a snapshot of the scope's labels and gold answers ([`Refit::start`]) and goes on;
//! the fit runs on a thread of its own, and the first epoch after it has finished derives its
//! outputs ([`Refit::finished`], [`Refit::join`]). A fit is a deterministic function of the
//! snapshot, so the outputs are the ones an in-place fit of the same labels would give; only the
//! epoch they appear in is later.

use std::collections::HashMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::FitLabel;
use crate::label::LabelId;
use crate::source::{Catalog, ItemId};
use crate::truth::{fit, FitOptions, TruthFit, WarmStart};

/// A fit running on its own thread.
#[derive(Debug)]
pub(super) struct Refit {
    thread: JoinHandle<(Fitted, Duration)>,
    /// Whether it started from the previous fit (else cold: the scope stopped changing).
    pub warm: bool,
    /// How many labels it fits.
    pub labels: usize,
    /// When the snapshot was started, and how long taking it took.
    pub started: Instant,
    pub gathered: Duration,
}

/// A finished refit's fit, or what went wrong.
pub(super) type Fitted = Result<TruthFit, String>;

impl Refit {
    /// Starts fitting `labels` (`(item, annotator, label)`, one per item and annotator) and `gold`
    /// on a thread named `labelqc-refit`, warm started from `warm` when given. The categories'
    /// order is taken from `names` now: the thread does not read the catalog, which the workers
    /// keep changing.
    ///
    /// # Errors
    /// The system refused the thread: the caller fits in place.
    pub fn start(
        labels: Vec<FitLabel>,
        gold: Vec<(ItemId, LabelId)>,
        names: &Catalog,
        options: FitOptions,
        warm: Option<WarmStart>,
        started: Instant,
    ) -> std::io::Result<Refit> {
        let rank = category_ranks(&labels, &gold, names);
        let count = labels.len();
        let is_warm = warm.is_some();
        let gathered = started.elapsed();
        let thread = std::thread::Builder::new().name("labelqc-refit".into()).spawn(move || {
            let start = Instant::now();
            let order = |a: &LabelId, b: &LabelId| rank[a].cmp(&rank[b]);
            let fitted = fit(&labels, &gold, order, &options, warm.as_ref()).map_err(|e| e.to_string());
            (fitted, start.elapsed())
        })?;
        Ok(Refit { thread, warm: is_warm, labels: count, started, gathered })
    }

    /// Whether the fit has finished (then [`Refit::join`] does not wait).
    pub fn finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// The fit and the time it took (waiting for it if it has not finished); a panic in it as an
    /// error.
    pub fn join(self) -> (Fitted, Duration) {
        let started = self.started;
        self.thread.join().unwrap_or_else(|panic| {
            let cause = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            (Err(format!("the refit thread stopped: {cause}")), started.elapsed())
        })
    }
}

/// Each category's rank in the spec's label order (`Label::spec_cmp`), for the categories the
/// labels and gold answers use.
fn category_ranks(
    labels: &[FitLabel],
    gold: &[(ItemId, LabelId)],
    names: &Catalog,
) -> HashMap<LabelId, usize> {
    let mut categories: Vec<LabelId> = Vec::new();
    let mut last = None;
    for id in labels.iter().map(|&(_, _, l)| l).chain(gold.iter().map(|&(_, l)| l)) {
        // Labels come sorted by item and annotator, so runs of one category are short; the
        // list is deduplicated below.
        if last != Some(id) {
            categories.push(id);
            last = Some(id);
        }
        if categories.len() > 4096 {
            categories.sort_unstable();
            categories.dedup();
        }
    }
    categories.sort_unstable();
    categories.dedup();
    categories.sort_by(|a, b| names.labels.get(*a).spec_cmp(names.labels.get(*b)));
    categories.into_iter().enumerate().map(|(rank, id)| (id, rank)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refit_gives_the_fit_in_place() {
        let mut catalog = Catalog::default();
        let labels_named = ["b", "a", "c"];
        let ids: Vec<LabelId> = labels_named
            .iter()
            .map(|n| catalog.label(&crate::label::RawLabel::String((*n).into())).unwrap())
            .collect();
        let mut labels = Vec::new();
        for item in 0..40u64 {
            for annotator in 0..5u64 {
                let l = ids[((item + annotator * (item % 3)) % 3) as usize];
                labels.push((item, annotator, l));
            }
        }
        let gold = vec![(0, ids[1]), (1, ids[0])];
        let options = FitOptions::default();
        let order = |a: &LabelId, b: &LabelId| catalog.labels.get(*a).spec_cmp(catalog.labels.get(*b));
        let in_place = fit(&labels, &gold, order, &options, None).unwrap();
        let refit =
            Refit::start(labels.clone(), gold.clone(), &catalog, options, None, Instant::now()).unwrap();
        while !refit.finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let background = refit.join().0.unwrap();
        assert_eq!(background.iterations(), in_place.iterations());
        let a: Vec<_> = in_place.items().map(|i| (i.item, i.label, i.posterior.to_vec())).collect();
        let b: Vec<_> = background.items().map(|i| (i.item, i.label, i.posterior.to_vec())).collect();
        assert_eq!(a, b);
        assert_eq!(in_place.priors().collect::<Vec<_>>(), background.priors().collect::<Vec<_>>());
    }
}
