//! A chain of layers run in one process: the single-process reference the
//! distributed run is compared with.

use mixnn_grad::pb;
use mixnn_layer::{LossKind, NamedTensor, Tensor, TrainConfig};
use mixnn_sandbox::Sandbox;

use crate::DesignerError;
use crate::backend::{EngineKind, LayerBackend, layer_config, load_layer};
use crate::defence::{CutNoise, NoiseSpec};
use crate::report::Repair;

/// The layers of a split model in shard order, all on one engine in this process.
pub struct Cascade {
    layers: Vec<Box<dyn LayerBackend>>,
    /// A defence applied to the output of one layer (see [`crate::defence`]).
    noise: Option<CutNoise>,
}

/// The loss that fits a model's last op: NLL after LogSoftmax (the paper's
/// MLP), softmax cross-entropy on raw logits otherwise.
pub fn loss_for(last_shard: &pb::ModelProto) -> LossKind {
    let last_op = last_shard
        .graph
        .as_ref()
        .and_then(|g| g.node.last())
        .map(|n| n.op_type.as_str());
    if last_op == Some("LogSoftmax") {
        LossKind::Nll
    } else {
        LossKind::SoftmaxCrossEntropy
    }
}

impl Cascade {
    /// Loads every shard on `engine` (the wasm engine needs a sandbox).
    pub fn load(
        engine: EngineKind,
        shards: &[pb::ModelProto],
        base: &TrainConfig,
        sandbox: Option<&Sandbox>,
    ) -> Result<Self, DesignerError> {
        let last = shards.last().ok_or(DesignerError::NoShards)?;
        let loss = loss_for(last);
        Self::load_with(engine, shards, sandbox, |i| {
            layer_config(base, i, shards.len(), loss)
        })
    }

    /// Loads every shard on `engine` with the config `config(i)` gives
    /// shard `i` (the parts of a fork-join differ from a chain in which
    /// layer computes the loss and which needs an input gradient).
    pub fn load_with(
        engine: EngineKind,
        shards: &[pb::ModelProto],
        sandbox: Option<&Sandbox>,
        config: impl Fn(usize) -> TrainConfig,
    ) -> Result<Self, DesignerError> {
        if shards.is_empty() {
            return Err(DesignerError::NoShards);
        }
        let mut layers: Vec<Box<dyn LayerBackend>> = Vec::with_capacity(shards.len());
        for (i, shard) in shards.iter().enumerate() {
            let bytes = mixnn_shard::encode(shard);
            layers.push(load_layer(engine, i, &bytes, config(i), sandbox)?);
        }
        Ok(Cascade {
            layers,
            noise: None,
        })
    }

    /// Trains and tests with `spec`'s noise on the output of its first
    /// `after` layers, its draws seeded by `seed` (the job's). A spec that
    /// changes nothing (level 0) is not installed, so the run is bit for
    /// bit the one without it. Errors: a cut that is not between two
    /// layers.
    pub fn set_cut_noise(&mut self, spec: NoiseSpec, seed: u64) -> Result<(), DesignerError> {
        if spec.after == 0 || spec.after >= self.layers.len() {
            return Err(DesignerError::NoiseCut {
                after: spec.after,
                shards: self.layers.len(),
            });
        }
        self.noise = (!spec.is_identity()).then(|| CutNoise::new(spec, seed));
        Ok(())
    }

