//! The source side of the dataflows: parsed events' names turned into ids (the [`Catalog`]), and
//! each event turned into an [`Update`] of its item, stamped with a sequence number. The "latest
//! event per identity wins" semantics are applied by the worker that owns the item
//! ([`crate::items`]).
//!
//! Tumbling event-time windows are scopes of their own: a label whose `ts` falls in the hour
//! starting 18:00 is also a label of the window scope (scope, 1h, 18:00), so a late event lands
//! in (and corrects) its own window. Window scope ids carry [`WINDOW_BIT`]; the dataflow forms
//! only scope-level numbers for them. The source learns the windows' names.
//!
//! Every id is a stable hash of the name it stands for ([`stable_id`]), so that processes reading
//! different partitions give one name one id without coordinating, and a catalog can learn the
//! names behind ids from another process's catalog ([`Catalog::take_new`], [`Catalog::learn`]).

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::event::PairResult;
use crate::event::{
    parse_gold_event, parse_label_event, record_text, GoldEvent, InputWarning, LabelEvent, Op, ParseError,
    Warnings,
};
use crate::items::ItemEvent;
use crate::label::{stable_id, IdCollision, Label, LabelId, LabelTable, RawLabel};
use crate::number::RawNumber;
use crate::preferences::Compared;

/// Id of a (project, task) scope, or of a window of one (with [`WINDOW_BIT`] set).
pub type ScopeId = u64;

/// Set in the ids of window scopes, and only in theirs.
pub const WINDOW_BIT: ScopeId = 1 << 63;

/// Whether `scope` is a window of a scope.
pub fn is_window(scope: ScopeId) -> bool {
    scope & WINDOW_BIT != 0
}

/// The name of a window size: `1h`, `1d`, `15m`, `30s` or `500ms`.
pub fn window_size_name(size_ms: i64) -> String {
    for (unit, ms) in [("d", DAY_MS), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if size_ms % ms == 0 {
            return format!("{}{unit}", size_ms / ms);
        }
    }
    format!("{size_ms}ms")
}

/// A tumbling event-time window of a scope: `[start_ms, start_ms + size_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub scope: ScopeId,
    pub size_ms: i64,
    pub start_ms: i64,
}
/// Id of an item name (shared across scopes; an item is identified by `(scope, item)`).
pub type ItemId = u64;
/// Id of an annotator name.
pub type AnnotatorId = u64;
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

/// The UTC event-time day of `ts_ms` (milliseconds since 1970-01-01), counted from 1970-01-01.
pub fn day_of(ts_ms: i64) -> Day {
    ts_ms.div_euclid(DAY_MS) as Day
}

impl Stamp {
    /// The UTC event-time day of the label ([`day_of`]).
    pub fn day(&self) -> Day {
        day_of(self.ts_ms)
    }
}

/// An event-time day number (days since 1970-01-01, UTC).
pub type Day = i32;

/// The names behind ids of one kind (items or annotators); a name's id is [`stable_id`] of it.
/// Names are shared ([`Interner::shared`]) with the records that name them.
#[derive(Debug)]
pub struct Interner {
    kind: &'static str,
    names: HashMap<u64, Arc<str>, RandomState>,
}

impl Interner {
    fn new(kind: &'static str) -> Interner {
        Interner { kind, names: HashMap::default() }
    }

    fn insert(&mut self, id: u64, name: &str) -> Result<bool, IdCollision> {
        match self.names.get(&id) {
            Some(known) if **known == *name => Ok(false),
            Some(known) => Err(IdCollision {
                id,
                kind: self.kind,
                first: format!("{known:?}"),
                second: format!("{name:?}"),
            }),
            None => {
                self.names.insert(id, name.into());
                Ok(true)
            }
        }
    }

    /// The id of `name`; remembers the name if it was not seen before (then `.1` is true).
    fn intern_new(&mut self, name: &str) -> Result<(u64, bool), IdCollision> {
        let id = stable_id(name.as_bytes());
        Ok((id, self.insert(id, name)?))
    }

