//! The layer state machine: load → (forward → [loss] → backward → step)* ,
//! with `infer` and parameter export/import at any time.

mod external;

use std::collections::BTreeMap;
use std::sync::Arc;

use mixnn_grad::{GradOptions, MaskSpec, pb};
use prost::Message;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tract_onnx::prelude::{DatumType, TValue, TVec};

use crate::optimizer::{self, ParamState};
use crate::plans::{Feed, Plan, f32_slice, shared, to_tensor, value};
use crate::{
    LayerError, LossKind, LossOutput, NamedTensor, Tensor, TrainConfig, element_count, rng, state,
};

/// Largest batch a layer accepts; larger batches are a caller bug or an attack.
pub const MAX_BATCH: usize = 1 << 16;

/// What the host learns about a freshly loaded layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerInfo {
    /// Names of the trainable parameters, in export order.
    pub params: Vec<String>,
    /// Total number of trainable values (the sum of the parameters' element
    /// counts).
    pub param_count: u64,
    /// The shard's declared input shape (batch first).
    pub input_shape: Vec<usize>,
    /// Output shape for the declared batch size.
    pub output_shape: Vec<usize>,
}

struct Param {
    name: String,
    shape: Vec<usize>,
    value: Arc<tract_onnx::prelude::Tensor>,
    grad: Option<Vec<f32>>,
    state: ParamState,
}

/// Forward and backward plans for one batch size: the training pair of
/// `mixnn-grad`, whose forward also returns the activations the backward
/// reads, so no forward arithmetic runs twice.
struct TrainPlans {
    forward: Plan,
    backward: Plan,
    masks: Vec<MaskSpec>,
    output_shape: Vec<usize>,
}

/// Saved between `forward` and `backward`, as tract values (no copies): the
/// input and dropout masks (inputs of both graphs) and every output of the
/// training forward (the shard output, then the saved activations).
struct Pending {
    batch: usize,
    input: TValue,
    masks: Vec<TValue>,
    saved: TVec<TValue>,
}

/// One loaded shard with its parameters, optimizer state and compiled
/// plans (one set per batch size, built on first use). Calls go load →
/// (forward → [loss] → backward → step)*, with `infer` and parameter
/// export/import at any time.
pub struct Layer {
    model: pb::ModelProto,
    cfg: TrainConfig,
    input_shape: Vec<usize>,
    params: Vec<Param>,
    train: BTreeMap<usize, TrainPlans>,
    infer: BTreeMap<usize, Plan>,
    loss: BTreeMap<(usize, usize), Plan>,
    pending: Option<Pending>,
    step: u64,
    mask_rng: ChaCha8Rng,
}

impl Layer {
    /// Loads a shard and builds the plans for its declared batch size, so
    /// that a shard the builder cannot differentiate fails here, at deploy
    /// time, and not in the middle of an epoch.
    pub fn load(shard: &[u8], cfg: TrainConfig) -> Result<(Layer, LayerInfo), LayerError> {
        cfg.validate()?;
        let model = pb::ModelProto::decode(shard)
            .map_err(|e| LayerError::Shard(format!("not a readable ONNX model: {e}")))?;
        let input_shape = declared_input_shape(&model)?;
        let mut layer = Layer {
            model,
            input_shape: input_shape.clone(),
            params: Vec::new(),
            train: BTreeMap::new(),
            infer: BTreeMap::new(),
            loss: BTreeMap::new(),
            pending: None,
            step: 0,
            mask_rng: rng::rng(cfg.seed, 0),
            cfg,
        };
        let batch = input_shape[0];
        let specs = layer.build_train_plans(batch)?;
        for (i, spec) in specs.into_iter().enumerate() {
            let n = element_count(&spec.shape)?;
            let data = match spec.init {
                Some(d) if d.len() == n => d,
                Some(d) => {
                    return Err(LayerError::Shard(format!(
                        "parameter `{}` has {} values for shape {:?}",
                        spec.name,
                        d.len(),
                        spec.shape
                    )));
                }
                None => {
                    rng::kaiming_uniform(&spec.shape, &mut rng::rng(layer.cfg.seed, i as u64 + 1))
                }
            };
            layer.params.push(Param {
                value: shared(&spec.shape, &data)?,
                state: ParamState::new(n, layer.cfg.optimizer),
                name: spec.name,
                shape: spec.shape,
                grad: None,
            });
        }
        let info = LayerInfo {
            params: layer.params.iter().map(|p| p.name.clone()).collect(),
            param_count: layer
                .params
                .iter()
                .map(|p| p.shape.iter().product::<usize>() as u64)
                .sum(),
            input_shape,
            output_shape: layer.train[&batch].output_shape.clone(),
        };
        Ok((layer, info))
    }

