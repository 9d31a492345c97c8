//! Reply blocks: a node sends a message back to the designer over a 6-hop
//! return path it knows nothing about, and the designer reads it.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use mixnn_sphinx::*;

#[test]
fn reply_over_six_hops_reaches_the_designer() {
    let mut rng = rng(40);
    let g = Geometry::default();
    let h = g.header_len();
    let designer = NodeId([0xd0; 32]);
    let mut pool = nodes(8, 11, &mut rng);
    let (replier_pool, return_pool) = pool.split_at_mut(2);

    // The return path: five relays and a hop that delivers to the designer.
    let (mut back, _) = route(return_pool, Op::Relay, &mut rng);
    back[5].op = Op::Deliver;
    let (surb, state) = build_surb(&g, &back, designer, 2048, &mut rng).unwrap();
    assert_eq!(surb.first_hop(), &return_pool[0].id);

    // The SURB travels to the replier (the last layer) inside a link payload.
    let (to_replier, _) = route(replier_pool, Op::Forward, &mut rng);
    let surb_bytes = surb.to_bytes();
    let class = g.class_for(surb_bytes.len()).unwrap();
    let (packet, _) = build_packet(
        &g,
        &to_replier,
        Exit::Final,
        PayloadMode::Link,
        class,
        &surb_bytes,
        &mut rng,
    )
    .unwrap();
    let mut bytes = packet.into_bytes();
    let mut p = None;
    for node in replier_pool.iter_mut() {
        let q = node.process(&g, &mut bytes).unwrap();
        let m = open_payload(&q.routing.key_in, &q.incoming, &mut bytes[h..])
            .unwrap()
            .to_vec();
        if let Some(out) = q.outgoing {
            seal_payload(&q.routing.key_out, &out, &m, &mut bytes[h..]).unwrap();
        }
        p = Some(m);
    }
    let received = Surb::from_bytes(&g, &p.unwrap()).unwrap();

    // The replier answers; the reply crosses six hops.
    let message = b"loss=0.0421 step=17 -- test output follows".repeat(10);
    let mut reply = received.reply(&g, &message).unwrap().into_bytes();
    assert_eq!(reply.len(), g.packet_len(2048).unwrap());
    let mut copies = vec![reply.clone()];
    for (i, node) in return_pool.iter_mut().enumerate() {
        let before = reply.clone();
        let q = node.process(&g, &mut reply).unwrap();
        assert!(q.routing.is_layered());
        // Each hop learns its successor only: the next relay, or the designer at the end.
        let next = if i < 5 { back[i + 1].node_id } else { designer };
        assert_eq!(q.routing.next_hop, next);
        assert_eq!(q.routing.op, if i < 5 { Op::Relay } else { Op::Deliver });
        for (j, other) in back.iter().enumerate() {
            if j != i && j != i + 1 {
                assert!(!common_substring(&before, &other.node_id.0, 8));
                assert!(!common_substring(&reply, &other.node_id.0, 8));
            }
        }
        if i < 5 {
            assert!(
                !common_substring(&before, &designer.0, 8),
                "hop {i} sees the designer"
            );
        }
        assert!(
            !common_substring(&before, &message, 8),
            "hop {i} sees the message"
        );
        copies.push(reply.clone());
    }
    for a in 0..copies.len() {
        for b in a + 1..copies.len() {
            assert!(
                !common_substring(&copies[a], &copies[b], 8),
                "copies {a},{b}"
            );
        }
    }

    // The designer finds the SURB by the reply's id and reads the message.
    assert_eq!(reply_id(&g, &reply).unwrap(), state.id());
    assert_eq!(state.open_reply(&g, &mut reply).unwrap(), message);

    // A second reply with the same SURB dies at the first hop.
    let mut twice = received.reply(&g, b"again").unwrap().into_bytes();
    assert_eq!(
        return_pool[0].process(&g, &mut twice).unwrap_err(),
        SphinxError::Replay
    );
}

#[test]
fn tampered_reply_is_refused_by_the_designer() {
    let mut rng = rng(41);
    let g = Geometry::default();
    let h = g.header_len();
    let mut pool = nodes(5, 2, &mut rng);
    let (mut back, _) = route(&pool, Op::Relay, &mut rng);
    back[4].op = Op::Deliver;
    let (surb, state) = build_surb(&g, &back, NodeId([1; 32]), 2048, &mut rng).unwrap();
    let mut reply = surb.reply(&g, b"secret test output").unwrap().into_bytes();
    reply[h + 100] ^= 0x10;
    for node in pool.iter_mut() {
        node.process(&g, &mut reply).unwrap();
    }
    assert_eq!(
        state.open_reply(&g, &mut reply),
        Err(SphinxError::PayloadAuth)
    );
}

#[test]
fn surb_encoding_roundtrip_and_checks() {
    let mut rng = rng(42);
    let g = Geometry::default();
    let pool = nodes(5, 2, &mut rng);
    let (back, _) = route(&pool, Op::Relay, &mut rng);
    let (surb, _) = build_surb(&g, &back, NodeId([1; 32]), 32768, &mut rng).unwrap();
    let bytes = surb.to_bytes();
    assert_eq!(bytes.len(), Surb::encoded_len(&g));
    let again = Surb::from_bytes(&g, &bytes).unwrap();
    assert_eq!(again.first_hop(), surb.first_hop());
    assert_eq!(again.class(), 32768);
    let mut bad = bytes.to_vec();
    bad[0] = 9;
    assert_eq!(
        Surb::from_bytes(&g, &bad).unwrap_err(),
        SphinxError::UnsupportedVersion(9)
    );
    let mut bad = bytes.to_vec();
    bad[1] = 1; // class 32769: not a class
    assert!(Surb::from_bytes(&g, &bad).is_err());
    assert!(
        surb.reply(&g, &vec![0u8; 32768]).is_err(),
        "too big for the class"
    );
}
