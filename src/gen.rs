//! `labelqc gen`: a seeded generator of realistic label traffic. A workforce of annotators with
//! their own accuracies and speeds (and a few spammers and biased annotators) labels items of one
//! or more (project, task) scopes; some items are gold questions; a share of events relabel or
//! delete an earlier label. For drift scenarios, some careful annotators can turn careless from a
//! given event time (their error rate multiplied), and some gold answers can be published wrong
//! and corrected at the end. For a demonstration, the workforce can instead be a healthy one
//! (careful annotators of accuracies in a range) with a given number of planted problems: spammers,
//! biased annotators and annotators who turn careless. The same seed and settings always write
//! the same bytes. Pairwise preference traffic (`labelqc gen --preferences`) is [`preferences`].

use std::io::{self, Write};

use chrono::{DateTime, SecondsFormat};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, LogNormal, WeightedIndex};

pub mod preferences;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenSpec {
    /// Label events to write (labels, relabels and deletes together).
    pub events: u64,
    pub annotators: u32,
    /// Distinct annotators per item.
    pub labels_per_item: u32,
    /// Number of classes (label values).
    pub classes: u32,
    /// Share of items that are gold questions.
    pub gold_rate: f64,
    /// Share of events that change an earlier label.
    pub relabel_rate: f64,
    /// Share of events that delete an earlier label.
    pub delete_rate: f64,
    /// Share of annotators who answer at random.
    pub spammer_share: f64,
    /// Share of annotators who favour one class.
    pub biased_share: f64,
    pub projects: u32,
    pub tasks: u32,
    /// Labels are the numbers 1..=classes (a rating scale) instead of class names.
    pub numeric_labels: bool,
    pub seed: u64,
    /// Event time of the first event, epoch milliseconds.
    pub start_ms: i64,
    /// Mean event-time gap between events, milliseconds.
    pub mean_gap_ms: f64,
    /// Accuracy of every careful annotator (drawn from Beta(9, 1.5) per annotator without it).
    pub careful_accuracy: Option<f64>,
    /// Accuracies of careful annotators drawn uniformly from `[low, high]` instead (when
    /// `careful_accuracy` is not set).
    pub careful_accuracy_range: Option<(f64, f64)>,
    /// Exact numbers of planted problem annotators; with it, `spammer_share`, `biased_share` and
    /// `careless_share` are ignored.
    pub planted: Option<Planted>,
    /// Share of careful annotators who turn careless at `careless_from_ms` ...
    pub careless_share: f64,
    /// ... (event time, epoch milliseconds) ...
    pub careless_from_ms: i64,
    /// ... when their error rate is multiplied by this.
    pub careless_factor: f64,
    /// Share of gold items first published with a wrong answer, corrected at the end.
    pub wrong_gold_rate: f64,
}

impl Default for GenSpec {
    fn default() -> Self {
        GenSpec {
            events: 100_000,
            annotators: 200,
            labels_per_item: 5,
            classes: 4,
            gold_rate: 0.05,
            relabel_rate: 0.01,
            delete_rate: 0.002,
            spammer_share: 0.02,
            biased_share: 0.05,
            projects: 1,
            tasks: 1,
            numeric_labels: false,
            seed: 42,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            mean_gap_ms: 500.0,
            careful_accuracy: None,
            careful_accuracy_range: None,
            planted: None,
            careless_share: 0.0,
            careless_from_ms: 1_767_225_600_000 + 30 * 86_400_000,
            careless_factor: 2.0,
            wrong_gold_rate: 0.0,
        }
    }
}

/// Exact numbers of problem annotators to plant in an otherwise careful workforce, at seeded
/// places in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Planted {
    /// Annotators who answer at random, fast.
    pub spammers: u32,
    /// Annotators who give the rarest class (the last) half of the time, whatever the item.
    pub biased: u32,
    /// Careful annotators who turn careless at `careless_from_ms`: right 93% of the time before,
    /// and erring `careless_factor` times as often after.
    pub careless: u32,
}

impl Planted {
    fn total(&self) -> u32 {
        self.spammers + self.biased + self.careless
    }
}

/// Share of labels a planted biased annotator gives its favourite class.
const PLANTED_PULL: f64 = 0.5;
/// Accuracy of a planted careless annotator before it turns careless.
const PLANTED_CARELESS_ACCURACY: f64 = 0.93;

