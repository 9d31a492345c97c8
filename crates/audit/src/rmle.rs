//! The white-box attack: regularised maximum likelihood (He et al. 2019,
//! §4). The attacker knows the first part's weights and searches the input
//! that best explains the observed Z_K:
//!
//! `x* = argmin_x  ‖f₁..K(x) − Z_K‖² / |Z_K|  +  λ · TV(x) / |x|`
//!
//! with the squared total variation `TV(x) = Σ (x[i+1,j] − x[i,j])² +
//! (x[i,j+1] − x[i,j])²` as the natural-image prior (the β = 2 form of
//! Mahendran and Vedaldi, which the paper's TV term follows). The data term
//! is divided by the size of Z_K and the prior by the number of pixels so
//! that one λ suits every cut. The descent starts from a constant grey
//! image, takes Adam steps on x with the input gradient of the first
//! part's backward graph (`mixnn-grad`, run by the `Layer`), and keeps x in
//! `[0, 1]` after each step (the images' range).

use crate::{AuditError, Victim};

/// The attack's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RmleConfig {
    /// Descent steps.
    pub steps: usize,
    /// Weight λ of the total-variation prior.
    pub lambda: f32,
    /// Adam step size on the pixels.
    pub learning_rate: f32,
    /// Value of every pixel of the starting image.
    pub start: f32,
    /// Adam's epsilon (He et al.'s code: 1e-3 on their [−1, 1] pixels,
    /// i.e. 2e-3 on ours).
    pub adam_epsilon: f32,
    /// Keep x in `[0, 1]` after every step (the audit's default), or only
    /// clip the final image, as He et al.'s code does.
    pub clamp_each_step: bool,
    /// Adam with AMSGrad (the largest second moment so far), as He et
    /// al.'s code.
    pub amsgrad: bool,
}

impl Default for RmleConfig {
    fn default() -> Self {
        RmleConfig {
            steps: 500,
            lambda: 0.05,
            learning_rate: 0.02,
            start: 0.5,
            adam_epsilon: 1e-8,
            clamp_each_step: true,
            amsgrad: false,
        }
    }
}

/// Squared total variation of `n` images of `h × w` (the last two dims of
/// the input), summed, and its gradient added into `grad` times `scale`.
fn tv_into(x: &[f32], h: usize, w: usize, scale: f32, grad: &mut [f32]) -> f64 {
    let mut tv = 0.0f64;
    for (img, g) in x.chunks_exact(h * w).zip(grad.chunks_exact_mut(h * w)) {
        for r in 0..h {
            for c in 0..w {
                let i = r * w + c;
                if r + 1 < h {
                    let d = img[i + w] - img[i];
                    tv += f64::from(d * d);
                    g[i + w] += scale * 2.0 * d;
                    g[i] -= scale * 2.0 * d;
                }
                if c + 1 < w {
                    let d = img[i + 1] - img[i];
                    tv += f64::from(d * d);
                    g[i + 1] += scale * 2.0 * d;
                    g[i] -= scale * 2.0 * d;
                }
            }
        }
    }
    tv
}