    /// The id of `name`, if it was seen.
    pub fn lookup(&self, name: &str) -> Option<u64> {
        let id = stable_id(name.as_bytes());
        (self.names.get(&id).map(|n| &**n) == Some(name)).then_some(id)
    }

    /// The name with id `id`. Panics on an id whose name this catalog has not seen.
    pub fn name(&self, id: u64) -> &str {
        &self.names[&id]
    }

    /// The name with id `id`, shared (a record's key holds it without a copy). Panics on an id
    /// whose name this catalog has not seen.
    pub fn shared(&self, id: u64) -> Arc<str> {
        self.names[&id].clone()
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

/// One name a catalog learnt, as passed from the catalogs of the processes that read the input
/// to the catalog of the process that publishes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Name {
    Scope { id: ScopeId, project: Box<str>, task: Box<str> },
    Window { id: ScopeId, window: Window },
    Item { id: ItemId, name: Box<str> },
    Annotator { id: AnnotatorId, name: Box<str> },
    Label { id: LabelId, label: Label },
}

/// The names behind every id in the dataflows: scopes, windows, items, annotators and labels.
#[derive(Debug)]
pub struct Catalog {
    scopes: HashMap<ScopeId, (Box<str>, Box<str>), RandomState>,
    /// Project names by id ([`crate::gates::project_id`]).
    projects: HashMap<u64, Box<str>, RandomState>,
    windows: HashMap<ScopeId, Window, RandomState>,
    pub items: Interner,
    pub annotators: Interner,
    pub labels: LabelTable,
    /// Whether to keep the names learnt since the last [`Catalog::take_new`].
    record: bool,
    new: Vec<Name>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            scopes: HashMap::default(),
            projects: HashMap::default(),
            windows: HashMap::default(),
            items: Interner::new("item id"),
            annotators: Interner::new("annotator id"),
            labels: LabelTable::default(),
            record: false,
            new: Vec::new(),
        }
    }
}

/// The id of the scope `(project, task)`.
pub fn scope_id(project: &str, task: &str) -> ScopeId {
    let mut bytes = Vec::with_capacity(project.len() + task.len() + 8);
    bytes.extend_from_slice(&(project.len() as u64).to_le_bytes());
    bytes.extend_from_slice(project.as_bytes());
    bytes.extend_from_slice(task.as_bytes());
    stable_id(&bytes) & !WINDOW_BIT
}

/// The id of a window scope.
pub fn window_id(window: &Window) -> ScopeId {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&window.scope.to_le_bytes());
    bytes[8..16].copy_from_slice(&window.size_ms.to_le_bytes());
    bytes[16..].copy_from_slice(&window.start_ms.to_le_bytes());
    stable_id(&bytes) | WINDOW_BIT
}

impl Catalog {
    /// A catalog that keeps every name it learns for [`Catalog::take_new`].
    pub fn recording() -> Catalog {
        Catalog { record: true, ..Catalog::default() }
    }

    /// The names learnt since the last call (only for a [`Catalog::recording`] catalog).
    pub fn take_new(&mut self) -> Vec<Name> {
        std::mem::take(&mut self.new)
    }

    fn keep(&mut self, name: impl FnOnce() -> Name) {
        if self.record {
            self.new.push(name());
        }
    }

    /// Learns a name from another catalog; fails if its id stands for another name here.
    pub fn learn(&mut self, name: &Name) -> Result<(), IdCollision> {
        match name {
            Name::Scope { id, project, task } => self.insert_scope(*id, project, task).map(drop),
            Name::Window { id, window } => self.insert_window(*id, *window).map(drop),
            Name::Item { id, name } => self.items.insert(*id, name).map(drop),
            Name::Annotator { id, name } => self.annotators.insert(*id, name).map(drop),
            Name::Label { id, label } => self.labels.insert(*id, label),
        }
    }

