//! The primitives and how keys are derived from a hop's shared secret.
//! Everything that PROTOCOL.md calls a context string or a key schedule lives
//! here, in one place, so the spec and the code can be compared line by line.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Result, SphinxError};
use crate::geometry::MAC_LEN;

/// BLAKE3 `derive_key` contexts. Distinct per purpose so no two keys of a hop
/// can ever coincide; versioned so a later format cannot collide with this one.
pub(crate) const CTX_RHO: &str = "mixnn-sphinx v1 header stream key";
pub(crate) const CTX_MU: &str = "mixnn-sphinx v1 header mac key";
pub(crate) const CTX_PI: &str = "mixnn-sphinx v1 payload layer key";
pub(crate) const CTX_E2E: &str = "mixnn-sphinx v1 end-to-end key";
pub(crate) const CTX_BLIND: &str = "mixnn-sphinx v1 blinding scalar";
pub(crate) const CTX_TAG: &str = "mixnn-sphinx v1 replay tag";
pub(crate) const CTX_PAYLOAD: &str = "mixnn-sphinx v2 payload aes-256-gcm key";

/// Bytes of a replay tag: 128 bits, so tag collisions among the at most a few
/// million packets of one epoch have probability below 2^-80.
pub const REPLAY_TAG_LEN: usize = 16;

/// A hop's replay tag: a hash of its shared secret and group element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplayTag(pub [u8; REPLAY_TAG_LEN]);

/// The keys of one hop of one packet. Wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct HopKeys {
    /// ChaCha20 key for the routing block β.
    pub rho: [u8; 32],
    /// BLAKE3 key for the header MAC γ.
    pub mu: [u8; 32],
    /// ChaCha20 key for this hop's payload layer (layered mode).
    pub pi: [u8; 32],
    /// Key shared by this hop and the packet's builder only: for messages
    /// between the two inside a payload that other hops also carry.
    pub e2e: [u8; 32],
    /// Blinding factor b: the next group element is b·α.
    pub blind: Scalar,
    /// Replay tag.
    pub tag: [u8; REPLAY_TAG_LEN],
}

impl HopKeys {
    /// Derives all keys from the encoded shared secret s and the encoded
    /// group element α the hop received: `derive_key(ctx, s || α)`.
    /// Including α (as the Sphinx paper's h_b(α, s) does) ties the blinding
    /// factor and tag to this very header.
    pub(crate) fn derive(secret: &[u8; 32], alpha: &[u8; 32]) -> HopKeys {
        let mut ikm = [0u8; 64];
        ikm[..32].copy_from_slice(secret);
        ikm[32..].copy_from_slice(alpha);
        let mut wide = [0u8; 64];
        blake3::Hasher::new_derive_key(CTX_BLIND)
            .update(&ikm)
            .finalize_xof()
            .fill(&mut wide);
        let full_tag = blake3::derive_key(CTX_TAG, &ikm);
        let mut tag = [0u8; REPLAY_TAG_LEN];
        tag.copy_from_slice(&full_tag[..REPLAY_TAG_LEN]);
        let keys = HopKeys {
            rho: blake3::derive_key(CTX_RHO, &ikm),
            mu: blake3::derive_key(CTX_MU, &ikm),
            pi: blake3::derive_key(CTX_PI, &ikm),
            e2e: blake3::derive_key(CTX_E2E, &ikm),
            blind: Scalar::from_bytes_mod_order_wide(&wide),
            tag,
        };
        ikm.zeroize();
        wide.zeroize();
        keys
    }
}

/// Canonical encoding of a shared-secret point: its Edwards y-coordinate
/// (compressed form with the sign bit cleared). y determines the X25519 u
/// (u = (1+y)/(1-y)) and ignores the sign, so designer and hop agree even
/// though the designer may hold the hop's public key with the other sign.
/// The identity (what a small-order α yields) is refused.
pub(crate) fn encode_secret(p: &EdwardsPoint) -> Result<[u8; 32]> {
    encode_compressed_secret(p.compress())
}