    /// Training forward pass; keeps the input (and dropout masks) for `backward`.
    pub fn forward(&mut self, input: Tensor) -> Result<Tensor, LayerError> {
        let batch = self.check_input(&input)?;
        self.ensure_train_plans(batch)?;
        let plans = &self.train[&batch];
        let mut masks = Vec::with_capacity(plans.masks.len());
        for m in &plans.masks {
            let n = element_count(&m.shape)?;
            let data = rng::dropout_mask(n, m.ratio, &mut self.mask_rng);
            masks.push(value(&Tensor {
                shape: m.shape.clone(),
                data,
            })?);
        }
        let input = value(&input)?;
        let mut feeds = vec![Feed::Value(input.clone())];
        feeds.extend(self.params.iter().map(|p| Feed::Shared(p.value.clone())));
        feeds.extend(masks.iter().cloned().map(Feed::Value));
        let saved = plans.forward.run_values(feeds)?;
        let out = to_tensor(
            saved
                .first()
                .ok_or_else(|| LayerError::Tract("graph produced no output".into()))?,
        )?;
        self.pending = Some(Pending {
            batch,
            input,
            masks,
            saved,
        });
        Ok(out)
    }

    /// Loss and its gradient for `output` against class labels.
    pub fn loss(&mut self, output: &Tensor, labels: &[i64]) -> Result<LossOutput, LayerError> {
        let kind = match self.cfg.loss {
            LossKind::None => {
                return Err(LayerError::Order(
                    "this layer was loaded without a loss".into(),
                ));
            }
            LossKind::Nll => mixnn_grad::LossKind::Nll,
            LossKind::SoftmaxCrossEntropy => mixnn_grad::LossKind::SoftmaxCrossEntropy,
        };
        let (n, c) = match output.shape.as_slice() {
            &[n, c] if n > 0 && c > 0 => (n, c),
            s => {
                return Err(LayerError::BadTensor(format!(
                    "loss needs a [batch, classes] output, got {s:?}"
                )));
            }
        };
        if output.data.len() != n * c {
            return Err(LayerError::BadTensor(
                "output data does not fill its shape".into(),
            ));
        }
        if labels.len() != n {
            return Err(LayerError::BadTensor(format!(
                "{} labels for a batch of {n}",
                labels.len()
            )));
        }
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= c) {
            return Err(LayerError::BadTensor(format!("label {bad} outside 0..{c}")));
        }
        let plan = match self.loss.entry((n, c)) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let g = mixnn_grad::loss_graph(kind, n, c);
                let inputs = [(vec![n, c], DatumType::F32), (vec![n], DatumType::I64)];
                e.insert(Plan::compile(&g, &inputs, self.cfg.host_kernels)?)
            }
        };
        let outs = plan.run(vec![Feed::F32(output), Feed::I64(labels)])?;
        let [loss, grad]: [Tensor; 2] = outs
            .try_into()
            .map_err(|_| LayerError::Tract("loss graph must have two outputs".into()))?;
        let loss = *loss
            .data
            .first()
            .ok_or_else(|| LayerError::Tract("empty loss".into()))?;
        Ok(LossOutput { loss, grad })
    }

    /// Backward pass for the last forward; stores parameter gradients and
    /// returns the gradient of the input when the layer needs one.
    pub fn backward(&mut self, grad_output: Tensor) -> Result<Option<Tensor>, LayerError> {
        let pending = self
            .pending
            .take()
            .ok_or_else(|| LayerError::Order("backward without a preceding forward".into()))?;
        let plans = &self.train[&pending.batch];
        if grad_output.shape != plans.output_shape
            || grad_output.data.len() != element_count(&grad_output.shape)?
        {
            let want = plans.output_shape.clone();
            self.pending = Some(pending);
            return Err(LayerError::BadTensor(format!(
                "gradient of shape {:?}, expected {want:?}",
                grad_output.shape
            )));
        }
        let Pending {
            input,
            masks,
            saved,
            ..
        } = pending;
        let mut feeds = vec![Feed::Value(input)];
        feeds.extend(self.params.iter().map(|p| Feed::Shared(p.value.clone())));
        feeds.extend(masks.into_iter().map(Feed::Value));
        feeds.push(Feed::F32(&grad_output));
        feeds.extend(saved.into_iter().map(Feed::Value));
        let mut outs = plans.backward.run(feeds)?.into_iter();
        let dx = if self.cfg.need_input_grad {
            outs.next()
        } else {
            None
        };
        for p in self.params.iter_mut() {
            let g = outs.next().ok_or_else(|| {
                LayerError::Tract(format!("backward graph lacks the gradient of `{}`", p.name))
            })?;
            if g.data.len() != p.state.m.len() {
                return Err(LayerError::Tract(format!(
                    "gradient of `{}` has the wrong size",
                    p.name
                )));
            }
            p.grad = Some(g.data);
        }
        Ok(dx)
    }

    /// Applies the optimizer to the gradients of the last backward.
    pub fn step(&mut self) -> Result<(), LayerError> {
        if self.params.iter().any(|p| p.grad.is_none()) {
            return Err(LayerError::Order(
                "step without a preceding backward".into(),
            ));
        }
        self.step += 1;
        for p in self.params.iter_mut() {
            let Some(g) = p.grad.take() else { continue };
            let mut view = Arc::make_mut(&mut p.value)
                .try_as_plain_ram_mut()
                .map_err(|e| LayerError::tract("parameter", e))?;
            let w = view
                .as_slice_mut::<f32>()
                .map_err(|e| LayerError::tract("parameter", e))?;
            optimizer::update(&self.cfg, self.step, w, &g, &mut p.state);
        }
        Ok(())
    }

    /// Test-phase forward: no dropout, nothing remembered.
    pub fn infer(&mut self, input: &Tensor) -> Result<Tensor, LayerError> {
        let batch = self.check_input(input)?;
        if !self.infer.contains_key(&batch) {
            let shape = self.batch_shape(batch);
            let (g, specs) = mixnn_grad::inference_graph(&self.model, &shape)?;
            self.check_specs(specs.iter().map(|s| (&s.name, &s.shape)))?;
            let mut inputs = vec![(shape, DatumType::F32)];
            inputs.extend(
                self.params
                    .iter()
                    .map(|p| (p.shape.clone(), DatumType::F32)),
            );
            self.infer
                .insert(batch, Plan::compile(&g, &inputs, self.cfg.host_kernels)?);
        }
        let mut feeds = vec![Feed::F32(input)];
        feeds.extend(self.params.iter().map(|p| Feed::Shared(p.value.clone())));
        first(self.infer[&batch].run(feeds)?)
    }

    /// The current value of every parameter, named, in load order (the
    /// order of [`LayerInfo::params`] and the one `import_params` expects).
    pub fn export_params(&self) -> Result<Vec<NamedTensor>, LayerError> {
        self.params
            .iter()
            .map(|p| {
                let data = f32_slice(&p.value)?;
                Ok(NamedTensor {
                    name: p.name.clone(),
                    tensor: Tensor {
                        shape: p.shape.clone(),
                        data: data.to_vec(),
                    },
                })
            })
            .collect()
    }

    /// Replaces every parameter (checkpoint restore). All or nothing: a
    /// mismatch leaves the layer as it was.
    pub fn import_params(&mut self, params: Vec<NamedTensor>) -> Result<(), LayerError> {
        if params.len() != self.params.len() {
            return Err(LayerError::Params(format!(
                "{} tensors for {} parameters",
                params.len(),
                self.params.len()
            )));
        }
        let mut values = Vec::with_capacity(params.len());
        for (p, new) in self.params.iter().zip(&params) {
            if p.name != new.name
                || p.shape != new.tensor.shape
                || new.tensor.data.len() != p.state.m.len()
            {
                return Err(LayerError::Params(format!(
                    "`{}` does not match parameter `{}` {:?}",
                    new.name, p.name, p.shape
                )));
            }
            values.push(shared(&p.shape, &new.tensor.data)?);
        }
        for (p, v) in self.params.iter_mut().zip(values) {
            p.value = v;
            p.grad = None;
        }
        Ok(())
    }

    /// The layer's whole training state, as bytes ([`crate::state`]'s
    /// format): parameters, optimizer state, step count and the dropout
    /// stream's position. A layer loaded from the same shard and config
    /// that imports it continues bit for bit. Taken between steps only: a
    /// pending forward or gradient is an [`LayerError::State`] error, since
    /// its masks already advanced the dropout stream.
    pub fn export_state(&self) -> Result<Vec<u8>, LayerError> {
        if self.pending.is_some() || self.params.iter().any(|p| p.grad.is_some()) {
            return Err(LayerError::State(
                "a forward or gradient is pending; a state is taken between steps".into(),
            ));
        }
        let header = state::Header {
            optimizer: self.cfg.optimizer,
            step: self.step,
            rng_seed: self.mask_rng.get_seed(),
            rng_stream: self.mask_rng.get_stream(),
            rng_word_pos: self.mask_rng.get_word_pos(),
        };
        let params = self
            .params
            .iter()
            .map(|p| {
                Ok(state::ParamView {
                    name: &p.name,
                    shape: &p.shape,
                    value: f32_slice(&p.value)?,
                    m: &p.state.m,
                    v: &p.state.v,
                })
            })
            .collect::<Result<Vec<_>, LayerError>>()?;
        Ok(state::encode(&header, &params))
    }

    /// Puts the layer back to a state [`Layer::export_state`] wrote (on a
    /// layer of the same shard and config). All or nothing: a malformed or
    /// mismatched state is an error and leaves the layer as it was. A
    /// pending forward or gradient is dropped.
    pub fn import_state(&mut self, bytes: &[u8]) -> Result<(), LayerError> {
        let expect = state::Expect {
            optimizer: self.cfg.optimizer,
            rng_seed: rng::rng(self.cfg.seed, 0).get_seed(),
            params: self
                .params
                .iter()
                .map(|p| (p.name.as_str(), p.shape.as_slice()))
                .collect(),
        };
        let (header, decoded) = state::decode(bytes, &expect)?;
        let values = self
            .params
            .iter()
            .zip(&decoded)
            .map(|(p, d)| shared(&p.shape, &d.value))
            .collect::<Result<Vec<_>, _>>()?;
        let mut mask_rng = ChaCha8Rng::from_seed(header.rng_seed);
        mask_rng.set_stream(header.rng_stream);
        mask_rng.set_word_pos(header.rng_word_pos);
        for ((p, d), v) in self.params.iter_mut().zip(decoded).zip(values) {
            p.value = v;
            p.state.m = d.m;
            p.state.v = d.v;
            p.grad = None;
        }
        self.step = header.step;
        self.mask_rng = mask_rng;
        self.pending = None;
        Ok(())
    }

    fn batch_shape(&self, batch: usize) -> Vec<usize> {
        let mut s = self.input_shape.clone();
        s[0] = batch;
        s
    }

    /// Validates an incoming tensor against the shard's input and returns its batch size.
    fn check_input(&self, t: &Tensor) -> Result<usize, LayerError> {
        let ok_rank =
            t.shape.len() == self.input_shape.len() && t.shape[1..] == self.input_shape[1..];
        let batch = t.shape.first().copied().unwrap_or(0);
        if !ok_rank || batch == 0 || batch > MAX_BATCH {
            return Err(LayerError::BadTensor(format!(
                "input of shape {:?} does not fit this layer's input {:?} (batch 1..={MAX_BATCH})",
                t.shape, self.input_shape
            )));
        }
        if t.data.len() != element_count(&t.shape)? {
            return Err(LayerError::BadTensor(format!(
                "input data does not fill shape {:?}",
                t.shape
            )));
        }
        Ok(batch)
    }

    fn ensure_train_plans(&mut self, batch: usize) -> Result<(), LayerError> {
        if !self.train.contains_key(&batch) {
            let specs = self.build_train_plans(batch)?;
            self.check_specs(specs.iter().map(|s| (&s.name, &s.shape)))?;
        }
        Ok(())
    }

    /// Builds and stores the training plans for `batch`; returns the parameter specs.
    fn build_train_plans(
        &mut self,
        batch: usize,
    ) -> Result<Vec<mixnn_grad::ParamSpec>, LayerError> {
        let shape = self.batch_shape(batch);
        element_count(&shape)?;
        let opts = GradOptions {
            input_shape: shape.clone(),
            need_input_grad: self.cfg.need_input_grad,
        };
        let g = mixnn_grad::build(&self.model, &opts)?;
        let mut inputs = vec![(shape, DatumType::F32)];
        inputs.extend(g.params.iter().map(|p| (p.shape.clone(), DatumType::F32)));
        inputs.extend(g.masks.iter().map(|m| (m.shape.clone(), DatumType::F32)));
        let forward = Plan::compile(&g.train_forward, &inputs, self.cfg.host_kernels)?;
        // Backward: the forward's inputs, dZ, then the forward's outputs.
        inputs.push((g.output_shape.clone(), DatumType::F32));
        inputs.push((g.output_shape.clone(), DatumType::F32));
        inputs.extend(g.saved.iter().map(|s| {
            let dt = if s.integer {
                DatumType::I64
            } else {
                DatumType::F32
            };
            (s.shape.clone(), dt)
        }));
        let backward = Plan::compile(&g.train_backward, &inputs, self.cfg.host_kernels)?;
        self.train.insert(
            batch,
            TrainPlans {
                forward,
                backward,
                masks: g.masks,
                output_shape: g.output_shape,
            },
        );
        Ok(g.params)
    }

    /// Graphs for another batch size must take the same parameters.
    fn check_specs<'a>(
        &self,
        specs: impl Iterator<Item = (&'a String, &'a Vec<usize>)>,
    ) -> Result<(), LayerError> {
        let got: Vec<_> = specs.collect();
        let same = got.len() == self.params.len()
            && got
                .iter()
                .zip(&self.params)
                .all(|((n, s), p)| **n == p.name && **s == p.shape);
        if same {
            Ok(())
        } else {
            Err(LayerError::Shard(
                "parameters differ between batch sizes".into(),
            ))
        }
    }
}

