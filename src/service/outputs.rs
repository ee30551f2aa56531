//! The output records of `labelqc run` (spec section 4) and what the output topics hold.
//!
//! Every record has a key, the JSON array of its entity's identity (`["project","task"]`,
//! `["project","task","annotator_id"]`, ...), so that no name, whatever it contains, makes two
//! entities share a key; its value is the entity's object, or a tombstone (no value) when the
//! entity is gone. [`message`] forms the message of a record as the dataflows rendered it (the
//! object inside the report gets its scope's names, and the scope objects their `updated_at`).
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

use foldhash::fast::RandomState;
use labelqc_dataflows::dataflow::Diff;
use labelqc_dataflows::drift::{rfc3339, Gate};
use labelqc_dataflows::gates::{gate_records_since, GateRecord, PublishedGate};
use labelqc_dataflows::label::stable_id;
use labelqc_dataflows::records::{new_values, Entity, Record, RecordKey};
use labelqc_dataflows::source::window_size_name;

use crate::api::{Kind, Store};
use crate::config::OutputTopics;

mod reconcile;
pub use reconcile::reconcile;

/// The output topics of spec section 4, as the configuration names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutputTopic {
    Scopes,
    Annotators,
    Pairs,
    Items,
    /// Each item's route, derived from its item record.
    Routing,
    ScopeWindows,
    Alerts,
    Gating,
    DeadLetter,
    Leaderboard,
}

impl OutputTopic {
    /// The topics that hold one current value per key, read back at start and published as
    /// differences.
    pub const KEYED: [OutputTopic; 8] = [
        OutputTopic::Scopes,
        OutputTopic::Annotators,
        OutputTopic::Pairs,
        OutputTopic::Items,
        OutputTopic::Routing,
        OutputTopic::ScopeWindows,
        OutputTopic::Alerts,
        OutputTopic::Leaderboard,
    ];

    /// The topic's name in the configuration.
    pub fn name(self, outputs: &OutputTopics) -> &str {
        match self {
            OutputTopic::Scopes => &outputs.scopes,
            OutputTopic::Annotators => &outputs.annotators,
            OutputTopic::Pairs => &outputs.pairs,
            OutputTopic::Items => &outputs.items,
            OutputTopic::Routing => &outputs.routing,
            OutputTopic::ScopeWindows => &outputs.scope_windows,
            OutputTopic::Alerts => &outputs.alerts,
            OutputTopic::Gating => &outputs.gating,
            OutputTopic::DeadLetter => &outputs.deadletter,
            OutputTopic::Leaderboard => &outputs.leaderboard,
        }
    }

    /// Whether the topic's values carry `updated_at`, which is no part of the value compared.
    fn stamped(self) -> bool {
        matches!(self, OutputTopic::Scopes | OutputTopic::ScopeWindows)
    }
}

/// One message for an output topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
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

/// `{"project":…,"task":…,` then the fields of `object` (compact JSON): the object with its scope's
/// names first, as the keyed topics carry it; `item_id` too for an item.
fn with_names(project: &str, task: &str, item: Option<&str>, object: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(object.len() + project.len() + task.len() + 32);
    value.extend_from_slice(b"{\"project\":");
    serde_json::to_writer(&mut value, project).expect("strings serialise");
    value.extend_from_slice(b",\"task\":");
    serde_json::to_writer(&mut value, task).expect("strings serialise");
    if let Some(item) = item {
        value.extend_from_slice(b",\"item_id\":");
        serde_json::to_writer(&mut value, item).expect("strings serialise");
    }
    value.push(b',');
    value.extend_from_slice(&object[1..]);
    value
}

/// The value of an item's message on the routing topic: `{"project","task","item_id","posterior",
/// "route","trusted_labels","truth_label"}` (its fields after the names in name order), from the
/// item's object (`None` if it is not one). The item's truth label is carried as the item's
/// object writes it (its JSON, not parsed), and its posterior is the one of the posterior entry
/// whose label is written the same.
fn route_value(project: &str, task: &str, item: &str, object: &[u8]) -> Option<Vec<u8>> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Trusted {
        n: u32,
    }
    #[derive(serde::Deserialize)]
    struct Truth<'a> {
        #[serde(borrow)]
        label: &'a RawValue,
        #[serde(borrow)]
        posterior: Vec<Prob<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Prob<'a> {
        #[serde(borrow)]
        label: &'a RawValue,
        p: f64,
    }
    #[derive(serde::Deserialize)]
    struct ItemRead<'a> {
        #[serde(borrow)]
        route: std::borrow::Cow<'a, str>,
        trusted: Option<Trusted>,
        #[serde(borrow)]
        truth: Option<Truth<'a>>,
    }
    #[derive(serde::Serialize)]
    struct Route<'a> {
        posterior: Option<f64>,
        route: &'a str,
        trusted_labels: u32,
        truth_label: Option<&'a RawValue>,
    }
    let read: ItemRead<'_> = serde_json::from_slice(object).ok()?;
    let truth = read.truth.as_ref();
    let route = Route {
        posterior: truth
            .and_then(|t| t.posterior.iter().find(|p| p.label.get() == t.label.get()))
            .map(|p| p.p),
        route: &read.route,
        trusted_labels: read.trusted.map_or(0, |t| t.n),
        truth_label: truth.map(|t| t.label),
    };
    Some(with_names(project, task, Some(item), &serde_json::to_vec(&route).expect("JSON serialises")))
}