    /// Number of layers (one per shard).
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the cascade has no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Cascade {
    /// Training forward through every layer (with the cut noise, if any);
    /// each layer keeps what its backward needs.
    pub fn forward_train(&mut self, x: Tensor) -> Result<Tensor, DesignerError> {
        let mut z = x;
        for (i, l) in self.layers.iter_mut().enumerate() {
            z = l.forward(z)?;
            if let Some(n) = self.noise.as_mut().filter(|n| n.spec().after == i + 1) {
                n.train(&mut z);
            }
        }
        Ok(z)
    }

    /// Backward from the gradient of the last forward's output, each
    /// layer stepping its optimizer right after its backward. Returns the
    /// input gradient when the first layer computes one.
    pub fn backward_train(&mut self, dz: Tensor) -> Result<Option<Tensor>, DesignerError> {
        let mut grad = dz;
        for (i, l) in self.layers.iter_mut().enumerate().rev() {
            let dx = l.backward(grad)?;
            l.step()?;
            match dx {
                Some(dx) => grad = dx,
                None if i == 0 => return Ok(None),
                None => return Err(DesignerError::NoInputGradient(i)),
            }
            // Layer i took Z_i: back through the noise applied to it.
            if let Some(n) = self.noise.as_ref().filter(|n| n.spec().after == i) {
                n.backward(&mut grad)?;
            }
        }
        Ok(Some(grad))
    }

    /// The loss of the last layer on `z` (the output of the last
    /// [`Cascade::forward_train`]) and its gradient.
    pub fn loss(&mut self, z: &Tensor, labels: &[i64]) -> Result<(f32, Tensor), DesignerError> {
        let last = self.layers.last_mut().ok_or(DesignerError::NoShards)?;
        last.loss(z, labels)
    }
}

impl Model for Cascade {
    /// One SGD step on a batch: forward through every layer, loss at the
    /// last, backward and update from the last to the first. Returns the loss.
    fn train_batch(&mut self, x: Tensor, labels: &[i64]) -> Result<f32, DesignerError> {
        let z = self.forward_train(x)?;
        let last = self.layers.len() - 1;
        let (loss, grad) = self.layers[last].loss(&z, labels)?;
        self.backward_train(grad)?;
        Ok(loss)
    }

    /// Test-phase forward through every layer.
    fn infer(&mut self, x: Tensor) -> Result<Tensor, DesignerError> {
        let mut z = x;
        for (i, l) in self.layers.iter_mut().enumerate() {
            z = l.infer(&z)?;
            if let Some(n) = self.noise.as_mut().filter(|n| n.spec().after == i + 1) {
                n.infer(&mut z);
            }
        }
        Ok(z)
    }

    /// Parameters of every layer, in shard order.
    fn export_params(&mut self) -> Result<Vec<Vec<NamedTensor>>, DesignerError> {
        self.layers.iter_mut().map(|l| l.export_params()).collect()
    }

    fn save_state(&mut self) -> Result<Vec<Vec<u8>>, DesignerError> {
        self.layers.iter_mut().map(|l| l.export_state()).collect()
    }

    fn load_state(&mut self, states: &[Vec<u8>]) -> Result<(), DesignerError> {
        if states.len() != self.layers.len() {
            return Err(DesignerError::ShardCount {
                shards: self.layers.len(),
                layers: states.len(),
            });
        }
        for (l, s) in self.layers.iter_mut().zip(states) {
            l.import_state(s)?;
        }
        Ok(())
    }
}

/// What the training loop needs of a cascade, wherever its layers run (one
/// process, or pool nodes).
pub trait Model {
    /// One optimizer step on a batch; returns the loss.
    fn train_batch(&mut self, x: Tensor, labels: &[i64]) -> Result<f32, DesignerError>;
    /// Test-phase forward through every layer.
    fn infer(&mut self, x: Tensor) -> Result<Tensor, DesignerError>;

    /// The test-phase forward of a stream of batches: `done(i, y)` gets
    /// the output of batch `i` (counted from 0), in any order. The test
    /// phase changes no weight, so a model may keep several batches in
    /// flight (the pool's pipelined test phase); each output is the one
    /// [`Model::infer`] gives for that batch, bit for bit. This default is
    /// one batch at a time. The first error ends the stream.
    fn infer_stream(
        &mut self,
        batches: &mut dyn Iterator<Item = Result<Tensor, DesignerError>>,
        done: &mut dyn FnMut(usize, Tensor) -> Result<(), DesignerError>,
    ) -> Result<(), DesignerError> {
        infer_each(self, batches, done)
    }
    /// Parameters of every layer, in shard order.
    fn export_params(&mut self) -> Result<Vec<Vec<NamedTensor>>, DesignerError>;

