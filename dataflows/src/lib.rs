//! labelqc's dataflows: the input model, the exact incremental quality computations of the spec
//! (agreement, gold accuracy, consensus), annotator drift, gating and alerts, as differential dataflows, and the view that forms the
//! final numbers. No I/O happens here.

pub mod alerts;
pub mod combine;
pub mod dataflow;
pub mod drift;
pub mod engine;
pub mod event;
pub mod items;
pub mod keyed;
pub mod label;
pub mod number;
pub mod preferences;
pub mod reason;
pub mod routing;
pub mod source;
pub mod stats;
pub mod truth;
pub mod view;
