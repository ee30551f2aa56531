//! Runs the quality dataflow ([`crate::dataflow::quality`]) on timely worker threads, possibly
//! spanning several processes (a timely cluster).
//!
//! The workers read their input themselves, each from its own [`Feed`] (its share of the input
//! partitions or of a file's blocks); [`Engine::start`] makes an engine whose first worker reads
//! what the caller submits ([`Engine::submit`]). The caller on the first process closes epochs
//! ([`Engine::close_epoch`]); the close is broadcast to every worker, which puts what it read since
//! its last close into that epoch, with the names it learnt (a stream of the dataflow, see
//! [`crate::names`]), and reports the epoch's input positions.
//!
//! Every output record is formed by the worker that owns its entity. With [`Emit::Changes`] (the
//! live service) each epoch's record changes, drift summary facts and reports are sent to the
//! first worker, whose process hands them out whole epochs at a time ([`Engine::take_completed`]),
//! in order, once every worker has finished the epoch; the number of epochs in flight is bounded.
//! In a cluster with [`Publishers`], each record change goes instead to the first worker of the
//! process that publishes it, and the reports to the first worker of every process, so that each
//! process hands out its own share of the records. With [`Emit::Final`] (a one-shot report)
//! every worker keeps its own final records, which [`Engine::finish`] returns.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use timely::communication::WorkerGuards;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::dataflow::InputHandle;

use crate::dataflow::{quality, Diff, QualityConfig, Time};
use crate::drift::DriftSettings;
use crate::items::ItemsConfig;
use crate::keyed::Emit;
use crate::records::{Record, RecordKey};
use crate::source::{Name, Update};
use crate::summary::Metric;

/// One worker's share of the input: the worker reads it itself.
pub trait Feed {
    /// Reads input that is ready, without waiting long, into `out`; returns the number of records
    /// read (0 when nothing was ready, or when the open epoch is full and must be closed first).
    fn read(&mut self, out: &mut Vec<Update>) -> Result<usize, String>;

    /// Closes the open epoch, which the close of epoch `through` ends: what was read since the
    /// last close belongs to it (a feed may add more to `out`). Returns the names learnt in it and
    /// what the publisher needs to know of it.
    fn close(&mut self, through: Time, out: &mut Vec<Update>) -> EpochReport;
}

/// What one worker says of one epoch: the names it learnt, and opaque bytes for the publisher
/// (such as input positions and refused records).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct EpochReport {
    pub names: Vec<Name>,
    pub meta: Vec<u8>,
    /// Whether the epoch is held: the feed's input is part of a rebuild that nobody reads until
    /// it has caught up (the service reading its input partitions up to their ends at start), so
    /// the dataflows need not derive anything from it yet ([`crate::names::Names::holds`]). Once
    /// a feed says `false` after `true`, it holds no more.
    pub hold: bool,
}

/// Makes the feed of worker `index` among `peers` workers (of all processes).
pub type FeedFactory = Arc<dyn Fn(usize, usize) -> Result<Box<dyn Feed>, String> + Send + Sync>;

/// Several processes as one timely cluster: this process's index and every process's address
/// (`host:port`), the same list in every process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub process: usize,
    pub addresses: Vec<String>,
}

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Timely worker threads (in each process).
    pub workers: usize,
    /// Epochs submitted but not yet complete before `submit` waits.
    pub max_epochs_in_flight: u64,
    /// How items are kept: the tumbling windows, whether input may arrive out of order, whether
    /// item records are formed.
    pub items: ItemsConfig,
    /// Drift, gate and alert settings.
    pub drift: DriftSettings,
    /// When records are formed: every epoch's changes (live), or once, the final ones (report).
    pub emit: Emit,
    /// The `[preferences]` settings.
    pub preferences: crate::preferences::PreferenceSettings,
    /// Dawid–Skene truth settings.
    pub truth: crate::truth::TruthSettings,
    /// Routing settings.
    pub routing: crate::routing::RoutingSettings,
    /// Live: refit a changed scope's truth at most this often, warm started (the service and
    /// the demo: `truth.refresh_ms`); `None`: a cold fit whenever a scope changes (exact, for
    /// small inputs and tests).
    pub truth_refresh: Option<std::time::Duration>,
    /// In a cluster, which process publishes each record ([`Publishers`]); `None`: the first
    /// process publishes every record.
    pub publishers: Option<Publishers>,
}

