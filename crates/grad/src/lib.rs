//! Gradient-graph builder for mixnn.
//!
//! tract-onnx runs ONNX graphs but has no autodiff. To train a forward shard
//! we turn it into two plain ONNX models that tract can run:
//!
//! - a *forward* graph whose parameters are graph inputs (so the optimizer,
//!   which lives outside the graph, can feed updated weights each step) and
//!   whose Dropout nodes take their mask as an input (tract has no
//!   randomness we could make reproducible across machines);
//! - a *backward* graph `(x, params..., masks..., dZ) -> (dX?, dParams...)`
//!   that recomputes the forward activations it needs and chains one
//!   gradient rule per op (see [`rules`](crate::rules)), in the style of
//!   onnxruntime's gradient builder;
//! - the same pair split for training (`train_forward`, `train_backward`):
//!   the forward graph also returns the activations the rules read, and the
//!   backward graph takes them instead of recomputing them (see
//!   [`SavedSpec`]).
//!
//! Losses (NLL, softmax cross-entropy; mean squared error for regression
//! outputs) are not tract ops, so [`loss_graph`] and [`mse_graph`] give
//! small decomposed models with an analytic gradient output.
//!
//! The crate is pure Rust with no threads or filesystem access: it runs
//! inside the WebAssembly guest.

pub use tract_onnx::pb;

mod builder;
mod graph;
mod loss;
pub(crate) mod rules;
mod saved;
mod shapes;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;

// The ONNX helpers, shared with mixnn-shard.
use mixnn_onnx as proto;

pub use loss::{LossKind, loss_graph, mse_graph};
#[doc(hidden)]
pub use loss::{loss_graph_typed, mse_graph_typed};
pub use mixnn_onnx::FloatType;
pub use saved::SavedSpec;

/// Why a shard could not be turned into training graphs.
#[derive(Debug, thiserror::Error)]
pub enum GradError {
    /// A node on the path from the input or parameters to the output has no
    /// gradient rule.
    #[error("node `{node}` (op {op}): no gradient rule for this op")]
    UnsupportedOp {
        /// Name of the ONNX node.
        node: String,
        /// Its op type.
        op: String,
    },
    /// A node has a rule but its attributes, inputs or shapes are not usable.
    #[error("node `{node}` (op {op}): {reason}")]
    Node {
        /// Name of the ONNX node.
        node: String,
        /// Its op type.
        op: String,
        /// What is wrong.
        reason: String,
    },
    /// The model as a whole is not a valid shard.
    #[error("invalid shard: {0}")]
    Invalid(String),
}

/// What [`build`] should produce.
#[derive(Debug, Clone)]
pub struct GradOptions {
    /// Concrete shape of the shard's data input (batch included).
    pub input_shape: Vec<usize>,
    /// Whether the backward graph outputs dX (false for the first shard,
    /// whose input is data, not an activation).
    pub need_input_grad: bool,
}

/// A trainable parameter, fed to both graphs as an input.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Input name in the forward and backward graphs (the initializer's name).
    pub name: String,
    /// Static shape.
    pub shape: Vec<usize>,
    /// Initial value from the model's initializer; `None` when the model
    /// declared the parameter as an input without a value (the caller seeds it).
    pub init: Option<Vec<f32>>,
}

/// A Dropout mask input: the caller supplies a 0/1 float tensor of `shape`;
/// the graphs compute `x * mask / (1 - ratio)`.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskSpec {
    /// Input name in the forward and backward graphs.
    pub name: String,
    /// Static shape (that of the Dropout's input).
    pub shape: Vec<usize>,
    /// Drop probability of the Dropout node.
    pub ratio: f32,
}

/// The training graphs of one shard.
#[derive(Debug, Clone)]
pub struct TrainingGraphs {
    /// Inputs: `[data input, params (same order as `params`)..., masks...]`;
    /// outputs: `[shard output]`.
    pub forward: pb::ModelProto,
    /// Inputs: the forward's inputs, then [`GRAD_OUT`] (dZ, shape of the
    /// output). Outputs: `[dX only if need_input_grad]` + one gradient per
    /// param, same order.
    pub backward: pb::ModelProto,
    /// Forward graph for training: the inputs of `forward`; outputs: the
    /// shard output, then one per entry of `saved`.
    pub train_forward: pb::ModelProto,
    /// Backward graph for training: the inputs of `backward` (forward
    /// inputs, then [`GRAD_OUT`]), then every output of `train_forward` in
    /// order. Outputs as `backward`. It recomputes no forward arithmetic.
    pub train_backward: pb::ModelProto,
    /// Activations `train_forward` hands to `train_backward` (see
    /// [`SavedSpec`]).
    pub saved: Vec<SavedSpec>,
    /// Trainable parameters.
    pub params: Vec<ParamSpec>,
    /// One per Dropout node.
    pub masks: Vec<MaskSpec>,
    /// Name of the data input.
    pub input_name: String,
    /// Name of the shard output.
    pub output_name: String,
    /// Concrete shape of the data input.
    pub input_shape: Vec<usize>,
    /// Static shape of the output.
    pub output_shape: Vec<usize>,
}

/// Name of the backward graph's extra input: the gradient of the loss with
/// respect to the shard output.
pub const GRAD_OUT: &str = "mixnn_grad_out";

/// Name of the backward graph's dX output (when `need_input_grad`).
pub const GRAD_INPUT: &str = "mixnn_grad_input";

/// Builds the forward and backward training graphs of a shard.
///
/// The shard's data input is its first graph input without an initializer.
/// Parameters are float initializers used as float operands, plus float
/// graph inputs after the data input that have no initializer.
pub fn build(model: &pb::ModelProto, opts: &GradOptions) -> Result<TrainingGraphs, GradError> {
    builder::build(model, opts)
}

/// Forward graph for the test phase: params as inputs (same order as
/// [`build`]'s), Dropout as identity, no masks.
pub fn inference_graph(
    model: &pb::ModelProto,
    input_shape: &[usize],
) -> Result<(pb::ModelProto, Vec<ParamSpec>), GradError> {
    builder::inference_graph(model, input_shape)
}
