//! ONNX model builders and the shard splitter of mixnn.
//!
//! mixnn runs each layer of a network on a different server, so a model has
//! to be cut into per-layer ONNX *shards* that each load and run alone and
//! that, run one after another, compute exactly the whole model. This crate
//! builds the reference models ([`mlp`], [`lenet5`], the Bident fork-joins
//! [`bident`]), plans a split ([`plan`], automatic in the MixNN paper's
//! Table 1 shape or at explicit cut points), cuts ([`split`]), cuts a
//! fork-join into its two branches and head ([`fork_join`]), and goes
//! back: trained weights into a shard ([`set_params`]) and the shards into
//! one model ([`merge`]).
//!
//! Every model from outside is untrusted: [`decode`] and every entry point
//! refuse malformed graphs, external data and declared tensors over
//! [`MAX_TENSOR_ELEMENTS`] with a [`ShardError`], never a panic.

mod bident;
mod error;
pub mod fork;
mod fork_graph;
mod fork_parts;
mod fork_plan;
mod graph;
mod guard;
mod merge;
mod models;
mod plan;
pub mod proto;
mod shapes;
mod split;

pub use tract_onnx::pb;

pub use bident::{BRANCH_WIDTH, BidentMerge, BidentShape, bident};
pub use error::ShardError;
pub use fork::{ForkJoin, MergeOp, fork_join};
pub use fork_plan::render_fork_plan;
pub use graph::node_label;
pub use guard::validate;
pub use merge::{Param, get_params, merge, set_params};
pub use models::{Form, lenet5, lenet5_he, mlp};
pub use plan::{Plan, ShardInfo, plan, render_plan};
pub use split::split;

use prost::Message;

/// Cap on the element count of any declared tensor (2^28, 1 GiB of f32).
/// Far above any layer mixnn trains, far below what would exhaust a node.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 28;

/// Serialises a model to ONNX protobuf bytes.
pub fn encode(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Parses ONNX protobuf bytes and checks the model with [`validate`], so a
/// truncated or hostile file is an error here rather than later in tract.
pub fn decode(bytes: &[u8]) -> Result<pb::ModelProto, ShardError> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| ShardError::Decode(e.to_string()))?;
    validate(&model)?;
    Ok(model)
}
