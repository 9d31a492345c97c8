//! The detection bound T: how long the designer waits for an answer before
//! it calls the message lost (PROTOCOL.md §12.8).
//!
//! SPEC §6 asks for a bound from what was measured, not a fixed minute: a
//! message of a phase and batch size that was answered at least
//! [`MIN_SAMPLES`] times since the cascade last changed waits
//! `max(FLOOR, FACTOR × median of the last WINDOW answer times)`, never
//! more than the configured timeout (the ceiling). Anything not measured
//! yet waits the ceiling: the deployment, the first steps (a hop compiles
//! its plans for each new batch size on first use), the last partial batch
//! of an epoch until it has been seen often enough, and every exchange
//! right after a repair (the new hop compiles its plans too). The measured
//! times are the designer's own (send to answer), so nothing a hop says
//! can shorten or stretch the bound of another.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::Phase;

/// Answers of one kind that must be measured before the bound applies.
pub const MIN_SAMPLES: usize = 5;
/// Answer times kept per kind (the median is over these).
pub const WINDOW: usize = 32;
/// The bound is this many medians...
pub const FACTOR: u32 = 10;
/// ...and never less than this: scheduling noise on a loaded machine.
pub const FLOOR: Duration = Duration::from_secs(4);
/// The floor of a probe sent before any training answer was measured (at
/// bring-up): `FACTOR ×` the slowest probe of the same sweep answered so
/// far, never less than this. Higher than [`FLOOR`] because the first
/// packets over a fresh cascade also pay each hop's first dial to the next
/// (TCP, Noise, yamux), on a machine that may be starting many processes.
pub const SWEEP_FLOOR: Duration = Duration::from_secs(10);
/// Kinds of exchanges measured at once (a job has a handful: training and
/// test, each at its full and last partial batch size).
const MAX_KINDS: usize = 16;

/// What kind of exchange a time belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A training message of this batch size.
    Train(usize),
    /// A test message of this batch size.
    Test(usize),
    /// A test message of this batch size sent with up to `window` messages
    /// in flight (the pipelined test phase, `pool/pipeline.rs`): its answer
    /// time includes the wait behind the batches ahead of it, so it is
    /// measured apart from one-at-a-time messages, whose shorter bound it
    /// would otherwise trip (and whose bound it would stretch).
    Window {
        /// Samples per batch.
        batch: usize,
        /// Most messages in flight at once.
        window: usize,
    },
}

impl Kind {
    /// The kind of an exchange of `phase` carrying a batch of `batch`;
    /// `None` for the phases that always wait the ceiling (init, export
    /// and other control messages, whose size varies).
    pub(super) fn of(phase: Phase, batch: Option<usize>) -> Option<Kind> {
        match (phase, batch) {
            (Phase::Train, Some(b)) => Some(Kind::Train(b)),
            (Phase::Test, Some(b)) => Some(Kind::Test(b)),
            _ => None,
        }
    }
}

/// How the bound of an exchange was set, for the error that reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// `FACTOR × median` (or the floor) of this many answers.
    Measured {
        /// Median answer time, ms.
        median_ms: u64,
        /// Answers the median is over.
        samples: usize,
    },
    /// The configured timeout: nothing measured yet for this kind.
    Ceiling,
    /// A probe before any training answer: `FACTOR ×` the slowest probe of
    /// the sweep answered so far (or [`SWEEP_FLOOR`]).
    Sweep {
        /// The slowest earlier probe of the sweep, ms (0: the first).
        slowest_ms: u64,
    },
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Measured { median_ms, samples } => write!(
                f,
                "bound max({} s, {FACTOR} x median {median_ms} ms of the last {samples} answers)",
                FLOOR.as_secs()
            ),
            Rule::Ceiling => write!(f, "the configured timeout: not measured yet"),
            Rule::Sweep { slowest_ms } => write!(
                f,
                "bound max({} s, {FACTOR} x the slowest earlier probe, {slowest_ms} ms)",
                SWEEP_FLOOR.as_secs()
            ),
        }
    }
}

/// The answer times measured so far, by kind.
pub struct Detect {
    ceiling: Duration,
    times: BTreeMap<Kind, VecDeque<Duration>>,
}

impl Detect {
    /// Nothing measured; every bound is `ceiling`.
    pub fn new(ceiling: Duration) -> Detect {
        Detect {
            ceiling,
            times: BTreeMap::new(),
        }
    }

    /// Records an answer of `kind` that took `took`.
    pub fn record(&mut self, kind: Kind, took: Duration) {
        if !self.times.contains_key(&kind) && self.times.len() >= MAX_KINDS {
            return;
        }
        let w = self.times.entry(kind).or_default();
        if w.len() == WINDOW {
            w.pop_front();
        }
        w.push_back(took);
    }

    /// Forgets every measurement: the cascade changed (a repair), so the
    /// next answers may be slow for reasons that are no failure.
    pub fn reset(&mut self) {
        self.times.clear();
    }

    /// The bound for an exchange of `kind` (`None`: the ceiling).
    pub fn bound(&self, kind: Option<Kind>) -> (Duration, Rule) {
        let measured = kind
            .and_then(|k| self.times.get(&k))
            .filter(|w| w.len() >= MIN_SAMPLES);
        match measured {
            Some(w) => {
                let mut sorted: Vec<Duration> = w.iter().copied().collect();
                sorted.sort();
                let median = sorted[sorted.len() / 2];
                let bound = (median * FACTOR).max(FLOOR).min(self.ceiling);
                (
                    bound,
                    Rule::Measured {
                        median_ms: median.as_millis() as u64,
                        samples: sorted.len(),
                    },
                )
            }
            None => (self.ceiling, Rule::Ceiling),
        }
    }

