//! The black-box inverse-network attack (He et al. 2019, §5).
//!
//! The attacker can query the first part (it holds the shard after the cut
//! and can send inputs through the cascade, or owns a copy of the service)
//! but does not know its weights. It queries it on auxiliary inputs, gets
//! `(x, Z_K)` pairs, and trains a decoder `Z_K → x` ([`crate::decoder`])
//! with a mean-squared-error loss. The decoder is a `mixnn-layer` `Layer`
//! (tract over the `mixnn-grad` graphs, Adam) and the loss is
//! `mixnn_grad::mse_graph`, so the attack runs on the project's own engine.
//!
//! A decoder whose ReLUs died draws black for every input and would report
//! a failed optimiser as a safe cut, so each trained decoder is checked
//! ([`crate::collapse`]) and a collapsed one retrained, up to
//! [`InverseNetConfig::tries`] times. Each retry takes the next seed (a new
//! init and epoch order), starts the last layer's bias at the mean pixel
//! value of the auxiliary images (so the final ReLU starts alive; the
//! layer's own init is what killed it) and halves the step size (against a
//! decoder pushed under mid-training, as at σ = 4). The first try is the
//! configured one, so a healthy run is exactly what it was without the
//! check. A training whose decoder drew 0 for every auxiliary image for a
//! whole epoch stops there (nothing can change any more), so a dead try
//! costs an epoch, not the whole budget.

use std::sync::Arc;

use mixnn_layer::{Layer, LossKind, OptimizerKind, Tensor, TrainConfig};
// tract's prelude brings its own `Tensor`; ours is mixnn-layer's.
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tract_onnx::prelude::*;

use crate::amsgrad::AmsGrad;
use crate::collapse::{Collapse, Health, mean_image};
use crate::{AuditError, Cut, DecoderOutput, DecoderShape, Victim};

/// Auxiliary images the collapse check runs the decoder on (rounded down
/// to whole batches): enough for a per-pixel spread, cheap next to an epoch.
const CHECK_IMAGES: usize = 1024;

/// How the decoder is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct InverseNetConfig {
    /// Passes over the auxiliary set.
    pub epochs: usize,
    /// Mini-batch size (the last, partial batch of an epoch is dropped).
    pub batch: usize,
    /// Adam step size.
    pub learning_rate: f32,
    /// Seeds the decoder's init and the epoch order (try k uses seed + k).
    pub seed: u64,
    /// Trainings at most: a collapsed decoder is retrained until one is
    /// healthy or this many ran (see the module docs); at least 1.
    pub tries: usize,
    /// The decoder's layers ([`DecoderShape`]).
    pub shape: DecoderShape,
    /// What follows the decoder's last layer ([`DecoderOutput`]).
    pub output: DecoderOutput,
    /// Adam's epsilon (He et al.'s code: 1e-3).
    pub adam_epsilon: f32,
    /// Adam (the default, as He et al.'s released code) or SGD with
    /// momentum 0.9 (as their paper's text says).
    pub optimizer: OptimizerKind,
    /// Adam with AMSGrad instead (He et al.'s code; `optimizer` is then
    /// ignored), run by the audit ([`crate::amsgrad`]).
    pub amsgrad: bool,
    /// Halve the step size after every this many epochs (0: never; He et
    /// al.'s code: 10 or 20).
    pub halve_every: usize,
}

impl Default for InverseNetConfig {
    /// Adam at 1e-3 with batches of 64, as the paper's PyTorch attacker.
    fn default() -> Self {
        InverseNetConfig {
            epochs: 5,
            batch: 64,
            learning_rate: 1e-3,
            seed: 1,
            tries: 3,
            shape: DecoderShape::Mirror,
            output: DecoderOutput::Relu,
            adam_epsilon: TrainConfig::default().epsilon,
            optimizer: OptimizerKind::Adam,
            amsgrad: false,
            halve_every: 0,
        }
    }
}

