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
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dataflow::Diff;

/// What a record describes within its scope. The order of the variants is the order of a scope's
/// parts in the report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Entity {
    /// The scope object ([`crate::objects::ScopeSummary`]).
    Scope,
    /// An annotator pair by names, `a < b` bytewise ([`crate::objects::PairReport`]).
    Pair(Arc<str>, Arc<str>),
    /// An annotator by name ([`crate::objects::AnnotatorReport`] with its gate).
    Annotator(Arc<str>),
    /// An item by name: its consensus, trusted consensus, truth and route ([`crate::trust`]).
    Item(Arc<str>),
    /// An alert by id ([`crate::drift::Alert`]).
    Alert(Arc<str>),
    /// A tumbling window of the scope by size and start, milliseconds
    /// ([`crate::objects::WindowSummary`]).
    Window { size_ms: i64, start_ms: i64 },
    /// The gate of an annotator (by name) in the record's project ([`crate::drift::Gate`]); gates
    /// belong to a project, so the record's task is empty.
    Gate(Arc<str>),
    /// The scope's preference numbers over all its comparisons, spec 2.2
    /// ([`crate::preferences::PreferenceQuality`]): joined to the scope's own record as its
    /// `preferences` ([`crate::scope_truth::ScopePartsLogic`]), not a record of its own outside
    /// the dataflow.
    Preferences,
    /// A system's leaderboard entry by name, spec 2.2
    /// ([`crate::preferences::LeaderboardEntry`]).
    System(Arc<str>),
}

/// The identity of a record: its scope's names and the entity within it. The scope's names are
/// shared by the records of a scope ([`scope_name`]): a report holds hundreds of thousands of
/// records of a few scopes at once, and keys compare their scopes by pointer first (keys are
/// compared in every sort and map of records, and most compared keys share their scope).
/// Ordered and compared as the derived order would: by project, task, then entity.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordKey {
    #[serde(deserialize_with = "shared_scope_name")]
    pub project: Arc<str>,
    #[serde(deserialize_with = "shared_scope_name")]
    pub task: Arc<str>,
    pub entity: Entity,
}

/// A scope name read (from another process of a cluster) as the process's shared allocation.
fn shared_scope_name<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Arc<str>, D::Error> {
    let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
    Ok(scope_name(&name))
}

/// Two names in byte order, without reading them when they are one allocation.
fn name_cmp(a: &Arc<str>, b: &Arc<str>) -> std::cmp::Ordering {
    if Arc::ptr_eq(a, b) {
        std::cmp::Ordering::Equal
    } else {
        a.as_bytes().cmp(b.as_bytes())
    }
}

impl Ord for RecordKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        name_cmp(&self.project, &other.project)
            .then_with(|| name_cmp(&self.task, &other.task))
            .then_with(|| self.entity.cmp(&other.entity))
    }
}

impl PartialOrd for RecordKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for RecordKey {
    fn eq(&self, other: &Self) -> bool {
        (Arc::ptr_eq(&self.project, &other.project) || self.project == other.project)
            && (Arc::ptr_eq(&self.task, &other.task) || self.task == other.task)
            && self.entity == other.entity
    }
}

impl Eq for RecordKey {}

/// Hashes the names, as equality compares them (by bytes: a shared allocation is one case of it).
impl std::hash::Hash for RecordKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.project.hash(state);
        self.task.hash(state);
        self.entity.hash(state);
    }
}

impl RecordKey {
    /// The key of `entity` in the scope `(project, task)`.
    pub fn new(project: &str, task: &str, entity: Entity) -> RecordKey {
        RecordKey { project: scope_name(project), task: scope_name(task), entity }
    }
}

