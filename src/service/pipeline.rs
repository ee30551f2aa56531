//! The closing, publishing and committing pipeline of `labelqc run`.
//!
//! On the first process (the coordinator) it closes epochs without waiting for earlier ones,
//! publishes the outputs of the epochs the dataflows have completed (with the refused records the workers reported) as one output group,
//! and commits each group's input offsets once the delivery reports say its outputs are all
//! acknowledged, in epoch order (in exactly-once mode: commits the group's transaction with them).
//!
//! After a start it first rebuilds: the state is rebuilt from the input without publishing until
//! every input partition is read up to its end as it was at start; then the whole state is
//! published as its difference from what the output topics hold ([`Published`]), tombstones
//! included, and from then on each group publishes only records that change what their topic
//! holds. A reader of the output topics therefore never sees a state older than the one it has
//! seen, nor a gate record that is no new decision.
//!
//! In a cluster (at least once) every process runs a pipeline for the records it publishes
//! ([`Share`]): each reads back, rebuilds, publishes and awaits delivery of its own keys, and
//! tells the coordinator which epochs it has delivered ([`Engine::report_delivered`]). The
//! coordinator commits a group's input offsets only once every process has delivered its epochs. In exactly-once mode the coordinator publishes every record
//! in its transactions.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use labelqc_dataflows::engine::{Engine, EpochOutput};
use labelqc_dataflows::records::{into_new_values, Entity, RecordKey, Records};
use labelqc_dataflows::summary::DriftSummary;
use rdkafka::producer::Producer;

use super::feed::{EpochMeta, FeedState, Partitions};
use super::health::{Connectivity, HealthConsumer};
use super::outputs::{self, gate_of, reconcile, remember, GateRecords, OutputTopic, Published, Share};
use super::producer::{
    excerpt, output_dead_letter, FailedOutput, InputPosition, Publisher, Sent, KEY_EXCERPT_BYTES,
};
use super::rebuild::{Input, Rebuild};
use crate::api::{Kind, Store};
use crate::config::Config;
use crate::telemetry::Telemetry;

mod commit;

/// How long output delivery may be outstanding before it is logged (and logged again).
const DELIVERY_WARN: Duration = Duration::from_secs(5);
/// How long the main thread waits between turns while epochs are in the pipeline (their progress
/// does not wake it; this bounds how late it notices).
const TEND_INTERVAL: Duration = Duration::from_millis(1);
/// How long it waits between turns while idle: this bounds how late it notices new input.
const IDLE_INTERVAL: Duration = Duration::from_millis(5);
/// In a cluster, the other processes' input is not visible to the first process: it closes an
/// epoch at least this often, so that their input waits no longer for a close.
const CLUSTER_TICK: Duration = Duration::from_millis(10);
/// How often at most the drift gauges are recomputed.
const DRIFT_METRICS_INTERVAL: Duration = Duration::from_millis(250);

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn updated_at() -> String {
    chrono::DateTime::from_timestamp_millis(now_ms())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The published outputs of one or more consecutive epochs, awaiting delivery.
struct Group {
    id: usize,
    /// The last epoch published in it.
    last_epoch: u64,
    epochs: u64,
    /// Next offset to read per partition once its epochs are processed (`-1`: none read yet).
    positions: Vec<i64>,
    input: Input,
    /// Output messages queued.
    sent: u64,
    /// Messages whose delivery failed for good and were dead-lettered instead.
    replaced: u64,
    /// The group of the first publish after a start: once it is committed the service is ready.
    first: bool,
    published: Instant,
    warned: Duration,
}

/// What a group publishes.
enum Publish {
    /// The records that changed in its epochs, as messages, and the gate records.
    Changes { messages: Vec<outputs::Message>, gates: GateRecords },
    /// The whole state, once a rebuild (started then) has caught up: reconciled with what the
    /// topics hold as it is sent.
    State { current: Records, started: Instant },
}

/// When the drift gauges are set: from the drift summary the dataflows keep, not after every small
/// epoch, but at most every `DRIFT_METRICS_INTERVAL` while it changes.
pub struct DriftMetrics {
    /// The drift summary of the epochs taken so far.
    pub summary: DriftSummary,
    /// The gauges lag the summary.
    pub due: bool,
    /// When they were last set.
    pub set: Instant,
}

impl DriftMetrics {
    fn ready(&self) -> bool {
        self.due && self.set.elapsed() >= DRIFT_METRICS_INTERVAL
    }

    /// Sets the gauges if they lag and were not set recently.
    fn refresh(&mut self, telemetry: &Telemetry) {
        if self.ready() {
            telemetry.set_drift(&self.summary);
            self.due = false;
            self.set = Instant::now();
        }
    }
}

/// The closing, publishing and committing pipeline of a process of `labelqc run`.
pub struct Pipeline<'a> {
    pub config: &'a Config,
    pub telemetry: &'a Telemetry,
    /// Commits input offsets (it reads nothing itself).
    pub consumer: HealthConsumer,
    pub publisher: Publisher,
    pub engine: Engine,
    pub partitions: Arc<Partitions>,
    pub feeds: Arc<FeedState>,
    pub connectivity: Arc<Connectivity>,
    /// Whether other processes read input too (their open epochs are not visible here).
    pub cluster: bool,
    /// What the output topics hold (of the keys this process publishes).
    pub published: Published,
    /// The keys this process publishes.
    share: Share,
    /// Reading the output topics back, until the rebuild has caught up.
    read_back: Option<std::thread::JoinHandle<Result<Published>>>,
    /// `Some` until the first publish after the start.
    pub rebuild: Option<Rebuild>,
    /// Whether the outputs of the input present at start are published and committed.
    pub caught_up: bool,
    /// Set while caught up and the brokers are reachable (`/readyz`).
    pub ready: Arc<AtomicBool>,
    /// What the topics hold of what the query API answers.
    pub store: Arc<Store>,
    /// Next offset to read per partition after the epochs published so far.
    pub positions: Vec<i64>,
    /// The offsets committed last (`-1`: none), not committed again.
    pub committed: Vec<i64>,
    /// Epochs closed, not yet published, in order.
    pub unpublished: VecDeque<u64>,
    pub last_close: Instant,
    /// While rebuilding: every record, to be published as its difference from what the topics hold.
    current: Records,
    /// Published groups awaiting delivery and commit, in order.
    groups: VecDeque<Group>,
    next_group: usize,
    /// Epochs whose outputs are delivered and offsets committed: `0..retired`.
    retired: u64,
    pub drift_metrics: DriftMetrics,
    peak_in_flight: i64,
    peak_epoch: i64,
}

