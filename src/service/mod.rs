//! `labelqc run`: the live service. Reads label events and gold answers from Kafka, keeps every
//! number current with the dataflows, and publishes the changed objects of spec section 4 to
//! keyed output topics (keys are JSON arrays of the identity; a tombstone when an entity
//! disappears), refused records to the dead-letter topic, and metrics on `/metrics`.
//!
//! Guarantees: at least once by default: an epoch's outputs are delivered and acknowledged before
//! the input offsets it covers are committed. With `kafka.exactly_once`, the outputs and input
//! offsets of each group of epochs are committed in one Kafka transaction. State lives in memory
//! and is rebuilt on start by reading the input topics from the beginning (keep them compacted by
//! identity so that this stays bounded).
//!
//! Restarts are invisible to the topics' readers: on start the service reads back what the output
//! topics hold ([`readback`]), rebuilds its state without publishing until it has read the input
//! present at start, and then publishes only the difference, tombstones included ([`outputs`],
//! [`pipeline`]). Nothing one input message contains stops it: refused records and outputs that
//! cannot be published go to the dead-letter topic. SIGTERM and SIGINT stop it gracefully
//! within `kafka.shutdown_timeout_ms`; a second signal stops it at once.
//!
//! The work is pipelined and spread over the timely workers. Each worker consumes its share of the
//! input partitions itself ([`feed`]) into its open epoch; this process's main thread (the first
//! process's, in a cluster) closes epochs, publishes and commits ([`pipeline`]). Epochs in flight
//! are bounded by `engine.max_epochs_in_flight` and a worker's open epoch by its share of
//! `engine.epoch_events`; a worker whose open epoch is full stops reading, and after
//! `kafka.pause_after_ms` pauses its partitions, so memory does not grow with the backlog. The
//! later processes of a cluster only run their workers. Broker outages are waited out, at start as
//! while running, and logged once each way ([`health`]).

mod feed;
mod health;
mod outputs;
mod pipeline;
mod producer;
mod readback;
mod rebuild;

pub(crate) use outputs::remember_changes;
pub use outputs::{key, OutputTopic, Share};
pub(crate) use pipeline::updated_at;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use labelqc_dataflows::engine::{ClusterConfig, Engine, EngineConfig, Feed, FeedFactory, Publishers};
use labelqc_dataflows::items::ItemsConfig;
use labelqc_dataflows::keyed::Emit;
use labelqc_dataflows::source::{Catalog, Source};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::Offset;

use crate::config::Config;
use crate::http::HttpServer;
use crate::telemetry::Telemetry;
use feed::{EpochMeta, FeedState, KafkaFeed, OpenEpoch, Partitions, RecordCounts};
use health::{Connectivity, LagMonitor, LagPartition};
use pipeline::Pipeline;
use producer::{Publisher, TRANSACTION_TIMEOUT};
use rebuild::Rebuild;

