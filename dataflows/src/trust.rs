//! Item records with trust, truth and route (spec section 2.1), formed downstream of the items:
//!
//! ```text
//! items --rows--> (scope, annotator) labels --semijoin-- blocked (scope, annotator) from the gates
//!   |                                            |
//!   |                                            v
//!   +--rows---------------------------------> item records <-- truth per item (Dawid–Skene)
//!                                                |
//!                                                +--> route decisions, to the scope's record
//! ```
//!
//! - **Trusted consensus** is the consensus among the labels of annotators whose gate in the
//!   item's project is not `block`. The labels of blocked annotators are a differential join
//!   ([`blocked_labels`]) of every live label, keyed by `(scope, annotator)`, with the blocked
//!   `(scope, annotator)` pairs: when a gate flips, the join emits one change per label of that
//!   annotator, and exactly those items are re-decided, in the same epoch, in both directions.
//!   A report ([`Emit::Final`]) derives each item once, after the gates are final, so it needs
//!   no join: the blocked pairs are broadcast to every worker and each label is checked against
//!   them (no arrangement of every label by annotator: about 0.1 s and 27 MiB at 1M labels).
//! - **Item records** ([`ItemRecordLogic`]) are keyed by item: its live labels, which of their
//!   annotators are blocked, its gold answer and its truth; they render `consensus`, `tied`,
//!   `trusted`, `truth` and `route`, and send each item's route to its scope ([`ItemOut::Route`]).

use std::collections::HashMap;

use differential_dataflow::{AsCollection, VecCollection};
use foldhash::fast::RandomState;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use timely::dataflow::operators::vec::Broadcast;

use crate::annotators::JoinInput;
use crate::dataflow::{Diff, QualityConfig, Time};
use crate::items::{item_route, ItemRow};
use crate::keyed::{keyed, Emit, Keyed};
use crate::label::{JsonLabel, LabelId};
use crate::names::Names;
use crate::records::{Entity, Record};
use crate::routing::{route, trusted_consensus, Route, RouteInput, RoutingSettings};
use crate::scope_truth::{ScopePart, TruthLogic, TruthOut};
use crate::source::{AnnotatorId, Catalog, ItemKey, ScopeId};

/// What changes an item's record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ItemUpdate {
    /// A live label ([`ItemRow::Label`]; its fields inline rather than the row, whose own tag
    /// would add a word to every part).
    Label { annotator: AnnotatorId, label: LabelId, compared: bool },
    /// The gold answer ([`ItemRow::Gold`]).
    Gold { label: LabelId },
    /// `annotator`, who labelled the item, is blocked in the item's project.
    Blocked(AnnotatorId),
    /// The item's Dawid–Skene truth, behind a pointer: an item keeps a few of these parts
    /// inline (every item of a report is kept until the end), and the truth is the largest.
    Truth(std::sync::Arc<ItemTruthPart>),
}

impl From<ItemRow> for ItemUpdate {
    fn from(row: ItemRow) -> ItemUpdate {
        match row {
            ItemRow::Label { annotator, label, compared } => ItemUpdate::Label { annotator, label, compared },
            ItemRow::Gold { label } => ItemUpdate::Gold { label },
        }
    }
}

/// An item's Dawid–Skene truth as its record shows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemTruthPart {
    /// The truth label.
    pub label: LabelId,
    /// Its posterior probability, as `f64` bits.
    pub p: u64,
    /// The item's `truth` object as JSON.
    pub json: std::sync::Arc<[u8]>,
}

/// The labels of blocked annotators, as updates of their items: a join of every live label
/// (`rows`, keyed by `(scope, annotator)`) with the blocked `(scope, annotator)` pairs.
pub fn blocked_labels<'s>(
    rows: VecCollection<'s, Time, (ItemKey, ItemRow), Diff>,
    blocked: VecCollection<'s, Time, (ScopeId, AnnotatorId), Diff>,
) -> VecCollection<'s, Time, (ItemKey, ItemUpdate), Diff> {
    rows.flat_map(|((scope, item), row)| match row {
        ItemRow::Label { annotator, .. } => Some(((scope, annotator), item)),
        ItemRow::Gold { .. } => None,
    })
    .semijoin(blocked)
    .map(|((scope, annotator), item)| ((scope, item), ItemUpdate::Blocked(annotator)))
}

