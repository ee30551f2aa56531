//! `labelqc run`: the live service. Reads label events and gold answers from Kafka, keeps every
//! number current with the dataflows, and publishes the changed objects of spec section 4 to
//! keyed output topics (a tombstone when an entity disappears), refused records to the
//! dead-letter topic, and metrics on `/metrics`.
//!
//! Guarantees: at least once by default: an epoch's outputs are delivered and acknowledged before
//! the input offsets it covers are committed. With `kafka.exactly_once`, each epoch's outputs and
//! input offsets are committed in one Kafka transaction. State lives in memory and is rebuilt on start by
//! reading the input topics from the beginning (keep them compacted by identity so that this
//! stays bounded); outputs are keyed, so re-publishing after a restart only repeats values, and a
//! consumer of a compacted output topic sees what `labelqc report` says of the same input.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use labelqc_dataflows::engine::{Engine, EngineConfig};
use labelqc_dataflows::source::{Source, Stream};
use labelqc_dataflows::view::{Changes, QualityView};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Config;
use crate::http::HttpServer;
use crate::telemetry::{Telemetry, ALL_TIME};

/// Counts output messages whose delivery failed.
#[derive(Default)]
struct DeliveryTracker {
    failed: AtomicU64,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            tracing::error!(%error, "output message not delivered");
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Consumer settings the service sets unless `[kafka.client]` says otherwise.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    // A fetch that finds no new data waits at most this long at the broker. Brokers answer a
    // fetch as soon as data arrives, but librdkafka's mock cluster waits the whole time; a short
    // wait keeps freshness independent of that.
    ("fetch.wait.max.ms", "10"),
];
/// How long one wait for output delivery lasts before it is logged and retried.
const FLUSH_POLL: Duration = Duration::from_secs(5);
/// How long a transaction step may take before it counts as failed.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often consumer lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Publishes keyed JSON values (or tombstones) and confirms their delivery.
struct Publisher {
    producer: BaseProducer<DeliveryTracker>,
}

