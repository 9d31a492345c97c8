//! Axis ranges and ticks.
//!
//! Ranges come from the finite data alone, padded a little so no point sits
//! on the frame; ticks fall on 1, 2 or 5 times a power of ten so the labels
//! read as round numbers. Arithmetic is done on halved values so that even
//! data spanning -f64::MAX..f64::MAX never overflows to infinity.

/// How many ticks an axis aims for (it gets between about 4 and 8).
const TARGET_TICKS: f64 = 8.0;
/// Upper bound on ticks, whatever floating point does to the loop bounds.
const MAX_TICKS: usize = 64;

/// A linear axis: the visible range and where its labelled ticks are.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// An axis covering every finite value (NaN and infinities are ignored),
    /// with 5% padding; `0..1` when there is nothing finite to show.
    pub fn for_values(values: impl Iterator<Item = f64>) -> Axis {
        let (min, max) = values
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        if min > max {
            return Self::with_ticks(0.0, 1.0, TARGET_TICKS, false);
        }
        let half_span = max * 0.5 - min * 0.5;
        let mid = min * 0.5 + max * 0.5;
        // All values (practically) equal: centre them in a band around the
        // value rather than dividing by a zero span.
        let pad = if half_span <= mid.abs() * 1e-12 || half_span < 1e-100 {
            if mid.abs() > 1e-100 {
                mid.abs() * 0.05
            } else {
                1.0
            }
        } else {
            half_span * 0.1
        };
        let lo = finite_or(min - pad, min);
        let hi = finite_or(max + pad, max);
        Self::with_ticks(lo, hi, TARGET_TICKS, false)
    }

    /// The epoch axis: `1..=epochs`, padded by half an epoch or more, with
    /// whole-number ticks, one per epoch for runs of up to a dozen.
    pub fn for_epochs(epochs: usize) -> Axis {
        let n = epochs.max(1) as f64;
        let pad = ((n - 1.0) * 0.03).max(0.5);
        let mut axis = Self::with_ticks(1.0 - pad, n + pad, 12.0, true);
        // The padding may reach 0; there is no epoch 0 to label.
        axis.ticks.retain(|(v, _)| *v >= 1.0);
        axis
    }

    fn with_ticks(lo: f64, hi: f64, target: f64, integer: bool) -> Axis {
        let half_span = hi * 0.5 - lo * 0.5;
        let mut step = nice_step(half_span / (target * 0.5));
        if integer {
            step = step.max(1.0);
        }
        let decimals = if integer {
            0
        } else {
            (-step.log10().floor()).clamp(0.0, 12.0) as usize
        };
        let big = lo.abs().max(hi.abs());
        let scientific = !integer && (big >= 1e6 || step < 1e-4);
        let mut ticks = Vec::new();
        let mut k = (lo / step).ceil();
        let last = (hi / step).floor();
        while k <= last && ticks.len() < MAX_TICKS {
            let mut v = k * step;
            if v.is_finite() {
                if v.abs() < step * 1e-9 {
                    v = 0.0; // never label a tick "-0.0"
                }
                let label = if scientific {
                    format!("{v:.1e}")
                } else {
                    format!("{v:.decimals$}")
                };
                ticks.push((v, label));
            }
            k += 1.0;
        }
        Axis { lo, hi, ticks }
    }

    /// Where `v` lands between pixel `p_lo` (for `lo`) and `p_hi` (for `hi`).
    pub fn map(&self, v: f64, p_lo: f64, p_hi: f64) -> f64 {
        let t = (v * 0.5 - self.lo * 0.5) / (self.hi * 0.5 - self.lo * 0.5);
        p_lo + t * (p_hi - p_lo)
    }
}

/// The smallest of 1, 2, 5 times a power of ten that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    if !(mag.is_finite() && mag > 0.0) {
        return raw;
    }
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    finite_or(nice * mag, raw)
}

fn finite_or(v: f64, fallback: f64) -> f64 {
    if v.is_finite() { v } else { fallback }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(a: &Axis) -> Vec<&str> {
        a.ticks.iter().map(|(_, l)| l.as_str()).collect()
    }

    #[test]
    fn accuracy_axis_reads_round() {
        let a = Axis::for_values([0.91, 0.95, 0.97].into_iter());
        assert!(a.lo < 0.91 && a.hi > 0.97);
        assert_eq!(
            labels(&a),
            ["0.91", "0.92", "0.93", "0.94", "0.95", "0.96", "0.97"]
        );
    }

    #[test]
    fn epochs_are_whole_numbers() {
        assert_eq!(labels(&Axis::for_epochs(1)), ["1"]);
        assert_eq!(labels(&Axis::for_epochs(3)), ["1", "2", "3"]);
        assert_eq!(labels(&Axis::for_epochs(40))[0], "5");
        assert_eq!(labels(&Axis::for_epochs(12)).len(), 12);
        assert_eq!(
            labels(&Axis::for_epochs(20)),
            ["2", "4", "6", "8", "10", "12", "14", "16", "18", "20"]
        );
    }

    #[test]
    fn degenerate_and_extreme_ranges_stay_finite() {
        let cases: [&[f64]; 6] = [
            &[],
            &[f64::NAN, f64::INFINITY],
            &[0.0],
            &[5e-324],
            &[f64::MAX, f64::MIN],
            &[1e300, 1e300],
        ];
        for values in cases {
            let a = Axis::for_values(values.iter().copied());
            assert!(
                a.lo.is_finite() && a.hi.is_finite() && a.lo < a.hi,
                "{values:?}"
            );
            assert!(!a.ticks.is_empty(), "{values:?}");
            for v in values.iter().filter(|v| v.is_finite()) {
                let p = a.map(*v, 0.0, 100.0);
                assert!((0.0..=100.0).contains(&p), "{values:?} -> {p}");
            }
        }
    }

    #[test]
    fn no_negative_zero() {
        let a = Axis::for_values([-0.3, 0.3].into_iter());
        assert!(labels(&a).contains(&"0.0"));
    }
}
