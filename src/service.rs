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
//! The work is pipelined. One thread (this module's loop) reads and parses input into an open
//! epoch, hands closed epochs to the dataflow workers without waiting for them, publishes the
//! outputs of the epochs the dataflows have completed, and commits each published group's input
//! offsets once the delivery reports say that all its outputs are acknowledged, in epoch order.
//! An epoch closes as soon as the pipeline can take it, so epochs stay small while the service
//! keeps up and grow while it is behind. Epochs in flight (submitted, not yet committed) are
//! bounded by `engine.max_epochs_in_flight` and an epoch by `engine.epoch_events` input messages;
//! when both are reached the reader stops reading, and after `kafka.pause_after_ms` pauses the
//! input partitions until the pipeline drains, so memory does not grow with the backlog.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use labelqc_dataflows::engine::{Engine, EngineConfig};
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
/// At most this many messages are read before the pipeline is tended again.
const BURST_MESSAGES: usize = 5_000;
/// At most this long is spent reading before the pipeline is tended again.
const BURST_TIME: Duration = Duration::from_millis(5);
/// How long a read waits for input while earlier epochs are in the pipeline (their progress
/// does not wake the reader; this bounds how late it notices).
const TEND_INTERVAL: Duration = Duration::from_millis(1);
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

/// The input partitions, numbered densely: the labels topic's first, then the gold topic's.
struct Partitions {
    /// `(topic, partition)` by index.
    list: Vec<(String, i32)>,
    /// Index of partition 0 of the labels and the gold topic.
    first: [usize; 2],
}

impl Partitions {
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

    fn all(&self) -> TopicPartitionList {
        let mut all = TopicPartitionList::new();
        for (topic, partition) in &self.list {
            all.add_partition(topic, *partition);
        }
        all
    }
}

/// Input read since the last epoch was submitted.
#[derive(Default)]
struct OpenEpoch {
    updates: Vec<Update>,
    dead_letters: Vec<(String, Vec<u8>)>,
    /// Input messages by stream (labels, gold).
    messages: [u64; 2],
    oldest_ts: Option<i64>,
    newest_ts: Option<i64>,
    /// When its first message was read.
    opened: Option<Instant>,
}

impl OpenEpoch {
    fn len(&self) -> u64 {
        self.messages[0] + self.messages[1]
    }
}

/// An epoch submitted to the dataflows.
struct Epoch {
    number: u64,
    /// Next offset to read per partition once this epoch is processed (`-1`: none read yet).
    positions: Vec<i64>,
    messages: [u64; 2],
    oldest_ts: Option<i64>,
    newest_ts: Option<i64>,
    dead_letters: Vec<(String, Vec<u8>)>,
}

/// The published outputs of one or more consecutive epochs, awaiting delivery.
struct Group {
    id: usize,
    epochs: Vec<Epoch>,
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

/// Turns input messages into the open epoch's updates.
struct Reader<'a> {
    gold_topic: &'a str,
    source: Source,
    partitions: Partitions,
    /// Next offset to read per partition (`-1`: none read yet).
    positions: Vec<i64>,
    open: OpenEpoch,
    records: RecordCounts,
}

impl Reader<'_> {
    /// Reads one message into the open epoch.
    fn read(&mut self, message: &BorrowedMessage<'_>) -> Result<()> {
        let topic = message.topic();
        let stream = if topic == self.gold_topic { Stream::Gold } else { Stream::Labels };
        let s = usize::from(stream == Stream::Gold);
        let open = &mut self.open;
        open.opened.get_or_insert_with(Instant::now);
        open.messages[s] += 1;
        if let Some(index) = self.partitions.index(stream, message.partition()) {
            self.positions[index] = message.offset() + 1;
        }
        if let Some(ts) = message.timestamp().to_millis() {
            open.oldest_ts = Some(open.oldest_ts.map_or(ts, |o| o.min(ts)));
            open.newest_ts = Some(open.newest_ts.map_or(ts, |n| n.max(ts)));
        }
        let payload = message.payload().unwrap_or_default();
        let outcome = match std::str::from_utf8(payload) {
            Err(_) => Err("message is not valid UTF-8".to_string()),
            Ok(text) => self.source.apply_record(stream, text, &mut open.updates).map_err(|e| e.to_string()),
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
            open.dead_letters.push((key, serde_json::to_vec(&letter)?));
        }
        Ok(())
    }
}

