//! Seeded randomness for parameter init and dropout masks. ChaCha8 is
//! specified bit for bit, so the native and the wasm layer draw the same
//! numbers from the same seed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(crate) fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// PyTorch's default for layers: U(−1/√fan_in, 1/√fan_in), fan_in being the
/// product of all but the first dimension (or the length of a 1-D tensor).
pub(crate) fn kaiming_uniform(shape: &[usize], r: &mut ChaCha8Rng) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let fan_in: usize = if shape.len() > 1 {
        shape[1..].iter().product()
    } else {
        n
    };
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    (0..n).map(|_| r.gen_range(-bound..bound)).collect()
}

/// A 0/1 keep-mask with keep probability 1 − ratio.
pub(crate) fn dropout_mask(len: usize, ratio: f32, r: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len)
        .map(|_| if r.r#gen::<f32>() < ratio { 0.0 } else { 1.0 })
        .collect()
}
