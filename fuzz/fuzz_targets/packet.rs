//! Fuzz target `packet`: arbitrary bytes into everything a node parses from
//! the network. The properties checked are the crate's promises: no panic,
//! no unbounded allocation, and nothing unauthenticated is accepted.
//!
//! Each input is used three ways:
//! 1. as a whole packet for `process` (length, hint, group element, MAC);
//! 2. as an XOR mask over a valid packet at an offset taken from its first
//!    two bytes, so the fuzzer also works on inputs of the right length with
//!    a valid structure, and must never make a modified packet verify;
//! 3. as input to the standalone parsers (routing info, SURB, payload).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mixnn_sphinx::*;
use rand::SeedableRng;

struct Fixture {
    g: Geometry,
    ring: KeyRing,
    valid: Vec<u8>,
    link: LinkKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0xf022);
        // A small geometry keeps packets short so the fuzzer can cover every length.
        let g = Geometry::new(3, MIN_SLOT_LEN, &[64, 256]).expect("geometry");
        let key = MixKeyPair::generate(0, &mut rng);
        let other = MixKeyPair::generate(1, &mut rng);
        let link = LinkKey::random(&mut rng);
        let hop = RouteHop {
            node_id: NodeId([1; 32]),
            mix_key: *key.public(),
            epoch: 0,
            op: Op::Forward,
            job: JobHandle([2; 32]),
            key_in: link.clone(),
            key_out: link.clone(),
            app_flags: 0,
        };
        let (p, _) = build_packet(
            &g,
            &[hop],
            Exit::Final,
            PayloadMode::Link,
            64,
            b"fuzz",
            &mut rng,
        )
        .expect("packet");
        let mut ring = KeyRing::with_key(key);
        ring.insert(other).expect("ring");
        Fixture {
            g,
            ring,
            valid: p.into_bytes(),
            link,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let h = f.g.header_len();

    let mut raw = data.to_vec();
    let mut replay = ReplayCache::new(64);
    if process(&f.g, &f.ring, &mut replay, &mut raw).is_ok() {
        // Only possible if the input is the fixture's own packet, byte for byte.
        assert_eq!(raw.len(), f.valid.len());
    }

    if let [a, b, mask @ ..] = data {
        let off = usize::from(u16::from_le_bytes([*a, *b])) % f.valid.len();
        let mut p = f.valid.clone();
        let mut changed = false;
        for (x, m) in p.iter_mut().skip(off).zip(mask) {
            *x ^= m;
            changed |= *m != 0;
        }
        let mut replay = ReplayCache::new(64);
        match process(&f.g, &f.ring, &mut replay, &mut p) {
            Ok(pr) => {
                let opened = open_payload(&pr.routing.key_in, &pr.incoming, &mut p[h..]);
                // A change in the header fails `process`; a change in the payload fails here.
                assert!(!changed || opened.is_err(), "a modified packet verified");
            }
            Err(e) => assert!(changed, "the valid packet was refused: {e}"),
        }
    }

    let _ = RoutingInfo::decode(data);
    let _ = Surb::from_bytes(&f.g, data);
    let _ = reply_id(&f.g, data);
    let mut b = data.to_vec();
    let _ = open_payload(&f.link, &HeaderBinding([0; BINDING_LEN]), &mut b);
});
