//! The black-box inverse-network attack (He et al. 2019, §5).
//!
//! The attacker can query the first part (it holds the shard after the cut
//! and can send inputs through the cascade, or owns a copy of the service)
//! but does not know its weights. It queries it on auxiliary inputs, gets
//! `(x, Z_K)` pairs, and trains a decoder `Z_K → x` ([`crate::decoder`])
//! with a mean-squared-error loss. The decoder is a `mixnn-layer` `Layer`
//! (tract over the `mixnn-grad` graphs, Adam) and the loss is
//! `mixnn_grad::mse_graph`, so the attack runs on the project's own engine.

use std::sync::Arc;

use mixnn_layer::{Layer, LossKind, OptimizerKind, Tensor, TrainConfig};
// tract's prelude brings its own `Tensor`; ours is mixnn-layer's.
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tract_onnx::prelude::*;

use crate::{AuditError, Cut, Victim};

/// How the decoder is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct InverseNetConfig {
    /// Passes over the auxiliary set.
    pub epochs: usize,
    /// Mini-batch size (the last, partial batch of an epoch is dropped).
    pub batch: usize,
    /// Adam step size.
    pub learning_rate: f32,
    /// Seeds the decoder's init and the epoch order.
    pub seed: u64,
}

impl Default for InverseNetConfig {
    /// Adam at 1e-3 with batches of 64, as the paper's PyTorch attacker.
    fn default() -> Self {
        InverseNetConfig {
            epochs: 5,
            batch: 64,
            learning_rate: 1e-3,
            seed: 1,
        }
    }
}

/// A trained decoder.
pub struct InverseNet {
    decoder: Layer,
    input_shape: Vec<usize>,
    z_shape: Vec<usize>,
    /// Mean training loss of each epoch (MSE per pixel), to show it learnt.
    pub epoch_loss: Vec<f64>,
}

/// The MSE loss graph compiled by tract for one batch shape.
struct Mse {
    plan: Arc<TypedRunnableModel>,
    shape: Vec<usize>,
}

fn tract_err(what: &str) -> impl Fn(tract_onnx::prelude::TractError) -> AuditError + '_ {
    move |e| AuditError::Tract(format!("{what}: {e:#}"))
}

/// The f32 values of a plain in-memory tract value.
fn plain_f32(v: &TValue) -> Result<&[f32], AuditError> {
    v.try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>())
        .map_err(tract_err("reading the loss graph's output"))
}

impl Mse {
    fn new(shape: &[usize]) -> Result<Mse, AuditError> {
        let g = mixnn_grad::mse_graph(shape);
        let mut m = tract_onnx::onnx()
            .model_for_proto_model(&g)
            .map_err(tract_err("loading the loss graph"))?;
        for ix in 0..2 {
            m.set_input_fact(ix, InferenceFact::dt_shape(DatumType::F32, shape))
                .map_err(tract_err("loss input shape"))?;
        }
        let plan = m
            .into_typed()
            .map_err(tract_err("typing the loss graph"))?
            .into_optimized()
            .map_err(tract_err("optimizing the loss graph"))?
            .into_runnable()
            .map_err(tract_err("planning the loss graph"))?;
        Ok(Mse {
            plan,
            shape: shape.to_vec(),
        })
    }

    /// Loss and its gradient with respect to `pred`.
    fn run(&self, pred: &[f32], target: &[f32]) -> Result<(f64, Vec<f32>), AuditError> {
        let t = |v: &[f32]| {
            tract_onnx::prelude::Tensor::from_shape(&self.shape, v)
                .map(IntoTValue::into_tvalue)
                .map_err(tract_err("loss input"))
        };
        let out = self
            .plan
            .run(tvec![t(pred)?, t(target)?])
            .map_err(tract_err("running the loss graph"))?;
        let [loss, grad] = out.as_slice() else {
            return Err(AuditError::Tract("the loss graph has two outputs".into()));
        };
        let loss = plain_f32(loss)?
            .first()
            .copied()
            .ok_or_else(|| AuditError::Tract("empty loss".into()))?;
        let grad = plain_f32(grad)?;
        Ok((f64::from(loss), grad.to_vec()))
    }
}

