//! Live refits in the background. A refit of a large scope takes from a tenth of a second (warm)
//! to about a second (a million labels, a few hundred EM iterations cold): done in the worker that
//! owns the scope, it would hold back every epoch of that worker, and so the freshness of every
//! output, for that long. Instead the worker hands the scope's label log, its gold answers, the
//! names of its categories and its published item outputs to a thread of its own
//! ([`Refit::start`]) and goes on; labels that change meanwhile are logged afresh. The thread
//! consolidates the log, fits, and forms the outputs; the first epoch after it has finished takes
//! the log back (the updates since go after it) and the outputs ([`Refit::finished`],
//! [`Refit::join`]). A fit is a deterministic function of the labels it is given, so the outputs
//! are the ones an in-place fit of the same labels gives; only the epoch they appear in is later.
//! The thread, and the threads its fit starts, run behind the workers ([`REFIT_NICE`]).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;

use super::{CategoryNames, FitLabel, Forming, ItemChange, LabelLog, Published, TruthOut};
use crate::label::{Label, LabelId};
use crate::source::{Catalog, ItemId};
use crate::truth::{fit, FitOptions, WarmStart};

/// How far behind the workers a refit's threads are scheduled: their nice value is raised by this
/// much (on Linux a nice value is a thread's own, and the threads a thread starts inherit it). On
/// a machine whose cores the workers keep busy, the workers' epochs, which carry every exact
/// number, go first and a refit takes the time they leave: a refit of a 10M-label scope takes
/// seconds of CPU, and on 2 cores it delayed the epochs that ran beside it. Truth follows later
/// under load, as it already follows at the scope's next refit.
const REFIT_NICE: i32 = 10;

/// Raises the calling thread's nice value by [`REFIT_NICE`]; where the system refuses, the refit
/// runs at the workers' priority, and says so at debug level.
fn run_behind_the_workers() {
    #[cfg(target_os = "linux")]
    {
        // `nice` changes the calling thread's nice value on Linux (glibc's getpriority and
        // setpriority on the calling task); -1 can be a valid result, so errno tells failure.
        // SAFETY: no pointers; errno is the calling thread's.
        let failed = unsafe {
            *libc::__errno_location() = 0;
            libc::nice(REFIT_NICE) == -1 && *libc::__errno_location() != 0
        };
        if failed {
            let error = std::io::Error::last_os_error();
            tracing::debug!(%error, "a refit runs at the workers' priority");
        }
    }
}

/// A fit running on its own thread.
#[derive(Debug)]
pub(super) struct Refit {
    thread: JoinHandle<Done>,
    /// Whether it started from the previous fit (else cold: the scope stopped changing).
    pub warm: bool,
    /// When it started.
    pub started: Instant,
}

/// What a refit gives back: the scope's label log, consolidated (the updates since the refit
/// started go after it), and its outputs.
pub(super) struct Done {
    pub log: LabelLog,
    /// `None`: the scope has no live label.
    pub formed: Result<Option<Formed>, String>,
    /// How long consolidating the log and listing the labels took, and the fit.
    pub gathered: Duration,
    pub fit_time: Duration,
}

/// A refit's outputs.
pub(super) struct Formed {
    pub out: Vec<TruthOut>,
    /// The items' outputs as published from now on, the changes of their published ones, and
    /// how many were formed anew.
    pub published: Vec<Published>,
    pub changes: Vec<ItemChange>,
    pub items_formed: usize,
    pub labels: usize,
    pub iterations: u32,
    pub warm: WarmStart,
    pub outputs_time: Duration,
}

/// A scope's labels as its worker keeps them, for a refit.
pub(super) struct Labels {
    /// Consolidated and sorted: the labels a finished refit gave back.
    pub run: LabelLog,
    /// The updates since (appended to `run` on the refit's thread).
    pub log: LabelLog,
    /// The categories of the live labels of `run` and `log`, once each (the worker keeps their
    /// counts, so that it does not walk millions of labels to name a scope's few categories).
    pub categories: Vec<LabelId>,
}

