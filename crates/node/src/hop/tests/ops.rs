//! Every op and every end-to-end message, and the job failures they report.

use mixnn_protocol::job::{FailureKind, FromHop, LayerKind, ToHop, app_flags};
use mixnn_sphinx::Op;

use super::kit::{Slot, World, failure, last_mlp_shard, spec, tensor};
use crate::cover::Kind;
use crate::hop::{Action, Stage};
use crate::jobs::JobError;

const JOB: [u8; 32] = [7; 32];

fn values(t: Option<mixnn_protocol::job::WireTensor>) -> (Vec<u32>, Vec<f32>) {
    let t = t.expect("a tensor");
    (t.shape.clone(), t.into_f32())
}

#[test]
fn init_chunks_build_the_layer_and_answer_received_then_ready() {
    let mut w = World::new();
    let shard = last_mlp_shard();
    let half = shard.len() / 2;
    let chunks = [shard[..half].to_vec(), shard[half..].to_vec()];
    let mut answers = Vec::new();
    for (i, bytes) in chunks.into_iter().enumerate() {
        let msg = ToHop::Init {
            index: i as u32,
            total: 2,
            spec: (i == 0)
                .then(|| spec(LayerKind::Standard, mixnn_types::LossKind::Nll, shard.len())),
            bytes,
        };
        let (packet, sent) = w.packet(Slot::target(Op::Init, JOB), None, Some(msg));
        let outcome = w.handle(packet);
        let seen = outcome.seen.as_ref().expect("seen");
        assert_eq!(seen.e2e_read, Some("init"));
        assert_eq!(seen.job_class, Some(super::kit::CLASS));
        assert!(seen.failure.is_none());
        let out = w.forwarded(outcome);
        answers.push(w.reply(&sent, &w.open(&sent, out)));
    }
    assert_eq!(answers[0], FromHop::Received { index: 0 });
    assert_eq!(answers[1], FromHop::Ready { params: 650 });
}

#[test]
fn forward_runs_the_layer_on_the_tensor() {
    let mut w = World::new();
    w.relay_job(JOB, "relu");
    let x = tensor(&[1, 3], vec![-1.0, 2.0, -0.5]);
    let (packet, sent) = w.packet(Slot::new(Op::Forward, JOB), Some(x), None);
    let outcome = w.handle(packet);
    let seen = outcome.seen.as_ref().expect("seen");
    assert_eq!((seen.op, seen.decoded), (Op::Forward, true));
    assert_eq!(seen.input_shape, Some(vec![1, 3]));
    let out = w.open(&sent, w.forwarded(outcome));
    assert_eq!(values(out.tensor), (vec![1, 3], vec![0.0, 2.0, 0.0]));
}

#[test]
fn test_op_infers() {
    let mut w = World::new();
    w.relay_job(JOB, "relu");
    let x = tensor(&[2], vec![-3.0, 4.0]);
    let (packet, sent) = w.packet(Slot::new(Op::Test, JOB), Some(x), None);
    let out = w.open(&sent, w.forwarded(w.handle(packet)));
    assert_eq!(values(out.tensor), (vec![2], vec![0.0, 4.0]));
}

#[test]
fn backward_returns_the_input_gradient() {
    let mut w = World::new();
    w.relay_job(JOB, "relu");
    let x = tensor(&[2], vec![-3.0, 4.0]);
    let (packet, _) = w.packet(Slot::new(Op::Forward, JOB), Some(x), None);
    w.forwarded(w.handle(packet));
    let dz = tensor(&[2], vec![0.25, 0.5]);
    let (packet, sent) = w.packet(Slot::new(Op::Backward, JOB), Some(dz), None);
    let out = w.open(&sent, w.forwarded(w.handle(packet)));
    // ReLU's mask: no gradient where the input was negative.
    assert_eq!(values(out.tensor), (vec![2], vec![0.0, 0.5]));
}

