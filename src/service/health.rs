//! The service's view of its brokers: whether they are reachable ([`Connectivity`], fed by every
//! Kafka client's error callback through [`HealthContext`] and by successful broker round trips),
//! logged once when they go (WARN) and once when they return (INFO) instead of once per failed
//! request; and consumer lag ([`LagMonitor`]), which counts every partition, with its last known
//! high watermark while the brokers cannot be asked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::telemetry::Telemetry;

/// How often consumer lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the brokers are reachable, as the clients see it.
#[derive(Debug)]
pub struct Connectivity {
    brokers: String,
    up: AtomicBool,
    /// When they went away, while they are away.
    down_since: Mutex<Option<Instant>>,
}

impl Connectivity {
    /// Brokers `brokers`, taken to be reachable until a client says otherwise.
    pub fn new(brokers: &str) -> Arc<Connectivity> {
        Arc::new(Connectivity {
            brokers: brokers.to_string(),
            up: AtomicBool::new(true),
            down_since: Mutex::new(None),
        })
    }

    /// Whether the brokers are reachable.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// The brokers could not be reached; logged once until they return.
    pub fn down(&self, reason: &str) {
        if self.up.swap(false, Ordering::SeqCst) {
            *self.down_since.lock().expect("connectivity poisoned") = Some(Instant::now());
            tracing::warn!(
                brokers = %self.brokers,
                reason,
                "Kafka brokers unreachable; retrying until they return (outputs and commits wait)"
            );
        }
    }

    /// A round trip to the brokers succeeded; logged once if they had been unreachable.
    pub fn up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            let since = self.down_since.lock().expect("connectivity poisoned").take();
            let down_ms = since.map_or(0, |s| s.elapsed().as_millis() as u64);
            tracing::info!(brokers = %self.brokers, down_ms, "Kafka brokers reachable again");
        }
    }

    /// Takes a Kafka client's error callback: losing every broker counts as an outage; other
    /// errors are logged at debug level (librdkafka retries them itself).
    pub fn client_error(&self, error: &KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.down(reason),
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut,
            ) => tracing::debug!(%error, reason, "Kafka client error; retrying"),
            _ => tracing::warn!(%error, reason, "Kafka client error"),
        }
    }
}

/// Routes librdkafka's own log lines to debug level: connection failures are summarised by
/// [`Connectivity`], and its other warnings repeat what the errors say.
pub fn client_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
            tracing::error!(target: "librdkafka", facility, "{message}")
        }
        _ => tracing::debug!(target: "librdkafka", facility, ?level, "{message}"),
    }
}

/// The context of the service's consumers: their errors and logs go to [`Connectivity`].
#[derive(Clone)]
pub struct HealthContext {
    pub connectivity: Arc<Connectivity>,
}

impl ClientContext for HealthContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        client_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.connectivity.client_error(&error, reason);
    }
}

impl ConsumerContext for HealthContext {}

/// A consumer whose errors go to [`Connectivity`].
pub type HealthConsumer = BaseConsumer<HealthContext>;

/// Creates a consumer from `config` with the health context.
pub fn consumer(
    config: &ClientConfig,
    connectivity: &Arc<Connectivity>,
) -> Result<HealthConsumer, KafkaError> {
    config.create_with_context(HealthContext { connectivity: connectivity.clone() })
}

/// Measures consumer lag once a second on its own thread and client, so that the broker round
/// trips never hold up the pipeline: per input topic, the high watermark minus the next offset to
/// read, summed over every partition this process reads. A partition whose watermark cannot be
/// fetched counts with its last known watermark, so the sum neither drops nor jumps while the
/// brokers are away; a round in which no watermark could be fetched marks them unreachable, and
/// one that fetched any marks them reachable.
pub struct LagMonitor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A partition whose lag is measured: `(topic, partition)`, the index of its next offset to read
/// in the positions given to [`LagMonitor::start`], and its high watermark when the service
/// started.
pub struct LagPartition {
    pub topic: String,
    pub partition: i32,
    pub index: usize,
    pub start_high: i64,
}

impl LagMonitor {
    pub fn start(
        client: &ClientConfig,
        connectivity: Arc<Connectivity>,
        partitions: Vec<LagPartition>,
        positions: Arc<[AtomicI64]>,
        telemetry: Arc<Telemetry>,
    ) -> Result<LagMonitor> {
        let consumer = consumer(client, &connectivity)
            .context("cannot create the Kafka client that measures consumer lag")?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new().name("labelqc-lag".into()).spawn(move || {
                let mut known: Vec<(i64, i64)> = partitions.iter().map(|p| (0, p.start_high)).collect();
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let mut fetched = 0;
                    for (p, known) in partitions.iter().zip(&mut known) {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        match consumer.fetch_watermarks(&p.topic, p.partition, Duration::from_millis(500)) {
                            Ok(watermarks) => {
                                *known = watermarks;
                                fetched += 1;
                            }
                            Err(error) => {
                                tracing::debug!(%error, topic = %p.topic, p.partition, "cannot read watermarks")
                            }
                        }
                    }
                    if fetched > 0 {
                        connectivity.up();
                    } else if !partitions.is_empty() && !stop.load(Ordering::SeqCst) {
                        connectivity.down("cannot read the input partitions' watermarks");
                    }
                    let mut lag: BTreeMap<&str, i64> = BTreeMap::new();
                    for (p, &(low, high)) in partitions.iter().zip(&known) {
                        let next = positions[p.index].load(Ordering::Relaxed).max(low);
                        *lag.entry(p.topic.as_str()).or_default() += (high - next).max(0);
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

    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}