/// One training of the decoder and its check.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Seed of its init and epoch order.
    pub seed: u64,
    /// Its Adam step size.
    pub learning_rate: f32,
    /// Whether the last layer's bias started at the mean auxiliary pixel
    /// value (the retries) rather than the layer's random init.
    pub alive_start: bool,
    /// Mean training loss of each epoch (MSE per pixel).
    pub epoch_loss: Vec<f64>,
    /// The epoch after which the training stopped because the decoder
    /// output 0 for every auxiliary image throughout it: its final ReLU is
    /// dead and nothing can change any more.
    pub dead_after: Option<usize>,
    /// How the trained decoder did on the check images.
    pub health: Health,
    /// Why it counts as collapsed, if it does.
    pub collapse: Option<Collapse>,
}

/// A trained decoder.
pub struct InverseNet {
    decoder: Layer,
    input_shape: Vec<usize>,
    z_shape: Vec<usize>,
    /// Mean training loss of each epoch (MSE per pixel) of the decoder
    /// kept, to show it learnt.
    pub epoch_loss: Vec<f64>,
    /// Every training, in order.
    pub attempts: Vec<Attempt>,
    /// Index in `attempts` of the decoder kept: the first healthy one, or
    /// the one with the lowest check error when every one collapsed.
    pub kept: usize,
    /// Set by a training stopped early, dead (see [`Attempt::dead_after`]).
    dead_after: Option<usize>,
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
    /// batch (so no Z_K set is ever held whole), and retrains it while it
    /// comes out collapsed (module docs). `on_try` sees each attempt as it
    /// ends, for progress lines.
    pub fn train(
        cut: &Cut,
        victim: &mut Victim,
        aux: &[f32],
        cfg: &InverseNetConfig,
        on_try: &mut dyn FnMut(&Attempt),
    ) -> Result<InverseNet, AuditError> {
        let per = victim.input_len();
        let n = aux.len() / per.max(1);
        if cfg.batch == 0
            || cfg.epochs == 0
            || cfg.tries == 0
            || cfg.learning_rate.is_nan()
            || cfg.learning_rate <= 0.0
        {
            return Err(AuditError::Config(
                "inverse network: epochs, batch, tries and learning rate must be positive".into(),
            ));
        }
        if n < cfg.batch || aux.len() != n * per {
            return Err(AuditError::Data(format!(
                "{} auxiliary values: not at least one batch of {} inputs of {per} values",
                aux.len(),
                cfg.batch
            )));
        }
        let mean = mean_image(aux, per);
        // NaN errors (diverged) rank last.
        let score = |h: &Health| if h.mse.is_nan() { f64::INFINITY } else { h.mse };
        let mut kept: Option<(InverseNet, usize)> = None;
        let mut attempts: Vec<Attempt> = Vec::with_capacity(cfg.tries);
        for k in 0..cfg.tries {
            let seed = cfg.seed.wrapping_add(k as u64);
            let lr = cfg.learning_rate / (1u32 << k.min(30)) as f32;
            let alive = (k > 0).then_some(mean.as_slice());
            let mut net = InverseNet::train_once(cut, victim, aux, cfg, (seed, lr), alive)?;
            let health = net.check(victim, aux, &mean, cfg.batch)?;
            let attempt = Attempt {
                seed,
                learning_rate: lr,
                alive_start: alive.is_some(),
                epoch_loss: net.epoch_loss.clone(),
                dead_after: net.dead_after,
                collapse: health.collapse(),
                health,
            };
            on_try(&attempt);
            let healthy = attempt.collapse.is_none();
            let better = kept
                .as_ref()
                .and_then(|(_, i)| attempts.get(*i))
                .is_none_or(|b| healthy || score(&attempt.health) < score(&b.health));
            attempts.push(attempt);
            if better {
                kept = Some((net, k));
            }
            if healthy {
                break;
            }
        }
        let (mut net, k) = kept.ok_or_else(|| AuditError::Config("no training ran".into()))?;
        net.kept = k;
        net.attempts = attempts;
        Ok(net)
    }

    /// Whether the decoder kept is collapsed (then every try was), and how.
    pub fn collapse(&self) -> Option<Collapse> {
        self.attempts.get(self.kept).and_then(|a| a.collapse)
    }

