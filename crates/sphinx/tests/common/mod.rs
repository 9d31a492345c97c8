//! Fixtures shared by the integration tests: a pool of nodes with key rings
//! and replay caches, routes through them, and the substring check behind
//! every unlinkability assertion.
#![allow(dead_code)]

use std::collections::HashSet;

use mixnn_sphinx::*;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// One mix node as the tests see it.
pub struct Node {
    pub id: NodeId,
    pub epoch: u32,
    pub ring: KeyRing,
    pub replay: ReplayCache,
    pub public: MixPublicKey,
}

impl Node {
    pub fn process(&mut self, g: &Geometry, bytes: &mut [u8]) -> Result<Processed> {
        process(g, &self.ring, &mut self.replay, bytes)
    }
}

pub fn nodes(n: usize, epoch: u32, rng: &mut ChaCha20Rng) -> Vec<Node> {
    (0..n)
        .map(|_| {
            let mut id = [0u8; 32];
            rng.fill_bytes(&mut id);
            let key = MixKeyPair::generate(epoch, rng);
            let public = *key.public();
            Node {
                id: NodeId(id),
                epoch,
                ring: KeyRing::with_key(key),
                replay: ReplayCache::default(),
                public,
            }
        })
        .collect()
}

/// A route through `nodes` in order, every hop with `op`, distinct job
/// handles, and link keys `links[i]` into hop i (`links[n]` out of the last).
pub fn route(nodes: &[Node], op: Op, rng: &mut ChaCha20Rng) -> (Vec<RouteHop>, Vec<LinkKey>) {
    let links: Vec<LinkKey> = (0..=nodes.len()).map(|_| LinkKey::random(rng)).collect();
    let hops = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut job = [0u8; 32];
            rng.fill_bytes(&mut job);
            RouteHop {
                node_id: n.id,
                mix_key: n.public,
                epoch: n.epoch,
                op,
                job: JobHandle(job),
                key_in: links[i].clone(),
                key_out: links[i + 1].clone(),
                app_flags: i as u8,
            }
        })
        .collect();
    (hops, links)
}

/// True if `a` and `b` share any substring of `k` bytes.
pub fn common_substring(a: &[u8], b: &[u8], k: usize) -> bool {
    if a.len() < k || b.len() < k {
        return false;
    }
    let windows: HashSet<&[u8]> = a.windows(k).collect();
    b.windows(k).any(|w| windows.contains(w))
}

pub fn random_bytes(len: usize, rng: &mut ChaCha20Rng) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}
