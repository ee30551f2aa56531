//! Runs the quality dataflow on timely worker threads and keeps a [`QualityView`] of its output.
//! The caller submits batches of [`Update`]s; each batch is one epoch (a logical time). A sink
//! thread applies the workers' output to the view and tracks which epochs are complete, so a
//! caller can wait until an epoch's effects are in the view, and the number of epochs in flight
//! is bounded.
//!
//! In a fed engine ([`Engine::start_fed`]) the workers read their input themselves, each from its
//! own [`Feed`] (its share of the input partitions), and the workers may span several processes
//! (a timely cluster). The caller on the first process closes epochs ([`Engine::close_epoch`]); the
//! close is broadcast to every worker, which puts what it read since its last close into that
//! epoch and reports the epoch's input positions and new names. All output and reports are
//! exchanged to the first worker, whose process keeps the one view and the one catalog of names.
//!
//! The view only ever holds whole epochs: the sink keeps the output of an epoch aside until every
//! worker has finished it, then applies it, so a reader of the view (see [`Engine::snapshot`])
//! sees the state after some epoch, never part of one, even while later epochs are in the
//! dataflows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use timely::communication::WorkerGuards;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::dataflow::InputHandle;

use crate::dataflow::{quality_facts, Diff, Fact, Time};
use crate::items::{items, ItemsConfig};
use crate::source::{Catalog, Name, Update};
use crate::view::QualityView;

/// One worker's share of the input in a fed engine: the worker reads it itself.
pub trait Feed {
    /// Reads input that is ready, without waiting long, into `out`; returns the number of records
    /// read (0 when nothing was ready, or when the open epoch is full and must be closed first).
    fn read(&mut self, out: &mut Vec<Update>) -> Result<usize, String>;

    /// Closes the open epoch: what was read since the last close belongs to it. Returns the names
    /// learnt in it and what the publisher needs to know of it.
    fn close(&mut self) -> EpochReport;
}

/// What one worker says of one epoch: the names it learnt, and opaque bytes for the publisher
/// (such as input positions and refused records).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct EpochReport {
    pub names: Vec<Name>,
    pub meta: Vec<u8>,
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
    /// Timely worker threads.
    pub workers: usize,
    /// Epochs submitted but not yet complete before `submit` waits.
    pub max_epochs_in_flight: u64,
    /// How items are kept: the tumbling windows, and whether input may arrive out of order.
    pub items: ItemsConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { workers: 1, max_epochs_in_flight: 2, items: ItemsConfig::default() }
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

enum Command {
    Epoch {
        epoch: Time,
        updates: Vec<Update>,
    },
    /// Fed engines: close this epoch on every worker.
    Close {
        epoch: Time,
    },
}

enum WorkerEvent {
    /// Output of one epoch from one worker.
    Facts(Time, Vec<(Fact, Diff)>),
    /// Fed engines: one worker's report of one epoch.
    Report(Time, EpochReport),
    /// Every epoch below `frontier` is complete (`None`: all are).
    Frontier { worker: usize, frontier: Option<Time> },
}

/// Progress as the sink thread sees it.
struct Progress {
    frontiers: Vec<Option<Time>>,
    /// The workers stopped sending (normally only after the inputs closed).
    disconnected: bool,
}

impl Progress {
    /// Epochs below this number are complete and in the view.
    fn completed(&self) -> Time {
        self.frontiers.iter().map(|f| f.unwrap_or(Time::MAX)).min().unwrap_or(Time::MAX)
    }
}

struct Shared {
    view: Mutex<QualityView>,
    /// Fed engines: the names behind the view's ids, learnt from the workers' reports.
    catalog: Mutex<Catalog>,
    /// Fed engines: the `meta` of every worker's report of the epochs applied to the view and not
    /// yet taken, in epoch order. Added to only while `view` is locked.
    reports: Mutex<Vec<(Time, Vec<u8>)>>,
    /// Why the sink stopped applying output, if it failed.
    failed: Mutex<Option<String>>,
    /// Epochs below this number are applied to the view, and no later one is. Changed only
    /// while `view` is locked, so a holder of the lock reads a value that matches the view.
    applied: AtomicU64,
    progress: Mutex<Progress>,
    advanced: Condvar,
}

/// A running quality dataflow.
pub struct Engine {
    commands: Vec<Sender<Command>>,
    shared: Arc<Shared>,
    guards: Option<WorkerGuards<()>>,
    sink: Option<JoinHandle<u64>>,
    next_epoch: Time,
    max_in_flight: u64,
}

