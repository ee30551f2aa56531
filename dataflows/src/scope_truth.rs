//! Dawid–Skene truth per scope, in the dataflow ([`TruthLogic`]), and the scope's record with the
//! parts formed downstream of it ([`ScopePartsLogic`], in `parts.rs`): its `truth`, its `routing`
//! and, in a scope of comparisons, its `preferences` (with the `mixed_kinds` warning, spec 2.2).
//!
//! EM is global to a scope, so the truth operator keeps every live label of a scope (and its
//! gold answers, for `truth.clamp_gold`) on the worker that owns the scope, and fits the scope
//! when it derives: in a report once, from the final labels, with the cold start that equals
//! crowd-kit ([`crate::truth`]). Live, with [`TruthLogic::refresh`] (`truth.refresh_ms`), a
//! changed scope is refitted at most once per interval, warm started from its previous fit (a
//! few iterations near a fixed point); an epoch that changes it sooner keeps its previous truth.
//! A refit runs in the background (`refit.rs`): the worker that owns the scope takes a snapshot of
//! its labels and goes on with its epochs, and the first epoch after the fit has finished
//! publishes it (the scope's first fit is done in place, in the epoch of its first labels).
//! Every epoch carries a tick ([`ticks`]) that lets the operator look at every scope: a scope
//! whose refit is due is refitted even when that epoch did not change it, and a scope that has
//! stopped changing gets one cold fit once due, which makes its truth the report's. Without
//! `refresh`, every epoch that changes a scope refits it cold (exact at every epoch).
//!
//! A fit derives each item's `truth` (to the item records, [`crate::trust`]), each annotator's
//! `confusion` (to the annotator records) and the scope's `truth` object (priors and iterations,
//! to the scope record).
//!
//! Live (with `refresh`), the items' truths are not kept as the scope's outputs: a fit lists the
//! items whose published truth it changes (`publish.rs`), and the operator publishes them in
//! order, at most [`PUBLISH_PER_EPOCH`] per worker and epoch ([`Keyed::drain`]). A fit that moves
//! every item (the cold settling fit, or the first after a bulk load: a million items at 10M
//! labels) would otherwise re-form every item record in one epoch, holding back every output of
//! that epoch for seconds. While some wait, the engine closes epochs without waiting for input
//! ([`TruthBacklog`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use differential_dataflow::{AsCollection, VecCollection};
use foldhash::fast::RandomState;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;

use crate::dataflow::{Changes, Diff, Time};
use crate::items::ItemRow;
use crate::keyed::Keyed;
use crate::label::LabelId;
use crate::source::{AnnotatorId, Catalog, ItemId, ScopeId};
use crate::truth::{fit, FitOptions, TruthFit, TruthSettings, WarmStart};
pub use parts::{ScopePart, ScopeParts, ScopePartsLogic};
use publish::{retract_all, CategoryNames, Forming, ItemChange, Published};
pub use publish::{TruthBacklog, PUBLISH_PER_EPOCH};
use refit::{Labels, Refit};

mod parts;
mod publish;
mod refit;

/// What the truth operator derives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TruthOut {
    /// An item's truth label, its posterior (`f64` bits) and its `truth` object as JSON.
    /// The JSON is shared: a warm refit re-emits an unchanged item's output without copying it,
    /// and the kept outputs compare equal by pointer first.
    Item { scope: ScopeId, item: ItemId, label: LabelId, p: u64, json: Arc<[u8]> },
    /// An annotator's `confusion` as JSON.
    Annotator { scope: ScopeId, annotator: AnnotatorId, json: Vec<u8> },
    /// The scope's `truth` object as JSON.
    Scope { scope: ScopeId, json: Vec<u8> },
}

