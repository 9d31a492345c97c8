//! Witnesses: what a hop computed, sealed to the designer (PROTOCOL.md
//! §12.9, issue 11's lying layers).
//!
//! With `--verify-replicas` the designer runs every layer on two nodes in
//! pure-wasm mode, where the same inputs give the same bytes on every
//! machine. To compare them it needs, per hop and per step, a digest of the
//! tensor the hop took and of the one it sent on, and no hop may learn
//! another's. So every packet with a tensor carries a **witness area** of
//! [`WITNESS_SLOTS`] slots after its end-to-end section: a hop with a
//! witness writes `tag(input) || tag(output)` into its slot (XOR, so it
//! commutes with the layers every other hop XORs over the whole section),
//! and the designer, who filled the area with a random mask under every
//! hop's layer, finds the tags under that mask at the end of the route.
//! The tag is keyed per cascade position (both replicas of a position
//! share the key, no other position has it), so a hop cannot compute its
//! neighbours' tags, and the area looks random to every hop on the way.

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::{TensorData, WireTensor};

/// Slots of a witness area: one per slot of the longest route (a route
/// has at most 16 hops, PROTOCOL.md §1).
pub const WITNESS_SLOTS: usize = 16;
/// Bytes of one tag (a truncated keyed BLAKE3).
pub const TAG_LEN: usize = 16;
/// Bytes of one slot: the input's tag, then the output's.
pub const WITNESS_SLOT_LEN: usize = 2 * TAG_LEN;
/// Bytes a witness area adds to the end-to-end section of a packet with a
/// tensor.
pub const WITNESS_AREA: usize = WITNESS_SLOTS * WITNESS_SLOT_LEN;

/// What a hop needs to write its witness, sent with its init
/// ([`super::LayerSpec::witness`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Witness {
    /// The tag key of the hop's cascade position (32 bytes).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The slot it writes on forward and test packets.
    pub forward: u8,
    /// The slot it writes on backward packets (and at the turn).
    pub backward: u8,
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl std::fmt::Debug for Witness {
    /// The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("forward", &self.forward)
            .field("backward", &self.backward)
            .finish_non_exhaustive()
    }
}

impl Witness {
    /// Whether the key has 32 bytes and both slots exist.
    pub fn is_valid(&self) -> bool {
        self.key.len() == 32
            && usize::from(self.forward) < WITNESS_SLOTS
            && usize::from(self.backward) < WITNESS_SLOTS
    }

    fn key(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        if let Some(src) = self.key.get(..32) {
            k.copy_from_slice(src);
        }
        k
    }

    /// The tag of `t` (or of "no tensor"): a keyed BLAKE3 over its encoding
    /// (dtype, dims, elements), truncated to [`TAG_LEN`].
    pub fn tag(&self, t: Option<&WireTensor>) -> [u8; TAG_LEN] {
        tag(&self.key(), t)
    }
}

/// The tag of `t` under a position's tag key `key` (see [`Witness::tag`]).
pub fn tag(key: &[u8; 32], t: Option<&WireTensor>) -> [u8; TAG_LEN] {
    let k = zeroize::Zeroizing::new(blake3::derive_key("mixnn job v1 witness tag", key));
    let mut h = blake3::Hasher::new_keyed(&k);
    match t {
        None => {
            h.update(b"none");
        }
        Some(t) => {
            h.update(&[match t.data {
                TensorData::F32(_) => 0,
                TensorData::Unit8(_) => 1,
            }]);
            h.update(&[t.shape.len() as u8]);
            for d in &t.shape {
                h.update(&d.to_le_bytes());
            }
            match &t.data {
                TensorData::F32(v) => {
                    let mut buf = [0u8; 4 * 256];
                    for chunk in v.chunks(256) {
                        for (b, x) in buf.chunks_exact_mut(4).zip(chunk) {
                            b.copy_from_slice(&x.to_le_bytes());
                        }
                        h.update(&buf[..4 * chunk.len()]);
                    }
                }
                TensorData::Unit8(b) => {
                    h.update(b);
                }
            }
        }
    }
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
    out
}

/// XORs `input || output` into slot `slot` of the area at the end of
/// `section` (a section shorter than an area, or a slot past it, is left
/// alone: the designer then finds no witness and says so).
pub fn mark(section: &mut [u8], slot: u8, input: &[u8; TAG_LEN], output: &[u8; TAG_LEN]) {
    let Some(start) = section.len().checked_sub(WITNESS_AREA) else {
        return;
    };
    let at = start + usize::from(slot) * WITNESS_SLOT_LEN;
    let Some(s) = section.get_mut(at..at + WITNESS_SLOT_LEN) else {
        return;
    };
    for (b, t) in s.iter_mut().zip(input.iter().chain(output)) {
        *b ^= t;
    }
}

/// The part of a section with a witness area that is sealed end to end
/// (everything before the area).
pub fn sealed_part(section: &mut [u8]) -> &mut [u8] {
    let n = section.len().saturating_sub(WITNESS_AREA);
    &mut section[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Vec<f32>) -> WireTensor {
        WireTensor {
            shape: vec![1, v.len() as u32],
            data: TensorData::F32(v),
        }
    }

    #[test]
    fn tags_differ_by_tensor_key_and_encoding() {
        let k = [7u8; 32];
        let a = tag(&k, Some(&t(vec![1.0, 2.0])));
        assert_eq!(a, tag(&k, Some(&t(vec![1.0, 2.0]))));
        assert_ne!(a, tag(&k, Some(&t(vec![1.0, 2.000_001]))));
        assert_ne!(a, tag(&[8u8; 32], Some(&t(vec![1.0, 2.0]))));
        assert_ne!(a, tag(&k, None));
        let long: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let mut other = long.clone();
        other[999] = -1.0;
        assert_ne!(tag(&k, Some(&t(long))), tag(&k, Some(&t(other))));
    }

    #[test]
    fn marks_land_in_their_slot_and_commute() {
        let mut s = vec![0u8; 100 + WITNESS_AREA];
        mark(&mut s, 3, &[1; TAG_LEN], &[2; TAG_LEN]);
        mark(&mut s, 15, &[3; TAG_LEN], &[4; TAG_LEN]);
        let area = &s[100..];
        assert_eq!(&area[3 * 32..3 * 32 + 16], &[1; 16]);
        assert_eq!(&area[3 * 32 + 16..4 * 32], &[2; 16]);
        assert_eq!(&area[15 * 32..15 * 32 + 16], &[3; 16]);
        assert!(s[..100].iter().all(|&b| b == 0));
        assert_eq!(sealed_part(&mut s).len(), 100);
        // Too short or a slot past the area: nothing written, no panic.
        let mut short = vec![0u8; 10];
        mark(&mut short, 0, &[1; TAG_LEN], &[1; TAG_LEN]);
        assert!(short.iter().all(|&b| b == 0));
        mark(&mut s, 200, &[9; TAG_LEN], &[9; TAG_LEN]);
    }

    #[test]
    fn a_witness_keeps_its_key_out_of_debug() {
        let w = Witness {
            key: vec![0xAB; 32],
            forward: 1,
            backward: 2,
        };
        assert!(w.is_valid());
        assert!(!format!("{w:?}").contains("171"));
        let bad = Witness {
            key: vec![1; 31],
            ..w.clone()
        };
        assert!(!bad.is_valid());
    }
}
