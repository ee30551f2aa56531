//! Names inside the dataflow: records are rendered where they are computed, so every worker needs
//! the names of what it renders. The readers emit the names they learn as a stream of the
//! dataflow, at the epoch of the events that use them; an item's name goes to the worker that owns
//! the item ([`crate::items::item_owner`]), every other name (scopes, windows, annotators, labels:
//! few) to every worker. Each worker applies them to its own [`Catalog`], and every operator that
//! renders processes an epoch only once the names' frontier has passed it ([`Names::gate`]), so the
//! names of an epoch are there whichever worker or process read them.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::{Broadcast, Partition};
use timely::dataflow::operators::{Concat, Exchange};
use timely::dataflow::Stream;

use crate::dataflow::Time;
use crate::items::item_owner;
use crate::source::{Catalog, Name};

/// Called with the reason when a name's id stands for another name already.
pub type OnError = Arc<dyn Fn(String) + Send + Sync>;

/// One worker's names: its catalog, and a stream whose frontier passes an epoch once every name of
/// that epoch is in the catalog.
pub struct Names<'s> {
    pub catalog: Rc<RefCell<Catalog>>,
    pub gate: Stream<'s, Time, Vec<()>>,
    /// Which epochs are held (live; `None`: none is): every worker's word on each epoch, on every
    /// worker. `true` from a worker whose input is part of a rebuild that nobody reads until it
    /// has caught up; an epoch is held when some worker says `true` of it. Keyed operators apply
    /// a held epoch's updates without deriving ([`crate::keyed`]), and derive at the first epoch
    /// that is not held, which a worker marks with `false` as its hold ends.
    pub holds: Option<Stream<'s, Time, Vec<bool>>>,
}

/// Routes `names` (each at the epoch of the events that use it) to the workers that need them and
/// applies them to each worker's catalog. A name whose id stands for another name is reported to
/// `on_error` (and the first name kept).
pub fn names<'s>(names: Stream<'s, Time, Vec<Name>>, on_error: OnError) -> Names<'s> {
    let mut parts = names.partition(2, |name| (u64::from(!matches!(name, Name::Item { .. })), name));
    let others = parts.pop().expect("two parts").broadcast();
    let items = parts.pop().expect("two parts");
    let catalog = Rc::new(RefCell::new(Catalog::default()));
    let applied = catalog.clone();
    let items = items.exchange(|name: &Name| match name {
        Name::Item { id, .. } => item_owner(*id),
        _ => 0,
    });
    let gate = items.concat(others).unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "Names",
        move |_, _| {
            move |(input, _), _output| {
                input.for_each(|_, data| {
                    let mut catalog = applied.borrow_mut();
                    for name in data.drain(..) {
                        if let Err(error) = catalog.learn(&name) {
                            on_error(error.to_string());
                        }
                    }
                });
            }
        },
    );
    Names { catalog, gate, holds: None }
}
