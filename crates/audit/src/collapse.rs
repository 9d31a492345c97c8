//! Telling a collapsed inverse network from a weak one.
//!
//! The decoder ends in a ReLU (see [`crate::decoder`] for why), and a ReLU
//! can die: once every pre-activation of the last layer is negative its
//! output is 0 everywhere and no gradient reaches any weight again. The
//! decoder then draws an all-black image for every input, which on the
//! first 100 MNIST test images scores 10.23 dB / SSIM 0.26, "unrecognisable".
//! Reported as the attack's result, that measures a failed optimiser, not a
//! safe cut: the audit would understate the attacker. It happened three
//! times in docs/audit.md's runs, twice dead from the first epoch (loss
//! stuck at E\[x²\], the loss of predicting 0) and once, at σ = 4, dead in
//! the fifth epoch after its loss had reached 0.015.
//!
//! The check after training ([`Health::measure`]) runs the decoder on check
//! images from the auxiliary set and calls it collapsed ([`Collapse`]) when
//!
//! - its outputs are not finite (diverged), or
//! - it draws the same image for every input: no pixel's output varies by
//!   more than [`CONSTANT_SPREAD`] (standard deviation across the check
//!   images) — a dead last layer gives exactly 0, a dead inner layer the
//!   constant its biases make; or
//! - its error is no lower than that of the mean auxiliary image, the
//!   attacker who ignores Z_K altogether. Any decoder whose gradient still
//!   flows beats that easily (the weakest healthy run in docs/audit.md,
//!   dropout 0.8, ended at a training MSE of 0.018; the mean MNIST image
//!   scores 0.067, all black 0.112), so not beating it means the
//!   optimisation failed. A cut whose Z_K really carried nothing would be
//!   flagged too; the report then says so with the numbers, and that
//!   attacker is no stronger than the mean image anyway.
//!
//! Why most collapses come from the start: `mixnn-layer` draws a 1-D
//! parameter from U(±1/√len), so the decoder's single-channel last bias
//! is U(−1, 1) (PyTorch's would be U(±0.2)); at relu2 seeds 1, 2 and 3
//! draw −0.43, −0.98 and −0.11, and the final ReLU is dead on random
//! inputs from the first step. A live decoder can also be pushed under
//! later (σ = 4; Adam moves every weight by about one step size at once,
//! which a smaller step makes less violent). Hence detect, then retry with
//! the cause removed ([`crate::InverseNet::train`]): the next seed, the last
//! bias started at the mean pixel value, half the step size. Only a
//! collapsed run is retried, so every healthy figure already published
//! stays bit for bit (changing the init or the architecture for all runs
//! would not, and a leaky final activation has no gradient rule in
//! `mixnn-grad`). The check images are training images on purpose: a
//! collapse is a failure to fit at all, visible on the data it was fitted
//! to, and holding images back would change the training set of every run.

use crate::AuditError;

/// Below this standard deviation (in `[0, 1]` intensity units, across the
/// check images) a pixel counts as constant: a fortieth of one 8-bit grey
/// level, so no rendered reconstruction would differ.
pub const CONSTANT_SPREAD: f64 = 1e-4;

/// Why a trained decoder is judged collapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collapse {
    /// Its outputs or its error are NaN or infinite.
    Diverged,
    /// It draws the same image whatever Z_K it gets.
    Constant,
    /// Its error is no lower than the mean auxiliary image's.
    NoBetterThanMean,
}

impl std::fmt::Display for Collapse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Collapse::Diverged => "diverged: its outputs are not finite",
            Collapse::Constant => "constant output: the same image for every input (dead ReLUs)",
            Collapse::NoBetterThanMean => "no better than predicting the mean auxiliary image",
        })
    }
}

/// How a trained decoder does on the check images.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Check images.
    pub images: usize,
    /// Mean squared error per pixel of its (clamped) reconstructions.
    pub mse: f64,
    /// Mean squared error per pixel of the mean auxiliary image.
    pub mean_image_mse: f64,
    /// The largest, over pixels, standard deviation of its output across
    /// the check images.
    pub spread: f64,
}

