//! Node choice and dummy placement: which pool node serves which hop.
//!
//! Both are secrets of the designer (who serves the job, and where the
//! dummies are), so they draw on OS randomness, never the training seed.

use mixnn_protocol::NodeDescriptor;
use mixnn_sphinx::{Geometry, JobHandle, MixPublicKey, NodeId};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::onion::{Hop, Role};
use super::{PoolError, PoolOptions};

/// Which shards the pool serves (`lo..hi`; the designer keeps the others)
/// and how many nodes the cascade takes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    /// Shards of the model.
    pub shards: usize,
    pub lo: usize,
    pub hi: usize,
    /// Layers plus dummies: the cascade's distinct nodes.
    pub count: usize,
}

impl Layout {
    /// Checks that a shard is left for the pool and that the routes fit
    /// the packet geometry.
    pub fn new(shards: usize, opts: &PoolOptions, g: &Geometry) -> Result<Layout, PoolError> {
        let lo = usize::from(opts.keep_first);
        let hi = shards - usize::from(opts.keep_last).min(shards);
        if shards == 0 || lo >= hi {
            return Err(PoolError::NoRemoteShard);
        }
        let remote = hi - lo;
        let count = remote + opts.dummies;
        let route_len = if opts.keep_last { count } else { 2 * count - 1 };
        if route_len > g.max_hops() {
            return Err(PoolError::RouteTooLong {
                remote,
                dummies: opts.dummies,
                route_len,
                max: g.max_hops(),
            });
        }
        Ok(Layout {
            shards,
            lo,
            hi,
            count,
        })
    }
}

/// A generator seeded from the OS, for everything the designer keeps secret.
pub(super) fn os_rng() -> Result<ChaCha20Rng, PoolError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(PoolError::Randomness)?;
    Ok(ChaCha20Rng::from_seed(seed))
}

/// Picks `count` nodes at random, no two with the same identity or a
/// shared address (see [`super::directory::pick`]), places the dummies
/// among the layers and gives each node its role and a fresh job handle.
pub(super) fn choose(
    pool: &[NodeDescriptor],
    layout: &Layout,
    opts: &PoolOptions,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<Hop>, PoolError> {
    let picked =
        super::directory::pick(pool, layout.count, opts.distinct, rng).map_err(|listed| {
            PoolError::TooFewNodes {
                listed,
                needed: layout.count,
                remote: layout.hi - layout.lo,
                dummies: opts.dummies,
            }
        })?;
    let roles = place_dummies(layout, opts, rng);
    picked
        .into_iter()
        .zip(&roles)
        .map(|(d, role)| hop(d, *role, rng))
        .collect()
}

/// The layers in order with the dummies at random positions. A dummy never
/// takes the turn: with the last layer remote it goes somewhere before it.
fn place_dummies(layout: &Layout, opts: &PoolOptions, rng: &mut ChaCha20Rng) -> Vec<Role> {
    let mut roles: Vec<Role> = (layout.lo..layout.hi).map(Role::Layer).collect();
    for _ in 0..opts.dummies {
        let max = if opts.keep_last {
            roles.len()
        } else {
            roles.len() - 1
        };
        roles.insert(rng.gen_range(0..=max), Role::Dummy);
    }
    roles
}

/// The hop a directory entry serves as `role`.
fn hop(d: &NodeDescriptor, role: Role, rng: &mut ChaCha20Rng) -> Result<Hop, PoolError> {
    let peer_name = || d.peer_id.to_string();
    let mix_key =
        MixPublicKey::from_bytes(d.mix_key.public).map_err(|source| PoolError::MixKey {
            peer: peer_name(),
            source,
        })?;
    let epoch =
        u32::try_from(d.mix_key.epoch).map_err(|_| PoolError::Epoch { peer: peer_name() })?;
    let peer: libp2p::PeerId = d.peer_id.parse().map_err(|source| PoolError::PeerId {
        peer: peer_name(),
        source,
    })?;
    let mut job = [0u8; 32];
    rng.fill_bytes(&mut job);
    Ok(Hop {
        node: NodeId(d.identity_key),
        peer,
        mix_key,
        epoch,
        job: JobHandle(job),
        role,
    })
}
