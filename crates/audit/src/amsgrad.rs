//! Adam with AMSGrad, as PyTorch's `optim.Adam(amsgrad=True)` computes it,
//! for the decoder only: He et al.'s released code trains its decoders
//! with it. The engine's own optimizers are what cascades and replicas
//! share bit for bit, so this one lives with the audit and drives the
//! layer through `take_grads` / `import_params`.

use mixnn_layer::{Layer, NamedTensor};

use crate::AuditError;

/// Moments of every parameter, in the layer's order.
pub struct AmsGrad {
    epsilon: f32,
    step: i32,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    v_max: Vec<Vec<f32>>,
}

impl AmsGrad {
    /// Zero moments, ε as given (He et al.: 1e-3); betas 0.9 and 0.999.
    pub fn new(epsilon: f32) -> Self {
        AmsGrad {
            epsilon,
            step: 0,
            m: Vec::new(),
            v: Vec::new(),
            v_max: Vec::new(),
        }
    }

    /// One update of `layer` from the gradients of its last backward:
    /// `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`, `v̂ ← max(v̂, v)`,
    /// `w ← w − lr/(1−β1ᵗ) · m / (√v̂ / √(1−β2ᵗ) + ε)`.
    pub fn step(&mut self, layer: &mut Layer, lr: f32) -> Result<(), AuditError> {
        let (b1, b2) = (0.9f32, 0.999f32);
        let grads = layer.take_grads()?;
        let mut params = layer.export_params()?;
        if self.m.is_empty() {
            let zeros = |g: &NamedTensor| vec![0.0f32; g.tensor.data.len()];
            self.m = grads.iter().map(zeros).collect();
            self.v = grads.iter().map(zeros).collect();
            self.v_max = grads.iter().map(zeros).collect();
        }
        if self.m.len() != grads.len() || params.len() != grads.len() {
            return Err(AuditError::Model(format!(
                "{} gradients for {} parameters",
                grads.len(),
                params.len()
            )));
        }
        self.step = self.step.saturating_add(1);
        let c1 = 1.0 - b1.powi(self.step);
        let c2 = (1.0 - b2.powi(self.step)).sqrt();
        for (k, (p, g)) in params.iter_mut().zip(&grads).enumerate() {
            let (m, v, vm) = (&mut self.m[k], &mut self.v[k], &mut self.v_max[k]);
            let w = &mut p.tensor.data;
            if w.len() != g.tensor.data.len() || m.len() != w.len() {
                return Err(AuditError::Model(format!(
                    "gradient of `{}` does not match the parameter",
                    p.name
                )));
            }
            let moments = Moments { m, v, v_max: vm };
            update(w, &g.tensor.data, moments, (lr, c1, c2, self.epsilon));
        }
        layer.import_params(params)?;
        Ok(())
    }
}

/// The step size of (1-based) `epoch` when it halves after every `every`
/// epochs (0: never), as He et al.'s code schedules it; it stops at the
/// smallest normal f32 rather than reaching 0.
pub fn halved(base: f32, epoch: usize, every: usize) -> f32 {
    if every == 0 {
        return base;
    }
    let halvings = epoch.saturating_sub(1) / every;
    let shift = i32::try_from(halvings).unwrap_or(i32::MAX);
    (base * 0.5f32.powi(shift)).max(f32::MIN_POSITIVE)
}

/// One parameter's moments.
struct Moments<'a> {
    m: &'a mut [f32],
    v: &'a mut [f32],
    v_max: &'a mut [f32],
}

