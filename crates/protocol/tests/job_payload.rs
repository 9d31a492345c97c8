//! The job payload's byte layout: f32 tensors travel as little-endian
//! bytes, exactly, whatever the values (NaN payloads, signed zeros,
//! subnormals), and a payload decodes to what was encoded.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_protocol::job::{JobPayload, TensorData, WireTensor};

#[test]
fn f32_tensors_travel_as_exact_little_endian_bytes() {
    let special = [
        0.0f32,
        -0.0,
        f32::MIN_POSITIVE / 3.0,
        f32::from_bits(0x7fc0_1234),
        f32::INFINITY,
        -1.5,
    ];
    let mut data: Vec<f32> = (0..16_384).map(|i| (i as f32).sin() * 1e3).collect();
    data[..special.len()].copy_from_slice(&special);
    let payload = JobPayload {
        tensor: Some(WireTensor {
            shape: vec![64, 256],
            data: TensorData::F32(data.clone()),
        }),
        e2e: vec![7; 33],
    };
    let bytes = payload.encode();
    assert_eq!(bytes.len(), payload.encoded_len());
    // version, has_tensor, dtype, ndim, 2 dims, then the elements.
    let body = &bytes[4 + 8..4 + 8 + 4 * data.len()];
    for (c, x) in body.chunks_exact(4).zip(&data) {
        assert_eq!(c, x.to_le_bytes(), "{x}");
    }
    assert_eq!(
        &bytes[bytes.len() - 37..bytes.len() - 33],
        33u32.to_le_bytes()
    );
    let back = JobPayload::decode(&bytes).expect("decodes");
    let Some(TensorData::F32(got)) = back.tensor.map(|t| t.data) else {
        panic!("an f32 tensor");
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&data), "bit for bit");
    assert_eq!(back.e2e, vec![7; 33]);
    // A truncated tensor is refused, not read short.
    assert!(JobPayload::decode(&bytes[..bytes.len() / 2]).is_err());
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A compacted tensor reads back bit for bit, whichever encoding it took.
fn round_trip(values: Vec<f32>) -> TensorData {
    let wire = WireTensor::compact(vec![values.len() as u32], values.clone());
    let data = wire.data.clone();
    assert_eq!(bits(&wire.into_f32()), bits(&values));
    data
}

#[test]
fn every_byte_over_255_compacts_to_that_byte() {
    let values: Vec<f32> = (0..=255u8).map(|k| f32::from(k) / 255.0).collect();
    assert_eq!(round_trip(values), TensorData::Unit8((0..=255).collect()));
}

#[test]
fn values_that_are_not_a_byte_over_255_stay_f32() {
    let one_ulp_up = f32::from_bits((100.0f32 / 255.0).to_bits() + 1);
    let off = [
        -0.0,
        f32::NAN,
        -1.0 / 255.0,
        1.0 + f32::EPSILON,
        0.5,
        one_ulp_up,
        2.0,
    ];
    for v in off {
        let data = round_trip(vec![0.0, 1.0, v]);
        assert!(matches!(data, TensorData::F32(_)), "{v:e} was compacted");
    }
    // One bad value past the first block, at the very end, still counts.
    let mut long: Vec<f32> = (0..1000)
        .map(|i| f32::from((i % 256) as u8) / 255.0)
        .collect();
    assert!(matches!(round_trip(long.clone()), TensorData::Unit8(_)));
    long.push(0.25);
    assert!(matches!(round_trip(long), TensorData::F32(_)));
}

proptest::proptest! {
    #[test]
    fn any_values_compact_and_read_back_bit_for_bit(raw in proptest::collection::vec(proptest::num::u32::ANY, 0..600)) {
        round_trip(raw.into_iter().map(f32::from_bits).collect());
    }

    #[test]
    fn bytes_mixed_with_one_other_value_read_back(bytes in proptest::collection::vec(proptest::num::u8::ANY, 1..600), other in proptest::num::u32::ANY, at in 0usize..600) {
        let mut values: Vec<f32> = bytes.iter().map(|&k| f32::from(k) / 255.0).collect();
        let at = at % values.len();
        values[at] = f32::from_bits(other);
        round_trip(values);
    }
}
