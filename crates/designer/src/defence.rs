//! Defences against model inversion at a cut, as training options.
//!
//! Whoever runs the shard after cut K receives the intermediate output Z_K,
//! and He, Zhang and Lee (ACSAC 2019; IEEE IoT Journal 2020) show that an
//! early Z_K often gives the input image back. Their noise defences perturb
//! Z_K before it leaves: Gaussian noise of standard deviation σ, Laplace
//! noise of scale b, or dropout of rate p. A defence only means something
//! if the model is trained with it (the accuracy it costs is the other half
//! of the trade-off), so [`CutNoise`] is applied by the cascade after layer
//! K in the training forward pass *and* in the test-phase forward pass, and
//! its gradient is passed back through it.
//!
//! Dropout here differs from the dropout layer of a model: it stays on at
//! inference, because the node after the cut sees Z_K at inference too, and
//! a mask applied only in training would leave every deployed query
//! unprotected. He et al. 2020 likewise apply their dropout defence to the
//! intermediate output at inference time; the copy of the paper was not at
//! hand when this was written, so the mode is named in the spec
//! (`dropout`) and the conventional one, identity at inference, is kept
//! apart as `dropout-train` for comparison. Both are inverted dropout:
//! survivors are scaled by 1/(1-p), so the expected Z_K is unchanged.
//!
//! Every draw comes from ChaCha8 streams seeded by the job seed, one stream
//! for training and one for testing, so the same seed gives the same run
//! bit for bit, and a test pass does not shift the training noise.

use std::fmt;
use std::str::FromStr;

use mixnn_layer::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1, StandardNormal};

use crate::DesignerError;

/// Separates the noise streams from every other use of the job seed.
const DOMAIN: u64 = 0x6375_745f_6e6f_6973; // "cut_nois"
const TRAIN_STREAM: u64 = 1;
const TEST_STREAM: u64 = 2;

/// What is added to (or removed from) Z_K.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NoiseKind {
    /// Additive Gaussian noise of this standard deviation.
    Gaussian(f32),
    /// Additive Laplace noise of this scale b (variance 2b²).
    Laplace(f32),
    /// Each element of Z_K is zeroed with this probability, in training
    /// and at inference; survivors are scaled by 1/(1-p).
    Dropout(f32),
    /// Inverted dropout in training only; identity at inference (the
    /// conventional layer, for comparison: it does not protect queries).
    DropoutTrain(f32),
}

/// A defence at a cut: `kind` applied to the output of the first `after`
/// shards (Z_K with K = `after`, the tensor the node holding shard K+1
/// receives; the numbering of `mixnn audit --split K`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseSpec {
    /// How many shards come before the cut, 1..shards.
    pub after: usize,
    /// The noise.
    pub kind: NoiseKind,
}

/// A `--noise-at` value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "bad cut noise `{spec}`: {reason}; expected K:gaussian:σ, K:laplace:b, K:dropout:p or \
     K:dropout-train:p (K the number of shards before the cut, e.g. 1:gaussian:0.5)"
)]
pub struct NoiseSpecError {
    /// The text given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for NoiseSpec {
    type Err = NoiseSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| NoiseSpecError {
            spec: s.to_string(),
            reason,
        };
        let parts: Vec<&str> = s.split(':').collect();
        let [k, kind, level] = parts[..] else {
            return Err(bad(format!("{} parts, not 3", parts.len())));
        };
        let after: usize = k
            .trim()
            .parse()
            .map_err(|_| bad(format!("cut `{k}` is not a shard count")))?;
        if after == 0 {
            return Err(bad("the cut must come after at least one shard".into()));
        }
        let level: f32 = level
            .trim()
            .parse()
            .map_err(|_| bad(format!("level `{level}` is not a number")))?;
        if !level.is_finite() || level < 0.0 {
            return Err(bad(format!("level {level} must be finite and at least 0")));
        }
        let dropout_rate = |p: f32| {
            if p < 1.0 {
                Ok(p)
            } else {
                Err(bad(format!("dropout rate {p} must be below 1")))
            }
        };
        let kind = match kind.trim().to_ascii_lowercase().as_str() {
            "gaussian" | "normal" => NoiseKind::Gaussian(level),
            "laplace" => NoiseKind::Laplace(level),
            "dropout" => NoiseKind::Dropout(dropout_rate(level)?),
            "dropout-train" => NoiseKind::DropoutTrain(dropout_rate(level)?),
            other => return Err(bad(format!("unknown noise `{other}`"))),
        };
        Ok(NoiseSpec { after, kind })
    }
}