/// What truth, trust and routing derive for the other operators.
pub struct Derived<'s> {
    /// The item records (when [`crate::items::ItemsConfig::records`] asks for them).
    pub item_records: VecCollection<'s, Time, Record, Diff>,
    /// Each annotator's confusion matrix, for its records.
    pub confusion: VecCollection<'s, Time, ((ScopeId, AnnotatorId), JoinInput), Diff>,
    /// Each scope's truth and its items' routes, for its record.
    pub scope_parts: VecCollection<'s, Time, (ScopeId, ScopePart), Diff>,
}

/// Truth per scope from the items' `rows`, and the item records with trust (the labels of the
/// `blocked` annotators joined out), truth and route.
pub fn derive<'s>(
    rows: VecCollection<'s, Time, (ItemKey, ItemRow), Diff>,
    blocked: VecCollection<'s, Time, (ScopeId, AnnotatorId), Diff>,
    names: &Names<'s>,
    config: &QualityConfig,
    emit: Emit,
) -> Derived<'s> {
    let records = config.items.records.is_some();
    let refresh = config.truth_refresh.filter(|_| emit == Emit::Changes);
    let threads = config.truth_threads.max(1);
    let logic = TruthLogic {
        settings: config.truth.clone(),
        refresh,
        threads,
        item_json: records,
        once: emit == Emit::Final,
        staged: Default::default(),
        backlog: config.truth_backlog.clone(),
    };
    // With truth off (`truth.enabled = false`) the truth operator gets no rows: it fits nothing
    // and forms nothing, so its outputs below are empty.
    let enabled = config.truth.enabled;
    let truth_rows = rows.clone().filter(move |_| enabled).map(|((scope, item), row)| (scope, (item, row)));
    // Live with a refresh interval: a tick per epoch lets due scopes be refitted.
    let ticks = refresh.filter(|_| enabled).map(|_| crate::scope_truth::ticks(rows.inner.clone()));
    let truth = keyed(truth_rows, ticks, names, logic, emit, "Truth");
    let confusion = truth.others.clone().flat_map(|out| match out {
        TruthOut::Annotator { scope, annotator, json } => {
            Some(((scope, annotator), JoinInput::Confusion(json)))
        }
        _ => None,
    });
    let item_truth = truth.others.clone().flat_map(|out| match out {
        TruthOut::Item { scope, item, label, p, json } => {
            Some(((scope, item), ItemUpdate::Truth(std::sync::Arc::new(ItemTruthPart { label, p, json }))))
        }
        _ => None,
    });
    let scope_truth = truth.others.flat_map(|out| match out {
        TruthOut::Scope { scope, json } => Some((scope, ScopePart::Truth(json))),
        _ => None,
    });
    let mut updates = rows.clone().map(|(item, row)| (item, ItemUpdate::from(row))).concat(item_truth);
    let logic = ItemRecordLogic { routing: config.routing.clone(), records, blocked: HashMap::default() };
    let items = match emit {
        // Live: a gate's flip re-decides exactly its annotator's items, through the join.
        Emit::Changes => {
            updates = updates.concat(blocked_labels(rows, blocked));
            keyed(updates, None, names, logic, emit, "ItemRecords")
        }
        // A report derives each item once, after the gates are final: every worker gets the
        // blocked pairs (few) and checks each label against them, with no arrangement of every
        // label by annotator.
        Emit::Final => {
            let blocked = blocked.inner.broadcast().as_collection();
            keyed(updates, Some(blocked), names, logic, emit, "ItemRecords")
        }
    };
    // Every item's route goes to its scope's worker, which counts them: consolidated on the
    // way, a worker sends each (route, labels saved) once with its count, not once per item.
    let routes = items
        .others
        .flat_map(|out| match out {
            ItemOut::Route { scope, route, labels_saved } => {
                Some((scope, ScopePart::Route { route, labels_saved }))
            }
            ItemOut::Record(_) => None,
        })
        .consolidate_stream();
    let item_records = items.records.flat_map(|out| match out {
        ItemOut::Record(record) => Some(record),
        ItemOut::Route { .. } => None,
    });
    Derived { item_records, confusion, scope_parts: scope_truth.concat(routes) }
}

/// What an item's record derives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ItemOut {
    Record(Record),
    /// The item's route in `scope` and the labels it saves against fixed overlap.
    Route {
        scope: ScopeId,
        route: Route,
        labels_saved: u32,
    },
}

/// The item records: consensus, trusted consensus, truth and route.
pub struct ItemRecordLogic {
    pub routing: RoutingSettings,
    /// Whether the records are rendered (else only the routes leave, for the scopes' counts).
    pub records: bool,
    /// With [`Emit::Final`], the blocked `(scope, annotator)` pairs, broadcast to every worker as
    /// side updates (with their multiplicities); live, blocked labels come as
    /// [`ItemUpdate::Blocked`] instead and this stays empty.
    pub blocked: HashMap<(ScopeId, AnnotatorId), Diff, RandomState>,
}

