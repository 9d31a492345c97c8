//! What can go wrong running a job on the pool, as the designer sees it.

use mixnn_layer::TensorError;
use mixnn_protocol::cbor::CborError;
use mixnn_protocol::job::FromHop;
use mixnn_sphinx::SphinxError;

/// A failure of the pool cascade (deployment, a phase, an answer).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no shard left for the pool (keeping both ends of a 1- or 2-shard model?)")]
    NoRemoteShard,
    #[error(
        "{remote} layers and {dummies} dummies make routes of {route_len} hops; \
         packets carry at most {max}"
    )]
    RouteTooLong {
        remote: usize,
        dummies: usize,
        route_len: usize,
        max: usize,
    },
    #[error(
        "the pool lists {listed} nodes, the cascade needs {needed} distinct ones \
         ({remote} layers + {dummies} dummies)"
    )]
    TooFewNodes {
        listed: usize,
        needed: usize,
        remote: usize,
        dummies: usize,
    },
    #[error("OS randomness: {0}")]
    Randomness(getrandom::Error),
    /// A directory entry whose mix key is no curve point.
    #[error("node {peer}: {source}")]
    MixKey { peer: String, source: SphinxError },
    #[error("node {peer}: epoch out of range")]
    Epoch { peer: String },
    #[error("node {peer}: {source}")]
    PeerId {
        peer: String,
        source: libp2p::identity::ParseError,
    },
    /// The job's payload class does not suit the packet geometry.
    #[error(transparent)]
    Geometry(#[from] SphinxError),
    #[error("a {largest}-byte tensor fits no packet class ({source}); use a smaller batch")]
    NoClass { largest: usize, source: SphinxError },
    /// `hop` counts from 1, as the progress lines do.
    #[error("hop {hop}: unexpected answer {answer:?}")]
    UnexpectedAnswer { hop: usize, answer: Box<FromHop> },
    #[error("hop {hop} did not answer")]
    NoAnswer { hop: usize },
    #[error("expected the loss, got {0:?}")]
    ExpectedLoss(Option<Box<FromHop>>),
    #[error("the answer carries no {0}")]
    NoTensor(&'static str),
    #[error("{what}: {source}")]
    Tensor {
        what: &'static str,
        source: TensorError,
    },
    #[error("the last shard gave no input gradient")]
    NoInputGradient,
    #[error(transparent)]
    Cbor(#[from] CborError),
    #[error("no parameters for shard {0}")]
    NoParams(usize),
}
