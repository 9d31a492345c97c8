//! Node choice and dummy placement: which pool node serves which hop.
//!
//! Both are secrets of the designer (who serves the job, and where the
//! dummies are), so they never draw on the training seed. The nodes are
//! chosen with fresh OS randomness every time (a resumed or repaired job
//! must not return to nodes an observer saw it use); where the dummies sit
//! and their sign masks derive from the job's secret ([`JobSecret`]), so a
//! resumed job rebuilds the same masked shards its checkpoints hold.

use mixnn_protocol::NodeDescriptor;
use mixnn_sphinx::{Geometry, JobHandle, MixPublicKey, NodeId};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

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
    /// Control packets per round (PROTOCOL.md §12.5): the longest cascade
    /// the geometry allows in this mode, so the count of control packets a
    /// hop relays says nothing about the cascade's real length.
    pub pad_hops: usize,
}

impl Layout {
    /// Checks that a shard is left for the pool and that the routes fit
    /// the packet geometry.
    pub fn new(shards: usize, opts: &PoolOptions, g: &Geometry) -> Result<Layout, PoolError> {
        if opts.branch && (opts.keep_first || opts.keep_last) {
            return Err(PoolError::BranchKeeps);
        }
        // The pool's output comes back to the designer, whose last shard
        // (or, for a branch, the merge) takes it: routes go one way.
        let one_way = opts.keep_last || opts.branch;
        let lo = usize::from(opts.keep_first);
        let hi = shards - usize::from(opts.keep_last).min(shards);
        if shards == 0 || lo >= hi {
            return Err(PoolError::NoRemoteShard);
        }
        let remote = hi - lo;
        if opts.dummies > 0 && !opts.keep_last && remote < 2 {
            return Err(PoolError::NoDummySlot {
                dummies: opts.dummies,
            });
        }
        let count = remote + opts.dummies;
        let route_len = if one_way { count } else { 2 * count - 1 };
        if route_len > g.max_hops() {
            return Err(PoolError::RouteTooLong {
                remote,
                dummies: opts.dummies,
                route_len,
                max: g.max_hops(),
            });
        }
        let pad_hops = if one_way {
            g.max_hops()
        } else {
            g.max_hops().div_ceil(2)
        };
        Ok(Layout {
            shards,
            lo,
            hi,
            count,
            pad_hops,
        })
    }
}

/// A generator seeded from the OS, for everything the designer keeps secret.
pub(super) fn os_rng() -> Result<ChaCha20Rng, PoolError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(PoolError::Randomness)?;
    Ok(ChaCha20Rng::from_seed(seed))
}

/// The job's secret seed (PoolOptions::job_secret): the designer keeps it
/// (0600, in the job directory) and never sends it. Each use draws from
/// its own generator, seeded by SHA-256 over a label naming the use and
/// the secret, so no use's output says anything about another's, and a
/// new use can be added without changing the old ones.
#[derive(Clone)]
pub(super) struct JobSecret([u8; 32]);

impl JobSecret {
    /// `given`, or a fresh secret from the OS.
    pub fn new(given: Option<[u8; 32]>) -> Result<JobSecret, PoolError> {
        match given {
            Some(s) => Ok(JobSecret(s)),
            None => {
                let mut s = [0u8; 32];
                getrandom::fill(&mut s).map_err(PoolError::Randomness)?;
                Ok(JobSecret(s))
            }
        }
    }

