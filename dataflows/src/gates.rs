//! Gates (spec section 4, the gating topic): whether the labelling platform should route work to
//! an annotator in a project. The gate of a (project, annotator) is [`drift::decide_gate`] over the
//! annotator's gold answers in every scope of the project, in event-time order, and the alarm days
//! of the signals the project gates on; it is kept by the worker that owns the (project,
//! annotator), from what the annotator's records in each scope send ([`GateInput`]) and its gold
//! answers, each sent once ([`GoldAnswerLogic`]).
//!
//! A gate derives: its record (the gate with its decisions), the gate JSON for the annotator's
//! record in each scope it labels in ([`crate::annotators::JoinLogic`]), and the drift summary's
//! facts (annotators per gate state and per signal state, the watchlist's candidates, see
//! [`crate::summary`]). The gating topic is a log of decisions: [`gate_records_since`] says which
//! records take what the topic last said to the gate now.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataflow::Diff;
use crate::drift::{self, Decision, DriftSettings, Gate, GateState, Signal, SignalState};
use crate::keyed::Keyed;
use crate::label::stable_id;
use crate::records::{Entity, Record};
use crate::source::{AnnotatorId, Catalog, Day, ItemId, ScopeId};
use crate::summary::{Metric, WatchCandidate};

/// The id of a project name.
pub fn project_id(project: &str) -> u64 {
    stable_id(project.as_bytes())
}

/// An annotator within a project: `(project id, annotator)`.
pub type GateKey = (u64, AnnotatorId);

/// What an annotator's record in one scope of the project tells its gate. The variants' order
/// is the order of a gate's inputs ([`GateLogic`] reads them by kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GateInput {
    /// The annotator has labels or gold answers in `scope`.
    Present { scope: ScopeId },
    /// One of its gold answers.
    Answer { ts_ms: i64, scope: ScopeId, item: ItemId, correct: bool },
    /// An alarm episode on a signal the project gates on.
    Alarm { scope: ScopeId, signal: Signal, start: Day, end: Option<Day> },
    /// A signal's current state in `scope`, with its latest score (`f64` bits).
    Signal { scope: ScopeId, signal: Signal, state: SignalState, score: Option<u64> },
}

/// What a gate keeps: its inputs, with multiplicities, and its last decision.
#[derive(Debug, Default)]
pub struct GateInputs {
    /// Presence, gold answers and alarms, in their order.
    inputs: BTreeMap<GateInput, Diff>,
    /// The signals' states and scores (a few per scope): apart from the gold answers, as a
    /// signal's score moves for every annotator of a scope when its gold accuracy moves, and then
    /// each of them takes a search of its answers' tree no more.
    signals: Vec<(GateInput, Diff)>,
    /// The gate and its JSON as last decided, while no gold answer or alarm has changed since:
    /// a signal's state or score (which moves for every annotator of a scope when the scope's
    /// gold accuracy moves) feeds the drift summary's facts, not the decision.
    decided: Option<(Gate, Vec<u8>)>,
    /// What the last derivation read of the signals ([`signal_facts`]), while no presence, gold
    /// answer or alarm has changed since: a signal's score that moves without moving these facts
    /// (a scope's gold accuracy moves every annotator's gold score, most often a little) leaves
    /// every output as it was ([`GateLogic::unchanged`]).
    facts: Option<Vec<SignalFacts>>,
}

/// What a gate's outputs read of one signal over the project's scopes: its worst state, and its
/// best score where that is at least 0.5 (a watchlist candidate).
type SignalFacts = (Signal, SignalState, Option<u64>);

