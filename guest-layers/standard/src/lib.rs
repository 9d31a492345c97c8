//! The standard layer guest: exports the `mixnn:layer` world over one
//! [`mixnn_layer::Layer`]. All behaviour lives in `mixnn-layer` (shared with
//! the native engine); this file only hands the calls over, and `convert`
//! turns the WIT records into the shared types of `mixnn-types`.

use std::cell::RefCell;

use mixnn_layer::{Layer, LayerError};

mod bindings {
    wit_bindgen::generate!({ world: "layer", path: "../../wit" });
}
mod convert;

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

fn with_layer<R>(f: impl FnOnce(&mut Layer) -> Result<R, String>) -> Result<R, String> {
    LAYER.with(|l| match l.borrow_mut().as_mut() {
        Some(layer) => f(layer),
        None => Err("no layer loaded: call load first".to_string()),
    })
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
        let (layer, info) = Layer::load(&shard, convert::config(cfg)).map_err(err)?;
        LAYER.with(|l| *l.borrow_mut() = Some(layer));
        Ok(types::LayerInfo {
            params: info.params,
            param_count: info.param_count,
            output_shape: info.output_shape.iter().map(|&d| d as u32).collect(),
        })
    }

    fn forward(input: types::Tensor) -> Result<types::Tensor, String> {
        let x = convert::tensor_in(input)?;
        with_layer(|l| convert::tensor_out(l.forward(x).map_err(err)?))
    }

    fn loss(output: types::Tensor, labels: Vec<i64>) -> Result<types::LossOutput, String> {
        let z = convert::tensor_in(output)?;
        with_layer(|l| {
            let out = l.loss(&z, &labels).map_err(err)?;
            Ok(types::LossOutput { loss: out.loss, grad: convert::tensor_out(out.grad)? })
        })
    }

    fn backward(grad_output: types::Tensor) -> Result<Option<types::Tensor>, String> {
        let dz = convert::tensor_in(grad_output)?;
        with_layer(|l| l.backward(dz).map_err(err)?.map(convert::tensor_out).transpose())
    }

    fn step() -> Result<(), String> {
        with_layer(|l| l.step().map_err(err))
    }

    fn infer(input: types::Tensor) -> Result<types::Tensor, String> {
        let x = convert::tensor_in(input)?;
        with_layer(|l| convert::tensor_out(l.infer(&x).map_err(err)?))
    }

    fn export_params() -> Result<Vec<types::NamedTensor>, String> {
        with_layer(|l| l.export_params().map_err(err)?.into_iter().map(convert::named_out).collect())
    }

    fn import_params(params: Vec<types::NamedTensor>) -> Result<(), String> {
        let params = params.into_iter().map(convert::named_in).collect::<Result<Vec<_>, _>>()?;
        with_layer(|l| l.import_params(params).map_err(err))
    }

    fn export_state() -> Result<Vec<u8>, String> {
        with_layer(|l| l.export_state().map_err(err))
    }

    fn import_state(state: Vec<u8>) -> Result<(), String> {
        with_layer(|l| l.import_state(&state).map_err(err))
    }
}

bindings::export!(StandardGuest with_types_in bindings);
