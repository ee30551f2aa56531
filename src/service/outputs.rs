//! The output records of `labelqc run` (spec section 4) and what the output topics hold.
//!
//! Every record has a key, the JSON array of its entity's identity (`["project","task"]`,
//! `["project","task","annotator_id"]`, ...), so that no name, whatever it contains, makes two
//! entities share a key; its value is the entity's object, or a tombstone (no value) when the
//! entity is gone. [`Renderer`] forms the records from the view.
//!
//! [`Published`] is what the keyed output topics hold: read back from them at start
//! ([`super::readback`]), then kept up to date as records are sent. It is the stage that makes
//! restarts invisible to the topics' readers: a record is published only when it differs from
//! what its topic holds ([`Published::observe`]); after a restart the state is rebuilt without
//! publishing and then published as the difference from what the topics hold, tombstones included
//! for entities that vanished while the service was down. For the gating topic, a log of
//! decisions, it keeps the last decision per annotator, and a record is sent only for a decision
//! made since ([`gate_records_since`]).

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use foldhash::fast::RandomState;
use labelqc_dataflows::drift::{rfc3339, Alert};
use labelqc_dataflows::label::stable_id;
use labelqc_dataflows::source::{window_size_name, AnnotatorId, Catalog, ItemId, ScopeId};
use labelqc_dataflows::view::{gate_records_since, Changes, GateRecord, PublishedGate, QualityView};
use serde::Serialize;

use crate::config::OutputTopics;

/// The output topics of spec section 4, as the configuration names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutputTopic {
    Scopes,
    Annotators,
    Pairs,
    Items,
    ScopeWindows,
    Alerts,
    Gating,
    DeadLetter,
}

impl OutputTopic {
    /// The topics that hold one current value per key, read back at start and published as
    /// differences.
    pub const KEYED: [OutputTopic; 6] = [
        OutputTopic::Scopes,
        OutputTopic::Annotators,
        OutputTopic::Pairs,
        OutputTopic::Items,
        OutputTopic::ScopeWindows,
        OutputTopic::Alerts,
    ];

    /// The topic's name in the configuration.
    pub fn name(self, outputs: &OutputTopics) -> &str {
        match self {
            OutputTopic::Scopes => &outputs.scopes,
            OutputTopic::Annotators => &outputs.annotators,
            OutputTopic::Pairs => &outputs.pairs,
            OutputTopic::Items => &outputs.items,
            OutputTopic::ScopeWindows => &outputs.scope_windows,
            OutputTopic::Alerts => &outputs.alerts,
            OutputTopic::Gating => &outputs.gating,
            OutputTopic::DeadLetter => &outputs.deadletter,
        }
    }

    /// Whether the topic's values carry `updated_at`, which is no part of the value compared.
    fn stamped(self) -> bool {
        matches!(self, OutputTopic::Scopes | OutputTopic::ScopeWindows)
    }
}

/// One message for an output topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub topic: OutputTopic,
    /// The JSON array of the entity's identity.
    pub key: String,
    /// The value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// A key: the JSON array of an identity's parts.
pub fn key(parts: &[&str]) -> String {
    serde_json::to_string(parts).expect("strings serialise")
}

/// The hash of a value as compared: for stamped topics, without its `updated_at`.
fn value_hash(topic: OutputTopic, value: &[u8]) -> u64 {
    if topic.stamped() {
        if let Some(object) = unstamped(value) {
            return stable_id(&object);
        }
    }
    stable_id(value)
}

const STAMP: &[u8] = b",\"updated_at\":\"";

/// Appends `updated_at` to a serialised JSON object (as its last field).
fn stamp(mut object: Vec<u8>, updated_at: &str) -> Vec<u8> {
    debug_assert_eq!(object.last(), Some(&b'}'));
    object.pop();
    object.extend_from_slice(STAMP);
    object.extend_from_slice(updated_at.as_bytes());
    object.extend_from_slice(b"\"}");
    object
}