/// The signals' facts of `signals` ([`SignalFacts`]), by signal.
fn signal_facts(signals: &[(GateInput, Diff)]) -> Vec<SignalFacts> {
    // Per signal, the worst state and the best score over the project's scopes.
    let mut worst: BTreeMap<Signal, (SignalState, Option<f64>)> = BTreeMap::new();
    for (input, _) in signals.iter().filter(|(_, m)| *m > 0) {
        if let GateInput::Signal { signal, state, score, .. } = *input {
            let e = worst.entry(signal).or_insert((SignalState::Insufficient, None));
            e.0 = e.0.max(state);
            if let Some(score) = score.map(f64::from_bits) {
                e.1 = Some(e.1.map_or(score, |b: f64| b.max(score)));
            }
        }
    }
    worst
        .into_iter()
        .map(|(signal, (state, score))| (signal, state, score.filter(|s| *s >= 0.5).map(f64::to_bits)))
        .collect()
}

/// What a gate derives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GateOut {
    /// The gate record (gating topic; the service's gauges).
    Record(Record),
    /// The gate as JSON, for the annotator's record in `scope`.
    For {
        scope: ScopeId,
        annotator: AnnotatorId,
        gate: Vec<u8>,
    },
    Metric(Metric),
    /// The annotator is blocked in `scope`'s project: its labels leave the trusted consensus of
    /// the scope's items.
    Blocked {
        scope: ScopeId,
        annotator: AnnotatorId,
    },
    /// A candidate of the project's watchlist on `signal`.
    Watch {
        project: u64,
        signal: Signal,
        candidate: WatchCandidate,
    },
}

impl GateOut {
    /// The record, if this is one.
    pub fn record(self) -> Option<Record> {
        match self {
            GateOut::Record(record) => Some(record),
            _ => None,
        }
    }

    /// The drift summary fact, if this is one.
    pub fn metric(self) -> Option<Metric> {
        match self {
            GateOut::Metric(metric) => Some(metric),
            _ => None,
        }
    }
}

/// One gold answer of an annotator: `(scope, annotator, ts_ms, item, correct)`.
pub type AnswerKey = (ScopeId, AnnotatorId, i64, ItemId, bool);

/// Sends each gold answer to the gate of its annotator in its scope's project
/// ([`GateInput::Answer`]), keyed by the answer: an answer is derived when it comes or goes, and
/// not again when anything else of its annotator changes (a corrected gold answer elsewhere in
/// the scope re-evaluates every annotator's drift, whose gold answers stay as they are). The
/// state is the answer's multiplicity.
pub struct GoldAnswerLogic;

impl Keyed for GoldAnswerLogic {
    type Key = AnswerKey;
    type Update = ();
    type Diff = Diff;
    type State = Diff;
    type Out = (GateKey, GateInput);
    type Side = ();

    fn route(&(scope, annotator, ts_ms, item, _): &AnswerKey) -> u64 {
        scope.rotate_left(32) ^ annotator ^ item.rotate_left(16) ^ ts_ms as u64
    }

    fn apply(&mut self, _: &AnswerKey, m: &mut Diff, _: &(), &diff: &Diff) {
        *m += diff;
    }

    fn derive(
        &mut self,
        key: &AnswerKey,
        m: &mut Diff,
        names: &Catalog,
        out: &mut Vec<(GateKey, GateInput)>,
    ) {
        let &(scope, annotator, ts_ms, item, correct) = key;
        let gate = (project_id(names.scope_name(scope).0), annotator);
        for _ in 0..(*m).max(0) {
            out.push((gate, GateInput::Answer { ts_ms, scope, item, correct }));
        }
    }

    fn is_empty(m: &Diff) -> bool {
        *m == 0
    }
}

/// The keyed logic of gates.
pub struct GateLogic {
    pub drift: DriftSettings,
}

impl Keyed for GateLogic {
    type Key = GateKey;
    type Update = GateInput;
    type Diff = Diff;
    type State = GateInputs;
    type Out = GateOut;
    type Side = ();
    const KEEP_OUTPUTS: bool = true;

    fn route(&(project, annotator): &GateKey) -> u64 {
        project.rotate_left(32) ^ annotator
    }