/// Why a spec cannot be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("invalid generator setting `{field}`: {message}")]
    Spec { field: &'static str, message: String },
    #[error("cannot write generated data: {0}")]
    Io(#[from] io::Error),
}

/// Counts of what was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenSummary {
    pub labels: u64,
    pub relabels: u64,
    pub deletes: u64,
    pub items: u64,
    pub gold_items: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    /// Answers right with `accuracy`; from `careless_from_ms` on, errs `careless_factor` times as
    /// often.
    Careful {
        accuracy: f64,
        careless_from_ms: Option<i64>,
    },
    Spammer,
    Biased {
        accuracy: f64,
        favourite: u32,
        pull: f64,
    },
}

struct Annotator {
    name: String,
    behaviour: Behaviour,
    speed: LogNormal<f64>,
}

const CLASS_NAMES: [&str; 8] =
    ["positive", "negative", "neutral", "mixed", "off_topic", "toxic", "spam", "unclear"];

impl GenSpec {
    fn validate(&self) -> Result<(), GenError> {
        let spec = |field, message: &str| Err(GenError::Spec { field, message: message.into() });
        if self.annotators < 2 {
            return spec("annotators", "needs at least 2 annotators");
        }
        if self.labels_per_item == 0 || self.labels_per_item > self.annotators {
            return spec("labels_per_item", "must be between 1 and the number of annotators");
        }
        if self.classes < 2 {
            return spec("classes", "needs at least 2 classes");
        }
        if self.projects == 0 || self.tasks == 0 {
            return spec("projects", "projects and tasks must be at least 1");
        }
        for (field, rate) in [
            ("gold_rate", self.gold_rate),
            ("relabel_rate", self.relabel_rate),
            ("delete_rate", self.delete_rate),
            ("spammer_share", self.spammer_share),
            ("biased_share", self.biased_share),
            ("careless_share", self.careless_share),
            ("wrong_gold_rate", self.wrong_gold_rate),
            ("careful_accuracy", self.careful_accuracy.unwrap_or(0.5)),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return spec(field, "must be between 0 and 1");
            }
        }
        if let Some((low, high)) = self.careful_accuracy_range {
            if !(0.0..=1.0).contains(&low) || !(0.0..=1.0).contains(&high) || low > high {
                return spec("careful_accuracy_range", "must be a range within 0 to 1, low first");
            }
        }
        if let Some(planted) = self.planted {
            if planted.total() > self.annotators / 2 {
                return spec("planted", "at most half of the annotators can be planted problems");
            }
        }
        if self.relabel_rate + self.delete_rate >= 1.0 {
            return spec("relabel_rate", "relabel_rate + delete_rate must stay under 1");
        }
        if !(self.careless_factor >= 1.0 && self.careless_factor.is_finite()) {
            return spec("careless_factor", "must be at least 1");
        }
        if !self.mean_gap_ms.is_finite() || self.mean_gap_ms <= 0.0 {
            return spec("mean_gap_ms", "must be positive");
        }
        Ok(())
    }

    fn label_text(&self, class: u32) -> String {
        if self.numeric_labels {
            (class + 1).to_string()
        } else if (class as usize) < CLASS_NAMES.len() && self.classes as usize <= CLASS_NAMES.len() {
            format!("\"{}\"", CLASS_NAMES[class as usize])
        } else {
            format!("\"class_{class}\"")
        }
    }

    fn scope_fields(&self, scope: u32) -> String {
        let mut fields = String::new();
        if self.projects > 1 {
            fields.push_str(&format!(",\"project\":\"project-{}\"", scope / self.tasks));
        }
        if self.tasks > 1 {
            fields.push_str(&format!(",\"task\":\"task-{}\"", scope % self.tasks));
        }
        fields
    }
}

/// An endless, seeded stream of label traffic: [`Traffic::next_event`] writes one label event
/// (and, when it opens a gold item, that item's gold answer). `labelqc gen` writes a fixed number
/// of them; `labelqc demo` feeds them live.
pub struct Traffic {
    spec: GenSpec,
    rng: ChaCha8Rng,
    workforce: Vec<Annotator>,
    class_prior: WeightedIndex<f64>,
    scope_fields: Vec<String>,
    labels_text: Vec<String>,
    /// Recent (item, annotator, scope, truth) identities that a relabel or delete can target.
    recent: Vec<(u64, u32, u32, u32)>,
    /// (annotator, truth) of the labels still to come for the current item.
    pending: Vec<(u32, u32)>,
    item: u64,
    item_scope: u32,
    item_truth: u32,
    now_ms: f64,
    summary: GenSummary,
    /// Draws for the drift scenarios, apart from the main stream so that they leave it as it was.
    scenario_rng: ChaCha8Rng,
    /// Gold items published wrong: `(item, scope, truth)`, to correct at the end.
    wrong_gold: Vec<(u64, u32, u32)>,
}