/// The update of one parameter; `(lr, c1, c2, ε)` with `c1 = 1 − β1ᵗ` and
/// `c2 = √(1 − β2ᵗ)`.
fn update(w: &mut [f32], g: &[f32], s: Moments<'_>, (lr, c1, c2, eps): (f32, f32, f32, f32)) {
    let (b1, b2) = (0.9f32, 0.999f32);
    for i in 0..w.len() {
        let gi = g[i];
        s.m[i] = b1 * s.m[i] + (1.0 - b1) * gi;
        s.v[i] = b2 * s.v[i] + (1.0 - b2) * gi * gi;
        s.v_max[i] = s.v_max[i].max(s.v[i]);
        w[i] -= lr / c1 * s.m[i] / (s.v_max[i].sqrt() / c2 + eps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked by hand from PyTorch's formula (lr 0.1, ε 1e-8): a gradient
    /// of 1, then 0. Step 1: m = 0.1, v = v̂ = 0.001, w = 1 − 0.1 = 0.9.
    /// Step 2: m = 0.09, v = 0.000999 but v̂ stays 0.001, c1 = 0.19,
    /// c2 = √0.001999: w = 0.9 − (0.1/0.19)·0.09/(√0.001/√0.001999)
    /// = 0.833027 (Adam, with v, would give 0.832994).
    #[test]
    fn two_steps_land_on_the_hand_computed_values() {
        let (mut m, mut v, mut vm) = ([0.0f32], [0.0f32], [0.0f32]);
        let mut w = [1.0f32];
        let mut after = Vec::new();
        for (t, g) in [(1i32, 1.0f32), (2, 0.0)] {
            let c1 = 1.0 - 0.9f32.powi(t);
            let c2 = (1.0 - 0.999f32.powi(t)).sqrt();
            let s = Moments {
                m: &mut m,
                v: &mut v,
                v_max: &mut vm,
            };
            update(&mut w, &[g], s, (0.1, c1, c2, 1e-8));
            after.push(w[0]);
        }
        assert!((after[0] - 0.9).abs() < 1e-6, "{after:?}");
        assert!((after[1] - 0.833_027).abs() < 2e-6, "{after:?}");
    }

    #[test]
    fn the_step_halves_on_schedule_and_never_reaches_zero() {
        assert_eq!(halved(1e-3, 1, 0), 1e-3);
        assert_eq!(halved(1e-3, 50, 0), 1e-3);
        assert_eq!(halved(1.0, 10, 10), 1.0);
        assert_eq!(halved(1.0, 11, 10), 0.5);
        assert_eq!(halved(1.0, 21, 10), 0.25);
        assert!(halved(1e-3, 10_000, 1) > 0.0);
    }

    /// Two steps by hand (PyTorch's formula): a gradient, then none
    /// (momentum moves on); the second step divides by the first's larger second
    /// moment, so it is smaller than Adam's.
    #[test]
    fn two_steps_match_the_formula_and_keep_the_larger_second_moment() {
        let (lr, eps) = (0.1f32, 1e-8f32);
        let (mut m, mut v, mut vm) = ([0.0f32], [0.0f32], [0.0f32]);
        let mut w = [1.0f32];
        let mut expect = 1.0f64;
        let (mut em, mut ev, mut evm) = (0.0f64, 0.0f64, 0.0f64);
        for (t, g) in [(1i32, 1.0f32), (2, 0.0)] {
            let c1 = 1.0 - 0.9f32.powi(t);
            let c2 = (1.0 - 0.999f32.powi(t)).sqrt();
            let s = Moments {
                m: &mut m,
                v: &mut v,
                v_max: &mut vm,
            };
            update(&mut w, &[g], s, (lr, c1, c2, eps));
            let g = f64::from(g);
            em = 0.9 * em + 0.1 * g;
            ev = 0.999 * ev + 0.001 * g * g;
            evm = evm.max(ev);
            let (c1, c2) = (1.0 - 0.9f64.powi(t), (1.0 - 0.999f64.powi(t)).sqrt());
            let step = f64::from(lr) / c1 * em / (evm.sqrt() / c2 + f64::from(eps));
            expect -= step;
            if t == 2 {
                let adam = f64::from(lr) / c1 * em / (ev.sqrt() / c2 + f64::from(eps));
                assert!(step < adam, "AMSGrad {step} vs Adam {adam}");
            }
        }
        assert!(
            (f64::from(w[0]) - expect).abs() < 1e-6,
            "{} vs {expect}",
            w[0]
        );
        assert!(vm[0] > v[0], "the maximum of v is kept");
    }
}
