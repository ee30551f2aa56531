//! What the first worker hands to its process: each epoch's outputs gathered and handed out whole
//! once every worker has finished the epoch ([`run_sink`]), and, before they leave the worker that
//! formed them, record changes reduced to what their readers need ([`replacements_only`]).

use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;

use super::{EpochOutput, Shared, WorkerEvent};
use crate::dataflow::{Changes, Diff, Time};
use crate::records::Record;

/// Gathers the first worker's outputs per epoch and hands them out whole once the epoch is
/// complete, then publishes the progress that promises them; until the workers are gone.
pub(super) fn run_sink(events: Receiver<WorkerEvent>, shared: &Shared) {
    let mut pending: BTreeMap<Time, EpochOutput> = BTreeMap::new();
    fn at(pending: &mut BTreeMap<Time, EpochOutput>, epoch: Time) -> &mut EpochOutput {
        pending.entry(epoch).or_insert_with(|| EpochOutput { epoch, ..EpochOutput::default() })
    }
    while let Ok(event) = events.recv() {
        match event {
            WorkerEvent::Records(time, records) => at(&mut pending, time).records.extend(records),
            WorkerEvent::Metrics(time, metrics) => at(&mut pending, time).metrics.extend(metrics),
            WorkerEvent::Report(time, meta) => at(&mut pending, time).reports.push(meta),
            WorkerEvent::Frontier(frontier) => {
                let complete = frontier.unwrap_or(Time::MAX);
                {
                    let mut completed = shared.completed.lock().expect("outputs poisoned");
                    while let Some(entry) = pending.first_entry() {
                        if *entry.key() >= complete {
                            break;
                        }
                        let mut output = entry.remove();
                        // Each record's changes come from the worker that owns it, already
                        // without replaced values: order them by key, additions first.
                        output.records.sort_unstable_by(|(a, x), (b, y)| a.key.cmp(&b.key).then(y.cmp(x)));
                        differential_dataflow::consolidation::consolidate(&mut output.metrics);
                        completed.outputs.push_back(output);
                    }
                    completed.applied = complete;
                }
                shared.progress.lock().expect("progress poisoned").frontier = frontier;
                shared.advanced.notify_all();
            }
        }
    }
    shared.progress.lock().expect("progress poisoned").disconnected = true;
    shared.advanced.notify_all();
}

/// One epoch's record changes on one worker, until the epoch is complete.
type Epoch = (Capability<Time>, Vec<(Record, Diff)>);

/// The record changes of each epoch as its readers need them: a record replaced in the epoch
/// comes as its new value alone (its old value, `-1`, is dropped: applying the new value replaces
/// it); a record that goes away comes as its old value, `-1`. Half the bytes to ship and keep, for
/// the same outcome (see [`crate::records::Records::apply`]). A record's changes are all formed on
/// the worker that owns it, so each worker filters its own.
pub(super) fn replacements_only(records: Changes<'_, Record>) -> Changes<'_, Record> {
    records.unary_frontier::<CapacityContainerBuilder<Vec<(Record, Time, Diff)>>, _, _, _>(
        Pipeline,
        "ReplacementsOnly",
        |_, _| {
            let mut stash: BTreeMap<Time, Epoch> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    let Some(capability) = capability.retain_least(0) else { return };
                    let time = *capability.time();
                    let batch = &mut stash.entry(time).or_insert_with(|| (capability, Vec::new())).1;
                    batch.extend(data.drain(..).map(|(record, _, diff)| (record, diff)));
                });
                while let Some(entry) = stash.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (time, (capability, mut batch)) = entry.remove_entry();
                    // By key, additions first: a replacement's old value follows its new one.
                    batch.sort_unstable_by(|(a, x), (b, y)| a.key.cmp(&b.key).then(y.cmp(x)));
                    let mut session = output.session(&capability);
                    let mut batch = batch.into_iter().peekable();
                    while let Some((record, diff)) = batch.next() {
                        while diff > 0 && batch.peek().is_some_and(|(old, d)| *d < 0 && old.key == record.key)
                        {
                            batch.next();
                        }
                        session.give((record, time, diff));
                    }
                }
            }
        },
    )
}
