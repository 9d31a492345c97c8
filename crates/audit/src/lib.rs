//! The leakage audit (SPEC §9, issue 14): how much of the input a node after
//! a cut can rebuild from the intermediate output Z_K it receives.
//!
//! He, Zhang and Lee ("Model Inversion Attacks Against Collaborative
//! Inference", ACSAC 2019) give two attacks that this crate plays against a
//! mixnn split, scored by the metrics they used:
//!
//! - [`cut`]: the first part of the model, up to the cut (a shard count or
//!   a node name), as one standalone model;
//! - [`victim`]: that part run natively by a `mixnn-layer` [`Layer`]
//!   (tract over the `mixnn-grad` graphs), for queries and input gradients;
//! - [`inverse`]: the black-box inverse network (§5): the attacker queries
//!   the first part on auxiliary data and trains a decoder
//!   ([`decoder`]: transposed convolutions mirroring the layers before the
//!   cut) from Z_K back to x with a mean-squared-error loss, as a `Layer`
//!   with Adam, checked for a collapse ([`collapse`]: dead ReLUs drawing
//!   the same black image for every input) and retrained when collapsed;
//! - [`rmle`]: the white-box regularised maximum-likelihood attack
//!   (gradient descent on x through the first part's backward graph, with a
//!   total-variation prior);
//! - [`metrics`]: SSIM and PSNR exactly as scikit-image computes them on
//!   `[0, 1]` images (the paper's figures come from it).
//!
//! The crate is pure Rust: no files, network, environment or clock. The CLI
//! (`mixnn audit`) reads the model and the data and writes the report.
//!
//! [`Layer`]: mixnn_layer::Layer

mod amsgrad;
pub mod collapse;
pub mod cut;
pub mod decoder;
pub mod inverse;
pub mod metrics;
pub mod rmle;
pub mod victim;

pub use collapse::{Collapse, Health};
pub use cut::{Cut, SplitAt, cut};
pub use decoder::{DecoderOutput, DecoderShape, decoder, decoder_with};
pub use inverse::{Attempt, InverseNet, InverseNetConfig};
pub use metrics::{MetricsError, psnr, reconstruction_range, ssim, ssim_with_range};
pub use rmle::{RmleConfig, rmle};
pub use victim::{Observed, Victim};

/// Why an audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// `--split K` with K outside `1..shards` (the part before the cut and
    /// the part after it must both be non-empty).
    #[error("split {k} is out of range: the automatic plan has {shards} shards, so K must be in 1..={}", shards.saturating_sub(1))]
    SplitOutOfRange {
        /// The requested shard count.
        k: usize,
        /// Shards in the automatic plan.
        shards: usize,
    },
    /// A node name that matches no node, or several (module names).
    #[error("`{name}` names {matches} nodes, not exactly one; nodes: {known}")]
    UnknownNode {
        /// The requested name.
        name: String,
        /// How many nodes it matched as a module name.
        matches: usize,
        /// Every node label.
        known: String,
    },
    /// The splitter refused the cut (e.g. inside a fork) or the model.
    #[error("cannot cut the model there: {0}")]
    Split(#[from] mixnn_shard::ShardError),
    /// The decoder cannot mirror the layers before the cut.
    #[error("the inverse network cannot mirror node `{node}` ({op}): {reason}")]
    CannotMirror {
        /// The node (empty for the decoder as a whole).
        node: String,
        /// Its op.
        op: String,
        /// Why.
        reason: String,
    },
    /// The first part or the decoder failed in the layer engine.
    #[error("layer engine: {0}")]
    Layer(#[from] mixnn_layer::LayerError),
    /// tract failed on the loss graph.
    #[error("tract: {0}")]
    Tract(String),
    /// The data do not fit the model (sizes, counts, empty sets).
    #[error("data: {0}")]
    Data(String),
    /// The model is not usable for an audit.
    #[error("model: {0}")]
    Model(String),
    /// A parameter (steps, batch, learning rate...) is out of range.
    #[error("parameter: {0}")]
    Config(String),
    /// Scoring failed (image sizes).
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}