impl Publisher {
    fn send(&self, topic: &str, key: &str, value: Option<&[u8]>) -> Result<()> {
        loop {
            let mut record = BaseRecord::to(topic).key(key);
            if let Some(value) = value {
                record = record.payload(value);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.producer.poll(Duration::from_millis(100));
                }
                Err((error, _)) => return Err(error).with_context(|| format!("cannot publish to {topic}")),
            }
        }
    }

    fn send_json<T: Serialize>(&self, topic: &str, key: &str, value: Option<&T>) -> Result<()> {
        let payload = value.map(serde_json::to_vec).transpose()?;
        self.send(topic, key, payload.as_deref())
    }

    /// Waits until every message sent so far is delivered; fails if any was not.
    /// librdkafka retries on its own (up to `message.timeout.ms`); while brokers are away this
    /// waits, logging, rather than giving up.
    fn confirm(&self, stop: &AtomicBool) -> Result<()> {
        let started = Instant::now();
        let mut warned = Duration::ZERO;
        // Serve delivery reports until none is outstanding (`flush` waits in 100 ms steps).
        while self.producer.in_flight_count() > 0 {
            self.producer.poll(Duration::from_millis(1));
            if started.elapsed() >= warned + FLUSH_POLL {
                warned = started.elapsed();
                if stop.load(Ordering::SeqCst) {
                    bail!("stopped while output messages were undelivered; input offsets stay uncommitted");
                }
                tracing::warn!(waited_s = warned.as_secs(), "waiting for output delivery");
            }
        }
        let failed = self.producer.context().failed.swap(0, Ordering::SeqCst);
        if failed > 0 {
            bail!("{failed} output message(s) were not delivered; input offsets stay uncommitted");
        }
        Ok(())
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

/// Runs the service until `stop` is set (or Ctrl-C).
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<()> {
    let telemetry = Arc::new(Telemetry::new()?);
    let ready = Arc::new(AtomicBool::new(false));
    let server = HttpServer::start(config.http.listen, telemetry.clone(), ready.clone(), stop.clone())?;
    eprintln!("labelqc run: metrics on http://{}/metrics", server.local_addr());

    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.brokers);
    let mut consumer_config = client.clone();
    for (key, value) in CONSUMER_DEFAULTS {
        consumer_config.set(*key, *value);
    }
    for (key, value) in &config.kafka.client {
        client.set(key, value);
        consumer_config.set(key, value);
    }
    let consumer: BaseConsumer = consumer_config
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("cannot create the Kafka consumer; check [kafka] settings")?;
    let mut producer_config = client.clone();
    producer_config.set("linger.ms", "5");
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
    let mut assignment = TopicPartitionList::new();
    let mut caught_up_at: HashMap<(String, i32), i64> = HashMap::new();
    for topic in [&config.kafka.labels_topic, &config.kafka.gold_topic] {
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .with_context(|| format!("cannot read metadata of {topic} from {}", config.kafka.brokers))?;
        let partitions = metadata.topics().first().map(|t| t.partitions()).unwrap_or_default();
        if partitions.is_empty() {
            bail!("input topic {topic} does not exist on {}; create it first", config.kafka.brokers);
        }
        for partition in partitions {
            assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
            let (_, high) = consumer.fetch_watermarks(topic, partition.id(), METADATA_TIMEOUT)?;
            caught_up_at.insert((topic.clone(), partition.id()), high);
        }
    }
    consumer.assign(&assignment)?;
    tracing::info!(partitions = assignment.count(), "consuming from the beginning to rebuild state");

    let mut engine = Engine::start(
        &EngineConfig {
            workers: config.engine.workers,
            max_epochs_in_flight: config.engine.max_epochs_in_flight,
        },
        QualityView::with_change_tracking(),
    )?;
    let mut source = Source::default();
    let mut positions: HashMap<(String, i32), i64> = HashMap::new();
    let interval = Duration::from_millis(config.kafka.epoch_interval_ms);
    let mut updates = Vec::new();
    let mut dead_letters: Vec<(String, Vec<u8>)> = Vec::new();
    let shared_positions = Arc::new(Mutex::new(HashMap::new()));
    let lag = LagMonitor::start(
        client.clone(),
        caught_up_at.keys().cloned().collect(),
        shared_positions.clone(),
        telemetry.clone(),
    )?;

    while !stop.load(Ordering::SeqCst) {
        let opened = Instant::now();
        let mut consumed = 0usize;
        let mut consumed_gold = 0u64;
        let mut oldest_ts: Option<i64> = None;
        let mut newest_ts: Option<i64> = None;
        while consumed < config.engine.epoch_events {
            let Some(wait) = interval.checked_sub(opened.elapsed()) else { break };
            let Some(message) = consumer.poll(wait) else { continue };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "Kafka consumer error; retrying");
                    continue;
                }
            };
            consumed += 1;
            let topic = message.topic();
            let stream = if topic == config.kafka.gold_topic { Stream::Gold } else { Stream::Labels };
            consumed_gold += u64::from(stream == Stream::Gold);
            positions.insert((topic.to_string(), message.partition()), message.offset() + 1);
            if let Some(ts) = message.timestamp().to_millis() {
                oldest_ts = Some(oldest_ts.map_or(ts, |o| o.min(ts)));
                newest_ts = Some(newest_ts.map_or(ts, |n| n.max(ts)));
            }
            let payload = message.payload().unwrap_or_default();
            let outcome = match std::str::from_utf8(payload) {
                Err(_) => Err("message is not valid UTF-8".to_string()),
                Ok(text) => source.apply_record(stream, text, &mut updates).map_err(|e| e.to_string()),
            };
            telemetry.count_record(stream, &outcome);
            if let Err(reason) = outcome {
                let letter = DeadLetter {
                    topic,
                    partition: message.partition(),
                    offset: message.offset(),
                    reason,
                    raw: String::from_utf8_lossy(payload).into_owned(),
                };
                let key = format!("{topic}/{}/{}", message.partition(), message.offset());
                dead_letters.push((key, serde_json::to_vec(&letter)?));
            }
        }
        if consumed > 0 {
            let t_consumed = opened.elapsed();
            engine.submit(std::mem::take(&mut updates))?;
            engine.sync()?;
            let changes = engine.view().settle();
            let t_processed = opened.elapsed();
            if config.kafka.exactly_once {
                publisher.producer.begin_transaction().context("cannot begin a Kafka transaction")?;
            }
            let outputs =
                changes.scopes.len() + changes.annotators.len() + changes.pairs.len() + changes.items.len();
            for (key, value) in dead_letters.drain(..) {
                publisher.send(&config.outputs.deadletter, &key, Some(&value))?;
            }
            {
                let view = engine.view();
                publish(&publisher, config, &view, &source, &changes)?;
                for &scope in &changes.scopes {
                    if let Some(summary) = view.scope_summary(scope, &source.catalog) {
                        telemetry.set_scope(&summary, ALL_TIME);
                    }
                }
            }
            let t_published = opened.elapsed();
            if config.kafka.exactly_once {
                commit_transaction(&publisher, &consumer, &positions)?;
                telemetry.transactions.inc();
            } else {
                publisher.confirm(&stop)?;
            }
            let t_delivered = opened.elapsed();
            if !config.kafka.exactly_once {
                commit(&consumer, &positions)?;
            }
            tracing::debug!(
                consumed,
                outputs,
                consume_ms = t_consumed.as_millis() as u64,
                process_ms = (t_processed - t_consumed).as_millis() as u64,
                publish_ms = (t_published - t_processed).as_millis() as u64,
                deliver_ms = (t_delivered - t_published).as_millis() as u64,
                commit_ms = (opened.elapsed() - t_delivered).as_millis() as u64,
                "epoch done"
            );
            telemetry.committed.with_label_values(&["labels"]).inc_by(consumed as u64 - consumed_gold);
            telemetry.committed.with_label_values(&["gold"]).inc_by(consumed_gold);
            let now = now_ms();
            telemetry.epochs.inc();
            telemetry.output_updated.set(now as f64 / 1000.0);
            if let Some(ts) = newest_ts {
                telemetry.output_event_time.set(ts as f64 / 1000.0);
            }
            if let Some(ts) = oldest_ts {
                telemetry.observe_latency(Duration::from_millis((now - ts).max(0) as u64));
            }
        }
        shared_positions.lock().expect("positions poisoned").clone_from(&positions);
        if !ready.load(Ordering::SeqCst)
            && caught_up_at.iter().all(|(tp, high)| positions.get(tp).copied().unwrap_or(0) >= *high)
        {
            ready.store(true, Ordering::SeqCst);
            tracing::info!("caught up with the input present at start");
        }
    }
    lag.stop();
    engine.finish()?;
    drop(server);
    Ok(())
}