    fn insert_scope(&mut self, id: ScopeId, project: &str, task: &str) -> Result<bool, IdCollision> {
        match self.scopes.get(&id) {
            Some((p, t)) if **p == *project && **t == *task => Ok(false),
            Some((p, t)) => Err(IdCollision {
                id,
                kind: "scope",
                first: format!("{p:?}/{t:?}"),
                second: format!("{project:?}/{task:?}"),
            }),
            None => {
                self.scopes.insert(id, (project.into(), task.into()));
                self.projects.entry(crate::gates::project_id(project)).or_insert_with(|| project.into());
                Ok(true)
            }
        }
    }

    fn insert_window(&mut self, id: ScopeId, window: Window) -> Result<bool, IdCollision> {
        match self.windows.get(&id) {
            Some(known) if *known == window => Ok(false),
            Some(known) => Err(IdCollision {
                id,
                kind: "window",
                first: format!("{known:?}"),
                second: format!("{window:?}"),
            }),
            None => {
                self.windows.insert(id, window);
                Ok(true)
            }
        }
    }

    /// The id of the scope `(project, task)`.
    pub fn scope(&mut self, project: &str, task: &str) -> Result<ScopeId, IdCollision> {
        let id = scope_id(project, task);
        if self.insert_scope(id, project, task)? {
            self.keep(|| Name::Scope { id, project: project.into(), task: task.into() });
        }
        Ok(id)
    }

    /// The id of an item name.
    pub fn item(&mut self, name: &str) -> Result<ItemId, IdCollision> {
        let (id, new) = self.items.intern_new(name)?;
        if new {
            self.keep(|| Name::Item { id, name: name.into() });
        }
        Ok(id)
    }

    /// The id of an annotator name.
    pub fn annotator(&mut self, name: &str) -> Result<AnnotatorId, IdCollision> {
        let (id, new) = self.annotators.intern_new(name)?;
        if new {
            self.keep(|| Name::Annotator { id, name: name.into() });
        }
        Ok(id)
    }

    /// The id of a label value.
    pub fn label(&mut self, raw: &crate::label::RawLabel<'_>) -> Result<LabelId, IdCollision> {
        let known = self.labels.len();
        let id = self.labels.intern(raw)?;
        if self.labels.len() > known {
            self.keep(|| Name::Label { id, label: raw.to_label() });
        }
        Ok(id)
    }

    /// The ids of the scopes seen (windows apart), in no particular order.
    pub fn scope_ids(&self) -> impl Iterator<Item = ScopeId> + '_ {
        self.scopes.keys().copied()
    }

    /// Number of scopes seen (windows apart).
    pub fn scope_count(&self) -> usize {
        self.scopes.len()
    }

    /// The `(project, task)` names of a scope (of its scope, for a window).
    pub fn scope_name(&self, scope: ScopeId) -> (&str, &str) {
        let base = self.window(scope).map_or(scope, |w| w.scope);
        let (p, t) = &self.scopes[&base];
        (p, t)
    }

    /// The name of a project, by id ([`crate::gates::project_id`]). Panics on an id of no scope's
    /// project.
    pub fn project(&self, id: u64) -> &str {
        &self.projects[&id]
    }

    /// The id of a window scope.
    pub fn window_scope(&mut self, window: Window) -> Result<ScopeId, IdCollision> {
        let id = window_id(&window);
        if self.insert_window(id, window)? {
            self.keep(|| Name::Window { id, window });
        }
        Ok(id)
    }

    /// The window a window scope stands for; `None` for an ordinary scope.
    pub fn window(&self, scope: ScopeId) -> Option<Window> {
        if !is_window(scope) {
            return None;
        }
        Some(*self.windows.get(&scope).expect("a window scope's window is in the catalog"))
    }
}

/// A change to the dataflows' input: an event of one item, routed to the worker that owns it
/// (see [`crate::items`]).
pub type Update = (ItemKey, ItemEvent);

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

/// What applying a record did: its operation and the likely mistakes it showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub op: Op,
    pub warnings: Warnings,
}

/// A number label seen as a JSON number (in [`Source::number_forms`]).
const AS_NUMBER: u8 = 1;
/// A number label seen as a string holding that number.
const AS_STRING: u8 = 2;

/// A plain label event seen in a scope (in [`Source::kinds`]).
const PLAIN_LABELS: u8 = 1;
/// A preference event seen in a scope.
const PREFERENCES: u8 = 2;

