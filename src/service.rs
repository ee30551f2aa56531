//! `labelqc run`: the live service. Reads label events and gold answers from Kafka, keeps every
//! number current with the dataflows, and publishes the changed objects of spec section 4 to
//! keyed output topics (a tombstone when an entity disappears), refused records to the
//! dead-letter topic, and metrics on `/metrics`.
//!
//! Guarantees: at least once by default: an epoch's outputs are delivered and acknowledged before
//! the input offsets it covers are committed. With `kafka.exactly_once`, the outputs and input
//! offsets of each group of epochs are committed in one Kafka transaction. State lives in memory
//! and is rebuilt on start by reading the input topics from the beginning (keep them compacted by
//! identity so that this stays bounded); outputs are keyed, so re-publishing after a restart only
//! repeats values, and a consumer of a compacted output topic sees what `labelqc report` says of
//! the same input.
//!
//! The work is pipelined and spread over the timely workers. Each worker consumes its share of the
//! input partitions itself ([`KafkaFeed`]) into its open epoch. This module's loop (on the first
//! process of a cluster) closes epochs without waiting for earlier ones, publishes the outputs of
//! the epochs the dataflows have completed, with the refused records the workers reported, and
//! commits each published group's input offsets (of every partition, as the workers reported
//! them) once the delivery reports say that all its outputs are acknowledged, in epoch order. An
//! epoch closes as soon as the pipeline can take it, so epochs stay small while the service keeps
//! up and grow while it is behind. Epochs in flight (closed, not yet committed) are bounded by
//! `engine.max_epochs_in_flight` and a worker's open epoch by its share of `engine.epoch_events`
//! input messages; a worker whose open epoch is full stops reading, and after
//! `kafka.pause_after_ms` pauses its partitions until the epoch is closed, so memory does not grow
//! with the backlog. The later processes of a cluster only run their workers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use labelqc_dataflows::engine::{ClusterConfig, Engine, EngineConfig, EpochReport, Feed, FeedFactory};
use labelqc_dataflows::event::Op;
use labelqc_dataflows::source::{window_size_name, Catalog, Source, Stream, Update};
use labelqc_dataflows::view::{Changes, QualityView};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Config;
use crate::http::HttpServer;
use crate::telemetry::Telemetry;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long output delivery may be outstanding before it is logged (and logged again).
const DELIVERY_WARN: Duration = Duration::from_secs(5);
/// How long a transaction step may take before it counts as failed.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often consumer lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// At most this many messages are read by a worker before it tends its dataflow again.
const BURST_MESSAGES: usize = 5_000;
/// At most this long is spent reading before a worker tends its dataflow again.
const BURST_TIME: Duration = Duration::from_millis(5);
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
/// How long the service waits on stop for the epochs in flight to be delivered and committed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Client settings the service sets unless `[kafka.client]` says otherwise.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    // A fetch that finds no new data waits at most this long at the broker. Brokers answer a
    // fetch as soon as data arrives, but librdkafka's mock cluster waits the whole time; a short
    // wait keeps freshness independent of that.
    ("fetch.wait.max.ms", "10"),
];
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("linger.ms", "5"),
    // Output of later epochs is sent before earlier output is acknowledged; idempotence keeps
    // each partition in order through retries, so a key's last value is its newest.
    ("enable.idempotence", "true"),
];

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Delivery reports of one group of output messages.
#[derive(Clone, Copy, Debug, Default)]
struct Delivered {
    ok: u64,
    failed: u64,
}

/// Counts delivery reports per output group (the message's delivery opaque is its group id).
#[derive(Default)]
struct DeliveryTracker {
    groups: Mutex<HashMap<usize, Delivered>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, group: usize) {
        let mut groups = self.groups.lock().expect("delivery counts poisoned");
        let counts = groups.entry(group).or_default();
        match result {
            Ok(_) => counts.ok += 1,
            Err((error, _)) => {
                tracing::error!(%error, group, "output message not delivered");
                counts.failed += 1;
            }
        }
    }
}

/// Publishes keyed JSON values (or tombstones), each tagged with its output group.
struct Publisher {
    producer: BaseProducer<DeliveryTracker>,
}

impl Publisher {
    fn send(&self, group: usize, topic: &str, key: &str, value: Option<&[u8]>) -> Result<()> {
        loop {
            let mut record = BaseRecord::with_opaque_to(topic, group).key(key);
            if let Some(value) = value {
                record = record.payload(value);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // The producer's queue is full: serve delivery reports until there is room.
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => return Err(error).with_context(|| format!("cannot publish to {topic}")),
            }
        }
    }

    fn send_json<T: Serialize>(&self, group: usize, topic: &str, key: &str, value: Option<&T>) -> Result<()> {
        let payload = value.map(serde_json::to_vec).transpose()?;
        self.send(group, topic, key, payload.as_deref())
    }

