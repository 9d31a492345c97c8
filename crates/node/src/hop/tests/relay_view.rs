//! SPEC §7: cover traffic is indistinguishable from real traffic to the hop
//! that relays it. The hop's instrumented view (`Seen` and the action) of a
//! cover packet it relays and of a real job packet it relays (a control
//! message for another hop of the cascade) are compared field by field.

use mixnn_protocol::job::ToHop;
use mixnn_sphinx::Op;

use super::kit::{Slot, World};
use crate::cover::Kind;
use crate::hop::{Action, Outcome, Seen};

/// The hop's view of a packet: op, flags, handle all zero, class, decoded,
/// tensor in the clear, end-to-end read, failure.
type Shape = (Op, u16, bool, Option<usize>, bool, bool, bool, bool);

/// Everything of the hop's view but the handle's value (drawn afresh per
/// packet in both cases), with the handle's look instead.
fn shape(seen: &Seen) -> Shape {
    (
        seen.op,
        seen.flags,
        seen.job == [0; 32],
        seen.job_class,
        seen.decoded,
        seen.input_shape.is_some(),
        seen.e2e_read.is_some(),
        seen.failure.is_some(),
    )
}

fn view(w: &World, outcome: Outcome) -> (Shape, usize) {
    let seen = outcome.seen.as_ref().expect("the header opened");
    let s = shape(seen);
    let len = match &outcome.action {
        Action::Forward { bytes, .. } => bytes.len(),
        other => panic!("expected a forward, got {other:?}"),
    };
    assert_eq!(w.forwarded(outcome).len(), len);
    (s, len)
}

#[test]
fn a_relayed_cover_packet_looks_like_a_relayed_job_packet() {
    let mut w = World::new();
    let handle = w.fresh_handle();
    let (real, _) = w.packet(Slot::new(Op::Relay, handle), None, Some(ToHop::Close));
    let real = view(&w, w.handle(real));
    for kind in [Kind::Loop, Kind::Drop] {
        let (cover, _) = w.cover_packet(kind, true);
        let cover = view(&w, w.handle(cover));
        assert_eq!(cover, real, "{kind:?}: cover and real relay views differ");
    }
    // And neither handle names a job of this node.
    assert!(!real.0.2, "the handle looks random");
}
