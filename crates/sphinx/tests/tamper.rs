//! Hostile input: flipped bits, replays, stale epochs and garbage of every
//! length. Each must be a counted error, never a panic and never a packet
//! that slips through.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use mixnn_sphinx::*;
use rand::RngCore;

fn fresh(node: &Node) -> (KeyRing, ReplayCache) {
    let key = node.ring.get(node.epoch).unwrap();
    let copy = MixKeyPair::from_secret_bytes(key.epoch(), *key.secret_bytes());
    (KeyRing::with_key(copy), ReplayCache::default())
}

#[test]
fn flipped_header_bit_is_detected() {
    let (mut rng, g, h, mut nodes, route, _) = setup(30, 3, 5, Op::Forward);
    let (packet, _) = final_packet(&g, &route, PayloadMode::Link, b"m", &mut rng);
    let original = packet.into_bytes();
    // Test at hop 0 and, after one honest hop, at hop 1 (a header built by a hop).
    let mut at_hop1 = original.clone();
    nodes[0].process(&g, &mut at_hop1).unwrap();
    for (hop, input) in [(0usize, &original), (1, &at_hop1)] {
        let (ring, _) = fresh(&nodes[hop]);
        let mut checked = 0;
        for bit in 0..h * 8 {
            // Every bit of hint, α and γ; every 5th bit of β (about 4,100 positions).
            if bit >= 49 * 8 && bit % 5 != 0 {
                continue;
            }
            let mut bytes = input.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            let mut replay = ReplayCache::default();
            let err = process(&g, &ring, &mut replay, &mut bytes).unwrap_err();
            assert!(
                matches!(
                    err,
                    SphinxError::BadMac | SphinxError::Malformed(_) | SphinxError::UnknownEpoch
                ),
                "hop {hop} bit {bit}: {err:?}"
            );
            // A refused packet leaves the buffer untouched.
            assert_eq!(bytes[bit / 8], input[bit / 8] ^ (1 << (bit % 8)));
            checked += 1;
        }
        assert!(checked > 4000);
    }
}

#[test]
fn flipped_payload_bit_is_detected_link_mode() {
    let (mut rng, g, h, nodes, route, _) = setup(31, 2, 5, Op::Forward);
    let (packet, _) = final_packet(&g, &route, PayloadMode::Link, b"weights", &mut rng);
    let original = packet.into_bytes();
    let (ring, _) = fresh(&nodes[0]);
    for bit in (h * 8..original.len() * 8).step_by(3) {
        let mut bytes = original.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let mut replay = ReplayCache::default();
        let p = process(&g, &ring, &mut replay, &mut bytes).unwrap();
        assert_eq!(
            open_payload(&p.routing.key_in, &p.incoming, &mut bytes[h..]),
            Err(SphinxError::PayloadAuth),
            "bit {bit}"
        );
    }
}

#[test]
fn flipped_payload_bit_is_detected_layered_mode() {
    let (mut rng, g, h, nodes, route, links) = setup(32, 3, 5, Op::Relay);
    let (packet, _) = final_packet(&g, &route, PayloadMode::Layered, b"c", &mut rng);
    let original = packet.into_bytes();
    let rings: Vec<_> = nodes.iter().map(|n| fresh(n).0).collect();
    for bit in (h * 8..original.len() * 8).step_by(29) {
        let mut bytes = original.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let mut last = None;
        for ring in &rings {
            last = Some(process(&g, ring, &mut ReplayCache::default(), &mut bytes).unwrap());
        }
        let p = last.unwrap();
        assert_eq!(
            open_payload(&links[2], &p.incoming, &mut bytes[h..]),
            Err(SphinxError::PayloadAuth),
            "bit {bit}"
        );
    }
}

#[test]
fn payload_cannot_move_to_another_header() {
    let (mut rng, g, h, mut nodes, route, _) = setup(33, 1, 5, Op::Forward);
    let (a, _) = final_packet(&g, &route, PayloadMode::Link, b"a", &mut rng);
    let (b, _) = final_packet(&g, &route, PayloadMode::Link, b"b", &mut rng);
    let mut spliced = a.header().to_vec();
    spliced.extend_from_slice(b.payload());
    let p = nodes[0].process(&g, &mut spliced).unwrap();
    assert_eq!(
        open_payload(&p.routing.key_in, &p.incoming, &mut spliced[h..]),
        Err(SphinxError::PayloadAuth)
    );
}