    /// Every layer's whole training state, one entry per shard in shard
    /// order (dummy hops are no shards and hold none): parameters,
    /// optimizer state, step count, dropout stream position. What a
    /// checkpoint holds; opaque bytes whose format `crates/layer` owns.
    /// Taken between steps. On the pool the states are of the masked
    /// cascade (a dummy's signs folded into the next layer's weights and
    /// moments) and only fit the same masked cascade, i.e. the same
    /// `job_secret`.
    fn save_state(&mut self) -> Result<Vec<Vec<u8>>, DesignerError>;

    /// Puts every layer back to states [`Model::save_state`] returned (one
    /// per shard, in shard order), so training continues bit for bit from
    /// there. A state a layer refuses is an error; that layer keeps its
    /// own (others may already hold theirs: reload the whole set).
    fn load_state(&mut self, states: &[Vec<u8>]) -> Result<(), DesignerError>;

    /// Called by the training loop after a step, test or checkpoint failed:
    /// replaces what failed so the job can go on from its latest checkpoint.
    /// `Ok(Some(_))`: repaired; the loop then loads the checkpoint's state
    /// into every layer and replays the data order from its step.
    /// `Ok(None)`: this model cannot repair that failure (the loop returns
    /// the failure). A model in one process never can.
    fn repair(&mut self, failure: &DesignerError) -> Result<Option<Repair>, DesignerError> {
        let _ = failure;
        Ok(None)
    }

    /// Lies the model found since last asked (a verified pool job's
    /// replicas); the training loop reports them.
    fn take_detections(&mut self) -> Vec<crate::report::Detection> {
        Vec::new()
    }

    /// Tells the model the loop went back to the checkpoint of `step`
    /// (after a repair, or at a resume), so it counts steps as the loop
    /// does.
    fn rolled_back(&mut self, step: u64) {
        let _ = step;
    }

    /// Which node holds which hop, and the network figures so far, when
    /// the layers run on the pool (`None` in one process): an observer of
    /// the training loop sees the cascade through it (the demo's `--kill`).
    fn network(&self) -> Option<crate::pool::NetworkReport> {
        None
    }

    /// Every cascade that holds the job, replica A first: a verified job
    /// (`--verify-replicas`) has two, so an observer can name a hop of
    /// either (the demo's `--lie b:HOP@STEP`). Empty in one process.
    fn networks(&self) -> Vec<crate::pool::NetworkReport> {
        self.network().into_iter().collect()
    }

    /// The trained model as one ONNX graph: each shard with its layer's
    /// current parameters, merged back into a chain.
    fn export_model(&mut self, shards: &[pb::ModelProto]) -> Result<pb::ModelProto, DesignerError> {
        let params = self.export_params()?;
        if params.len() != shards.len() {
            return Err(DesignerError::ShardCount {
                shards: shards.len(),
                layers: params.len(),
            });
        }
        let trained = shards
            .iter()
            .zip(&params)
            .map(|(shard, p)| with_params(shard, p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(mixnn_shard::merge(&trained)?)
    }
}

/// `shard` with its parameters set to `params` (a layer's export).
pub(crate) fn with_params(
    shard: &pb::ModelProto,
    params: &[NamedTensor],
) -> Result<pb::ModelProto, DesignerError> {
    let p: Vec<_> = (params.iter())
        .map(|t| {
            (
                t.name.clone(),
                t.tensor.shape.clone(),
                t.tensor.data.clone(),
            )
        })
        .collect();
    Ok(mixnn_shard::set_params(shard, &p)?)
}

/// The test phase one batch at a time ([`Model::infer_stream`]'s default,
/// and what a pool cascade does with a window of 1).
pub fn infer_each<M: Model + ?Sized>(
    model: &mut M,
    batches: &mut dyn Iterator<Item = Result<Tensor, DesignerError>>,
    done: &mut dyn FnMut(usize, Tensor) -> Result<(), DesignerError>,
) -> Result<(), DesignerError> {
    for (i, x) in batches.enumerate() {
        let y = model.infer(x?)?;
        done(i, y)?;
    }
    Ok(())
}