impl Engine {
    /// Starts the worker threads and the sink thread that maintains `view`.
    pub fn start(config: &EngineConfig, view: QualityView) -> Result<Engine, EngineError> {
        let workers = config.workers;
        if workers == 0 {
            return Err(EngineError::NoWorkers);
        }
        let (event_tx, events) = mpsc::channel();
        let mut commands = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::channel();
            commands.push(tx);
            receivers.push(Some(rx));
        }
        let (shared, sink) = start_sink(view, workers, workers, events)?;
        let receivers = Arc::new(Mutex::new(receivers));
        let items = config.items.clone();
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let commands = receivers.lock().expect("receiver table poisoned")[index]
                .take()
                .expect("each worker takes its command channel once");
            run_worker(worker, &items, commands, event_tx.clone());
        })
        .map_err(|reason| EngineError::Start { workers, reason })?;
        Ok(Engine {
            commands,
            shared,
            guards: Some(guards),
            sink: Some(sink),
            next_epoch: 0,
            max_in_flight: config.max_epochs_in_flight.max(1),
        })
    }

    /// Starts a fed engine: `workers` threads in this process (in every process of `cluster`),
    /// each reading from the feed `feed` makes for it. On the cluster's first process (or without
    /// a cluster) the caller closes epochs with [`Engine::close_epoch`] and reads the view, the
    /// catalog and the reports; on the others the engine only runs the workers, until the first
    /// process finishes.
    pub fn start_fed(
        config: &EngineConfig,
        cluster: Option<&ClusterConfig>,
        view: QualityView,
        feed: FeedFactory,
    ) -> Result<Engine, EngineError> {
        let workers = config.workers;
        if workers == 0 {
            return Err(EngineError::NoWorkers);
        }
        let (event_tx, events) = mpsc::channel();
        let (command_tx, command_rx) = mpsc::channel();
        // Only the first worker reports progress: every output goes to it.
        let (shared, sink) = start_sink(view, workers, 1, events)?;
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
        let items = config.items.clone();
        let guards = timely::execute(timely_config, move |worker| {
            let commands = if worker.index() == 0 {
                commands.lock().expect("command table poisoned").take()
            } else {
                None
            };
            let feed = feed(worker.index(), worker.peers())
                .unwrap_or_else(|reason| panic!("worker {} cannot start reading: {reason}", worker.index()));
            run_fed_worker(worker, &items, commands, feed, event_tx.clone());
        })
        .map_err(|reason| EngineError::Start { workers, reason })?;
        Ok(Engine {
            commands: vec![command_tx],
            shared,
            guards: Some(guards),
            sink: Some(sink),
            next_epoch: 0,
            max_in_flight: config.max_epochs_in_flight.max(1),
        })
    }

    /// Fed engines: closes the open epoch on every worker and returns its number.
    pub fn close_epoch(&mut self) -> Result<Time, EngineError> {
        let epoch = self.next_epoch;
        self.commands[0]
            .send(Command::Close { epoch })
            .map_err(|_| EngineError::WorkerFailed("the first worker stopped taking commands".into()))?;
        self.next_epoch += 1;
        Ok(epoch)
    }

    /// Fed engines: the names behind the view's ids. Lock the view first when holding both.
    pub fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.shared.catalog.lock().expect("catalog poisoned")
    }

    /// Fed engines: takes the workers' reports (their `meta`) of every epoch applied to the view
    /// so far and not taken before, in epoch order. While a [`Engine::snapshot`] guard is held,
    /// these are exactly the reports of the epochs below the snapshot's number.
    pub fn take_reports(&self) -> Vec<(Time, Vec<u8>)> {
        std::mem::take(&mut *self.shared.reports.lock().expect("reports poisoned"))
    }

    /// Submits one epoch of updates and returns its number. Waits while more than
    /// `max_epochs_in_flight` epochs are incomplete.
    pub fn submit(&mut self, updates: Vec<Update>) -> Result<Time, EngineError> {
        let epoch = self.submit_nowait(updates)?;
        let target = self.next_epoch.saturating_sub(self.max_in_flight);
        self.wait_for(target)?;
        Ok(epoch)
    }

    /// Submits one epoch of updates and returns its number, without waiting for earlier epochs:
    /// the caller bounds the epochs in flight itself (see [`Engine::submitted`] and
    /// [`Engine::completed`]).
    pub fn submit_nowait(&mut self, mut updates: Vec<Update>) -> Result<Time, EngineError> {
        let epoch = self.next_epoch;
        let workers = self.commands.len();
        let share = updates.len().div_ceil(workers);
        for (index, sender) in self.commands.iter().enumerate().rev() {
            let part = updates.split_off((index * share).min(updates.len()));
            sender
                .send(Command::Epoch { epoch, updates: part })
                .map_err(|_| EngineError::WorkerFailed("a worker stopped taking input".into()))?;
        }
        self.next_epoch += 1;
        Ok(epoch)
    }

    /// Number of epochs submitted so far; they are numbered `0..submitted()`.
    pub fn submitted(&self) -> Time {
        self.next_epoch
    }

    /// Fails if the workers stopped (only a failure stops them while the engine runs), or the
    /// output could not be applied.
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

    /// Waits until every submitted epoch is complete and its output is in the view.
    pub fn sync(&mut self) -> Result<(), EngineError> {
        self.wait_for(self.next_epoch)
    }

    /// Epochs below this number are complete and in the view.
    pub fn completed(&self) -> Time {
        self.shared.progress.lock().expect("progress poisoned").completed()
    }

    /// The view. Between `sync` and the next `submit` it reflects every submitted epoch; call
    /// [`QualityView::settle`] before reading derived numbers.
    pub fn view(&self) -> MutexGuard<'_, QualityView> {
        self.shared.view.lock().expect("view poisoned")
    }

    /// The view and the number of epochs it reflects: every epoch below that number is applied,
    /// no later one. While the guard is held the view does not change; later epochs keep running
    /// in the dataflows meanwhile and are applied after it is dropped.
    pub fn snapshot(&self) -> (MutexGuard<'_, QualityView>, Time) {
        let view = self.shared.view.lock().expect("view poisoned");
        let applied = self.shared.applied.load(Ordering::SeqCst);
        (view, applied)
    }

    /// Closes the inputs, waits for the workers and the sink to finish, and returns the view.
    pub fn finish(mut self) -> Result<QualityView, EngineError> {
        self.commands.clear();
        let results = self.guards.take().map(WorkerGuards::join).unwrap_or_default();
        let facts = self.sink.take().map(|sink| sink.join());
        for result in results {
            result.map_err(EngineError::WorkerFailed)?;
        }
        let facts = facts
            .unwrap_or(Ok(0))
            .map_err(|_| EngineError::WorkerFailed("the sink thread panicked".into()))?;
        tracing::debug!(epochs = self.next_epoch, facts_applied = facts, "engine finished");
        let view = std::mem::take(&mut *self.shared.view.lock().expect("view poisoned"));
        Ok(view)
    }

    fn wait_for(&mut self, epoch: Time) -> Result<(), EngineError> {
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
        self.commands.clear();
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

/// Starts the sink thread that applies output to `view`, with progress reported by `reporters`
/// of the engine's `workers`.
fn start_sink(
    view: QualityView,
    workers: usize,
    reporters: usize,
    events: Receiver<WorkerEvent>,
) -> Result<(Arc<Shared>, JoinHandle<u64>), EngineError> {
    let shared = Arc::new(Shared {
        view: Mutex::new(view),
        catalog: Mutex::new(Catalog::default()),
        reports: Mutex::new(Vec::new()),
        failed: Mutex::new(None),
        applied: AtomicU64::new(0),
        progress: Mutex::new(Progress { frontiers: vec![Some(0); reporters], disconnected: false }),
        advanced: Condvar::new(),
    });
    let sink = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("labelqc-sink".into())
            .spawn(move || run_sink(events, &shared))
            .map_err(|e| EngineError::Start { workers, reason: e.to_string() })?
    };
    Ok((shared, sink))
}

