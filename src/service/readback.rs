//! Reading back what the output topics hold, at start: every message of every partition of the
//! keyed output topics and of the gating topic, from the beginning to the end as it is when read
//! (committed transactions only, as librdkafka reads by default), into a [`Published`]. The service
//! then rebuilds its state without publishing and publishes only the difference (see
//! [`super::outputs`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::health::{consumer, Connectivity, HealthConsumer};
use super::outputs::{OutputTopic, Published, Share};
use super::METADATA_TIMEOUT;
use crate::config::OutputTopics;

/// How long reading back may make no progress before it is logged (and logged again).
const STALL_WARN: Duration = Duration::from_secs(10);

/// Reads every keyed output topic and the gating topic to its end, each on its own consumer and
/// thread, keeping what they hold of the keys of `share`. `client` holds the brokers and the
/// client settings; stops early (with an error) when `stop` is set.
pub fn read_back(
    share: Share,
    client: &ClientConfig,
    outputs: &OutputTopics,
    connectivity: &Arc<Connectivity>,
    stop: &AtomicBool,
) -> Result<Published> {
    let started = Instant::now();
    let mut config = client.clone();
    config
        .set("group.id", "labelqc-read-back")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    // One consumer per topic: end-of-partition events name the partition only.
    let read: Vec<Result<(Published, u64)>> = std::thread::scope(|scope| {
        let readers: Vec<_> = OutputTopic::KEYED
            .into_iter()
            .chain([OutputTopic::Gating])
            .map(|topic| {
                let config = &config;
                scope.spawn(move || {
                    let reader = consumer(config, connectivity)
                        .context("cannot create the Kafka consumer that reads the outputs back")?;
                    let mut published = Published::of(share);
                    let messages = read_topic(&reader, topic, topic.name(outputs), &mut published, stop)?;
                    Ok((published, messages))
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().expect("a read-back thread panicked")).collect()
    });
    let mut published = Published::of(share);
    let mut messages = 0;
    for part in read {
        let (part, n) = part?;
        published.merge(part);
        messages += n;
    }
    tracing::info!(
        messages,
        keys = published.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "read back what the output topics hold"
    );
    Ok(published)
}

/// Reads one output topic to its end into `published`; returns the number of messages read.
fn read_topic(
    reader: &HealthConsumer,
    topic: OutputTopic,
    name: &str,
    published: &mut Published,
    stop: &AtomicBool,
) -> Result<u64> {
    let metadata = reader
        .fetch_metadata(Some(name), METADATA_TIMEOUT)
        .with_context(|| format!("cannot read the metadata of output topic {name}"))?;
    let mut assignment = TopicPartitionList::new();
    // Partitions not yet read to their end.
    let mut open: BTreeSet<i32> = BTreeSet::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = reader
            .fetch_watermarks(name, partition.id(), METADATA_TIMEOUT)
            .with_context(|| format!("cannot read the watermarks of {name} partition {}", partition.id()))?;
        if high > low {
            assignment.add_partition_offset(name, partition.id(), Offset::Beginning)?;
            open.insert(partition.id());
        }
    }
    if open.is_empty() {
        return Ok(0);
    }
    reader.assign(&assignment).with_context(|| format!("cannot assign the partitions of {name}"))?;
    let (mut messages, mut last_progress, mut warned) = (0u64, Instant::now(), Duration::ZERO);
    while !open.is_empty() {
        if stop.load(Ordering::SeqCst) {
            bail!("stopped while reading the output topics back");
        }
        match reader.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                match message.key().map(std::str::from_utf8) {
                    Some(Ok(key)) => published.read_back(topic, key, message.payload()),
                    _ => tracing::warn!(
                        topic = name,
                        partition = message.partition(),
                        offset = message.offset(),
                        "an output message without a UTF-8 key is not labelqc's; ignored"
                    ),
                }
                messages += 1;
                last_progress = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
                last_progress = Instant::now();
            }
            Some(Err(error)) => tracing::debug!(%error, topic = name, "reading the outputs back; retrying"),
        }
        let stalled = last_progress.elapsed();
        if stalled >= warned + STALL_WARN {
            warned = stalled;
            tracing::warn!(
                topic = name,
                stalled_s = stalled.as_secs(),
                partitions_left = open.len(),
                "reading an output topic back makes no progress; retrying"
            );
        } else if stalled < STALL_WARN {
            warned = Duration::ZERO;
        }
    }
    reader.unassign().with_context(|| format!("cannot unassign the partitions of {name}"))?;
    Ok(messages)
}
