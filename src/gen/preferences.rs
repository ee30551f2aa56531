//! `labelqc gen --preferences`: a seeded generator of pairwise preference events (spec 2.2).
//! Systems of known Bradley–Terry strengths are compared, each comparison by several distinct
//! annotators, each shown the two systems in its own random display order. A careful annotator
//! says tie at a small rate and otherwise picks the winner with the model's probability
//! `1 / (1 + exp(s_j - s_i))`; planted **side-biased** annotators pick their favoured side (left
//! for the first, right for the second, and so on) in about 85% of their decisive answers, and
//! planted **tie-happy** annotators say tie about half of the time (and answer faster). The same
//! seed and settings always write the same bytes.

use std::io::Write;

use chrono::{DateTime, SecondsFormat};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};

use super::GenError;

/// The task that generated comparisons belong to: preference events keep a scope of their own
/// (spec 2.2: a scope should not mix them with plain label events).
pub const PREFERENCE_TASK: &str = "preference";

/// What to generate.
#[derive(Clone, Debug)]
pub struct PreferenceSpec {
    /// Preference events to write (each comparison gives `per_comparison` of them).
    pub events: u64,
    /// Systems compared; their true strengths are evenly spaced over `[-spread/2, spread/2]`,
    /// given to the systems in a seeded order.
    pub systems: u32,
    /// Width of the range of true strengths (natural-log odds).
    pub spread: f64,
    pub annotators: u32,
    /// Distinct annotators per comparison.
    pub per_comparison: u32,
    /// Planted annotators who favour one side of the screen.
    pub side_biased: u32,
    /// Share of a side-biased annotator's decisive answers on its favoured side.
    pub side_bias: f64,
    /// Planted annotators who say tie often.
    pub tie_happy: u32,
    /// A tie-happy annotator's tie rate.
    pub tie_happy_rate: f64,
    /// Every other annotator's tie rate.
    pub tie_rate: f64,
    pub seed: u64,
    /// Event time of the first event, epoch milliseconds.
    pub start_ms: i64,
    /// Mean event-time gap between events, milliseconds.
    pub mean_gap_ms: f64,
}

impl Default for PreferenceSpec {
    fn default() -> Self {
        PreferenceSpec {
            events: 100_000,
            systems: 8,
            spread: 3.0,
            annotators: 40,
            per_comparison: 3,
            side_biased: 2,
            side_bias: 0.85,
            tie_happy: 1,
            tie_happy_rate: 0.5,
            tie_rate: 0.08,
            seed: 42,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            mean_gap_ms: 500.0,
        }
    }
}

impl PreferenceSpec {
    fn validate(&self) -> Result<(), GenError> {
        let spec = |field, message: &str| Err(GenError::Spec { field, message: message.into() });
        if self.systems < 2 {
            return spec("systems", "needs at least 2 systems to compare");
        }
        if self.annotators < 2 {
            return spec("annotators", "needs at least 2 annotators");
        }
        if self.per_comparison == 0 || self.per_comparison > self.annotators {
            return spec("per_comparison", "must be between 1 and the number of annotators");
        }
        if self.side_biased + self.tie_happy > self.annotators / 2 {
            return spec("side_biased", "at most half of the annotators can be planted problems");
        }
        for (field, share) in [
            ("side_bias", self.side_bias),
            ("tie_happy_rate", self.tie_happy_rate),
            ("tie_rate", self.tie_rate),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return spec(field, "must be between 0 and 1");
            }
        }
        if self.side_bias < 0.5 {
            return spec("side_bias", "is the share of the favoured side: at least 0.5");
        }
        if !(self.spread.is_finite() && self.spread >= 0.0) {
            return spec("spread", "must be a non-negative number");
        }
        if !self.mean_gap_ms.is_finite() || self.mean_gap_ms <= 0.0 {
            return spec("mean_gap_ms", "must be positive");
        }
        Ok(())
    }
}

/// How a generated annotator answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rater {
    Careful,
    /// Favours the left side.
    LeftBiased,
    /// Favours the right side.
    RightBiased,
    TieHappy,
}

