//! labelqc's integration tests: one binary, run by `cargo test`.

mod admin;
mod cli;
mod compare;
mod conformance;
mod demo;
mod drift;
mod fields;
mod grafana;
mod http;
mod kafka;
mod property;
mod reference;
mod scenario;
mod sizing;
mod tansu;
mod topics;