/// The messages of a record: its topic's, and for an item its route on the routing topic
/// (`value` `None`: the record is gone, tombstones). None for a gate (the gating topic is a log
/// of decisions, see [`Published::gate_records`]). `updated_at` stamps the scope objects.
pub fn messages(key: &RecordKey, value: Option<&[u8]>, updated_at: &str) -> Vec<Message> {
    let Some(message) = message(key, value, updated_at) else { return Vec::new() };
    let route = match &key.entity {
        // An item's route, under the item's own key (none for a value that is no item object).
        Entity::Item(name) => match value.map(|v| route_value(&key.project, &key.task, name, v)) {
            Some(None) => None,
            route => Some(Message {
                topic: OutputTopic::Routing,
                key: message.key.clone(),
                value: route.flatten(),
            }),
        },
        _ => None,
    };
    std::iter::once(message).chain(route).collect()
}

/// The message of a record on its own topic (`value` `None`: the record is gone, a tombstone),
/// or `None` for a gate. `updated_at` stamps the scope objects.
pub fn message(key: &RecordKey, value: Option<&[u8]>, updated_at: &str) -> Option<Message> {
    let (project, task) = (&*key.project, &*key.task);
    let (topic, key, value) = match &key.entity {
        Entity::Scope => {
            (OutputTopic::Scopes, self::key(&[project, task]), value.map(|v| stamp(v.to_vec(), updated_at)))
        }
        Entity::Window { size_ms, start_ms } => (
            OutputTopic::ScopeWindows,
            self::key(&[project, task, &window_size_name(*size_ms), &rfc3339(*start_ms)]),
            value.map(|v| stamp(v.to_vec(), updated_at)),
        ),
        Entity::Pair(a, b) => (
            OutputTopic::Pairs,
            self::key(&[project, task, a, b]),
            value.map(|v| with_names(project, task, None, v)),
        ),
        Entity::Annotator(name) => (
            OutputTopic::Annotators,
            self::key(&[project, task, name]),
            value.map(|v| with_names(project, task, None, v)),
        ),
        Entity::Item(name) => (
            OutputTopic::Items,
            self::key(&[project, task, name]),
            value.map(|v| with_names(project, task, Some(name), v)),
        ),
        Entity::Alert(id) => (OutputTopic::Alerts, id.to_string(), value.map(<[u8]>::to_vec)),
        Entity::System(system) => (
            OutputTopic::Leaderboard,
            self::key(&[project, task, system]),
            value.map(|v| with_names(project, task, None, v)),
        ),
        // A scope's preference numbers are joined to its record in the dataflow.
        Entity::Gate(_) | Entity::Preferences => return None,
    };
    Some(Message { topic, key, value })
}

/// Tells the query API's store what a message makes its topic hold.
pub fn remember(store: &Store, message: &Message) {
    let kind = match message.topic {
        OutputTopic::Scopes => Kind::Scopes,
        OutputTopic::Annotators => Kind::Annotators,
        OutputTopic::Items => Kind::Items,
        OutputTopic::Leaderboard => Kind::Leaderboard,
        _ => return,
    };
    store.apply(kind, &message.key, message.value.as_deref());
}

/// Tells the query API's store what an epoch's record changes (consolidated, each key's changes
/// adjacent) and gate records make the topics hold, as publishing them would: for `labelqc demo`,
/// which answers the API without a broker.
pub fn remember_changes(store: &Store, changes: &[(Record, Diff)], gates: &[GateRecord], updated_at: &str) {
    for (key, value) in new_values(changes) {
        for message in messages(key, value, updated_at) {
            remember(store, &message);
        }
    }
    for gate in gates {
        let value = serde_json::to_vec(gate).expect("a gate record serialises");
        store.apply(Kind::Gates, &key(&[&gate.project, &gate.annotator_id]), Some(&value));
    }
}