/// A scope's live labels and gold answers, and what its last fit derived (live).
#[derive(Debug, Default)]
pub struct ScopeLabels {
    /// Live: `(item, annotator, label)` with multiplicity, consolidated and sorted: the labels as
    /// a background refit found them, given back when it has finished (empty while it runs).
    run: LabelLog,
    /// `(item, annotator, label)` with multiplicity: the updates since the labels of `run`,
    /// appended (or all of them, where no refit has given a run back). A fit consolidates both
    /// (appending is cheaper than a hash map of a million entries, and the fit wants them
    /// sorted). They stay apart until a fit takes them: joining them when a refit gives its run
    /// back copied the whole run on the worker, and held its epoch back by about a second at 8M
    /// labels.
    log: LabelLog,
    /// `(item, gold answer)` with multiplicity.
    gold: HashMap<(ItemId, LabelId), Diff, RandomState>,
    /// Live: the live labels of each category (of `run` and `log` together), for a refit to name
    /// the scope's categories without walking its labels.
    categories: HashMap<LabelId, Diff, RandomState>,
    /// Live: when the scope was last fitted.
    last: Option<Instant>,
    /// Live: where the next fit starts.
    warm: Option<WarmStart>,
    /// Live: how long the last fit took, with its outputs (see [`ScopeLabels::interval`]).
    cost: Duration,
    /// Live: labels changed since the last fit; the last fit was warm started.
    dirty: bool,
    warm_fit: bool,
    /// Live: each item's published output and the posterior it was formed from, against which a
    /// warm refit's is held (`truth.live_tolerance`), ascending by item (as a fit lists them, so
    /// that a refit walks both in step). What the last fit published, including changes still
    /// waiting in [`TruthLogic`]'s queue (which come out in order, before any later fit's).
    /// Shared with a running refit, which reads it, so that the worker never loses track of what
    /// it has published.
    published: Arc<Vec<Published>>,
    /// Live: the refit running in the background, if any (`refit.rs`).
    refit: Option<Refit>,
}

impl ScopeLabels {
    /// Live: the time from one fit of the scope to the next. Ten times the last fit's own time
    /// (a refit also forms the outputs of every item whose truth moved), so that refits of a
    /// large scope take about a tenth of the workers; but at least `refresh`, and at most what
    /// keeps the time between two refits within twice `refresh` (counting the next fit and the
    /// epoch that starts it as the last fit's time again), as long as that leaves at least three
    /// times the fit between refits. So a changed scope's truth is refitted within about
    /// `2 refresh` while a fit takes at most a fifth of that (0.4 s with the default), with
    /// refits taking at most a quarter of the workers' time; a scope too large for that goes back
    /// to a tenth. A warm refit of a million labels (about 0.2 s all told on two cores) is spaced
    /// by 1.6 s, where ten times the fit would be 2 s.
    fn interval(&self, refresh: Duration) -> Duration {
        let spaced = self.cost * FIT_SHARE;
        let within = (refresh * 2).saturating_sub(self.cost * 2);
        let interval = if within >= self.cost * MIN_SHARE { spaced.min(within) } else { spaced };
        refresh.max(interval)
    }
}

/// The published item truths of a scope from which on the last list is freed on a thread of its
/// own ([`TruthLogic::publish`]).
const FREE_ELSEWHERE: usize = 100_000;

/// The inverse of the share of the workers that live refits of one scope take, when their
/// spacing need not be shorter to keep truth within twice `truth.refresh_ms`.
const FIT_SHARE: u32 = 10;

/// The least spacing of refits, in fits: refits shortened to keep truth within twice
/// `truth.refresh_ms` take at most a quarter of the workers' time.
const MIN_SHARE: u32 = 3;