#[test]
fn replay_is_dropped_and_counted_per_epoch() {
    let (mut rng, g, _, mut nodes, route, _) = setup(34, 2, 8, Op::Forward);
    let (packet, _) = final_packet(&g, &route, PayloadMode::Link, b"m", &mut rng);
    let mut first = packet.clone().into_bytes();
    nodes[0].process(&g, &mut first).unwrap();
    let mut again = packet.clone().into_bytes();
    let err = nodes[0].process(&g, &mut again).unwrap_err();
    assert_eq!(err, SphinxError::Replay);
    assert_eq!(err.reason(), "replay");
    assert_eq!(
        again,
        packet.as_bytes(),
        "a dropped packet is left untouched"
    );
    assert_eq!(nodes[0].replay.len(8), 1);

    // Hard cap: a full cache refuses (fails closed) and counts.
    let (ring, _) = fresh(&nodes[0]);
    let mut tiny = ReplayCache::new(1);
    let (p2, _) = final_packet(&g, &route, PayloadMode::Link, b"n", &mut rng);
    let (p3, _) = final_packet(&g, &route, PayloadMode::Link, b"o", &mut rng);
    process(&g, &ring, &mut tiny, &mut p2.into_bytes()).unwrap();
    assert_eq!(
        process(&g, &ring, &mut tiny, &mut p3.into_bytes()).unwrap_err(),
        SphinxError::ReplayCacheFull { epoch: 8 }
    );
    assert_eq!(tiny.refused_full(), 1);
}

#[test]
fn unknown_and_expired_epochs_are_dropped() {
    let (mut rng, g, _, mut nodes, route, _) = setup(35, 1, 5, Op::Forward);
    let (old, _) = final_packet(&g, &route, PayloadMode::Link, b"m", &mut rng);

    // Rotation: the node adds epoch 6 and keeps 5 for a grace period.
    let new_key = MixKeyPair::generate(6, &mut rng);
    let new_public = *new_key.public();
    nodes[0].ring.insert(new_key).unwrap();
    let mut r6 = route.clone();
    r6[0].epoch = 6;
    r6[0].mix_key = new_public;
    let (new, _) = final_packet(&g, &r6, PayloadMode::Link, b"n", &mut rng);
    nodes[0].process(&g, &mut old.clone().into_bytes()).unwrap();
    nodes[0].process(&g, &mut new.clone().into_bytes()).unwrap();

    // Grace over: key 5 and its replay set go; its packets are UnknownEpoch.
    assert!(nodes[0].ring.remove(5));
    nodes[0].replay.forget_epoch(5);
    // An epoch the node never had.
    let mut r9 = route.clone();
    r9[0].epoch = 9;
    // Same hint byte, different epoch (6 + 256): the hint selects epoch 6's key,
    // and the authenticated epoch in the routing info (262) does not match it.
    let mut r262 = r6.clone();
    r262[0].epoch = 262;
    for (r, message) in [(&route, b"l"), (&r9, b"x"), (&r262, b"y")] {
        assert_eq!(
            refusal(&mut nodes[0], &g, r, message, &mut rng),
            SphinxError::UnknownEpoch,
            "epoch {}",
            r[0].epoch
        );
    }
}

#[test]
fn wrong_node_cannot_process() {
    let mut rng = rng(36);
    let g = Geometry::default();
    let mut nodes = nodes(2, 5, &mut rng);
    let (route, _) = route(&nodes[..1], Op::Forward, &mut rng);
    assert_eq!(
        refusal(&mut nodes[1], &g, &route, b"m", &mut rng),
        SphinxError::BadMac
    );
}

#[test]
fn garbage_of_every_length_never_panics() {
    let mut rng = rng(37);
    let g = Geometry::default();
    let nodes = nodes(1, 0, &mut rng);
    let ring = &nodes[0].ring;
    let mut replay = ReplayCache::default();
    let h = g.header_len();
    let surb_len = Surb::encoded_len(&g);
    let key = LinkKey::random(&mut rng);
    let binding = HeaderBinding([3; BINDING_LEN]);
    for len in 0..=h + 2048 + 64 {
        let mut bytes = random_bytes(len, &mut rng);
        if let Some(b) = bytes.first_mut() {
            *b = 0; // the node's epoch hint, so the length-right ones reach the DH
        }
        assert!(
            process(&g, ring, &mut replay, &mut bytes).is_err(),
            "len {len}"
        );
        assert!(Packet::from_bytes(&g, bytes.clone()).is_err() || len == h + 2048);
        assert!(RoutingInfo::decode(&bytes).is_err() || len >= ROUTING_LEN);
        assert!(Surb::from_bytes(&g, &bytes).is_err() || len == surb_len);
        assert!(open_payload(&key, &binding, &mut bytes).is_err());
        let _ = reply_id(&g, &bytes);
    }
    // Exactly packet-length garbage for every class, many times.
    for &class in g.size_classes() {
        let mut buf = vec![0u8; g.packet_len(class).unwrap()];
        for _ in 0..50 {
            rng.fill_bytes(&mut buf[..h]);
            buf[0] = 0;
            assert!(process(&g, ring, &mut replay, &mut buf).is_err());
        }
    }
    // All-zero and all-one headers (the identity and a non-canonical point).
    for fill in [0u8, 0xff] {
        let mut buf = vec![fill; g.packet_len(2048).unwrap()];
        buf[0] = 0;
        assert!(process(&g, ring, &mut replay, &mut buf).is_err());
    }
    assert!(
        replay.is_empty(),
        "nothing unauthenticated reached the replay cache"
    );
}
