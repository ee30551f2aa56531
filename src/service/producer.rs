//! Publishing to the output topics: one producer, every message tagged with its output group so
//! that delivery reports can be counted per group, and Kafka transactions in exactly-once mode.
//! Delivery reports are served by the producer's own thread (`ThreadedProducer`), as they arrive:
//! the pipeline only reads the counts. (rust-rdkafka's `poll` with a timeout busy-waits through
//! its last millisecond, as it rounds the time left down to whole milliseconds; polled from the
//! pipeline's loop every millisecond, that spun a core.)
//!
//! A record that cannot be published however often it is retried (over the producer's
//! `message.max.bytes`, or refused by the broker as too large or invalid) does not stop the
//! service: it is reported ([`Publisher::send`] returns [`Sent::TooLarge`], delivery reports keep
//! [`FailedOutput`]s) so that the pipeline can dead-letter it instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, TopicPartitionList};

use serde::Serialize;

use super::health::{client_log, Connectivity, HealthConsumer};
use crate::deadletter::{RawExcerpt, KAFKA_EXCERPT_BYTES};

/// How long a transaction step may take before it counts as failed.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Publisher::send`] waits for room when the producer's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);

/// Room kept below `message.max.bytes` for the record's framing.
const RECORD_OVERHEAD: usize = 512;

/// An output message that the brokers refused.
#[derive(Clone, Debug)]
pub struct FailedOutput {
    pub topic: String,
    pub key: String,
    /// The value's size in bytes.
    pub bytes: usize,
    pub error: String,
    /// Whether retrying cannot help (the record itself is refused): it is dead-lettered; any
    /// other failure stops the service without committing.
    pub permanent: bool,
}

/// Delivery reports of one group of output messages.
#[derive(Clone, Debug, Default)]
pub struct Delivered {
    pub ok: u64,
    pub failed: Vec<FailedOutput>,
}

/// Counts delivery reports per output group (the message's delivery opaque is its group id).
pub struct DeliveryTracker {
    groups: Mutex<HashMap<usize, Delivered>>,
    connectivity: Arc<Connectivity>,
}

impl ClientContext for DeliveryTracker {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        client_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.connectivity.client_error(&error, reason);
    }
}

/// Whether a delivery error concerns the record itself, so that no retry can deliver it.
fn permanent(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, group: usize) {
        let mut groups = self.groups.lock().expect("delivery counts poisoned");
        let counts = groups.entry(group).or_default();
        match result {
            Ok(_) => {
                counts.ok += 1;
                drop(groups);
                self.connectivity.up();
            }
            Err((error, message)) => {
                let failed = FailedOutput {
                    topic: message.topic().to_string(),
                    key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    bytes: message.payload().map_or(0, <[u8]>::len),
                    error: error.to_string(),
                    permanent: permanent(error.rdkafka_error_code()),
                };
                tracing::warn!(%error, topic = %failed.topic, group, "output message not delivered");
                counts.failed.push(failed);
            }
        }
    }
}

/// What became of a message handed to [`Publisher::send`].
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Queued; its delivery report counts in its group.
    Queued,
    /// Over the producer's size limit: not sent, and never will be (dead-letter it).
    TooLarge { limit: usize },
}

/// Publishes keyed values (or tombstones), each tagged with its output group.
pub struct Publisher {
    /// Its thread serves the delivery reports into [`DeliveryTracker`].
    pub producer: ThreadedProducer<DeliveryTracker>,
    /// The largest key plus value the producer takes.
    max_bytes: usize,
}