/// The reading, processing, publishing and committing pipeline of `labelqc run`.
struct Pipeline<'a> {
    config: &'a Config,
    telemetry: &'a Telemetry,
    consumer: BaseConsumer,
    publisher: Publisher,
    engine: Engine,
    reader: Reader<'a>,
    /// Next offset to read per partition, for the lag thread.
    shared_positions: Arc<Vec<AtomicI64>>,
    /// Epochs in the dataflows, or complete there but not yet published, in order.
    unpublished: VecDeque<Epoch>,
    /// Published groups awaiting delivery and commit, in order.
    groups: VecDeque<Group>,
    next_group: usize,
    /// Epochs whose outputs are delivered and offsets committed: `0..retired`.
    retired: u64,
    drift_metrics: DriftMetrics,
    /// Whether the view has drift re-evaluations queued, which take another epoch (empty if no
    /// input came) to drain.
    drift_pending: bool,
    /// Since when the open epoch has been full and could not be submitted.
    full_since: Option<Instant>,
    paused: bool,
    peak_in_flight: i64,
    peak_epoch: i64,
}

impl Pipeline<'_> {
    /// Epochs submitted whose offsets are not committed yet.
    fn in_flight(&self) -> u64 {
        self.engine.submitted() - self.retired
    }

    /// Reads input for a while: until no message is waiting, or a burst's worth is read, or
    /// the open epoch is full. Waits up to `wait` for the first message.
    fn read_burst(&mut self, wait: Duration) -> Result<()> {
        let started = Instant::now();
        let mut timeout = wait;
        for n in 0..BURST_MESSAGES {
            let Some(message) = self.consumer.poll(timeout) else { break };
            match message {
                Ok(message) => self.reader.read(&message)?,
                Err(error) => tracing::warn!(%error, "Kafka consumer error; retrying"),
            }
            timeout = Duration::ZERO;
            if self.full() || (n % 64 == 63 && started.elapsed() >= BURST_TIME) {
                break;
            }
        }
        for (stream, counts) in
            [Stream::Labels, Stream::Gold].into_iter().zip(&mut self.reader.records.counts)
        {
            if counts.iter().any(|&n| n > 0) {
                self.telemetry.count_records(stream, *counts);
                *counts = [0; 3];
            }
        }
        for (shared, &position) in self.shared_positions.iter().zip(&self.reader.positions) {
            shared.store(position, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Submits the open epoch to the dataflows if the pipeline can take it: fewer than
    /// `max_epochs_in_flight` epochs in flight, and either the dataflows have nothing
    /// unpublished (so epochs stay small while the service keeps up), or the epoch is full or
    /// has been open for `epoch_interval_ms` (so it grows while the service is behind). An empty
    /// epoch is submitted when the view has drift re-evaluations queued, to drain them.
    fn maybe_submit(&mut self) -> Result<()> {
        let len = self.reader.open.len();
        if (len == 0 && !self.drift_pending) || self.in_flight() >= self.config.engine.max_epochs_in_flight {
            return Ok(());
        }
        let full = len >= self.config.engine.epoch_events as u64;
        let interval = Duration::from_millis(self.config.kafka.epoch_interval_ms);
        let old = self.reader.open.opened.is_some_and(|t| t.elapsed() >= interval);
        if !(self.unpublished.is_empty() || full || old) {
            return Ok(());
        }
        let open = std::mem::take(&mut self.reader.open);
        self.drift_pending = false;
        let number = self.engine.submit_nowait(open.updates)?;
        self.unpublished.push_back(Epoch {
            number,
            positions: self.reader.positions.clone(),
            messages: open.messages,
            oldest_ts: open.oldest_ts,
            newest_ts: open.newest_ts,
            dead_letters: open.dead_letters,
        });
        let in_flight = self.in_flight() as i64;
        self.telemetry.epochs_in_flight.set(in_flight);
        if in_flight > self.peak_in_flight {
            self.peak_in_flight = in_flight;
            self.telemetry.epochs_in_flight_max.set(in_flight);
        }
        if len as i64 > self.peak_epoch {
            self.peak_epoch = len as i64;
            self.telemetry.epoch_messages_max.set(self.peak_epoch);
        }
        Ok(())
    }

    /// Whether the open epoch is full: nothing more is read until it is submitted.
    fn full(&self) -> bool {
        self.reader.open.len() >= self.config.engine.epoch_events as u64
    }

    /// Pauses the input partitions once the open epoch has been full (and could not be
    /// submitted) for `kafka.pause_after_ms`, and resumes them as soon as it was submitted.
    ///
    /// Until then the reader only stops reading, and librdkafka's prefetch queue, which is
    /// bounded by its own settings, stops filling. Pausing also drops that queue and stops
    /// fetching; it is not done at once because librdkafka starts fetching again only up to a
    /// second after a resume.
    fn backpressure(&mut self) -> Result<()> {
        let full = self.full();
        if !full {
            self.full_since = None;
        }
        let since = *self.full_since.get_or_insert_with(Instant::now);
        let blocked = full && since.elapsed() >= Duration::from_millis(self.config.kafka.pause_after_ms);
        if blocked != self.paused {
            let partitions = self.reader.partitions.all();
            if blocked {
                self.consumer.pause(&partitions).context("cannot pause the input partitions")?;
                self.telemetry.pauses.inc();
                self.telemetry.partitions_paused.set(self.reader.partitions.list.len() as i64);
                tracing::debug!(in_flight = self.in_flight(), "input paused: the pipeline is full");
            } else {
                self.consumer.resume(&partitions).context("cannot resume the input partitions")?;
                self.telemetry.partitions_paused.set(0);
                tracing::debug!(in_flight = self.in_flight(), "input resumed");
            }
            self.paused = blocked;
        }
        Ok(())
    }

    /// Publishes the outputs of every epoch the dataflows have completed and that is not yet
    /// published, as one group. In exactly-once mode a group is one transaction, and waits until
    /// the previous group's transaction is committed.
    fn publish_completed(&mut self) -> Result<()> {
        let Some(first) = self.unpublished.front() else { return Ok(()) };
        if self.engine.completed() <= first.number {
            return Ok(());
        }
        let exactly_once = self.config.kafka.exactly_once;
        if exactly_once && !self.groups.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let (mut view, applied) = self.engine.snapshot();
        let mut epochs = Vec::new();
        while self.unpublished.front().is_some_and(|e| e.number < applied) {
            epochs.extend(self.unpublished.pop_front());
        }
        if epochs.is_empty() {
            return Ok(());
        }
        let catalog = &self.reader.source.catalog;
        let changes = view.settle(catalog);
        self.drift_pending = view.drift_pending();
        let id = self.next_group;
        self.next_group += 1;
        if exactly_once {
            self.publisher.producer.begin_transaction().context("cannot begin a Kafka transaction")?;
        }
        let mut sent = 0u64;
        for epoch in &mut epochs {
            for (key, value) in epoch.dead_letters.drain(..) {
                self.publisher.send(id, &self.config.outputs.deadletter, &key, Some(&value))?;
                sent += 1;
            }
        }
        sent += publish(&self.publisher, id, self.config, &view, &self.reader.source, &changes)?;
        self.telemetry.set_scopes(&view, catalog, &changes);
        self.telemetry.count_changes(&changes);
        self.drift_metrics.due = true;
        self.drift_metrics.refresh(self.telemetry, &view, catalog);
        drop(view);
        tracing::debug!(
            group = id,
            epochs = epochs.len(),
            messages = epochs.iter().map(|e| e.messages[0] + e.messages[1]).sum::<u64>(),
            outputs = sent,
            publish_ms = started.elapsed().as_millis() as u64,
            "outputs published"
        );
        self.groups.push_back(Group { id, epochs, sent, published: Instant::now(), warned: Duration::ZERO });
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
            let positions = &group.epochs.last().expect("a group has an epoch").positions;
            if self.config.kafka.exactly_once {
                let offsets = self.reader.partitions.offsets(positions)?;
                commit_transaction(&self.publisher, &self.consumer, &offsets)?;
                self.telemetry.transactions.inc();
            } else {
                commit = Some(positions.clone());
            }
            tracing::debug!(
                group = group.id,
                outputs = group.sent,
                deliver_ms = group.published.elapsed().as_millis() as u64,
                "outputs delivered"
            );
            retired.push(group);
        }
        if let Some(positions) = commit {
            self.consumer
                .commit(&self.reader.partitions.offsets(&positions)?, CommitMode::Sync)
                .context("cannot commit input offsets")?;
        }
        if retired.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        for epoch in retired.iter().flat_map(|g| &g.epochs) {
            self.retired = epoch.number + 1;
            self.telemetry.committed.with_label_values(&["labels"]).inc_by(epoch.messages[0]);
            self.telemetry.committed.with_label_values(&["gold"]).inc_by(epoch.messages[1]);
            self.telemetry.epochs.inc();
            if let Some(ts) = epoch.newest_ts {
                self.telemetry.output_event_time.set(ts as f64 / 1000.0);
            }
            if let Some(ts) = epoch.oldest_ts {
                self.telemetry.observe_latency(Duration::from_millis((now - ts).max(0) as u64));
            }
        }
        self.telemetry.output_updated.set(now as f64 / 1000.0);
        self.telemetry.epochs_in_flight.set(self.in_flight() as i64);
        Ok(())
    }

    /// Everything but reading: delivery reports, commits, publishing, submitting, pausing.
    fn tend(&mut self) -> Result<()> {
        if self.drift_metrics.ready() {
            let (view, _) = self.engine.snapshot();
            self.drift_metrics.refresh(self.telemetry, &view, &self.reader.source.catalog);
        }
        self.publisher.producer.poll(Duration::ZERO);
        self.retire_delivered()?;
        self.engine.check()?;
        self.publish_completed()?;
        self.maybe_submit()?;
        self.backpressure()
    }

    /// Whether epochs are in flight.
    fn in_pipeline(&self) -> bool {
        !self.unpublished.is_empty() || !self.groups.is_empty()
    }

    /// Whether the loop must come back soon: epochs in flight, or drift re-evaluations to drain.
    fn busy(&self) -> bool {
        self.in_pipeline() || self.drift_pending
    }

    /// One turn of the loop: tend the pipeline, then read.
    fn turn(&mut self) -> Result<()> {
        self.tend()?;
        if self.full() {
            // Read nothing until the pipeline takes the open epoch; meanwhile serve the delivery
            // reports that will let it.
            self.publisher.producer.poll(TEND_INTERVAL);
            return Ok(());
        }
        // Idle, wait for input (up to an epoch interval, to notice a stop); otherwise come back
        // soon to see to the pipeline.
        let wait = if self.busy() || self.reader.open.len() > 0 {
            TEND_INTERVAL
        } else {
            Duration::from_millis(self.config.kafka.epoch_interval_ms)
        };
        self.read_burst(wait)
    }

    /// On stop: reads no more, and waits (up to `DRAIN_TIMEOUT`) for the epochs in flight to be
    /// published, delivered and committed. The open epoch is dropped; its input is read again on
    /// the next start.
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
    let consumer: BaseConsumer = client(CONSUMER_DEFAULTS)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("cannot create the Kafka consumer; check [kafka] settings")?;
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

    // Rebuild state from the beginning of every input partition.
    let mut list = Vec::new();
    let mut first = [0; 2];
    let mut assignment = TopicPartitionList::new();
    let mut caught_up_at = Vec::new();
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
        for id in ids {
            assignment.add_partition_offset(topic, id, Offset::Beginning)?;
            let (_, high) = consumer.fetch_watermarks(topic, id, METADATA_TIMEOUT)?;
            caught_up_at.push(high);
            list.push((topic.clone(), id));
        }
    }
    consumer.assign(&assignment)?;
    tracing::info!(partitions = assignment.count(), "consuming from the beginning to rebuild state");
    let partitions = Partitions { list, first };
    let shared_positions: Arc<Vec<AtomicI64>> =
        Arc::new(partitions.list.iter().map(|_| AtomicI64::new(-1)).collect());
    let lag =
        LagMonitor::start(client(&[]), partitions.list.clone(), shared_positions.clone(), telemetry.clone())?;

    let engine = Engine::start(
        &EngineConfig {
            workers: config.engine.workers,
            max_epochs_in_flight: config.engine.max_epochs_in_flight,
        },
        QualityView::with_change_tracking().with_drift(config.drift_settings()),
    )?;
    let mut pipeline = Pipeline {
        config,
        telemetry: &telemetry,
        consumer,
        publisher,
        engine,
        reader: Reader {
            gold_topic: &config.kafka.gold_topic,
            source: Source::with_windows(&config.windows.sizes_ms()?),
            positions: vec![-1; partitions.list.len()],
            partitions,
            open: OpenEpoch::default(),
            records: RecordCounts::default(),
        },
        shared_positions,
        unpublished: VecDeque::new(),
        groups: VecDeque::new(),
        next_group: 0,
        retired: 0,
        drift_metrics: DriftMetrics { due: false, set: Instant::now() },
        drift_pending: false,
        full_since: None,
        paused: false,
        peak_in_flight: 0,
        peak_epoch: 0,
    };
    let result = (|| {
        while !stop.load(Ordering::SeqCst) {
            pipeline.turn()?;
            if !ready.load(Ordering::SeqCst)
                && caught_up_at
                    .iter()
                    .zip(&pipeline.reader.positions)
                    .all(|(&high, &next)| next.max(0) >= high)
            {
                ready.store(true, Ordering::SeqCst);
                tracing::info!("caught up with the input present at start");
            }
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
    source: &Source,
    changes: &Changes,
) -> Result<u64> {
    let catalog = &source.catalog;
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
    fn start(
        client: ClientConfig,
        partitions: Vec<(String, i32)>,
        positions: Arc<Vec<AtomicI64>>,
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
                    for ((topic, partition), position) in partitions.iter().zip(positions.iter()) {
                        match consumer.fetch_watermarks(topic, *partition, Duration::from_millis(500)) {
                            Ok((low, high)) => {
                                let next = position.load(Ordering::Relaxed).max(low);
                                *lag.entry(topic).or_default() += (high - next).max(0);
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
        let group = consumer.group_metadata().context("the consumer has no group metadata")?;
        producer.send_offsets_to_transaction(offsets, &group, TRANSACTION_TIMEOUT)?;
        producer.commit_transaction(TRANSACTION_TIMEOUT)?;
        Ok(())
    })();
    if let Err(error) = result {
        let _ = producer.abort_transaction(TRANSACTION_TIMEOUT);
        return Err(error.context("cannot commit the transaction; it was aborted"));
    }
    Ok(())
}