impl Health {
    /// Scores `outputs` (the decoder's reconstructions of `targets`, both
    /// `n × per` values) against `mean_image` (`per` values).
    pub fn measure(
        outputs: &[f32],
        targets: &[f32],
        mean_image: &[f32],
    ) -> Result<Health, AuditError> {
        let per = mean_image.len();
        if per == 0
            || targets.is_empty()
            || outputs.len() != targets.len()
            || !targets.len().is_multiple_of(per)
        {
            return Err(AuditError::Data(format!(
                "health check: {} outputs and {} targets are not a batch of {per}-value images",
                outputs.len(),
                targets.len()
            )));
        }
        let n = targets.len() / per;
        let (mut se, mut mean_se) = (0.0f64, 0.0f64);
        let (mut sum, mut sum2) = (vec![0.0f64; per], vec![0.0f64; per]);
        for (o, t) in outputs.chunks_exact(per).zip(targets.chunks_exact(per)) {
            for p in 0..per {
                let (o, t, m) = (f64::from(o[p]), f64::from(t[p]), f64::from(mean_image[p]));
                se += (o - t) * (o - t);
                mean_se += (m - t) * (m - t);
                sum[p] += o;
                sum2[p] += o * o;
            }
        }
        let count = (n * per) as f64;
        let spread = sum
            .iter()
            .zip(&sum2)
            .map(|(s, s2)| {
                let mean = s / n as f64;
                // Rounding can make the variance a hair negative.
                (s2 / n as f64 - mean * mean).max(0.0).sqrt()
            })
            // NaN propagates: `f64::max` would drop it.
            .fold(0.0f64, |a, b| if b.is_nan() || b > a { b } else { a });
        Ok(Health {
            images: n,
            mse: se / count,
            mean_image_mse: mean_se / count,
            spread,
        })
    }

    /// Whether the decoder collapsed, and how (see the module docs).
    pub fn collapse(&self) -> Option<Collapse> {
        if !self.mse.is_finite() || !self.spread.is_finite() {
            Some(Collapse::Diverged)
        } else if self.spread <= CONSTANT_SPREAD {
            Some(Collapse::Constant)
        } else if self.mse >= self.mean_image_mse {
            Some(Collapse::NoBetterThanMean)
        } else {
            None
        }
    }
}

/// The per-pixel mean of `images` (`n × per` values), accumulated in f64.
pub fn mean_image(images: &[f32], per: usize) -> Vec<f32> {
    let mut sum = vec![0.0f64; per];
    let mut n = 0usize;
    for img in images.chunks_exact(per.max(1)) {
        for (s, &v) in sum.iter_mut().zip(img) {
            *s += f64::from(v);
        }
        n += 1;
    }
    sum.into_iter()
        .map(|s| (s / n.max(1) as f64) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four 2×2 "images" with distinct content.
    fn targets() -> Vec<f32> {
        vec![
            1.0, 0.0, 0.0, 0.0, //
            0.0, 1.0, 0.0, 0.0, //
            0.0, 0.0, 1.0, 0.5, //
            0.2, 0.0, 0.0, 1.0,
        ]
    }

    #[test]
    fn black_and_mean_outputs_collapse_a_close_one_does_not() {
        let t = targets();
        let mean = mean_image(&t, 4);
        assert_eq!(mean, vec![0.3, 0.25, 0.25, 0.375]);
        let black = Health::measure(&[0.0; 16], &t, &mean).unwrap();
        assert_eq!(black.spread, 0.0);
        assert!(black.mse > black.mean_image_mse);
        assert_eq!(black.collapse(), Some(Collapse::Constant));
        let repeated: Vec<f32> = mean.iter().copied().cycle().take(16).collect();
        let m = Health::measure(&repeated, &t, &mean).unwrap();
        assert!(m.spread < 1e-7, "{m:?}");
        assert_eq!(m.collapse(), Some(Collapse::Constant));
        let close: Vec<f32> = t.iter().map(|v| v * 0.9 + 0.05).collect();
        let h = Health::measure(&close, &t, &mean).unwrap();
        assert!(h.mse < 0.01 && h.spread > 0.3, "{h:?}");
        assert_eq!(h.collapse(), None);
    }

    #[test]
    fn varying_but_worse_than_the_mean_image_collapses() {
        let t = targets();
        let mean = mean_image(&t, 4);
        // Varies across images, but each image is the wrong one.
        let mut shifted = t[4..].to_vec();
        shifted.extend_from_slice(&t[..4]);
        let h = Health::measure(&shifted, &t, &mean).unwrap();
        assert!(h.spread > CONSTANT_SPREAD && h.mse >= h.mean_image_mse);
        assert_eq!(h.collapse(), Some(Collapse::NoBetterThanMean));
        let mut nan = t.clone();
        nan[3] = f32::NAN;
        let d = Health::measure(&nan, &t, &mean).unwrap();
        assert_eq!(d.collapse(), Some(Collapse::Diverged));
    }

    #[test]
    fn mismatched_sizes_are_errors() {
        let t = targets();
        let mean = mean_image(&t, 4);
        assert!(Health::measure(&t[..12], &t, &mean).is_err());
        assert!(Health::measure(&t[..6], &t[..6], &mean).is_err());
        assert!(Health::measure(&[], &[], &mean).is_err());
    }
}