    /// The bound for a probe (relaying only, shorter than a step): that of
    /// the training kind measured most. Before any training answer was
    /// measured (a bring-up, or the first steps), the probes of one sweep
    /// outward from hop 0 measure each other: a probe to hop k crosses two
    /// links more than the one to hop k−1, so it waits `FACTOR ×` the
    /// slowest probe answered so far (`slowest`), at least [`SWEEP_FLOOR`],
    /// never more than the ceiling. A dead hop at bring-up is then found in
    /// seconds, not after the ceiling meant for compiling a layer.
    pub fn probe_bound(&self, slowest: Duration) -> (Duration, Rule) {
        let best = self
            .times
            .iter()
            .filter(|(k, w)| matches!(k, Kind::Train(_)) && w.len() >= MIN_SAMPLES)
            .max_by_key(|(_, w)| w.len())
            .map(|(k, _)| *k);
        if best.is_some() {
            return self.bound(best);
        }
        let bound = (slowest * FACTOR).max(SWEEP_FLOOR).min(self.ceiling);
        let slowest_ms = slowest.as_millis() as u64;
        (bound, Rule::Sweep { slowest_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound follows the median once enough answers were measured,
    /// keeps to the floor and the ceiling, and starts over after a repair.
    #[test]
    fn the_bound_comes_from_measured_answers() {
        let mut d = Detect::new(Duration::from_secs(60));
        let k = Kind::Train(64);
        assert_eq!(d.bound(Some(k)), (Duration::from_secs(60), Rule::Ceiling));
        for _ in 0..MIN_SAMPLES {
            d.record(k, Duration::from_millis(100));
        }
        // 10 x 100 ms is under the floor.
        assert_eq!(d.bound(Some(k)).0, FLOOR);
        for _ in 0..WINDOW {
            d.record(k, Duration::from_secs(1));
        }
        assert_eq!(d.bound(Some(k)).0, Duration::from_secs(10));
        // A single slow answer does not move the median.
        d.record(k, Duration::from_secs(30));
        assert_eq!(d.bound(Some(k)).0, Duration::from_secs(10));
        for _ in 0..WINDOW {
            d.record(k, Duration::from_secs(20));
        }
        assert_eq!(d.bound(Some(k)).0, Duration::from_secs(60), "the ceiling");
        // Another batch size, the test phase, control messages: not measured.
        assert_eq!(d.bound(Some(Kind::Train(32))).1, Rule::Ceiling);
        assert_eq!(d.bound(Some(Kind::Test(64))).1, Rule::Ceiling);
        assert_eq!(d.bound(None).1, Rule::Ceiling);
        assert_eq!(d.probe_bound(Duration::ZERO).0, Duration::from_secs(60));
        d.reset();
        assert_eq!(d.bound(Some(k)).1, Rule::Ceiling);
    }

    /// Before training answers are measured, probes bound each other: the
    /// sweep's floor first, then ten times the slowest answered, within
    /// the ceiling; once training is measured its bound applies.
    #[test]
    fn probes_before_training_bound_each_other() {
        let mut d = Detect::new(Duration::from_secs(60));
        let first = d.probe_bound(Duration::ZERO);
        assert_eq!(first, (SWEEP_FLOOR, Rule::Sweep { slowest_ms: 0 }));
        assert_eq!(d.probe_bound(Duration::from_millis(30)).0, SWEEP_FLOOR);
        assert_eq!(
            d.probe_bound(Duration::from_secs(2)).0,
            Duration::from_secs(20)
        );
        assert_eq!(
            d.probe_bound(Duration::from_secs(9)).0,
            Duration::from_secs(60),
            "the ceiling"
        );
        let k = Kind::Train(64);
        for _ in 0..MIN_SAMPLES - 1 {
            d.record(k, Duration::from_millis(200));
        }
        assert!(matches!(
            d.probe_bound(Duration::ZERO).1,
            Rule::Sweep { .. }
        ));
        d.record(k, Duration::from_millis(200));
        assert_eq!(d.probe_bound(Duration::from_secs(9)).0, FLOOR);
    }

    /// Pipelined test answers wait behind the batches ahead of them: they
    /// are measured per window, apart from one-at-a-time test answers, so
    /// neither stretches nor trips the other's bound.
    #[test]
    fn windowed_test_answers_have_a_bound_of_their_own() {
        let mut d = Detect::new(Duration::from_secs(600));
        let lone = Kind::Test(64);
        let w8 = Kind::Window {
            batch: 64,
            window: 8,
        };
        for _ in 0..MIN_SAMPLES {
            d.record(lone, Duration::from_millis(500));
            d.record(w8, Duration::from_secs(4));
        }
        assert_eq!(d.bound(Some(lone)).0, Duration::from_secs(5));
        assert_eq!(d.bound(Some(w8)).0, Duration::from_secs(40));
        let w16 = Kind::Window {
            batch: 64,
            window: 16,
        };
        assert_eq!(d.bound(Some(w16)).1, Rule::Ceiling, "another window");
    }
}
