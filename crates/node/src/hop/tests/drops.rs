//! Every way a packet is dropped, with the drop counter's label.

use mixnn_sphinx::{KeyRing, MixKeyPair, Op};
use rand::SeedableRng as _;

use super::kit::{EPOCH, Slot, World, tensor};
use crate::hop::{Action, DropReason, peer_of};

const JOB: [u8; 32] = [7; 32];

/// The reason `bytes` were dropped, checked to count under `label`.
fn dropped(w: &mut World, bytes: Vec<u8>, label: &str) -> DropReason {
    match w.handle(bytes).action {
        Action::Drop(reason) => {
            assert_eq!(reason.label(), Some(label), "{reason:?}");
            reason
        }
        other => panic!("expected a drop, got {other:?}"),
    }
}

fn relay_packet(w: &mut World) -> Vec<u8> {
    let x = tensor(&[1], vec![1.0]);
    w.packet(Slot::new(Op::Relay, JOB), Some(x), None).0
}

#[test]
fn a_replayed_packet_is_dropped() {
    let mut w = World::new();
    let packet = relay_packet(&mut w);
    w.forwarded(w.handle(packet.clone()));
    let reason = dropped(&mut w, packet, "replay");
    assert!(matches!(reason, DropReason::Replay));
}

#[test]
fn a_tampered_header_fails_its_mac() {
    let mut w = World::new();
    let mut packet = relay_packet(&mut w);
    packet[100] ^= 1; // inside the routing block
    let reason = dropped(&mut w, packet, "bad_mac");
    assert!(matches!(reason, DropReason::TamperedHeader), "{reason:?}");
}

#[test]
fn a_tampered_payload_fails_its_tag() {
    let mut w = World::new();
    let mut packet = relay_packet(&mut w);
    let h = w.geometry.header_len();
    packet[h + 10] ^= 1;
    let outcome = w.handle(packet);
    // The header opened: the hop saw a job packet, then refused its payload.
    assert!(outcome.seen.as_ref().is_some_and(|s| !s.decoded));
    let Action::Drop(reason) = outcome.action else {
        panic!("not dropped")
    };
    assert!(
        matches!(reason, DropReason::TamperedPayload(_)),
        "{reason:?}"
    );
    assert_eq!(reason.label(), Some("payload_auth"));
}

#[test]
fn an_undecodable_job_payload_is_dropped() {
    let mut w = World::new();
    let raw = vec![0xEE; 40]; // authenticates, but is no job payload
    let (packet, _) = w.packet_with_section(Slot::new(Op::Relay, JOB), None, None, Some(raw));
    let reason = dropped(&mut w, packet, "job_payload");
    assert!(
        matches!(reason, DropReason::MalformedJobPayload(_)),
        "{reason:?}"
    );
}

#[test]
fn a_packet_for_an_unknown_key_epoch_is_dropped() {
    let mut w = World::new();
    let packet = relay_packet(&mut w);
    // The node rotated: it holds only the next epoch's key.
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    w.ring = KeyRing::with_key(MixKeyPair::generate(EPOCH + 1, &mut rng));
    let reason = dropped(&mut w, packet, "unknown_epoch");
    assert!(matches!(reason, DropReason::UnknownEpoch), "{reason:?}");
}

#[test]
fn a_length_of_no_size_class_is_dropped() {
    let mut w = World::new();
    let mut packet = relay_packet(&mut w);
    packet.pop();
    let reason = dropped(&mut w, packet, "wrong_size");
    assert!(matches!(reason, DropReason::WrongSize { .. }), "{reason:?}");
}

#[test]
fn an_output_larger_than_the_class_is_dropped() {
    let mut w = World::new();
    let shard = super::kit::last_mlp_shard();
    let spec = super::kit::spec(
        mixnn_protocol::job::LayerKind::Standard,
        mixnn_types::LossKind::Nll,
        shard.len(),
    );
    let ready = w.init(JOB, spec, shard);
    assert_eq!(ready, mixnn_protocol::job::FromHop::Ready { params: 650 });
    // 650 parameters do not fit one export part in a 2 KiB packet.
    let msg = mixnn_protocol::job::ToHop::Export { part: 0 };
    let (packet, _) = w.packet(Slot::target(Op::Init, JOB), None, Some(msg));
    let reason = dropped(&mut w, packet, "output_too_large");
    assert!(
        matches!(reason, DropReason::OutputTooLarge(_)),
        "{reason:?}"
    );
}

#[test]
fn a_next_hop_that_names_no_peer_is_dropped() {
    let mut w = World::new();
    w.next = (0..=255u8)
        .map(|b| mixnn_sphinx::NodeId([b; 32]))
        .find(|id| peer_of(id).is_none())
        .expect("some bytes are no ed25519 key");
    let packet = relay_packet(&mut w);
    let reason = dropped(&mut w, packet, "bad_next_hop");
    assert!(matches!(reason, DropReason::BadNextHop), "{reason:?}");
}