/// One tick per epoch, on every worker: `((), t, +1)` at each time `t` the frontier of `stream`
/// reaches, so that an operator taking the ticks as its side input sees every epoch, empty ones
/// included (see [`TruthLogic`]).
pub fn ticks<'s>(
    stream: Changes<'s, (crate::source::ItemKey, ItemRow)>,
) -> VecCollection<'s, Time, (), Diff> {
    let mut builder = OperatorBuilder::new("Ticks".to_owned(), stream.scope());
    let mut input = builder.new_input(stream, Pipeline);
    let (output, ticks): (_, Changes<'s, ()>) = builder.new_output();
    let mut output = OutputBuilder::<Time, CapacityContainerBuilder<Vec<((), Time, Diff)>>>::from(output);
    builder.build(move |mut initial| {
        let mut held: Option<Capability<Time>> = initial.pop();
        let mut ticked: Option<Time> = None;
        move |frontiers| {
            input.for_each(|_, _| {});
            let Some(capability) = held.as_mut() else { return };
            let Some(&time) = frontiers[0].frontier().first() else {
                held = None;
                return;
            };
            if ticked.is_none_or(|t| t < time) {
                if *capability.time() < time {
                    capability.downgrade(&time);
                }
                output.activate().session(capability).give(((), time, 1));
                ticked = Some(time);
            }
        }
    });
    ticks.as_collection()
}

fn add<K: std::hash::Hash + Eq + Copy>(map: &mut HashMap<K, Diff, RandomState>, key: K, diff: Diff) {
    let n = map.entry(key).or_insert(0);
    *n += diff;
    if *n == 0 {
        map.remove(&key);
    }
}

/// The truth operator's logic.
pub struct TruthLogic {
    pub settings: TruthSettings,
    /// Live: refit a changed scope at most this often, warm started. `None`: every derive is a
    /// cold fit (a report derives once).
    pub refresh: Option<Duration>,
    /// Threads one fit may use (the result does not depend on it, see [`FitOptions::threads`]).
    pub threads: usize,
    /// Whether the items' `truth` objects are rendered (for the item records); without, items
    /// carry only their truth label and posterior, for their routes.
    pub item_json: bool,
    /// Whether each scope is derived once, from its final labels (a report, `Emit::Final`): the
    /// fit then frees the scope's label log, which nothing needs again.
    pub once: bool,
    /// Live: the item truths waiting to be published, in order, and their count for the engine.
    /// Each fit's changes stay its own list (a refit of a large scope lists millions: appending
    /// them to one queue moved them all again, in the worker).
    pub(crate) staged: VecDeque<std::vec::IntoIter<ItemChange>>,
    pub backlog: TruthBacklog,
}

impl Keyed for TruthLogic {
    type Key = ScopeId;
    type Update = ItemRowOf;
    type Diff = Diff;
    type State = ScopeLabels;
    type Out = TruthOut;
    /// Ticks ([`ticks`]), live.
    type Side = ();
    const KEEP_OUTPUTS: bool = true;
    /// Live, a scope is refitted at its own pace, in the background: held until a rebuild has
    /// caught up, its first fit would be the whole rebuilt scope's, in place, holding back the
    /// epoch that publishes the rebuilt state.
    const HOLDS: bool = false;

    fn route(key: &ScopeId) -> u64 {
        *key
    }

    fn apply(&mut self, _: &ScopeId, s: &mut ScopeLabels, &(item, row): &ItemRowOf, &diff: &Diff) {
        s.dirty |= !matches!(row, ItemRow::Label { compared: true, .. });
        match row {
            // Dawid–Skene is over class labels: a comparison's outcome (a system, or a tie) is
            // not one, and a confusion matrix over dozens of systems per annotator would cost
            // more than the rest of the report (spec 2.2: a scope's preference numbers are the
            // leaderboard, position bias and tie rate).
            ItemRow::Label { compared: true, .. } => {}
            ItemRow::Label { annotator, label, compared: false } => {
                s.log.push(((item, annotator, label), diff));
                if self.refresh.is_some() {
                    add(&mut s.categories, label, diff);
                }
            }
            ItemRow::Gold { label } => add(&mut s.gold, (item, label), diff),
        }
    }