/// The object a stamped value was made from, if it was made by [`stamp`].
fn unstamped(value: &[u8]) -> Option<Vec<u8>> {
    let at = value.windows(STAMP.len()).rposition(|w| w == STAMP)?;
    if !value.ends_with(b"\"}") || value[at + STAMP.len()..value.len() - 2].contains(&b'"') {
        return None;
    }
    let mut object = value[..at].to_vec();
    object.push(b'}');
    Some(object)
}

#[derive(Serialize)]
struct Keyed<'a, T: Serialize> {
    project: &'a str,
    task: &'a str,
    #[serde(flatten)]
    object: &'a T,
}

#[derive(Serialize)]
struct ItemObject<'a, T: Serialize> {
    item_id: &'a str,
    #[serde(flatten)]
    consensus: &'a T,
}

/// Forms output records from a settled view.
pub struct Renderer<'a> {
    pub view: &'a QualityView,
    pub catalog: &'a Catalog,
    /// The `updated_at` of stamped values (RFC 3339, milliseconds).
    pub updated_at: String,
}

impl Renderer<'_> {
    fn record<T: Serialize>(&self, topic: OutputTopic, key: String, value: Option<&T>) -> Result<Record> {
        let mut value = value.map(serde_json::to_vec).transpose()?;
        if topic.stamped() {
            value = value.map(|object| stamp(object, &self.updated_at));
        }
        Ok(Record { topic, key, value })
    }

    /// The record of a scope or of a window scope.
    pub fn scope(&self, scope: ScopeId) -> Result<Record> {
        let (project, task) = self.catalog.scope_name(scope);
        match self.catalog.window(scope) {
            Some(window) => {
                let start = rfc3339(window.start_ms);
                let key = key(&[project, task, &window_size_name(window.size_ms), &start]);
                self.record(
                    OutputTopic::ScopeWindows,
                    key,
                    self.view.window_summary(scope, self.catalog).as_ref(),
                )
            }
            None => {
                let summary = self.view.scope_summary(scope, self.catalog);
                self.record(OutputTopic::Scopes, key(&[project, task]), summary.as_ref())
            }
        }
    }

    /// The record of an annotator within a scope.
    pub fn annotator(&self, scope: ScopeId, annotator: AnnotatorId) -> Result<Record> {
        let (project, task) = self.catalog.scope_name(scope);
        let object = self.view.annotator(scope, annotator, self.catalog);
        let keyed = object.as_ref().map(|object| Keyed { project, task, object });
        let key = key(&[project, task, self.catalog.annotators.name(annotator)]);
        self.record(OutputTopic::Annotators, key, keyed.as_ref())
    }

    /// The record of an annotator pair (ids in either order) within a scope.
    pub fn pair(&self, scope: ScopeId, a: AnnotatorId, b: AnnotatorId) -> Result<Record> {
        let (project, task) = self.catalog.scope_name(scope);
        let (name_a, name_b) = (self.catalog.annotators.name(a), self.catalog.annotators.name(b));
        let (first, second) = if name_a <= name_b { (name_a, name_b) } else { (name_b, name_a) };
        let object = self.view.pair(scope, a, b, self.catalog);
        let keyed = object.as_ref().map(|object| Keyed { project, task, object });
        self.record(OutputTopic::Pairs, key(&[project, task, first, second]), keyed.as_ref())
    }

    /// The record of an item within a scope.
    pub fn item(&self, scope: ScopeId, item: ItemId) -> Result<Record> {
        let (project, task) = self.catalog.scope_name(scope);
        let item_id = self.catalog.items.name(item);
        let consensus = self.view.item(scope, item, self.catalog);
        let object = consensus.as_ref().map(|consensus| ItemObject { item_id, consensus });
        let keyed = object.as_ref().map(|object| Keyed { project, task, object });
        self.record(OutputTopic::Items, key(&[project, task, item_id]), keyed.as_ref())
    }

    /// The record of an alert (`None`: its condition no longer follows from the data).
    pub fn alert(&self, id: &str, alert: Option<&Alert>) -> Result<Record> {
        self.record(OutputTopic::Alerts, id.to_string(), alert)
    }

    /// The records of every entity that changed (gates apart: see [`Published::gate_records`]).
    pub fn changes(&self, changes: &Changes) -> Result<Vec<Record>> {
        let mut records = Vec::with_capacity(
            changes.scopes.len() + changes.annotators.len() + changes.pairs.len() + changes.items.len(),
        );
        for &scope in &changes.scopes {
            records.push(self.scope(scope)?);
        }
        for &(scope, annotator) in &changes.annotators {
            records.push(self.annotator(scope, annotator)?);
        }
        for &(scope, a, b) in &changes.pairs {
            records.push(self.pair(scope, a, b)?);
        }
        for &(scope, item) in &changes.items {
            records.push(self.item(scope, item)?);
        }
        for (id, alert) in &changes.alerts {
            records.push(self.alert(id, alert.as_ref())?);
        }
        Ok(records)
    }

    /// The records of every entity of one scope, its windows included: what the topics hold for
    /// it when they are up to date.
    pub fn scope_all(&self, scope: ScopeId) -> Result<Vec<Record>> {
        let Some(report) = self.view.scope_report(scope, self.catalog, true) else { return Ok(Vec::new()) };
        let (project, task) = (report.summary.project.as_str(), report.summary.task.as_str());
        let mut records =
            vec![self.record(OutputTopic::Scopes, key(&[project, task]), Some(&report.summary))?];
        for window in self.view.windows_of(scope) {
            records.push(self.scope(window)?);
        }
        for object in &report.annotators {
            let key = key(&[project, task, &object.annotator_id]);
            records.push(self.record(
                OutputTopic::Annotators,
                key,
                Some(&Keyed { project, task, object }),
            )?);
        }
        for object in &report.pairs {
            let key = key(&[project, task, &object.a, &object.b]);
            records.push(self.record(OutputTopic::Pairs, key, Some(&Keyed { project, task, object }))?);
        }
        for (item_id, consensus) in report.items.iter().flatten() {
            let object = ItemObject { item_id, consensus };
            let key = key(&[project, task, item_id]);
            records.push(self.record(
                OutputTopic::Items,
                key,
                Some(&Keyed { project, task, object: &object }),
            )?);
        }
        for alert in &report.alerts {
            records.push(self.alert(&alert.id, Some(alert))?);
        }
        Ok(records)
    }
}