/// Interns the names of parsed events and turns each into an [`Update`] for the item it concerns,
/// stamped with a sequence number (see [`Source::set_seq`]); the items' owners apply the
/// upsert/delete semantics ([`crate::items`]).
#[derive(Debug, Default)]
pub struct Source {
    pub catalog: Catalog,
    /// Window sizes (ms) whose window scopes receive every label: their names are learnt here.
    window_sizes: Vec<i64>,
    /// The sequence number of the next event.
    seq: u64,
    /// Per scope and number label (labels and gold answers alike), the forms it was sent in:
    /// [`AS_NUMBER`], [`AS_STRING`] (`"1"` for `1`), or both, a likely mistake.
    number_forms: HashMap<(ScopeId, LabelId), u8, RandomState>,
    /// Per scope, the kinds of label events seen: [`PLAIN_LABELS`], [`PREFERENCES`] or both, a
    /// likely mistake (spec 2.2).
    kinds: HashMap<ScopeId, u8, RandomState>,
    scratch: Vec<u8>,
}

impl Source {
    /// A source that also feeds tumbling event-time windows of these sizes (milliseconds).
    pub fn with_windows(window_sizes: &[i64]) -> Source {
        assert!(window_sizes.iter().all(|&s| s > 0), "window sizes must be positive");
        Source { window_sizes: window_sizes.to_vec(), ..Source::default() }
    }

    /// The window sizes (ms) this source feeds.
    pub fn window_sizes(&self) -> &[i64] {
        &self.window_sizes
    }

    /// Learns the window scopes of a label given at `stamp` on an item of `scope`.
    fn windows_of(&mut self, scope: ScopeId, stamp: Stamp) -> Result<(), IdCollision> {
        for i in 0..self.window_sizes.len() {
            let size_ms = self.window_sizes[i];
            let start_ms = stamp.ts_ms - stamp.ts_ms.rem_euclid(size_ms);
            self.catalog.window_scope(Window { scope, size_ms, start_ms })?;
        }
        Ok(())
    }