    /// Delivery reports received so far for a group.
    fn delivered(&self, group: usize) -> Delivered {
        let groups = self.producer.context().groups.lock().expect("delivery counts poisoned");
        groups.get(&group).copied().unwrap_or_default()
    }

    fn forget(&self, group: usize) {
        self.producer.context().groups.lock().expect("delivery counts poisoned").remove(&group);
    }
}

#[derive(Serialize)]
struct Stamped<'a, T: Serialize> {
    #[serde(flatten)]
    object: &'a T,
    updated_at: String,
}

#[derive(Serialize)]
struct Keyed<'a, T: Serialize> {
    project: &'a str,
    task: &'a str,
    #[serde(flatten)]
    object: &'a T,
}

#[derive(Serialize)]
struct DeadLetter<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    reason: String,
    raw: String,
}

/// The input partitions, numbered densely: the labels topic's first, then the gold topic's, each
/// by partition number. Every process of a cluster lists them alike.
struct Partitions {
    /// `(topic, partition)` by index.
    list: Vec<(String, i32)>,
    /// Index of partition 0 of the labels and the gold topic.
    first: [usize; 2],
}

impl Partitions {
    /// Lists the input partitions from the brokers' metadata; fails if a topic does not exist.
    fn fetch(consumer: &BaseConsumer, config: &Config) -> Result<Partitions> {
        let mut list = Vec::new();
        let mut first = [0; 2];
        for (s, topic) in [&config.kafka.labels_topic, &config.kafka.gold_topic].into_iter().enumerate() {
            first[s] = list.len();
            let metadata = consumer
                .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                .with_context(|| format!("cannot read metadata of {topic} from {}", config.kafka.brokers))?;
            let mut ids: Vec<i32> = metadata
                .topics()
                .first()
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .unwrap_or_default();
            if ids.is_empty() {
                bail!("input topic {topic} does not exist on {}; create it first", config.kafka.brokers);
            }
            ids.sort_unstable();
            list.extend(ids.into_iter().map(|id| (topic.clone(), id)));
        }
        Ok(Partitions { list, first })
    }

    fn index(&self, stream: Stream, partition: i32) -> Option<usize> {
        let (from, to) = match stream {
            Stream::Labels => (self.first[0], self.first[1]),
            Stream::Gold => (self.first[1], self.list.len()),
        };
        let index = from + usize::try_from(partition).ok()?;
        (index < to && self.list[index].1 == partition).then_some(index)
    }

    /// Offsets to commit: the next offset to read of every partition read from.
    fn offsets(&self, positions: &[i64]) -> Result<TopicPartitionList> {
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), &next) in self.list.iter().zip(positions) {
            if next >= 0 {
                offsets.add_partition_offset(topic, *partition, Offset::Offset(next))?;
            }
        }
        Ok(offsets)
    }

    /// The partitions `indexes`, from their beginning.
    fn assignment(&self, indexes: &[usize]) -> Result<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        for &index in indexes {
            let (topic, partition) = &self.list[index];
            list.add_partition_offset(topic, *partition, Offset::Beginning)?;
        }
        Ok(list)
    }

    /// The indexes of the partitions worker `worker` of `peers` reads: the partitions are dealt
    /// out over the workers in turn.
    fn of_worker(&self, worker: usize, peers: usize) -> Vec<usize> {
        (0..self.list.len()).filter(|index| index % peers == worker).collect()
    }
}

/// What a worker tells the publishing process of one epoch (the `meta` of its report), as JSON.
#[derive(Default, Serialize, serde::Deserialize)]
struct EpochMeta {
    /// Next offset to read of each partition the worker read from in the epoch, by index.
    positions: BTreeMap<usize, i64>,
    /// Input messages by stream (labels, gold).
    messages: [u64; 2],
    oldest_ts: Option<i64>,
    newest_ts: Option<i64>,
    /// Refused records: key and JSON value for the dead-letter topic.
    dead_letters: Vec<(String, String)>,
}

/// What the main thread of a process sees of its workers' feeds.
struct FeedState {
    /// Next offset to read per partition (`-1`: none read yet, or not read by this process).
    positions: Vec<AtomicI64>,
    /// Messages in each local worker's open epoch.
    open: Vec<AtomicU64>,
    /// Messages an open epoch of one worker may hold before it must be closed.
    capacity: u64,
}