type Map<K, V> = HashMap<K, V, RandomState>;

/// Gate records with their keys on the gating topic.
pub type GateRecords = Vec<(String, GateRecord)>;

/// What the output topics hold: per keyed topic the hash of each key's current value, and per
/// annotator the last gate decision on the gating topic.
#[derive(Debug, Default)]
pub struct Published {
    /// `(topic, hash of the key)` to the hash of the value the topic holds.
    values: Map<(OutputTopic, u64), u64>,
    /// The keys read back at start, until the first reconciliation (for their tombstones).
    read_back: Vec<(OutputTopic, String)>,
    /// The last gate record per gating key, and its value.
    gates: Map<String, PublishedGate>,
    gate_values: Map<String, Vec<u8>>,
}

impl Published {
    /// Records what a message read back from an output topic says (`value` `None`: a tombstone).
    pub fn read_back(&mut self, topic: OutputTopic, key: &str, value: Option<&[u8]>) {
        match topic {
            OutputTopic::Gating => {
                let state = value.and_then(|v| serde_json::from_slice::<GateRecordRead>(v).ok());
                match state {
                    Some(read) => {
                        self.gates.insert(key.to_string(), PublishedGate { state: read.state, at: read.at });
                        self.gate_values.insert(key.to_string(), value.unwrap_or_default().to_vec());
                    }
                    None => {
                        self.gates.remove(key);
                        self.gate_values.remove(key);
                    }
                }
            }
            OutputTopic::DeadLetter => {}
            _ => {
                let k = (topic, stable_id(key.as_bytes()));
                match value {
                    Some(value) => {
                        if self.values.insert(k, value_hash(topic, value)).is_none() {
                            self.read_back.push((topic, key.to_string()));
                        }
                    }
                    None => {
                        self.values.remove(&k);
                    }
                }
            }
        }
    }

