//! The one error type of this crate.
//!
//! Models reach the splitter from user files and, later, from the network, so
//! every way a model can be wrong is an error value that says which node (or
//! tensor) is at fault and why, never a panic.

use thiserror::Error;

/// Everything that can go wrong while decoding, planning, splitting or merging.
#[derive(Debug, Error)]
pub enum ShardError {
    /// The bytes are not a protobuf `ModelProto` (truncated, corrupt, not ONNX).
    #[error("not a valid ONNX model: {0}")]
    Decode(String),

    /// The model decodes but is structurally unusable (missing graph, dangling
    /// names, unsupported storage...).
    #[error("invalid ONNX model: {0}")]
    Invalid(String),

    /// A declared tensor is larger than [`crate::MAX_TENSOR_ELEMENTS`]; refused
    /// before anything is allocated so a hostile file cannot exhaust memory.
    #[error(
        "{what} declares {elements} elements, more than the cap of {cap} (2^28) elements per tensor"
    )]
    TooLarge {
        /// Which tensor (initializer, graph input, node attribute...).
        what: String,
        /// The declared element count (saturated at `u128::MAX`).
        elements: u128,
        /// The cap.
        cap: usize,
    },

    /// A node the splitter cannot handle.
    #[error("node '{node}' ({op}): {reason}")]
    Unsupported {
        /// Node name (or its first output when unnamed).
        node: String,
        /// ONNX op type.
        op: String,
        /// What is wrong.
        reason: String,
    },

    /// An explicit cut names no node of the model.
    #[error("cut point '{name}' names no node of the model (nodes: {known})")]
    UnknownNode {
        /// The name asked for.
        name: String,
        /// The node names the model does have, comma separated.
        known: String,
    },

    /// The model cannot be cut after this node (not a chain there, empty shard...).
    #[error("cannot cut after node '{node}' ({op}): {reason}")]
    Cut {
        /// Node name.
        node: String,
        /// ONNX op type.
        op: String,
        /// Why the cut is impossible.
        reason: String,
    },

    /// Shape inference (tract) failed or gave a non-concrete shape.
    #[error("shape inference failed: {0}")]
    Shape(String),

    /// A plan that does not describe this model (edited, stale, other model).
    #[error("plan does not match the model: {0}")]
    Plan(String),

    /// Shards that do not form a chain, given to [`crate::merge`].
    #[error("cannot merge shards: {0}")]
    Merge(String),

    /// Parameters given to [`crate::set_params`] that do not fit the shard.
    #[error("cannot set parameter '{name}': {reason}")]
    Params {
        /// Initializer name.
        name: String,
        /// Why.
        reason: String,
    },

    /// A graph with a fork that is not one two-branch fork-join (a third
    /// branch, branches that read each other, a head that forks again, a
    /// merge op the designer cannot run...).
    #[error("fork-join: node '{node}' ({op}): {reason}")]
    Fork {
        /// Node name (or its first output when unnamed), or an initializer.
        node: String,
        /// ONNX op type (`initializer` for a shared parameter).
        op: String,
        /// What is wrong.
        reason: String,
    },

    /// The `--trusted-branch` choice does not name a node of either branch.
    #[error("trusted branch '{name}': {reason}")]
    TrustedBranch {
        /// The node name given.
        name: String,
        /// Why it cannot pick a branch.
        reason: String,
    },
}