/// `name` as a shared string: the same allocation for every thread of the process (so that
/// keys compare their scopes by pointer, [`RecordKey`]), from a small cache per thread (the
/// last few scope names it formed records for, most recent first) in front of the process's
/// table of scope names. The table keeps at most `INTERNED` names, for as long as the process
/// runs; names beyond them are allocated anew each time a thread's cache misses them (equal all
/// the same, compared by their bytes).
pub fn scope_name(name: &str) -> Arc<str> {
    /// Scope names kept per thread.
    const CACHED: usize = 8;
    /// Scope names kept by the process.
    const INTERNED: usize = 4096;
    thread_local! {
        static NAMES: std::cell::RefCell<Vec<Arc<str>>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    static TABLE: std::sync::Mutex<Option<std::collections::HashSet<Arc<str>>>> = std::sync::Mutex::new(None);
    NAMES.with_borrow_mut(|names| {
        if let Some(i) = names.iter().position(|n| **n == *name) {
            names[..=i].rotate_right(1);
        } else {
            if names.len() == CACHED {
                names.pop();
            }
            let mut table = TABLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let table = table.get_or_insert_with(Default::default);
            let shared = match table.get(name) {
                Some(shared) => shared.clone(),
                None => {
                    let shared: Arc<str> = Arc::from(name);
                    if table.len() < INTERNED {
                        table.insert(shared.clone());
                    }
                    shared
                }
            };
            names.insert(0, shared);
        }
        names[0].clone()
    })
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
        Record { key: RecordKey::new(project, task, entity), value: json(object) }
    }
}

/// `object` as JSON, in a vector of exactly its length. `serde_json::to_vec` starts at 128
/// bytes and doubles, so that a record of 129-255 bytes would hold 256 for as long as it lives
/// (a report holds every pair's record at once); this serialises into a buffer kept per thread
/// and copies out only the bytes.
pub fn json(object: &impl Serialize) -> Vec<u8> {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|buffer| {
        buffer.clear();
        serde_json::to_writer(&mut *buffer, object).expect("objects serialise");
        let value = buffer.to_vec();
        // A rare large object (a scope's) does not stay as the thread's buffer.
        if buffer.capacity() > 1 << 16 {
            *buffer = Vec::new();
        }
        value
    })
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

