//! The first part of the model, run natively as the attacker sees it:
//! queries (black box) and the gradient of a loss on Z_K with respect to
//! the input (white box).

use mixnn_layer::{Layer, LossKind, OptimizerKind, Tensor, TrainConfig};

use crate::{AuditError, Cut};

/// The part before the cut, loaded in a `mixnn-layer` [`Layer`]: the same
/// engine (tract over the `mixnn-grad` graphs) that trains it.
pub struct Victim {
    layer: Layer,
    input_shape: Vec<usize>,
    z_shape: Vec<usize>,
    observed: Option<Observed>,
}

/// What a defence does to Z_K on its way to the node after the cut (noise,
/// dropout): applied to every answer of [`Victim::query`], since that is
/// what the adversary receives; the white-box gradient stays the clean
/// function, which is what the adversary knows.
pub type Observed = Box<dyn FnMut(&mut Tensor) + Send>;

impl Victim {
    /// Loads the first part of `cut` with its weights.
    pub fn new(cut: &Cut) -> Result<Victim, AuditError> {
        let cfg = TrainConfig {
            optimizer: OptimizerKind::Sgd,
            loss: LossKind::None,
            // The white-box attack needs dX; queries do not use it.
            need_input_grad: true,
            host_kernels: false,
            ..TrainConfig::default()
        };
        let (layer, _) = Layer::load(&mixnn_shard::encode(&cut.prefix), cfg)?;
        Ok(Victim {
            layer,
            input_shape: cut.input_shape.clone(),
            z_shape: cut.z_shape.clone(),
            observed: None,
        })
    }

    /// Passes every queried Z_K through `defence` (see [`Observed`]).
    pub fn observe_through(&mut self, defence: Observed) {
        self.observed = Some(defence);
    }

    /// Values in one input.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Values in one Z_K.
    pub fn z_len(&self) -> usize {
        self.z_shape.iter().product()
    }

    /// Per-sample shape of Z_K.
    pub fn z_shape(&self) -> &[usize] {
        &self.z_shape
    }

    /// Per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    fn batch_tensor(&self, shape: &[usize], data: &[f32]) -> Result<Tensor, AuditError> {
        let per: usize = shape.iter().product();
        if per == 0 || data.is_empty() || !data.len().is_multiple_of(per) {
            return Err(AuditError::Data(format!(
                "{} values are not a batch of {shape:?}",
                data.len()
            )));
        }
        let full: Vec<usize> = std::iter::once(data.len() / per)
            .chain(shape.iter().copied())
            .collect();
        Ok(Tensor::new(full, data.to_vec()).map_err(mixnn_layer::LayerError::from)?)
    }

    /// Z_K for a batch of inputs (flattened, `n × input_len` values), as
    /// the node after the cut receives it.
    pub fn query(&mut self, x: &[f32]) -> Result<Vec<f32>, AuditError> {
        let t = self.batch_tensor(&self.input_shape.clone(), x)?;
        let mut z = self.layer.infer(&t)?;
        if let Some(defence) = self.observed.as_mut() {
            defence(&mut z);
        }
        Ok(z.data)
    }

    /// Z_K for a batch of inputs and the gradient of
    /// `Σ (Z_K − target)²` with respect to the inputs, with that loss.
    pub fn match_grad(&mut self, x: &[f32], target: &[f32]) -> Result<(f64, Vec<f32>), AuditError> {
        let t = self.batch_tensor(&self.input_shape.clone(), x)?;
        let z = self.layer.forward(t)?;
        if z.data.len() != target.len() {
            return Err(AuditError::Data(format!(
                "{} target values for {} outputs",
                target.len(),
                z.data.len()
            )));
        }
        let mut loss = 0.0f64;
        let dz: Vec<f32> = z
            .data
            .iter()
            .zip(target)
            .map(|(&a, &b)| {
                let d = a - b;
                loss += f64::from(d) * f64::from(d);
                2.0 * d
            })
            .collect();
        let grad = Tensor::new(z.shape.clone(), dz).map_err(mixnn_layer::LayerError::from)?;
        let dx = self
            .layer
            .backward(grad)?
            .ok_or_else(|| AuditError::Model("the first part gave no input gradient".into()))?;
        Ok((loss, dx.data))
    }
}
