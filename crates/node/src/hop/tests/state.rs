//! A layer's whole training state over the job protocol: `SaveState`
//! parts cut to the section they came in, `LoadState` chunks in order,
//! bounded, imported on the last; a refused state leaves the layer as it
//! was (issue 11).

use mixnn_protocol::job::{FailureKind, FromHop, LayerKind, ToHop};
use mixnn_sphinx::Op;

use super::kit::{CLASS, Slot, World, last_mlp_shard, spec, tensor};
use crate::jobs::JobError;

const JOB: [u8; 32] = [11; 32];

/// The control section of the tests' class, as the designer sizes it.
fn control_section(w: &World) -> usize {
    w.geometry.capacity(CLASS).expect("class") - 6
}

/// Sends `msg` to the job in a control packet (section of the class's
/// control length) and returns the hop's answer.
fn control(w: &mut World, msg: ToHop) -> FromHop {
    w.section_len = Some(control_section(w));
    let (packet, sent) = w.packet(Slot::target(Op::Init, JOB), None, Some(msg));
    let out = w.open(&sent, w.forwarded(w.handle(packet)));
    w.section_len = None;
    w.reply(&sent, &out)
}

/// The layer's whole state, part by part.
fn save(w: &mut World) -> Vec<u8> {
    let mut state = Vec::new();
    let mut part = 0;
    loop {
        let FromHop::StatePart {
            part: p,
            total,
            bytes,
        } = control(w, ToHop::SaveState { part })
        else {
            panic!("no state part")
        };
        assert_eq!(p, part);
        state.extend_from_slice(&bytes);
        part += 1;
        if part == total {
            return state;
        }
    }
}

/// Loads `state` in chunks of 1 KiB; returns the answers.
fn load(w: &mut World, state: &[u8]) -> Vec<FromHop> {
    let chunks: Vec<&[u8]> = state.chunks(1024).collect();
    let total = chunks.len() as u32;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            control(
                w,
                ToHop::LoadState {
                    index: i as u32,
                    total,
                    bytes: c.to_vec(),
                },
            )
        })
        .collect()
}

/// One turn of the last MLP layer on a fixed batch; returns the loss bits.
fn turn(w: &mut World) -> u32 {
    let x = tensor(&[2, 64], (0..128).map(|i| (i % 5) as f32 / 5.0).collect());
    let (packet, sent) = w.packet(Slot::turn(JOB), Some(x), Some(ToHop::Labels(vec![1, 4])));
    let out = w.open(&sent, w.forwarded(w.handle(packet)));
    match w.reply(&sent, &out) {
        FromHop::Loss { bits } => bits,
        other => panic!("no loss: {other:?}"),
    }
}

fn standard_job(w: &mut World) {
    let shard = last_mlp_shard();
    let spec = spec(LayerKind::Standard, mixnn_types::LossKind::Nll, shard.len());
    assert_eq!(w.init(JOB, spec, shard), FromHop::Ready { params: 650 });
}

#[test]
fn a_state_saved_in_parts_loads_back_and_training_repeats_bit_for_bit() {
    let mut w = World::new();
    standard_job(&mut w);
    turn(&mut w);
    let saved = save(&mut w);
    // 650 values and their momentum buffer: parts cut to a 2 KiB class.
    assert!(saved.len() > 650 * 8, "{} bytes", saved.len());
    let first = turn(&mut w);
    let second = turn(&mut w);

    let answers = load(&mut w, &saved);
    let (last, rest) = answers.split_last().expect("chunks");
    assert_eq!(last, &FromHop::StateLoaded);
    for (i, a) in rest.iter().enumerate() {
        assert_eq!(a, &FromHop::Received { index: i as u32 });
    }
    assert_eq!(save(&mut w), saved, "the hop holds the loaded state");
    assert_eq!((turn(&mut w), turn(&mut w)), (first, second));
}

