//! The input side of `labelqc run`: the input partitions ([`Partitions`]), dealt out over the
//! timely workers, and each worker's [`KafkaFeed`], a consumer of its partitions read from the
//! beginning into the worker's open epoch, with the upsert state of what it read. Refused records
//! become dead letters (the record's position, the reason, and a bounded excerpt of its bytes).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use labelqc_dataflows::engine::{EpochReport, Feed};
use labelqc_dataflows::event::Op;
use labelqc_dataflows::source::{Applied, Source, Stream, Update};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::health::{Connectivity, HealthConsumer};
use super::METADATA_TIMEOUT;
use crate::config::Config;
use crate::deadletter::{RawExcerpt, KAFKA_EXCERPT_BYTES};
use crate::telemetry::Telemetry;

/// At most this many messages are read by a worker before it tends its dataflow again.
const BURST_MESSAGES: usize = 5_000;
/// At most this long is spent reading before a worker tends its dataflow again.
const BURST_TIME: Duration = Duration::from_millis(5);
/// How often an idle worker asks its consumer for its positions, which move past records it
/// never delivers (transaction markers).
const POSITION_INTERVAL: Duration = Duration::from_millis(200);

/// The input partitions, numbered densely: the labels topic's first, then the gold topic's, each
/// by partition number. Every process of a cluster lists them alike.
pub struct Partitions {
    /// `(topic, partition)` by index.
    pub list: Vec<(String, i32)>,
    /// Index of partition 0 of the labels and the gold topic.
    first: [usize; 2],
}

impl Partitions {
    /// Lists the input partitions from the brokers' metadata (waiting out an outage until
    /// `stop`); fails if a topic does not exist.
    pub fn fetch(
        consumer: &HealthConsumer,
        config: &Config,
        stop: &AtomicBool,
        connectivity: &Connectivity,
    ) -> Result<Partitions> {
        let mut list = Vec::new();
        let mut first = [0; 2];
        for (s, topic) in [&config.kafka.labels_topic, &config.kafka.gold_topic].into_iter().enumerate() {
            first[s] = list.len();
            let what = format!("reading the metadata of {topic} from {}", config.kafka.brokers);
            let metadata = super::retry(stop, connectivity, &what, || {
                consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)
            })?;
            let mut ids: Vec<i32> = metadata
                .topics()
                .first()
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .unwrap_or_default();
            if ids.is_empty() {
                bail!(
                    "input topic {topic} does not exist on {}; create it first (`labelqc topics create`)",
                    config.kafka.brokers
                );
            }
            ids.sort_unstable();
            list.extend(ids.into_iter().map(|id| (topic.clone(), id)));
        }
        Ok(Partitions { list, first })
    }

    pub fn index(&self, stream: Stream, partition: i32) -> Option<usize> {
        let (from, to) = match stream {
            Stream::Labels => (self.first[0], self.first[1]),
            Stream::Gold => (self.first[1], self.list.len()),
        };
        let index = from + usize::try_from(partition).ok()?;
        (index < to && self.list[index].1 == partition).then_some(index)
    }

    /// The index of a partition of either input topic.
    fn index_of(&self, topic: &str, partition: i32, gold_topic: &str) -> Option<usize> {
        let stream = if topic == gold_topic { Stream::Gold } else { Stream::Labels };
        self.index(stream, partition)
    }

    /// Offsets to commit: the next offset to read of every partition read from.
    pub fn offsets(&self, positions: &[i64]) -> Result<TopicPartitionList> {
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), &next) in self.list.iter().zip(positions) {
            if next >= 0 {
                offsets.add_partition_offset(topic, *partition, Offset::Offset(next))?;
            }
        }
        Ok(offsets)
    }

    /// The partitions `indexes`, from their beginning.
    pub fn assignment(&self, indexes: &[usize]) -> Result<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        for &index in indexes {
            let (topic, partition) = &self.list[index];
            list.add_partition_offset(topic, *partition, Offset::Beginning)?;
        }
        Ok(list)
    }

    /// The indexes of the partitions worker `worker` of `peers` reads: the partitions are dealt
    /// out over the workers in turn.
    pub fn of_worker(&self, worker: usize, peers: usize) -> Vec<usize> {
        (0..self.list.len()).filter(|index| index % peers == worker).collect()
    }
}

/// A refused input record, for the dead-letter topic.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InputDeadLetter {
    /// The input partition's index in [`Partitions`].
    pub index: usize,
    pub offset: i64,
    /// `["topic",partition,offset]`.
    pub key: String,
    /// The dead letter's JSON value.
    pub value: String,
}

/// The value of a refused input record's dead letter.
#[derive(Serialize)]
struct DeadLetterValue<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    reason: String,
    #[serde(flatten)]
    raw: RawExcerpt,
}