/// How many recent labels a relabel or delete may target.
const RECENT: usize = 4096;

impl Traffic {
    /// A stream for `spec` (its `events` is ignored: the stream does not end).
    pub fn new(spec: &GenSpec) -> Result<Traffic, GenError> {
        spec.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let accuracy = Beta::new(9.0, 1.5).expect("valid beta");
        let workforce: Vec<Annotator> = (0..spec.annotators)
            .map(|i| {
                let roll: f64 = rng.gen();
                let behaviour = if roll < spec.spammer_share {
                    Behaviour::Spammer
                } else if roll < spec.spammer_share + spec.biased_share {
                    Behaviour::Biased {
                        accuracy: accuracy.sample(&mut rng),
                        favourite: rng.gen_range(0..spec.classes),
                        pull: rng.gen_range(0.3..0.6),
                    }
                } else {
                    let drawn = accuracy.sample(&mut rng);
                    Behaviour::Careful {
                        accuracy: spec.careful_accuracy.unwrap_or(drawn),
                        careless_from_ms: None,
                    }
                };
                let median_s: f64 = match behaviour {
                    Behaviour::Spammer => rng.gen_range(1.0..3.0),
                    _ => rng.gen_range(6.0..30.0),
                };
                Annotator { name: format!("ann-{i:05}"), behaviour, speed: speed(median_s) }
            })
            .collect();
        let mut scenario_rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5ce7_a410);
        let mut workforce = workforce;
        if spec.careful_accuracy.is_none() {
            if let Some((low, high)) = spec.careful_accuracy_range {
                for annotator in &mut workforce {
                    if let Behaviour::Careful { accuracy, .. } = &mut annotator.behaviour {
                        *accuracy = low + (high - low) * scenario_rng.gen::<f64>();
                    }
                }
            }
        }
        match spec.planted {
            Some(planted) => plant(&mut workforce, planted, spec, &mut scenario_rng),
            None => {
                for annotator in &mut workforce {
                    if let Behaviour::Careful { careless_from_ms, .. } = &mut annotator.behaviour {
                        if spec.careless_share > 0.0 && scenario_rng.gen_bool(spec.careless_share) {
                            *careless_from_ms = Some(spec.careless_from_ms);
                        }
                    }
                }
            }
        }
        let class_prior =
            WeightedIndex::new((0..spec.classes).map(|k| 1.0 / f64::from(k + 1))).expect("positive weights");
        let scopes = spec.projects * spec.tasks;
        Ok(Traffic {
            scope_fields: (0..scopes).map(|s| spec.scope_fields(s)).collect(),
            labels_text: (0..spec.classes).map(|k| spec.label_text(k)).collect(),
            spec: spec.clone(),
            rng,
            workforce,
            class_prior,
            recent: Vec::with_capacity(RECENT),
            pending: Vec::new(),
            item: 0,
            item_scope: 0,
            item_truth: 0,
            now_ms: spec.start_ms as f64,
            summary: GenSummary::default(),
            scenario_rng,
            wrong_gold: Vec::new(),
        })
    }

    /// Every annotator's name and behaviour: `careful`, `careless` (turns careless), `spammer`
    /// or `biased`.
    pub fn roster(&self) -> Vec<(String, &'static str)> {
        self.workforce
            .iter()
            .map(|a| {
                let kind = match a.behaviour {
                    Behaviour::Careful { careless_from_ms: None, .. } => "careful",
                    Behaviour::Careful { .. } => "careless",
                    Behaviour::Spammer => "spammer",
                    Behaviour::Biased { .. } => "biased",
                };
                (a.name.clone(), kind)
            })
            .collect()
    }

    /// Appends the corrections of the gold answers published wrong so far to `gold`.
    pub fn correct_gold(&mut self, gold: &mut Vec<u8>) {
        use std::io::Write as _;
        for (item, scope, truth) in self.wrong_gold.drain(..) {
            let _ = writeln!(
                gold,
                "{{\"item_id\":\"item-{item:08}\",\"label\":{}{}}}",
                self.labels_text[truth as usize], self.scope_fields[scope as usize]
            );
        }
    }

    /// What was generated so far.
    pub fn summary(&self) -> &GenSummary {
        &self.summary
    }

    /// The item of the last label event (its number, as in `item-{:08}`) and its true class's
    /// label as JSON text: what a perfect annotator would have answered.
    pub fn current_truth(&self) -> (u64, &str) {
        (self.item, &self.labels_text[self.item_truth as usize])
    }

    fn answer(&mut self, who: u32, truth: u32) -> u32 {
        let classes = self.spec.classes;
        let rng = &mut self.rng;
        let wrong = |rng: &mut ChaCha8Rng| {
            let other = rng.gen_range(0..classes - 1);
            if other >= truth {
                other + 1
            } else {
                other
            }
        };
        match self.workforce[who as usize].behaviour {
            Behaviour::Spammer => rng.gen_range(0..classes),
            Behaviour::Careful { accuracy, careless_from_ms } => {
                let accuracy = match careless_from_ms {
                    Some(from) if self.now_ms as i64 >= from => {
                        (1.0 - self.spec.careless_factor * (1.0 - accuracy)).max(0.0)
                    }
                    _ => accuracy,
                };
                if rng.gen_bool(accuracy) {
                    truth
                } else {
                    wrong(rng)
                }
            }
            Behaviour::Biased { accuracy, favourite, pull } => {
                if rng.gen_bool(pull) {
                    favourite
                } else if rng.gen_bool(accuracy) {
                    truth
                } else {
                    wrong(rng)
                }
            }
        }
    }

    /// Appends the next label event, a JSON line, to `labels`, and the gold answer of a new gold
    /// item to `gold`. The event time advances by a random gap from the spec's start, unless
    /// `ts_ms` gives it (annotators then turn careless by that time).
    pub fn next_event(&mut self, ts_ms: Option<i64>, labels: &mut Vec<u8>, gold: &mut Vec<u8>) {
        use std::io::Write as _;
        self.now_ms += self.rng.gen::<f64>() * 2.0 * self.spec.mean_gap_ms;
        if let Some(ts) = ts_ms {
            self.now_ms = ts as f64;
        }
        let ts = DateTime::from_timestamp_millis(ts_ms.unwrap_or(self.now_ms as i64))
            .expect("time in range")
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let roll: f64 = self.rng.gen();
        if !self.recent.is_empty() && roll < self.spec.relabel_rate + self.spec.delete_rate {
            let (target_item, who, scope, truth) = self.recent[self.rng.gen_range(0..self.recent.len())];
            if roll < self.spec.relabel_rate {
                let class = self.answer(who, truth);
                let fields = &self.scope_fields[scope as usize];
                let annotator = &self.workforce[who as usize];
                let _ = writeln!(
                    labels,
                    "{{\"item_id\":\"item-{target_item:08}\",\"annotator_id\":\"{}\",\"label\":{},\"ts\":\"{ts}\",\"duration_ms\":{}{fields}}}",
                    annotator.name,
                    self.labels_text[class as usize],
                    annotator.speed.sample(&mut self.rng) as u64,
                );
                self.summary.relabels += 1;
            } else {
                let fields = &self.scope_fields[scope as usize];
                let _ = writeln!(
                    labels,
                    "{{\"item_id\":\"item-{target_item:08}\",\"annotator_id\":\"{}\",\"op\":\"delete\",\"ts\":\"{ts}\"{fields}}}",
                    self.workforce[who as usize].name,
                );
                self.summary.deletes += 1;
            }
            return;
        }
        if self.pending.is_empty() {
            self.item = self.summary.items;
            self.summary.items += 1;
            self.item_scope = self.rng.gen_range(0..self.spec.projects * self.spec.tasks);
            self.item_truth = self.class_prior.sample(&mut self.rng) as u32;
            for who in
                sample(&mut self.rng, self.spec.annotators as usize, self.spec.labels_per_item as usize)
            {
                self.pending.push((who as u32, self.item_truth));
            }
            if self.rng.gen_bool(self.spec.gold_rate) {
                self.summary.gold_items += 1;
                let mut published = self.item_truth;
                if self.spec.wrong_gold_rate > 0.0 && self.scenario_rng.gen_bool(self.spec.wrong_gold_rate) {
                    published = (self.item_truth + 1 + self.scenario_rng.gen_range(0..self.spec.classes - 1))
                        % self.spec.classes;
                    self.wrong_gold.push((self.item, self.item_scope, self.item_truth));
                }
                let _ = writeln!(
                    gold,
                    "{{\"item_id\":\"item-{:08}\",\"label\":{}{}}}",
                    self.item,
                    self.labels_text[published as usize],
                    self.scope_fields[self.item_scope as usize]
                );
            }
        }
        let (who, truth) = self.pending.pop().expect("an item has at least one label");
        let class = self.answer(who, truth);
        let annotator = &self.workforce[who as usize];
        let _ = writeln!(
            labels,
            "{{\"item_id\":\"item-{:08}\",\"annotator_id\":\"{}\",\"label\":{},\"ts\":\"{ts}\",\"duration_ms\":{}{}}}",
            self.item,
            annotator.name,
            self.labels_text[class as usize],
            annotator.speed.sample(&mut self.rng) as u64,
            self.scope_fields[self.item_scope as usize]
        );
        let entry = (self.item, who, self.item_scope, self.item_truth);
        if self.recent.len() < RECENT {
            self.recent.push(entry);
        } else {
            let slot = self.rng.gen_range(0..self.recent.len());
            self.recent[slot] = entry;
        }
        self.summary.labels += 1;
    }
}