impl fmt::Display for NoiseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, level) = match self.kind {
            NoiseKind::Gaussian(s) => ("gaussian", s),
            NoiseKind::Laplace(b) => ("laplace", b),
            NoiseKind::Dropout(p) => ("dropout", p),
            NoiseKind::DropoutTrain(p) => ("dropout-train", p),
        };
        write!(f, "{}:{name}:{level}", self.after)
    }
}

impl NoiseSpec {
    /// Whether the defence leaves Z_K as it is (σ, b or p of 0): the
    /// cascade then skips it, so it trains bit for bit as without it.
    pub fn is_identity(&self) -> bool {
        match self.kind {
            NoiseKind::Gaussian(v)
            | NoiseKind::Laplace(v)
            | NoiseKind::Dropout(v)
            | NoiseKind::DropoutTrain(v) => v == 0.0,
        }
    }
}

/// A [`NoiseSpec`] at work: its random streams and the dropout mask of the
/// latest training forward pass (what the backward pass multiplies by).
pub struct CutNoise {
    spec: NoiseSpec,
    train: ChaCha8Rng,
    test: ChaCha8Rng,
    /// Per element of the latest training Z_K: 0 or 1/(1-p). Empty for
    /// additive noise, whose gradient is the identity.
    mask: Vec<f32>,
}

impl CutNoise {
    /// The defence `spec`, its streams seeded by the job's `seed`.
    pub fn new(spec: NoiseSpec, seed: u64) -> Self {
        let stream = |s: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ DOMAIN);
            rng.set_stream(s);
            rng
        };
        CutNoise {
            spec,
            train: stream(TRAIN_STREAM),
            test: stream(TEST_STREAM),
            mask: Vec::new(),
        }
    }

    /// The defence applied.
    pub fn spec(&self) -> NoiseSpec {
        self.spec
    }

    /// The training forward pass: perturbs `z` in place and keeps what the
    /// backward pass needs.
    pub fn train(&mut self, z: &mut Tensor) {
        self.mask.clear();
        match self.spec.kind {
            NoiseKind::Gaussian(s) => add(z, &mut self.train, |r| s * gauss(r)),
            NoiseKind::Laplace(b) => add(z, &mut self.train, |r| b * laplace(r)),
            NoiseKind::Dropout(p) | NoiseKind::DropoutTrain(p) => {
                self.mask = mask(z.data.len(), p, &mut self.train);
                multiply(&mut z.data, &self.mask);
            }
        }
    }

    /// The test-phase forward pass: the same noise (dropout too, but not
    /// `dropout-train`), from the test stream.
    pub fn infer(&mut self, z: &mut Tensor) {
        match self.spec.kind {
            NoiseKind::Gaussian(s) => add(z, &mut self.test, |r| s * gauss(r)),
            NoiseKind::Laplace(b) => add(z, &mut self.test, |r| b * laplace(r)),
            NoiseKind::Dropout(p) => {
                let m = mask(z.data.len(), p, &mut self.test);
                multiply(&mut z.data, &m);
            }
            NoiseKind::DropoutTrain(_) => {}
        }
    }

    /// The backward pass: the gradient with respect to Z_K before the
    /// noise, from the one after it. Additive noise does not depend on
    /// Z_K (gradient unchanged); dropout multiplies by the same mask.
    /// Errors: a gradient of another size than the latest Z_K.
    pub fn backward(&self, grad: &mut Tensor) -> Result<(), DesignerError> {
        if self.mask.is_empty() {
            return Ok(());
        }
        if grad.data.len() != self.mask.len() {
            return Err(DesignerError::NoiseGradient {
                grad: grad.data.len(),
                z: self.mask.len(),
            });
        }
        multiply(&mut grad.data, &self.mask);
        Ok(())
    }
}

fn gauss(r: &mut ChaCha8Rng) -> f32 {
    StandardNormal.sample(r)
}

/// Laplace(0, 1): an exponential magnitude with a fair sign.
fn laplace(r: &mut ChaCha8Rng) -> f32 {
    let e: f32 = Exp1.sample(r);
    if r.r#gen::<bool>() { e } else { -e }
}

