//! The `labelqc` binary's library: command line, configuration, file input, the report command
//! and the traffic generator, over the pure dataflows of `labelqc-dataflows`.

pub mod api;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod demo;
pub mod env;
pub mod gen;
pub mod http;
pub mod input;
pub mod memory;
pub mod report;
pub mod service;
pub mod signals;
pub mod telemetry;
pub mod topics;
