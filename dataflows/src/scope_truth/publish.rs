//! What a fit of a scope's truth publishes, and how ([`crate::scope_truth`]): each item's
//! `truth` object, each annotator's `confusion` and the scope's `truth` ([`Forming`]). Live, the
//! items' truths are published as changes against what was published before ([`ItemChange`]),
//! in order, at most [`PUBLISH_PER_EPOCH`] per worker and epoch, while [`TruthBacklog`] counts
//! those waiting; a warm refit republishes only the items whose truth moved beyond
//! `truth.live_tolerance`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use foldhash::fast::RandomState;
use serde::Serialize;

use super::TruthOut;
use crate::label::{JsonLabel, Label, LabelId};
use crate::source::{Catalog, ItemId, ScopeId};
use crate::truth::{ItemTruth, TruthFit};

/// An item's published truth: its output and the posterior and label it was formed from.
#[derive(Clone, Debug)]
pub(super) struct Published {
    item: ItemId,
    label: LabelId,
    posterior: Posterior,
    pub(super) out: TruthOut,
}

/// An item's posterior: `(label, probability)` in label order.
type Posterior = smallvec::SmallVec<[(LabelId, f64); 4]>;

/// Live: the most item truths one worker publishes in one epoch. Each is an item record re-formed
/// downstream, with its retraction: an epoch that published 512 took 2-3 ms in all, after 1M
/// and after 10M events of history, on the 2-core machine (`benches/report.rs`, which first
/// drains the history's backlog). A backlog of a million item truths drains in about 2,000
/// epochs, which the engine closes back to back while it waits ([`TruthBacklog`]).
pub const PUBLISH_PER_EPOCH: usize = 512;

/// Live: the number of item truths that finished fits have formed and that wait to be published,
/// over the workers of one process. The engine reads it ([`crate::engine::Engine::truth_backlog`])
/// to close epochs while some wait, so that they are published without waiting for input.
#[derive(Clone, Debug, Default)]
pub struct TruthBacklog(Arc<AtomicUsize>);

impl TruthBacklog {
    /// The item truths waiting.
    pub fn waiting(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub(super) fn add(&self, n: usize) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn sub(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A change of one item's published truth: its output retracted, its new one inserted (either
/// may be absent: a new item, an item that lost its labels). Published whole, in one epoch, so
/// that an item never has two truths or none in between.
#[derive(Debug, PartialEq)]
pub(crate) struct ItemChange {
    pub(super) retract: Option<TruthOut>,
    pub(super) insert: Option<TruthOut>,
}

impl ItemChange {
    /// The retraction of an item that has no truth any more.
    fn gone(published: &Published) -> ItemChange {
        ItemChange { retract: Some(published.out.clone()), insert: None }
    }
}

/// The changes that retract every item of `published`.
pub(super) fn retract_all(published: &[Published]) -> Vec<ItemChange> {
    published.iter().map(ItemChange::gone).collect()
}

/// What a fit's outputs are, beside the annotators' and the scope's.
pub(super) struct Outputs {
    /// Live: the items' truths as published from now on (else empty).
    pub(super) published: Vec<Published>,
    /// Live: the changes of the items' published truths, ascending by item (else empty: the
    /// items' outputs are among the scope's).
    pub(super) changes: Vec<ItemChange>,
    /// The items whose output was formed anew.
    pub(super) formed: usize,
}

/// Whether `new` is within `tolerance` of `old`: the same labels, each probability closer than it.
fn within(old: &Posterior, new: &Posterior, tolerance: f64) -> bool {
    old.len() == new.len() && old.iter().zip(new).all(|(a, b)| a.0 == b.0 && (a.1 - b.1).abs() < tolerance)
}

/// The text of items whose `truth` object is not rendered: one shared empty text, not an
/// allocation per item.
static NO_JSON: std::sync::LazyLock<Arc<[u8]>> = std::sync::LazyLock::new(|| Arc::from(&[][..]));

#[derive(Serialize)]
struct Prob<'a> {
    label: JsonLabel<'a>,
    p: f64,
}

#[derive(Serialize)]
struct ItemTruthObject<'a> {
    label: JsonLabel<'a>,
    posterior: Vec<Prob<'a>>,
}

#[derive(Serialize)]
struct Cell<'a> {
    observed: JsonLabel<'a>,
    #[serde(rename = "true")]
    truth: JsonLabel<'a>,
    p: f64,
}