/// [`new_values`] of changes the caller owns: each key with its new value, moved out.
pub fn into_new_values(changes: Vec<(Record, Diff)>) -> impl Iterator<Item = (RecordKey, Option<Vec<u8>>)> {
    let mut changes = changes.into_iter().peekable();
    std::iter::from_fn(move || {
        let (first, diff) = changes.next()?;
        let mut value = (diff > 0).then_some(first.value);
        while let Some((record, diff)) = changes.next_if(|(r, _)| r.key == first.key) {
            if value.is_none() && diff > 0 {
                value = Some(record.value);
            }
        }
        Some((first.key, value))
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

    /// [`Records::apply`] of changes the caller owns: the records are moved in, not copied.
    /// Records alone into an empty state (the epoch that ends a rebuild's hold, which derives
    /// the whole state at once) are built into it at once, sorted, not inserted one by one.
    pub fn apply_owned(&mut self, changes: Vec<(Record, Diff)>) {
        if self.records.is_empty() && changes.iter().all(|(_, diff)| *diff > 0) {
            // Of records with the same key, the last is kept, as inserting them in turn would.
            self.records = changes.into_iter().map(|(record, _)| (record.key, record.value)).collect();
            return;
        }
        for (record, diff) in changes {
            if diff > 0 {
                self.records.insert(record.key, record.value);
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

/// Where a record goes in report order, as far as fixed-width numbers tell: its scope's rank
/// among the records' scopes, its entity's variant, and its entity's first name (its first 16
/// bytes, zero-padded, big-endian, and its length up to 16: a weak form of bytewise order, exact
/// for names under 16 bytes) and, when that is exact, its second name; or its window's bounds
/// (exact). Two records whose prefixes differ are in the prefixes' order; equal prefixes say
/// nothing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct SortPrefix {
    scope: u32,
    variant: u8,
    first: (u128, u8),
    second: (u128, u8),
}

/// The first 16 bytes of `name`, zero-padded, as a big-endian number, and its length up to 16.
fn name_prefix(name: &str) -> (u128, u8) {
    let mut bytes = [0u8; 16];
    let n = name.len().min(16);
    bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
    (u128::from_be_bytes(bytes), n as u8)
}

/// An `i64` as a `u128` of the same order.
fn ordered(value: i64) -> (u128, u8) {
    (u128::from((value as u64) ^ (1 << 63)), 0)
}

impl Entity {
    /// The variant's place in the declaration order (the derived `Ord`), and its fields' prefixes.
    fn prefix(&self) -> (u8, (u128, u8), (u128, u8)) {
        let one = |variant, name: &str| (variant, name_prefix(name), (0, 0));
        match self {
            Entity::Scope => (0, (0, 0), (0, 0)),
            Entity::Pair(a, b) => {
                // The second name counts only where the first is known whole.
                let first = name_prefix(a);
                (1, first, if first.1 < 16 { name_prefix(b) } else { (0, 0) })
            }
            Entity::Annotator(name) => one(2, name),
            Entity::Item(name) => one(3, name),
            Entity::Alert(name) => one(4, name),
            Entity::Window { size_ms, start_ms } => (5, ordered(*size_ms), ordered(*start_ms)),
            Entity::Gate(name) => one(6, name),
            Entity::Preferences => (7, (0, 0), (0, 0)),
            Entity::System(name) => one(8, name),
        }
    }
}

/// Sorts records by key (report order). The same order as sorting by [`RecordKey`], sooner: the
/// comparisons of a plain sort follow four pointers per record (its project, task and names);
/// this sorts fixed-width prefixes ([`SortPrefix`]), comparing whole keys only where prefixes tie
/// (names that agree in their first 16 bytes), then moves each record once.
pub fn sort_records(records: &mut Vec<Record>) {
    let mut scopes: Vec<(&str, &str)> = records.iter().map(|r| (&*r.key.project, &*r.key.task)).collect();
    scopes.sort_unstable();
    scopes.dedup();
    let mut order: Vec<(SortPrefix, u32)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let scope = scopes.binary_search(&(&*r.key.project, &*r.key.task)).expect("a listed scope");
            let (variant, first, second) = r.key.entity.prefix();
            (SortPrefix { scope: scope as u32, variant, first, second }, i as u32)
        })
        .collect();
    drop(scopes);
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| records[a.1 as usize].key.cmp(&records[b.1 as usize].key))
    });
    let mut slots: Vec<Option<Record>> = std::mem::take(records).into_iter().map(Some).collect();
    *records = order.iter().map(|&(_, i)| slots[i as usize].take().expect("each record once")).collect();
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_is_held_in_exactly_its_length() {
        let object: Vec<String> = (0..20).map(|i| format!("value {i}")).collect();
        let value = super::json(&object);
        assert_eq!(value, serde_json::to_vec(&object).unwrap());
        assert!(value.len() > 128);
        assert_eq!(value.capacity(), value.len());
    }

    #[test]
    fn records_moved_into_an_empty_state_equal_records_applied_one_by_one() {
        use super::{Entity, Record, Records};
        let record = |name: &str, value: &str| {
            Record::new("p", "t", Entity::Annotator(name.into()), &serde_json::json!({ "v": value }))
        };
        // Out of order, with a key twice: the later value wins.
        let changes =
            vec![(record("b", "1"), 1), (record("a", "1"), 1), (record("b", "2"), 1), (record("c", "1"), 1)];
        let (mut copied, mut moved) = (Records::default(), Records::default());
        copied.apply(&changes);
        moved.apply_owned(changes);
        assert_eq!(moved, copied);
        assert_eq!(moved.records.len(), 3);
        // Into a state that holds records, and with withdrawals, one by one as before.
        let more = vec![(record("a", "1"), -1), (record("d", "1"), 1)];
        copied.apply(&more);
        moved.apply_owned(more);
        assert_eq!(moved, copied);
        assert_eq!(moved.records.len(), 3);
    }

    #[test]
    fn records_of_a_scope_share_its_names() {
        let a = super::RecordKey::new("project", "task", super::Entity::Scope);
        // Other scopes in between, fewer than the cache holds.
        for i in 0..5 {
            super::scope_name(&format!("other {i}"));
        }
        let b = super::RecordKey::new("project", "task", super::Entity::Scope);
        assert!(std::sync::Arc::ptr_eq(&a.project, &b.project) && std::sync::Arc::ptr_eq(&a.task, &b.task));
        assert_eq!((&*b.project, &*b.task), ("project", "task"));
        // More scopes than a thread's cache holds: the process's table has it.
        for i in 0..20 {
            super::scope_name(&format!("other {i}"));
        }
        let c = super::RecordKey::new("project", "task", super::Entity::Scope);
        assert!(std::sync::Arc::ptr_eq(&a.project, &c.project));
        // Another thread gets the same allocation.
        let d = std::thread::spawn(|| super::RecordKey::new("project", "task", super::Entity::Scope))
            .join()
            .unwrap();
        assert!(std::sync::Arc::ptr_eq(&a.project, &d.project) && std::sync::Arc::ptr_eq(&a.task, &d.task));
        // Keys compare as the derived order would: by bytes where the allocations differ.
        let e = super::RecordKey {
            project: std::sync::Arc::from("project"),
            task: std::sync::Arc::from("task"),
            entity: super::Entity::Scope,
        };
        assert_eq!(a, e);
        assert_eq!(a.cmp(&e), std::cmp::Ordering::Equal);
        let f = super::RecordKey::new("project", "task", super::Entity::Annotator("x".into()));
        let g = super::RecordKey::new("projecu", "", super::Entity::Scope);
        assert!(a < f && f < g && e < f);
    }

    use super::*;

    #[test]
    fn sorting_by_prefixes_is_sorting_by_keys() {
        let names = [
            "",
            "a",
            "a\0",
            "a\0b",
            "ann-00000",
            "ann-00001",
            "annotator-with-a-long-name-1",
            "annotator-with-a-long-name-2",
            "annotator-with-a-long-name-",
            "0123456789abcdef",
            "0123456789abcdef\0",
            "0123456789abcde",
            "é",
            "\u{ffff}",
        ];
        let scopes = [("p", "t"), ("p", ""), ("", "t"), ("p\0", "t"), ("q", "a")];
        let mut records = Vec::new();
        let mut push = |project: &str, task: &str, entity: Entity| {
            let value = format!("{}", records.len()).into_bytes();
            records.push(Record {
                key: RecordKey { project: project.into(), task: task.into(), entity },
                value,
            });
        };
        for (project, task) in scopes {
            push(project, task, Entity::Scope);
            push(project, task, Entity::Preferences);
            for (i, a) in names.iter().enumerate() {
                for b in &names[i..] {
                    push(project, task, Entity::Pair((*a).into(), (*b).into()));
                }
                push(project, task, Entity::Annotator((*a).into()));
                push(project, task, Entity::Item((*a).into()));
                push(project, task, Entity::Alert((*a).into()));
                push(project, task, Entity::Gate((*a).into()));
                push(project, task, Entity::System((*a).into()));
            }
            for (size_ms, start_ms) in
                [(1, -5), (1, 0), (1, i64::MIN), (i64::MAX, 3), (-1, 7), (60_000, 60_000)]
            {
                push(project, task, Entity::Window { size_ms, start_ms });
            }
        }
        // A shuffled copy, so that the sort has something to do.
        let mut shuffled = records.clone();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (state >> 33) as usize % (i + 1));
        }
        let mut by_keys = shuffled.clone();
        by_keys.sort_by(|a, b| a.key.cmp(&b.key));
        sort_records(&mut shuffled);
        let first = shuffled.iter().zip(&by_keys).position(|(a, b)| a != b);
        assert!(first.is_none(), "{:?}", first.map(|i| (&shuffled[i].key, &by_keys[i].key)));
    }

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

    #[test]
    fn owned_changes_read_and_apply_as_borrowed_ones() {
        let record = |name: &str, value: &str| Record {
            key: RecordKey::new("p", "t", Entity::Annotator(name.into())),
            value: value.as_bytes().to_vec(),
        };
        // Consolidated, each key's changes adjacent, additions first: a replaced value, a new
        // one, a removed one, and a key whose old value comes first.
        let changes = vec![
            (record("a", "2"), 1),
            (record("a", "1"), -1),
            (record("b", "1"), 1),
            (record("c", "1"), -1),
            (record("d", "1"), -1),
            (record("d", "2"), 1),
        ];
        let borrowed: Vec<(RecordKey, Option<Vec<u8>>)> =
            new_values(&changes).map(|(k, v)| (k.clone(), v.map(<[u8]>::to_vec))).collect();
        let owned: Vec<(RecordKey, Option<Vec<u8>>)> = into_new_values(changes.clone()).collect();
        assert_eq!(owned, borrowed);
        assert_eq!(
            owned.iter().map(|(_, v)| v.as_deref()).collect::<Vec<_>>(),
            [Some(&b"2"[..]), Some(b"1"), None, Some(b"2")]
        );
        let mut by_ref = Records::default();
        by_ref.apply(&[(record("c", "1"), 1), (record("a", "1"), 1)]);
        let mut by_value = by_ref.clone();
        by_ref.apply(&changes);
        by_value.apply_owned(changes);
        assert_eq!(by_ref, by_value);
        assert_eq!(by_value.len(), 3);
    }
}
