//! The two local engines behind one trait: native tract and the wasm guest.

use mixnn_layer::{Layer, LossKind, NamedTensor, Tensor, TrainConfig};
use mixnn_sandbox::{GuestLayer, Sandbox};

use crate::DesignerError;

/// Where a local layer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Plain tract in this process: the reference for accuracy and speed.
    Native,
    /// The standard guest inside the wasmtime sandbox, as on a node.
    Wasm,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Native => "native",
            EngineKind::Wasm => "wasm",
        })
    }
}

/// One layer of a cascade, wherever it runs. Errors carry the layer index.
pub trait LayerBackend: Send {
    /// Training forward pass (state for `backward` is kept); returns the activations.
    fn forward(&mut self, x: Tensor) -> Result<Tensor, DesignerError>;
    /// Loss of the output `z` against `labels` (last layer only); returns the
    /// loss and its gradient with respect to `z`.
    fn loss(&mut self, z: &Tensor, labels: &[i64]) -> Result<(f32, Tensor), DesignerError>;
    /// Backward pass from the output gradient `dz` of the last forward; returns
    /// the input gradient, `None` when the layer computes none (the first).
    fn backward(&mut self, dz: Tensor) -> Result<Option<Tensor>, DesignerError>;
    /// Applies the optimizer to the gradients of the last backward.
    fn step(&mut self) -> Result<(), DesignerError>;
    /// Test-phase forward: no dropout, nothing kept for a backward.
    fn infer(&mut self, x: &Tensor) -> Result<Tensor, DesignerError>;
    /// The layer's current parameters, by name.
    fn export_params(&mut self) -> Result<Vec<NamedTensor>, DesignerError>;
    /// The layer's whole training state (parameters, optimizer state, step
    /// count, dropout stream position; `mixnn-layer`'s format), taken
    /// between steps: what a checkpoint holds of it.
    fn export_state(&mut self) -> Result<Vec<u8>, DesignerError>;
    /// Puts the layer back to a state [`LayerBackend::export_state`] gave,
    /// so training continues bit for bit from there. All or nothing.
    fn import_state(&mut self, state: &[u8]) -> Result<(), DesignerError>;
}

/// The per-layer config of a cascade position: the first layer needs no
/// input gradient, only the last computes the loss.
pub fn layer_config(base: &TrainConfig, index: usize, count: usize, loss: LossKind) -> TrainConfig {
    TrainConfig {
        need_input_grad: index > 0,
        loss: if index + 1 == count {
            loss
        } else {
            LossKind::None
        },
        seed: base.seed.wrapping_add(index as u64),
        ..base.clone()
    }
}

/// Loads shard `index` on `engine` (the wasm engine needs a sandbox).
pub fn load_layer(
    engine: EngineKind,
    index: usize,
    shard: &[u8],
    cfg: TrainConfig,
    sandbox: Option<&Sandbox>,
) -> Result<Box<dyn LayerBackend>, DesignerError> {
    Ok(match engine {
        EngineKind::Native => Box::new(NativeLayer::load(index, shard, cfg)?),
        EngineKind::Wasm => {
            let sb = sandbox.ok_or(DesignerError::NoSandbox)?;
            Box::new(WasmLayer::load(index, sb, shard, &cfg)?)
        }
    })
}

/// A layer run by plain tract in this process: the accuracy reference.
pub struct NativeLayer {
    index: usize,
    layer: Layer,
}

impl NativeLayer {
    /// Loads the shard bytes as layer `index` (the index tags its errors).
    pub fn load(index: usize, shard: &[u8], cfg: TrainConfig) -> Result<Self, DesignerError> {
        let (layer, _) =
            Layer::load(shard, cfg).map_err(|source| DesignerError::Layer { index, source })?;
        Ok(NativeLayer { index, layer })
    }
}

impl NativeLayer {
    fn err(&self) -> impl Fn(mixnn_layer::LayerError) -> DesignerError + use<> {
        let index = self.index;
        move |source| DesignerError::Layer { index, source }
    }
}

impl LayerBackend for NativeLayer {
    fn forward(&mut self, x: Tensor) -> Result<Tensor, DesignerError> {
        self.layer.forward(x).map_err(self.err())
    }
    fn loss(&mut self, z: &Tensor, labels: &[i64]) -> Result<(f32, Tensor), DesignerError> {
        let out = self.layer.loss(z, labels).map_err(self.err())?;
        Ok((out.loss, out.grad))
    }
    fn backward(&mut self, dz: Tensor) -> Result<Option<Tensor>, DesignerError> {
        self.layer.backward(dz).map_err(self.err())
    }
    fn step(&mut self) -> Result<(), DesignerError> {
        self.layer.step().map_err(self.err())
    }
    fn infer(&mut self, x: &Tensor) -> Result<Tensor, DesignerError> {
        self.layer.infer(x).map_err(self.err())
    }
    fn export_params(&mut self) -> Result<Vec<NamedTensor>, DesignerError> {
        self.layer.export_params().map_err(self.err())
    }
    fn export_state(&mut self) -> Result<Vec<u8>, DesignerError> {
        self.layer.export_state().map_err(self.err())
    }
    fn import_state(&mut self, state: &[u8]) -> Result<(), DesignerError> {
        self.layer.import_state(state).map_err(self.err())
    }
}

/// A layer run by the standard guest inside the wasmtime sandbox, as on a node.
pub struct WasmLayer {
    index: usize,
    guest: GuestLayer,
}

impl WasmLayer {
    /// Instantiates the standard guest in `sandbox` and loads the shard into it
    /// as layer `index` (the index tags its errors).
    pub fn load(
        index: usize,
        sandbox: &Sandbox,
        shard: &[u8],
        cfg: &TrainConfig,
    ) -> Result<Self, DesignerError> {
        let err = |source| DesignerError::Guest { index, source };
        let mut guest = sandbox
            .instantiate(
                sandbox
                    .guest(mixnn_sandbox::GuestKind::Standard)
                    .map_err(err)?,
            )
            .map_err(err)?;
        guest.load(shard, cfg).map_err(err)?;
        Ok(WasmLayer { index, guest })
    }

    fn err(&self) -> impl Fn(mixnn_sandbox::SandboxError) -> DesignerError + use<> {
        let index = self.index;
        move |source| DesignerError::Guest { index, source }
    }
}

impl LayerBackend for WasmLayer {
    fn forward(&mut self, x: Tensor) -> Result<Tensor, DesignerError> {
        self.guest.forward(&x).map_err(self.err())
    }
    fn loss(&mut self, z: &Tensor, labels: &[i64]) -> Result<(f32, Tensor), DesignerError> {
        let out = self.guest.loss(z, labels).map_err(self.err())?;
        Ok((out.loss, out.grad))
    }
    fn backward(&mut self, dz: Tensor) -> Result<Option<Tensor>, DesignerError> {
        self.guest.backward(&dz).map_err(self.err())
    }
    fn step(&mut self) -> Result<(), DesignerError> {
        self.guest.step().map_err(self.err())
    }
    fn infer(&mut self, x: &Tensor) -> Result<Tensor, DesignerError> {
        self.guest.infer(x).map_err(self.err())
    }
    fn export_params(&mut self) -> Result<Vec<NamedTensor>, DesignerError> {
        self.guest.export_params().map_err(self.err())
    }
    fn export_state(&mut self) -> Result<Vec<u8>, DesignerError> {
        self.guest.export_state().map_err(self.err())
    }
    fn import_state(&mut self, state: &[u8]) -> Result<(), DesignerError> {
        self.guest.import_state(state).map_err(self.err())
    }
}
