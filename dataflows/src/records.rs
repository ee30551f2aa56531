//! Output records: what the dataflows produce. Every object of spec sections 3 and 4 (a scope, a
//! window, a pair, an annotator, an item, an alert, a gate) is a [`Record`], rendered as JSON by
//! the worker that owns its entity, and keyed by the names of its identity ([`RecordKey`]). The
//! dataflow's output is the collection of records (`+1` when a record appears, `-1` when it is
//! replaced or goes away): the report is the collection of final records, and the service
//! publishes each epoch's changes.
//!
//! Records order as the report lists them: by project and task, then within a scope its own
//! object, its pairs by names, its annotators, its items, its alerts (by id) and its windows (by
//! size and start); see [`Entity`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataflow::Diff;

/// What a record describes within its scope. The order of the variants is the order of a scope's
/// parts in the report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Entity {
    /// The scope object ([`crate::objects::ScopeSummary`]).
    Scope,
    /// An annotator pair by names, `a < b` bytewise ([`crate::objects::PairReport`]).
    Pair(Box<str>, Box<str>),
    /// An annotator by name ([`crate::objects::AnnotatorReport`] with its gate).
    Annotator(Box<str>),
    /// An item by name: its consensus, trusted consensus, truth and route ([`crate::trust`]).
    Item(Box<str>),
    /// An alert by id ([`crate::drift::Alert`]).
    Alert(Box<str>),
    /// A tumbling window of the scope by size and start, milliseconds
    /// ([`crate::objects::WindowSummary`]).
    Window { size_ms: i64, start_ms: i64 },
    /// The gate of an annotator (by name) in the record's project ([`crate::drift::Gate`]); gates
    /// belong to a project, so the record's task is empty.
    Gate(Box<str>),
    /// The scope's preference numbers over all its comparisons, spec 2.2
    /// ([`crate::preferences::PreferenceQuality`]): joined to the scope's own record as its
    /// `preferences` ([`crate::scope_truth::ScopePartsLogic`]), not a record of its own outside
    /// the dataflow.
    Preferences,
    /// A system's leaderboard entry by name, spec 2.2
    /// ([`crate::preferences::LeaderboardEntry`]).
    System(Box<str>),
}

/// The identity of a record: its scope's names and the entity within it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    pub project: Box<str>,
    pub task: Box<str>,
    pub entity: Entity,
}

/// One output record: its identity and its object as compact JSON.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Record {
    pub key: RecordKey,
    pub value: Vec<u8>,
}

impl Record {
    /// A record of `entity` in the scope `(project, task)` whose object is `object`.
    pub fn new(project: &str, task: &str, entity: Entity, object: &impl Serialize) -> Record {
        Record {
            key: RecordKey { project: project.into(), task: task.into(), entity },
            value: serde_json::to_vec(object).expect("objects serialise"),
        }
    }
}

/// The current records, built from the record changes of epochs: what a reader of the output
/// topics holds once it has read them (the demo, the tests, the service while it rebuilds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Records {
    pub records: BTreeMap<RecordKey, Vec<u8>>,
}

/// Each key's new value after one epoch's changes, consolidated so that each key's changes are
/// adjacent: the value of its `+1` change, or `None` when it only lost its value (it is gone).
pub fn new_values(changes: &[(Record, Diff)]) -> impl Iterator<Item = (&RecordKey, Option<&[u8]>)> {
    let mut rest = changes;
    std::iter::from_fn(move || {
        let (first, _) = rest.first()?;
        let len = rest.iter().take_while(|(r, _)| r.key == first.key).count();
        let (group, tail) = rest.split_at(len);
        rest = tail;
        Some((&first.key, group.iter().find(|(_, d)| *d > 0).map(|(r, _)| r.value.as_slice())))
    })
}

impl Records {
    /// Applies changes of one epoch (in any order): `+1` sets a record, `-1` withdraws the value
    /// it names (a record replaced in the same epoch keeps its new value).
    pub fn apply<'a>(&mut self, changes: impl IntoIterator<Item = &'a (Record, Diff)>) {
        for (record, diff) in changes {
            if *diff > 0 {
                self.records.insert(record.key.clone(), record.value.clone());
            } else if self.records.get(&record.key) == Some(&record.value) {
                self.records.remove(&record.key);
            }
        }
    }

    /// The value of a record, if it exists.
    pub fn get(&self, key: &RecordKey) -> Option<&[u8]> {
        self.records.get(key).map(Vec::as_slice)
    }

    /// The records of one scope, in report order.
    pub fn of_scope<'s>(
        &'s self,
        project: &'s str,
        task: &'s str,
    ) -> impl Iterator<Item = (&'s RecordKey, &'s [u8])> {
        let from = RecordKey { project: project.into(), task: task.into(), entity: Entity::Scope };
        self.records
            .range(from..)
            .take_while(move |(k, _)| &*k.project == project && &*k.task == task)
            .map(|(k, v)| (k, v.as_slice()))
    }

    /// Every record, in report order.
    pub fn iter(&self) -> impl Iterator<Item = (&RecordKey, &[u8])> {
        self.records.iter().map(|(k, v)| (k, v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Consolidates record changes: sorts them and sums the diffs of equal records, dropping those
/// that cancel.
pub fn consolidate(changes: &mut Vec<(Record, Diff)>) {
    differential_dataflow::consolidation::consolidate(changes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(entity: Entity) -> RecordKey {
        RecordKey { project: "p".into(), task: "t".into(), entity }
    }

    #[test]
    fn records_order_as_the_report_lists_them() {
        let mut keys = [
            key(Entity::Window { size_ms: 3_600_000, start_ms: -1 }),
            key(Entity::Alert("[\"p\"]".into())),
            key(Entity::Item("i".into())),
            key(Entity::Annotator("b".into())),
            key(Entity::Annotator("a b".into())),
            key(Entity::Pair("a".into(), "b".into())),
            key(Entity::Scope),
            RecordKey {
                project: "o".into(),
                task: "z".into(),
                entity: Entity::Window { size_ms: 1, start_ms: 0 },
            },
        ];
        keys.sort();
        let kinds: Vec<_> = keys.iter().map(|k| (&*k.project, k.entity.clone())).collect();
        assert_eq!(kinds[0].0, "o");
        assert_eq!(kinds[1].1, Entity::Scope);
        assert_eq!(kinds[3].1, Entity::Annotator("a b".into()), "names bytewise: \"a b\" < \"b\"");
        assert!(matches!(kinds[7].1, Entity::Window { .. }));
    }

    #[test]
    fn a_replaced_record_keeps_its_new_value_whatever_the_order() {
        let old = Record { key: key(Entity::Scope), value: b"1".to_vec() };
        let new = Record { key: key(Entity::Scope), value: b"2".to_vec() };
        for changes in [vec![(old.clone(), -1), (new.clone(), 1)], vec![(new.clone(), 1), (old.clone(), -1)]]
        {
            let mut records = Records::default();
            records.apply(&[(old.clone(), 1)]);
            records.apply(&changes);
            assert_eq!(records.get(&new.key), Some(&b"2"[..]));
        }
        let mut records = Records::default();
        records.apply(&[(old.clone(), 1), (old, -1)]);
        assert!(records.is_empty());
    }
}