/// Turns `planted` annotators of a careful workforce, at seeded places, into spammers, biased
/// annotators (favouring the rarest class) and annotators who turn careless.
fn plant(workforce: &mut [Annotator], planted: Planted, spec: &GenSpec, rng: &mut ChaCha8Rng) {
    let places = sample(rng, workforce.len(), planted.total() as usize).into_vec();
    let (spammers, rest) = places.split_at(planted.spammers as usize);
    let (biased, careless) = rest.split_at(planted.biased as usize);
    for annotator in workforce.iter_mut() {
        if let Behaviour::Careful { careless_from_ms, .. } = &mut annotator.behaviour {
            *careless_from_ms = None;
        } else {
            // Every annotator not planted is careful.
            let accuracy = match spec.careful_accuracy_range {
                Some((low, high)) => low + (high - low) * rng.gen::<f64>(),
                None => spec.careful_accuracy.unwrap_or(0.9),
            };
            annotator.behaviour = Behaviour::Careful { accuracy, careless_from_ms: None };
            annotator.speed = speed(rng.gen_range(6.0..30.0));
        }
    }
    for &i in spammers {
        workforce[i].behaviour = Behaviour::Spammer;
        workforce[i].speed = speed(rng.gen_range(1.0..3.0));
    }
    for &i in biased {
        if let Behaviour::Careful { accuracy, .. } = workforce[i].behaviour {
            workforce[i].behaviour =
                Behaviour::Biased { accuracy, favourite: spec.classes - 1, pull: PLANTED_PULL };
        }
    }
    for &i in careless {
        workforce[i].behaviour = Behaviour::Careful {
            accuracy: PLANTED_CARELESS_ACCURACY,
            careless_from_ms: Some(spec.careless_from_ms),
        };
    }
}

/// Label times around a median of `median_s` seconds.
fn speed(median_s: f64) -> LogNormal<f64> {
    LogNormal::new((median_s * 1000.0).ln(), 0.5).expect("valid lognormal")
}

/// Writes `spec.events` label events to `labels` and the gold answers to `gold`.
pub fn generate(
    spec: &GenSpec,
    labels: &mut dyn Write,
    mut gold: Option<&mut dyn Write>,
) -> Result<GenSummary, GenError> {
    let mut traffic = Traffic::new(spec)?;
    let (mut label_buf, mut gold_buf) = (Vec::with_capacity(1 << 16), Vec::new());
    for written in 0..spec.events {
        traffic.next_event(None, &mut label_buf, &mut gold_buf);
        if label_buf.len() >= 1 << 16 || written + 1 == spec.events {
            labels.write_all(&label_buf)?;
            label_buf.clear();
        }
        if written + 1 == spec.events {
            traffic.correct_gold(&mut gold_buf);
        }
        if let Some(out) = gold.as_deref_mut() {
            out.write_all(&gold_buf)?;
        }
        gold_buf.clear();
    }
    Ok(traffic.summary.clone())
}

#[cfg(test)]
mod tests;