#[test]
fn the_turn_computes_the_loss_and_the_gradient() {
    let mut w = World::new();
    let shard = last_mlp_shard();
    let ready = w.init(
        JOB,
        spec(LayerKind::Standard, mixnn_types::LossKind::Nll, shard.len()),
        shard,
    );
    assert_eq!(ready, FromHop::Ready { params: 650 });
    let x = tensor(&[2, 64], (0..128).map(|i| (i % 7) as f32 / 7.0).collect());
    let labels = ToHop::Labels(vec![3, 8]);
    let (packet, sent) = w.packet(Slot::turn(JOB), Some(x), Some(labels));
    let outcome = w.handle(packet);
    assert_eq!(
        outcome.seen.as_ref().and_then(|s| s.e2e_read),
        Some("labels")
    );
    let out = w.open(&sent, w.forwarded(outcome));
    let FromHop::Loss { bits } = w.reply(&sent, &out) else {
        panic!("no loss")
    };
    let loss = f32::from_bits(bits);
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    assert_eq!(values(out.tensor).0, vec![2, 64]);
}

#[test]
fn labels_alone_on_an_init_slot_are_refused() {
    let mut w = World::new();
    w.relay_job(JOB, "identity");
    let msg = ToHop::Labels(vec![1]);
    let (packet, sent) = w.packet(Slot::target(Op::Init, JOB), None, Some(msg));
    let outcome = w.handle(packet);
    let failure = failure(&outcome);
    assert_eq!(failure.stage, Stage::Control);
    assert!(matches!(failure.error, JobError::LabelsAlone));
    let out = w.open(&sent, w.forwarded(outcome));
    let e = w.error(&sent, &out);
    assert_eq!(e.kind, FailureKind::BadRequest);
}

#[test]
fn export_answers_the_parameters_in_parts() {
    let mut w = World::new();
    w.relay_job(JOB, "identity");
    let msg = ToHop::Export { part: 0 };
    let (packet, sent) = w.packet(Slot::target(Op::Init, JOB), None, Some(msg));
    let outcome = w.handle(packet);
    assert_eq!(
        outcome.seen.as_ref().and_then(|s| s.e2e_read),
        Some("export")
    );
    let out = w.open(&sent, w.forwarded(outcome));
    let FromHop::ExportPart { part, total, bytes } = w.reply(&sent, &out) else {
        panic!("no export part")
    };
    assert_eq!((part, total), (0, 1));
    let list: Vec<mixnn_protocol::job::ParamTensor> =
        mixnn_protocol::cbor::decode("parameters", &bytes, 1 << 20).expect("cbor");
    assert!(list.is_empty(), "a dummy hop has no parameters");
}

#[test]
fn close_forgets_the_job() {
    let mut w = World::new();
    w.relay_job(JOB, "identity");
    let (packet, sent) = w.packet(Slot::target(Op::Init, JOB), None, Some(ToHop::Close));
    let out = w.open(&sent, w.forwarded(w.handle(packet)));
    assert_eq!(w.reply(&sent, &out), FromHop::Closed);
    let x = tensor(&[1], vec![1.0]);
    let (packet, _) = w.packet(Slot::new(Op::Forward, JOB), Some(x), None);
    let outcome = w.handle(packet);
    let failure = outcome.seen.and_then(|s| s.failure).expect("failure");
    assert!(matches!(failure.error, JobError::UnknownJob));
}

#[test]
fn relay_passes_the_tensor_and_layers_the_section() {
    let mut w = World::new();
    let x = tensor(&[2], vec![1.5, -2.0]);
    let body = b"for a later hop".to_vec();
    let (packet, sent) = w.packet_with_section(
        Slot::new(Op::Relay, JOB),
        Some(x.clone()),
        Some(body.clone()),
        None,
    );
    let out = w.open(&sent, w.forwarded(w.handle(packet)));
    assert_eq!(out.tensor, Some(x));
    // The section now carries this hop's layer; removing it gives back
    // what the designer sealed.
    assert_eq!(w.under_layer(&sent, &out), body);
}

