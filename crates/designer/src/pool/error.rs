//! What can go wrong running a job on the pool, as the designer sees it.

use mixnn_layer::TensorError;
use mixnn_protocol::cbor::CborError;
use mixnn_protocol::job::FromHop;
use mixnn_sphinx::SphinxError;

/// A failure of the pool cascade (deployment, a phase, an answer).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The shards the designer keeps (first and/or last) leave none for the pool.
    #[error("no shard left for the pool (keeping both ends of a 1- or 2-shard model?)")]
    NoRemoteShard,
    /// A fork-join branch deployed with a kept end: the branch's ends are
    /// the designer's fork and merge already.
    #[error(
        "a fork-join's untrusted branch runs whole on the pool: --keep-first/--keep-last do not apply"
    )]
    BranchKeeps,
    /// A step's route would have more hops than a packet header can carry.
    #[error(
        "{remote} layers and {dummies} dummies make routes of {route_len} hops; \
         packets carry at most {max}"
    )]
    RouteTooLong {
        /// Layers run on the pool.
        remote: usize,
        /// Dummy hops asked for.
        dummies: usize,
        /// Hops of a step's route: through the cascade and back, or one way with
        /// `keep_last`.
        route_len: usize,
        /// Most hops a packet header can carry.
        max: usize,
    },
    /// The directory lists fewer nodes with distinct identities and
    /// addresses than the cascade needs.
    #[error(
        "the pool lists {listed} nodes with distinct identities and addresses, the cascade \
         needs {needed} ({remote} layers + {dummies} dummies)"
    )]
    TooFewNodes {
        /// Nodes the directory lists.
        listed: usize,
        /// Distinct nodes the cascade needs.
        needed: usize,
        /// Layers run on the pool.
        remote: usize,
        /// Dummy hops asked for.
        dummies: usize,
    },
    /// The quorum asked for does not suit the bootstraps given.
    #[error("quorum {quorum} with {bootstraps} bootstraps: it must be between 1 and {bootstraps}")]
    Quorum {
        /// The quorum asked for.
        quorum: usize,
        /// Bootstraps given.
        bootstraps: usize,
    },
    /// Fewer bootstraps answered than must agree.
    #[error("only {answered} of {asked} bootstraps answered, {quorum} must agree: {failures}")]
    QuorumUnreached {
        /// Bootstraps that answered a whole listing.
        answered: usize,
        /// Bootstraps asked.
        asked: usize,
        /// How many must list a node.
        quorum: usize,
        /// Why the others did not answer, one per bootstrap.
        failures: String,
    },
    /// The nodes a quorum of bootstraps agree on are too few, once no
    /// identity or address may hold two hops.
    #[error(
        "{quorum} of {asked} bootstraps agree on only {distinct} nodes with distinct identities \
         and addresses ({agreed} agreed in all); {needed} needed{note}"
    )]
    TooFewAgreed {
        /// How many bootstraps must list a node.
        quorum: usize,
        /// Bootstraps asked.
        asked: usize,
        /// Nodes the quorum lists.
        agreed: usize,
        /// The most of them that can share a cascade.
        distinct: usize,
        /// Distinct nodes the cascade needs.
        needed: usize,
        /// A hint (e.g. a pool on one machine needs `--local-pool`), or empty.
        note: &'static str,
    },
    /// The OS random source failed (seeding the designer's secret generator).
    #[error("OS randomness: {0}")]
    Randomness(getrandom::Error),
    /// A directory entry whose mix key is no curve point.
    #[error("node {peer}: {source}")]
    MixKey {
        /// The node's peer id, as listed.
        peer: String,
        /// Why the key was rejected.
        source: SphinxError,
    },
    /// A directory entry whose mix-key epoch does not fit in 32 bits.
    #[error("node {peer}: epoch out of range")]
    Epoch {
        /// The node's peer id, as listed.
        peer: String,
    },
    /// A directory entry whose peer id does not parse.
    #[error("node {peer}: {source}")]
    PeerId {
        /// The peer id, as listed.
        peer: String,
        /// Why it does not parse.
        source: libp2p::identity::ParseError,
    },
    /// The job's payload class does not suit the packet geometry.
    #[error(transparent)]
    Geometry(#[from] SphinxError),
    /// The job's largest tensor fits no payload class.
    #[error("a {largest}-byte tensor fits no packet class ({source}); use a smaller batch")]
    NoClass {
        /// Size of the largest tensor, in bytes.
        largest: usize,
        /// The geometry's error.
        source: SphinxError,
    },
    /// `hop` counts from 1, as the progress lines do.
    #[error("hop {hop}: unexpected answer {answer:?}")]
    UnexpectedAnswer {
        /// The hop that answered, counting from 1.
        hop: usize,
        /// What it answered.
        answer: Box<FromHop>,
    },
    /// A hop gave no end-to-end answer to a message addressed to it.
    #[error("hop {hop} did not answer")]
    NoAnswer {
        /// The hop, counting from 1.
        hop: usize,
    },
    /// The turning hop answered something other than the loss; holds its answer,
    /// if any.
    #[error("expected the loss, got {0:?}")]
    ExpectedLoss(Option<Box<FromHop>>),
    /// An answer lacks a tensor it must carry; holds which (e.g. `activations`).
    #[error("the answer carries no {0}")]
    NoTensor(&'static str),
    /// A tensor does not convert to or from its wire form.
    #[error("{what}: {source}")]
    Tensor {
        /// Which tensor (e.g. `input`, `gradient`, `parameter`).
        what: &'static str,
        /// The conversion's error.
        source: TensorError,
    },
    /// The designer's last shard (`keep_last`) gave no input gradient to send back.
    #[error("the last shard gave no input gradient")]
    NoInputGradient,
    /// A message does not encode or decode as CBOR.
    #[error(transparent)]
    Cbor(#[from] CborError),
    /// The export got no parameters for a shard; holds its index.
    #[error("no parameters for shard {0}")]
    NoParams(usize),
    /// Saving the state got none for a shard; holds its index.
    #[error("no state for shard {0}")]
    NoState(usize),
    /// A hop's state would take more parts than any state may (a
    /// [`mixnn_protocol::job::MAX_STATE_BYTES`] bound), or its parts
    /// disagree on their count.
    #[error("hop {hop}: a state of {parts} parts is refused")]
    StateParts {
        /// The hop, counting from 1.
        hop: usize,
        /// The part count it announced.
        parts: u32,
    },
    /// A dummy placed before shard `shard` cannot hand its sign mask to it.
    #[error("a dummy cannot mask the input of shard {shard}: {why}")]
    CannotMask {
        /// The shard after the dummy.
        shard: usize,
        /// What the shard's input meets instead of a foldable linear op.
        why: String,
    },
    /// Dummies were asked for but no position admits one: a dummy is never
    /// first and never takes the turn, so a turning cascade of one remote
    /// layer has no room for it.
    #[error(
        "{dummies} dummies but no place for one: a dummy is never first nor last with the turn; keep the last layer or split further"
    )]
    NoDummySlot {
        /// Dummy hops asked for.
        dummies: usize,
    },
    /// No answer within the detection bound T (PROTOCOL.md §12.8): a hop
    /// on the way may have died. Repairable.
    #[error(
        "no answer to the {exchange} within {waited_ms} ms ({rule}){}",
        if *keys_refreshed > 0 {
            format!(
                "; {keys_refreshed} hop(s) had rotated their mix key since the message was \
                 built: keys refreshed"
            )
        } else {
            String::new()
        }
    )]
    Lost {
        /// Which exchange (e.g. `training step (batch 64, 9 hop crossings)`).
        exchange: String,
        /// From the send to giving up, ms.
        waited_ms: u64,
        /// How the bound was set.
        rule: String,
        /// Hops whose mix key was found rotated after the loss.
        keys_refreshed: usize,
    },
    /// The link to one end of the cascade closed while an answer was
    /// pending: that node stopped or died. Repairable.
    #[error("the link to hop {hop} ({role}, node {peer}) closed {after_ms} ms into the {exchange}")]
    LinkClosed {
        /// The hop, counting from 1.
        hop: usize,
        /// What it holds (`layer K` or `dummy`).
        role: String,
        /// Its node's peer id.
        peer: String,
        /// Which exchange was pending.
        exchange: String,
        /// From the send to the close being noticed, ms.
        after_ms: u64,
    },
    /// A hop failed and no node may replace it.
    #[error(
        "hop {hop} ({role}) failed and the directory lists no node outside the cascade and the \
         {failed} failed node(s) ({listed} listed by the quorum{note}): start another node, then \
         `mixnn train --resume JOB_DIR`"
    )]
    NoSpareNode {
        /// The failed hop, counting from 1.
        hop: usize,
        /// What it held (`layer K` or `dummy`).
        role: String,
        /// Nodes that failed in this job (never used again).
        failed: usize,
        /// Nodes the quorum of bootstraps lists now.
        listed: usize,
        /// Why listed nodes were not usable, if some were (shared address).
        note: String,
    },
    /// A node chosen for a hop cannot be reached (dialing it or opening
    /// the packet link failed): the directory still lists it, but it is
    /// gone. Bringing the hop up takes another node instead.
    #[error("hop {hop} ({role}): node {peer} cannot be reached: {reason}")]
    Unreachable {
        /// The hop, counting from 1.
        hop: usize,
        /// What it holds (`layer K` or `dummy`).
        role: String,
        /// Its node's peer id.
        peer: String,
        /// Why (the dial's or the link's error).
        reason: String,
    },
    /// A hop of a cascade left deployed (`train --keep-deployed`) is gone:
    /// its node stopped or cannot be reached, so the cascade cannot be
    /// attached to again.
    #[error(
        "the deployed cascade is gone: hop {hop} ({role}), node {peer}: {reason}; \
         `mixnn infer --redeploy` deploys the job's latest checkpoint on fresh nodes"
    )]
    CascadeGone {
        /// The hop, counting from 1.
        hop: usize,
        /// What it holds (`layer K` or `dummy`).
        role: String,
        /// Its node's peer id.
        peer: String,
        /// What was found.
        reason: String,
    },
    /// Bringing hops up replaced as many unreachable nodes as it may and
    /// the last one chosen failed too.
    #[error(
        "{tried} nodes the directory lists could not be reached, one after the other ({nodes}); \
         stopped nodes stay listed until their descriptors expire: wait, or start other nodes, \
         then try again (`mixnn train --resume JOB_DIR` for a job with a job directory)"
    )]
    TooManyUnreachable {
        /// Nodes that proved unreachable, the last one included.
        tried: usize,
        /// Each one: its hop, node and why.
        nodes: String,
        /// Their identities, in the same order: a job directory records
        /// them so a resume avoids them.
        ids: Vec<[u8; 32]>,
    },
    /// The hop to repair lies beyond what a probe route can reach.
    #[error(
        "hop {hop} cannot be probed: a probe to it needs {route_len} hops, packets carry {max}"
    )]
    ProbeTooLong {
        /// The hop, counting from 1.
        hop: usize,
        /// Hops of the probe's route.
        route_len: usize,
        /// Most hops a packet carries.
        max: usize,
    },
    /// A verified job's answer has no witness area, or a hop's slot in it
    /// is missing.
    #[error("a verified job's answer carries no witnesses")]
    NoWitness,
    /// The witnesses show a hop that lied (PROTOCOL.md §12.9), found at
    /// training step `step` (0: outside a step, e.g. a test or checkpoint).
    #[error("step {step}: {finding} ({side})")]
    Lie {
        /// The step the lie showed at.
        step: u64,
        /// What the witnesses showed.
        finding: super::Finding,
        /// Which replica, or both, the finding is about.
        side: super::replica::Side,
    },
}
