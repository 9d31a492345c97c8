//! Property tests: random routes, modes, classes and messages always go
//! through, and every hop reads back what was sent.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use mixnn_sphinx::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_routes_deliver(
        seed in any::<u64>(),
        hops in 1usize..=16,
        layered in any::<bool>(),
        class_ix in 0usize..2,
        len_frac in 0.0f64..=1.0,
    ) {
        let mut rng = rng(seed);
        let g = Geometry::default();
        let h = g.header_len();
        let class = g.size_classes()[class_ix];
        let len = (len_frac * g.capacity(class).unwrap() as f64) as usize;
        let message = random_bytes(len, &mut rng);
        let mut nodes = nodes(hops, seed as u32, &mut rng);
        let (route, links) = route(&nodes, Op::Forward, &mut rng);
        let mode = if layered { PayloadMode::Layered } else { PayloadMode::Link };
        let (packet, _) = build_packet(&g, &route, Exit::Final, mode, class, &message, &mut rng).unwrap();
        let mut bytes = packet.into_bytes();
        prop_assert_eq!(bytes.len(), h + class);
        for i in 0..hops {
            let p = nodes[i].process(&g, &mut bytes).unwrap();
            prop_assert_eq!(p.routing.job, route[i].job);
            prop_assert_eq!(p.routing.is_final(), i + 1 == hops);
            if !layered {
                let m = open_payload(&p.routing.key_in, &p.incoming, &mut bytes[h..]).unwrap().to_vec();
                prop_assert_eq!(&m, &message);
                if let Some(out) = p.outgoing {
                    seal_payload(&p.routing.key_out, &out, &m, &mut bytes[h..]).unwrap();
                }
            } else if i + 1 == hops {
                let m = open_payload(&links[i], &p.incoming, &mut bytes[h..]).unwrap();
                prop_assert_eq!(m, &message[..]);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(seed in any::<u64>(), extra in 0usize..64, hint in any::<u8>()) {
        let mut rng = rng(seed);
        let g = Geometry::new(4, 160, &[256, 1024]).unwrap();
        let nodes = nodes(1, u32::from(hint), &mut rng);
        let mut replay = ReplayCache::default();
        for len in [g.packet_len(256).unwrap(), g.packet_len(1024).unwrap(), extra, g.header_len() + extra] {
            let mut bytes = random_bytes(len, &mut rng);
            if let Some(b) = bytes.first_mut() { *b = hint; }
            prop_assert!(process(&g, &nodes[0].ring, &mut replay, &mut bytes).is_err());
        }
    }
}