    fn apply(&mut self, _: &GateKey, s: &mut GateInputs, update: &GateInput, &diff: &Diff) {
        if matches!(update, GateInput::Signal { .. }) {
            crate::keyed::add_part(&mut s.signals, update, diff);
            return;
        }
        s.facts = None;
        if matches!(update, GateInput::Answer { .. } | GateInput::Alarm { .. }) {
            s.decided = None;
        }
        let m = s.inputs.entry(*update).or_default();
        *m += diff;
        if *m == 0 {
            s.inputs.remove(update);
        }
    }

    fn derive(
        &mut self,
        &(project, annotator): &GateKey,
        s: &mut GateInputs,
        names: &Catalog,
        out: &mut Vec<GateOut>,
    ) {
        let live = s.inputs.iter().filter(|(_, m)| **m > 0);
        // The inputs are ordered by kind (presence, answers, alarms): a decided gate reads its
        // presence, first, without going over its gold answers.
        let scopes: Vec<ScopeId> = s
            .inputs
            .iter()
            .map_while(|(i, m)| match i {
                GateInput::Present { scope } => Some((*scope, *m)),
                _ => None,
            })
            .filter(|(_, m)| *m > 0)
            .map(|(scope, _)| scope)
            .collect();
        if scopes.is_empty() {
            return;
        }
        let project_name = names.project(project);
        let config = self.drift.for_project(project_name);
        let facts = signal_facts(&s.signals);
        if s.decided.is_none() {
            let mut answers: Vec<(i64, ScopeId, ItemId, bool)> = Vec::new();
            let mut alarms: Vec<(Signal, Day, Option<Day>)> = Vec::new();
            for (input, &m) in live {
                match *input {
                    GateInput::Answer { ts_ms, scope, item, correct } => {
                        answers.extend((0..m).map(|_| (ts_ms, scope, item, correct)))
                    }
                    GateInput::Alarm { signal, start, end, .. } => alarms.push((signal, start, end)),
                    GateInput::Signal { .. } | GateInput::Present { .. } => {}
                }
            }
            answers.sort_unstable();
            let answers: Vec<(i64, bool)> = answers.into_iter().map(|(ts, _, _, c)| (ts, c)).collect();
            let gated = |day: Day| {
                alarms.iter().any(|&(signal, start, end)| {
                    config.gate_on_alarm.contains(&signal) && start <= day && end.is_none_or(|e| day < e)
                })
            };
            let gate = drift::decide_gate(&answers, gated, config);
            let json = serde_json::to_vec(&gate).expect("a gate serialises");
            s.decided = Some((gate, json));
        }
        let (gate, json) = s.decided.as_ref().expect("decided above");
        let name = names.annotators.name(annotator);
        let blocked = gate.state == drift::GateState::Block;
        for scope in scopes {
            out.push(GateOut::For { scope, annotator, gate: json.clone() });
            if blocked {
                out.push(GateOut::Blocked { scope, annotator });
            }
        }
        out.push(GateOut::Record(Record { key: gate_key(project_name, name), value: json.clone() }));
        out.push(GateOut::Metric(Metric::Gate { project: project_name.into(), state: gate.state }));
        for &(signal, state, score) in &facts {
            out.push(GateOut::Metric(Metric::Signal { project: project_name.into(), signal, state }));
            if let Some(score) = score {
                let candidate = WatchCandidate {
                    score,
                    annotator: name.into(),
                    gold_accuracy: gate.evidence.accuracy.map(f64::to_bits),
                };
                out.push(GateOut::Watch { project, signal, candidate });
            }
        }
        s.facts = Some(facts);
    }

    /// Only signals changed, and not what the outputs read of them ([`GateInputs::facts`]).
    fn unchanged(&mut self, _: &GateKey, s: &mut GateInputs, _: &Catalog) -> bool {
        s.facts.as_ref().is_some_and(|facts| *facts == signal_facts(&s.signals))
    }

    fn is_empty(s: &GateInputs) -> bool {
        s.inputs.is_empty() && s.signals.is_empty()
    }