/// Which process of a cluster publishes a record: a function of its key, returning a process
/// index below the number of processes, the same in every process. With it, each epoch's record
/// changes go to the first worker of their publishing process (not all to the first process),
/// every worker's report goes to the first worker of every process, and each process's engine
/// hands out only the records it publishes ([`Engine::take_completed`]).
#[derive(Clone)]
pub struct Publishers(pub Arc<dyn Fn(&RecordKey) -> usize + Send + Sync>);

impl std::fmt::Debug for Publishers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publishers(..)")
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 1,
            max_epochs_in_flight: 2,
            items: ItemsConfig { records: Some(Emit::Changes), ..ItemsConfig::default() },
            drift: DriftSettings::default(),
            emit: Emit::Changes,
            preferences: crate::preferences::PreferenceSettings::default(),
            truth: Default::default(),
            routing: Default::default(),
            truth_refresh: None,
            publishers: None,
        }
    }
}

/// Failures of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine needs at least one worker thread; set workers to 1 or more")]
    NoWorkers,
    #[error("could not start {workers} timely worker threads: {reason}")]
    Start { workers: usize, reason: String },
    #[error("a timely worker failed: {0}; the results are incomplete, rerun after fixing the cause")]
    WorkerFailed(String),
}

/// What the dataflows produced for one epoch: its record changes (by key; a replaced record as its
/// new value alone, a removed one as its old value with `-1`), its drift summary changes, and
/// every worker's report of it (their `meta`).
#[derive(Debug, Default)]
pub struct EpochOutput {
    pub epoch: Time,
    pub records: Vec<(Record, Diff)>,
    pub metrics: Vec<(Metric, Diff)>,
    pub reports: Vec<Vec<u8>>,
}

enum WorkerEvent {
    Records(Time, Vec<(Record, Diff)>),
    Metrics(Time, Vec<(Metric, Diff)>),
    Report(Time, Vec<u8>),
    /// Every epoch below `frontier` is complete (`None`: all are).
    Frontier(Option<Time>),
}

/// The epochs complete and handed out so far.
#[derive(Default)]
struct Completed {
    /// Epochs below this number are complete, and their outputs are in `outputs` or were taken.
    applied: Time,
    outputs: VecDeque<EpochOutput>,
}

/// Progress as the sink thread sees it.
struct Progress {
    frontier: Option<Time>,
    /// The workers stopped sending (normally only after the inputs closed).
    disconnected: bool,
}

impl Progress {
    fn completed(&self) -> Time {
        self.frontier.unwrap_or(Time::MAX)
    }
}

struct Shared {
    completed: Mutex<Completed>,
    /// Why the engine cannot go on, if it failed (a name whose id stands for another name).
    failed: Mutex<Option<String>>,
    progress: Mutex<Progress>,
    advanced: Condvar,
    /// On the first process, with [`Publishers`]: per process, every epoch below this one has its
    /// records delivered, as the process last said ([`Engine::report_delivered`]).
    delivered: Mutex<Vec<Time>>,
}

/// Batches submitted to an engine started with [`Engine::start`]: `(epoch, updates, names)`.
type Submitted = Arc<Mutex<VecDeque<(Time, Vec<Update>, Vec<Name>)>>>;

/// The first worker's feed of an engine started with [`Engine::start`]: the submitted batches of
/// the epochs it closes.
struct SubmittedFeed(Submitted);

impl Feed for SubmittedFeed {
    fn read(&mut self, _: &mut Vec<Update>) -> Result<usize, String> {
        Ok(0)
    }

