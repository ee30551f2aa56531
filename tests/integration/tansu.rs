//! `labelqc run` against tansu, a Kafka-compatible broker in Rust, run by the test as a separate
//! process on 127.0.0.1 with its sqlite storage in a temporary directory: the kill-and-restart
//! scenario of `scenario` (outputs equal `labelqc report`, malformed messages dead-lettered with
//! their position), and the restart scenarios of `restart` (an entity that vanished while the
//! service was down is tombstoned; SIGKILLs at random moments are invisible to the topics'
//! readers), at least once only, as tansu refuses transactions.
//!
//! The tansu binary is `$LABELQC_TANSU`, else `~/.cargo/bin/tansu`, else `tansu` on the PATH.
//! Without it the test is skipped with a message saying how to install it, except when `CI` is
//! set (as `.ci/run` does, after installing tansu), where it fails. `LABELQC_SKIP_TANSU=1` skips
//! it always.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::admin::create_topics;
use crate::scenario::{kill_and_restart, Setup, GOLD, LABELS, OUTPUTS};

const INSTALL: &str = "cargo install tansu --locked --features libsql";

/// A tansu broker, killed when the test ends, however it ends.
pub struct Tansu {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("tansu's log:\n{}", self.log());
        }
    }
}

impl Tansu {
    /// Starts tansu on a free port of 127.0.0.1 and waits until it accepts connections; `None`
    /// (the test is skipped) when `LABELQC_SKIP_TANSU=1`, or when tansu is not installed outside CI.
    pub fn start() -> Option<(Tansu, String)> {
        if std::env::var("LABELQC_SKIP_TANSU").is_ok_and(|v| v == "1") {
            crate::skip::skipped("the tansu test: LABELQC_SKIP_TANSU=1");
            return None;
        }
        let Some(binary) = binary() else {
            let missing = format!(
                "the tansu broker is not installed: install it with `{INSTALL}` (about 17 minutes), \
                 or point LABELQC_TANSU at its binary"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{missing}; CI runs every test");
            }
            crate::skip::skipped(&format!("the tansu test: {missing}"));
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tansu.log");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (addr, url) = (format!("127.0.0.1:{port}"), format!("tcp://127.0.0.1:{port}"));
        let output = File::create(&log).unwrap();
        let child = Command::new(&binary)
            .current_dir(dir.path())
            .args(["broker", "--storage-engine", "sqlite://tansu.db", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let mut tansu = Tansu { child, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            if let Some(status) = tansu.child.try_wait().unwrap() {
                panic!("tansu exited ({status}) before listening on {addr}:\n{}", tansu.log());
            }
            assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some((tansu, addr))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LABELQC_TANSU") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "LABELQC_TANSU={} is not a file", path.display());
        return Some(path);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    let on_path =
        std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    cargo_home
        .map(|home| home.join("bin"))
        .into_iter()
        .chain(on_path)
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file())
}

/// Starts tansu with the input and output topics made.
fn tansu_with_topics() -> Option<(Tansu, String)> {
    let (tansu, brokers) = Tansu::start()?;
    let mut topics = vec![(LABELS, 3), (GOLD, 1)];
    topics.extend(OUTPUTS.map(|topic| (topic, 1)));
    create_topics(&brokers, &topics);
    Some((tansu, brokers))
}

#[test]
fn killed_and_restarted_service_converges_on_tansu() {
    let Some((tansu, brokers)) = tansu_with_topics() else { return };
    kill_and_restart(&Setup::new(tansu, brokers, 41), 900, &[]);
}

/// An entity that vanished while the service was down gets its tombstone (see `restart`).
#[test]
fn what_vanished_while_down_is_tombstoned_on_tansu() {
    let Some((_tansu, brokers)) = tansu_with_topics() else { return };
    crate::restart::vanished_while_down(&brokers);
}

/// SIGKILL at random moments: after each restart the topics equal the report, and no reader saw
/// a count go back or a gate record repeat (see `restart`).
#[test]
fn kills_are_invisible_to_readers_on_tansu() {
    let Some((tansu, brokers)) = tansu_with_topics() else { return };
    crate::restart::kills_invisible_to_readers(tansu, brokers, 3);
}