    fn is_record(out: &GateOut) -> bool {
        matches!(out, GateOut::Record(_))
    }
}

/// The key of the gate record of `annotator` in `project`.
pub fn gate_key(project: &str, annotator: &str) -> crate::records::RecordKey {
    crate::records::RecordKey::new(project, "", Entity::Gate(annotator.into()))
}

/// A gate decision as published to the gating topic (spec section 4): one per change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GateRecord {
    pub project: String,
    pub annotator_id: String,
    /// The gate now.
    pub state: GateState,
    /// The state published before this record (none for an annotator's first record).
    pub from: Option<GateState>,
    /// Why the gate is in its state now.
    pub reason: String,
    /// The recent gold accuracy the decision rested on.
    pub evidence: Option<drift::Evidence>,
    /// Event time of the decision (absent while in warm-up).
    pub at: Option<String>,
    /// Set when earlier decisions were re-evaluated because gold answers they rested on were
    /// corrected or deleted: `from` no longer follows from the data.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub revised: bool,
}

/// What the gating topic last said of an annotator in a project: the state and the time of the
/// decision (absent for a record made in warm-up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedGate {
    pub state: GateState,
    pub at: Option<String>,
}

impl PublishedGate {
    /// What a gate record says.
    pub fn of(record: &GateRecord) -> PublishedGate {
        PublishedGate { state: record.state, at: record.at.clone() }
    }

    /// What the records of `gate` left the gating topic saying.
    pub fn of_gate(gate: &Gate) -> PublishedGate {
        PublishedGate { state: gate.state, at: gate.history.last().map(|d| d.at.clone()) }
    }
}

/// The gate records that take what the gating topic last said of `annotator` in `project`
/// (`published`; `None` when it said nothing) to the gate now (`new`; `None` once the annotator has
/// neither labels nor gold answers in the project): one record per decision made since the
/// published one, none when no decision was made (later evidence alone is no decision), or one
/// record marked `revised` when the published decision is no longer in the gate's history (gold
/// answers it rested on were corrected or deleted).
pub fn gate_records_since(
    project: &str,
    annotator: &str,
    published: Option<&PublishedGate>,
    new: Option<&Gate>,
) -> Vec<GateRecord> {
    let warm_up = |p: &PublishedGate| p.state == GateState::Warmup && p.at.is_none();
    let Some(new) = new else {
        // The annotator left the project: its gate goes back to warm-up, once.
        return match published {
            Some(p) if !warm_up(p) => vec![GateRecord {
                project: project.to_string(),
                annotator_id: annotator.to_string(),
                state: GateState::Warmup,
                from: Some(p.state),
                reason: "no labels or gold answers left in the project".to_string(),
                evidence: None,
                at: None,
                revised: true,
            }],
            _ => Vec::new(),
        };
    };
    let record = |decision: Option<&Decision>, from: Option<GateState>, revised, reason: String| GateRecord {
        project: project.to_string(),
        annotator_id: annotator.to_string(),
        state: decision.map_or(new.state, |d| d.to),
        from,
        reason,
        evidence: Some(decision.map_or(&new.evidence, |d| &d.evidence).clone()),
        at: decision.map(|d| d.at.clone()),
        revised,
    };
    let fresh = match published {
        // First sight of the annotator: every decision so far, or its warm-up.
        None if new.history.is_empty() => return vec![record(None, None, false, new.reason.clone())],
        None => &new.history[..],
        Some(p) if warm_up(p) => &new.history[..],
        Some(p) => {
            let found = new.history.iter().rposition(|d| d.to == p.state && Some(&d.at) == p.at.as_ref());
            match found {
                Some(i) => &new.history[i + 1..],
                None => {
                    let why = format!("re-evaluated after gold answers it rested on changed: {}", new.reason);
                    return vec![record(new.history.last(), Some(p.state), true, why)];
                }
            }
        }
    };
    fresh.iter().map(|d| record(Some(d), d.from, false, d.reason.clone())).collect()
}