impl FeedState {
    fn open_messages(&self) -> u64 {
        self.open.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// Whether some local worker's open epoch is full.
    fn full(&self) -> bool {
        self.open.iter().any(|n| n.load(Ordering::Relaxed) >= self.capacity)
    }
}

/// One worker's share of the input: a consumer of its partitions, read from the beginning, and the
/// upsert state of what it read.
struct KafkaFeed {
    consumer: BaseConsumer,
    /// This worker's partitions, from the beginning (for pausing and resuming them).
    assignment: TopicPartitionList,
    pause_after: Duration,
    full_since: Option<Instant>,
    paused: bool,
    epoch: OpenEpoch,
}

/// What a worker read since it last closed an epoch, and the upsert state of all it read.
struct OpenEpoch {
    gold_topic: String,
    source: Source,
    partitions: Arc<Partitions>,
    /// Index of this worker in `state.open`.
    local: usize,
    state: Arc<FeedState>,
    telemetry: Arc<Telemetry>,
    /// The open epoch.
    meta: EpochMeta,
    records: RecordCounts,
}

impl OpenEpoch {
    /// Reads one message into the open epoch.
    fn read_message(&mut self, message: &BorrowedMessage<'_>, out: &mut Vec<Update>) -> Result<(), String> {
        let topic = message.topic();
        let stream = if topic == self.gold_topic { Stream::Gold } else { Stream::Labels };
        let s = usize::from(stream == Stream::Gold);
        self.meta.messages[s] += 1;
        if let Some(index) = self.partitions.index(stream, message.partition()) {
            self.meta.positions.insert(index, message.offset() + 1);
            self.state.positions[index].store(message.offset() + 1, Ordering::Relaxed);
        }
        if let Some(ts) = message.timestamp().to_millis() {
            self.meta.oldest_ts = Some(self.meta.oldest_ts.map_or(ts, |o| o.min(ts)));
            self.meta.newest_ts = Some(self.meta.newest_ts.map_or(ts, |n| n.max(ts)));
        }
        let payload = message.payload().unwrap_or_default();
        let outcome = match std::str::from_utf8(payload) {
            Err(_) => Err("message is not valid UTF-8".to_string()),
            Ok(text) => self.source.apply_record(stream, text, out).map_err(|e| e.to_string()),
        };
        let result = match &outcome {
            Ok(Op::Upsert) => 0,
            Ok(Op::Delete) => 1,
            Err(_) => 2,
        };
        self.records.counts[s][result] += 1;
        if let Err(reason) = outcome {
            let letter = DeadLetter {
                topic,
                partition: message.partition(),
                offset: message.offset(),
                reason,
                raw: String::from_utf8_lossy(payload).into_owned(),
            };
            let key = format!("{topic}/{}/{}", message.partition(), message.offset());
            let value = serde_json::to_string(&letter).map_err(|e| e.to_string())?;
            self.meta.dead_letters.push((key, value));
        }
        Ok(())
    }

    /// Messages in the open epoch.
    fn messages(&self) -> u64 {
        self.meta.messages[0] + self.meta.messages[1]
    }

    fn full(&self) -> bool {
        self.messages() >= self.state.capacity
    }
}

impl KafkaFeed {
    /// Pauses this worker's partitions once its open epoch has been full for `pause_after`.
    ///
    /// Until then the worker only stops reading, and librdkafka's prefetch queue, which is bounded
    /// by its own settings, stops filling. Pausing also drops that queue and stops fetching; it is
    /// not done at once because librdkafka starts fetching again only up to a second after a
    /// resume.
    fn backpressure(&mut self) -> Result<(), String> {
        let since = *self.full_since.get_or_insert_with(Instant::now);
        if !self.paused && since.elapsed() >= self.pause_after {
            self.consumer
                .pause(&self.assignment)
                .map_err(|e| format!("cannot pause the input partitions: {e}"))?;
            self.paused = true;
            self.epoch.telemetry.pauses.inc();
            self.epoch.telemetry.partitions_paused.add(self.assignment.count() as i64);
            tracing::debug!(worker = self.epoch.local, "input paused: the pipeline is full");
        }
        Ok(())
    }
}

impl Feed for KafkaFeed {
    fn read(&mut self, out: &mut Vec<Update>) -> Result<usize, String> {
        if self.epoch.full() {
            self.backpressure()?;
            return Ok(0);
        }
        let epoch = &mut self.epoch;
        let started = Instant::now();
        let mut read = 0;
        while read < BURST_MESSAGES && !epoch.full() {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => epoch.read_message(&message, out)?,
                Some(Err(error)) => {
                    tracing::warn!(%error, "Kafka consumer error; retrying");
                    break;
                }
            }
            read += 1;
            if read % 64 == 0 && started.elapsed() >= BURST_TIME {
                break;
            }
        }
        for (stream, counts) in [Stream::Labels, Stream::Gold].into_iter().zip(&mut epoch.records.counts) {
            if counts.iter().any(|&n| n > 0) {
                epoch.telemetry.count_records(stream, *counts);
                *counts = [0; 3];
            }
        }
        epoch.state.open[epoch.local].store(epoch.messages(), Ordering::Relaxed);
        Ok(read)
    }