    /// Adds what another reader read back (of other topics).
    pub fn merge(&mut self, other: Published) {
        self.values.extend(other.values);
        self.read_back.extend(other.read_back);
        self.gates.extend(other.gates);
        self.gate_values.extend(other.gate_values);
    }

    /// Number of keys (values and gates) known to be held by the topics.
    pub fn len(&self) -> usize {
        self.values.len() + self.gates.len()
    }

    /// Whether `record` changes what its topic holds; if so, records it as held. A record that
    /// repeats the held value (or tombstones a key the topic does not hold) need not be sent.
    pub fn observe(&mut self, record: &Record) -> bool {
        let k = (record.topic, stable_id(record.key.as_bytes()));
        match &record.value {
            Some(value) => {
                let hash = value_hash(record.topic, value);
                self.values.insert(k, hash) != Some(hash)
            }
            None => self.values.remove(&k).is_some(),
        }
    }

    /// The tombstones of every key read back at start that `current` (the keys of the records of
    /// the whole current state) lacks; forgets the keys read back.
    pub fn vanished(&mut self, current: &HashSet<(OutputTopic, u64), RandomState>) -> Vec<Record> {
        let read_back = std::mem::take(&mut self.read_back);
        let mut tombstones = Vec::new();
        for (topic, key) in read_back {
            let k = (topic, stable_id(key.as_bytes()));
            if !current.contains(&k) && self.values.remove(&k).is_some() {
                tombstones.push(Record { topic, key, value: None });
            }
        }
        tombstones
    }

    /// The gate records that take what the gating topic says of `annotator` in `project` to the
    /// view's gate now: one per decision made since (see [`gate_records_since`]). Records them as
    /// published.
    pub fn gate_records(
        &mut self,
        view: &QualityView,
        catalog: &Catalog,
        project: &str,
        annotator: AnnotatorId,
    ) -> Vec<(String, GateRecord)> {
        let name = catalog.annotators.name(annotator);
        let gate_key = key(&[project, name]);
        let records =
            gate_records_since(project, name, self.gates.get(&gate_key), view.gate(project, annotator));
        if let Some(last) = records.last() {
            self.gates.insert(gate_key.clone(), PublishedGate::of(last));
        }
        records.into_iter().map(|r| (gate_key.clone(), r)).collect()
    }

    /// The gate records of an annotator the gating topic knows who has no gate now (it left its
    /// project): back to warm-up, once. Records them as published.
    pub fn gate_records_gone(&mut self, project: &str, annotator: &str) -> Vec<(String, GateRecord)> {
        let gate_key = key(&[project, annotator]);
        let records = gate_records_since(project, annotator, self.gates.get(&gate_key), None);
        if let Some(last) = records.last() {
            self.gates.insert(gate_key.clone(), PublishedGate::of(last));
        }
        records.into_iter().map(|r| (gate_key.clone(), r)).collect()
    }

