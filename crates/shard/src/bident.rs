//! The Bident paper's networks (Lin, Fang, Shi, ICISSP 2020): its base CNN
//! as two branches on the same 1x28x28 input, merged, then a dense head.
//!
//! The base CNN is LeNet-5 with ReLU activations and one more pooling
//! layer. Each branch ends in its own dense layer of width 84, so the
//! element-wise merges (mul, max, avg) see equal shapes and concat gives
//! 168 features; the head is one dense layer to 10 raw logits (the designer
//! then uses softmax cross-entropy). The exact layer lists are written down
//! in docs/bident.md.
//!
//! Node names carry the branch (`/untrusted/conv1/Conv`,
//! `/trusted/fc1/Gemm`), so `--trusted-branch` can name either side; the
//! trusted branch feeds the merge's second input and never has more
//! parameters than the other, so [`crate::fork_join`]'s automatic choice
//! keeps it trusted.

use crate::models::{Builder, Form};
use crate::pb;
use crate::proto::attr_int;

/// How the two branches of a Bident network meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BidentMerge {
    /// `Concat` along the feature axis (84 + 84 = 168 features).
    Concat,
    /// Element-wise product (`Mul`).
    Mul,
    /// Element-wise maximum (`Max`).
    Max,
    /// Element-wise average (`Mean`).
    Avg,
}

/// The layers of the trusted branch relative to the untrusted one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BidentShape {
    /// Both branches are the full base CNN (different seeded weights).
    Symmetric,
    /// The trusted branch has one convolution and one dense layer (2 layers
    /// with parameters against 4), the paper's compressed trusted side.
    Asymmetric,
}

/// Width of each branch's output, the merge inputs.
pub const BRANCH_WIDTH: usize = 84;

/// The full base CNN under `prefix`: conv 6@5x5 pad 2, ReLU, max-pool,
/// conv 16@5x5 pad 2, ReLU, max-pool, the extra max-pool, flatten (144),
/// dense 120, ReLU, dense 84, ReLU.
fn full_branch(b: &mut Builder, prefix: &str) {
    b.conv(&format!("{prefix}/conv1"), 1, 6, 5, 2);
    b.relu(&format!("{prefix}/relu1"));
    b.maxpool(&format!("{prefix}/pool1"));
    b.conv(&format!("{prefix}/conv2"), 6, 16, 5, 2);
    b.relu(&format!("{prefix}/relu2"));
    b.maxpool(&format!("{prefix}/pool2"));
    b.maxpool(&format!("{prefix}/pool3"));
    b.flatten_as(&format!("{prefix}/flatten"));
    b.linear(&format!("{prefix}/fc1"), 16 * 3 * 3, 120);
    b.relu(&format!("{prefix}/relu3"));
    b.linear(&format!("{prefix}/fc2"), 120, BRANCH_WIDTH);
    b.relu(&format!("{prefix}/relu4"));
}

/// The compressed branch: conv 6@5x5 pad 2, ReLU, three max-pools
/// (28 -> 14 -> 7 -> 3), flatten (54), dense 84, ReLU.
fn small_branch(b: &mut Builder, prefix: &str) {
    b.conv(&format!("{prefix}/conv1"), 1, 6, 5, 2);
    b.relu(&format!("{prefix}/relu1"));
    b.maxpool(&format!("{prefix}/pool1"));
    b.maxpool(&format!("{prefix}/pool2"));
    b.maxpool(&format!("{prefix}/pool3"));
    b.flatten_as(&format!("{prefix}/flatten"));
    b.linear(&format!("{prefix}/fc1"), 6 * 3 * 3, BRANCH_WIDTH);
    b.relu(&format!("{prefix}/relu2"));
}

/// A Bident network on [batch, 1, 28, 28] inputs ending in raw logits
/// [batch, 10]: the untrusted branch (input 0 of the merge), the trusted
/// branch (input 1), the merge node `/merge/<Op>`, and the head
/// `/head/fc/Gemm`. Weights are drawn like [`crate::lenet5`]'s from `seed`.
pub fn bident(merge: BidentMerge, shape: BidentShape, seed: u64, batch: usize) -> pb::ModelProto {
    let mut b = Builder::new(seed, Form::Gemm);
    full_branch(&mut b, "untrusted");
    let untrusted = std::mem::replace(&mut b.cur, "input".to_string());
    match shape {
        BidentShape::Symmetric => full_branch(&mut b, "trusted"),
        BidentShape::Asymmetric => small_branch(&mut b, "trusted"),
    }
    let trusted = std::mem::replace(&mut b.cur, untrusted);
    let (op, attrs, width) = match merge {
        BidentMerge::Concat => ("Concat", vec![attr_int("axis", 1)], 2 * BRANCH_WIDTH),
        BidentMerge::Mul => ("Mul", vec![], BRANCH_WIDTH),
        BidentMerge::Max => ("Max", vec![], BRANCH_WIDTH),
        BidentMerge::Avg => ("Mean", vec![], BRANCH_WIDTH),
    };
    b.push("merge", op, &[&trusted], attrs);
    b.linear("head/fc", width, 10);
    if let Some(out) = b.nodes.last_mut().and_then(|n| n.output.first_mut()) {
        *out = "output".to_string();
    }
    let name = format!(
        "bident_{}_{}",
        format!("{merge:?}").to_lowercase(),
        format!("{shape:?}").to_lowercase()
    );
    b.into_model(&name, batch)
}