#[derive(Serialize)]
struct ScopeTruthObject<'a> {
    priors: Vec<Prob<'a>>,
    iterations: u32,
}

/// The names of the categories whose JSON a fit's outputs carry: the catalog in the worker, a
/// copy of the scope's categories on a refit's thread.
pub(crate) trait CategoryNames {
    fn name(&self, id: LabelId) -> &Label;
}

impl CategoryNames for Catalog {
    fn name(&self, id: LabelId) -> &Label {
        self.labels.get(id)
    }
}

impl CategoryNames for HashMap<LabelId, Label, RandomState> {
    fn name(&self, id: LabelId) -> &Label {
        &self[&id]
    }
}

/// How a fit's outputs are formed (from [`super::TruthLogic`]; `Copy`, for a refit's thread).
#[derive(Clone, Copy, Debug)]
pub(super) struct Forming {
    pub(super) scope: ScopeId,
    /// [`super::TruthLogic::item_json`].
    pub(super) item_json: bool,
    /// `truth.live_tolerance`.
    pub(super) tolerance: f64,
    /// Live: the items' truths are published as changes ([`ItemChange`]) and kept, for the next
    /// warm refit.
    pub(super) live: bool,
}

impl Forming {
    /// An item's truth output.
    pub(super) fn item_output(&self, item: &ItemTruth, names: &impl CategoryNames) -> TruthOut {
        let label = |id: LabelId| JsonLabel(names.name(id));
        let json = if self.item_json {
            let object = ItemTruthObject {
                label: label(item.label),
                posterior: item.posterior.iter().map(|&(l, p)| Prob { label: label(l), p }).collect(),
            };
            serde_json::to_vec(&object).expect("a truth serialises").into()
        } else {
            NO_JSON.clone()
        };
        TruthOut::Item { scope: self.scope, item: item.item, label: item.label, p: item.p.to_bits(), json }
    }

    /// The outputs of a fit: its items' (after a warm refit, an item's published output when its
    /// truth label is the same and its posterior within `live_tolerance` of the published one),
    /// its annotators' and the scope's. Live, the items' go to [`Outputs::changes`], against
    /// the `before` published; else to `out`.
    pub(super) fn outputs(
        &self,
        fit: &TruthFit,
        warm: bool,
        before: &[Published],
        names: &impl CategoryNames,
        out: &mut Vec<TruthOut>,
    ) -> Outputs {
        let label = |id: LabelId| JsonLabel(names.name(id));
        let hold = warm && self.tolerance > 0.0;
        let mut before = before.iter().peekable();
        let mut published = Vec::with_capacity(if self.live { fit.items().len() } else { 0 });
        let mut changes = Vec::new();
        let mut formed = 0;
        for item in fit.items() {
            // Both ascend by item: the items that lost their labels are retracted.
            while let Some(gone) = before.next_if(|p| p.item < item.item) {
                changes.push(ItemChange::gone(gone));
            }
            let previous = before.next_if(|p| p.item == item.item);
            if let Some(previous) = previous.filter(|p| {
                hold && p.label == item.label && within(&p.posterior, &item.posterior, self.tolerance)
            }) {
                published.push(previous.clone());
                continue;
            }
            formed += 1;
            let output = self.item_output(&item, names);
            if !self.live {
                out.push(output);
                continue;
            }
            let retract = previous.map(|p| p.out.clone()).filter(|old| *old != output);
            let ItemTruth { item, label, posterior, .. } = item;
            if retract.is_some() || previous.is_none() {
                changes.push(ItemChange { retract, insert: Some(output.clone()) });
            }
            published.push(Published { item, label, posterior, out: output });
        }
        changes.extend(before.map(ItemChange::gone));
        for confusion in fit.annotators() {
            let cells: Vec<Cell> = confusion
                .cells
                .iter()
                .map(|c| Cell { observed: label(c.observed), truth: label(c.truth), p: c.p })
                .collect();
            let json = serde_json::to_vec(&cells).expect("a confusion matrix serialises");
            out.push(TruthOut::Annotator { scope: self.scope, annotator: confusion.annotator, json });
        }
        let object = ScopeTruthObject {
            priors: fit.priors().map(|(l, p)| Prob { label: label(l), p }).collect(),
            iterations: fit.iterations(),
        };
        let json = serde_json::to_vec(&object).expect("priors serialise");
        out.push(TruthOut::Scope { scope: self.scope, json });
        Outputs { published, changes, formed }
    }
}
