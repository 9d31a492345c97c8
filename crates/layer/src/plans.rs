//! Compiling generated ONNX graphs into tract plans, and running them.
//!
//! A plan is built once per (graph, batch size) and kept: tract's
//! optimisation pass costs far more than one batch, and the guest must not pay
//! it on every call. Values move between plans as tract values (reference
//! counted), so the training backward takes the forward's input and saved
//! activations without a copy.

use crate::{LayerError, Tensor};
use mixnn_grad::pb;
use tract_onnx::prelude::*;

/// A compiled graph with the shapes of its inputs, checked on every run.
pub(crate) struct Plan {
    runnable: Arc<TypedRunnableModel>,
}

/// What a graph input is fed with.
pub(crate) enum Feed<'a> {
    F32(&'a Tensor),
    Shared(Arc<tract_onnx::prelude::Tensor>),
    /// A value a plan produced or one already converted (no copy).
    Value(TValue),
    I64(&'a [i64]),
}

impl Plan {
    /// Compiles `model`, fixing each input to the given shape and type.
    /// With `host_kernels` and a product kernel installed, products and
    /// convolutions go to that kernel and slow row ops are replaced (see
    /// [`crate::host_kernels`]); without one installed nothing changes.
    pub fn compile(
        model: &pb::ModelProto,
        inputs: &[(Vec<usize>, DatumType)],
        host_kernels: bool,
    ) -> Result<Self, LayerError> {
        let mut m = tract_onnx::onnx()
            .model_for_proto_model(model)
            .map_err(|e| LayerError::tract("loading graph", e))?;
        if m.inputs.len() != inputs.len() {
            return Err(LayerError::Tract(format!(
                "graph has {} inputs, expected {}",
                m.inputs.len(),
                inputs.len()
            )));
        }
        for (ix, (shape, dt)) in inputs.iter().enumerate() {
            m.set_input_fact(ix, InferenceFact::dt_shape(*dt, shape.as_slice()))
                .map_err(|e| LayerError::tract("setting input shape", e))?;
        }
        let mut typed = m
            .into_typed()
            .map_err(|e| LayerError::tract("typing graph", e))?;
        // Products are recognised in their decluttered form. Without a
        // kernel (the native engine) this is skipped: optimising declutters
        // anyway, and the plan stays tract's own.
        if host_kernels && crate::host_kernels::host_matmul_installed() {
            typed = typed
                .into_decluttered()
                .map_err(|e| LayerError::tract("decluttering graph", e))?;
            crate::host_kernels::patch(&mut typed)
                .map_err(|e| LayerError::tract("routing products to the host", e))?;
            crate::guest_ops::patch(&mut typed)
                .map_err(|e| LayerError::tract("replacing slow guest ops", e))?;
        }
        let runnable = typed
            .into_optimized()
            .map_err(|e| LayerError::tract("optimizing graph", e))?
            .into_runnable()
            .map_err(|e| LayerError::tract("planning graph", e))?;
        Ok(Plan { runnable })
    }

    /// Runs the plan and returns its outputs as f32 tensors.
    pub fn run(&self, feeds: Vec<Feed<'_>>) -> Result<Vec<Tensor>, LayerError> {
        self.run_values(feeds)?
            .into_iter()
            .map(|o| to_tensor(&o))
            .collect()
    }

    /// Runs the plan and returns its outputs as tract values, for callers
    /// that hand some of them to another plan without copying.
    pub fn run_values(&self, feeds: Vec<Feed<'_>>) -> Result<TVec<TValue>, LayerError> {
        let mut inputs: TVec<TValue> = tvec![];
        for f in feeds {
            let v = match f {
                Feed::F32(t) => value(t)?,
                Feed::Shared(t) => t.into_tvalue(),
                Feed::Value(v) => v,
                Feed::I64(v) => tract_onnx::prelude::Tensor::from_shape(&[v.len()], v)
                    .map_err(|e| LayerError::tract("label tensor", e))?
                    .into_tvalue(),
            };
            inputs.push(v);
        }
        self.runnable
            .run(inputs)
            .map_err(|e| LayerError::tract("running graph", e))
    }
}

/// Copies a tensor into tract's (aligned) storage, once, so it can be fed to
/// several plans.
pub(crate) fn value(t: &Tensor) -> Result<TValue, LayerError> {
    tract_onnx::prelude::Tensor::from_shape(&t.shape, &t.data)
        .map(IntoTValue::into_tvalue)
        .map_err(|e| LayerError::tract("input tensor", e))
}

/// Copies a tract value out as an f32 tensor (casting scalars such as the loss).
pub(crate) fn to_tensor(v: &tract_onnx::prelude::Tensor) -> Result<Tensor, LayerError> {
    let v = v
        .cast_to::<f32>()
        .map_err(|e| LayerError::tract("reading output", e))?;
    let data = f32_slice(&v)?.to_vec();
    Ok(Tensor {
        shape: v.shape().to_vec(),
        data,
    })
}

/// Wraps parameter values so plans can take them without a copy per call.
pub(crate) fn shared(
    shape: &[usize],
    data: &[f32],
) -> Result<Arc<tract_onnx::prelude::Tensor>, LayerError> {
    tract_onnx::prelude::Tensor::from_shape(shape, data)
        .map(Arc::new)
        .map_err(|e| LayerError::tract("parameter tensor", e))
}

/// The f32 values of a plain in-memory tensor.
pub(crate) fn f32_slice(t: &tract_onnx::prelude::Tensor) -> Result<&[f32], LayerError> {
    t.try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>())
        .map_err(|e| LayerError::tract("reading tensor", e))
}
