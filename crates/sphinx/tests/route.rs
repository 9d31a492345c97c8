//! A packet over the longest route, hop by hop: each hop reads exactly its
//! own routing info, and what it receives and emits cannot be linked.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use mixnn_sphinx::*;

/// Secrets of hop j that hop i must not see (its own ids and links excepted).
fn secrets_of_others(route: &[RouteHop], i: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (j, hop) in route.iter().enumerate() {
        if j != i {
            out.push(hop.job.0.to_vec());
        }
        if j != i && j != i + 1 {
            out.push(hop.node_id.0.to_vec());
        }
        if j != i && j + 1 != i {
            // hop j's outgoing key is hop j+1's incoming key
            out.push(hop.key_out.as_bytes().to_vec());
        }
    }
    out
}

#[test]
fn sixteen_hops_link_mode() {
    let (mut rng, g, h, mut nodes, route, links) = setup(16, 16, 42, Op::Forward);
    // The same message at every hop: payload ciphertexts must still be unrelated.
    let message = random_bytes(1500, &mut rng);
    let (packet, state) = final_packet(&g, &route, PayloadMode::Link, &message, &mut rng);
    let packet_len = g.packet_len(2048).unwrap();
    assert_eq!(packet.len(), packet_len);
    let mut bytes = packet.into_bytes();
    let mut payloads = Vec::new();
    let mut headers = Vec::new();

    for i in 0..16 {
        let before = bytes.clone();
        payloads.push(before[h..].to_vec());
        headers.push(before[..h].to_vec());
        let p = nodes[i].process(&g, &mut bytes).unwrap();
        assert_eq!(bytes.len(), packet_len);

        // Exactly this hop's routing info.
        let r = &p.routing;
        assert_eq!(r.op, Op::Forward);
        assert_eq!(r.key_epoch, 42);
        assert_eq!(r.job, route[i].job);
        assert_eq!(r.key_in, links[i]);
        assert_eq!(r.key_out, links[i + 1]);
        assert_eq!(r.flags >> 8, i as u16);
        assert!(!r.is_layered());
        assert_eq!(r.is_final(), i == 15);
        assert_eq!(p.incoming, state.bindings()[i]);
        assert_eq!(p.replay_tag, state.replay_tags()[i]);
        // The end-to-end key: the designer's copy, unlike any other hop's.
        assert_eq!(Some(&p.e2e_key), state.e2e_key(i).as_ref());
        for j in (0..16).filter(|&j| j != i) {
            assert_ne!(Some(&p.e2e_key), state.e2e_key(j).as_ref());
        }
        assert_ne!(&p.e2e_key, &r.key_in);
        if i < 15 {
            assert_eq!(r.next_hop, route[i + 1].node_id);
            assert_eq!(r.next_epoch_hint, 42);
            assert_eq!(p.outgoing, Some(state.bindings()[i + 1]));
        } else {
            assert!(p.outgoing.is_none());
        }

        // What the hop saw holds nothing of the other hops.
        let mut view = before[..h].to_vec();
        view.extend_from_slice(&bytes[..h]);
        for s in secrets_of_others(&route, i) {
            assert!(
                !common_substring(&view, &s, 8),
                "hop {i} sees another hop's field"
            );
        }
        if i < 15 {
            assert!(
                !common_substring(&before[..h], &bytes[..h], 8),
                "hop {i}: input and output headers share 8 bytes"
            );
        }

        let got = open_payload(&r.key_in, &p.incoming, &mut bytes[h..])
            .unwrap()
            .to_vec();
        assert_eq!(got, message, "hop {i} payload");
        if let Some(out) = p.outgoing {
            seal_payload(&r.key_out, &out, &message, &mut bytes[h..]).unwrap();
        }
    }
    for a in 0..payloads.len() {
        assert!(!common_substring(&payloads[a], &message, 8));
        for b in a + 1..payloads.len() {
            assert!(
                !common_substring(&payloads[a], &payloads[b], 8),
                "payloads {a},{b}"
            );
            assert!(
                !common_substring(&headers[a], &headers[b], 8),
                "headers {a},{b}"
            );
        }
    }
}

