//! labelqc's integration tests: one binary, run by `cargo test`.

mod admin;
mod cli;
mod compare;
mod conformance;
mod demo;
mod drift;
mod grafana;
mod http;
mod kafka;
mod kubernetes;
mod property;
mod read_topics;
mod reference;
mod scenario;
mod tansu;
mod topics;
mod topics_admin;