/// Publishes the objects of every entity that changed, or a tombstone for one that is gone.
fn publish(
    publisher: &Publisher,
    config: &Config,
    view: &QualityView,
    source: &Source,
    changes: &Changes,
) -> Result<()> {
    let catalog = &source.catalog;
    let updated_at = chrono::DateTime::from_timestamp_millis(now_ms())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    for &scope in &changes.scopes {
        let (project, task) = catalog.scope_name(scope);
        let summary = view.scope_summary(scope, catalog);
        let stamped = summary.as_ref().map(|object| Stamped { object, updated_at: updated_at.clone() });
        publisher.send_json(&config.outputs.scopes, &format!("{project}/{task}"), stamped.as_ref())?;
    }
    for &(scope, annotator) in &changes.annotators {
        let (project, task) = catalog.scope_name(scope);
        let object = view.annotator(scope, annotator, catalog);
        let keyed = object.as_ref().map(|object| Keyed { project, task, object });
        let key = format!("{project}/{task}/{}", catalog.annotators.name(annotator));
        publisher.send_json(&config.outputs.annotators, &key, keyed.as_ref())?;
    }
    for &(scope, a, b) in &changes.pairs {
        let (project, task) = catalog.scope_name(scope);
        let (name_a, name_b) = (catalog.annotators.name(a), catalog.annotators.name(b));
        let (first, second) = if name_a <= name_b { (name_a, name_b) } else { (name_b, name_a) };
        let object = view.pair(scope, a, b, catalog);
        let keyed = object.as_ref().map(|object| Keyed { project, task, object });
        publisher.send_json(
            &config.outputs.pairs,
            &format!("{project}/{task}/{first}/{second}"),
            keyed.as_ref(),
        )?;
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
        publisher.send(&config.outputs.items, &format!("{project}/{task}/{item_id}"), value.as_deref())?;
    }
    Ok(())
}

/// Measures consumer lag once a second on its own thread and client, so that the broker round
/// trips never hold up the service: per input topic, the high watermark minus the next offset
/// to read, summed over the topic's partitions.
struct LagMonitor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl LagMonitor {
    fn start(
        client: ClientConfig,
        partitions: Vec<(String, i32)>,
        positions: Arc<Mutex<HashMap<(String, i32), i64>>>,
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
                    for (topic, partition) in &partitions {
                        match consumer.fetch_watermarks(topic, *partition, Duration::from_millis(500)) {
                            Ok((low, high)) => {
                                let next = positions
                                    .lock()
                                    .expect("positions poisoned")
                                    .get(&(topic.clone(), *partition))
                                    .copied()
                                    .unwrap_or(low);
                                *lag.entry(topic).or_default() += (high - next.max(low)).max(0);
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

fn offsets(positions: &HashMap<(String, i32), i64>) -> Result<TopicPartitionList> {
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), next) in positions {
        offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
    }
    Ok(offsets)
}

fn commit(consumer: &BaseConsumer, positions: &HashMap<(String, i32), i64>) -> Result<()> {
    consumer.commit(&offsets(positions)?, CommitMode::Sync).context("cannot commit input offsets")?;
    Ok(())
}

/// Commits the open transaction: the epoch's outputs and its input offsets, together. On failure
/// the transaction is aborted (consumers reading committed data never see its outputs).
fn commit_transaction(
    publisher: &Publisher,
    consumer: &BaseConsumer,
    positions: &HashMap<(String, i32), i64>,
) -> Result<()> {
    let producer = &publisher.producer;
    let result = (|| -> Result<()> {
        let group = consumer.group_metadata().context("the consumer has no group metadata")?;
        producer.send_offsets_to_transaction(&offsets(positions)?, &group, TRANSACTION_TIMEOUT)?;
        producer.commit_transaction(TRANSACTION_TIMEOUT)?;
        Ok(())
    })();
    if let Err(error) = result {
        let _ = producer.abort_transaction(TRANSACTION_TIMEOUT);
        return Err(error.context("cannot commit the epoch's transaction; it was aborted"));
    }
    let failed = producer.context().failed.swap(0, Ordering::SeqCst);
    if failed > 0 {
        bail!("{failed} output message(s) were not delivered in a committed transaction");
    }
    Ok(())
}
