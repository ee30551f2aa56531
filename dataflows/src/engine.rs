//! Runs the quality dataflow on timely worker threads and feeds its output into a
//! [`QualityView`]. The caller submits batches of [`Update`]s; each batch is one epoch (a logical
//! time). Completion is tracked per epoch, so a caller can wait until an epoch's effects are in
//! the view, and the number of epochs in flight is bounded.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use differential_dataflow::input::InputSession;
use timely::communication::WorkerGuards;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::dataflow::{quality_facts, Diff, Fact, GoldRow, LabelRow, Time};
use crate::source::Update;
use crate::view::QualityView;

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Timely worker threads.
    pub workers: usize,
    /// Epochs submitted but not yet complete before `submit` waits.
    pub max_epochs_in_flight: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { workers: 1, max_epochs_in_flight: 4 }
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
    Epoch { epoch: Time, updates: Vec<Update> },
}

enum WorkerEvent {
    Facts(Vec<(Fact, Diff)>),
    /// Every epoch below `frontier` is complete (`None`: all are).
    Frontier {
        worker: usize,
        frontier: Option<Time>,
    },
}

/// A running quality dataflow.
pub struct Engine {
    commands: Vec<Sender<Command>>,
    events: Receiver<WorkerEvent>,
    guards: Option<WorkerGuards<()>>,
    next_epoch: Time,
    frontiers: Vec<Option<Time>>,
    max_in_flight: u64,
    facts_applied: u64,
}

impl Engine {
    /// Starts the worker threads.
    pub fn start(config: &EngineConfig) -> Result<Engine, EngineError> {
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
        let receivers = Arc::new(Mutex::new(receivers));
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let commands = receivers.lock().expect("receiver table poisoned")[index]
                .take()
                .expect("each worker takes its command channel once");
            run_worker(worker, commands, event_tx.clone());
        })
        .map_err(|reason| EngineError::Start { workers, reason })?;
        Ok(Engine {
            commands,
            events,
            guards: Some(guards),
            next_epoch: 0,
            frontiers: vec![Some(0); workers],
            max_in_flight: config.max_epochs_in_flight.max(1),
            facts_applied: 0,
        })
    }

    /// Submits one epoch of updates and returns its number. Waits (applying output to `view`)
    /// while more than `max_epochs_in_flight` epochs are incomplete.
    pub fn submit(&mut self, updates: Vec<Update>, view: &mut QualityView) -> Result<Time, EngineError> {
        let epoch = self.next_epoch;
        let workers = self.commands.len();
        let chunk = updates.len().div_ceil(workers).max(1);
        let mut parts = updates.chunks(chunk).map(<[Update]>::to_vec);
        for sender in &self.commands {
            let part = parts.next().unwrap_or_default();
            sender
                .send(Command::Epoch { epoch, updates: part })
                .map_err(|_| EngineError::WorkerFailed("a worker stopped taking input".into()))?;
        }
        self.next_epoch += 1;
        self.drain(view, Duration::ZERO)?;
        while self.next_epoch - self.completed() > self.max_in_flight {
            self.drain(view, Duration::from_millis(100))?;
        }
        Ok(epoch)
    }

    /// Waits until every submitted epoch is complete and its output applied to `view`.
    pub fn sync(&mut self, view: &mut QualityView) -> Result<(), EngineError> {
        while self.completed() < self.next_epoch {
            self.drain(view, Duration::from_millis(100))?;
        }
        Ok(())
    }

    /// Epochs below this number are complete and in the view.
    pub fn completed(&self) -> Time {
        self.frontiers.iter().map(|f| f.unwrap_or(Time::MAX)).min().unwrap_or(Time::MAX)
    }

    /// Closes the inputs, waits for the workers to finish and applies the last output.
    pub fn finish(mut self, view: &mut QualityView) -> Result<(), EngineError> {
        self.commands.clear();
        let results = self.guards.take().map(WorkerGuards::join).unwrap_or_default();
        while let Ok(event) = self.events.try_recv() {
            self.absorb(event, view);
        }
        for result in results {
            result.map_err(EngineError::WorkerFailed)?;
        }
        tracing::debug!(epochs = self.next_epoch, facts_applied = self.facts_applied, "engine finished");
        Ok(())
    }

    fn absorb(&mut self, event: WorkerEvent, view: &mut QualityView) {
        match event {
            WorkerEvent::Facts(facts) => {
                self.facts_applied += facts.len() as u64;
                for (fact, diff) in &facts {
                    view.apply(fact, *diff);
                }
            }
            WorkerEvent::Frontier { worker, frontier } => self.frontiers[worker] = frontier,
        }
    }

    /// Applies whatever output is ready; waits up to `wait` for the first event.
    fn drain(&mut self, view: &mut QualityView, wait: Duration) -> Result<(), EngineError> {
        if !wait.is_zero() {
            match self.events.recv_timeout(wait) {
                Ok(event) => self.absorb(event, view),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(self.failure()),
            }
        }
        loop {
            match self.events.try_recv() {
                Ok(event) => self.absorb(event, view),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(self.failure()),
            }
        }
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

fn run_worker(worker: &mut timely::worker::Worker, commands: Receiver<Command>, events: Sender<WorkerEvent>) {
    let index = worker.index();
    let mut labels: InputSession<Time, LabelRow, Diff> = InputSession::new();
    let mut gold: InputSession<Time, GoldRow, Diff> = InputSession::new();
    let sink = events.clone();
    let probe: ProbeHandle<Time> = worker.dataflow::<Time, _, _>(|scope| {
        let facts = quality_facts(labels.to_collection(scope), gold.to_collection(scope));
        let (probe, _) = facts
            .inspect_batch(move |_time, batch| {
                let facts = batch.iter().map(|(fact, _, diff)| (*fact, *diff)).collect();
                // The engine may be gone (dropped without finishing); nothing then needs the output.
                let _ = sink.send(WorkerEvent::Facts(facts));
            })
            .probe();
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
        let busy = probe.less_than(labels.time());
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
            Some(Command::Epoch { epoch, updates }) => {
                for update in updates {
                    match update {
                        Update::Label { item, annotator, label, diff } => {
                            labels.update((item, (annotator, label)), diff)
                        }
                        Update::Gold { item, label, diff } => gold.update((item, label), diff),
                    }
                }
                labels.advance_to(epoch + 1);
                gold.advance_to(epoch + 1);
                labels.flush();
                gold.flush();
            }
            None => break,
        }
    }
    drop(labels);
    drop(gold);
    while worker.step_or_park(None) {
        report(&probe);
    }
    report(&probe);
}