    /// The last gate record the gating topic held for each key when it was read back (later
    /// records are not kept here).
    pub fn gate_values(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.gate_values.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The gating keys the topic holds a decision for, as `(project, annotator_id)`.
    pub fn gate_keys(&self) -> Vec<(String, String)> {
        self.gates
            .keys()
            .filter_map(|k| match serde_json::from_str::<[String; 2]>(k) {
                Ok([project, annotator]) => Some((project, annotator)),
                Err(_) => None,
            })
            .collect()
    }
}

/// The parts of a gating record that say what was decided.
#[derive(serde::Deserialize)]
struct GateRecordRead {
    state: labelqc_dataflows::drift::GateState,
    at: Option<String>,
}

/// The hash set key of a record, as [`Published::vanished`] takes it.
pub fn record_key(record: &Record) -> (OutputTopic, u64) {
    (record.topic, stable_id(record.key.as_bytes()))
}

/// Every scope and window scope with labels.
pub fn all_scopes(view: &QualityView) -> Vec<labelqc_dataflows::source::ScopeId> {
    let mut scopes: Vec<_> = view.scope_ids().collect();
    let windows: Vec<_> = scopes.iter().flat_map(|&s| view.windows_of(s)).collect();
    scopes.extend(windows);
    scopes
}

/// The whole state as its difference from what the topics hold: the records that change what
/// their topic holds, the tombstones of entities the topics hold and the state lacks, and the
/// gate records of every decision the gating topic has not seen.
pub fn reconcile(
    published: &mut Published,
    renderer: &Renderer<'_>,
    mut on_current: impl FnMut(&Record),
) -> Result<(Vec<Record>, GateRecords)> {
    let (view, catalog) = (renderer.view, renderer.catalog);
    let mut changed = Vec::new();
    let mut current: HashSet<(OutputTopic, u64), RandomState> = HashSet::default();
    for scope in view.scope_ids() {
        for record in renderer.scope_all(scope)? {
            current.insert(record_key(&record));
            on_current(&record);
            if published.observe(&record) {
                changed.push(record);
            }
        }
    }
    changed.extend(published.vanished(&current));
    let mut gates = Vec::new();
    let mut decided: HashSet<(String, String), RandomState> = HashSet::default();
    for (project, annotator, _) in view.gates() {
        decided.insert((project.to_string(), catalog.annotators.name(annotator).to_string()));
        gates.extend(published.gate_records(view, catalog, project, annotator));
    }
    // Annotators the gating topic knows who have left their project while the service was down.
    for (project, name) in published.gate_keys() {
        if decided.contains(&(project.clone(), name.clone())) {
            continue;
        }
        gates.extend(published.gate_records_gone(&project, &name));
    }
    Ok((changed, gates))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_json_arrays_that_never_collide() {
        assert_eq!(key(&["a/b", "c"]), r#"["a/b","c"]"#);
        assert_ne!(key(&["a/b", "c"]), key(&["a", "b/c"]));
        assert_eq!(key(&["say \"hi\""]), r#"["say \"hi\""]"#);
    }

    #[test]
    fn stamps_are_not_compared() {
        let object = br#"{"project":"p","n":1}"#.to_vec();
        let one = stamp(object.clone(), "2026-01-01T00:00:00.000Z");
        let two = stamp(object.clone(), "2026-01-02T00:00:00.000Z");
        assert_eq!(one, br#"{"project":"p","n":1,"updated_at":"2026-01-01T00:00:00.000Z"}"#.to_vec());
        assert_eq!(unstamped(&one), Some(object));
        assert_eq!(value_hash(OutputTopic::Scopes, &one), value_hash(OutputTopic::Scopes, &two));
        assert_ne!(value_hash(OutputTopic::Items, &one), value_hash(OutputTopic::Items, &two));
    }

    #[test]
    fn only_differences_are_published() {
        let mut published = Published::default();
        let record = |key: &str, value: Option<&str>| Record {
            topic: OutputTopic::Pairs,
            key: key.to_string(),
            value: value.map(|v| v.as_bytes().to_vec()),
        };
        published.read_back(OutputTopic::Pairs, "[\"x\"]", Some(b"1"));
        published.read_back(OutputTopic::Pairs, "[\"y\"]", Some(b"1"));
        published.read_back(OutputTopic::Pairs, "[\"z\"]", Some(b"1"));
        published.read_back(OutputTopic::Pairs, "[\"z\"]", None);
        // The same value is not sent again; a new value or a new key is.
        assert!(!published.observe(&record("[\"x\"]", Some("1"))));
        assert!(published.observe(&record("[\"x\"]", Some("2"))));
        assert!(published.observe(&record("[\"w\"]", Some("1"))));
        // A key the topic holds, absent now, gets its tombstone; one it does not hold gets none.
        let current: HashSet<_, RandomState> =
            [record("[\"x\"]", None), record("[\"w\"]", None)].iter().map(record_key).collect();
        assert_eq!(published.vanished(&current), vec![record("[\"y\"]", None)]);
        assert!(!published.observe(&record("[\"z\"]", None)));
        assert!(published.observe(&record("[\"x\"]", None)));
    }
}