    fn close(&mut self, through: Time, out: &mut Vec<Update>) -> EpochReport {
        let mut names = Vec::new();
        let mut queue = self.0.lock().expect("submissions poisoned");
        while queue.front().is_some_and(|(epoch, ..)| *epoch <= through) {
            let (_, updates, learnt) = queue.pop_front().expect("a submission");
            out.extend(updates);
            names.extend(learnt);
        }
        EpochReport { names, meta: Vec::new(), hold: false }
    }
}

/// The feed of a worker with nothing to read.
struct NoFeed;

impl Feed for NoFeed {
    fn read(&mut self, _: &mut Vec<Update>) -> Result<usize, String> {
        Ok(0)
    }

    fn close(&mut self, _: Time, _: &mut Vec<Update>) -> EpochReport {
        EpochReport::default()
    }
}

/// A running quality dataflow.
pub struct Engine {
    /// The item truths this process's workers have waiting to be published.
    truth_backlog: crate::scope_truth::TruthBacklog,
    /// What this process's publisher has delivered ([`Engine::report_delivered`]).
    delivered: Arc<std::sync::atomic::AtomicU64>,
    commands: Option<Sender<Time>>,
    submitted: Option<Submitted>,
    shared: Arc<Shared>,
    guards: Option<WorkerGuards<Vec<Record>>>,
    sink: Option<JoinHandle<()>>,
    next_epoch: Time,
    max_in_flight: u64,
}

impl Engine {
    /// Starts `workers` threads in this process, whose first worker reads what the caller submits
    /// ([`Engine::submit`]).
    pub fn start(config: &EngineConfig) -> Result<Engine, EngineError> {
        let submitted: Submitted = Arc::default();
        let queue = submitted.clone();
        let feed: FeedFactory = Arc::new(move |worker, _| {
            Ok(match worker {
                0 => Box::new(SubmittedFeed(queue.clone())) as Box<dyn Feed>,
                _ => Box::new(NoFeed),
            })
        });
        let mut engine = Engine::start_fed(config, None, feed)?;
        engine.submitted = Some(submitted);
        Ok(engine)
    }

