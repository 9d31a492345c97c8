//! Fork-join (Bident) models: two branches that take the same input and
//! meet at one merge node, then the rest of the network (the head).
//!
//! The designer runs a fork-join job as three chains and a merge: the
//! untrusted branch on pool nodes, the trusted branch and the head in a
//! trusted place, the merge (a parameter-free element-wise or concat op)
//! between them. This module only describes and cuts such a model; the
//! merge's arithmetic and its gradient live with the designer, which runs
//! them (crates/designer/src/fork).

use serde::{Deserialize, Serialize};

use crate::pb;

/// How the two branches meet: the ONNX merge node's op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MergeOp {
    /// `Concat` along `axis` (non-negative, counted on the merge inputs'
    /// rank); the untrusted branch's slot decides which side comes first.
    Concat {
        /// The axis, already normalised to `0..rank`.
        axis: usize,
    },
    /// `Mul`: element-wise product (numpy broadcasting).
    Mul,
    /// `Max`: element-wise maximum (numpy broadcasting).
    Max,
    /// `Mean` of the two inputs: (a + b) / 2 element-wise.
    Mean,
    /// `Add` or `Sum` of the two inputs.
    Add,
}

/// A fork-join model cut into its parts, each part a chain of shards as
/// [`crate::split`] cuts a chain.
#[derive(Clone, Debug)]
pub struct ForkJoin {
    /// Shards of the branch that runs on pool nodes, in order; never empty.
    pub untrusted: Vec<pb::ModelProto>,
    /// Shards of the trusted branch, in order; empty when that branch is
    /// the input itself (the merge takes the raw input).
    pub trusted: Vec<pb::ModelProto>,
    /// Which input of the merge node (0 or 1) the untrusted branch feeds;
    /// the trusted branch feeds the other. Order matters for `Concat`.
    pub untrusted_slot: usize,
    /// The merge node's op.
    pub merge: MergeOp,
    /// Shards after the merge, in order; never empty (the last one ends
    /// the model, and the loss fits its last op as for a chain).
    pub head: Vec<pb::ModelProto>,
}