#[test]
fn deliver_hands_the_packet_to_the_endpoint() {
    let mut w = World::new();
    let (packet, _) = w.packet(Slot::new(Op::Deliver, JOB), None, None);
    match w.handle(packet).action {
        Action::Deliver { next, .. } => assert_eq!(next, w.next),
        other => panic!("expected a delivery, got {other:?}"),
    }
}

#[test]
fn a_cover_relay_is_forwarded_and_a_cover_drop_ends_here() {
    let mut w = World::new();
    let (packet, _) = w.cover_packet(Kind::Drop, true);
    w.forwarded(w.handle(packet));
    let (packet, _) = w.cover_packet(Kind::Drop, false);
    match w.handle(packet).action {
        Action::Drop(reason) => assert_eq!(reason.label(), None, "not counted"),
        other => panic!("expected a drop, got {other:?}"),
    }
}

#[test]
fn a_returning_loop_is_recognised_by_its_tag() {
    let mut w = World::new();
    let tracker = crate::cover::LoopTracker::default();
    let (packet, sent_tag) = w.cover_packet(Kind::Loop, false);
    tracker
        .register(&sent_tag, std::time::Instant::now())
        .expect("room");
    match w.handle(packet).action {
        Action::LoopReturned { tag } => {
            assert_eq!(tag, sent_tag);
            assert!(tracker.returned(&tag));
        }
        other => panic!("expected a loop, got {other:?}"),
    }
}

#[test]
fn a_guest_error_is_sealed_to_the_designer_and_the_tensor_dropped() {
    let mut w = World::new();
    w.relay_job(JOB, "identity");
    // A relay hop computes no loss: the turn fails in the guest.
    let x = tensor(&[1], vec![1.0]);
    let (packet, sent) = w.packet(Slot::turn(JOB), Some(x), Some(ToHop::Labels(vec![0])));
    let outcome = w.handle(packet);
    let failure = failure(&outcome);
    assert_eq!(failure.stage, Stage::Compute);
    assert!(
        matches!(failure.error, JobError::Guest(_)),
        "{:?}",
        failure.error
    );
    let out = w.open(&sent, w.forwarded(outcome));
    assert_eq!(out.tensor, None);
    let e = w.error(&sent, &out);
    assert_eq!(e.kind, FailureKind::Guest);
    assert!(e.message.contains("no loss"), "{e}");
}

#[test]
fn a_turn_without_labels_fails() {
    let mut w = World::new();
    w.relay_job(JOB, "identity");
    let x = tensor(&[1], vec![1.0]);
    let (packet, sent) = w.packet(Slot::turn(JOB), Some(x), Some(ToHop::Close));
    let out = w.open(&sent, w.forwarded(w.handle(packet)));
    let e = w.error(&sent, &out);
    assert_eq!(e.kind, FailureKind::BadRequest);
}

#[test]
fn an_unknown_job_is_reported_not_computed() {
    let mut w = World::new();
    let x = tensor(&[1], vec![1.0]);
    let (packet, sent) = w.packet(Slot::new(Op::Forward, [9; 32]), Some(x), None);
    let outcome = w.handle(packet);
    let failure = failure(&outcome);
    assert_eq!(failure.stage, Stage::Compute);
    assert!(matches!(failure.error, JobError::UnknownJob));
    let out = w.open(&sent, w.forwarded(outcome));
    assert_eq!(out.tensor, None);
    // Not the target: the error is sealed under this hop's from-hop key all
    // the same, so the designer finds which hop failed.
    let e = w.error(&sent, &out);
    assert_eq!(e.kind, FailureKind::UnknownJob);
}

