//! The job protocol carries the shared training configuration and tensors:
//! their names on the wire, and the tensor conversions' round trips.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_protocol::job::{
    LayerKind, LayerSpec, ParamTensor, TensorData, ToHop, WireTensor, decode_msg, encode_msg,
};
use mixnn_types::{LossKind, NamedTensor, OptimizerKind, Tensor, TensorError, TrainConfig};

#[test]
fn a_spec_round_trips_with_its_names_as_strings() {
    let spec = LayerSpec {
        kind: LayerKind::Standard,
        train: TrainConfig {
            optimizer: OptimizerKind::Adam,
            loss: LossKind::SoftmaxCrossEntropy,
            seed: 7,
            ..TrainConfig::default()
        },
        shard_len: 1234,
        witness: None,
    };
    let msg = ToHop::Init {
        index: 0,
        total: 1,
        spec: Some(spec.clone()),
        bytes: vec![1, 2, 3],
    };
    let bytes = encode_msg("init", &msg).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("adam") && text.contains("softmax-ce"),
        "{text}"
    );
    let back: ToHop = decode_msg("init", &bytes).unwrap();
    assert_eq!(back, msg);
    for (o, l) in [
        (OptimizerKind::Sgd, LossKind::None),
        (OptimizerKind::Sgd, LossKind::Nll),
    ] {
        let s = LayerSpec {
            train: TrainConfig {
                optimizer: o,
                loss: l,
                ..TrainConfig::default()
            },
            ..spec.clone()
        };
        let text = encode_msg("spec", &s).unwrap();
        let want = if l == LossKind::Nll { "nll" } else { "none" };
        assert!(String::from_utf8_lossy(&text).contains(want));
        assert!(String::from_utf8_lossy(&text).contains("sgd"));
        assert_eq!(decode_msg::<LayerSpec>("spec", &text).unwrap(), s);
    }
}

#[test]
fn tensors_convert_both_ways_and_stay_compact() {
    let image = Tensor::new(vec![1, 2], vec![0.0, 1.0]).unwrap();
    let wire = WireTensor::try_from(image.clone()).unwrap();
    assert_eq!(wire.data, TensorData::Unit8(vec![0, 255]));
    assert_eq!(Tensor::try_from(wire).unwrap(), image);
    let act = Tensor::new(vec![2], vec![0.5, -3.25]).unwrap();
    let wire = WireTensor::try_from(act.clone()).unwrap();
    assert_eq!(wire.shape, vec![2]);
    assert_eq!(Tensor::try_from(wire).unwrap(), act);
    let bad = WireTensor {
        shape: vec![3],
        data: TensorData::F32(vec![1.0]),
    };
    assert!(matches!(
        Tensor::try_from(bad),
        Err(TensorError::Length {
            want: 3,
            got: 1,
            ..
        })
    ));
}

#[test]
fn parameters_convert_both_ways() {
    let p = NamedTensor {
        name: "w".into(),
        tensor: Tensor::new(vec![2, 1], vec![1.5, 2.5]).unwrap(),
    };
    let wire = ParamTensor::try_from(p.clone()).unwrap();
    assert_eq!(wire.shape, vec![2, 1]);
    assert_eq!(NamedTensor::try_from(wire).unwrap(), p);
    let bad = ParamTensor {
        name: "w".into(),
        shape: vec![4],
        data: vec![0.0],
    };
    assert!(NamedTensor::try_from(bad).is_err());
}

#[test]
fn state_messages_round_trip_and_their_bounds_hold() {
    use mixnn_protocol::job::{
        FromHop, MAX_STATE_BYTES, STATE_PART_BYTES, max_state_bytes, max_state_chunks,
        state_part_len,
    };
    for msg in [
        ToHop::SaveState { part: 3 },
        ToHop::LoadState {
            index: 1,
            total: 2,
            bytes: vec![9; 100],
        },
    ] {
        let bytes = encode_msg("state", &msg).unwrap();
        assert_eq!(decode_msg::<ToHop>("state", &bytes).unwrap(), msg);
    }
    for msg in [
        FromHop::StatePart {
            part: 0,
            total: 1,
            bytes: vec![1, 2],
        },
        FromHop::StateLoaded,
    ] {
        let bytes = encode_msg("state", &msg).unwrap();
        assert_eq!(decode_msg::<FromHop>("state", &bytes).unwrap(), msg);
    }
    // Params, two moment sets and the overhead; never past the hard cap.
    assert_eq!(max_state_bytes(1000), 12_000 + (1 << 20));
    assert_eq!(max_state_bytes(u64::MAX), MAX_STATE_BYTES);
    assert!(max_state_chunks(u64::MAX) > 1 << 20);
    // A full part, framed and sealed, fits the section it is cut for.
    for section in [2022usize, 30_000, 65_510, 1 << 20] {
        let n = state_part_len(section);
        assert!(n <= STATE_PART_BYTES);
        let reply = FromHop::StatePart {
            part: u32::MAX,
            total: u32::MAX,
            bytes: vec![0xff; n],
        };
        let body = encode_msg("state", &reply).unwrap();
        assert!(
            body.len() + mixnn_protocol::job::E2E_OVERHEAD <= section,
            "{section}"
        );
    }
}
