//! Witnesses (PROTOCOL.md §12.9): a verified job's hop writes the tags of
//! the tensor it took and the one it sent into its slot of the witness
//! area, under its layer, and nowhere else; a lying node witnesses what
//! it sent, so only a replica shows its lie.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mixnn_protocol::job::witness::{self, TAG_LEN, WITNESS_AREA, WITNESS_SLOT_LEN};
use mixnn_protocol::job::{self, FromHop, JobPayload, LayerKind, WireTensor, Witness};
use mixnn_sphinx::Op;

use super::kit::{Slot, World, spec, tensor};

const JOB: [u8; 32] = [9; 32];
const SEALED: usize = 64;

fn witness() -> Witness {
    Witness {
        key: vec![5; 32],
        forward: 3,
        backward: 11,
    }
}

/// A relu dummy with a witness; the hop's forward of `x` in a section of
/// 64 random-looking bytes and a witness area. Returns what the slots of
/// the area hold once the hop's layer is taken off, and the output.
fn forward(w: &mut World, x: WireTensor) -> (Vec<u8>, WireTensor) {
    let mut section = vec![0x5Au8; SEALED + WITNESS_AREA];
    section[..SEALED].fill(0x33);
    let before = section.clone();
    let payload = JobPayload {
        tensor: Some(x),
        e2e: section,
    };
    let (packet, sent) = w.packet_with_section(
        Slot::new(Op::Forward, JOB),
        None,
        None,
        Some(payload.encode()),
    );
    let out = w.open(&sent, w.forwarded(w.handle(packet)));
    let mut area = out.e2e.clone();
    let key = sent.state.e2e_key(0).expect("e2e key");
    job::e2e_layer(key.as_bytes(), &mut area);
    assert_eq!(
        area[..SEALED],
        before[..SEALED],
        "the sealed part only got a layer"
    );
    let slots: Vec<u8> = area[SEALED..]
        .iter()
        .zip(&before[SEALED..])
        .map(|(a, b)| a ^ b)
        .collect();
    (slots, out.tensor.expect("an output"))
}

fn dummy(w: &mut World) {
    let mut s = spec(
        LayerKind::Relay("relu".into()),
        mixnn_types::LossKind::None,
        0,
    );
    s.witness = Some(witness());
    assert_eq!(w.init(JOB, s, Vec::new()), FromHop::Ready { params: 0 });
}

#[test]
fn a_verified_hop_witnesses_its_input_and_output_in_its_slot_only() {
    let mut w = World::new();
    dummy(&mut w);
    let x = tensor(&[1, 3], vec![-1.0, 2.0, -0.5]);
    let (slots, y) = forward(&mut w, x.clone());
    assert_eq!(y.clone().into_f32(), vec![0.0, 2.0, 0.0]);
    let wit = witness();
    let at = 3 * WITNESS_SLOT_LEN;
    assert_eq!(slots[at..at + TAG_LEN], wit.tag(Some(&x)));
    assert_eq!(
        slots[at + TAG_LEN..at + WITNESS_SLOT_LEN],
        wit.tag(Some(&y))
    );
    let elsewhere = slots
        .iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 32).contains(i));
    assert!(
        elsewhere.into_iter().all(|(_, &b)| b == 0),
        "only its slot changed"
    );
    assert_eq!(witness::WITNESS_SLOTS * WITNESS_SLOT_LEN, slots.len());
}

#[test]
fn a_lying_hop_witnesses_the_lie_it_sends() {
    let mut w = World::new();
    let switch = Arc::new(AtomicBool::new(false));
    w.jobs = std::mem::replace(
        &mut w.jobs,
        crate::jobs::Jobs::new(
            super::kit::sandbox(),
            crate::jobs::JobLimits {
                max_jobs: 1,
                max_shard_bytes: 1,
                idle: std::time::Duration::from_secs(1),
            },
            Arc::new(crate::metrics::Metrics::new("unused".into())),
        ),
    )
    .with_lie_switch(switch.clone());
    dummy(&mut w);
    let x = tensor(&[1, 3], vec![-1.0, 2.0, -0.5]);
    let (honest, y) = forward(&mut w, x.clone());
    switch.store(true, Ordering::Relaxed);
    let (lying, z) = forward(&mut w, x.clone());
    assert_ne!(
        y.clone().into_f32(),
        z.clone().into_f32(),
        "the output is corrupted"
    );
    let at = 3 * WITNESS_SLOT_LEN;
    assert_eq!(
        honest[at..at + TAG_LEN],
        lying[at..at + TAG_LEN],
        "same input"
    );
    assert_eq!(lying[at + TAG_LEN..at + 32], witness().tag(Some(&z)));
    assert_ne!(honest[at + TAG_LEN..at + 32], lying[at + TAG_LEN..at + 32]);
}

#[test]
fn a_malformed_witness_is_refused_at_init() {
    let mut w = World::new();
    let mut s = spec(
        LayerKind::Relay("relu".into()),
        mixnn_types::LossKind::None,
        0,
    );
    s.witness = Some(Witness {
        key: vec![1; 31],
        forward: 0,
        backward: 1,
    });
    match w.init(JOB, s, Vec::new()) {
        FromHop::Error(e) => assert!(e.message.contains("witness"), "{e:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