/// What a worker tells the publishing process of one epoch (the `meta` of its report), as JSON.
#[derive(Default, Serialize, Deserialize)]
pub struct EpochMeta {
    /// Next offset to read of each partition the worker read from in the epoch, by index.
    pub positions: BTreeMap<usize, i64>,
    /// Input messages by stream (labels, gold).
    pub messages: [u64; 2],
    pub oldest_ts: Option<i64>,
    pub newest_ts: Option<i64>,
    /// Refused records.
    pub dead_letters: Vec<InputDeadLetter>,
    /// Whether the worker held the epoch: one of its partitions was not yet read up to its end
    /// at start ([`EpochReport::hold`]).
    #[serde(default)]
    pub held: bool,
}

/// What the main thread of a process sees of its workers' feeds.
pub struct FeedState {
    /// Next offset to read per partition (`-1`: none read yet, or not read by this process).
    pub positions: Arc<[AtomicI64]>,
    /// Messages in each local worker's open epoch.
    pub open: Vec<AtomicU64>,
    /// Messages an open epoch of one worker may hold before it must be closed.
    pub capacity: u64,
}

impl FeedState {
    pub fn open_messages(&self) -> u64 {
        self.open.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// Whether some local worker's open epoch is full.
    pub fn full(&self) -> bool {
        self.open.iter().any(|n| n.load(Ordering::Relaxed) >= self.capacity)
    }
}

/// One worker's share of the input: a consumer of its partitions, read from the beginning, and the
/// upsert state of what it read.
pub struct KafkaFeed {
    pub consumer: HealthConsumer,
    /// This worker's partitions, from the beginning (for pausing and resuming them).
    pub assignment: TopicPartitionList,
    pub pause_after: Duration,
    pub full_since: Option<Instant>,
    pub paused: bool,
    /// When the consumer's positions were last read.
    pub positions_read: Instant,
    /// This worker's partitions not yet read up to their ends at start, with those ends (by
    /// index): until they are, its epochs are held ([`EpochReport::hold`]), as the rebuild
    /// publishes nothing until every partition is read up to its end at start.
    pub rebuilding: Vec<(usize, i64)>,
    pub epoch: OpenEpoch,
}

/// What a worker read since it last closed an epoch, and the upsert state of all it read.
pub struct OpenEpoch {
    pub gold_topic: String,
    pub source: Source,
    pub partitions: Arc<Partitions>,
    /// Index of this worker in `state.open`.
    pub local: usize,
    pub state: Arc<FeedState>,
    pub telemetry: Arc<Telemetry>,
    /// The open epoch.
    pub meta: EpochMeta,
    pub records: RecordCounts,
}

/// Input-side counters of the current burst of reading, added to the metrics once per burst.
#[derive(Default)]
pub struct RecordCounts {
    /// `[ok, deleted, invalid]` by stream (labels, gold).
    counts: [[u64; 3]; 2],
}

impl OpenEpoch {
    /// Moves the position of partition `index` to `next` (never back).
    fn advance(&mut self, index: usize, next: i64) {
        let position = self.meta.positions.entry(index).or_insert(-1);
        *position = (*position).max(next);
        self.state.positions[index].fetch_max(next, Ordering::Relaxed);
    }