/// [`encode_secret`] of a point already compressed (the designer compresses
/// α and the secret of a hop together, one field inversion for both).
/// Compression is one-to-one, so comparing with the identity's encoding is
/// the identity check.
pub(crate) fn encode_compressed_secret(c: CompressedEdwardsY) -> Result<[u8; 32]> {
    if bool::from(
        c.as_bytes()
            .ct_eq(CompressedEdwardsY::identity().as_bytes()),
    ) {
        return Err(SphinxError::Malformed("degenerate shared secret"));
    }
    let mut b = c.to_bytes();
    b[31] &= 0x7f;
    Ok(b)
}

/// Decodes the group element α of a header.
pub(crate) fn decode_alpha(bytes: &[u8; 32]) -> Result<EdwardsPoint> {
    CompressedEdwardsY(*bytes)
        .decompress()
        .ok_or(SphinxError::Malformed("group element not on the curve"))
}

/// Header MAC γ = BLAKE3-keyed(μ, hint || α || β)[..16]. α is covered so that
/// a hop (or the wire) cannot swap it for an equivalent point, e.g. add a
/// small-order component that the next hop's clamped scalar would erase.
pub(crate) fn header_mac(mu: &[u8; 32], hint: u8, alpha: &[u8], beta: &[u8]) -> [u8; MAC_LEN] {
    let mut h = blake3::Hasher::new_keyed(mu);
    h.update(&[hint]);
    h.update(alpha);
    h.update(beta);
    let full = h.finalize();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full.as_bytes()[..MAC_LEN]);
    out
}

/// Constant-time comparison of two MACs.
pub(crate) fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// XORs the ChaCha20 keystream of `key` (nonce 0, counter from 0) into `buf`.
/// Each key here is used for exactly one keystream, so the fixed nonce never
/// repeats under a key.
pub(crate) fn xor_keystream(key: &[u8; 32], buf: &mut [u8]) {
    let mut c = ChaCha20::new(key.into(), &[0u8; 12].into());
    c.apply_keystream(buf);
}

/// The per-packet AEAD key of a payload: derive_key(ctx, link key || binding),
/// where the binding identifies the header the payload travels with. A link
/// key thus never encrypts twice under one (key, nonce) pair, and a payload
/// cannot be moved under another header.
pub(crate) fn payload_key(link_key: &[u8; 32], binding: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(CTX_PAYLOAD);
    h.update(link_key);
    h.update(binding);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::montgomery::MontgomeryPoint;

    /// The hop's shared secret is X25519(x, u(α)), only encoded by y.
    #[test]
    fn shared_secret_is_x25519() {
        for i in 1u8..20 {
            let x = [i.wrapping_mul(37); 32];
            let c = Scalar::from_bytes_mod_order([i; 32]);
            let alpha = EdwardsPoint::mul_base(&c);
            let ours = encode_secret(&alpha.mul_clamped(x)).unwrap();
            let u = x25519_dalek::x25519(x, alpha.to_montgomery().to_bytes());
            let mut theirs = MontgomeryPoint(u)
                .to_edwards(0)
                .unwrap()
                .compress()
                .to_bytes();
            theirs[31] &= 0x7f;
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn keys_are_distinct_and_bound_to_alpha() {
        let a = HopKeys::derive(&[1; 32], &[2; 32]);
        let b = HopKeys::derive(&[1; 32], &[3; 32]);
        assert_ne!(a.rho, a.mu);
        assert_ne!(a.mu, a.pi);
        assert_ne!(a.rho, b.rho);
        assert_ne!(a.tag, b.tag);
        assert_ne!(a.blind, b.blind);
    }

    #[test]
    fn identity_secret_refused() {
        assert!(encode_secret(&EdwardsPoint::default()).is_err());
    }
}
