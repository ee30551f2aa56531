//! A timely worker of the engine: its dataflow, the loop that reads its feed into the open
//! epoch and closes epochs as the closes reach it, and the shipping of its outputs to the sink.

use super::*;
use crate::dataflow::Changes;

/// An input of a worker's dataflow.
type Input<D> = InputHandle<Time, CapacityContainerBuilder<Vec<D>>>;

/// Sent as a close by the first worker when it stops: no more closes come.
pub(super) const FINISH: Time = Time::MAX;

/// Where a worker ships its outputs.
pub(super) struct Shipping {
    /// Worker threads per process: the workers of process `p` are `p * local_workers ..`.
    pub local_workers: usize,
    pub publishers: Option<Publishers>,
    /// What this process's publisher has delivered ([`Engine::report_delivered`]).
    pub delivered: Arc<std::sync::atomic::AtomicU64>,
    pub shared: Arc<Shared>,
}

impl Shipping {
    /// Whether `worker` hands its process's outputs to the sink: the first worker, or with
    /// [`Publishers`] the first worker of each process.
    fn ships(&self, worker: usize) -> bool {
        match self.publishers {
            Some(_) => worker.is_multiple_of(self.local_workers),
            None => worker == 0,
        }
    }
}

/// In a cluster, every process must build the same dataflows from the same settings: a process
/// whose settings differ (another `exactly_once`, other `workers`, other drift or truth settings)
/// would wire its channels to the others' wrongly. Before anything else, each process's first
/// worker sends a hash of the settings that shape the dataflows to every worker, and a worker
/// that sees two different hashes logs an error that says so, records it as the engine's failure
/// and returns `false`: it stops before building anything else.
fn same_settings_everywhere(
    worker: &mut timely::worker::Worker,
    config: &QualityConfig,
    shipping: &Shipping,
    failed: &Arc<dyn Fn(String) + Send + Sync>,
) -> bool {
    let local = shipping.local_workers.max(1);
    let processes = worker.peers() / local;
    if processes <= 1 {
        return true;
    }
    let settings =
        format!("{config:?} workers={local} per-process-publishing={}", shipping.publishers.is_some());
    let fingerprint = crate::label::stable_id(settings.as_bytes());
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::<(usize, u64)>::new()));
    let mut input: Input<(usize, u64)> = InputHandle::new();
    let probe = {
        let seen = seen.clone();
        worker.dataflow::<Time, _, _>(|scope| {
            let (probe, _) =
                input.to_stream(scope).broadcast().inspect(move |&sent| seen.borrow_mut().push(sent)).probe();
            probe
        })
    };
    if worker.index().is_multiple_of(local) {
        input.send((worker.index() / local, fingerprint));
    }
    input.advance_to(1);
    while probe.less_than(&1) {
        worker.step();
    }
    let seen = seen.borrow();
    if let Some(&(other, _)) = seen.iter().find(|(_, f)| *f != fingerprint) {
        let process = worker.index() / local;
        let reason = format!(
            "processes {process} and {other} of the cluster run with different settings (engine, drift, truth, \
             routing, preferences, windows or kafka.exactly_once): give every process the same configuration \
             file, then restart them all"
        );
        tracing::error!("{reason}");
        failed(reason);
        return false;
    }
    true
}

/// Sends a batch of the first worker's output to the sink, one message per epoch in it. The
/// batch's records are moved out, not copied.
fn send_batch<D>(
    sink: &Sender<WorkerEvent>,
    batch: &mut Vec<(D, Time, Diff)>,
    event: fn(Time, Vec<(D, Diff)>) -> WorkerEvent,
) {
    let mut epoch = None;
    let mut data = Vec::new();
    for (d, time, diff) in batch.drain(..) {
        if epoch != Some(time) {
            if let Some(done) = epoch.replace(time) {
                // The engine may be gone (dropped without finishing); nothing then needs the output.
                let _ = sink.send(event(done, std::mem::take(&mut data)));
            }
        }
        data.push((d, diff));
    }
    if let Some(done) = epoch {
        let _ = sink.send(event(done, data));
    }
}

/// Ships a stream of the first worker's output to the sink: an operator that moves what it takes
/// ([`send_batch`]), whose (empty) output is probed, so that an epoch completes only once its
/// output is with the sink.
fn ship<D: 'static>(
    stream: Changes<'_, D>,
    name: &str,
    sink: Sender<WorkerEvent>,
    event: fn(Time, Vec<(D, Diff)>) -> WorkerEvent,
    probe: &ProbeHandle<Time>,
) {
    stream
        .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, name, |_, _| {
            move |input, _| input.for_each(|_, batch| send_batch(&sink, batch, event))
        })
        .probe_with(probe);
}