#[test]
fn a_garbled_state_is_refused_and_the_layer_keeps_its_own() {
    let mut w = World::new();
    standard_job(&mut w);
    turn(&mut w);
    let mut state = save(&mut w);
    let own = state.clone();
    let mid = state.len() / 2;
    state[mid] ^= 1;
    let answers = load(&mut w, &state);
    let Some(FromHop::Error(e)) = answers.last() else {
        panic!("expected an error, got {answers:?}")
    };
    assert_eq!(e.kind, FailureKind::Guest);
    assert!(e.message.contains("checksum"), "{e}");
    assert_eq!(save(&mut w), own, "the layer's own state is intact");
    turn(&mut w);
}

#[test]
fn chunks_out_of_order_duplicated_or_miscounted_are_refused() {
    let mut w = World::new();
    w.relay_job(JOB, "identity");
    let chunk = |index, total| ToHop::LoadState {
        index,
        total,
        bytes: Vec::new(),
    };
    let refused = |a: FromHop, what: &str| match a {
        FromHop::Error(e) => {
            assert_eq!(e.kind, FailureKind::BadRequest, "{what}: {e}");
            assert!(e.message.contains("state chunk"), "{what}: {e}");
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    };
    refused(control(&mut w, chunk(1, 3)), "no load under way");
    assert_eq!(control(&mut w, chunk(0, 3)), FromHop::Received { index: 0 });
    refused(control(&mut w, chunk(2, 3)), "a gap");
    // The refusal dropped the load: chunk 1 has nothing to follow.
    refused(control(&mut w, chunk(1, 3)), "after a refusal");
    assert_eq!(control(&mut w, chunk(0, 3)), FromHop::Received { index: 0 });
    assert_eq!(control(&mut w, chunk(1, 3)), FromHop::Received { index: 1 });
    refused(control(&mut w, chunk(1, 3)), "a duplicate");
    assert_eq!(control(&mut w, chunk(0, 3)), FromHop::Received { index: 0 });
    refused(control(&mut w, chunk(1, 4)), "another count");
    refused(control(&mut w, chunk(0, 0)), "no chunks");
    refused(control(&mut w, chunk(0, u32::MAX)), "too many chunks");
    refused(control(&mut w, chunk(3, 3)), "index past the count");
    // The relay guest is stateless: an empty state is all it takes.
    assert_eq!(control(&mut w, chunk(0, 1)), FromHop::StateLoaded);
    assert_eq!(
        control(&mut w, ToHop::SaveState { part: 0 }),
        FromHop::StatePart {
            part: 0,
            total: 1,
            bytes: Vec::new()
        }
    );
    let not_empty = ToHop::LoadState {
        index: 0,
        total: 1,
        bytes: vec![1],
    };
    let FromHop::Error(e) = control(&mut w, not_empty) else {
        panic!("a relay took a state")
    };
    assert_eq!(e.kind, FailureKind::Guest);
    let FromHop::Error(e) = control(&mut w, ToHop::SaveState { part: 1 }) else {
        panic!("a part past the end")
    };
    assert_eq!(e.kind, FailureKind::BadRequest);
}

#[test]
fn a_state_past_the_layers_bound_is_refused_before_it_is_stored() {
    let mut w = World::new();
    w.relay_job(JOB, "identity");
    // No parameters: the bound is the state overhead alone (1 MiB).
    let cap = mixnn_protocol::job::max_state_bytes(0);
    let big = |index| ToHop::LoadState {
        index,
        total: 2,
        bytes: vec![0; cap as usize / 2 + 1],
    };
    let len = usize::MAX;
    assert_eq!(
        w.jobs.control(&JOB, big(0), len).expect("first half"),
        FromHop::Received { index: 0 }
    );
    let err = w
        .jobs
        .control(&JOB, big(1), len)
        .expect_err("past the bound");
    assert!(
        matches!(err, JobError::StateTooLarge(c) if c == cap),
        "{err}"
    );
    assert_eq!(err.kind(), FailureKind::Capacity);
}

#[test]
fn state_messages_before_init_are_refused() {
    let w = World::new();
    let err = w
        .jobs
        .control(&JOB, ToHop::SaveState { part: 0 }, 2048)
        .expect_err("no job");
    assert!(matches!(err, JobError::UnknownJob));
}