impl Refit {
    /// Starts a refit on a thread named `labelqc-refit`: it consolidates the scope's `labels`,
    /// fits the live ones with `gold`, warm started from `warm` when given, and forms the outputs
    /// against the `published` ones. The names of the categories (`labels.categories` and those
    /// of `gold`) are copied from `names` now: the thread does not read the catalog, which the
    /// workers keep changing. A panic in the thread is caught, and the log comes back.
    ///
    /// # Errors
    /// The system refused the thread; the labels, the warm start and the published outputs come back
    /// with the error, for the caller to fit in place.
    pub fn start(
        labels: Labels,
        gold: Vec<(ItemId, LabelId)>,
        names: &Catalog,
        options: FitOptions,
        warm: Option<WarmStart>,
        forming: Forming,
        published: Arc<Vec<Published>>,
    ) -> Result<Refit, Box<Refused>> {
        let started = Instant::now();
        let Labels { run, log, categories } = labels;
        let categories = Categories::of(categories, &gold, names);
        let is_warm = warm.is_some();
        // The labels and the warm start go to the thread once it runs, so that they are still here
        // if the system refuses it. It reads the published outputs, which the worker keeps.
        let (give, take) = std::sync::mpsc::channel::<(LabelLog, LabelLog, Option<WarmStart>)>();
        let spawned = std::thread::Builder::new().name("labelqc-refit".into()).spawn(move || {
            let (run, updates, warm) = take.recv().expect("the worker sends the refit its input");
            run_behind_the_workers();
            // Joined here, not on the worker: at millions of labels the copy takes a while.
            let mut log = super::joined(run, updates);
            let work = AssertUnwindSafe(|| {
                refit(&mut log, &gold, &categories, &options, warm.as_ref(), forming, &published)
            });
            let (formed, gathered, fit_time) = std::panic::catch_unwind(work).unwrap_or_else(|panic| {
                let cause = crate::panic_message(panic.as_ref()).unwrap_or("a panic");
                (Err(format!("the refit panicked: {cause}")), Duration::ZERO, Duration::ZERO)
            });
            Done { log, formed, gathered, fit_time }
        });
        match spawned {
            Ok(thread) => {
                give.send((run, log, warm)).expect("the refit thread waits for its input");
                Ok(Refit { thread, warm: is_warm, started })
            }
            Err(error) => Err(Box::new(Refused { error, run, log, warm })),
        }
    }

    /// Whether the refit has finished (then [`Refit::join`] does not wait).
    pub fn finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// What the refit gives back (waiting for it if it has not finished).
    ///
    /// # Errors
    /// The thread stopped without giving the log back (a panic outside the refit's own work).
    pub fn join(self) -> Result<Done, String> {
        self.thread.join().map_err(|_| "the refit thread stopped without giving its labels back".to_string())
    }
}

/// A refit the system had no thread for, with what it was given back.
pub(super) struct Refused {
    pub error: std::io::Error,
    pub run: LabelLog,
    pub log: LabelLog,
    pub warm: Option<WarmStart>,
}

/// The refit's work: consolidate, fit, form the outputs.
fn refit(
    log: &mut LabelLog,
    gold: &[(ItemId, LabelId)],
    categories: &Categories,
    options: &FitOptions,
    warm: Option<&WarmStart>,
    forming: Forming,
    published: &[Published],
) -> (Result<Option<Formed>, String>, Duration, Duration) {
    let start = Instant::now();
    // A sorted run (the labels as of the last fit) and the updates since: a stable sort finds
    // the run, sorts the few others and merges, in about linear time.
    log.sort_by_key(|&(key, _)| key);
    differential_dataflow::consolidation::consolidate(log);
    let labels: Vec<FitLabel> = log.iter().filter(|(_, n)| *n > 0).map(|&(k, _)| k).collect();
    let gathered = start.elapsed();
    if labels.is_empty() {
        return (Ok(None), gathered, Duration::ZERO);
    }
    let order = |a: &LabelId, b: &LabelId| categories.rank[a].cmp(&categories.rank[b]);
    let fitted = match fit(&labels, gold, order, options, warm) {
        Ok(fitted) => fitted,
        Err(error) => return (Err(error.to_string()), gathered, start.elapsed() - gathered),
    };
    let fit_time = start.elapsed() - gathered;
    let formed_at = Instant::now();
    let mut out = Vec::new();
    let outputs = forming.outputs(&fitted, warm.is_some(), published, &categories.names, &mut out);
    let outputs_time = formed_at.elapsed();
    let iterations = fitted.iterations();
    let formed = Formed {
        out,
        published: outputs.published,
        changes: outputs.changes,
        items_formed: outputs.formed,
        labels: labels.len(),
        iterations,
        warm: fitted.into_warm_start(),
        outputs_time,
    };
    (Ok(Some(formed)), gathered, fit_time)
}

/// The categories a scope's labels and gold answers use: their names, and their ranks in the
/// spec's label order (`Label::spec_cmp`).
struct Categories {
    names: HashMap<LabelId, Label, RandomState>,
    rank: HashMap<LabelId, usize, RandomState>,
}