impl Publisher {
    /// A publisher over a producer made from `config` (which holds the client settings;
    /// `message.max.bytes` there bounds a record).
    pub fn new(config: &rdkafka::ClientConfig, connectivity: Arc<Connectivity>) -> Result<Publisher> {
        let max_bytes = config
            .get("message.max.bytes")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1_000_000)
            .saturating_sub(RECORD_OVERHEAD);
        let context = DeliveryTracker { groups: Mutex::default(), connectivity };
        let producer = config
            .create_with_context(context)
            .context("cannot create the Kafka producer; check the [kafka] settings")?;
        Ok(Publisher { producer, max_bytes })
    }

    /// Queues one message for `topic` in output group `group`.
    pub fn send(&self, group: usize, topic: &str, key: &str, value: Option<&[u8]>) -> Result<Sent> {
        if key.len() + value.map_or(0, <[u8]>::len) > self.max_bytes {
            return Ok(Sent::TooLarge { limit: self.max_bytes });
        }
        loop {
            let mut record = BaseRecord::with_opaque_to(topic, group).key(key);
            if let Some(value) = value {
                record = record.payload(value);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(Sent::Queued),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // The producer's queue is full: its thread serves delivery reports, which
                    // make room.
                    std::thread::sleep(QUEUE_FULL_WAIT);
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    return Ok(Sent::TooLarge { limit: self.max_bytes });
                }
                Err((error, _)) => return Err(error).with_context(|| format!("cannot publish to {topic}")),
            }
        }
    }

    /// Delivery reports received so far for a group.
    pub fn delivered(&self, group: usize) -> Delivered {
        let groups = self.producer.context().groups.lock().expect("delivery counts poisoned");
        groups.get(&group).cloned().unwrap_or_default()
    }

    /// Takes the failures reported for a group (they are then no longer reported).
    pub fn take_failed(&self, group: usize) -> Vec<FailedOutput> {
        let mut groups = self.producer.context().groups.lock().expect("delivery counts poisoned");
        groups.get_mut(&group).map(|g| std::mem::take(&mut g.failed)).unwrap_or_default()
    }

    pub fn forget(&self, group: usize) {
        self.producer.context().groups.lock().expect("delivery counts poisoned").remove(&group);
    }

    /// Commits the open transaction with the input offsets of its epochs. On failure the
    /// transaction is aborted (consumers reading committed data never see its outputs).
    pub fn commit_transaction(&self, consumer: &HealthConsumer, offsets: &TopicPartitionList) -> Result<()> {
        let producer = &self.producer;
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
}

/// A position of an input partition, in an output's dead letter.
#[derive(Serialize)]
pub struct InputPosition<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// The next offset to read: the output came from records before it.
    pub offset: i64,
}

/// The dead letter of an output record that could not be published.
#[derive(Serialize)]
struct OutputDeadLetter<'a> {
    output_topic: &'a str,
    /// The record's key (its first [`KEY_EXCERPT_BYTES`] bytes when longer).
    key: &'a str,
    key_bytes: usize,
    reason: String,
    /// An excerpt of the record's value.
    #[serde(flatten)]
    raw: RawExcerpt,
    /// The input positions of the epochs that produced it.
    input: Vec<InputPosition<'a>>,
}

/// The most of an output's key that its dead letter and the logs carry.
pub const KEY_EXCERPT_BYTES: usize = 1024;

/// The first `n` bytes of `text` at most, cut on a character boundary.
pub fn excerpt(text: &str, n: usize) -> &str {
    let mut end = text.len().min(n);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The dead letter of an output that cannot be published: its key on the dead-letter topic (the
/// output topic and a hash of the output's key, so that it stays small whatever that key holds)
/// and its value.
pub fn output_dead_letter(
    failed: &FailedOutput,
    value: &[u8],
    input: Vec<InputPosition<'_>>,
) -> Result<(String, Vec<u8>)> {
    let letter = OutputDeadLetter {
        output_topic: &failed.topic,
        key: excerpt(&failed.key, KEY_EXCERPT_BYTES),
        key_bytes: failed.key.len(),
        reason: format!("output of {} bytes not published: {}", failed.bytes, failed.error),
        raw: RawExcerpt::new(value, KAFKA_EXCERPT_BYTES),
        input,
    };
    let hash = format!("{:016x}", labelqc_dataflows::label::stable_id(failed.key.as_bytes()));
    Ok((serde_json::json!([failed.topic, hash]).to_string(), serde_json::to_vec(&letter)?))
}