/// Which keys a process of a cluster publishes (at least once; in exactly-once mode the first
/// process publishes them all, in its transactions): the scopes' topics (scopes, windows,
/// leaderboard), which the query API lists, and the dead letters are the first process's; any
/// other key (an annotator's, a pair's, an item's and its route, an alert's, a gate's) belongs to
/// the process its key's hash picks, `stable_id(key) % processes`. The engine sends each record to
/// its publisher ([`labelqc_dataflows::engine::Publishers`]), and a process reads back only its
/// own keys, so that the processes divide the published state and the publishing between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// This process's index.
    pub process: usize,
    /// The number of processes that publish (1: this one publishes everything).
    pub processes: usize,
}

impl Default for Share {
    fn default() -> Share {
        Share { process: 0, processes: 1 }
    }
}

impl Share {
    /// The process that publishes `key` on `topic`.
    pub fn publisher(&self, topic: OutputTopic, key: &str) -> usize {
        match topic {
            _ if self.processes <= 1 => 0,
            OutputTopic::Scopes
            | OutputTopic::ScopeWindows
            | OutputTopic::Leaderboard
            | OutputTopic::DeadLetter => 0,
            _ => (stable_id(key.as_bytes()) % self.processes as u64) as usize,
        }
    }

    /// Whether this process publishes `key` on `topic`.
    pub fn owns(&self, topic: OutputTopic, key: &str) -> bool {
        self.publisher(topic, key) == self.process
    }

    /// The process that publishes the messages of a record (an item's route goes with its item:
    /// both have the same key).
    pub fn publisher_of(&self, record: &RecordKey) -> usize {
        if self.processes <= 1 {
            return 0;
        }
        match &record.entity {
            Entity::Gate(annotator) => {
                self.publisher(OutputTopic::Gating, &key(&[&record.project, annotator]))
            }
            _ => message(record, None, "").map_or(0, |m| self.publisher(m.topic, &m.key)),
        }
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
    /// The keys this process publishes: it keeps only theirs.
    share: Share,
}

impl Published {
    /// What the topics hold of the keys of `share`, nothing read yet.
    pub fn of(share: Share) -> Published {
        Published { share, ..Published::default() }
    }

    /// Records what a message read back from an output topic says (`value` `None`: a tombstone),
    /// if this process publishes its key.
    pub fn read_back(&mut self, topic: OutputTopic, key: &str, value: Option<&[u8]>) {
        if !self.share.owns(topic, key) {
            return;
        }
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
    pub fn observe(&mut self, record: &Message) -> bool {
        self.observe_hashed(Hashed::of(record))
    }

    /// [`Published::observe`] of a message whose hashes are formed.
    fn observe_hashed(&mut self, hashed: Hashed) -> bool {
        match hashed.value {
            Some(hash) => self.values.insert(hashed.key, hash) != Some(hash),
            None => self.values.remove(&hashed.key).is_some(),
        }
    }

    /// The tombstones of every key read back at start that `current` (the keys of the records of
    /// the whole current state) lacks; forgets the keys read back.
    pub fn vanished(&mut self, current: &HashSet<(OutputTopic, u64), RandomState>) -> Vec<Message> {
        let read_back = std::mem::take(&mut self.read_back);
        let mut tombstones = Vec::new();
        for (topic, key) in read_back {
            let k = (topic, stable_id(key.as_bytes()));
            if !current.contains(&k) && self.values.remove(&k).is_some() {
                tombstones.push(Message { topic, key, value: None });
            }
        }
        tombstones
    }

    /// The gate records that take what the gating topic says of `annotator` in `project` to its
    /// gate now (`None`: it has left the project): one per decision made since (see
    /// [`gate_records_since`]). Records them as published.
    pub fn gate_records(
        &mut self,
        project: &str,
        annotator: &str,
        gate: Option<&Gate>,
    ) -> Vec<(String, GateRecord)> {
        let gate_key = key(&[project, annotator]);
        let records = gate_records_since(project, annotator, self.gates.get(&gate_key), gate);
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

/// The hash set key of a message, as [`Published::vanished`] takes it.
pub fn record_key(record: &Message) -> (OutputTopic, u64) {
    (record.topic, stable_id(record.key.as_bytes()))
}

/// What [`Published`] keeps of a message: its topic and key's hash, and its value's (`None`: a
/// tombstone).
#[derive(Clone, Copy)]
struct Hashed {
    key: (OutputTopic, u64),
    value: Option<u64>,
}

impl Hashed {
    fn of(record: &Message) -> Hashed {
        Hashed {
            key: record_key(record),
            value: record.value.as_deref().map(|v| value_hash(record.topic, v)),
        }
    }
}

/// A gate record's value, read back.
pub fn gate_of(value: &[u8]) -> Option<Gate> {
    serde_json::from_slice(value).ok()
}

#[cfg(test)]
mod tests;