impl InverseNet {
    /// Trains the decoder for `cut` on the auxiliary inputs `aux`
    /// (`n × input_len` values), querying `victim` for their Z_K batch by
    /// batch (so no Z_K set is ever held whole).
    pub fn train(
        cut: &Cut,
        victim: &mut Victim,
        aux: &[f32],
        cfg: &InverseNetConfig,
    ) -> Result<InverseNet, AuditError> {
        let per = victim.input_len();
        let n = aux.len() / per.max(1);
        if cfg.batch == 0
            || cfg.epochs == 0
            || cfg.learning_rate.is_nan()
            || cfg.learning_rate <= 0.0
        {
            return Err(AuditError::Config(
                "inverse network: epochs, batch and learning rate must be positive".into(),
            ));
        }
        if n < cfg.batch || aux.len() != n * per {
            return Err(AuditError::Data(format!(
                "{} auxiliary values: not at least one batch of {} inputs of {per} values",
                aux.len(),
                cfg.batch
            )));
        }
        let model = crate::decoder(&cut.prefix, &cut.input_shape, &cut.z_shape, cfg.batch)?;
        let train_cfg = TrainConfig {
            optimizer: OptimizerKind::Adam,
            learning_rate: cfg.learning_rate,
            seed: cfg.seed,
            loss: LossKind::None,
            need_input_grad: false,
            host_kernels: false,
            ..TrainConfig::default()
        };
        let (decoder, _) = Layer::load(&mixnn_shard::encode(&model), train_cfg)?;
        let mut net = InverseNet {
            decoder,
            input_shape: cut.input_shape.clone(),
            z_shape: cut.z_shape.clone(),
            epoch_loss: Vec::with_capacity(cfg.epochs),
        };
        let x_shape: Vec<usize> = std::iter::once(cfg.batch)
            .chain(cut.input_shape.iter().copied())
            .collect();
        let z_shape: Vec<usize> = std::iter::once(cfg.batch)
            .chain(cut.z_shape.iter().copied())
            .collect();
        let mse = Mse::new(&x_shape)?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut order: Vec<usize> = (0..n).collect();
        let mut x = Vec::with_capacity(cfg.batch * per);
        for _ in 0..cfg.epochs {
            order.shuffle(&mut rng);
            let (mut total, mut steps) = (0.0, 0usize);
            for chunk in order.chunks_exact(cfg.batch) {
                x.clear();
                for &i in chunk {
                    x.extend_from_slice(&aux[i * per..(i + 1) * per]);
                }
                let z = victim.query(&x)?;
                let z = Tensor::new(z_shape.clone(), z).map_err(mixnn_layer::LayerError::from)?;
                let pred = net.decoder.forward(z)?;
                let (loss, grad) = mse.run(&pred.data, &x)?;
                let grad =
                    Tensor::new(x_shape.clone(), grad).map_err(mixnn_layer::LayerError::from)?;
                net.decoder.backward(grad)?;
                net.decoder.step()?;
                total += loss;
                steps += 1;
            }
            net.epoch_loss.push(total / steps.max(1) as f64);
        }
        Ok(net)
    }

    /// Reconstructions of the inputs whose Z_K are `z` (`n × z_len` values).
    pub fn invert(&mut self, z: &[f32]) -> Result<Vec<f32>, AuditError> {
        let per: usize = self.z_shape.iter().product();
        if per == 0 || z.is_empty() || !z.len().is_multiple_of(per) {
            return Err(AuditError::Data(format!(
                "{} values are not a batch of Z_K {:?}",
                z.len(),
                self.z_shape
            )));
        }
        let shape: Vec<usize> = std::iter::once(z.len() / per)
            .chain(self.z_shape.iter().copied())
            .collect();
        let t = Tensor::new(shape, z.to_vec()).map_err(mixnn_layer::LayerError::from)?;
        let x = self.decoder.infer(&t)?;
        debug_assert_eq!(
            x.data.len(),
            z.len() / per * self.input_shape.iter().product::<usize>()
        );
        Ok(x.data.into_iter().map(|v| v.clamp(0.0, 1.0)).collect())
    }
}