    fn close(&mut self) -> EpochReport {
        let epoch = &mut self.epoch;
        let meta = std::mem::take(&mut epoch.meta);
        epoch.state.open[epoch.local].store(0, Ordering::Relaxed);
        self.full_since = None;
        if self.paused {
            match self.consumer.resume(&self.assignment) {
                Ok(()) => {
                    self.paused = false;
                    epoch.telemetry.partitions_paused.sub(self.assignment.count() as i64);
                    tracing::debug!(worker = epoch.local, "input resumed");
                }
                Err(error) => tracing::warn!(%error, "cannot resume the input partitions; retrying"),
            }
        }
        EpochReport {
            names: epoch.source.catalog.take_new(),
            meta: serde_json::to_vec(&meta).expect("epoch metadata is JSON"),
        }
    }
}

/// The published outputs of one or more consecutive epochs, awaiting delivery.
struct Group {
    id: usize,
    /// The last epoch published in it.
    last_epoch: u64,
    epochs: u64,
    /// Next offset to read per partition once its epochs are processed (`-1`: none read yet).
    positions: Vec<i64>,
    messages: [u64; 2],
    oldest_ts: Option<i64>,
    newest_ts: Option<i64>,
    /// Output messages sent.
    sent: u64,
    published: Instant,
    warned: Duration,
}

/// Input-side counters of the current burst of reading, added to the metrics once per burst.
#[derive(Default)]
struct RecordCounts {
    /// `[ok, deleted, invalid]` by stream (labels, gold).
    counts: [[u64; 3]; 2],
}

/// When the drift gauges are set: from a summary over every annotator, so not after every small
/// epoch, but at most every `DRIFT_METRICS_INTERVAL` while published state changes.
struct DriftMetrics {
    /// The gauges lag the published state.
    due: bool,
    /// When they were last set.
    set: Instant,
}

impl DriftMetrics {
    fn ready(&self) -> bool {
        self.due && self.set.elapsed() >= DRIFT_METRICS_INTERVAL
    }

    /// Sets the gauges from `view` if they lag and were not set recently.
    fn refresh(&mut self, telemetry: &Telemetry, view: &QualityView, catalog: &Catalog) {
        if self.ready() {
            telemetry.set_drift(&view.drift_summary(catalog));
            self.due = false;
            self.set = Instant::now();
        }
    }
}

/// The closing, publishing and committing pipeline of `labelqc run`'s first process.
struct Pipeline<'a> {
    config: &'a Config,
    telemetry: &'a Telemetry,
    /// Commits input offsets (it reads nothing itself).
    consumer: BaseConsumer,
    publisher: Publisher,
    engine: Engine,
    partitions: Arc<Partitions>,
    feeds: Arc<FeedState>,
    /// Whether other processes read input too (their open epochs are not visible here).
    cluster: bool,
    /// Next offset to read per partition after the epochs published so far.
    positions: Vec<i64>,
    /// The offsets committed last (`-1`: none), not committed again.
    committed: Vec<i64>,
    /// Epochs closed, not yet published, in order.
    unpublished: VecDeque<u64>,
    last_close: Instant,
    /// Published groups awaiting delivery and commit, in order.
    groups: VecDeque<Group>,
    next_group: usize,
    /// Epochs whose outputs are delivered and offsets committed: `0..retired`.
    retired: u64,
    drift_metrics: DriftMetrics,
    /// Whether the view has drift re-evaluations queued, which take another epoch (empty if no
    /// input came) to drain.
    drift_pending: bool,
    peak_in_flight: i64,
    peak_epoch: i64,
}