    /// The secret's bytes, for the caller to store.
    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The generator of one use of the secret (`label`, e.g.
    /// `"dummy positions"`).
    pub fn rng(&self, label: &str) -> ChaCha20Rng {
        let mut h = Sha256::new();
        h.update(b"mixnn job secret v1\0");
        h.update(label.as_bytes());
        h.update([0u8]);
        h.update(self.0);
        ChaCha20Rng::from_seed(h.finalize().into())
    }
}

/// Label of the generator that places the dummies.
pub(super) const DUMMY_POSITIONS: &str = "dummy positions";
/// Label of the generator that draws the dummies' sign masks.
pub(super) const DUMMY_MASKS: &str = "dummy sign masks";

/// Picks `count` nodes at random (`rng`: OS randomness), no two with the
/// same identity or a shared address (see [`super::directory::pick`]),
/// places the dummies among the layers (from the job's secret) and gives
/// each node its role and a fresh job handle.
pub(super) fn choose(
    pool: &[NodeDescriptor],
    layout: &Layout,
    opts: &PoolOptions,
    secret: &JobSecret,
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
    let roles = place_dummies(layout, opts, &mut secret.rng(DUMMY_POSITIONS));
    picked
        .into_iter()
        .zip(&roles)
        .map(|(d, role)| hop(d, *role, rng))
        .collect()
}

/// The layers in order with the dummies at random positions. A dummy is
/// never first (it would get the raw input, or the designer's first
/// output, unmasked) and never takes the turn: with the last layer remote
/// it goes somewhere between the first and the last layer. [`Layout::new`]
/// refuses dummies when no such position exists.
fn place_dummies(layout: &Layout, opts: &PoolOptions, rng: &mut ChaCha20Rng) -> Vec<Role> {
    let mut roles: Vec<Role> = (layout.lo..layout.hi).map(Role::Layer).collect();
    for _ in 0..opts.dummies {
        let max = if opts.keep_last {
            roles.len()
        } else {
            roles.len().saturating_sub(1)
        };
        roles.insert(rng.gen_range(1..=max.max(1)), Role::Dummy);
    }
    roles
}

/// The hop a directory entry serves as `role`, with a fresh job handle.
pub(super) fn hop(d: &NodeDescriptor, role: Role, rng: &mut ChaCha20Rng) -> Result<Hop, PoolError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dummies: usize, keep_last: bool) -> PoolOptions {
        PoolOptions {
            bootstrap: Vec::new(),
            quorum: None,
            distinct: super::super::Distinct::HostPort,
            dummies,
            keep_first: false,
            keep_last,
            branch: false,
            local_engine: crate::EngineKind::Native,
            class: None,
            timeout: std::time::Duration::from_secs(1),
            wait_for_nodes: std::time::Duration::from_secs(1),
            batches: vec![1],
            job_secret: None,
            witness: false,
            exclude: Vec::new(),
        }
    }

    /// The adversary's wish: a dummy first, where it sees the raw input.
    /// Over many placements of every size, the first hop is always a layer
    /// and, with the turn, so is the last.
    #[test]
    fn a_dummy_is_never_first_nor_takes_the_turn() {
        let g = Geometry::default();
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        for keep_last in [false, true] {
            for shards in 2..5 {
                for dummies in 1..3 {
                    let o = opts(dummies, keep_last);
                    let layout = Layout::new(shards, &o, &g).expect("layout");
                    for _ in 0..200 {
                        let roles = place_dummies(&layout, &o, &mut rng);
                        assert_eq!(roles.len(), layout.count);
                        assert_eq!(roles[0], Role::Layer(0), "{roles:?}");
                        if !keep_last {
                            assert!(matches!(roles.last(), Some(Role::Layer(_))));
                        }
                    }
                }
            }
        }
        // One remote layer that turns: no place for a dummy at all.
        assert!(matches!(
            Layout::new(1, &opts(1, false), &g),
            Err(PoolError::NoDummySlot { dummies: 1 })
        ));
    }

    /// A fork-join branch: routes one way (its output comes back), whole
    /// on the pool, and a dummy is never last (no designer layer after it
    /// could take its mask: the merge has no weights), nor first.
    #[test]
    fn a_branch_goes_one_way_and_ends_in_a_layer() {
        let g = Geometry::default();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let o = PoolOptions {
            branch: true,
            ..opts(2, false)
        };
        let layout = Layout::new(3, &o, &g).expect("layout");
        assert_eq!((layout.lo, layout.hi, layout.count), (0, 3, 5));
        assert_eq!(layout.pad_hops, g.max_hops());
        for _ in 0..200 {
            let roles = place_dummies(&layout, &o, &mut rng);
            assert_eq!(roles[0], Role::Layer(0), "{roles:?}");
            assert_eq!(roles.last(), Some(&Role::Layer(2)), "{roles:?}");
        }
        for (keep_first, keep_last) in [(true, false), (false, true)] {
            let o = PoolOptions {
                keep_first,
                keep_last,
                ..o.clone()
            };
            assert!(matches!(
                Layout::new(3, &o, &g),
                Err(PoolError::BranchKeeps)
            ));
        }
    }

    /// A resumed job rebuilds the same masked shards: the same secret
    /// places the dummies at the same positions and draws the same sign
    /// masks, whatever OS randomness chooses the nodes; another secret
    /// (almost surely) does not.
    #[test]
    fn the_same_job_secret_gives_the_same_dummies_and_masks() {
        let g = Geometry::default();
        let model = mixnn_shard::mlp(3, 4, mixnn_shard::Form::Gemm);
        let plan = mixnn_shard::plan(&model, None).expect("plan");
        let shards = mixnn_shard::split(&model, &plan).expect("split");
        let o = opts(2, true);
        let layout = Layout::new(shards.len(), &o, &g).expect("layout");
        let build = |secret: &JobSecret| {
            let roles = place_dummies(&layout, &o, &mut secret.rng(DUMMY_POSITIONS));
            let masks = super::super::mask::plan(&roles, &shards, &mut secret.rng(DUMMY_MASKS))
                .expect("masks");
            (roles, masks.ops, masks.shards)
        };
        let a = JobSecret::new(Some([7; 32])).expect("secret");
        let first = build(&a);
        assert!(first.1.iter().any(Option::is_some), "dummies with masks");
        for _ in 0..3 {
            assert_eq!(build(&a), first);
        }
        // Fresh secrets differ from it: positions and masks move.
        let others: Vec<_> = (0..8)
            .map(|_| build(&JobSecret::new(None).expect("fresh secret")))
            .collect();
        assert!(
            others.iter().any(|o| o.1 != first.1),
            "masks change with the secret"
        );
        // The uses are apart: the two generators of one secret differ.
        let mut p = a.rng(DUMMY_POSITIONS);
        let mut m = a.rng(DUMMY_MASKS);
        assert_ne!(p.next_u64(), m.next_u64());
    }
}
