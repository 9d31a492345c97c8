//! Fixtures for the benchmarks in `benches/` (run with
//! `cargo bench -p mixnn-benches --bench sphinx`): routes and packets of
//! mixnn-sphinx ready to be processed, so the timed code is only the hop's work.

// Benchmark fixtures, never linked into the product: a fixture that cannot
// be built stops the benchmark with its reason.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use mixnn_sphinx::{
    Exit, Geometry, JobHandle, KeyRing, LinkKey, MixKeyPair, NodeId, Op, PayloadMode, RouteHop,
    build_packet,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// A route of `hops` fresh nodes and the key ring of its first hop.
pub struct Fixture {
    /// Geometry the packets are built for.
    pub geometry: Geometry,
    /// The designer's route.
    pub route: Vec<RouteHop>,
    /// Key ring of the route's first hop (the hop being timed).
    pub first_ring: KeyRing,
    rng: ChaCha20Rng,
}

impl Fixture {
    /// `hops` nodes, all in key epoch 1.
    pub fn new(geometry: Geometry, hops: usize, seed: u64) -> Fixture {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let keys: Vec<MixKeyPair> = (0..hops)
            .map(|_| MixKeyPair::generate(1, &mut rng))
            .collect();
        let links: Vec<LinkKey> = (0..=hops).map(|_| LinkKey::random(&mut rng)).collect();
        let route = (0..hops)
            .map(|i| RouteHop {
                node_id: NodeId([i as u8; 32]),
                mix_key: *keys[i].public(),
                epoch: 1,
                op: Op::Relay,
                job: JobHandle([0x5a; 32]),
                key_in: links[i].clone(),
                key_out: links[i + 1].clone(),
                app_flags: 0,
            })
            .collect();
        let first_ring =
            KeyRing::with_key(MixKeyPair::from_secret_bytes(1, *keys[0].secret_bytes()));
        Fixture {
            geometry,
            route,
            first_ring,
            rng,
        }
    }

    /// A fresh packet of `class` bytes of payload, as its first hop receives it.
    pub fn packet(&mut self, mode: PayloadMode, class: usize) -> Vec<u8> {
        let message = vec![0x42u8; class / 2];
        match build_packet(
            &self.geometry,
            &self.route,
            Exit::Final,
            mode,
            class,
            &message,
            &mut self.rng,
        ) {
            Ok((p, _)) => p.into_bytes(),
            Err(e) => panic!("fixture packet: {e}"),
        }
    }
}
