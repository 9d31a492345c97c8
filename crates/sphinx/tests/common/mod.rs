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

/// What most tests start from: `(rng, geometry, header length, nodes,
/// route, link keys)`, a seeded generator, the default geometry, a pool of
/// nodes and a route through all of them (see [`route`]).
pub type Setup = (
    ChaCha20Rng,
    Geometry,
    usize,
    Vec<Node>,
    Vec<RouteHop>,
    Vec<LinkKey>,
);

/// `n` nodes of key epoch `epoch` and a route through them with `op`
/// at every hop, drawn from `rng(seed)`.
pub fn setup(seed: u64, n: usize, epoch: u32, op: Op) -> Setup {
    let mut rng = rng(seed);
    let g = Geometry::default();
    let h = g.header_len();
    let nodes = nodes(n, epoch, &mut rng);
    let (route, links) = route(&nodes, op, &mut rng);
    (rng, g, h, nodes, route, links)
}

/// A packet of size class 2048 that ends at the last hop of `route`
/// (`Exit::Final`), the shape most tests send.
pub fn final_packet(
    g: &Geometry,
    route: &[RouteHop],
    mode: PayloadMode,
    message: &[u8],
    rng: &mut ChaCha20Rng,
) -> (Packet, DesignerState) {
    build_packet(g, route, Exit::Final, mode, 2048, message, rng).unwrap()
}

/// Sends `node` a fresh link-mode packet along `route` and returns why it
/// refused it (panics if it did not).
pub fn refusal(
    node: &mut Node,
    g: &Geometry,
    route: &[RouteHop],
    message: &[u8],
    rng: &mut ChaCha20Rng,
) -> SphinxError {
    let (packet, _) = final_packet(g, route, PayloadMode::Link, message, rng);
    node.process(g, &mut packet.into_bytes()).unwrap_err()
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