impl Pipeline<'_> {
    /// Epochs closed whose offsets are not committed yet.
    fn in_flight(&self) -> u64 {
        self.engine.submitted() - self.retired
    }

    /// Closes the open epoch on every worker if the pipeline can take it: fewer than
    /// `max_epochs_in_flight` epochs in flight, some input read (or drift re-evaluations
    /// queued), and either nothing unpublished (so epochs stay small while the service keeps up),
    /// or a worker's open epoch full, or `epoch_interval_ms` since the last close (so epochs grow
    /// while the service is behind). In a cluster the other processes' input is not visible
    /// here, so an epoch is also closed every `CLUSTER_TICK` (an empty epoch costs a round of
    /// progress messages).
    fn maybe_close(&mut self) -> Result<()> {
        if self.in_flight() >= self.config.engine.max_epochs_in_flight {
            return Ok(());
        }
        let open = self.feeds.open_messages();
        let full = self.feeds.full();
        let since = self.last_close.elapsed();
        let old = since >= Duration::from_millis(self.config.kafka.epoch_interval_ms);
        let input = open > 0 || self.drift_pending || (self.cluster && since >= CLUSTER_TICK);
        if !input || !(self.unpublished.is_empty() || full || old) {
            return Ok(());
        }
        let number = self.engine.close_epoch()?;
        self.last_close = Instant::now();
        self.drift_pending = false;
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

    /// Publishes the outputs of every epoch the dataflows have completed and that is not yet
    /// published, as one group. In exactly-once mode a group is one transaction, and waits until
    /// the previous group's transaction is committed.
    fn publish_completed(&mut self) -> Result<()> {
        let Some(&first) = self.unpublished.front() else { return Ok(()) };
        if self.engine.completed() <= first {
            return Ok(());
        }
        let exactly_once = self.config.kafka.exactly_once;
        if exactly_once && !self.groups.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let (mut view, applied) = self.engine.snapshot();
        let reports = self.engine.take_reports();
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
        let catalog = self.engine.catalog();
        let changes = view.settle(&catalog);
        self.drift_pending = view.drift_pending();
        let id = self.next_group;
        self.next_group += 1;
        if exactly_once {
            self.publisher.producer.begin_transaction().context("cannot begin a Kafka transaction")?;
        }
        let mut group = Group {
            id,
            last_epoch,
            epochs,
            positions: Vec::new(),
            messages: [0; 2],
            oldest_ts: None,
            newest_ts: None,
            sent: 0,
            published: Instant::now(),
            warned: Duration::ZERO,
        };
        for (_, meta) in &reports {
            let meta: EpochMeta =
                serde_json::from_slice(meta).context("a worker's epoch report is not valid")?;
            for (index, next) in meta.positions {
                self.positions[index] = self.positions[index].max(next);
            }
            group.messages[0] += meta.messages[0];
            group.messages[1] += meta.messages[1];
            group.oldest_ts = match (group.oldest_ts, meta.oldest_ts) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            group.newest_ts = group.newest_ts.max(meta.newest_ts);
            for (key, value) in &meta.dead_letters {
                self.publisher.send(id, &self.config.outputs.deadletter, key, Some(value.as_bytes()))?;
                group.sent += 1;
            }
        }
        group.positions = self.positions.clone();
        group.sent += publish(&self.publisher, id, self.config, &view, &catalog, &changes)?;
        self.telemetry.set_scopes(&view, &catalog, &changes);
        self.telemetry.count_changes(&changes);
        self.drift_metrics.due = true;
        self.drift_metrics.refresh(self.telemetry, &view, &catalog);
        drop(catalog);
        drop(view);
        tracing::debug!(
            group = id,
            epochs,
            messages = group.messages[0] + group.messages[1],
            outputs = group.sent,
            publish_ms = started.elapsed().as_millis() as u64,
            "outputs published"
        );
        group.published = Instant::now();
        self.groups.push_back(group);
        Ok(())
    }

    /// Commits, in order, the input offsets of every published group whose outputs are all
    /// delivered (in exactly-once mode: commits its transaction with them).
    fn retire_delivered(&mut self) -> Result<()> {
        let mut commit: Option<Vec<i64>> = None;
        let mut retired = Vec::new();
        while let Some(group) = self.groups.front_mut() {
            let delivered = self.publisher.delivered(group.id);
            if delivered.failed > 0 {
                if self.config.kafka.exactly_once {
                    let _ = self.publisher.producer.abort_transaction(TRANSACTION_TIMEOUT);
                }
                bail!(
                    "{} output message(s) were not delivered; input offsets stay uncommitted",
                    delivered.failed
                );
            }
            if delivered.ok < group.sent {
                let waited = group.published.elapsed();
                if waited >= group.warned + DELIVERY_WARN {
                    group.warned = waited;
                    tracing::warn!(
                        waited_s = waited.as_secs(),
                        outstanding = group.sent - delivered.ok,
                        "waiting for output delivery"
                    );
                }
                break;
            }
            let group = self.groups.pop_front().expect("the front group exists");
            self.publisher.forget(group.id);
            if self.config.kafka.exactly_once {
                let offsets = self.partitions.offsets(&group.positions)?;
                commit_transaction(&self.publisher, &self.consumer, &offsets)?;
                self.telemetry.transactions.inc();
            } else {
                commit = Some(group.positions.clone());
            }
            tracing::debug!(
                group = group.id,
                outputs = group.sent,
                deliver_ms = group.published.elapsed().as_millis() as u64,
                "outputs delivered"
            );
            retired.push(group);
        }
        if let Some(positions) = commit.filter(|p| *p != self.committed) {
            self.consumer
                .commit(&self.partitions.offsets(&positions)?, CommitMode::Sync)
                .context("cannot commit input offsets")?;
            self.committed = positions;
        }
        if retired.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        for group in &retired {
            self.retired = group.last_epoch + 1;
            self.telemetry.committed.with_label_values(&["labels"]).inc_by(group.messages[0]);
            self.telemetry.committed.with_label_values(&["gold"]).inc_by(group.messages[1]);
            self.telemetry.epochs.inc_by(group.epochs);
            if let Some(ts) = group.newest_ts {
                self.telemetry.output_event_time.set(ts as f64 / 1000.0);
            }
            if let Some(ts) = group.oldest_ts {
                self.telemetry.observe_latency(Duration::from_millis((now - ts).max(0) as u64));
            }
        }
        self.telemetry.output_updated.set(now as f64 / 1000.0);
        self.telemetry.epochs_in_flight.set(self.in_flight() as i64);
        Ok(())
    }

    /// One turn of the loop: delivery reports, commits, publishing, closing epochs.
    fn turn(&mut self) -> Result<()> {
        if self.drift_metrics.ready() {
            let (view, _) = self.engine.snapshot();
            let catalog = self.engine.catalog();
            self.drift_metrics.refresh(self.telemetry, &view, &catalog);
        }
        self.publisher.producer.poll(Duration::ZERO);
        self.retire_delivered()?;
        self.engine.check()?;
        self.publish_completed()?;
        self.maybe_close()?;
        // Wait for delivery reports (which the poll serves) or input, briefly: the workers'
        // progress does not wake this thread, and this bounds how late it notices.
        let busy = self.in_pipeline() || self.drift_pending || self.feeds.open_messages() > 0;
        let wait = if busy { TEND_INTERVAL } else { IDLE_INTERVAL };
        self.publisher.producer.poll(wait);
        Ok(())
    }

    /// Whether epochs are in flight.
    fn in_pipeline(&self) -> bool {
        !self.unpublished.is_empty() || !self.groups.is_empty()
    }

    /// On stop: closes no more epochs, and waits (up to `DRAIN_TIMEOUT`) for the epochs in flight
    /// to be published, delivered and committed. Input read since the last close is dropped; it
    /// is read again on the next start.
    fn drain(&mut self) -> Result<()> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.in_pipeline() {
            if Instant::now() >= deadline {
                bail!("stopped while output messages were undelivered; their input offsets stay uncommitted");
            }
            self.publisher.producer.poll(TEND_INTERVAL);
            self.retire_delivered()?;
            self.engine.check()?;
            self.publish_completed()?;
        }
        Ok(())
    }
}