impl<'a> Pipeline<'a> {
    /// A pipeline that rebuilds first (see [`Rebuild`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &'a Config,
        telemetry: &'a Telemetry,
        consumer: HealthConsumer,
        publisher: Publisher,
        engine: Engine,
        partitions: Arc<Partitions>,
        feeds: Arc<FeedState>,
        connectivity: Arc<Connectivity>,
        read_back: std::thread::JoinHandle<Result<Published>>,
        rebuild: Rebuild,
        ready: Arc<AtomicBool>,
        store: Arc<Store>,
        share: Share,
    ) -> Pipeline<'a> {
        let n = partitions.list.len();
        Pipeline {
            config,
            telemetry,
            consumer,
            publisher,
            engine,
            partitions,
            feeds,
            connectivity,
            cluster: !config.cluster.addresses.is_empty(),
            published: Published::of(share),
            share,
            read_back: Some(read_back),
            rebuild: Some(rebuild),
            caught_up: false,
            ready,
            store,
            positions: vec![-1; n],
            committed: vec![-1; n],
            unpublished: VecDeque::new(),
            last_close: Instant::now(),
            current: Records::default(),
            groups: VecDeque::new(),
            next_group: 0,
            retired: 0,
            drift_metrics: DriftMetrics { summary: DriftSummary::default(), due: false, set: Instant::now() },
            peak_in_flight: 0,
            peak_epoch: 0,
        }
    }

    /// Whether this process closes epochs and commits input offsets (the first process).
    fn coordinator(&self) -> bool {
        self.share.process == 0
    }

    /// Epochs closed whose offsets are not committed yet.
    fn in_flight(&self) -> u64 {
        self.engine.submitted().saturating_sub(self.retired)
    }

    /// Closes the open epoch on every worker if the pipeline can take it: fewer than
    /// `max_epochs_in_flight` epochs in flight, some input read, and either the dataflows free
    /// (every closed epoch complete: the next one then runs while the last is published, and
    /// epochs stay small while the service keeps up), or a worker's open epoch full, or
    /// `epoch_interval_ms` since the last close (so epochs grow while the service is behind). In
    /// a cluster the other processes' input is not visible here, so an epoch is also closed
    /// every `CLUSTER_TICK` (an empty epoch costs a round of
    /// progress messages); and, idle, every `truth.refresh_ms`, so that a scope's due truth
    /// refit (the cold one that makes it the report's) happens without new input, or at once
    /// while item truths wait to be published (a few hundred per worker and epoch:
    /// [`labelqc_dataflows::engine::Engine::truth_backlog`]).
    fn maybe_close(&mut self) -> Result<()> {
        if self.in_flight() >= self.config.engine.max_epochs_in_flight {
            return Ok(());
        }
        let open = self.feeds.open_messages();
        let full = self.feeds.full();
        let since = self.last_close.elapsed();
        let old = since >= Duration::from_millis(self.config.kafka.epoch_interval_ms);
        // Idle, an empty epoch every `truth.refresh_ms` lets due truth refits happen, and one at
        // once lets waiting item truths out.
        let truth_tick =
            since >= Duration::from_millis(self.config.truth.refresh_ms) || self.engine.truth_backlog() > 0;
        let input = open > 0 || (self.cluster && since >= CLUSTER_TICK) || truth_tick;
        let idle = self.engine.completed() >= self.engine.submitted();
        if !input || !(idle || full || old) {
            return Ok(());
        }
        self.close(open)
    }

    fn close(&mut self, open: u64) -> Result<()> {
        let number = self.engine.close_epoch()?;
        self.last_close = Instant::now();
        self.unpublished.push_back(number);
        let in_flight = self.in_flight() as i64;
        self.telemetry.epochs_in_flight.set(in_flight);
        if in_flight > self.peak_in_flight {
            self.peak_in_flight = in_flight;
            self.telemetry.epochs_in_flight_max.set(in_flight);
        }
        if open as i64 > self.peak_epoch {
            self.peak_epoch = open as i64;
            self.telemetry.epoch_messages_max.set(self.peak_epoch);
        }
        Ok(())
    }

    /// Takes the outputs of every epoch the dataflows have completed and that is not yet
    /// published. While rebuilding, nothing is published: once the rebuild has caught up, the
    /// whole state is published as its difference from what the topics hold. After that, the
    /// records that changed are published as one group. In exactly-once mode a group is one
    /// transaction, and waits until the previous group's transaction is committed.
    fn publish_completed(&mut self) -> Result<()> {
        let started = Instant::now();
        let (applied, outputs) = if self.coordinator() {
            let Some(&first) = self.unpublished.front() else { return Ok(()) };
            if self.engine.completed() <= first {
                return Ok(());
            }
            if self.config.kafka.exactly_once && !self.groups.is_empty() {
                return Ok(());
            }
            self.engine.take_completed()
        } else {
            // The coordinator closes the epochs; every complete epoch comes with the workers'
            // reports of it.
            let (applied, outputs) = self.engine.take_completed();
            self.unpublished.extend(outputs.iter().map(|o| o.epoch));
            (applied, outputs)
        };
        let mut epochs = 0u64;
        let mut last_epoch = 0;
        while let Some(&epoch) = self.unpublished.front().filter(|&&e| e < applied) {
            last_epoch = epoch;
            epochs += 1;
            self.unpublished.pop_front();
        }
        if epochs == 0 {
            return Ok(());
        }
        let mut input = Input::default();
        // Each key's value after the group's epochs (`None`: gone), in key order. An epoch's
        // records come sorted by key, so a group of one epoch needs no sorting.
        let mut changed: Vec<(RecordKey, Option<Vec<u8>>)> = Vec::new();
        let mut changed_epochs = 0;
        // Whether a worker held the last epoch taken: its outputs are not yet derived.
        let mut held = false;
        for output in outputs {
            let EpochOutput { records, metrics, reports, .. } = output;
            held = false;
            for meta in &reports {
                let meta: EpochMeta =
                    serde_json::from_slice(meta).context("a worker's epoch report is not valid")?;
                held |= meta.held;
                for (&index, &next) in &meta.positions {
                    self.positions[index] = self.positions[index].max(next);
                }
                input.add(meta);
            }
            self.telemetry.observe_records(&records);
            self.drift_metrics.summary.apply(&metrics);
            if self.rebuild.is_some() {
                self.current.apply_owned(records);
                continue;
            }
            changed.extend(into_new_values(records));
            changed_epochs += 1;
        }
        if changed_epochs > 1 {
            // Later epochs first, then a stable sort: a key's first entry is its newest value.
            changed.reverse();
            changed.sort_by(|(a, _), (b, _)| a.cmp(b));
            changed.dedup_by(|(later, _), (kept, _)| later == kept);
        }
        if !self.coordinator() {
            // The coordinator publishes the refused records.
            input.dead_letters.clear();
        }
        let updated_at = updated_at();
        let (publish, first_group) = if self.rebuild.is_some() {
            // Nothing is published while rebuilding.
            let caught_up = {
                let rebuild = self.rebuild.as_mut().expect("rebuilding");
                rebuild.absorb(std::mem::take(&mut input));
                // A worker holds its epochs until its partitions are read up to their ends at
                // start, so the epoch that catches up is not held: its outputs hold the whole
                // state. (Should one be, the next epoch, at most `truth.refresh_ms` away, is not.)
                rebuild.caught_up(&self.positions) && !held
            };
            self.retired = last_epoch + 1;
            self.telemetry.epochs_in_flight.set(self.in_flight() as i64);
            if !caught_up {
                self.telemetry.epochs.inc_by(epochs);
                return Ok(());
            }
            let rebuild = self.rebuild.take().expect("rebuilding");
            input = rebuild.input;
            if let Some(read_back) = self.read_back.take() {
                self.published = read_back.join().expect("the read-back thread panicked")?;
            }
            for (key, value) in self.published.gate_values() {
                self.store.apply(Kind::Gates, key, Some(value));
            }
            (Publish::State { current: std::mem::take(&mut self.current), started: rebuild.started }, true)
        } else {
            let mut messages = Vec::new();
            let mut gates = Vec::new();
            for (key, value) in &changed {
                if let Entity::Gate(annotator) = &key.entity {
                    let gate = value.as_deref().and_then(gate_of);
                    gates.extend(self.published.gate_records(&key.project, annotator, gate.as_ref()));
                    continue;
                }
                for message in outputs::messages(key, value.as_deref(), &updated_at) {
                    if self.published.observe(&message) {
                        remember(&self.store, &message);
                        messages.push(message);
                    }
                }
            }
            (Publish::Changes { messages, gates }, false)
        };
        if self.coordinator() {
            // The drift summary reaches the coordinator alone.
            self.drift_metrics.due = true;
            self.drift_metrics.refresh(self.telemetry);
        }

        let id = self.next_group;
        self.next_group += 1;
        if self.config.kafka.exactly_once {
            self.publisher.producer.begin_transaction().context("cannot begin a Kafka transaction")?;
        }
        let mut group = Group {
            id,
            last_epoch,
            epochs,
            positions: self.positions.clone(),
            input: Input::default(),
            sent: 0,
            replaced: 0,
            first: first_group,
            published: Instant::now(),
            warned: Duration::ZERO,
        };
        let outputs = &self.config.outputs;
        for letter in &input.dead_letters {
            self.send(
                &mut group,
                OutputTopic::DeadLetter.name(outputs),
                &letter.key,
                Some(letter.value.as_bytes()),
            )?;
        }
        let gates = match publish {
            Publish::Changes { messages, gates } => {
                for message in &messages {
                    self.send(
                        &mut group,
                        message.topic.name(outputs),
                        &message.key,
                        message.value.as_deref(),
                    )?;
                }
                gates
            }
            Publish::State { current, started } => {
                self.publish_state(&mut group, current, started, &updated_at)?
            }
        };
        self.telemetry.count_gate_records(gates.iter().map(|(_, r)| r));
        for (key, record) in &gates {
            let value = serde_json::to_vec(record)?;
            self.store.apply(Kind::Gates, key, Some(&value));
            self.send(&mut group, OutputTopic::Gating.name(outputs), key, Some(&value))?;
        }
        group.input = input;
        tracing::debug!(
            group = id,
            epochs,
            messages = group.input.messages[0] + group.input.messages[1],
            outputs = group.sent,
            publish_ms = started.elapsed().as_millis() as u64,
            "outputs published"
        );
        group.published = Instant::now();
        self.groups.push_back(group);
        Ok(())
    }

    /// Publishes the whole state once a rebuild has caught up, as its difference from what the
    /// topics hold ([`outputs::reconcile`]): each message is sent as soon as it is formed. Returns
    /// the gate records to publish.
    fn publish_state(
        &mut self,
        group: &mut Group,
        current: Records,
        started: Instant,
        updated_at: &str,
    ) -> Result<GateRecords> {
        let reconciling = Instant::now();
        let mut published = std::mem::take(&mut self.published);
        let (mut sent, mut tombstones) = (HashMap::<OutputTopic, usize>::new(), 0);
        let outputs = &self.config.outputs;
        let store = &self.store;
        let this = &*self;
        let gates = reconcile(
            &mut published,
            &current,
            updated_at,
            |message| remember(store, message),
            |message| {
                match message.value {
                    Some(_) => *sent.entry(message.topic).or_default() += 1,
                    None => tombstones += 1,
                }
                this.send(group, message.topic.name(outputs), &message.key, message.value.as_deref())
            },
        );
        self.published = published;
        let gates = gates?;
        let count = |topic| sent.get(&topic).copied().unwrap_or(0);
        tracing::info!(
            rebuild_ms = started.elapsed().as_millis() as u64,
            reconcile_ms = reconciling.elapsed().as_millis() as u64,
            scopes = count(OutputTopic::Scopes) + count(OutputTopic::ScopeWindows),
            annotators = count(OutputTopic::Annotators),
            pairs = count(OutputTopic::Pairs),
            items = count(OutputTopic::Items),
            alerts = count(OutputTopic::Alerts),
            tombstones,
            gate_records = gates.len(),
            "state rebuilt; what changed while the service was down is queued for publishing"
        );
        // Freeing every record of the state takes a while: not on the publishing thread. Its
        // pages, and those of the rebuild's one epoch of every record, then go back to the
        // system: nothing that size is allocated again while the service keeps up.
        std::thread::spawn(move || {
            drop(current);
            crate::memory::release_freed_pages_or_log();
        });
        Ok(gates)
    }

    /// Queues one output message in `group`; an output the producer can never take is
    /// dead-lettered instead.
    fn send(&self, group: &mut Group, topic: &str, key: &str, value: Option<&[u8]>) -> Result<()> {
        match self.publisher.send(group.id, topic, key, value)? {
            Sent::Queued => {
                group.sent += 1;
                self.telemetry.output_messages.with_label_values(&[topic]).inc();
            }
            Sent::TooLarge { limit } => {
                let failed = FailedOutput {
                    topic: topic.to_string(),
                    key: key.to_string(),
                    bytes: value.map_or(0, <[u8]>::len),
                    error: format!("key and value are over the producer's limit of {limit} bytes"),
                    permanent: true,
                };
                self.dead_letter_output(group, &failed, value.unwrap_or_default())?;
            }
        }
        Ok(())
    }

    /// Publishes the dead letter of an output that cannot be published, naming the input
    /// positions of the group it belongs to. Its key is the output topic and a hash of the
    /// output's key, so that it stays small whatever the output's key holds.
    fn dead_letter_output(&self, group: &mut Group, failed: &FailedOutput, value: &[u8]) -> Result<()> {
        let key = excerpt(&failed.key, KEY_EXCERPT_BYTES);
        tracing::error!(
            output_topic = %failed.topic,
            key,
            bytes = failed.bytes,
            error = %failed.error,
            "an output record cannot be published; it goes to the dead-letter topic instead"
        );
        let input = self
            .partitions
            .list
            .iter()
            .zip(&group.positions)
            .filter(|(_, &next)| next >= 0)
            .map(|((topic, partition), &offset)| InputPosition { topic, partition: *partition, offset })
            .collect();
        let (letter_key, value) = output_dead_letter(failed, value, input)?;
        let topic = OutputTopic::DeadLetter.name(&self.config.outputs);
        match self.publisher.send(group.id, topic, &letter_key, Some(&value))? {
            Sent::Queued => {
                group.sent += 1;
                self.telemetry.output_messages.with_label_values(&[topic]).inc();
            }
            Sent::TooLarge { .. } => {
                bail!("the dead letter of an output of {} is too large to publish", failed.topic)
            }
        }
        Ok(())
    }

    /// One turn of the loop: commits (of what the delivery reports say is delivered), closing
    /// epochs (before publishing, so that the next epoch runs in the dataflows while the last
    /// one's outputs are formed and sent), publishing.
    pub fn turn(&mut self) -> Result<()> {
        self.drift_metrics.refresh(self.telemetry);
        self.retire_delivered()?;
        if self.coordinator() {
            // A later process's workers stop when the first process finishes ([`Self::publish_share`]).
            self.engine.check()?;
        }
        if self.coordinator() {
            self.maybe_close()?;
        }
        self.publish_completed()?;
        self.ready.store(self.caught_up && self.connectivity.is_up(), Ordering::SeqCst);
        // Wait briefly: neither the workers' progress nor delivery reports (the producer's thread
        // serves them) wake this thread, and this bounds how late it notices them.
        let busy = self.in_pipeline() || self.feeds.open_messages() > 0;
        std::thread::sleep(if busy { TEND_INTERVAL } else { IDLE_INTERVAL });
        Ok(())
    }

    /// Whether epochs are in flight.
    fn in_pipeline(&self) -> bool {
        !self.unpublished.is_empty() || !self.groups.is_empty()
    }
}