#[test]
fn after_an_earlier_failure_the_hop_only_adds_its_layer() {
    let mut w = World::new();
    w.relay_job(JOB, "identity");
    let body = b"an earlier hop's error".to_vec();
    let (packet, sent) =
        w.packet_with_section(Slot::new(Op::Forward, JOB), None, Some(body.clone()), None);
    let outcome = w.handle(packet);
    assert!(outcome.seen.as_ref().is_some_and(|s| s.failure.is_none()));
    let out = w.open(&sent, w.forwarded(outcome));
    assert_eq!(out.tensor, None);
    assert_eq!(w.under_layer(&sent, &out), body);
}

#[test]
fn a_section_that_does_not_open_is_an_end_to_end_failure() {
    let mut w = World::new();
    let slot = Slot {
        flags: app_flags::E2E_TARGET,
        ..Slot::new(Op::Init, JOB)
    };
    let (packet, sent) = w.packet_with_section(slot, None, None, None);
    let outcome = w.handle(packet);
    let failure = failure(&outcome);
    assert_eq!(failure.stage, Stage::EndToEnd);
    let out = w.open(&sent, w.forwarded(outcome));
    let e = w.error(&sent, &out);
    assert_eq!(e.kind, FailureKind::EndToEnd);
}

/// Issue 10, finding 3: the hops after a target must not tell its reply
/// from a request by size, so the reply (an answer, or an error) takes the
/// length of the section it replaces, padding under the MAC.
#[test]
fn a_reply_keeps_the_length_of_the_section_it_replaces() {
    let mut w = World::new();
    w.section_len = Some(1500);
    w.relay_job(JOB, "identity");
    for msg in [ToHop::Export { part: 0 }, ToHop::Labels(vec![1])] {
        let (packet, sent) = w.packet(Slot::target(Op::Init, JOB), None, Some(msg));
        let out = w.open(&sent, w.forwarded(w.handle(packet)));
        assert_eq!(out.e2e.len(), 1500);
        let reply = w.reply(&sent, &out);
        assert!(
            matches!(reply, FromHop::ExportPart { .. } | FromHop::Error(_)),
            "{reply:?}"
        );
    }
    // A hop that only layers the section leaves its length alone too.
    let (packet, sent) = w.packet(Slot::new(Op::Relay, JOB), None, Some(ToHop::Close));
    assert_eq!(w.open(&sent, w.forwarded(w.handle(packet))).e2e.len(), 1500);
}

/// Issue 10, finding 4: a dummy's secret sign mask flips the masked
/// features (zeros too: -0.0), forward and backward alike.
#[test]
fn a_sign_dummy_flips_the_masked_features_both_ways() {
    let mut w = World::new();
    w.relay_job(JOB, "sign:0110");
    let x = tensor(&[1, 4], vec![1.0, -2.0, 0.0, 4.0]);
    let (packet, sent) = w.packet(Slot::new(Op::Forward, JOB), Some(x), None);
    let out = w.open(&sent, w.forwarded(w.handle(packet)));
    let (shape, v) = values(out.tensor);
    assert_eq!(shape, vec![1, 4]);
    let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
    let want: Vec<u32> = [1.0f32, 2.0, -0.0, 4.0]
        .iter()
        .map(|x| x.to_bits())
        .collect();
    assert_eq!(bits, want);
    let dz = tensor(&[1, 4], vec![0.5, 0.5, -0.5, -0.5]);
    let (packet, sent) = w.packet(Slot::new(Op::Backward, JOB), Some(dz), None);
    let out = w.open(&sent, w.forwarded(w.handle(packet)));
    assert_eq!(values(out.tensor).1, vec![0.5, -0.5, 0.5, -0.5]);
    // A mask that does not fit axis 1 is the guest's error, not a panic.
    let (packet, _) = w.packet(
        Slot::new(Op::Forward, JOB),
        Some(tensor(&[1, 3], vec![0.0; 3])),
        None,
    );
    assert!(failure(&w.handle(packet)).stage == Stage::Compute);
}
