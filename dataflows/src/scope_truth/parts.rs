//! A scope's record: its own numbers ([`crate::scopes`]) joined with the parts formed downstream
//! of the gates: its Dawid–Skene `truth`, its items' `routing` counts and, in a scope of
//! comparisons, its `preferences` (with the `mixed_kinds` warning, spec 2.2).

use serde::{Deserialize, Serialize};

use crate::dataflow::Diff;
use crate::keyed::{add_part, present, Keyed};
use crate::records::Record;
use crate::routing::{Route, RoutingCounts};
use crate::source::{Catalog, ScopeId};

/// A part of a scope's record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScopePart {
    /// The scope's own record ([`crate::scopes`]).
    Own(Record),
    /// The scope's `truth` object as JSON.
    Truth(Vec<u8>),
    /// One item's route and the labels it saves (summed with multiplicities).
    Route { route: Route, labels_saved: u32 },
    /// The scope's `preferences` object as JSON ([`crate::leaderboard`]).
    Preferences(Vec<u8>),
}

/// A scope's record parts.
#[derive(Debug, Default)]
pub struct ScopeParts {
    own: Vec<(Record, Diff)>,
    truth: Vec<(Vec<u8>, Diff)>,
    routing: RoutingCounts,
    preferences: Vec<(Vec<u8>, Diff)>,
}

/// The scope's warning when it has both plain label events and comparisons (spec 2.2).
const MIXED_KINDS: &[u8] = br#","warnings":[{"kind":"mixed_kinds","message":"the scope has both plain label events and preference events (left, right); its preference numbers use the preference events only: give comparisons a task of their own"}]"#;

/// A scope's `n_labels` (from its own record) and its preference numbers' `events`.
#[derive(Deserialize)]
struct Counts {
    n_labels: Option<i64>,
    events: Option<i64>,
}

/// The counts of a compact JSON object (none when it has neither).
fn counts(value: &[u8]) -> Counts {
    serde_json::from_slice(value).unwrap_or(Counts { n_labels: None, events: None })
}

/// Joins each scope's own record with its `truth`, `routing` and `preferences`: the scope record
/// of the report, of the scopes topic and of the query API (an operator of its own, since truth
/// and routing depend on the gates, which depend on the scope's own numbers). A scope with both
/// plain label events and comparisons (more live labels than comparisons) also gets the
/// `mixed_kinds` warning.
pub struct ScopePartsLogic;

impl Keyed for ScopePartsLogic {
    type Key = ScopeId;
    type Update = ScopePart;
    type Diff = Diff;
    type State = ScopeParts;
    type Out = Record;
    type Side = ();
    const KEEP_OUTPUTS: bool = true;

    fn route(key: &ScopeId) -> u64 {
        *key
    }

    fn apply(&mut self, _: &ScopeId, s: &mut ScopeParts, update: &ScopePart, &diff: &Diff) {
        match update {
            ScopePart::Own(record) => add_part(&mut s.own, record, diff),
            ScopePart::Truth(json) => add_part(&mut s.truth, json, diff),
            ScopePart::Preferences(json) => add_part(&mut s.preferences, json, diff),
            &ScopePart::Route { route, labels_saved } => {
                s.routing.apply(crate::routing::RouteDecision { route, labels_saved }, diff)
            }
        }
    }

    fn derive(&mut self, _: &ScopeId, s: &mut ScopeParts, _: &Catalog, out: &mut Vec<Record>) {
        let Some(own) = present(&s.own) else { return };
        let truth = present(&s.truth).map_or(&b"null"[..], Vec::as_slice);
        let routing = serde_json::to_vec(&s.routing).expect("routing counts serialise");
        let mut value = Vec::with_capacity(own.value.len() + truth.len() + routing.len() + 24);
        value.extend_from_slice(&own.value[..own.value.len() - 1]);
        value.extend_from_slice(b",\"truth\":");
        value.extend_from_slice(truth);
        value.extend_from_slice(b",\"routing\":");
        value.extend_from_slice(&routing);
        if let Some(preferences) = present(&s.preferences) {
            value.extend_from_slice(b",\"preferences\":");
            value.extend_from_slice(preferences);
            // Live labels that are not comparisons: the scope mixes kinds (spec 2.2).
            if counts(&own.value).n_labels.unwrap_or(0) > counts(preferences).events.unwrap_or(0) {
                value.extend_from_slice(MIXED_KINDS);
            }
        }
        value.push(b'}');
        out.push(Record { key: own.key.clone(), value });
    }

    fn is_empty(s: &ScopeParts) -> bool {
        s.own.is_empty()
            && s.truth.is_empty()
            && s.routing == RoutingCounts::default()
            && s.preferences.is_empty()
    }

    fn is_record(_: &Record) -> bool {
        true
    }
}