fn first(outs: Vec<Tensor>) -> Result<Tensor, LayerError> {
    outs.into_iter()
        .next()
        .ok_or_else(|| LayerError::Tract("graph produced no output".into()))
}

/// The shard's data input shape, batch first. A symbolic batch dimension
/// becomes 1 (plans are built per actual batch anyway); any other symbolic
/// or absurd dimension is refused.
pub fn declared_input_shape(model: &pb::ModelProto) -> Result<Vec<usize>, LayerError> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| LayerError::Shard("model has no graph".into()))?;
    let inits: std::collections::BTreeSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input = graph
        .input
        .iter()
        .find(|i| !inits.contains(i.name.as_str()))
        .ok_or_else(|| LayerError::Shard("model has no data input".into()))?;
    let dims = input
        .r#type
        .as_ref()
        .and_then(|t| t.value.as_ref())
        .and_then(|pb::type_proto::Value::TensorType(t)| t.shape.as_ref())
        .ok_or_else(|| LayerError::Shard(format!("input `{}` has no tensor shape", input.name)))?;
    let mut shape = Vec::with_capacity(dims.dim.len());
    for (i, d) in dims.dim.iter().enumerate() {
        let v = match d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => v as usize,
            _ if i == 0 => 1,
            _ => {
                return Err(LayerError::Shard(format!(
                    "input `{}` dimension {i} is not a positive constant",
                    input.name
                )));
            }
        };
        shape.push(v);
    }
    if shape.is_empty() {
        return Err(LayerError::Shard(format!(
            "input `{}` is a scalar; a batch dimension is needed",
            input.name
        )));
    }
    element_count(&shape)?;
    Ok(shape)
}