fn add(z: &mut Tensor, rng: &mut ChaCha8Rng, draw: impl Fn(&mut ChaCha8Rng) -> f32) {
    for v in z.data.iter_mut() {
        *v += draw(rng);
    }
}

/// Inverted-dropout factors: 0 with probability `p`, else 1/(1-p).
fn mask(n: usize, p: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let keep = 1.0 / (1.0 - p);
    (0..n)
        .map(|_| if rng.r#gen::<f32>() < p { 0.0 } else { keep })
        .collect()
}

/// Element-wise product (the lengths are checked by the callers).
fn multiply(v: &mut [f32], by: &[f32]) {
    for (x, m) in v.iter_mut().zip(by) {
        *x *= m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z(n: usize) -> Tensor {
        Tensor {
            shape: vec![1, n],
            data: (0..n).map(|i| 1.0 + i as f32 * 0.01).collect(),
        }
    }

    fn noise(spec: &str) -> CutNoise {
        CutNoise::new(spec.parse().expect("spec"), 11)
    }

    #[test]
    fn dropout_gradient_uses_the_forward_mask() {
        let mut n = noise("1:dropout:0.3");
        let mut x = z(1000);
        n.train(&mut x);
        let dropped = x.data.iter().filter(|v| **v == 0.0).count();
        assert!(
            (200..400).contains(&dropped),
            "{dropped} of 1000 dropped at p=0.3"
        );
        // d/dz of sum(noised z): the mask itself.
        let mut g = Tensor {
            shape: vec![1, 1000],
            data: vec![1.0; 1000],
        };
        n.backward(&mut g).expect("same size");
        for ((out, grad), orig) in x.data.iter().zip(&g.data).zip(&z(1000).data) {
            if *out == 0.0 {
                assert_eq!(*grad, 0.0);
            } else {
                assert!((grad - 1.0 / 0.7).abs() < 1e-6);
                assert!((out - orig / 0.7).abs() < 1e-5);
            }
        }
        let mut short = z(10);
        assert!(matches!(
            n.backward(&mut short),
            Err(DesignerError::NoiseGradient { grad: 10, z: 1000 })
        ));
    }

    #[test]
    fn additive_noise_passes_the_gradient_unchanged() {
        let mut n = noise("1:laplace:0.5");
        let mut x = z(100);
        n.train(&mut x);
        assert_ne!(x.data, z(100).data);
        let mut g = z(100);
        n.backward(&mut g).expect("additive");
        assert_eq!(g.data, z(100).data);
    }

    #[test]
    fn dropout_stays_on_at_inference_and_dropout_train_does_not() {
        let mut on = noise("1:dropout:0.5");
        let mut x = z(100);
        on.infer(&mut x);
        assert!(x.data.contains(&0.0));
        let mut off = noise("1:dropout-train:0.5");
        let mut y = z(100);
        off.infer(&mut y);
        assert_eq!(y.data, z(100).data);
        let mut gauss = noise("1:gaussian:1");
        let mut w = z(100);
        gauss.infer(&mut w);
        assert_ne!(w.data, z(100).data);
    }

    #[test]
    fn noise_has_the_promised_spread() {
        let n = 200_000;
        let spread = |spec: &str| {
            let mut c = noise(spec);
            let mut x = Tensor {
                shape: vec![n],
                data: vec![0.0; n],
            };
            c.train(&mut x);
            let mean = x.data.iter().map(|v| f64::from(*v)).sum::<f64>() / n as f64;
            let var = x
                .data
                .iter()
                .map(|v| (f64::from(*v) - mean).powi(2))
                .sum::<f64>()
                / n as f64;
            (mean, var)
        };
        let (m, v) = spread("1:gaussian:0.5");
        assert!(
            m.abs() < 0.01 && (v - 0.25).abs() < 0.01,
            "gaussian {m} {v}"
        );
        // Laplace(b): variance 2b².
        let (m, v) = spread("1:laplace:0.5");
        assert!(m.abs() < 0.01 && (v - 0.5).abs() < 0.02, "laplace {m} {v}");
    }

    #[test]
    fn training_and_test_streams_are_apart() {
        let mut a = noise("1:gaussian:1");
        let mut b = noise("1:gaussian:1");
        let (mut x, mut y) = (z(50), z(50));
        a.train(&mut x);
        // A test pass in between must not shift b's training noise.
        b.infer(&mut z(50));
        b.train(&mut y);
        assert_eq!(x.data, y.data);
    }
}
