//! End-to-end sections (PROTOCOL.md §12.3): sealed for one hop, layered by
//! every other, so that only the hop a message is for can read it and the
//! hops around it cannot tell a request from a reply by its size.

use super::{E2E_MAC_LEN, E2E_OVERHEAD, JobError, MAX_E2E_BODY, MAX_E2E_SECTION};

/// Which way an end-to-end message goes: the key schedule keeps the two
/// apart so a reply can never be replayed as a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E2eDirection {
    /// Designer to hop ([`ToHop`](super::ToHop) messages).
    ToHop,
    /// Hop back to the designer ([`FromHop`](super::FromHop) messages).
    FromHop,
}

impl E2eDirection {
    fn contexts(self) -> (&'static str, &'static str) {
        match self {
            E2eDirection::ToHop => (
                "mixnn job v1 e2e to-hop stream",
                "mixnn job v1 e2e to-hop mac",
            ),
            E2eDirection::FromHop => (
                "mixnn job v1 e2e from-hop stream",
                "mixnn job v1 e2e from-hop mac",
            ),
        }
    }
}

fn xor_stream(context: &str, key: &[u8; 32], data: &mut [u8]) {
    use chacha20::cipher::{KeyIvInit, StreamCipher};
    let k = zeroize::Zeroizing::new(blake3::derive_key(context, key));
    let key: &[u8; 32] = &k;
    let mut c = chacha20::ChaCha20::new(key.into(), &[0u8; 12].into());
    c.apply_keystream(data);
}

/// The layer a hop adds or strips (XOR) on an end-to-end section it is not
/// the target of, and the designer's way to add or remove that layer.
pub fn e2e_layer(hop_key: &[u8; 32], data: &mut [u8]) {
    xor_stream(E2eDirection::ToHop.contexts().0, hop_key, data);
}

/// Seals `body` for (or, with [`E2eDirection::FromHop`], from) the hop whose
/// end-to-end key is `key`, at its natural length
/// ([`E2E_OVERHEAD`] + body); see [`seal_e2e_padded`].
pub fn seal_e2e(key: &[u8; 32], dir: E2eDirection, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; E2E_OVERHEAD + body.len()];
    seal_into(key, dir, body, &mut out);
    out
}

/// Seals `body` into a section of exactly `len` bytes:
/// `MAC(16) || body_len (u32 LE) || body || 0^pad`, the MAC over everything
/// after it (so the padding is authenticated), then the direction's stream.
/// Every section of a kind has one length whatever its message, so the
/// hops that only layer it learn nothing from its size (PROTOCOL.md §12.3).
/// Fails when the body does not fit.
pub fn seal_e2e_padded(
    key: &[u8; 32],
    dir: E2eDirection,
    body: &[u8],
    len: usize,
) -> Result<Vec<u8>, JobError> {
    if body.len() > MAX_E2E_BODY || E2E_OVERHEAD + body.len() > len {
        return Err(JobError::Malformed(
            "end-to-end message larger than its section",
        ));
    }
    let mut out = vec![0u8; len];
    seal_into(key, dir, body, &mut out);
    Ok(out)
}

/// `out` (zeroed, at least [`E2E_OVERHEAD`] + body bytes) becomes the seal.
fn seal_into(key: &[u8; 32], dir: E2eDirection, body: &[u8], out: &mut [u8]) {
    let (stream, mac_ctx) = dir.contexts();
    out[E2E_MAC_LEN..E2E_OVERHEAD].copy_from_slice(&(body.len() as u32).to_le_bytes());
    out[E2E_OVERHEAD..E2E_OVERHEAD + body.len()].copy_from_slice(body);
    let mac_key = zeroize::Zeroizing::new(blake3::derive_key(mac_ctx, key));
    let mac = blake3::keyed_hash(&mac_key, &out[E2E_MAC_LEN..]);
    out[..E2E_MAC_LEN].copy_from_slice(&mac.as_bytes()[..E2E_MAC_LEN]);
    xor_stream(stream, key, out);
}

/// Opens what [`seal_e2e`] or [`seal_e2e_padded`] made (after every other
/// layer is gone); the MAC is compared in constant time before the length
/// and the padding are read.
pub fn open_e2e(key: &[u8; 32], dir: E2eDirection, sealed: &[u8]) -> Result<Vec<u8>, JobError> {
    use subtle::ConstantTimeEq;
    if sealed.len() < E2E_OVERHEAD || sealed.len() > MAX_E2E_SECTION {
        return Err(JobError::E2eAuth);
    }
    let (stream, mac_ctx) = dir.contexts();
    let mut plain = sealed.to_vec();
    xor_stream(stream, key, &mut plain);
    let mac_key = zeroize::Zeroizing::new(blake3::derive_key(mac_ctx, key));
    let (mac, rest) = plain.split_at(E2E_MAC_LEN);
    let want = blake3::keyed_hash(&mac_key, rest);
    if !bool::from(mac.ct_eq(&want.as_bytes()[..E2E_MAC_LEN])) {
        return Err(JobError::E2eAuth);
    }
    let (len, padded) = rest.split_at(4);
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > padded.len() || len > MAX_E2E_BODY {
        return Err(JobError::Malformed("end-to-end length past its section"));
    }
    let (body, pad) = padded.split_at(len);
    if pad.iter().any(|&b| b != 0) {
        return Err(JobError::Malformed("end-to-end padding is not zero"));
    }
    Ok(body.to_vec())
}