/// Runs the service until `stop` is set (or Ctrl-C).
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<()> {
    let telemetry = Arc::new(Telemetry::new()?);
    let ready = Arc::new(AtomicBool::new(false));
    let server = HttpServer::start(config.http.listen, telemetry.clone(), ready.clone(), stop.clone())?;
    eprintln!("labelqc run: metrics on http://{}/metrics", server.local_addr());
    crate::topics::check_at_start(config)?;

    let client = |defaults: &[(&str, &str)]| {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &config.kafka.brokers);
        for (key, value) in defaults {
            client.set(*key, *value);
        }
        for (key, value) in &config.kafka.client {
            client.set(key, value);
        }
        client
    };
    let consumer_config = {
        let mut c = client(CONSUMER_DEFAULTS);
        c.set("group.id", &config.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        c
    };
    let consumer: BaseConsumer =
        consumer_config.create().context("cannot create the Kafka consumer; check [kafka] settings")?;
    let partitions = Arc::new(Partitions::fetch(&consumer, config)?);

    // Which partitions this process reads: those of its workers.
    let workers = config.engine.workers;
    let cluster = &config.cluster;
    let processes = cluster.addresses.len().max(1);
    let peers = workers * processes;
    let first_worker = cluster.process * workers;
    let mine: Vec<usize> =
        (first_worker..first_worker + workers).flat_map(|w| partitions.of_worker(w, peers)).collect();
    let mut caught_up_at = Vec::new();
    for &index in &mine {
        let (topic, partition) = &partitions.list[index];
        let (_, high) = consumer.fetch_watermarks(topic, *partition, METADATA_TIMEOUT)?;
        caught_up_at.push((index, high));
    }
    tracing::info!(
        process = cluster.process,
        processes,
        partitions = mine.len(),
        "consuming from the beginning to rebuild state"
    );
    let feeds = Arc::new(FeedState {
        positions: partitions.list.iter().map(|_| AtomicI64::new(-1)).collect(),
        open: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        capacity: (config.engine.epoch_events / peers).max(1) as u64,
    });
    let lag = LagMonitor::start(
        client(&[]),
        mine.iter().map(|&i| (partitions.list[i].clone(), i)).collect(),
        feeds.clone(),
        telemetry.clone(),
    )?;

    let factory: FeedFactory = {
        let partitions = partitions.clone();
        let feeds = feeds.clone();
        let telemetry = telemetry.clone();
        let gold_topic = config.kafka.gold_topic.clone();
        let window_sizes = config.windows.sizes_ms()?;
        let pause_after = Duration::from_millis(config.kafka.pause_after_ms);
        Arc::new(move |worker, peers| {
            let consumer: BaseConsumer =
                consumer_config.create().map_err(|e| format!("cannot create a Kafka consumer: {e}"))?;
            let assignment =
                partitions.assignment(&partitions.of_worker(worker, peers)).map_err(|e| e.to_string())?;
            consumer.assign(&assignment).map_err(|e| format!("cannot assign the input partitions: {e}"))?;
            let mut source = Source::with_windows(&window_sizes);
            source.catalog = Catalog::recording();
            let feed = KafkaFeed {
                consumer,
                assignment,
                pause_after,
                full_since: None,
                paused: false,
                epoch: OpenEpoch {
                    gold_topic: gold_topic.clone(),
                    source,
                    partitions: partitions.clone(),
                    local: worker - first_worker,
                    state: feeds.clone(),
                    telemetry: telemetry.clone(),
                    meta: EpochMeta::default(),
                    records: RecordCounts::default(),
                },
            };
            Ok(Box::new(feed) as Box<dyn Feed>)
        })
    };
    let engine_config = EngineConfig { workers, max_epochs_in_flight: config.engine.max_epochs_in_flight };
    let cluster_config = (!cluster.addresses.is_empty())
        .then(|| ClusterConfig { process: cluster.process, addresses: cluster.addresses.clone() });
    let view = QualityView::with_change_tracking().with_drift(config.drift_settings());
    if let Some(cluster) = &cluster_config {
        // Starting the workers waits until every process of the cluster is connected.
        eprintln!(
            "labelqc run: process {} of a cluster of {} ({}); waiting until every process is up",
            cluster.process,
            cluster.addresses.len(),
            cluster.addresses.join(", ")
        );
    }
    let engine = Engine::start_fed(&engine_config, cluster_config.as_ref(), view, factory)?;
    if cluster_config.is_some() {
        tracing::info!("all processes of the cluster are connected");
    }

    let check_ready = || {
        if !ready.load(Ordering::SeqCst)
            && caught_up_at.iter().all(|&(i, high)| feeds.positions[i].load(Ordering::Relaxed).max(0) >= high)
        {
            ready.store(true, Ordering::SeqCst);
            tracing::info!("caught up with the input present at start");
        }
    };

    if cluster.process != 0 {
        // A later process of a cluster: its workers read and compute; the first process
        // publishes and commits.
        while !stop.load(Ordering::SeqCst) && !engine.stopped() {
            check_ready();
            std::thread::sleep(Duration::from_millis(20));
        }
        lag.stop();
        drop(server);
        if engine.stopped() {
            // The first process finished (or a worker failed): the workers are done.
            engine.finish()?;
            return Ok(());
        }
        // Stopped on its own: the cluster cannot go on without this process, and its workers
        // stop only with the first process. Leave them; the process exits.
        tracing::warn!("stopping one process of a cluster stops the cluster; restart all processes");
        std::mem::forget(engine);
        return Ok(());
    }

    let mut producer_config = client(PRODUCER_DEFAULTS);
    if config.kafka.exactly_once {
        producer_config.set("transactional.id", &config.kafka.transactional_id);
    }
    let publisher = Publisher {
        producer: producer_config
            .create_with_context(DeliveryTracker::default())
            .context("cannot create the Kafka producer; check [kafka] settings")?,
    };
    if config.kafka.exactly_once {
        publisher
            .producer
            .init_transactions(TRANSACTION_TIMEOUT)
            .context("cannot initialise Kafka transactions; the brokers must support them")?;
    }
    let mut pipeline = Pipeline {
        config,
        telemetry: &telemetry,
        consumer,
        publisher,
        engine,
        positions: vec![-1; partitions.list.len()],
        committed: vec![-1; partitions.list.len()],
        partitions,
        feeds: feeds.clone(),
        cluster: cluster_config.is_some(),
        unpublished: VecDeque::new(),
        last_close: Instant::now(),
        groups: VecDeque::new(),
        next_group: 0,
        retired: 0,
        drift_metrics: DriftMetrics { due: false, set: Instant::now() },
        drift_pending: false,
        peak_in_flight: 0,
        peak_epoch: 0,
    };
    let result = (|| {
        while !stop.load(Ordering::SeqCst) {
            pipeline.turn()?;
            check_ready();
        }
        pipeline.drain()
    })();
    lag.stop();
    let finished = pipeline.engine.finish();
    drop(server);
    result?;
    finished?;
    Ok(())
}