    fn derive(&mut self, &scope: &ScopeId, s: &mut ScopeLabels, names: &Catalog, out: &mut Vec<TruthOut>) {
        // A standing scope is not derived: its kept outputs stand (`unchanged`).
        debug_assert!(!self.stands(s), "a standing scope derived");
        if let Some(refit) = s.refit.take() {
            // A background refit has finished: its outputs, in this epoch.
            self.collect(scope, refit, s, out);
            return;
        }
        let started = Instant::now();
        let (labels, gold) = self.snapshot(s);
        if labels.is_empty() {
            self.unpublish(s);
            return;
        }
        let order = |a: &LabelId, b: &LabelId| names.labels.get(*a).spec_cmp(names.labels.get(*b));
        // Live, changed labels start from the previous fit; a scope that stopped changing gets
        // the cold fit, the report's.
        let warm = self.refresh.and(s.warm.as_ref()).filter(|_| s.dirty);
        let gathered = started.elapsed();
        let fitted = match fit(&labels, &gold, order, &self.options(), warm) {
            Ok(fitted) => fitted,
            Err(error) => {
                tracing::error!(%error, scope, "truth not fitted");
                self.unpublish(s);
                return;
            }
        };
        let fit_time = started.elapsed() - gathered;
        let fit = Fit {
            warm: warm.is_some(),
            labels: labels.len(),
            started,
            gathered,
            fit_time,
            background: false,
        };
        self.finish_fit(scope, fitted, fit, s, names, out);
    }

    /// Live: the item truths waiting, in order, at most [`PUBLISH_PER_EPOCH`] in this epoch.
    fn drain(&mut self, emit: &mut dyn FnMut(TruthOut, Diff)) {
        let mut n = 0;
        while let Some(changes) = self.staged.front_mut() {
            for change in changes.by_ref().take(PUBLISH_PER_EPOCH - n) {
                n += 1;
                if let Some(old) = change.retract {
                    emit(old, -1);
                }
                if let Some(new) = change.insert {
                    emit(new, 1);
                }
            }
            if n == PUBLISH_PER_EPOCH {
                break;
            }
            self.staged.pop_front();
        }
        self.backlog.sub(n);
    }

    fn touched(&mut self, _: &ScopeId, s: &ScopeLabels, _: &Catalog) -> bool {
        self.refresh.is_some() && (s.refit.is_some() || s.dirty || s.warm_fit) && !self.stands(s)
    }

    fn is_empty(s: &ScopeLabels) -> bool {
        // A refit holds the log until it gives it back.
        s.run.is_empty() && s.log.is_empty() && s.gold.is_empty() && s.refit.is_none()
    }

    /// Live, between refits: the kept outputs stand, and the operator neither copies nor
    /// compares them (a scope of a million labels has about 200,000 item outputs). A refit that
    /// is due starts in the background (`refit.rs`) and the outputs stand until it has finished;
    /// only a scope's first fit is done in place, so that a new scope has truth in the epoch of
    /// its first labels.
    fn unchanged(&mut self, &scope: &ScopeId, s: &mut ScopeLabels, names: &Catalog) -> bool {
        if self.stands(s) {
            return true;
        }
        if s.refit.is_some() || s.last.is_none() {
            return false;
        }
        // The worker's share of a refit, from here: what it takes from the epoch that starts it.
        let started = Instant::now();
        let gold = s.gold.iter().filter(|(_, n)| **n > 0).map(|(&k, _)| k).collect();
        let warm = if s.dirty { s.warm.take() } else { None };
        let categories = s.categories.keys().copied().collect();
        let labels = Labels { run: std::mem::take(&mut s.run), log: std::mem::take(&mut s.log), categories };
        let updates = labels.run.len() + labels.log.len();
        let published = Arc::clone(&s.published);
        match Refit::start(labels, gold, names, self.options(), warm, self.forming(scope), published) {
            Ok(refit) => {
                let start_us = started.elapsed().as_micros() as u64;
                tracing::debug!(scope, updates, warm = refit.warm, start_us, "truth refit started");
                s.refit = Some(refit);
                // Labels that change from now on are the next refit's.
                s.dirty = false;
                true
            }
            Err(refused) => {
                tracing::warn!(error = %refused.error, scope, "no thread for the refit; refitting in place");
                (s.run, s.log, s.warm) = (refused.run, refused.log, refused.warm);
                false
            }
        }
    }
}

