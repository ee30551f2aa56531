//! The second half of the pipeline: committing the input offsets of each group whose outputs are
//! delivered (by every process, in a cluster whose processes publish), draining on stop, and a
//! later process's loop that publishes its share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::Producer;

use super::{now_ms, Pipeline, DELIVERY_WARN, TEND_INTERVAL};
use crate::service::producer::{excerpt, KEY_EXCERPT_BYTES, TRANSACTION_TIMEOUT};

impl Pipeline<'_> {
    /// Commits, in order, the input offsets of every published group whose outputs are all
    /// delivered (in exactly-once mode: commits its transaction with them). A delivery that
    /// failed for good is dead-lettered; any other failure stops the service without committing.
    pub(super) fn retire_delivered(&mut self) -> Result<()> {
        let mut commit: Option<Vec<i64>> = None;
        let mut retired = Vec::new();
        // Per process: every epoch below the number has its records delivered, as the process
        // last reported (`Engine::report_delivered`); only the coordinator waits for others.
        let reported =
            if self.coordinator() && self.share.processes > 1 { self.engine.delivered() } else { Vec::new() };
        let own = self.share.process;
        // The other processes that have not yet delivered `epoch`.
        let behind = |epoch: u64| -> Vec<usize> {
            reported.iter().enumerate().filter(|&(p, &d)| p != own && d <= epoch).map(|(p, _)| p).collect()
        };
        while let Some(mut group) = self.groups.pop_front() {
            let failed = self.publisher.take_failed(group.id);
            if !failed.is_empty() {
                if let Some(f) = failed.iter().find(|f| !f.permanent || self.config.kafka.exactly_once) {
                    if self.config.kafka.exactly_once {
                        let _ = self.publisher.producer.abort_transaction(TRANSACTION_TIMEOUT);
                    }
                    bail!(
                        "{} output message(s) were not delivered (first: topic {} key {}: {}); the input \
                         offsets of their epochs stay uncommitted and are read again on the next start",
                        failed.len(),
                        f.topic,
                        excerpt(&f.key, KEY_EXCERPT_BYTES),
                        f.error
                    );
                }
                for f in &failed {
                    group.replaced += 1;
                    self.dead_letter_output(&mut group, f, &[])?;
                }
            }
            let delivered = self.publisher.delivered(group.id);
            // A group that moves the input positions waits for the other processes' records of
            // its epochs too: committing them says they are all published.
            let moves = group.first || group.positions != *commit.as_ref().unwrap_or(&self.committed);
            let waiting = if moves { behind(group.last_epoch) } else { Vec::new() };
            if delivered.ok + group.replaced < group.sent || !waiting.is_empty() {
                let waited = group.published.elapsed();
                if waited >= group.warned + DELIVERY_WARN {
                    group.warned = waited;
                    tracing::warn!(
                        waited_s = waited.as_secs(),
                        outstanding = group.sent.saturating_sub(delivered.ok + group.replaced),
                        processes = ?waiting,
                        "waiting for output delivery"
                    );
                }
                self.groups.push_front(group);
                break;
            }
            self.publisher.forget(group.id);
            if self.config.kafka.exactly_once {
                let offsets = self.partitions.offsets(&group.positions)?;
                self.publisher.commit_transaction(&self.consumer, &offsets)?;
                self.telemetry.transactions.inc();
            } else if self.coordinator() {
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
            self.retired = self.retired.max(group.last_epoch + 1);
            if group.first {
                self.caught_up = true;
                if self.coordinator() {
                    tracing::info!(
                        "caught up: the outputs of the input present at start are published and committed"
                    );
                } else {
                    tracing::info!(
                        "caught up: this process's outputs of the input present at start are delivered"
                    );
                }
            }
            if !self.coordinator() {
                continue;
            }
            let [labels, gold] = group.input.messages;
            self.telemetry.committed.with_label_values(&["labels"]).inc_by(labels);
            self.telemetry.committed.with_label_values(&["gold"]).inc_by(gold);
            self.telemetry.epochs.inc_by(group.epochs);
            if let Some(ts) = group.input.newest_ts {
                self.telemetry.output_event_time.set(ts as f64 / 1000.0);
            }
            if let Some(ts) = group.input.oldest_ts {
                let latency_ms = (now - ts).max(0);
                // Every message of the group counts, with the latency of its oldest.
                self.telemetry.observe_latency(Duration::from_millis(latency_ms as u64), labels + gold);
                tracing::debug!(group = group.id, labels, gold, latency_ms, "group committed");
            }
        }
        if self.caught_up && !self.coordinator() {
            self.engine.report_delivered(self.retired);
        }
        self.telemetry.output_updated.set(now as f64 / 1000.0);
        self.telemetry.epochs_in_flight.set(self.in_flight() as i64);
        Ok(())
    }

    /// On stop: closes the open epoch, so that what was read is published too, and waits until
    /// `deadline` for every epoch in flight to be published, delivered and committed. Fails (in
    /// exactly-once mode after aborting the open transaction) if that does not happen in time:
    /// the offsets of what was not delivered stay uncommitted, and it is read again on the next
    /// start. While rebuilding nothing is published, so nothing waits.
    pub fn drain(&mut self, deadline: Instant) -> Result<()> {
        self.ready.store(false, Ordering::SeqCst);
        if self.rebuild.is_some() {
            return Ok(());
        }
        let open = self.feeds.open_messages();
        if open > 0 || self.cluster {
            self.close(open)?;
        }
        while self.in_pipeline() {
            if Instant::now() >= deadline {
                if self.config.kafka.exactly_once && !self.groups.is_empty() {
                    let _ = self.publisher.producer.abort_transaction(TRANSACTION_TIMEOUT);
                }
                bail!(
                    "stopped with output messages undelivered after kafka.shutdown_timeout_ms ({} ms); \
                     their input offsets stay uncommitted and are read again on the next start",
                    self.config.kafka.shutdown_timeout_ms
                );
            }
            std::thread::sleep(TEND_INTERVAL);
            self.retire_delivered()?;
            self.engine.check()?;
            self.publish_completed()?;
        }
        Ok(())
    }

    /// A later process of a cluster whose processes publish: publishes its share of every
    /// epoch until the first process finishes (its workers then stop), and awaits the delivery
    /// of what it published, until `shutdown` after that. Stopped (`stop`) on its own, it goes
    /// on for `shutdown` in case the first process is stopping too, and returns `false` if that
    /// did not finish in time.
    pub fn publish_share(&mut self, stop: &AtomicBool, shutdown: Duration) -> Result<bool> {
        let mut stopping: Option<Instant> = None;
        while !self.engine.stopped() {
            if stop.load(Ordering::SeqCst) {
                let since = *stopping.get_or_insert_with(Instant::now);
                if since.elapsed() >= shutdown {
                    return Ok(false);
                }
            }
            self.turn()?;
        }
        self.ready.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + shutdown;
        self.publish_completed()?;
        while !self.groups.is_empty() && Instant::now() < deadline {
            std::thread::sleep(TEND_INTERVAL);
            self.retire_delivered()?;
        }
        Ok(true)
    }
}