#[test]
fn sixteen_hops_layered_mode() {
    let (mut rng, g, h, mut nodes, mut route, links) = setup(17, 16, 3, Op::Relay);
    route[15].op = Op::Loop;
    let message = b"cover loop 1".to_vec();
    let (packet, _) = final_packet(&g, &route, PayloadMode::Layered, &message, &mut rng);
    let mut bytes = packet.into_bytes();
    let mut payloads = Vec::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        let before = bytes.clone();
        let p = node.process(&g, &mut bytes).unwrap();
        assert!(p.routing.is_layered());
        payloads.push(before[h..].to_vec());
        if i < 15 {
            assert_eq!(p.routing.op, Op::Relay);
            assert!(
                !common_substring(&before, &bytes, 8),
                "hop {i} output links to input"
            );
        } else {
            assert_eq!(p.routing.op, Op::Loop);
            let got = open_payload(&links[15], &p.incoming, &mut bytes[h..]).unwrap();
            assert_eq!(got, message);
        }
    }
    for a in 0..payloads.len() {
        for b in a + 1..payloads.len() {
            assert!(
                !common_substring(&payloads[a], &payloads[b], 8),
                "payloads {a},{b}"
            );
        }
    }
}

#[test]
fn every_packet_of_a_class_has_one_length() {
    let mut rng = rng(18);
    let g = Geometry::default();
    let mut nodes = nodes(16, 9, &mut rng);
    for &class in g.size_classes() {
        let want = g.packet_len(class).unwrap();
        for n in [1usize, 2, 5, 16] {
            for mode in [PayloadMode::Link, PayloadMode::Layered] {
                for exit in [Exit::Final, Exit::Endpoint(NodeId([7; 32]))] {
                    let (route, _) = route(&nodes[..n], Op::Forward, &mut rng);
                    let (packet, _) =
                        build_packet(&g, &route, exit, mode, class, b"m", &mut rng).unwrap();
                    assert_eq!(packet.len(), want);
                    if class == 2048 {
                        let mut bytes = packet.into_bytes();
                        for node in nodes.iter_mut().take(n) {
                            node.process(&g, &mut bytes).unwrap();
                            assert_eq!(bytes.len(), want);
                        }
                    }
                }
            }
        }
    }
    // Distinct classes give distinct lengths, so the length names only the class.
    let lens: std::collections::HashSet<_> = g
        .size_classes()
        .iter()
        .map(|&c| g.packet_len(c).unwrap())
        .collect();
    assert_eq!(lens.len(), g.size_classes().len());
}

#[test]
fn endpoint_exit_emits_a_header_the_endpoint_recognises() {
    let (mut rng, g, _, mut nodes, mut route, _) = setup(19, 3, 1, Op::Relay);
    route[2].op = Op::Deliver;
    let designer = NodeId([0xdd; 32]);
    let (packet, state) = build_packet(
        &g,
        &route,
        Exit::Endpoint(designer),
        PayloadMode::Layered,
        2048,
        b"to the end",
        &mut rng,
    )
    .unwrap();
    let mut bytes = packet.into_bytes();
    for (i, node) in nodes.iter_mut().enumerate() {
        let p = node.process(&g, &mut bytes).unwrap();
        assert!(p.outgoing.is_some());
        if i == 2 {
            assert_eq!(p.routing.op, Op::Deliver);
            assert_eq!(p.routing.next_hop, designer);
        }
    }
    assert_eq!(reply_id(&g, &bytes).unwrap(), state.exit_id().unwrap());
}

#[test]
fn larger_geometry_and_max_route() {
    let mut rng = rng(20);
    let g = Geometry::new(24, 200, &[4096]).unwrap();
    let h = g.header_len();
    let mut nodes = nodes(24, 77, &mut rng);
    let (route, _) = route(&nodes, Op::Backward, &mut rng);
    let (packet, _) = build_packet(
        &g,
        &route,
        Exit::Final,
        PayloadMode::Link,
        4096,
        b"deep",
        &mut rng,
    )
    .unwrap();
    let mut bytes = packet.into_bytes();
    for (i, node) in nodes.iter_mut().enumerate() {
        let p = node.process(&g, &mut bytes).unwrap();
        assert_eq!(p.routing.job, route[i].job);
        let m = open_payload(&p.routing.key_in, &p.incoming, &mut bytes[h..])
            .unwrap()
            .to_vec();
        assert_eq!(m, b"deep");
        if let Some(out) = p.outgoing {
            seal_payload(&p.routing.key_out, &out, &m, &mut bytes[h..]).unwrap();
        }
    }
    let too_long: Vec<_> = route
        .iter()
        .cloned()
        .chain(route.iter().take(1).cloned())
        .collect();
    assert!(matches!(
        build_packet(
            &g,
            &too_long,
            Exit::Final,
            PayloadMode::Link,
            4096,
            b"",
            &mut rng
        ),
        Err(SphinxError::InvalidRoute(_))
    ));
}
