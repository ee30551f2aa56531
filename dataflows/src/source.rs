//! The source side of the dataflows: names interned to compact ids (the [`Catalog`]) and the
//! upsert state that turns "latest event per identity wins" into differential updates: an upsert
//! that replaces a label emits `(-old, +new)`, a delete emits `-old`, a repeat emits nothing.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use crate::event::{parse_gold_event, parse_label_event, GoldEvent, LabelEvent, Op, ParseError};
use crate::label::{LabelId, LabelTable};

/// Compact id of a (project, task) scope.
pub type ScopeId = u32;
/// Compact id of an item name (shared across scopes; an item is identified by `(scope, item)`).
pub type ItemId = u32;
/// Compact id of an annotator name.
pub type AnnotatorId = u32;
/// An item within its scope.
pub type ItemKey = (ScopeId, ItemId);

/// When a label was given (event time, epoch milliseconds) and how long it took: the inputs of
/// the drift signals, carried with every live label.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Stamp {
    pub ts_ms: i64,
    /// Time spent, if reported (milliseconds, saturated at `u32::MAX`).
    pub duration_ms: Option<u32>,
}

/// Milliseconds in an event-time day.
pub const DAY_MS: i64 = 86_400_000;

impl Stamp {
    /// The UTC event-time day of the label, counted from 1970-01-01.
    pub fn day(&self) -> Day {
        self.ts_ms.div_euclid(DAY_MS) as Day
    }
}

/// An event-time day number (days since 1970-01-01, UTC).
pub type Day = i32;

/// Assigns dense ids to strings, in order of first appearance.
#[derive(Debug, Default)]
pub struct Interner {
    ids: HashMap<Box<str>, u32, RandomState>,
    names: Vec<Box<str>>,
}

impl Interner {
    /// The id of `name`, assigned on first sight.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).expect("more than 2^32 distinct names");
        self.ids.insert(name.into(), id);
        self.names.push(name.into());
        id
    }

    /// The id of `name`, if it was seen.
    pub fn lookup(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The name with id `id`. Panics on an id this interner did not assign.
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// Number of names seen.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name was seen yet.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The names behind every id in the dataflows: scopes, items, annotators and labels.
#[derive(Debug, Default)]
pub struct Catalog {
    projects: Interner,
    tasks: Interner,
    scopes: HashMap<(u32, u32), ScopeId, RandomState>,
    scope_names: Vec<(u32, u32)>,
    pub items: Interner,
    pub annotators: Interner,
    pub labels: LabelTable,
}

impl Catalog {
    /// The id of the scope `(project, task)`.
    pub fn scope(&mut self, project: &str, task: &str) -> ScopeId {
        let key = (self.projects.intern(project), self.tasks.intern(task));
        let next = ScopeId::try_from(self.scope_names.len()).expect("more than 2^32 scopes");
        let id = *self.scopes.entry(key).or_insert(next);
        if id == next {
            self.scope_names.push(key);
        }
        id
    }

    /// Number of scopes seen; their ids are `0..scope_count()`.
    pub fn scope_count(&self) -> ScopeId {
        self.scope_names.len() as ScopeId
    }

    /// The `(project, task)` names of a scope.
    pub fn scope_name(&self, scope: ScopeId) -> (&str, &str) {
        let (p, t) = self.scope_names[scope as usize];
        (self.projects.name(p), self.tasks.name(t))
    }
}

/// A change to the dataflows' inputs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Update {
    /// A label row `(item, annotator, label, stamp)` added (`diff` 1) or removed (`diff` -1).
    Label { item: ItemKey, annotator: AnnotatorId, label: LabelId, stamp: Stamp, diff: i64 },
    /// A gold answer `(item, label)` added or removed.
    Gold { item: ItemKey, label: LabelId, diff: i64 },
}

/// The input a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Labels,
    Gold,
}

impl Stream {
    /// The stream's name in metrics and messages: `labels` or `gold`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Labels => "labels",
            Stream::Gold => "gold",
        }
    }
}

/// Interns events and applies upsert/delete semantics, emitting the resulting [`Update`]s.
#[derive(Debug, Default)]
pub struct Source {
    pub catalog: Catalog,
    labels: HashMap<(ItemKey, AnnotatorId), (LabelId, Stamp), RandomState>,
    gold: HashMap<ItemKey, LabelId, RandomState>,
}