impl Rater {
    /// The kind's name, as [`PreferenceTraffic::roster`] gives it.
    pub fn name(self) -> &'static str {
        match self {
            Rater::Careful => "careful",
            Rater::LeftBiased => "left_biased",
            Rater::RightBiased => "right_biased",
            Rater::TieHappy => "tie_happy",
        }
    }
}

/// An endless, seeded stream of comparisons: [`PreferenceTraffic::next_event`] writes one
/// preference event. `labelqc gen --preferences` writes a fixed number of them.
pub struct PreferenceTraffic {
    spec: PreferenceSpec,
    rng: ChaCha8Rng,
    systems: Vec<(String, f64)>,
    raters: Vec<(String, Rater, LogNormal<f64>)>,
    /// Annotators still to answer the current comparison.
    pending: Vec<u32>,
    comparison: u64,
    pair: (u32, u32),
    now_ms: f64,
    written: u64,
}

impl PreferenceTraffic {
    /// A stream for `spec` (its `events` is ignored: the stream does not end).
    pub fn new(spec: &PreferenceSpec) -> Result<PreferenceTraffic, GenError> {
        spec.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let n = spec.systems as usize;
        let order = sample(&mut rng, n, n).into_vec();
        let systems = (0..n)
            .map(|i| {
                let rank = order[i] as f64;
                let strength = spec.spread / 2.0 - spec.spread * rank / (n - 1) as f64;
                (format!("sys-{i:02}"), strength)
            })
            .collect();
        let planted =
            sample(&mut rng, spec.annotators as usize, (spec.side_biased + spec.tie_happy) as usize)
                .into_vec();
        let mut raters: Vec<(String, Rater, LogNormal<f64>)> = (0..spec.annotators)
            .map(|i| (format!("rater-{i:03}"), Rater::Careful, speed(rng.gen_range(8.0..30.0))))
            .collect();
        for (k, &i) in planted.iter().enumerate() {
            let k = k as u32;
            raters[i].1 = if k >= spec.side_biased {
                raters[i].2 = speed(rng.gen_range(2.0..4.0));
                Rater::TieHappy
            } else if k.is_multiple_of(2) {
                Rater::LeftBiased
            } else {
                Rater::RightBiased
            };
        }
        Ok(PreferenceTraffic {
            spec: spec.clone(),
            rng,
            systems,
            raters,
            pending: Vec::new(),
            comparison: 0,
            pair: (0, 1),
            now_ms: spec.start_ms as f64,
            written: 0,
        })
    }

    /// Every system's name and true Bradley–Terry strength (they sum to 0).
    pub fn true_strengths(&self) -> &[(String, f64)] {
        &self.systems
    }

    /// Every annotator's name and kind: `careful`, `left_biased`, `right_biased` or `tie_happy`.
    pub fn roster(&self) -> Vec<(String, &'static str)> {
        self.raters.iter().map(|(name, rater, _)| (name.clone(), rater.name())).collect()
    }

    /// Events written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends the next preference event, a JSON line, to `out`. The event time advances by a
    /// random gap from the spec's start, unless `ts_ms` gives it.
    pub fn next_event(&mut self, ts_ms: Option<i64>, out: &mut Vec<u8>) {
        self.now_ms += self.rng.gen::<f64>() * 2.0 * self.spec.mean_gap_ms;
        if let Some(ts) = ts_ms {
            self.now_ms = ts as f64;
        }
        let ts = DateTime::from_timestamp_millis(self.now_ms as i64)
            .expect("time in range")
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        if self.pending.is_empty() {
            self.comparison += 1;
            let pick = sample(&mut self.rng, self.systems.len(), 2);
            self.pair = (pick.index(0) as u32, pick.index(1) as u32);
            let who = sample(&mut self.rng, self.raters.len(), self.spec.per_comparison as usize);
            self.pending.extend(who.iter().map(|w| w as u32));
        }
        let who = self.pending.pop().expect("a comparison has at least one annotator") as usize;
        // This annotator's display order.
        let (left, right) =
            if self.rng.gen_bool(0.5) { (self.pair.0, self.pair.1) } else { (self.pair.1, self.pair.0) };
        let label = self.answer(self.raters[who].1, left as usize, right as usize);
        let (name, _, speed) = &self.raters[who];
        let _ = writeln!(
            out,
            "{{\"item_id\":\"cmp-{:08}\",\"annotator_id\":\"{name}\",\"left\":\"{}\",\"right\":\"{}\",\"label\":\"{label}\",\"ts\":\"{ts}\",\"duration_ms\":{},\"task\":\"{PREFERENCE_TASK}\"}}",
            self.comparison,
            self.systems[left as usize].0,
            self.systems[right as usize].0,
            speed.sample(&mut self.rng) as u64,
        );
        self.written += 1;
    }

