//! The two local engines behind one trait: native tract and the wasm guest.

use mixnn_layer::{Layer, LossKind, NamedTensor, OptimizerKind, Tensor, TrainConfig};
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
pub trait LayerBackend {
    fn forward(&mut self, x: Tensor) -> Result<Tensor, DesignerError>;
    fn loss(&mut self, z: &Tensor, labels: &[i64]) -> Result<(f32, Tensor), DesignerError>;
    fn backward(&mut self, dz: Tensor) -> Result<Option<Tensor>, DesignerError>;
    fn step(&mut self) -> Result<(), DesignerError>;
    fn infer(&mut self, x: &Tensor) -> Result<Tensor, DesignerError>;
    fn export_params(&mut self) -> Result<Vec<NamedTensor>, DesignerError>;
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

pub struct NativeLayer {
    index: usize,
    layer: Layer,
}

impl NativeLayer {
    pub fn load(index: usize, shard: &[u8], cfg: TrainConfig) -> Result<Self, DesignerError> {
        let (layer, _) =
            Layer::load(shard, cfg).map_err(|source| DesignerError::Layer { index, source })?;
        Ok(NativeLayer { index, layer })
    }
}

impl LayerBackend for NativeLayer {
    fn forward(&mut self, x: Tensor) -> Result<Tensor, DesignerError> {
        self.layer
            .forward(x)
            .map_err(|source| DesignerError::Layer {
                index: self.index,
                source,
            })
    }
    fn loss(&mut self, z: &Tensor, labels: &[i64]) -> Result<(f32, Tensor), DesignerError> {
        let out = self
            .layer
            .loss(z, labels)
            .map_err(|source| DesignerError::Layer {
                index: self.index,
                source,
            })?;
        Ok((out.loss, out.grad))
    }
    fn backward(&mut self, dz: Tensor) -> Result<Option<Tensor>, DesignerError> {
        self.layer
            .backward(dz)
            .map_err(|source| DesignerError::Layer {
                index: self.index,
                source,
            })
    }
    fn step(&mut self) -> Result<(), DesignerError> {
        self.layer.step().map_err(|source| DesignerError::Layer {
            index: self.index,
            source,
        })
    }
    fn infer(&mut self, x: &Tensor) -> Result<Tensor, DesignerError> {
        self.layer.infer(x).map_err(|source| DesignerError::Layer {
            index: self.index,
            source,
        })
    }
    fn export_params(&mut self) -> Result<Vec<NamedTensor>, DesignerError> {
        self.layer
            .export_params()
            .map_err(|source| DesignerError::Layer {
                index: self.index,
                source,
            })
    }
}

pub struct WasmLayer {
    index: usize,
    guest: GuestLayer,
}

impl WasmLayer {
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
        guest.load(shard, &to_wit_config(cfg)).map_err(err)?;
        Ok(WasmLayer { index, guest })
    }

    fn err(&self) -> impl Fn(mixnn_sandbox::SandboxError) -> DesignerError + use<> {
        let index = self.index;
        move |source| DesignerError::Guest { index, source }
    }
}

impl LayerBackend for WasmLayer {
    fn forward(&mut self, x: Tensor) -> Result<Tensor, DesignerError> {
        let e = self.err();
        from_wit(self.guest.forward(&to_wit(x)?).map_err(&e)?)
    }
    fn loss(&mut self, z: &Tensor, labels: &[i64]) -> Result<(f32, Tensor), DesignerError> {
        let e = self.err();
        let out = self.guest.loss(&to_wit(z.clone())?, labels).map_err(&e)?;
        Ok((out.loss, from_wit(out.grad)?))
    }
    fn backward(&mut self, dz: Tensor) -> Result<Option<Tensor>, DesignerError> {
        let e = self.err();
        self.guest
            .backward(&to_wit(dz)?)
            .map_err(&e)?
            .map(from_wit)
            .transpose()
    }
    fn step(&mut self) -> Result<(), DesignerError> {
        let e = self.err();
        self.guest.step().map_err(e)
    }
    fn infer(&mut self, x: &Tensor) -> Result<Tensor, DesignerError> {
        let e = self.err();
        from_wit(self.guest.infer(&to_wit(x.clone())?).map_err(&e)?)
    }
    fn export_params(&mut self) -> Result<Vec<NamedTensor>, DesignerError> {
        let e = self.err();
        self.guest
            .export_params()
            .map_err(&e)?
            .into_iter()
            .map(|p| {
                let tensor = from_wit(mixnn_sandbox::Tensor {
                    shape: p.shape,
                    data: p.data,
                })?;
                Ok(NamedTensor {
                    name: p.name,
                    tensor,
                })
            })
            .collect()
    }
}

pub fn to_wit_config(c: &TrainConfig) -> mixnn_sandbox::TrainConfig {
    mixnn_sandbox::TrainConfig {
        optimizer: match c.optimizer {
            OptimizerKind::Sgd => mixnn_sandbox::OptimizerKind::Sgd,
            OptimizerKind::Adam => mixnn_sandbox::OptimizerKind::Adam,
        },
        learning_rate: c.learning_rate,
        momentum: c.momentum,
        weight_decay: c.weight_decay,
        beta1: c.beta1,
        beta2: c.beta2,
        epsilon: c.epsilon,
        seed: c.seed,
        loss: match c.loss {
            LossKind::None => mixnn_sandbox::LossKind::None,
            LossKind::Nll => mixnn_sandbox::LossKind::Nll,
            LossKind::SoftmaxCrossEntropy => mixnn_sandbox::LossKind::SoftmaxCrossEntropy,
        },
        need_input_grad: c.need_input_grad,
        host_kernels: c.host_kernels,
    }
}

pub fn to_wit(t: Tensor) -> Result<mixnn_sandbox::Tensor, DesignerError> {
    let shape = t
        .shape
        .iter()
        .map(|&d| {
            u32::try_from(d).map_err(|_| DesignerError::Invalid(format!("dimension {d} too large")))
        })
        .collect::<Result<_, _>>()?;
    Ok(mixnn_sandbox::Tensor {
        shape,
        data: t.data,
    })
}

pub fn from_wit(t: mixnn_sandbox::Tensor) -> Result<Tensor, DesignerError> {
    Tensor::new(t.shape.into_iter().map(|d| d as usize).collect(), t.data)
        .map_err(|e| DesignerError::Invalid(format!("guest returned a malformed tensor: {e}")))
}