/// Applies the workers' output to the view, whole epochs at a time, and publishes progress,
/// until the workers are gone. Returns the number of facts applied.
fn run_sink(events: Receiver<WorkerEvent>, shared: &Shared) -> u64 {
    let mut applied = 0u64;
    // Output of epochs not yet complete, kept aside so that the view holds whole epochs only.
    type Pending = BTreeMap<Time, Vec<Vec<(Fact, Diff)>>>;
    let mut pending = Pending::new();
    let mut pending_reports: BTreeMap<Time, Vec<Vec<u8>>> = BTreeMap::new();
    let mut frontiers = shared.progress.lock().expect("progress poisoned").frontiers.clone();
    let mut complete_before = 0;
    let mut apply_complete =
        |frontiers: &[Option<Time>],
         pending: &mut Pending,
         pending_reports: &mut BTreeMap<Time, Vec<Vec<u8>>>| {
            let complete = frontiers.iter().map(|f| f.unwrap_or(Time::MAX)).min().unwrap_or(Time::MAX);
            if complete == complete_before {
                return;
            }
            complete_before = complete;
            let mut view = shared.view.lock().expect("view poisoned");
            while let Some(entry) = pending.first_entry() {
                if *entry.key() >= complete {
                    break;
                }
                for facts in entry.remove() {
                    applied += facts.len() as u64;
                    for (fact, diff) in &facts {
                        view.apply(fact, *diff);
                    }
                }
            }
            let mut reports = shared.reports.lock().expect("reports poisoned");
            while let Some(entry) = pending_reports.first_entry() {
                if *entry.key() >= complete {
                    break;
                }
                let (time, metas) = entry.remove_entry();
                reports.extend(metas.into_iter().map(|meta| (time, meta)));
            }
            drop(reports);
            shared.applied.store(complete, Ordering::SeqCst);
        };
    while let Ok(event) = events.recv() {
        match event {
            WorkerEvent::Facts(time, facts) => pending.entry(time).or_default().push(facts),
            WorkerEvent::Report(time, report) => {
                let mut catalog = shared.catalog.lock().expect("catalog poisoned");
                for name in &report.names {
                    if let Err(error) = catalog.learn(name) {
                        *shared.failed.lock().expect("failure poisoned") = Some(error.to_string());
                    }
                }
                pending_reports.entry(time).or_default().push(report.meta);
            }
            WorkerEvent::Frontier { worker, frontier } => {
                frontiers[worker] = frontier;
                // The view first, then the progress that promises it.
                apply_complete(&frontiers, &mut pending, &mut pending_reports);
                shared.progress.lock().expect("progress poisoned").frontiers[worker] = frontier;
                shared.advanced.notify_all();
            }
        }
    }
    shared.progress.lock().expect("progress poisoned").disconnected = true;
    shared.advanced.notify_all();
    applied
}