/// A label as a fit takes it: `(item, annotator, label)`.
type FitLabel = (ItemId, AnnotatorId, LabelId);

/// A scope's labels with multiplicities ([`ScopeLabels`]).
type LabelLog = Vec<(FitLabel, Diff)>;

/// How a fit went, for its log line and the spacing of the next ([`ScopeLabels::interval`]).
struct Fit {
    warm: bool,
    labels: usize,
    started: Instant,
    gathered: Duration,
    fit_time: Duration,
    /// Whether it ran in the background ([`Refit`]), else in place.
    background: bool,
}

impl Fit {
    fn log(&self, scope: ScopeId, iterations: u32, items_formed: usize, outputs: Duration) {
        tracing::debug!(
            scope,
            labels = self.labels,
            iterations,
            warm = self.warm,
            background = self.background,
            items_formed,
            gather_ms = self.gathered.as_millis() as u64,
            fit_ms = self.fit_time.as_millis() as u64,
            outputs_ms = outputs.as_millis() as u64,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "truth fitted"
        );
    }
}

impl TruthLogic {
    /// Live, whether the last fit's outputs stand: a refit is running, or not due yet, or there
    /// is nothing to refit (no label changed, and the last fit was the settling cold one).
    fn stands(&self, s: &ScopeLabels) -> bool {
        if let Some(refit) = &s.refit {
            return !refit.finished();
        }
        match (self.refresh, &s.last) {
            (Some(refresh), Some(at)) => at.elapsed() < s.interval(refresh) || !(s.dirty || s.warm_fit),
            _ => false,
        }
    }

    /// Takes a finished background refit's consolidated labels back as the scope's run (the
    /// updates since it started stay in the log, after it), and its outputs.
    fn collect(&mut self, scope: ScopeId, refit: Refit, s: &mut ScopeLabels, out: &mut Vec<TruthOut>) {
        let (warm, started) = (refit.warm, refit.started);
        s.last = Some(Instant::now());
        let done = match refit.join() {
            Ok(done) => done,
            Err(error) => {
                // Not reached: the refit's own work catches its panics and gives the log back.
                tracing::error!(%error, scope, "the scope's labels are lost to its truth; restart the service");
                self.unpublish(s);
                return;
            }
        };
        s.run = done.log;
        let formed = match done.formed {
            Ok(Some(formed)) => formed,
            Ok(None) => return self.unpublish(s),
            Err(error) => {
                tracing::error!(%error, scope, "truth not refitted");
                return self.unpublish(s);
            }
        };
        out.extend(formed.out);
        Self::publish(s, formed.published);
        self.stage(formed.changes);
        s.warm = Some(formed.warm);
        s.warm_fit = warm;
        s.cost = done.gathered + done.fit_time + formed.outputs_time;
        let fit = Fit {
            warm,
            labels: formed.labels,
            started,
            gathered: done.gathered,
            fit_time: done.fit_time,
            background: true,
        };
        fit.log(scope, formed.iterations, formed.items_formed, formed.outputs_time);
    }

    /// The scope's live labels (`(item, annotator, label)`, sorted) and gold answers: what a fit
    /// takes. Consolidates the label log (a report's fit then frees it).
    fn snapshot(&self, s: &mut ScopeLabels) -> (Vec<FitLabel>, Vec<(ItemId, LabelId)>) {
        // Live, a sorted run (the labels as of the last fit) and the updates since: a stable sort
        // finds the run, sorts the few others and merges, in about linear time. The report's one
        // fit gets the labels in no order: they are sorted on the fit's threads. Either way
        // consolidation gets a sorted slice.
        // After refits, a fit in place (where the system refused a refit its thread) joins them.
        s.log = joined(std::mem::take(&mut s.run), std::mem::take(&mut s.log));
        if self.refresh.is_some() {
            s.log.sort_by_key(|&(key, _)| key);
        } else {
            sort_on(&mut s.log, self.threads);
        }
        differential_dataflow::consolidation::consolidate(&mut s.log);
        let labels = s.log.iter().filter(|(_, n)| *n > 0).map(|&(k, _)| k).collect();
        if self.once {
            // A report fits once: its log is not needed again, and freeing it before the fit
            // takes it out of the report's peak memory (32 bytes a label).
            s.log = Vec::new();
        }
        let gold = s.gold.iter().filter(|(_, n)| **n > 0).map(|(&k, _)| k).collect();
        (labels, gold)
    }