/// Publishes the objects of every entity that changed, or a tombstone for one that is gone, as
/// part of output group `group`. Returns the number of messages sent.
fn publish(
    publisher: &Publisher,
    group: usize,
    config: &Config,
    view: &QualityView,
    catalog: &Catalog,
    changes: &Changes,
) -> Result<u64> {
    let updated_at = chrono::DateTime::from_timestamp_millis(now_ms())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    for &scope in &changes.scopes {
        let (project, task) = catalog.scope_name(scope);
        if let Some(window) = catalog.window(scope) {
            let key = format!(
                "{project}/{task}/{}/{}",
                window_size_name(window.size_ms),
                labelqc_dataflows::drift::rfc3339(window.start_ms)
            );
            let summary = view.window_summary(scope, catalog);
            let stamped = summary.as_ref().map(|object| Stamped { object, updated_at: updated_at.clone() });
            publisher.send_json(group, &config.outputs.scope_windows, &key, stamped.as_ref())?;
            continue;
        }
        let summary = view.scope_summary(scope, catalog);
        let stamped = summary.as_ref().map(|object| Stamped { object, updated_at: updated_at.clone() });
        publisher.send_json(group, &config.outputs.scopes, &format!("{project}/{task}"), stamped.as_ref())?;
    }
    for &(scope, annotator) in &changes.annotators {
        let (project, task) = catalog.scope_name(scope);
        let object = view.annotator(scope, annotator, catalog);
        let keyed = object.as_ref().map(|object| Keyed { project, task, object });
        let key = format!("{project}/{task}/{}", catalog.annotators.name(annotator));
        publisher.send_json(group, &config.outputs.annotators, &key, keyed.as_ref())?;
    }
    for &(scope, a, b) in &changes.pairs {
        let (project, task) = catalog.scope_name(scope);
        let (name_a, name_b) = (catalog.annotators.name(a), catalog.annotators.name(b));
        let (first, second) = if name_a <= name_b { (name_a, name_b) } else { (name_b, name_a) };
        let object = view.pair(scope, a, b, catalog);
        let keyed = object.as_ref().map(|object| Keyed { project, task, object });
        let key = format!("{project}/{task}/{first}/{second}");
        publisher.send_json(group, &config.outputs.pairs, &key, keyed.as_ref())?;
    }
    for &(scope, item) in &changes.items {
        let (project, task) = catalog.scope_name(scope);
        let item_id = catalog.items.name(item);
        let object = view.item(scope, item, catalog);
        #[derive(Serialize)]
        struct ItemObject<'a, T: Serialize> {
            item_id: &'a str,
            #[serde(flatten)]
            consensus: &'a T,
        }
        let value = match &object {
            Some(consensus) => Some(serde_json::to_vec(&Keyed {
                project,
                task,
                object: &ItemObject { item_id, consensus },
            })?),
            None => None,
        };
        publisher.send(
            group,
            &config.outputs.items,
            &format!("{project}/{task}/{item_id}"),
            value.as_deref(),
        )?;
    }
    for record in &changes.gates {
        let key = format!("{}/{}", record.project, record.annotator_id);
        publisher.send_json(group, &config.outputs.gating, &key, Some(record))?;
    }
    for (id, alert) in &changes.alerts {
        publisher.send_json(group, &config.outputs.alerts, id, alert.as_ref())?;
    }
    Ok((changes.scopes.len()
        + changes.annotators.len()
        + changes.pairs.len()
        + changes.items.len()
        + changes.gates.len()
        + changes.alerts.len()) as u64)
}

