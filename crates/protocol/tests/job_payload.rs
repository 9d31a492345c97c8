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