/// The dataflow's input on one worker: item events (routed to their items' owners inside).
struct Inputs {
    events: InputHandle<Time, CapacityContainerBuilder<Vec<Update>>>,
    items: ItemsConfig,
}

impl Inputs {
    fn new(items: &ItemsConfig) -> Inputs {
        Inputs { events: InputHandle::new(), items: items.clone() }
    }

    /// The quality dataflow over these inputs.
    fn facts<'s>(
        &mut self,
        scope: timely::dataflow::Scope<'s, Time>,
    ) -> differential_dataflow::VecCollection<'s, Time, Fact, Diff> {
        quality_facts(items(self.events.to_stream(scope), self.items.clone()))
    }

    fn apply(&mut self, updates: impl IntoIterator<Item = Update>) {
        for update in updates {
            self.events.send(update);
        }
    }

    /// Ends every epoch before `time`: what was applied so far belongs to the epoch it was
    /// applied in.
    fn advance_to(&mut self, time: Time) {
        self.events.advance_to(time);
        self.events.flush();
    }

    /// The epoch being filled.
    fn time(&self) -> Time {
        *self.events.time()
    }
}

/// Sends a batch of the dataflow's output to the sink, one message per epoch in it.
fn send_facts(sink: &Sender<WorkerEvent>, batch: &[(Fact, Time, Diff)]) {
    // A batch holds one epoch in practice; split it by time all the same.
    let mut rest = batch;
    while let Some((_, time, _)) = rest.first() {
        let len = rest.iter().take_while(|(_, t, _)| t == time).count();
        let facts = rest[..len].iter().map(|(fact, _, diff)| (*fact, *diff)).collect();
        // The engine may be gone (dropped without finishing); nothing then needs the output.
        let _ = sink.send(WorkerEvent::Facts(*time, facts));
        rest = &rest[len..];
    }
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    items: &ItemsConfig,
    commands: Receiver<Command>,
    events: Sender<WorkerEvent>,
) {
    let index = worker.index();
    let mut inputs = Inputs::new(items);
    let sink = events.clone();
    let probe: ProbeHandle<Time> = worker.dataflow::<Time, _, _>(|scope| {
        let (probe, _) =
            inputs.facts(scope).inspect_batch(move |_time, batch| send_facts(&sink, batch)).probe();
        probe
    });

    let mut reported: Option<Option<Time>> = None;
    let mut report = |probe: &ProbeHandle<Time>| {
        let frontier = probe.with_frontier(|f| f.first().copied());
        if reported != Some(frontier) {
            reported = Some(frontier);
            let _ = events.send(WorkerEvent::Frontier { worker: index, frontier });
        }
    };

    loop {
        let busy = probe.less_than(&inputs.time());
        let command = if busy {
            match commands.try_recv() {
                Ok(command) => Some(command),
                Err(TryRecvError::Empty) => {
                    worker.step_or_park(Some(Duration::from_millis(1)));
                    report(&probe);
                    continue;
                }
                Err(TryRecvError::Disconnected) => None,
            }
        } else {
            commands.recv().ok()
        };
        match command {
            Some(Command::Close { .. }) => unreachable!("only fed engines close epochs"),
            Some(Command::Epoch { epoch, updates }) => {
                inputs.apply(updates);
                inputs.advance_to(epoch + 1);
            }
            None => break,
        }
    }
    drop(inputs);
    while worker.step_or_park(None) {
        report(&probe);
    }
    report(&probe);
}

/// Sent as a close by the first worker when it stops: no more closes come.
const FINISH: Time = Time::MAX;