/// How long one metadata, watermark or offset request may take before it is retried.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Calls `request` until it succeeds, the way a running service waits out a broker outage: the
/// outage is logged once (and its end once), and `stop` ends the wait with an error.
fn retry<T>(
    stop: &AtomicBool,
    connectivity: &Connectivity,
    what: &str,
    mut request: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T> {
    loop {
        match request() {
            Ok(value) => {
                connectivity.up();
                return Ok(value);
            }
            Err(error) => {
                connectivity.down(&format!("{what}: {error}"));
                if stop.load(Ordering::SeqCst) {
                    bail!("stopped while {what}: {error}");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// In a cluster, a process whose connection to another breaks has lost the cluster: timely's
/// communication thread panics. Exit with one line naming the peer instead.
fn exit_when_a_peer_is_lost(addresses: Vec<String>) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or_default();
        let peer = name.strip_prefix("timely:recv-").or_else(|| name.strip_prefix("timely:send-"));
        if let Some(index) = peer.and_then(|p| p.parse::<usize>().ok()) {
            let cause = labelqc_dataflows::panic_message(info.payload()).unwrap_or("the connection broke");
            let address = addresses.get(index).map_or("?", String::as_str);
            eprintln!(
                "labelqc: lost cluster process {index} ({address}): {cause}; a timely cluster cannot go on \
                 without one of its processes: restart every process (nothing uncommitted is lost)"
            );
            std::process::exit(1);
        }
        default(info);
    }));
}

/// Runs the service until `stop` is set (by SIGTERM or SIGINT).
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<()> {
    let telemetry = Arc::new(Telemetry::new()?);
    let ready = Arc::new(AtomicBool::new(false));
    let store = Arc::new(crate::api::Store::default());
    // At least once, every process of a cluster publishes its share of the records; in
    // exactly-once mode process 0 publishes them all, in its transactions.
    let processes = config.cluster.addresses.len().max(1);
    let share = if processes > 1 && !config.kafka.exactly_once {
        Share { process: config.cluster.process, processes }
    } else {
        Share::default()
    };
    // The query API answers from what a process publishes: in a cluster whose processes publish,
    // each answers for its keys and forwards the rest.
    let api = crate::api::Api {
        store: store.clone(),
        token: config.http.api_token.as_deref().map(Arc::from),
        forwarding: (share.processes > 1)
            .then(|| Arc::new(crate::api::Forwarding::new(share, config.cluster.api_addresses.clone()))),
    };
    // Process 0 publishes, and in such a cluster every process does.
    let publishes = config.cluster.process == 0 || share.processes > 1;
    let api = publishes.then_some(api);
    let server = HttpServer::start_with_api(config.http.listen, telemetry.clone(), ready.clone(), api)?;
    eprintln!("labelqc run: metrics on http://{}/metrics", server.local_addr());
    let connectivity = Connectivity::new(&config.kafka.brokers);
    let cluster = &config.cluster;
    if !cluster.addresses.is_empty() {
        exit_when_a_peer_is_lost(cluster.addresses.clone());
    }

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
    let consumer = health::consumer(&consumer_config, &connectivity)
        .context("cannot create the Kafka consumer; check the [kafka] settings")?;
    retry(&stop, &connectivity, "checking the topics", || crate::topics::check_at_start(config))??;
    let partitions = Arc::new(Partitions::fetch(&consumer, config, &stop, &connectivity)?);

    // Which partitions this process reads: those of its workers.
    let workers = config.engine.workers;
    let peers = workers * processes;
    let first_worker = cluster.process * workers;
    let mine: Vec<usize> =
        (first_worker..first_worker + workers).flat_map(|w| partitions.of_worker(w, peers)).collect();
    // The end of every input partition at start: the rebuild reads up to it before publishing.
    let mut starts = Vec::with_capacity(partitions.list.len());
    for (topic, partition) in &partitions.list {
        let what = format!("reading the watermarks of {topic} partition {partition}");
        let (low, high) = retry(&stop, &connectivity, &what, || {
            consumer.fetch_watermarks(topic, *partition, METADATA_TIMEOUT)
        })?;
        // An empty partition (or one whose records were all deleted) has nothing to read.
        starts.push(if high > low { high } else { -1 });
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
        &client(&[]),
        connectivity.clone(),
        mine.iter()
            .map(|&index| {
                let (topic, partition) = partitions.list[index].clone();
                LagPartition { topic, partition, index, start_high: starts[index].max(0) }
            })
            .collect(),
        feeds.positions.clone(),
        telemetry.clone(),
    )?;

    // A publishing process learns what the output topics hold of its keys while the state is
    // rebuilt.
    let published = if publishes {
        let (client, outputs, connectivity, stop) =
            (client(&[]), config.outputs.clone(), connectivity.clone(), stop.clone());
        Some(
            std::thread::Builder::new()
                .name("labelqc-read-back".into())
                .spawn(move || readback::read_back(share, &client, &outputs, &connectivity, &stop))?,
        )
    } else {
        None
    };

    let factory: FeedFactory = {
        let starts: Arc<[i64]> = starts.clone().into();
        let partitions = partitions.clone();
        let feeds = feeds.clone();
        let telemetry = telemetry.clone();
        let connectivity = connectivity.clone();
        let gold_topic = config.kafka.gold_topic.clone();
        let window_sizes = config.windows.sizes_ms()?;
        let pause_after = Duration::from_millis(config.kafka.pause_after_ms);
        let consumer_config = consumer_config.clone();
        Arc::new(move |worker, peers| {
            let consumer = health::consumer(&consumer_config, &connectivity)
                .map_err(|e| format!("cannot create a Kafka consumer: {e}"))?;
            let indexes = partitions.of_worker(worker, peers);
            let assignment = partitions.assignment(&indexes).map_err(|e| e.to_string())?;
            consumer.assign(&assignment).map_err(|e| format!("cannot assign the input partitions: {e}"))?;
            let mut source = Source::with_windows(&window_sizes);
            source.catalog = Catalog::recording();
            let feed = KafkaFeed {
                consumer,
                assignment,
                pause_after,
                full_since: None,
                paused: false,
                positions_read: Instant::now(),
                rebuilding: indexes
                    .iter()
                    .map(|&index| (index, starts[index]))
                    .filter(|&(_, end)| end >= 0)
                    .collect(),
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
    let engine_config = EngineConfig {
        workers,
        max_epochs_in_flight: config.engine.max_epochs_in_flight,
        items: ItemsConfig {
            window_sizes: config.windows.sizes_ms()?,
            out_of_order: false,
            records: Some(Emit::Changes),
            rows: false,
        },
        drift: config.drift_settings(),
        emit: Emit::Changes,
        preferences: config.preferences,
        truth: config.truth.clone(),
        routing: config.routing.clone(),
        // A changed scope's truth is refitted at most every `truth.refresh_ms`, warm started; once
        // it stops changing, one cold fit makes it the report's (the pipeline closes an empty
        // epoch every `truth.refresh_ms` while idle, so that this fit comes).
        truth_refresh: Some(std::time::Duration::from_millis(config.truth.refresh_ms)),
        publishers: (share.processes > 1).then(|| Publishers(Arc::new(move |key| share.publisher_of(key)))),
    };
    let cluster_config = (!cluster.addresses.is_empty())
        .then(|| ClusterConfig { process: cluster.process, addresses: cluster.addresses.clone() });
    if let Some(cluster) = &cluster_config {
        // Starting the workers waits until every process of the cluster is connected.
        eprintln!(
            "labelqc run: process {} of a cluster of {} ({}); waiting until every process is up",
            cluster.process,
            cluster.addresses.len(),
            cluster.addresses.join(", ")
        );
    }
    let engine = Engine::start_fed(&engine_config, cluster_config.as_ref(), factory)?;
    if cluster_config.is_some() {
        tracing::info!("all processes of the cluster are connected");
    }
    let shutdown = Duration::from_millis(config.kafka.shutdown_timeout_ms);

    let Some(published) = published else {
        // A later process of an exactly-once cluster: its workers read and compute; the first
        // process publishes and commits. Ready once it has read its partitions' input present at
        // start.
        let caught_up = || mine.iter().all(|&i| feeds.positions[i].load(Ordering::Relaxed) >= starts[i]);
        while !stop.load(Ordering::SeqCst) && !engine.stopped() {
            ready.store(caught_up() && connectivity.is_up(), Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
        }
        ready.store(false, Ordering::SeqCst);
        lag.stop();
        drop(server);
        if engine.stopped() {
            // The first process finished (or a worker failed): the workers are done.
            return finish(engine, Instant::now() + shutdown);
        }
        leave_the_cluster(engine);
        return Ok(());
    };

    let mut producer_config = client(PRODUCER_DEFAULTS);
    if config.kafka.exactly_once {
        producer_config.set("transactional.id", &config.kafka.transactional_id);
    }
    let publisher = Publisher::new(&producer_config, connectivity.clone())?;
    if config.kafka.exactly_once {
        retry(&stop, &connectivity, "initialising Kafka transactions", || {
            publisher.producer.init_transactions(TRANSACTION_TIMEOUT)
        })
        .context("cannot initialise Kafka transactions; the brokers must support them")?;
    }
    let committed = committed_offsets(&consumer, &partitions, &stop, &connectivity)?;
    let rebuild = Rebuild::new(starts, committed);
    let mut pipeline = Pipeline::new(
        config,
        &telemetry,
        consumer,
        publisher,
        engine,
        partitions,
        feeds,
        connectivity,
        published,
        rebuild,
        ready,
        store,
        share,
    );
    if cluster.process > 0 {
        // A later process publishes its share until the first process finishes.
        let result = pipeline.publish_share(&stop, shutdown);
        lag.stop();
        drop(server);
        return match result {
            Ok(true) => finish(pipeline.engine, Instant::now() + shutdown),
            Ok(false) => {
                leave_the_cluster(pipeline.engine);
                Ok(())
            }
            Err(error) => Err(error),
        };
    }
    let result = (|| {
        while !stop.load(Ordering::SeqCst) {
            pipeline.turn()?;
        }
        tracing::info!("stopping: publishing and committing what was read");
        pipeline.drain(Instant::now() + shutdown)
    })();
    let deadline = Instant::now() + shutdown;
    lag.stop();
    let finished = finish(pipeline.engine, deadline);
    drop(server);
    result?;
    finished
}

/// A later process stopped on its own: the cluster cannot go on without it, and its workers stop
/// only with the first process. Leaves them; the process exits.
fn leave_the_cluster(engine: Engine) {
    tracing::warn!("stopping one process of a cluster stops the cluster; restart all processes");
    std::mem::forget(engine);
}

/// The committed offset of every input partition (`-1`: none).
fn committed_offsets(
    consumer: &health::HealthConsumer,
    partitions: &Partitions,
    stop: &AtomicBool,
    connectivity: &Connectivity,
) -> Result<Vec<i64>> {
    let all = partitions.assignment(&(0..partitions.list.len()).collect::<Vec<_>>())?;
    let committed = retry(stop, connectivity, "reading the committed input offsets", || {
        consumer.committed_offsets(all.clone(), METADATA_TIMEOUT)
    })?;
    Ok(partitions
        .list
        .iter()
        .map(|(topic, partition)| match committed.find_partition(topic, *partition).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => offset,
            _ => -1,
        })
        .collect())
}

/// Stops the workers (their consumers give up their partitions and are destroyed). librdkafka
/// can block in a consumer's destruction; past `deadline` the service exits without waiting
/// for it, as everything that matters is committed by then.
fn finish(engine: Engine, deadline: Instant) -> Result<()> {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("labelqc-stop".into()).spawn(move || {
        let _ = done.send(engine.finish());
    })?;
    match finished.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(result) => {
            result?;
            Ok(())
        }
        Err(_) => {
            tracing::warn!("the workers' Kafka consumers did not close in time; exiting without them");
            Ok(())
        }
    }
}
