//! labelqc's integration tests: one binary, run by `cargo test`.

mod admin;
mod api;
mod cli;
mod compare;
mod conformance;
mod demo;
mod drift;
mod fields;
mod grafana;
mod http;
mod input;
mod kafka;
mod kubernetes;
mod logs;
mod preferences;
mod property;
mod read_topics;
mod reference;
mod restart;
mod scenario;
mod sizing;
mod skip;
mod tansu;
mod topics;
mod topics_admin;
mod truth;