impl Source {
    /// Applies one label event; appends the updates it causes (none, one or two) to `out`.
    pub fn apply_label(&mut self, event: &LabelEvent<'_>, out: &mut Vec<Update>) {
        let scope = self.catalog.scope(&event.project, &event.task);
        let item = (scope, self.catalog.items.intern(&event.item_id));
        let annotator = self.catalog.annotators.intern(&event.annotator_id);
        let stamp = Stamp {
            ts_ms: event.ts_ms,
            duration_ms: event.duration_ms.map(|d| u32::try_from(d).unwrap_or(u32::MAX)),
        };
        let new = event.label.as_ref().map(|l| (self.catalog.labels.intern(l), stamp));
        let old = match new {
            Some(row) => self.labels.insert((item, annotator), row),
            None => self.labels.remove(&(item, annotator)),
        };
        if old == new {
            return;
        }
        if let Some((label, stamp)) = old {
            out.push(Update::Label { item, annotator, label, stamp, diff: -1 });
        }
        if let Some((label, stamp)) = new {
            out.push(Update::Label { item, annotator, label, stamp, diff: 1 });
        }
    }

    /// Applies one gold answer; appends the updates it causes to `out`.
    pub fn apply_gold(&mut self, event: &GoldEvent<'_>, out: &mut Vec<Update>) {
        let scope = self.catalog.scope(&event.project, &event.task);
        let item = (scope, self.catalog.items.intern(&event.item_id));
        let new = event.label.as_ref().map(|l| self.catalog.labels.intern(l));
        let old = match new {
            Some(label) => self.gold.insert(item, label),
            None => self.gold.remove(&item),
        };
        if old == new {
            return;
        }
        if let Some(label) = old {
            out.push(Update::Gold { item, label, diff: -1 });
        }
        if let Some(label) = new {
            out.push(Update::Gold { item, label, diff: 1 });
        }
    }

    /// Parses one record of `stream` and applies it; returns its operation, or why it was refused.
    pub fn apply_record(
        &mut self,
        stream: Stream,
        record: &str,
        out: &mut Vec<Update>,
    ) -> Result<Op, ParseError> {
        match stream {
            Stream::Labels => {
                let event = parse_label_event(record)?;
                self.apply_label(&event, out);
                Ok(event.op)
            }
            Stream::Gold => {
                let event = parse_gold_event(record)?;
                self.apply_gold(&event, out);
                Ok(event.op)
            }
        }
    }

    /// Number of live labels (identities with a current label).
    pub fn live_labels(&self) -> usize {
        self.labels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse_gold_event, parse_label_event};

    fn at(ts_ms: i64) -> Stamp {
        Stamp { ts_ms, duration_ms: None }
    }

    #[test]
    fn latest_event_wins() {
        let mut source = Source::default();
        let mut out = Vec::new();
        for line in [
            r#"{"item_id":"i","annotator_id":"a","label":"x","ts":1}"#,
            r#"{"item_id":"i","annotator_id":"a","label":"x","ts":1}"#,
            r#"{"item_id":"i","annotator_id":"a","label":"y","ts":3}"#,
            r#"{"item_id":"i","annotator_id":"a","ts":4,"op":"delete"}"#,
            r#"{"item_id":"i","annotator_id":"a","ts":5,"op":"delete"}"#,
        ] {
            source.apply_label(&parse_label_event(line).unwrap(), &mut out);
        }
        let item = (0, 0);
        assert_eq!(
            out,
            vec![
                Update::Label { item, annotator: 0, label: 0, stamp: at(1), diff: 1 },
                Update::Label { item, annotator: 0, label: 0, stamp: at(1), diff: -1 },
                Update::Label { item, annotator: 0, label: 1, stamp: at(3), diff: 1 },
                Update::Label { item, annotator: 0, label: 1, stamp: at(3), diff: -1 },
            ]
        );
        assert_eq!(source.live_labels(), 0);
    }

    #[test]
    fn gold_corrections() {
        let mut source = Source::default();
        let mut out = Vec::new();
        for line in [r#"{"item_id":"g","label":"x"}"#, r#"{"item_id":"g","label":"y"}"#] {
            source.apply_gold(&parse_gold_event(line).unwrap(), &mut out);
        }
        assert_eq!(
            out,
            vec![
                Update::Gold { item: (0, 0), label: 0, diff: 1 },
                Update::Gold { item: (0, 0), label: 0, diff: -1 },
                Update::Gold { item: (0, 0), label: 1, diff: 1 },
            ]
        );
        assert_eq!(source.catalog.scope_name(0), ("default", "default"));
    }
}