    /// The sequence number of the next event: an identity's event with a greater number is the
    /// later one. Each event takes the next number; readers of a file in parallel set it to the
    /// event's byte offset, so that file order decides whichever reader saw it first.
    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        seq
    }

    /// Whether `label`, with id `id`, in `scope`, is a value also sent in the other form (a
    /// number and a string holding it) in the scope; remembers the form it came in.
    fn mixed_forms(&mut self, scope: ScopeId, label: &RawLabel<'_>, id: LabelId) -> bool {
        let (number, form) = match label {
            RawLabel::Number(_) => (id, AS_NUMBER),
            RawLabel::String(text) if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                let Ok(number) = RawNumber::parse(text) else { return false };
                RawLabel::Number(number).canonical_key(&mut self.scratch);
                (stable_id(&self.scratch), AS_STRING)
            }
            _ => return false,
        };
        let forms = self.number_forms.entry((scope, number)).or_default();
        *forms |= form;
        *forms == AS_NUMBER | AS_STRING
    }

    /// Applies one label event; appends its update to `out`, and returns the event's warnings with those only the source can see
    /// ([`InputWarning::NumberAndString`]). Fails, changing nothing, if a name's id collides with
    /// another name's.
    pub fn apply_label(
        &mut self,
        event: &LabelEvent<'_>,
        out: &mut Vec<Update>,
    ) -> Result<Warnings, IdCollision> {
        let scope = self.catalog.scope(&event.project, &event.task)?;
        let item = (scope, self.catalog.item(&event.item_id)?);
        let annotator = self.catalog.annotator(&event.annotator_id)?;
        let stamp = Stamp {
            ts_ms: event.ts_ms,
            duration_ms: event.duration_ms.map(|d| u32::try_from(d).unwrap_or(u32::MAX)),
        };
        // A preference event is agreed on by its normalised outcome (spec 2.2), and keeps its
        // comparison; its systems' names are interned as labels.
        let outcome = event.preference.as_ref().and_then(|p| p.outcome().map(|o| (p, o)));
        let agreed;
        let (label, compared) = match (&event.label, outcome) {
            (Some(_), Some((preference, outcome))) => {
                fn system(name: &str) -> RawLabel<'_> {
                    RawLabel::String(std::borrow::Cow::Borrowed(name))
                }
                let compared = Compared {
                    first: self.catalog.label(&system(outcome.first))?,
                    second: self.catalog.label(&system(outcome.second))?,
                    side: preference.choice.expect("an upsert has a choice").side(),
                    result: outcome.result,
                };
                agreed = outcome.agreement_label();
                (Some(&agreed), Some(compared))
            }
            (label, _) => (label.as_ref(), None),
        };
        // A decisive outcome's label is its winner's name, interned just above.
        let winner = compared.and_then(|c| match (label, c.result) {
            (Some(RawLabel::String(_)), PairResult::FirstWins) => Some(c.first),
            (Some(RawLabel::String(_)), PairResult::SecondWins) => Some(c.second),
            _ => None,
        });
        let new = match (label, winner) {
            (Some(_), Some(id)) => Some((id, stamp)),
            (Some(label), None) => Some((self.catalog.label(label)?, stamp)),
            (None, _) => None,
        };
        let mut warnings = event.warnings;
        if let (Some(label), Some((id, _))) = (label, new) {
            if self.mixed_forms(scope, label, id) {
                warnings.add(InputWarning::NumberAndString);
            }
            let kind = if compared.is_some() { PREFERENCES } else { PLAIN_LABELS };
            let kinds = self.kinds.entry(scope).or_default();
            *kinds |= kind;
            if *kinds == PLAIN_LABELS | PREFERENCES {
                warnings.add(InputWarning::MixedKinds);
            }
        }
        if new.is_some() {
            // Learns the names of the label's windows.
            self.windows_of(scope, stamp)?;
        }
        out.push((item, ItemEvent::Label { annotator, seq: self.next_seq(), value: new, compared }));
        Ok(warnings)
    }

    /// Applies one gold answer; appends its update to `out` and returns its warnings
    /// (see [`Source::apply_label`]). Fails, changing nothing, if a name's id collides with
    /// another name's.
    pub fn apply_gold(
        &mut self,
        event: &GoldEvent<'_>,
        out: &mut Vec<Update>,
    ) -> Result<Warnings, IdCollision> {
        let scope = self.catalog.scope(&event.project, &event.task)?;
        let item = (scope, self.catalog.item(&event.item_id)?);
        let new = match &event.label {
            Some(label) => Some(self.catalog.label(label)?),
            None => None,
        };
        let mut warnings = event.warnings;
        if let (Some(label), Some(id)) = (&event.label, new) {
            if self.mixed_forms(scope, label, id) {
                warnings.add(InputWarning::NumberAndString);
            }
        }
        out.push((item, ItemEvent::Gold { seq: self.next_seq(), label: new }));
        Ok(warnings)
    }

    /// Parses one record of `stream` and applies it; returns its operation and warnings, or why
    /// it was refused.
    pub fn apply_record(
        &mut self,
        stream: Stream,
        record: &str,
        out: &mut Vec<Update>,
    ) -> Result<Applied, ParseError> {
        match stream {
            Stream::Labels => {
                let event = parse_label_event(record)?;
                let warnings = self.apply_label(&event, out)?;
                Ok(Applied { op: event.op, warnings })
            }
            Stream::Gold => {
                let event = parse_gold_event(record)?;
                let warnings = self.apply_gold(&event, out)?;
                Ok(Applied { op: event.op, warnings })
            }
        }
    }

    /// Applies one record as it arrived, a file's line or a Kafka message's value (`None` for a
    /// tombstone): the same as [`Source::apply_record`] after [`record_text`].
    pub fn apply_message(
        &mut self,
        stream: Stream,
        payload: Option<&[u8]>,
        out: &mut Vec<Update>,
    ) -> Result<Applied, ParseError> {
        self.apply_record(stream, record_text(payload)?, out)
    }
}

#[cfg(test)]
mod tests;