/// Reconstructs the inputs whose Z_K are `z` (`n × z_len` values) by
/// regularised maximum likelihood; returns `n × input_len` pixels.
pub fn rmle(victim: &mut Victim, z: &[f32], cfg: &RmleConfig) -> Result<Vec<f32>, AuditError> {
    let z_len = victim.z_len();
    let per = victim.input_len();
    if z_len == 0 || z.is_empty() || !z.len().is_multiple_of(z_len) {
        return Err(AuditError::Data(format!(
            "{} values are not a batch of Z_K of {z_len}",
            z.len()
        )));
    }
    if cfg.steps == 0
        || cfg.learning_rate.is_nan()
        || cfg.learning_rate <= 0.0
        || cfg.lambda.is_nan()
        || cfg.lambda < 0.0
        || !(cfg.adam_epsilon.is_finite() && cfg.adam_epsilon > 0.0)
    {
        return Err(AuditError::Config(
            "rMLE: steps, learning rate and Adam epsilon must be positive, λ ≥ 0".into(),
        ));
    }
    let shape = victim.input_shape().to_vec();
    let (h, w) = match shape.as_slice() {
        [.., h, w] if shape.len() >= 2 => (*h, *w),
        _ => (1, per),
    };
    let n = z.len() / z_len;
    let mut x = vec![cfg.start.clamp(0.0, 1.0); n * per];
    let (b1, b2, eps) = (0.9f32, 0.999f32, cfg.adam_epsilon);
    let lo = if cfg.clamp_each_step { 0.0 } else { f32::MIN };
    let hi = if cfg.clamp_each_step { 1.0 } else { f32::MAX };
    let mut m = vec![0.0f32; x.len()];
    let mut v = vec![0.0f32; x.len()];
    let mut v_max = vec![0.0f32; if cfg.amsgrad { x.len() } else { 0 }];
    let data_scale = 1.0 / z_len as f32;
    let tv_scale = cfg.lambda / (h * w) as f32;
    for t in 1..=cfg.steps {
        let (_, mut g) = victim.match_grad(&x, z)?;
        g.iter_mut().for_each(|gi| *gi *= data_scale);
        tv_into(&x, h, w, tv_scale, &mut g);
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for i in 0..x.len() {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let second = match v_max.get_mut(i) {
                Some(vm) => {
                    *vm = vm.max(v[i]);
                    *vm
                }
                None => v[i],
            };
            let step = cfg.learning_rate * (m[i] / c1) / ((second / c2).sqrt() + eps);
            x[i] = (x[i] - step).clamp(lo, hi);
        }
    }
    x.iter_mut().for_each(|p| *p = p.clamp(0.0, 1.0));
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tv_gradient_matches_finite_differences() {
        let x: Vec<f32> = (0..12).map(|i| ((i * 7) % 5) as f32 / 5.0).collect();
        let mut g = vec![0.0; 12];
        let base = tv_into(&x, 3, 4, 1.0, &mut g);
        for k in 0..12 {
            let mut p = x.clone();
            p[k] += 1e-2;
            let mut scratch = vec![0.0; 12];
            let up = tv_into(&p, 3, 4, 1.0, &mut scratch);
            p[k] -= 2e-2;
            let down = tv_into(&p, 3, 4, 1.0, &mut scratch);
            let num = (up - down) / 2e-2;
            assert!(
                (num - f64::from(g[k])).abs() < 1e-3,
                "{k}: {num} vs {}",
                g[k]
            );
        }
        assert!(base > 0.0);
    }

    /// He et al.'s variant (clipped only at the end) still returns an
    /// image in [0, 1] and takes a different path; a zero epsilon is
    /// refused.
    #[test]
    fn clip_at_end_returns_images_in_range_and_bad_epsilon_is_refused() {
        let model = mixnn_shard::lenet5(1, 1, mixnn_shard::Form::Gemm);
        let cut = crate::cut(&model, &crate::SplitAt::Node("conv1".into())).unwrap();
        let mut victim = Victim::new(&cut).unwrap();
        let x: Vec<f32> = (0..784).map(|i| ((i * 37) % 11) as f32 / 10.0).collect();
        let z = victim.query(&x).unwrap();
        let each = RmleConfig {
            steps: 20,
            learning_rate: 0.2,
            ..RmleConfig::default()
        };
        let end = RmleConfig {
            clamp_each_step: false,
            ..each.clone()
        };
        let a = rmle(&mut victim, &z, &each).unwrap();
        let b = rmle(&mut victim, &z, &end).unwrap();
        assert!(b.iter().all(|p| (0.0..=1.0).contains(p)));
        assert_ne!(a, b, "clamping each step changes the descent");
        let ams = RmleConfig {
            amsgrad: true,
            ..end.clone()
        };
        let c = rmle(&mut victim, &z, &ams).unwrap();
        assert!(c.iter().all(|p| (0.0..=1.0).contains(p)));
        assert_ne!(b, c, "AMSGrad takes other steps");
        let bad = RmleConfig {
            adam_epsilon: 0.0,
            ..each
        };
        assert!(rmle(&mut victim, &z, &bad).is_err());
    }
}
