//! Combining updates on the worker that made them, before they are exchanged and arranged: each
//! epoch's updates are summed per record and only the non-zero sums go on. An item's label moves
//! many of the same sums (the count of items with five labels, a label's share among them), and
//! the items an epoch touches on one worker move them together; downstream operators then see one
//! update per record and epoch instead of one per item. Exact: it only adds what a consolidation
//! downstream would add anyway.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use differential_dataflow::difference::Semigroup;
use differential_dataflow::{AsCollection, VecCollection};
use foldhash::fast::RandomState;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;

use crate::dataflow::Time;

/// One epoch's sums per record.
type Sums<D, R> = HashMap<D, R, RandomState>;

/// The updates of `collection`, summed per record and epoch on this worker: the same collection,
/// in fewer updates, each epoch's released once the epoch is complete upstream.
pub fn combine<'s, D, R>(
    collection: VecCollection<'s, Time, D, R>,
    name: &str,
) -> VecCollection<'s, Time, D, R>
where
    D: timely::ExchangeData + Hash + Eq,
    R: Semigroup + timely::ExchangeData,
{
    collection
        .inner
        .unary_frontier(Pipeline, name, |_capability, _info| {
            let mut stash: BTreeMap<Time, (Capability<Time>, Sums<D, R>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    let Some(capability) = capability.retain_least(0) else { return };
                    let time = *capability.time();
                    let sums = &mut stash.entry(time).or_insert_with(|| (capability, HashMap::default())).1;
                    for (record, _, diff) in data.drain(..) {
                        match sums.entry(record) {
                            std::collections::hash_map::Entry::Occupied(mut sum) => {
                                sum.get_mut().plus_equals(&diff)
                            }
                            std::collections::hash_map::Entry::Vacant(slot) => {
                                slot.insert(diff);
                            }
                        }
                    }
                });
                while let Some(entry) = stash.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let time = *entry.key();
                    let (capability, sums) = entry.remove();
                    let mut session = output.session(&capability);
                    for (record, diff) in sums {
                        if !diff.is_zero() {
                            session.give((record, time, diff));
                        }
                    }
                }
            }
        })
        .as_collection()
}