/// The loop of a worker: reads its feed into the open epoch, closes the epoch when the close
/// reaches it, and ships the outputs and its reports to the first worker, which passes them on to
/// the sink. Ends once the first worker stops issuing closes. Returns the worker's final records
/// ([`Emit::Final`]), sorted.
pub(super) fn run_worker(
    worker: &mut timely::worker::Worker,
    config: &QualityConfig,
    shipping: &Shipping,
    commands: Option<Receiver<Time>>,
    mut feed: Box<dyn Feed>,
    events: Sender<WorkerEvent>,
    failed: Arc<dyn Fn(String) + Send + Sync>,
) -> Vec<Record> {
    let index = worker.index();
    if !same_settings_everywhere(worker, config, shipping, &failed) {
        return Vec::new();
    }
    let mut inputs: Input<Update> = InputHandle::new();
    let mut names: Input<Name> = InputHandle::new();
    let mut reports: Input<(Time, Vec<u8>)> = InputHandle::new();
    let mut closes: Input<Time> = InputHandle::new();
    // This worker's word on the epochs it holds ([`EpochReport::hold`]).
    let mut holds: Input<bool> = InputHandle::new();
    let mut deliveries: Input<(usize, Time)> = InputHandle::new();
    // The newest close seen by this worker.
    let latest_close = std::rc::Rc::new(std::cell::Cell::new(None::<Time>));
    // Whether the first worker said that no more closes come.
    let finished = std::rc::Rc::new(std::cell::Cell::new(false));
    // Emit::Final: this worker's records, in the batches they came in (kept as they are: one
    // vector grown to hold them all would copy them at every doubling and leave the freed halves
    // resident, at the report's peak).
    let kept = std::rc::Rc::new(std::cell::RefCell::new(Vec::<Vec<(Record, Time, Diff)>>::new()));
    let probe = {
        let latest = latest_close.clone();
        let finish = finished.clone();
        let probe = worker.dataflow::<Time, _, _>(|scope| {
            let holds = Some(holds.to_stream(scope));
            let output = quality(inputs.to_stream(scope), names.to_stream(scope), holds, config, failed);
            let sink = events.clone();
            let reports = reports.to_stream(scope);
            // With publishers every process's first worker needs every report (the input
            // positions and delivery of the whole cluster); without, the first worker alone.
            let reports = match shipping.publishers {
                Some(_) => reports.broadcast(),
                None => reports.exchange(|_| 0),
            };
            let ships = shipping.ships(index);
            let reports = reports.inspect_core(move |event| {
                let Ok((_, batch)) = event else { return };
                if !ships {
                    return;
                }
                for (time, meta) in batch {
                    let _ = sink.send(WorkerEvent::Report(*time, meta.clone()));
                }
            });
            let (probe, _) = reports.probe();
            match config.emit {
                Emit::Changes => {
                    let sink = events.clone();
                    let records = sink::replacements_only(output.records.inner);
                    let records = match shipping.publishers.clone() {
                        Some(Publishers(publisher)) => {
                            let local = shipping.local_workers;
                            records.exchange(move |(record, _, _)| (publisher(&record.key) * local) as u64)
                        }
                        None => records.exchange(|_| 0),
                    };
                    ship(records, "ShipRecords", sink, WorkerEvent::Records, &probe);
                    let metrics = output.metrics.inner.exchange(|_| 0);
                    ship(metrics, "ShipMetrics", events.clone(), WorkerEvent::Metrics, &probe);
                }
                Emit::Final => {
                    let kept = kept.clone();
                    output.records.inner.probe_with(&probe).sink(
                        Pipeline,
                        "KeepRecords",
                        move |(input, _)| {
                            input.for_each(|_, data| kept.borrow_mut().push(std::mem::take(data)))
                        },
                    );
                }
            }
            probe
        });
        // The closes flow in a dataflow of their own: their progress has nothing to do with the
        // epochs'.
        worker.dataflow::<Time, _, _>(|scope| {
            closes.to_stream(scope).broadcast().inspect(move |&epoch| {
                if epoch == FINISH {
                    finish.set(true);
                } else {
                    latest.set(Some(latest.get().map_or(epoch, |e: Time| e.max(epoch))));
                }
            });
        });
        // So do the reports of what each process delivered: they must reach the first process
        // while the epochs they let it commit are in flight.
        let shared = shipping.shared.clone();
        worker.dataflow::<Time, _, _>(|scope| {
            deliveries.to_stream(scope).exchange(|_| 0).inspect(move |&(process, epoch)| {
                let mut delivered = shared.delivered.lock().expect("deliveries poisoned");
                if let Some(d) = delivered.get_mut(process) {
                    *d = (*d).max(epoch);
                }
            });
        });
        probe
    };
    // The first worker of a later process passes on what its publisher delivered.
    let reports_deliveries = shipping.publishers.is_some() && shipping.ships(index) && index != 0;
    let process = index / shipping.local_workers;
    let mut delivered_sent: Time = 0;
    // Only the first worker issues closes, and at the end `FINISH`; every worker keeps its input
    // of closes open until it sees `FINISH`. (Dropping it early does not work: in timely 0.32 an
    // input handle dropped before the other workers built the dataflow may never release its
    // initial capability.)
    let mut closes = Some(closes);

    let mut reported: Option<Option<Time>> = None;
    let ships = shipping.ships(index);
    let mut report_progress = |probe: &ProbeHandle<Time>| {
        if !ships {
            return;
        }
        let frontier = probe.with_frontier(|f| f.first().copied());
        if reported != Some(frontier) {
            reported = Some(frontier);
            let _ = events.send(WorkerEvent::Frontier(frontier));
        }
    };

    let mut open: Time = 0;
    // Whether this worker held its last epoch.
    let mut holding = false;
    let mut finish_sent = false;
    let mut updates = Vec::new();
    loop {
        if let (Some(commands), Some(input)) = (commands.as_ref().filter(|_| !finish_sent), &mut closes) {
            // Closes are issued by the first worker only.
            loop {
                match commands.try_recv() {
                    Ok(epoch) => {
                        input.send(epoch);
                        input.advance_to(epoch + 1);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        let next = input.time() + 1;
                        input.send(FINISH);
                        input.advance_to(next);
                        finish_sent = true;
                        break;
                    }
                }
            }
        }
        let read = feed.read(&mut updates).unwrap_or_else(|reason| panic!("worker {index}: {reason}"));
        for update in updates.drain(..) {
            inputs.send(update);
        }
        if let Some(close) = latest_close.get().filter(|&e| e >= open) {
            let report = feed.close(close, &mut updates);
            for update in updates.drain(..) {
                inputs.send(update);
            }
            for name in report.names {
                names.send(name);
            }
            reports.send((open, report.meta));
            if report.hold {
                // Every epoch this close ends is held: no other worker's input at one of them
                // ends the hold.
                for epoch in open..=close {
                    holds.advance_to(epoch);
                    holds.send(true);
                }
            } else if holding {
                // The hold ends: an epoch with a word from this worker, at which the keyed
                // operators derive, unless another worker still holds it.
                holds.send(false);
            }
            holding = report.hold;
            open = close + 1;
            inputs.advance_to(open);
            names.advance_to(open);
            reports.advance_to(open);
            holds.advance_to(open);
            inputs.flush();
            names.flush();
        }
        if reports_deliveries {
            let delivered = shipping.delivered.load(std::sync::atomic::Ordering::Relaxed);
            if delivered > delivered_sent {
                delivered_sent = delivered;
                deliveries.send((process, delivered));
                let next = deliveries.time() + 1;
                deliveries.advance_to(next);
            }
        }
        if finished.get() {
            break;
        }
        worker.step_or_park((read == 0).then_some(Duration::from_millis(1)).or(Some(Duration::ZERO)));
        report_progress(&probe);
    }
    drop(inputs);
    drop(names);
    drop(reports);
    drop(holds);
    drop(closes);
    drop(deliveries);
    while worker.step_or_park(None) {
        report_progress(&probe);
    }
    report_progress(&probe);
    let batches = std::mem::take(&mut *kept.borrow_mut());
    let total = batches.iter().map(Vec::len).sum();
    // Final records come once each; otherwise what remains of the changes is the final state.
    let mut records: Vec<Record> = if batches.iter().flatten().all(|(_, _, diff)| *diff == 1) {
        // Each batch is freed once moved: the records are held once, plus one batch.
        let mut records = Vec::with_capacity(total);
        for batch in batches {
            records.extend(batch.into_iter().map(|(record, ..)| record));
        }
        records
    } else {
        let mut changes = Vec::with_capacity(total);
        for batch in batches {
            changes.extend(batch.into_iter().map(|(record, _, diff)| (record, diff)));
        }
        crate::records::consolidate(&mut changes);
        changes.into_iter().filter(|(_, d)| *d > 0).map(|(r, _)| r).collect()
    };
    crate::records::sort_records(&mut records);
    records
}
