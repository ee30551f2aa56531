//! labelqc's dataflows: the input model, the exact incremental quality computations of the spec
//! (agreement, gold accuracy, consensus), annotator drift, gating and alerts, as differential
//! dataflows whose outputs are the records of spec sections 3 and 4, each formed by the worker that
//! owns its entity. No I/O happens here.
//!
//! Where each output family lives, with its formula and its tests: scopes and windows
//! ([`scopes`]), pairs ([`pairs`]), annotators ([`annotators`]), items and their consensus
//! ([`items`]), gold accuracy ([`stats`]), drift signals ([`drift`]), gates ([`gates`]), alerts
//! ([`alerts`]), the drift summary for metrics ([`summary`]); how they are wired ([`dataflow`]) and
//! run ([`engine`]).

pub mod alerts;
pub mod annotators;
pub mod combine;
pub mod dataflow;
pub mod drift;
pub mod engine;
pub mod event;
pub mod freed;
pub mod gates;
pub mod items;
pub mod keyed;
pub mod label;
pub mod leaderboard;
pub mod names;
pub mod number;
pub mod objects;
pub mod pairs;
pub mod preferences;
pub mod reason;
pub mod records;
pub mod routing;
pub mod scope_truth;
pub mod scopes;
pub mod source;
pub mod stats;
pub mod summary;
pub mod trust;
pub mod truth;

/// The message a panic carried (`panic!` with a literal or a formatted string), if any: for
/// reporting a panic caught on another thread (`payload` of `catch_unwind` or a panic hook).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied())
}
