//! The standard layer guest: exports the `mixnn:layer` world over one
//! [`mixnn_layer::Layer`]. All behaviour lives in `mixnn-layer` (shared with
//! the native engine); this file only converts between WIT and Rust types.

use std::cell::RefCell;

use mixnn_layer::{Layer, LayerError, LossKind, OptimizerKind, Tensor, TrainConfig};

mod bindings {
    wit_bindgen::generate!({ world: "layer", path: "../../wit" });
}

use bindings::Guest;
use bindings::mixnn::layer::types;

thread_local! {
    /// One layer per instance: the host gives every layer its own instance.
    static LAYER: RefCell<Option<Layer>> = const { RefCell::new(None) };
}

struct StandardGuest;

fn err(e: LayerError) -> String {
    e.to_string()
}

fn from_wit(t: types::Tensor) -> Result<Tensor, String> {
    Tensor::new(t.shape.into_iter().map(|d| d as usize).collect(), t.data).map_err(err)
}

fn to_wit(t: Tensor) -> Result<types::Tensor, String> {
    let shape = t
        .shape
        .iter()
        .map(|&d| u32::try_from(d).map_err(|_| format!("dimension {d} too large")))
        .collect::<Result<_, _>>()?;
    Ok(types::Tensor { shape, data: t.data })
}

fn with_layer<R>(f: impl FnOnce(&mut Layer) -> Result<R, String>) -> Result<R, String> {
    LAYER.with(|l| match l.borrow_mut().as_mut() {
        Some(layer) => f(layer),
        None => Err("no layer loaded: call load first".to_string()),
    })
}

fn config(c: types::TrainConfig) -> TrainConfig {
    TrainConfig {
        optimizer: match c.optimizer {
            types::OptimizerKind::Sgd => OptimizerKind::Sgd,
            types::OptimizerKind::Adam => OptimizerKind::Adam,
        },
        learning_rate: c.learning_rate,
        momentum: c.momentum,
        weight_decay: c.weight_decay,
        beta1: c.beta1,
        beta2: c.beta2,
        epsilon: c.epsilon,
        seed: c.seed,
        loss: match c.loss {
            types::LossKind::None => LossKind::None,
            types::LossKind::Nll => LossKind::Nll,
            types::LossKind::SoftmaxCrossEntropy => LossKind::SoftmaxCrossEntropy,
        },
        need_input_grad: c.need_input_grad,
        // Products, convolutions and the slow row ops go through `kernels` in
        // both modes; `c.host_kernels` tells the host, not us, where they run.
        host_kernels: true,
    }
}

/// The host's product kernel, as `mixnn-layer` calls it (in both modes: the
/// host computes natively or in its wasm product kernel).
fn host_matmul(
    a: &[f32],
    b: &[f32],
    d: mixnn_layer::host_kernels::MatMulDims,
) -> Result<Vec<f32>, String> {
    let dim = |v: usize| u32::try_from(v).map_err(|_| format!("dimension {v} too large"));
    bindings::mixnn::layer::kernels::matmul(
        bits(a),
        bits(b),
        dim(d.m)?,
        dim(d.k)?,
        dim(d.n)?,
        d.a_trans,
        d.b_trans,
    )
}

/// f32 values as their bit patterns, in place (the host reads them there).
fn bits(x: &[f32]) -> &[u32] {
    // SAFETY: same size and alignment, every bit pattern valid for both.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u32>(), x.len()) }
}

impl Guest for StandardGuest {
    fn load(shard: Vec<u8>, cfg: types::TrainConfig) -> Result<types::LayerInfo, String> {
        // The host serves `kernels` in both modes (natively or in its wasm
        // product kernel), so the layer hands it every product.
        let limit = bindings::mixnn::layer::kernels::matmul_limit();
        mixnn_layer::host_kernels::install_host_matmul(host_matmul, limit);
        let (layer, info) = Layer::load(&shard, config(cfg)).map_err(err)?;
        LAYER.with(|l| *l.borrow_mut() = Some(layer));
        Ok(types::LayerInfo {
            params: info.params,
            param_count: info.param_count,
            output_shape: info.output_shape.iter().map(|&d| d as u32).collect(),
        })
    }

    fn forward(input: types::Tensor) -> Result<types::Tensor, String> {
        let x = from_wit(input)?;
        with_layer(|l| to_wit(l.forward(x).map_err(err)?))
    }

    fn loss(output: types::Tensor, labels: Vec<i64>) -> Result<types::LossOutput, String> {
        let z = from_wit(output)?;
        with_layer(|l| {
            let out = l.loss(&z, &labels).map_err(err)?;
            Ok(types::LossOutput { loss: out.loss, grad: to_wit(out.grad)? })
        })
    }

    fn backward(grad_output: types::Tensor) -> Result<Option<types::Tensor>, String> {
        let dz = from_wit(grad_output)?;
        with_layer(|l| l.backward(dz).map_err(err)?.map(to_wit).transpose())
    }

    fn step() -> Result<(), String> {
        with_layer(|l| l.step().map_err(err))
    }

    fn infer(input: types::Tensor) -> Result<types::Tensor, String> {
        let x = from_wit(input)?;
        with_layer(|l| to_wit(l.infer(&x).map_err(err)?))
    }

    fn export_params() -> Result<Vec<types::NamedTensor>, String> {
        with_layer(|l| {
            l.export_params()
                .map_err(err)?
                .into_iter()
                .map(|p| {
                    let t = to_wit(p.tensor)?;
                    Ok(types::NamedTensor { name: p.name, shape: t.shape, data: t.data })
                })
                .collect()
        })
    }

    fn import_params(params: Vec<types::NamedTensor>) -> Result<(), String> {
        let params = params
            .into_iter()
            .map(|p| {
                let tensor = from_wit(types::Tensor { shape: p.shape, data: p.data })?;
                Ok(mixnn_layer::NamedTensor { name: p.name, tensor })
            })
            .collect::<Result<Vec<_>, String>>()?;
        with_layer(|l| l.import_params(params).map_err(err))
    }
}

bindings::export!(StandardGuest with_types_in bindings);
