//! The annotator record: each annotator's own record (from [`super::AnnotatorLogic`]) joined with
//! the gate of its project ([`crate::gates`]) and its Dawid–Skene confusion matrix
//! ([`crate::scope_truth`]), as the report and the annotators topic carry it.

use serde::{Deserialize, Serialize};

use super::AnnotatorKey;
use crate::dataflow::Diff;
use crate::keyed::{add_part, present, Keyed};
use crate::records::Record;
use crate::source::Catalog;

/// What the record of an annotator is made of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JoinInput {
    /// The annotator's own record, without its gate.
    Own(Record),
    /// The gate of the annotator in the scope's project, as JSON.
    Gate(Vec<u8>),
    /// The annotator's Dawid–Skene confusion matrix in the scope, as JSON.
    Confusion(Vec<u8>),
}

/// The parts of an annotator's record, with their multiplicities.
#[derive(Debug, Default)]
pub struct JoinState {
    own: Vec<(Record, Diff)>,
    gate: Vec<(Vec<u8>, Diff)>,
    confusion: Vec<(Vec<u8>, Diff)>,
}

/// Joins each annotator's own record with its project's gate: the annotator record of the
/// report and of the annotators topic (a keyed operator of its own, so that the gate, which
/// depends on the annotator's drift, feeds back without a cycle).
pub struct JoinLogic;

impl Keyed for JoinLogic {
    type Key = AnnotatorKey;
    type Update = JoinInput;
    type Diff = Diff;
    type State = JoinState;
    type Out = Record;
    type Side = ();

    fn route(&(scope, annotator): &AnnotatorKey) -> u64 {
        scope.rotate_left(32) ^ annotator
    }

    fn apply(&mut self, _: &AnnotatorKey, s: &mut JoinState, update: &JoinInput, &diff: &Diff) {
        match update {
            JoinInput::Own(record) => add_part(&mut s.own, record, diff),
            JoinInput::Gate(gate) => add_part(&mut s.gate, gate, diff),
            JoinInput::Confusion(json) => add_part(&mut s.confusion, json, diff),
        }
    }

    fn derive(&mut self, _: &AnnotatorKey, s: &mut JoinState, _: &Catalog, out: &mut Vec<Record>) {
        let Some(own) = present(&s.own) else { return };
        let gate = present(&s.gate).map_or(&b"null"[..], Vec::as_slice);
        let confusion = present(&s.confusion).map_or(&b"null"[..], Vec::as_slice);
        let mut value = Vec::with_capacity(own.value.len() + gate.len() + confusion.len() + 22);
        value.extend_from_slice(&own.value[..own.value.len() - 1]);
        value.extend_from_slice(b",\"gate\":");
        value.extend_from_slice(gate);
        value.extend_from_slice(b",\"confusion\":");
        value.extend_from_slice(confusion);
        value.push(b'}');
        out.push(Record { key: own.key.clone(), value });
    }

    fn is_empty(s: &JoinState) -> bool {
        s.own.is_empty() && s.gate.is_empty() && s.confusion.is_empty()
    }

    fn is_record(_: &Record) -> bool {
        true
    }
}
