//! Keyed state and what derives from it: the operator behind every output record.
//!
//! A [`Keyed`] logic says how updates change the state of one key (a scope, a pair, an annotator)
//! and what the state derives (that key's record, and contributions to other keys' state). The
//! operator routes each update to the worker that owns its key, keeps the states there, and when an
//! epoch's updates change a key, derives its outputs from the state before and after and emits
//! the difference: exact, incremental, and work proportional to the keys that changed. Epochs are
//! processed in order once complete upstream, so outputs do not depend on how updates were
//! batched, on the number of workers, or on arrival order within an epoch.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use differential_dataflow::{AsCollection, VecCollection};
use foldhash::fast::RandomState;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;

use crate::dataflow::{Diff, Time};

/// How the state of one key changes and what it derives.
pub trait Keyed: 'static {
    type Key: timely::ExchangeData + Hash + Eq + Ord + Copy;
    /// What changes a key's state (with a multiplicity).
    type Update: timely::ExchangeData;
    type State: Default;
    /// What a key's state derives; the collection of all keys' outputs is the operator's output.
    type Out: timely::ExchangeData + Ord;

    /// The worker that owns a key: any uniform hash of it.
    fn route(key: &Self::Key) -> u64;

    /// Applies an update with multiplicity `diff` (`-1` retracts it).
    fn apply(&mut self, key: &Self::Key, state: &mut Self::State, update: &Self::Update, diff: Diff);

    /// Appends what `state` derives to `out`.
    fn derive(&mut self, key: &Self::Key, state: &Self::State, out: &mut Vec<Self::Out>);

    /// Whether the state is back to nothing (then it is dropped).
    fn is_empty(state: &Self::State) -> bool;
}

type Stash<K, U> = BTreeMap<Time, (Capability<Time>, Vec<(K, U, Diff)>)>;

/// Keeps the states of `logic`'s keys, changed by `updates`, and returns what they derive.
pub fn keyed<'s, L: Keyed>(
    updates: VecCollection<'s, Time, (L::Key, L::Update), Diff>,
    mut logic: L,
    name: &str,
) -> VecCollection<'s, Time, L::Out, Diff> {
    let pact = Exchange::new(|((key, _), _, _): &((L::Key, L::Update), Time, Diff)| L::route(key));
    updates
        .inner
        .unary_frontier(pact, name, move |_capability, _info| {
            let mut states: HashMap<L::Key, L::State, RandomState> = HashMap::default();
            let mut stash: Stash<L::Key, L::Update> = BTreeMap::new();
            let (mut before, mut after) = (Vec::new(), Vec::new());
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    let Some(capability) = capability.retain_least(0) else { return };
                    let time = *capability.time();
                    let batch = &mut stash.entry(time).or_insert_with(|| (capability, Vec::new())).1;
                    batch.extend(data.drain(..).map(|((key, update), _, diff)| (key, update, diff)));
                });
                while let Some(entry) = stash.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let time = *entry.key();
                    let (capability, mut batch) = entry.remove();
                    batch.sort_by_key(|(key, ..)| *key);
                    let mut session = output.session(&capability);
                    let mut rest = &batch[..];
                    while let Some(&(key, ..)) = rest.first() {
                        let len = rest.iter().take_while(|(k, ..)| *k == key).count();
                        let (changes, tail) = rest.split_at(len);
                        rest = tail;
                        let mut state = match states.entry(key) {
                            Entry::Occupied(entry) => entry,
                            Entry::Vacant(entry) => entry.insert_entry(L::State::default()),
                        };
                        before.clear();
                        logic.derive(&key, state.get(), &mut before);
                        for (_, update, diff) in changes {
                            logic.apply(&key, state.get_mut(), update, *diff);
                        }
                        after.clear();
                        if L::is_empty(state.get()) {
                            state.remove();
                        } else {
                            logic.derive(&key, state.get(), &mut after);
                        }
                        emit_difference(&mut before, &mut after, |out, diff| session.give((out, time, diff)));
                    }
                }
            }
        })
        .as_collection()
}

/// Emits `after - before` (both consumed): what stayed the same is not sent.
pub fn emit_difference<T: Ord>(before: &mut Vec<T>, after: &mut Vec<T>, mut emit: impl FnMut(T, Diff)) {
    before.sort_unstable();
    after.sort_unstable();
    let (mut b, mut a) = (before.drain(..).peekable(), after.drain(..).peekable());
    loop {
        match (b.peek(), a.peek()) {
            (Some(x), Some(y)) if x == y => {
                b.next();
                a.next();
            }
            (Some(x), Some(y)) if x < y => emit(b.next().expect("peeked"), -1),
            (Some(_), Some(_)) => emit(a.next().expect("peeked"), 1),
            (Some(_), None) => emit(b.next().expect("peeked"), -1),
            (None, Some(_)) => emit(a.next().expect("peeked"), 1),
            (None, None) => break,
        }
    }
}