    /// The collapse check: the decoder's reconstructions of the first
    /// [`CHECK_IMAGES`] auxiliary images (whole batches) against `mean`.
    fn check(
        &mut self,
        victim: &mut Victim,
        aux: &[f32],
        mean: &[f32],
        batch: usize,
    ) -> Result<Health, AuditError> {
        let per = mean.len();
        let n = aux.len() / per.max(1);
        let count = (CHECK_IMAGES.min(n) / batch.max(1)).max(1) * batch;
        let targets = aux.get(..count * per).ok_or_else(|| {
            AuditError::Data(format!(
                "{n} auxiliary images: fewer than one batch of {batch}"
            ))
        })?;
        let mut out = Vec::with_capacity(targets.len());
        for x in targets.chunks(batch * per) {
            let z = victim.query(x)?;
            out.extend(self.invert(&z)?);
        }
        Health::measure(&out, targets, mean)
    }

    /// One training of the decoder with this seed and step size; with
    /// `alive_start` (the mean auxiliary image), the last layer's bias
    /// starts at that image's mean value per output channel.
    fn train_once(
        cut: &Cut,
        victim: &mut Victim,
        aux: &[f32],
        cfg: &InverseNetConfig,
        (seed, learning_rate): (u64, f32),
        alive_start: Option<&[f32]>,
    ) -> Result<InverseNet, AuditError> {
        let per = victim.input_len();
        let n = aux.len() / per.max(1);
        let model = crate::decoder_with(
            &cut.prefix,
            &cut.input_shape,
            &cut.z_shape,
            cfg.batch,
            (cfg.shape, cfg.output),
        )?;
        let train_cfg = TrainConfig {
            optimizer: cfg.optimizer,
            learning_rate,
            epsilon: cfg.adam_epsilon,
            seed,
            loss: LossKind::None,
            need_input_grad: false,
            host_kernels: false,
            ..TrainConfig::default()
        };
        let (mut decoder, _) = Layer::load(&mixnn_shard::encode(&model), train_cfg)?;
        if let Some(mean) = alive_start {
            start_alive(&mut decoder, mean)?;
        }
        let mut net = InverseNet {
            decoder,
            input_shape: cut.input_shape.clone(),
            z_shape: cut.z_shape.clone(),
            epoch_loss: Vec::with_capacity(cfg.epochs),
            attempts: Vec::new(),
            kept: 0,
            dead_after: None,
        };
        let x_shape: Vec<usize> = std::iter::once(cfg.batch)
            .chain(cut.input_shape.iter().copied())
            .collect();
        let z_shape: Vec<usize> = std::iter::once(cfg.batch)
            .chain(cut.z_shape.iter().copied())
            .collect();
        let mse = Mse::new(&x_shape)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..n).collect();
        let mut x = Vec::with_capacity(cfg.batch * per);
        let mut ams = cfg.amsgrad.then(|| AmsGrad::new(cfg.adam_epsilon));
        let mut lr = learning_rate;
        for epoch in 1..=cfg.epochs {
            let now = crate::amsgrad::halved(learning_rate, epoch, cfg.halve_every);
            if now != lr {
                lr = now;
                net.decoder.set_learning_rate(lr)?;
            }
            order.shuffle(&mut rng);
            let (mut total, mut steps) = (0.0, 0usize);
            let mut alive = false;
            for chunk in order.chunks_exact(cfg.batch) {
                x.clear();
                for &i in chunk {
                    x.extend_from_slice(&aux[i * per..(i + 1) * per]);
                }
                let z = victim.query(&x)?;
                let z = Tensor::new(z_shape.clone(), z).map_err(mixnn_layer::LayerError::from)?;
                let pred = net.decoder.forward(z)?;
                alive = alive || pred.data.iter().any(|&v| v != 0.0);
                let (loss, grad) = mse.run(&pred.data, &x)?;
                let grad =
                    Tensor::new(x_shape.clone(), grad).map_err(mixnn_layer::LayerError::from)?;
                net.decoder.backward(grad)?;
                match ams.as_mut() {
                    Some(a) => a.step(&mut net.decoder, lr)?,
                    None => net.decoder.step()?,
                }
                total += loss;
                steps += 1;
            }
            net.epoch_loss.push(total / steps.max(1) as f64);
            if !alive {
                // The final ReLU gave 0 for every auxiliary image for a
                // whole epoch: every gradient was exactly 0, Adam's moments
                // decayed (0.9 per step), so the weights are frozen and
                // the epochs left would change nothing.
                net.dead_after = Some(epoch);
                break;
            }
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

/// Sets the bias of the decoder's last layer to the mean of `mean_image`
/// over each of its output channels (per pixel when the last layer is a
/// Gemm): every output then starts at the best constant prediction, above
/// 0 wherever the images are not black, so the final ReLU starts alive.
/// The layer's own init draws a 1-channel bias from U(−1, 1), which left
/// the final ReLU dead from the first step in 3 of 3 seeds at relu2.
fn start_alive(decoder: &mut Layer, mean_image: &[f32]) -> Result<(), AuditError> {
    let mut params = decoder.export_params()?;
    // Parameters load in layer order (`decN.weight`, `decN.bias`), so the
    // last bias is the last layer's.
    let bias = params
        .iter_mut()
        .rev()
        .find(|p| p.name.ends_with(".bias"))
        .ok_or_else(|| AuditError::Model("the decoder has no bias".into()))?;
    let channels = bias.tensor.data.len();
    if channels == 0 || mean_image.len() < channels || !mean_image.len().is_multiple_of(channels) {
        return Err(AuditError::Model(format!(
            "the decoder's last bias has {channels} values for a {}-value image",
            mean_image.len()
        )));
    }
    let per = mean_image.len() / channels;
    for (b, plane) in bias
        .tensor
        .data
        .iter_mut()
        .zip(mean_image.chunks_exact(per))
    {
        *b = plane.iter().sum::<f32>() / per as f32;
    }
    decoder.import_params(params)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SplitAt;

    /// LeNet-5 cut after conv1, its victim, and `n` images with a random
    /// bright square each (MNIST-like: mostly black, varied content).
    fn setup(n: usize) -> (Cut, Victim, Vec<f32>) {
        let model = mixnn_shard::lenet5(1, 1, mixnn_shard::Form::Gemm);
        let cut = crate::cut(&model, &SplitAt::Node("conv1".into())).unwrap();
        let victim = Victim::new(&cut).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut aux = vec![0.0f32; n * 784];
        for img in aux.chunks_exact_mut(784) {
            let (r, c) = (
                rand::Rng::gen_range(&mut rng, 0..20),
                rand::Rng::gen_range(&mut rng, 0..20),
            );
            for y in r..r + 8 {
                for x in c..c + 8 {
                    img[y * 28 + x] = 1.0;
                }
            }
        }
        (cut, victim, aux)
    }

    fn cfg(tries: usize) -> InverseNetConfig {
        InverseNetConfig {
            epochs: 3,
            batch: 32,
            learning_rate: 3e-3,
            seed: 1,
            tries,
            output: DecoderOutput::Relu,
            ..InverseNetConfig::default()
        }
    }

    #[test]
    fn a_dead_decoder_is_collapsed_and_a_trained_one_is_not() {
        let (cut, mut victim, aux) = setup(256);
        let mut seen = 0;
        let mut net =
            InverseNet::train(&cut, &mut victim, &aux, &cfg(3), &mut |_| seen += 1).unwrap();
        // Tries run until the first healthy one, which is kept.
        assert_eq!(seen, net.attempts.len());
        assert_eq!(net.kept, net.attempts.len() - 1, "{:?}", net.attempts);
        assert_eq!(net.collapse(), None, "{:?}", net.attempts);
        let (kept, before) = net.attempts.split_last().unwrap();
        assert!(before.iter().all(|a| a.collapse.is_some()));
        assert!(
            kept.health.mse < 0.5 * kept.health.mean_image_mse,
            "{kept:?}"
        );
        assert_eq!(net.epoch_loss, kept.epoch_loss);
        // Kill the last layer: zero weights and a negative bias make every
        // pre-activation of the final ReLU negative.
        let mut params = net.decoder.export_params().unwrap();
        let last = params
            .iter()
            .rposition(|p| p.name.ends_with(".bias"))
            .unwrap();
        let last_layer = params[last].name.trim_end_matches(".bias").to_string();
        for p in params
            .iter_mut()
            .filter(|p| p.name.starts_with(&last_layer))
        {
            let v = if p.name.ends_with(".bias") { -1.0 } else { 0.0 };
            p.tensor.data.iter_mut().for_each(|x| *x = v);
        }
        net.decoder.import_params(params).unwrap();
        let mean = mean_image(&aux, 784);
        let dead = net.check(&mut victim, &aux, &mean, 32).unwrap();
        assert_eq!(dead.spread, 0.0);
        assert_eq!(dead.collapse(), Some(Collapse::Constant), "{dead:?}");
        let z = victim.query(&aux[..784]).unwrap();
        assert!(net.invert(&z).unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn a_decoder_that_collapses_every_time_is_retried_and_flagged() {
        // Identical auxiliary images: whatever the seed, the decoder can
        // only draw one image, so every try is collapsed.
        let (cut, mut victim, _) = setup(0);
        let aux = vec![0.5f32; 64 * 784];
        let mut seen = Vec::new();
        let net = InverseNet::train(&cut, &mut victim, &aux, &cfg(3), &mut |a| seen.push(a.seed))
            .unwrap();
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(net.attempts.len(), 3);
        let lrs: Vec<f32> = net.attempts.iter().map(|a| a.learning_rate).collect();
        assert_eq!(lrs, vec![3e-3, 1.5e-3, 0.75e-3]);
        let alive: Vec<bool> = net.attempts.iter().map(|a| a.alive_start).collect();
        assert_eq!(alive, vec![false, true, true]);
        assert_eq!(net.collapse(), Some(Collapse::Constant));
        assert!(net.attempts.iter().all(|a| a.collapse.is_some()));
        assert_eq!(net.epoch_loss, net.attempts[net.kept].epoch_loss);
        let zero = InverseNetConfig { tries: 0, ..cfg(3) };
        assert!(InverseNet::train(&cut, &mut victim, &aux, &zero, &mut |_| ()).is_err());
    }

    #[test]
    fn an_alive_start_sets_the_last_bias_to_the_mean_pixel() {
        let (cut, mut victim, aux) = setup(64);
        let mean = mean_image(&aux, 784);
        // Seed 2 draws the single output channel's bias at -0.99: the
        // final ReLU is dead from the start.
        let model = crate::decoder(&cut.prefix, &cut.input_shape, &cut.z_shape, 32).unwrap();
        let load = || {
            let c = TrainConfig {
                seed: 2,
                loss: LossKind::None,
                ..TrainConfig::default()
            };
            Layer::load(&mixnn_shard::encode(&model), c).unwrap().0
        };
        let z = victim.query(&aux[..32 * 784]).unwrap();
        let z = Tensor::new(vec![32, 6, 28, 28], z).unwrap();
        let mut dead = load();
        let bias = |l: &Layer| l.export_params().unwrap().pop().unwrap().tensor.data;
        assert!(bias(&dead)[0] < -0.9);
        let alive = |l: &mut Layer| {
            let out = l.infer(&z).unwrap().data;
            out.iter().filter(|&&v| v > 0.0).count() as f64 / out.len() as f64
        };
        let before = alive(&mut dead);
        start_alive(&mut dead, &mean).unwrap();
        let after = alive(&mut dead);
        assert!(before < 0.05 && after > 0.5, "{before} -> {after}");
        let want = mean.iter().sum::<f32>() / 784.0;
        assert!(
            (bias(&dead)[0] - want).abs() < 1e-6,
            "{:?} vs {want}",
            bias(&dead)
        );
        assert!(start_alive(&mut dead, &[]).is_err());
    }
}