/// Measures consumer lag once a second on its own thread and client, so that the broker round
/// trips never hold up the pipeline: per input topic, the high watermark minus the next offset
/// to read, summed over the topic's partitions.
struct LagMonitor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl LagMonitor {
    /// Measures the partitions given with their indexes into `feeds.positions`.
    fn start(
        client: ClientConfig,
        partitions: Vec<((String, i32), usize)>,
        feeds: Arc<FeedState>,
        telemetry: Arc<Telemetry>,
    ) -> Result<LagMonitor> {
        let consumer: BaseConsumer =
            client.create().context("cannot create the Kafka client that measures consumer lag")?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new().name("labelqc-lag".into()).spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let mut lag: HashMap<&str, i64> = HashMap::new();
                    for ((topic, partition), index) in &partitions {
                        let position = &feeds.positions[*index];
                        match consumer.fetch_watermarks(topic, *partition, Duration::from_millis(500)) {
                            Ok((low, high)) => {
                                let next = position.load(Ordering::Relaxed).max(low);
                                *lag.entry(topic.as_str()).or_default() += (high - next).max(0);
                            }
                            Err(error) => tracing::debug!(%error, topic, partition, "cannot read watermarks"),
                        }
                    }
                    for (topic, messages) in lag {
                        telemetry.consumer_lag.with_label_values(&[topic]).set(messages);
                    }
                    while started.elapsed() < LAG_INTERVAL && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })?
        };
        Ok(LagMonitor { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

/// Commits the open transaction with the input offsets of its epochs. On failure the
/// transaction is aborted (consumers reading committed data never see its outputs).
fn commit_transaction(
    publisher: &Publisher,
    consumer: &BaseConsumer,
    offsets: &TopicPartitionList,
) -> Result<()> {
    let producer = &publisher.producer;
    let result = (|| -> Result<()> {
        // An epoch closed before any input was read has no offsets to commit.
        if offsets.count() > 0 {
            let group = consumer.group_metadata().context("the consumer has no group metadata")?;
            producer.send_offsets_to_transaction(offsets, &group, TRANSACTION_TIMEOUT)?;
        }
        producer.commit_transaction(TRANSACTION_TIMEOUT)?;
        Ok(())
    })();
    if let Err(error) = result {
        let _ = producer.abort_transaction(TRANSACTION_TIMEOUT);
        return Err(error.context("cannot commit the transaction; it was aborted"));
    }
    Ok(())
}