    /// Live: queues changes of item truths, to be published in order ([`Keyed::drain`]).
    fn stage(&mut self, changes: Vec<ItemChange>) {
        if !changes.is_empty() {
            self.backlog.add(changes.len());
            self.staged.push_back(changes.into_iter());
        }
    }

    /// Live: the items' truths published from now on. The last list goes elsewhere to be freed
    /// when it is large: at 10M labels it holds two million outputs, whose freeing held back the
    /// worker's epoch by about 0.1 s.
    fn publish(s: &mut ScopeLabels, published: Vec<Published>) {
        let last = std::mem::replace(&mut s.published, Arc::new(published));
        if last.len() >= FREE_ELSEWHERE {
            let freeing = std::thread::Builder::new().name("labelqc-free".into()).spawn(move || drop(last));
            // Without a thread, the worker frees it.
            drop(freeing);
        }
    }

    /// Live: retracts every item truth the scope has published (it has no live label, or its
    /// fit failed: its other outputs go too, as it derives none).
    fn unpublish(&mut self, s: &mut ScopeLabels) {
        self.stage(retract_all(&s.published));
        Self::publish(s, Vec::new());
    }

    fn forming(&self, scope: ScopeId) -> Forming {
        Forming {
            scope,
            item_json: self.item_json,
            tolerance: self.settings.live_tolerance,
            live: self.refresh.is_some(),
        }
    }

    fn options(&self) -> FitOptions {
        FitOptions { clamp_gold: self.settings.clamp_gold, threads: self.threads, ..FitOptions::default() }
    }

    /// The outputs of a finished fit, its log line, and (live) where the next one starts.
    fn finish_fit(
        &mut self,
        scope: ScopeId,
        fitted: TruthFit,
        fit: Fit,
        s: &mut ScopeLabels,
        names: &Catalog,
        out: &mut Vec<TruthOut>,
    ) {
        let formed_at = Instant::now();
        let outputs = self.forming(scope).outputs(&fitted, fit.warm, &s.published, names, out);
        Self::publish(s, outputs.published);
        self.stage(outputs.changes);
        let items = outputs.formed;
        let outputs = formed_at.elapsed();
        fit.log(scope, fitted.iterations(), items, outputs);
        if self.refresh.is_some() {
            s.cost = fit.gathered + fit.fit_time + outputs;
            s.last = Some(Instant::now());
            s.warm_fit = fit.warm;
            s.dirty = false;
            s.warm = Some(fitted.into_warm_start());
        }
    }
}

/// Sorts a scope's label log by label on `threads` threads (in this one for a small log, or when
/// the system refuses threads): the order of equal labels does not matter, as they are
/// consolidated next.
fn sort_on(log: &mut [((ItemId, AnnotatorId, LabelId), Diff)], threads: usize) {
    use rayon::slice::ParallelSliceMut;
    const PARALLEL: usize = 1 << 16;
    let pool = if log.len() >= PARALLEL { crate::truth::fit_threads(threads) } else { None };
    match pool {
        Some(pool) => pool.install(|| log.par_sort_unstable_by_key(|&(key, _)| key)),
        None => log.sort_unstable_by_key(|&(key, _)| key),
    }
}

/// A scope's labels as one log: `run` (a refit's consolidated labels), then `updates`, the
/// changes since, appended (no copy where there is no run).
fn joined(mut run: LabelLog, mut updates: LabelLog) -> LabelLog {
    if run.is_empty() {
        return updates;
    }
    run.append(&mut updates);
    run
}

/// A row of one of the scope's items: `(item, row)`.
pub type ItemRowOf = (ItemId, ItemRow);

#[cfg(test)]
mod tests;