    /// Starts a fed engine: `workers` threads in this process (in every process of `cluster`),
    /// each reading from the feed `feed` makes for it. On the cluster's first process (or without
    /// a cluster) the caller closes epochs with [`Engine::close_epoch`] and takes the outputs; on
    /// the others the engine only runs the workers, until the first process finishes.
    pub fn start_fed(
        config: &EngineConfig,
        cluster: Option<&ClusterConfig>,
        feed: FeedFactory,
    ) -> Result<Engine, EngineError> {
        let workers = config.workers;
        if workers == 0 {
            return Err(EngineError::NoWorkers);
        }
        let (event_tx, events) = mpsc::channel();
        let (command_tx, command_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            completed: Mutex::new(Completed::default()),
            failed: Mutex::new(None),
            progress: Mutex::new(Progress { frontier: Some(0), disconnected: false }),
            advanced: Condvar::new(),
            delivered: Mutex::new(vec![0; cluster.map_or(1, |c| c.addresses.len().max(1))]),
        });
        let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let truth_backlog = crate::scope_truth::TruthBacklog::default();
        let sink = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("labelqc-sink".into())
                .spawn(move || sink::run_sink(events, &shared))
                .map_err(|e| EngineError::Start { workers, reason: e.to_string() })?
        };
        let communication = match cluster {
            None => timely::CommunicationConfig::Process(workers),
            Some(cluster) => timely::CommunicationConfig::Cluster {
                threads: workers,
                process: cluster.process,
                addresses: cluster.addresses.clone(),
                report: false,
                zerocopy: false,
            },
        };
        let timely_config = timely::Config { communication, worker: timely::WorkerConfig::default() };
        let commands = Arc::new(Mutex::new(Some(command_rx)));
        let quality = QualityConfig {
            items: config.items.clone(),
            drift: config.drift.clone(),
            emit: config.emit,
            preferences: config.preferences,
            truth: config.truth.clone(),
            routing: config.routing.clone(),
            truth_refresh: config.truth_refresh,
            truth_threads: workers,
            truth_backlog: truth_backlog.clone(),
        };
        let failed = {
            let shared = Arc::clone(&shared);
            Arc::new(move |reason: String| {
                shared.failed.lock().expect("failure poisoned").get_or_insert(reason);
            })
        };
        let publishers = config.publishers.clone();
        let (to_workers, shared_by_workers) = (delivered.clone(), shared.clone());
        let guards = timely::execute(timely_config, move |worker| {
            let commands = if worker.index() == 0 {
                commands.lock().expect("command table poisoned").take()
            } else {
                None
            };
            let feed = feed(worker.index(), worker.peers())
                .unwrap_or_else(|reason| panic!("worker {} cannot start reading: {reason}", worker.index()));
            let shipping = Shipping {
                local_workers: workers,
                publishers: publishers.clone(),
                delivered: to_workers.clone(),
                shared: shared_by_workers.clone(),
            };
            run_worker(worker, &quality, &shipping, commands, feed, event_tx.clone(), failed.clone())
        })
        .map_err(|reason| EngineError::Start { workers, reason })?;
        Ok(Engine {
            truth_backlog,
            delivered,
            commands: Some(command_tx),
            submitted: None,
            shared,
            guards: Some(guards),
            sink: Some(sink),
            next_epoch: 0,
            max_in_flight: config.max_epochs_in_flight.max(1),
        })
    }

    /// Closes the open epoch on every worker and returns its number.
    pub fn close_epoch(&mut self) -> Result<Time, EngineError> {
        let epoch = self.next_epoch;
        self.commands
            .as_ref()
            .and_then(|commands| commands.send(epoch).ok())
            .ok_or_else(|| EngineError::WorkerFailed("the first worker stopped taking commands".into()))?;
        self.next_epoch += 1;
        Ok(epoch)
    }

    /// Submits one epoch of updates, with the names they use that were not submitted before, and
    /// returns its number (engines started with [`Engine::start`]). Waits while more than
    /// `max_epochs_in_flight` epochs are incomplete.
    pub fn submit(&mut self, updates: Vec<Update>, names: Vec<Name>) -> Result<Time, EngineError> {
        let epoch = self.submit_nowait(updates, names)?;
        let target = self.next_epoch.saturating_sub(self.max_in_flight);
        self.wait_for(target)?;
        Ok(epoch)
    }

    /// Submits one epoch like [`Engine::submit`], without waiting for earlier epochs: the caller
    /// bounds the epochs in flight itself (see [`Engine::submitted`] and [`Engine::completed`]).
    pub fn submit_nowait(&mut self, updates: Vec<Update>, names: Vec<Name>) -> Result<Time, EngineError> {
        let submitted =
            self.submitted.as_ref().expect("only engines started with Engine::start take submissions");
        submitted.lock().expect("submissions poisoned").push_back((self.next_epoch, updates, names));
        self.close_epoch()
    }

    /// With [`Publishers`], on a later process: every epoch below `epoch` has all the records this
    /// process publishes delivered. The first worker of the process passes it on to the first
    /// process, outside the epochs (so that it arrives while the epochs in flight wait for it).
    pub fn report_delivered(&self, epoch: Time) {
        self.delivered.fetch_max(epoch, std::sync::atomic::Ordering::Relaxed);
    }

    /// With [`Publishers`], on the first process: per process, every epoch below the number has
    /// all the records that process publishes delivered, as it last reported (this process's
    /// entry is 0).
    pub fn delivered(&self) -> Vec<Time> {
        self.shared.delivered.lock().expect("deliveries poisoned").clone()
    }

    /// The item truths this process's workers have formed and not yet published: live, each
    /// worker publishes at most [`crate::scope_truth::PUBLISH_PER_EPOCH`] of them per epoch, so
    /// a caller that closes epochs only on input should close some while this is above zero.
    pub fn truth_backlog(&self) -> usize {
        self.truth_backlog.waiting()
    }

    /// Number of epochs closed so far; they are numbered `0..submitted()`.
    pub fn submitted(&self) -> Time {
        self.next_epoch
    }

    /// Fails if the workers stopped (only a failure stops them while the engine runs), or a name
    /// could not be learnt.
    pub fn check(&mut self) -> Result<(), EngineError> {
        if let Some(reason) = self.shared.failed.lock().expect("failure poisoned").clone() {
            return Err(EngineError::WorkerFailed(reason));
        }
        let disconnected = self.shared.progress.lock().expect("progress poisoned").disconnected;
        if disconnected {
            return Err(self.failure());
        }
        Ok(())
    }

    /// Whether the workers have stopped: after a failure, or on a cluster's later processes once
    /// the first process finished.
    pub fn stopped(&self) -> bool {
        self.shared.progress.lock().expect("progress poisoned").disconnected
    }

    /// Waits until every submitted epoch is complete.
    pub fn sync(&mut self) -> Result<(), EngineError> {
        self.wait_for(self.next_epoch)
    }

    /// Epochs below this number are complete.
    pub fn completed(&self) -> Time {
        self.shared.progress.lock().expect("progress poisoned").completed()
    }

    /// Takes the outputs of the complete epochs not taken before, in order, with the number of
    /// epochs they cover: every epoch below it is complete and its outputs are in this call's or
    /// an earlier call's (epochs without outputs have none).
    pub fn take_completed(&self) -> (Time, Vec<EpochOutput>) {
        let mut completed = self.shared.completed.lock().expect("outputs poisoned");
        (completed.applied, completed.outputs.drain(..).collect())
    }

    /// Closes the inputs, waits for the workers and the sink to finish, and returns each local
    /// worker's final records, sorted ([`Emit::Final`]; empty otherwise).
    pub fn finish(mut self) -> Result<Vec<Vec<Record>>, EngineError> {
        self.commands = None;
        let results = self.guards.take().map(WorkerGuards::join).unwrap_or_default();
        let sink = self.sink.take().map(|sink| sink.join());
        let mut records = Vec::with_capacity(results.len());
        for result in results {
            records.push(result.map_err(EngineError::WorkerFailed)?);
        }
        if let Some(Err(_)) = sink {
            return Err(EngineError::WorkerFailed("the sink thread panicked".into()));
        }
        if let Some(reason) = self.shared.failed.lock().expect("failure poisoned").clone() {
            return Err(EngineError::WorkerFailed(reason));
        }
        tracing::debug!(epochs = self.next_epoch, "engine finished");
        Ok(records)
    }

    /// Waits until every epoch below `epoch` is complete.
    pub fn wait_for(&mut self, epoch: Time) -> Result<(), EngineError> {
        let mut progress = self.shared.progress.lock().expect("progress poisoned");
        while progress.completed() < epoch {
            if progress.disconnected {
                drop(progress);
                return Err(self.failure());
            }
            progress = self
                .shared
                .advanced
                .wait_timeout(progress, Duration::from_millis(100))
                .expect("progress poisoned")
                .0;
        }
        Ok(())
    }

    fn failure(&mut self) -> EngineError {
        self.commands = None;
        if let Some(reason) = self.shared.failed.lock().expect("failure poisoned").clone() {
            return EngineError::WorkerFailed(reason);
        }
        let reason = self
            .guards
            .take()
            .map(WorkerGuards::join)
            .unwrap_or_default()
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_else(|| "the workers stopped unexpectedly".into());
        EngineError::WorkerFailed(reason)
    }
}

mod worker;
use worker::{run_worker, Shipping};

mod sink;

#[cfg(test)]
mod tests;
