//! `labelqc`: a thin entry point over the library.

use std::io::IsTerminal;

use clap::Parser;
use labelqc::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

/// jemalloc: a third less CPU than glibc's allocator for the live service, whose epochs free and
/// allocate many small records and states (BENCHMARKS.md, "jemalloc").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // clap exits with 2 (`cli::EXIT_USAGE`) on a command line it does not understand.
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("LABELQC_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    match labelqc::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("labelqc: {error:#}");
            std::process::ExitCode::from(labelqc::cli::exit_code(&error))
        }
    }
}