/// A reader of the gating topic, for callers without one (the demo, tests): what it last said of
/// each (project, annotator), and the gate records each epoch's gate changes publish.
#[derive(Debug, Default)]
pub struct GateLog {
    published: BTreeMap<(std::sync::Arc<str>, std::sync::Arc<str>), PublishedGate>,
}

impl GateLog {
    /// The gate records of an epoch's record changes (consolidated: each key's changes adjacent).
    pub fn records(&mut self, changes: &[(Record, Diff)]) -> Vec<GateRecord> {
        let mut out = Vec::new();
        for (key, now) in crate::records::new_values(changes) {
            let Entity::Gate(annotator) = &key.entity else { continue };
            let gate: Option<Gate> = now.and_then(|v| serde_json::from_slice(v).ok());
            let key = (key.project.clone(), annotator.clone());
            let records = gate_records_since(&key.0, &key.1, self.published.get(&key), gate.as_ref());
            if let Some(last) = records.last() {
                self.published.insert(key, PublishedGate::of(last));
            }
            out.extend(records);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::Evidence;

    fn decision(from: Option<GateState>, to: GateState, at: &str) -> Decision {
        Decision {
            from,
            to,
            reason: format!("to {}", to.name()),
            evidence: Evidence::default(),
            at: at.to_string(),
            at_ms: 0,
        }
    }

    fn gate(history: Vec<Decision>) -> Gate {
        let state = history.last().map_or(GateState::Warmup, |d| d.to);
        Gate {
            state,
            reason: "now".into(),
            evidence: Evidence::default(),
            since: history.last().map(|d| d.at.clone()),
            history,
        }
    }

    fn states(records: &[GateRecord]) -> Vec<(Option<GateState>, GateState, bool)> {
        records.iter().map(|r| (r.from, r.state, r.revised)).collect()
    }

    #[test]
    fn gate_records_are_the_decisions_since_the_published_one() {
        use GateState::*;
        let d1 = decision(Some(Warmup), Allow, "2026-01-01T00:00:00Z");
        let d2 = decision(Some(Allow), Block, "2026-01-02T00:00:00Z");
        let d3 = decision(Some(Block), Probation, "2026-01-03T00:00:00Z");
        let now = gate(vec![d1.clone(), d2.clone(), d3.clone()]);
        let since =
            |p: Option<PublishedGate>, g: Option<&Gate>| states(&gate_records_since("p", "a", p.as_ref(), g));
        // Nothing published: every decision, or the warm-up of a new annotator.
        assert_eq!(
            since(None, Some(&now)),
            vec![(Some(Warmup), Allow, false), (Some(Allow), Block, false), (Some(Block), Probation, false)]
        );
        assert_eq!(since(None, Some(&gate(vec![]))), vec![(None, Warmup, false)]);
        // The published decision is in the history: only those after it; none when it is the last.
        let published = |d: &Decision| Some(PublishedGate { state: d.to, at: Some(d.at.clone()) });
        assert_eq!(since(published(&d2), Some(&now)), vec![(Some(Block), Probation, false)]);
        assert_eq!(since(published(&d3), Some(&now)), vec![]);
        let warm = Some(PublishedGate { state: Warmup, at: None });
        assert_eq!(since(warm.clone(), Some(&gate(vec![]))), vec![]);
        assert_eq!(since(warm.clone(), Some(&gate(vec![d1.clone()]))), vec![(Some(Warmup), Allow, false)]);
        // It is not: one revised record from what was published to the gate now.
        let gone = decision(Some(Allow), Block, "2026-01-05T00:00:00Z");
        assert_eq!(since(published(&gone), Some(&now)), vec![(Some(Block), Probation, true)]);
        // The annotator left the project: back to warm-up once, unless already there.
        assert_eq!(since(published(&d2), None), vec![(Some(Block), Warmup, true)]);
        assert_eq!(since(warm, None), vec![]);
        assert_eq!(since(None, None), vec![]);
    }
}
