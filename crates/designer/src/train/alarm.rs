//! The MixNN paper's check for lying layers: a held-out batch through the
//! test phase at every checkpoint; a loss or accuracy jump beyond a bound
//! raises an alarm. It cannot say which hop lied (replicas can,
//! `pool/replica.rs`), so it only reports.

use mixnn_data::Dataset;

use super::batch_tensor;
use crate::DesignerError;
use crate::cascade::Model;
use crate::report::Detection;

/// The bounds of the held-out check.
#[derive(Clone, Debug)]
pub struct HeldOut {
    /// Test samples in the held-out batch (the first ones of the test set,
    /// which no step trains on).
    pub samples: usize,
    /// An accuracy drop beyond this many points (0–100) since the last
    /// check raises the alarm.
    pub max_accuracy_drop: f64,
    /// A loss more than this many times the last check's (and at least
    /// 0.5 higher, so a loss near zero does not alarm on noise) raises it.
    pub max_loss_ratio: f64,
}

impl Default for HeldOut {
    /// 256 samples; 10 points; 2×. An honest run moves far less between
    /// two checkpoints after its first epoch's start (the demo's MLP: under
    /// 3 points), a lying layer that matters far more.
    fn default() -> Self {
        HeldOut {
            samples: 256,
            max_accuracy_drop: 10.0,
            max_loss_ratio: 2.0,
        }
    }
}

/// The held-out batch's accuracy (percent) and mean loss at one check.
#[derive(Clone, Copy, Debug)]
pub(super) struct Measure {
    accuracy: f64,
    loss: f64,
}

impl HeldOut {
    /// Runs the held-out batch through `model`'s test phase.
    pub(super) fn measure(
        &self,
        model: &mut dyn Model,
        test: &Dataset,
        sample: &[usize],
        eval_batch: usize,
    ) -> Result<Measure, DesignerError> {
        let all: Vec<usize> = (0..self.samples.min(test.count)).collect();
        let (mut correct, mut loss) = (0usize, 0f64);
        // In test batches: the job's packets are sized for them.
        for idx in all.chunks(eval_batch.max(1)) {
            let (c, l) = Self::score(model, test, idx, sample)?;
            correct += c;
            loss += l;
        }
        let n = all.len().max(1) as f64;
        Ok(Measure {
            accuracy: 100.0 * correct as f64 / n,
            loss: loss / n,
        })
    }

    /// Correct answers and summed loss of one test batch.
    fn score(
        model: &mut dyn Model,
        test: &Dataset,
        idx: &[usize],
        sample: &[usize],
    ) -> Result<(usize, f64), DesignerError> {
        let (x, labels) = batch_tensor(test, idx, sample)?;
        let out = model.infer(x)?;
        let classes = out.shape.get(1).copied().unwrap_or(0);
        if classes == 0 || out.data.len() != idx.len() * classes {
            return Err(DesignerError::OutputShape(out.shape));
        }
        let (mut correct, mut loss) = (0usize, 0f64);
        for (row, &label) in out.data.chunks(classes).zip(&labels) {
            let label = usize::try_from(label).unwrap_or(usize::MAX);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = f64::from(max)
                + row
                    .iter()
                    .map(|&v| f64::from(v - max).exp())
                    .sum::<f64>()
                    .ln();
            loss += lse - row.get(label).map_or(f64::INFINITY, |&v| f64::from(v));
            if super::argmax(row) == label {
                correct += 1;
            }
        }
        Ok((correct, loss))
    }

    /// The alarm, if `now` jumped from `before` beyond the bounds.
    pub(super) fn judge(&self, step: u64, before: Measure, now: Measure) -> Option<Detection> {
        let dropped = before.accuracy - now.accuracy > self.max_accuracy_drop;
        let rose = now.loss > before.loss * self.max_loss_ratio && now.loss > before.loss + 0.5;
        (dropped || rose || !now.loss.is_finite()).then(|| Detection {
            step,
            hop: None,
            node: None,
            how: format!(
                "held-out batch of {} samples: accuracy {:.1}% -> {:.1}%, loss {:.3} -> {:.3} \
                 (bounds: {} points, {}x); the test phase cannot say which hop, \
                 --verify-replicas can",
                self.samples,
                before.accuracy,
                now.accuracy,
                before.loss,
                now.loss,
                self.max_accuracy_drop,
                self.max_loss_ratio
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_beyond_the_bounds_alarm_and_small_moves_do_not() {
        let h = HeldOut::default();
        let m = |accuracy, loss| Measure { accuracy, loss };
        assert!(h.judge(5, m(90.0, 0.3), m(88.0, 0.35)).is_none());
        assert!(h.judge(5, m(90.0, 0.3), m(95.0, 0.1)).is_none());
        let d = h
            .judge(7, m(90.0, 0.3), m(60.0, 0.4))
            .expect("accuracy drop");
        assert_eq!((d.step, d.hop), (7, None));
        assert!(d.how.contains("90.0% -> 60.0%"), "{}", d.how);
        assert!(h.judge(7, m(90.0, 0.3), m(89.0, 1.2)).is_some());
        // Doubling a tiny loss is noise, not a lie.
        assert!(h.judge(7, m(99.0, 0.01), m(99.0, 0.03)).is_none());
        assert!(h.judge(7, m(99.0, 0.01), m(99.0, f64::NAN)).is_some());
    }
}