    /// Reads one message into the open epoch.
    fn read_message(&mut self, message: &BorrowedMessage<'_>, out: &mut Vec<Update>) -> Result<(), String> {
        let topic = message.topic();
        let stream = if topic == self.gold_topic { Stream::Gold } else { Stream::Labels };
        let s = usize::from(stream == Stream::Gold);
        self.meta.messages[s] += 1;
        let index = self.partitions.index(stream, message.partition());
        if let Some(index) = index {
            self.advance(index, message.offset() + 1);
        }
        if let Some(ts) = message.timestamp().to_millis() {
            self.meta.oldest_ts = Some(self.meta.oldest_ts.map_or(ts, |o| o.min(ts)));
            self.meta.newest_ts = Some(self.meta.newest_ts.map_or(ts, |n| n.max(ts)));
        }
        // The parser of `labelqc report`: tombstones, empty and non-UTF-8 messages refused too.
        let outcome = self.source.apply_message(stream, message.payload(), out);
        let warnings = match &outcome {
            Ok(applied) => applied.warnings,
            Err(error) => error.warning().into_iter().collect(),
        };
        for warning in warnings.iter() {
            let position = format_args!("{topic}/{}/{}", message.partition(), message.offset());
            self.telemetry.input_warning(stream, warning, &position);
        }
        let result = match &outcome {
            Ok(Applied { op: Op::Upsert, .. }) => 0,
            Ok(Applied { op: Op::Delete, .. }) => 1,
            Err(_) => 2,
        };
        self.records.counts[s][result] += 1;
        if let Err(error) = outcome {
            let (partition, offset) = (message.partition(), message.offset());
            let letter = DeadLetterValue {
                topic,
                partition,
                offset,
                reason: error.to_string(),
                raw: RawExcerpt::new(message.payload().unwrap_or_default(), KAFKA_EXCERPT_BYTES),
            };
            let value = serde_json::to_string(&letter).map_err(|e| e.to_string())?;
            let key = serde_json::json!([topic, partition, offset]).to_string();
            self.meta.dead_letters.push(InputDeadLetter {
                index: index.unwrap_or(usize::MAX),
                offset,
                key,
                value,
            });
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

    fn resume(&mut self) {
        if !self.paused {
            return;
        }
        match self.consumer.resume(&self.assignment) {
            Ok(()) => {
                self.paused = false;
                self.epoch.telemetry.partitions_paused.sub(self.assignment.count() as i64);
                tracing::debug!(worker = self.epoch.local, "input resumed");
            }
            Err(error) => tracing::warn!(%error, "cannot resume the input partitions; retrying"),
        }
    }

    /// Takes the consumer's positions: they move past records it never delivers (transaction
    /// markers), which the offsets of the messages read do not show.
    fn read_positions(&mut self) {
        self.positions_read = Instant::now();
        let Ok(positions) = self.consumer.position() else { return };
        for element in positions.elements() {
            if let (Offset::Offset(next), Some(index)) = (
                element.offset(),
                self.epoch.partitions.index_of(element.topic(), element.partition(), &self.epoch.gold_topic),
            ) {
                if next > self.epoch.state.positions[index].load(Ordering::Relaxed) {
                    self.epoch.advance(index, next);
                }
            }
        }
    }
}

impl Feed for KafkaFeed {
    fn read(&mut self, out: &mut Vec<Update>) -> Result<usize, String> {
        if self.epoch.full() {
            self.backpressure()?;
            return Ok(0);
        }
        let started = Instant::now();
        let mut read = 0;
        let mut idle = false;
        while read < BURST_MESSAGES && !self.epoch.full() {
            match self.consumer.poll(Duration::ZERO) {
                None => {
                    idle = true;
                    break;
                }
                Some(Ok(message)) => self.epoch.read_message(&message, out)?,
                Some(Err(KafkaError::PartitionEOF(_))) => continue,
                Some(Err(error)) => {
                    tracing::debug!(%error, "Kafka consumer error; retrying");
                    break;
                }
            }
            read += 1;
            if read % 64 == 0 && started.elapsed() >= BURST_TIME {
                break;
            }
        }
        if idle && self.positions_read.elapsed() >= POSITION_INTERVAL {
            self.read_positions();
        }
        let epoch = &mut self.epoch;
        for (stream, counts) in [Stream::Labels, Stream::Gold].into_iter().zip(&mut epoch.records.counts) {
            if counts.iter().any(|&n| n > 0) {
                epoch.telemetry.count_records(stream, *counts);
                *counts = [0; 3];
            }
        }
        epoch.state.open[epoch.local].store(epoch.messages(), Ordering::Relaxed);
        Ok(read)
    }

    fn close(&mut self, _: labelqc_dataflows::dataflow::Time, _: &mut Vec<Update>) -> EpochReport {
        let positions = &self.epoch.state.positions;
        let was_holding = !self.rebuilding.is_empty();
        self.rebuilding.retain(|&(index, end)| positions[index].load(Ordering::Relaxed) < end);
        let hold = !self.rebuilding.is_empty();
        if was_holding && !hold {
            tracing::debug!(
                worker = self.epoch.local,
                "partitions read up to their ends at start: epochs no longer held"
            );
        }
        self.epoch.meta.held = hold;
        let meta = std::mem::take(&mut self.epoch.meta);
        self.epoch.state.open[self.epoch.local].store(0, Ordering::Relaxed);
        self.full_since = None;
        self.resume();
        EpochReport {
            names: self.epoch.source.catalog.take_new(),
            meta: serde_json::to_vec(&meta).expect("epoch metadata is JSON"),
            hold,
        }
    }
}

impl Drop for KafkaFeed {
    /// librdkafka's termination sequence: resume what was paused and give the partitions up
    /// (dropping the messages prefetched for them) before the consumer is destroyed, which
    /// otherwise can wait for them.
    fn drop(&mut self) {
        self.resume();
        if let Err(error) = self.consumer.unassign() {
            tracing::debug!(%error, "cannot unassign the input partitions on stop");
        }
    }
}