impl Categories {
    /// The categories `used` by the labels and those of `gold`.
    fn of(mut used: Vec<LabelId>, gold: &[(ItemId, LabelId)], names: &Catalog) -> Categories {
        used.extend(gold.iter().map(|&(_, l)| l));
        used.sort_unstable();
        used.dedup();
        used.sort_by(|a, b| names.name(*a).spec_cmp(names.name(*b)));
        Categories {
            names: used.iter().map(|&id| (id, names.name(id).clone())).collect(),
            rank: used.iter().enumerate().map(|(rank, &id)| (id, rank)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::truth::TruthFit;

    /// `item x annotator` labels over three categories, and two gold answers.
    fn scope(catalog: &mut Catalog) -> (Vec<FitLabel>, Vec<(ItemId, LabelId)>) {
        let ids: Vec<LabelId> = ["b", "a", "c"]
            .iter()
            .map(|n| catalog.label(&crate::label::RawLabel::String((*n).into())).unwrap())
            .collect();
        let mut labels = Vec::new();
        for item in 0..40u64 {
            for annotator in 0..5u64 {
                labels.push((item, annotator, ids[((item + annotator * (item % 3)) % 3) as usize]));
            }
        }
        (labels, vec![(0, ids[1]), (1, ids[0])])
    }

    #[test]
    fn a_refit_gives_the_outputs_of_a_fit_in_place_and_the_log_back() {
        let mut catalog = Catalog::default();
        let (labels, gold) = scope(&mut catalog);
        let forming = Forming { scope: 7, item_json: true, tolerance: 0.0, live: true };
        let options = FitOptions::default();
        let order = |a: &LabelId, b: &LabelId| catalog.labels.get(*a).spec_cmp(catalog.labels.get(*b));
        let in_place: TruthFit = fit(&labels, &gold, order, &options, None).unwrap();
        let mut expected = Vec::new();
        let outputs = forming.outputs(&in_place, false, &[], &catalog, &mut expected);

        // The labels as the worker keeps them: a run, and the updates since: a relabel's
        // retraction and insertion, and a label added and deleted.
        let run: LabelLog = labels.iter().map(|&l| (l, 1)).collect();
        let (item, annotator, label) = labels[3];
        let log = vec![
            ((item, annotator, label), -1),
            ((item, annotator, label), 1),
            ((99, 0, label), 1),
            ((99, 0, label), -1),
        ];
        let mut categories: Vec<LabelId> = labels.iter().map(|&(_, _, l)| l).collect();
        categories.sort_unstable();
        categories.dedup();
        let taken = Labels { run, log, categories };
        let refit = Refit::start(taken, gold, &catalog, options, None, forming, Arc::default()).ok().unwrap();
        let done = refit.join().unwrap();
        let formed = done.formed.unwrap().unwrap();
        assert_eq!(formed.out, expected);
        // Live, every item's truth is a change to publish: an insertion, as none was published.
        assert_eq!(formed.changes.len(), 40);
        assert_eq!(formed.changes, outputs.changes);
        assert_eq!(formed.iterations, in_place.iterations());
        assert_eq!(formed.labels, labels.len());
        let consolidated: LabelLog = labels.iter().map(|&l| (l, 1)).collect();
        assert_eq!(done.log, consolidated, "the log comes back consolidated");
    }

    #[test]
    fn a_scope_without_live_labels_forms_nothing() {
        let mut catalog = Catalog::default();
        let (labels, _) = scope(&mut catalog);
        let log: LabelLog = vec![(labels[0], 1), (labels[0], -1)];
        let forming = Forming { scope: 7, item_json: true, tolerance: 0.0, live: true };
        let taken = Labels { run: Vec::new(), log, categories: Vec::new() };
        let refit =
            Refit::start(taken, Vec::new(), &catalog, FitOptions::default(), None, forming, Arc::default())
                .ok()
                .unwrap();
        let done = refit.join().unwrap();
        assert!(done.formed.unwrap().is_none());
        assert!(done.log.is_empty());
    }

    #[cfg(target_os = "linux")]
    /// The calling thread's nice value.
    fn nice() -> i32 {
        // SAFETY: no pointers; `getpriority(PRIO_PROCESS, 0)` reads the calling thread's on Linux.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_refit_thread_runs_behind_the_workers_and_only_it() {
        let before = nice();
        let refit = std::thread::spawn(move || {
            run_behind_the_workers();
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(refit, (before + REFIT_NICE).min(19));
        assert_eq!(nice(), before, "the calling thread keeps its priority");
    }
}