/// The loop of a worker of a fed engine: reads its feed into the open epoch, closes the epoch when
/// the close reaches it, and ships the dataflow's output and its reports to the first worker,
/// which passes them on to the sink. Ends once the first worker stops issuing closes.
fn run_fed_worker(
    worker: &mut timely::worker::Worker,
    items: &ItemsConfig,
    commands: Option<Receiver<Command>>,
    mut feed: Box<dyn Feed>,
    events: Sender<WorkerEvent>,
) {
    let index = worker.index();
    let mut inputs = Inputs::new(items);
    let mut reports: InputHandle<Time, CapacityContainerBuilder<Vec<(Time, EpochReport)>>> =
        InputHandle::new();
    let mut closes: InputHandle<Time, CapacityContainerBuilder<Vec<Time>>> = InputHandle::new();
    // The newest close seen by this worker.
    let latest_close = std::rc::Rc::new(std::cell::Cell::new(None::<Time>));
    // Whether the first worker said that no more closes come.
    let finished = std::rc::Rc::new(std::cell::Cell::new(false));
    let probe = {
        let facts_sink = events.clone();
        let reports_sink = events.clone();
        let latest = latest_close.clone();
        let finish = finished.clone();
        let probe = worker.dataflow::<Time, _, _>(|scope| {
            let (probe, _) = inputs
                .facts(scope)
                .inner
                .exchange(|_| 0)
                .inspect_core(move |event| {
                    if let Ok((_, batch)) = event {
                        send_facts(&facts_sink, batch);
                    }
                })
                .probe();
            reports
                .to_stream(scope)
                .exchange(|_| 0)
                .inspect_core(move |event| {
                    let Ok((_, batch)) = event else { return };
                    for (time, report) in batch {
                        let _ = reports_sink.send(WorkerEvent::Report(*time, report.clone()));
                    }
                })
                .probe_with(&probe);
            probe
        });
        // The closes flow in a dataflow of their own: their progress has nothing to do with the
        // epochs'.
        worker.dataflow::<Time, _, _>(|scope| {
            closes.to_stream(scope).broadcast().inspect(move |&epoch| {
                if epoch == FINISH {
                    finish.set(true);
                } else {
                    latest.set(Some(latest.get().map_or(epoch, |e: Time| e.max(epoch))));
                }
            });
        });
        probe
    };
    // Only the first worker issues closes, and at the end `FINISH`; every worker keeps its input
    // of closes open until it sees `FINISH`. (Dropping it early does not work: in timely 0.32 an
    // input handle dropped before the other workers built the dataflow may never release its
    // initial capability.)
    let mut closes = Some(closes);

    let mut reported: Option<Option<Time>> = None;
    let mut report_progress = |probe: &ProbeHandle<Time>| {
        if index != 0 {
            return;
        }
        let frontier = probe.with_frontier(|f| f.first().copied());
        if reported != Some(frontier) {
            reported = Some(frontier);
            let _ = events.send(WorkerEvent::Frontier { worker: 0, frontier });
        }
    };

    let mut open: Time = 0;
    let mut finish_sent = false;
    let mut updates = Vec::new();
    loop {
        if let (Some(commands), Some(input)) = (commands.as_ref().filter(|_| !finish_sent), &mut closes) {
            // Closes are issued by the first worker only.
            loop {
                match commands.try_recv() {
                    Ok(Command::Close { epoch }) => {
                        input.send(epoch);
                        input.advance_to(epoch + 1);
                    }
                    Ok(Command::Epoch { .. }) => unreachable!("fed engines take no updates"),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        let next = input.time() + 1;
                        input.send(FINISH);
                        input.advance_to(next);
                        finish_sent = true;
                        break;
                    }
                }
            }
        }
        let read = feed.read(&mut updates).unwrap_or_else(|reason| panic!("worker {index}: {reason}"));
        inputs.apply(updates.drain(..));
        if let Some(close) = latest_close.get().filter(|&e| e >= open) {
            reports.send((open, feed.close()));
            open = close + 1;
            inputs.advance_to(open);
            reports.advance_to(open);
        }
        if finished.get() {
            break;
        }
        worker.step_or_park((read == 0).then_some(Duration::from_millis(1)).or(Some(Duration::ZERO)));
        report_progress(&probe);
    }
    drop(inputs);
    drop(reports);
    drop(closes);
    while worker.step_or_park(None) {
        report_progress(&probe);
    }
    report_progress(&probe);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse_gold_event, parse_label_event};
    use crate::source::Source;
    use crate::view::Changes;

    const LABELS: &[&str] = &[
        r#"{"item_id":"i1","annotator_id":"a","label":"x","ts":1}"#,
        r#"{"item_id":"i1","annotator_id":"b","label":"x","ts":2}"#,
        r#"{"item_id":"i1","annotator_id":"c","label":"y","ts":3}"#,
        r#"{"item_id":"i2","annotator_id":"a","label":"y","ts":4}"#,
        r#"{"item_id":"i2","annotator_id":"b","label":"x","ts":5}"#,
        r#"{"item_id":"i3","annotator_id":"c","label":"x","ts":6,"task":"other"}"#,
    ];

    /// Feeds the labels in epochs of `epoch` events; returns the source and the settled engine.
    fn load(workers: usize, epoch: usize) -> (Source, Engine) {
        let mut engine = Engine::start(
            &EngineConfig { workers, max_epochs_in_flight: 1, ..EngineConfig::default() },
            QualityView::with_change_tracking(),
        )
        .unwrap();
        let mut source = Source::default();
        let mut updates = Vec::new();
        source
            .apply_gold(&parse_gold_event(r#"{"item_id":"i1","label":"x"}"#).unwrap(), &mut updates)
            .unwrap();
        for chunk in LABELS.chunks(epoch) {
            for line in chunk {
                source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
            }
            engine.submit(std::mem::take(&mut updates)).unwrap();
        }
        engine.sync().unwrap();
        assert_eq!(engine.completed(), LABELS.len().div_ceil(epoch) as Time);
        (source, engine)
    }

    #[test]
    fn same_view_for_any_workers_and_epochs() {
        let reports: Vec<String> = [(1, 1), (1, 6), (2, 1), (2, 4), (3, 2)]
            .into_iter()
            .map(|(workers, epoch)| {
                let (source, engine) = load(workers, epoch);
                let mut view = engine.finish().unwrap();
                serde_json::to_string(&view.report(&source.catalog, true)).unwrap()
            })
            .collect();
        assert!(reports.windows(2).all(|w| w[0] == w[1]), "{reports:#?}");
        assert!(reports[0].contains(r#""n_labels":5"#), "{}", reports[0]);
    }

    #[test]
    fn settle_names_exactly_what_a_relabel_touched() {
        let (mut source, mut engine) = load(2, 3);
        engine.view().settle(&source.catalog);
        // Annotator c changes its label on i1: the default scope, item i1, its three annotators
        // and the pairs (a, c) and (b, c) change; the pair (a, b) and the other scope do not,
        // except c's object there, which carries c's project-wide gate (its gold answer changed).
        let mut updates = Vec::new();
        source
            .apply_label(
                &parse_label_event(r#"{"item_id":"i1","annotator_id":"c","label":"x","ts":9}"#).unwrap(),
                &mut updates,
            )
            .unwrap();
        engine.submit(updates).unwrap();
        engine.sync().unwrap();
        let mut view = engine.view();
        let catalog = &source.catalog;
        let changes = view.settle(catalog);
        let id = |name: &str| catalog.annotators.lookup(name).unwrap();
        let scope = crate::source::scope_id("default", "default");
        let other = crate::source::scope_id("default", "other");
        let item = catalog.items.lookup("i1").unwrap();
        assert_eq!(changes.scopes, vec![scope]);
        assert_eq!(changes.items, vec![(scope, item)]);
        let mut annotators = vec![(scope, id("a")), (scope, id("b")), (scope, id("c")), (other, id("c"))];
        annotators.sort();
        assert_eq!(changes.annotators, annotators);
        let pair = |x: &str, y: &str| (scope, id(x).min(id(y)), id(x).max(id(y)));
        let mut pairs = vec![pair("a", "c"), pair("b", "c")];
        pairs.sort();
        assert_eq!(changes.pairs, pairs);
        // The renderers agree with the full report.
        let c = view.annotator(scope, id("c"), catalog).unwrap();
        assert_eq!(c.gold.unwrap().correct, 1);
        assert_eq!(c.gate.unwrap().evidence.correct, 1);
        assert_eq!(changes.gates, vec![], "evidence alone is no gate decision");
        let consensus = view.item(scope, item, catalog).unwrap();
        assert_eq!(consensus.consensus.to_json_text(), r#""x""#);
        assert!(!consensus.tied);
        let summary = view.scope_summary(scope, catalog).unwrap();
        assert_eq!(summary.gold.unwrap().correct, 3);
        assert_eq!(view.pair(scope, id("c"), id("b"), catalog).unwrap().n_shared, 1);
        assert_eq!(view.settle(catalog), Changes::default(), "nothing changed since");
    }

    #[test]
    fn deleting_every_label_leaves_no_drift_state() {
        let (mut source, mut engine) = load(2, 3);
        assert!(!engine.view().settle(&source.catalog).gates.is_empty());
        assert!(!engine.view().drift_summary(&source.catalog).gates.is_empty());
        let mut updates = Vec::new();
        for line in LABELS {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut delete = event.as_object().unwrap().clone();
            delete.remove("label");
            delete.insert("op".into(), "delete".into());
            let delete = serde_json::Value::Object(delete).to_string();
            source.apply_label(&parse_label_event(&delete).unwrap(), &mut updates).unwrap();
        }
        engine.submit(updates).unwrap();
        engine.sync().unwrap();
        let mut view = engine.view();
        let changes = view.settle(&source.catalog);
        // Every annotator was still in warm-up, where it stays: leaving is no new decision.
        assert_eq!(changes.gates, vec![]);
        assert_eq!(view.drift_summary(&source.catalog), crate::view::DriftSummary::default());
        assert!(view.report(&source.catalog, true).scopes.is_empty());
    }

    #[test]
    fn snapshots_hold_whole_epochs_while_later_ones_run() {
        // The report after each prefix of epochs (one label per epoch), from a separate run.
        let expected: Vec<String> = (0..=LABELS.len())
            .map(|n| {
                let mut engine =
                    Engine::start(&EngineConfig::default(), QualityView::with_change_tracking()).unwrap();
                let mut source = Source::default();
                let mut updates = Vec::new();
                for line in &LABELS[..n] {
                    source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
                }
                engine.submit(updates).unwrap();
                let mut view = engine.finish().unwrap();
                serde_json::to_string(&view.report(&source.catalog, true)).unwrap()
            })
            .collect();
        let mut engine = Engine::start(
            &EngineConfig { workers: 2, max_epochs_in_flight: 1, ..EngineConfig::default() },
            QualityView::with_change_tracking(),
        )
        .unwrap();
        let mut source = Source::default();
        for line in LABELS {
            let mut updates = Vec::new();
            source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
            engine.submit_nowait(updates).unwrap();
        }
        assert_eq!(engine.submitted(), LABELS.len() as Time);
        // Whenever it is read, the view is the state after some number of whole epochs.
        let mut seen = Vec::new();
        loop {
            let (mut view, applied) = engine.snapshot();
            let applied = applied.min(LABELS.len() as Time) as usize;
            let report = serde_json::to_string(&view.report(&source.catalog, true)).unwrap();
            assert_eq!(report, expected[applied], "after {applied} epochs");
            seen.push(applied);
            if applied == LABELS.len() {
                break;
            }
            drop(view);
            std::thread::yield_now();
        }
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        engine.sync().unwrap();
        assert_eq!(engine.completed(), LABELS.len() as Time);
        engine.check().unwrap();
    }

    /// A feed over a share of the label lines: worker `w` of `peers` reads lines `w, w + peers, ...`,
    /// a few per read; its report's meta is the number of lines it read in the epoch.
    struct LinesFeed {
        lines: Vec<&'static str>,
        next: usize,
        read: u8,
        source: Source,
    }

    impl Feed for LinesFeed {
        fn read(&mut self, out: &mut Vec<Update>) -> Result<usize, String> {
            let mut n = 0;
            while n < 2 && self.next < self.lines.len() {
                let event = parse_label_event(self.lines[self.next]).map_err(|e| e.to_string())?;
                self.source.apply_label(&event, out).map_err(|e| e.to_string())?;
                self.next += 1;
                self.read += 1;
                n += 1;
            }
            Ok(n)
        }

        fn close(&mut self) -> EpochReport {
            let meta = vec![std::mem::take(&mut self.read)];
            EpochReport { names: self.source.catalog.take_new(), meta }
        }
    }

    fn lines_feed() -> FeedFactory {
        Arc::new(|worker, peers| {
            let lines = LABELS.iter().copied().skip(worker).step_by(peers).collect();
            let mut source = Source::default();
            source.catalog = crate::source::Catalog::recording();
            Ok(Box::new(LinesFeed { lines, next: 0, read: 0, source }) as Box<dyn Feed>)
        })
    }

    /// Closes epochs on a fed engine until its workers have reported every line; returns the
    /// report formed from the engine's own view and catalog.
    fn run_fed(mut engine: Engine) -> String {
        let mut lines = 0;
        while lines < LABELS.len() {
            let epoch = engine.close_epoch().unwrap();
            engine.wait_for(epoch + 1).unwrap();
            let (_view, applied) = engine.snapshot();
            assert!(applied > epoch);
            lines += engine.take_reports().iter().map(|(_, meta)| usize::from(meta[0])).sum::<usize>();
        }
        assert_eq!(lines, LABELS.len(), "every line read once");
        let catalog = std::mem::take(&mut *engine.catalog());
        let mut view = engine.finish().unwrap();
        serde_json::to_string(&view.report(&catalog, true)).unwrap()
    }

    #[test]
    fn fed_workers_and_clusters_equal_the_submitted_input() {
        let mut engine = Engine::start(&EngineConfig::default(), QualityView::default()).unwrap();
        let mut source = Source::default();
        let mut updates = Vec::new();
        for line in LABELS {
            source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
        }
        engine.submit(updates).unwrap();
        let mut view = engine.finish().unwrap();
        let expected = serde_json::to_string(&view.report(&source.catalog, true)).unwrap();

        for workers in [1, 3] {
            let config = EngineConfig { workers, max_epochs_in_flight: 1, ..EngineConfig::default() };
            let engine = Engine::start_fed(&config, None, QualityView::default(), lines_feed()).unwrap();
            assert_eq!(run_fed(engine), expected, "{workers} workers");
        }

        // Two processes of two workers each, on 127.0.0.1, here as two engines in one process.
        let ports: Vec<u16> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect::<Vec<_>>()
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let config = EngineConfig { workers: 2, max_epochs_in_flight: 1, ..EngineConfig::default() };
        let later = {
            let (config, addresses) = (config.clone(), addresses.clone());
            std::thread::spawn(move || {
                let cluster = ClusterConfig { process: 1, addresses };
                let engine =
                    Engine::start_fed(&config, Some(&cluster), QualityView::default(), lines_feed()).unwrap();
                // It runs until the first process finishes.
                while !engine.stopped() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let mut view = engine.finish().unwrap();
                view.report(&crate::source::Catalog::default(), true).scopes.len()
            })
        };
        let cluster = ClusterConfig { process: 0, addresses };
        let engine =
            Engine::start_fed(&config, Some(&cluster), QualityView::default(), lines_feed()).unwrap();
        assert_eq!(run_fed(engine), expected, "two processes");
        assert_eq!(later.join().unwrap(), 0, "the later process keeps no results");
    }

    /// Worker `w` claims id 7 for the item name `w{w}`.
    struct ClashingFeed(usize);

    impl Feed for ClashingFeed {
        fn read(&mut self, _: &mut Vec<Update>) -> Result<usize, String> {
            Ok(0)
        }

        fn close(&mut self) -> EpochReport {
            let names = vec![crate::source::Name::Item { id: 7, name: format!("w{}", self.0).into() }];
            EpochReport { names, meta: Vec::new() }
        }
    }

    #[test]
    fn names_that_clash_across_workers_stop_the_engine() {
        let feed: FeedFactory = Arc::new(|worker, _| Ok(Box::new(ClashingFeed(worker)) as Box<dyn Feed>));
        let config = EngineConfig { workers: 2, max_epochs_in_flight: 1, ..EngineConfig::default() };
        let mut engine = Engine::start_fed(&config, None, QualityView::default(), feed).unwrap();
        let epoch = engine.close_epoch().unwrap();
        engine.wait_for(epoch + 1).unwrap();
        let error = engine.check().unwrap_err().to_string();
        assert!(error.contains(r#""w0" and "w1""#) || error.contains(r#""w1" and "w0""#), "{error}");
    }

    #[test]
    fn newest_window_follows_the_labels() {
        use crate::source::{scope_id, window_id, Window};
        const HOUR: i64 = 3_600_000;
        let items = ItemsConfig { window_sizes: vec![HOUR], ..ItemsConfig::default() };
        let config = EngineConfig { items, ..EngineConfig::default() };
        let mut engine = Engine::start(&config, QualityView::with_change_tracking()).unwrap();
        let mut source = Source::with_windows(&[HOUR]);
        fn apply(engine: &mut Engine, source: &mut Source, lines: &[&str]) {
            let mut updates = Vec::new();
            for line in lines {
                source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
            }
            engine.submit(updates).unwrap();
            engine.sync().unwrap();
            engine.view().settle(&source.catalog);
        }
        apply(
            &mut engine,
            &mut source,
            &[
                r#"{"item_id":"i","annotator_id":"a","label":"x","ts":1}"#,
                r#"{"item_id":"j","annotator_id":"a","label":"x","ts":3600001}"#,
            ],
        );
        let scope = scope_id("default", "default");
        let hour = |start_ms| window_id(&Window { scope, size_ms: HOUR, start_ms });
        assert_eq!(engine.view().windows_of(scope), vec![hour(0), hour(HOUR)]);
        assert_eq!(engine.view().newest_window(scope, HOUR), Some(hour(HOUR)));
        // The newest window loses its only label: the one before is the newest again.
        apply(
            &mut engine,
            &mut source,
            &[r#"{"item_id":"j","annotator_id":"a","ts":3600002,"op":"delete"}"#],
        );
        assert_eq!(engine.view().windows_of(scope), vec![hour(0)]);
        assert_eq!(engine.view().newest_window(scope, HOUR), Some(hour(0)));
        assert_eq!(engine.view().newest_window(scope, 2 * HOUR), None);
    }

    #[test]
    fn refuses_zero_workers() {
        assert!(matches!(
            Engine::start(
                &EngineConfig { workers: 0, max_epochs_in_flight: 1, ..EngineConfig::default() },
                QualityView::default()
            ),
            Err(EngineError::NoWorkers)
        ));
    }
}
