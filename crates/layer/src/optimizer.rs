//! Optimizers, written as plain loops over f32 so that every engine (native,
//! wasm) performs exactly the same arithmetic in the same order: the update is
//! part of what must be bit-identical between replicas.

use crate::{OptimizerKind, TrainConfig};

/// Per-parameter optimizer state; lives with the layer (SPEC §2).
#[derive(Clone, Debug)]
pub(crate) struct ParamState {
    /// SGD momentum buffer, or Adam's first moment.
    pub m: Vec<f32>,
    /// Adam's second moment (empty for SGD).
    pub v: Vec<f32>,
}

impl ParamState {
    pub fn new(len: usize, kind: OptimizerKind) -> Self {
        let v = match kind {
            OptimizerKind::Sgd => Vec::new(),
            OptimizerKind::Adam => vec![0.0; len],
        };
        ParamState {
            m: vec![0.0; len],
            v,
        }
    }
}

/// One update of `w` with gradient `g`; `t` is the 1-based step number.
///
/// SGD follows PyTorch's definition (dampening 0, L2 weight decay added to the
/// gradient, buffer starts at the first gradient); Adam likewise with bias
/// correction, so results are comparable with the published recipes.
pub(crate) fn update(cfg: &TrainConfig, t: u64, w: &mut [f32], g: &[f32], st: &mut ParamState) {
    let lr = cfg.learning_rate;
    let wd = cfg.weight_decay;
    match cfg.optimizer {
        OptimizerKind::Sgd => {
            let mu = cfg.momentum;
            for ((w, &g), m) in w.iter_mut().zip(g).zip(st.m.iter_mut()) {
                let g = g + wd * *w;
                let step = if mu > 0.0 {
                    *m = if t == 1 { g } else { mu * *m + g };
                    *m
                } else {
                    g
                };
                *w -= lr * step;
            }
        }
        OptimizerKind::Adam => {
            let (b1, b2) = (cfg.beta1, cfg.beta2);
            let exp = i32::try_from(t).unwrap_or(i32::MAX);
            let c1 = 1.0 - b1.powi(exp);
            let c2 = 1.0 - b2.powi(exp);
            for (((w, &g), m), v) in w
                .iter_mut()
                .zip(g)
                .zip(st.m.iter_mut())
                .zip(st.v.iter_mut())
            {
                let g = g + wd * *w;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                let mhat = *m / c1;
                let vhat = *v / c2;
                *w -= lr * mhat / (vhat.sqrt() + cfg.epsilon);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_momentum_matches_hand_computation() {
        let cfg = TrainConfig {
            learning_rate: 0.1,
            momentum: 0.5,
            ..Default::default()
        };
        let mut w = vec![1.0f32];
        let mut st = ParamState::new(1, OptimizerKind::Sgd);
        update(&cfg, 1, &mut w, &[2.0], &mut st); // buf = 2, w = 1 - 0.2
        assert!((w[0] - 0.8).abs() < 1e-7);
        update(&cfg, 2, &mut w, &[2.0], &mut st); // buf = 0.5*2 + 2 = 3, w = 0.8 - 0.3
        assert!((w[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let cfg = TrainConfig {
            optimizer: OptimizerKind::Adam,
            learning_rate: 0.001,
            ..Default::default()
        };
        let mut w = vec![0.0f32, 0.0];
        let mut st = ParamState::new(2, OptimizerKind::Adam);
        update(&cfg, 1, &mut w, &[3.0, -0.5], &mut st);
        // Bias-corrected first step is lr * sign(g).
        assert!((w[0] + 0.001).abs() < 1e-6 && (w[1] - 0.001).abs() < 1e-6);
    }
}