    /// The label `rater` gives to `left` against `right`.
    fn answer(&mut self, rater: Rater, left: usize, right: usize) -> &'static str {
        let tie_rate = if rater == Rater::TieHappy { self.spec.tie_happy_rate } else { self.spec.tie_rate };
        if self.rng.gen_bool(tie_rate) {
            return "tie";
        }
        // A side-biased annotator clicks its side blindly in 2·bias - 1 of its decisive answers
        // and answers carefully otherwise: its side gets `bias` of them, the display order being
        // random.
        let blind = 2.0 * self.spec.side_bias - 1.0;
        match rater {
            Rater::LeftBiased if self.rng.gen_bool(blind) => return "left",
            Rater::RightBiased if self.rng.gen_bool(blind) => return "right",
            _ => {}
        }
        let p_left = 1.0 / (1.0 + (self.systems[right].1 - self.systems[left].1).exp());
        if self.rng.gen_bool(p_left) {
            "left"
        } else {
            "right"
        }
    }
}

/// Answer times around a median of `median_s` seconds.
fn speed(median_s: f64) -> LogNormal<f64> {
    LogNormal::new((median_s * 1000.0).ln(), 0.5).expect("valid lognormal")
}

/// Writes `spec.events` preference events to `out`; returns the number written.
pub fn generate(spec: &PreferenceSpec, out: &mut dyn Write) -> Result<u64, GenError> {
    let mut traffic = PreferenceTraffic::new(spec)?;
    let mut buf = Vec::with_capacity(1 << 16);
    for written in 0..spec.events {
        traffic.next_event(None, &mut buf);
        if buf.len() >= 1 << 16 || written + 1 == spec.events {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    Ok(traffic.written())
}

/// The flags of `labelqc gen --preferences` beyond those it shares with `labelqc gen`
/// (`--events`, `--annotators`, `--labels-per-item` as annotators per comparison, `--seed`,
/// `--mean-gap-ms`).
#[derive(Debug, clap::Args)]
pub struct PreferenceArgs {
    /// Write pairwise preference events (comparisons of systems of known Bradley–Terry strengths,
    /// task "preference") instead of label events.
    #[arg(long, conflicts_with_all = ["gold_out", "classes", "gold_rate", "numeric", "spammers", "biased"])]
    pub preferences: bool,
    /// With --preferences: systems compared.
    #[arg(long, default_value_t = PreferenceSpec::default().systems, requires = "preferences")]
    pub systems: u32,
    /// With --preferences: planted annotators who favour one side (left, right, left, ...).
    #[arg(long, default_value_t = PreferenceSpec::default().side_biased, requires = "preferences")]
    pub side_biased: u32,
    /// With --preferences: planted annotators who say tie half of the time.
    #[arg(long, default_value_t = PreferenceSpec::default().tie_happy, requires = "preferences")]
    pub tie_happy: u32,
}

impl PreferenceArgs {
    /// The spec these flags and the shared ones ask for.
    pub fn spec(
        &self,
        events: u64,
        annotators: u32,
        per_comparison: u32,
        seed: u64,
        mean_gap_ms: f64,
    ) -> PreferenceSpec {
        PreferenceSpec {
            events,
            systems: self.systems,
            annotators,
            per_comparison,
            side_biased: self.side_biased,
            tie_happy: self.tie_happy,
            seed,
            mean_gap_ms,
            ..PreferenceSpec::default()
        }
    }
}

#[cfg(test)]
mod tests;