/// An item's parts with their multiplicities.
#[derive(Debug, Default)]
pub struct ItemParts {
    parts: SmallVec<[(ItemUpdate, Diff); 6]>,
}

/// The item's trusted consensus as its record shows it.
#[derive(Serialize)]
struct Trusted<'a> {
    label: JsonLabel<'a>,
    tied: bool,
    n: u32,
}

#[derive(Serialize)]
struct ItemObject<'a> {
    consensus: JsonLabel<'a>,
    tied: bool,
    trusted: Option<Trusted<'a>>,
}

impl Keyed for ItemRecordLogic {
    type Key = ItemKey;
    type Update = ItemUpdate;
    type Diff = Diff;
    type State = ItemParts;
    type Out = ItemOut;
    type Side = (ScopeId, AnnotatorId);

    fn route(key: &ItemKey) -> u64 {
        item_route(key)
    }

    fn side(&mut self, pair: &(ScopeId, AnnotatorId), diff: Diff) {
        let count = self.blocked.entry(*pair).or_default();
        *count += diff;
        if *count == 0 {
            self.blocked.remove(pair);
        }
    }

    fn apply(&mut self, _: &ItemKey, s: &mut ItemParts, update: &ItemUpdate, &diff: &Diff) {
        match s.parts.iter().position(|(p, _)| p == update) {
            Some(i) => {
                s.parts[i].1 += diff;
                if s.parts[i].1 == 0 {
                    s.parts.swap_remove(i);
                }
            }
            None => s.parts.push((update.clone(), diff)),
        }
    }

    fn derive(
        &mut self,
        &(scope, item): &ItemKey,
        s: &mut ItemParts,
        names: &Catalog,
        out: &mut Vec<ItemOut>,
    ) {
        let live = || s.parts.iter().filter(|(_, d)| *d > 0).map(|(p, _)| p);
        let labels: SmallVec<[(AnnotatorId, LabelId); 8]> = live()
            .filter_map(|p| match p {
                ItemUpdate::Label { annotator, label, .. } => Some((*annotator, *label)),
                _ => None,
            })
            .collect();
        if labels.is_empty() {
            return;
        }
        let order = |a: &LabelId, b: &LabelId| names.labels.get(*a).spec_cmp(names.labels.get(*b));
        let blocked = |annotator: AnnotatorId| {
            self.blocked.get(&(scope, annotator)).is_some_and(|&n| n > 0)
                || live().any(|p| *p == ItemUpdate::Blocked(annotator))
        };
        let all = trusted_consensus(&labels, |_| false, order).expect("an item with labels has a consensus");
        let trusted = trusted_consensus(&labels, blocked, order);
        let gold = live().any(|p| matches!(p, ItemUpdate::Gold { .. }));
        let truth = live().find_map(|p| match p {
            ItemUpdate::Truth(truth) => Some((f64::from_bits(truth.p), &truth.json)),
            _ => None,
        });
        let decision = route(
            &RouteInput {
                trusted: trusted.map_or(0, |t| t.n),
                labels: labels.len() as u32,
                posterior: truth.map(|(p, _)| p),
                gold,
            },
            &self.routing,
        );
        out.push(ItemOut::Route { scope, route: decision.route, labels_saved: decision.labels_saved });
        if !self.records {
            return;
        }
        let object = ItemObject {
            consensus: JsonLabel(names.labels.get(all.label)),
            tied: all.tied,
            trusted: trusted.map(|t| Trusted {
                label: JsonLabel(names.labels.get(t.label)),
                tied: t.tied,
                n: t.n,
            }),
        };
        let mut value = serde_json::to_vec(&object).expect("an item serialises");
        value.pop();
        value.extend_from_slice(b",\"truth\":");
        value.extend_from_slice(truth.map_or(&b"null"[..], |(_, json)| json));
        value.extend_from_slice(b",\"route\":\"");
        value.extend_from_slice(decision.route.name().as_bytes());
        value.extend_from_slice(b"\"}");
        let (project, task) = names.scope_name(scope);
        let key = crate::records::RecordKey::new(project, task, Entity::Item(names.items.shared(item)));
        out.push(ItemOut::Record(Record { key, value }));
    }

    fn is_empty(s: &ItemParts) -> bool {
        s.parts.is_empty()
    }

    fn is_record(out: &ItemOut) -> bool {
        matches!(out, ItemOut::Record(_))
    }
}

#[cfg(test)]
mod tests;
