//! Payload framing and encryption.
//!
//! A payload is exactly one size class long: `ciphertext (class − 16) || tag (16)`.
//! The plaintext is `len (u32 LE) || message || zero padding`, so padding is
//! encrypted like data and a payload's bytes say nothing about the message
//! length. AES-256-GCM with a per-packet key (see
//! [`crate::crypto::payload_key`]) and an all-zero nonce: the key is used once.
//!
//! Two modes (chosen per packet by the designer, told to each hop by a flag):
//! - link mode: the payload between hop i and hop i+1 is sealed under their
//!   shared link key; each hop opens with `key_in` and seals its own output
//!   with `key_out`. The payload is replaced at every hop (MixNN's Z_i).
//! - layered mode (relay, cover, SURB replies): the payload is sealed once,
//!   end to end, and every hop XORs one ChaCha20 layer keyed by its header
//!   secret, so the copies seen at two hops are unrelated bytes; the
//!   destination's AEAD check catches any change made on the way.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use zeroize::Zeroizing;

use crate::crypto::payload_key;
use crate::error::{Result, SphinxError};
use crate::geometry::PAYLOAD_OVERHEAD;
use crate::header::HeaderBinding;
use crate::routing::LinkKey;

const TAG_LEN: usize = 16;
const LEN_FIELD: usize = 4;

/// The per-packet AEAD: ring's AES-256-GCM. Every hop of a layer opens
/// and seals one payload per packet, so this pass is on every crossing's
/// critical path: with AES-NI and carry-less multiplication (every x86-64
/// and ARMv8 server CPU of the last decade) ring does a 64 KiB payload in
/// about a quarter of the time of its ChaCha20-Poly1305 (8.7 µs against
/// 34 µs on the 2-core EPYC; PROTOCOL.md §2 argues the swap). Without them
/// ring falls back to a constant-time bit-sliced AES. Its tag check is
/// constant time. The key is used for one payload only, so the fixed
/// nonce never repeats under a key.
fn cipher(key: &LinkKey, binding: &HeaderBinding) -> Result<LessSafeKey> {
    let k = Zeroizing::new(payload_key(key.as_bytes(), &binding.0));
    UnboundKey::new(&AES_256_GCM, &k[..])
        .map(LessSafeKey::new)
        .map_err(|_| SphinxError::Malformed("payload key"))
}

/// Every payload key is used for one packet only, so one fixed nonce.
fn nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; 12])
}

/// Seals `message` into `out`, which must be one whole payload (a class
/// length, at least 20 bytes). `binding` is the header the payload will travel
/// with: for link mode the next header this hop emits
/// ([`crate::Processed::outgoing`]), for the designer the packet's first header.
pub fn seal_payload(
    key: &LinkKey,
    binding: &HeaderBinding,
    message: &[u8],
    out: &mut [u8],
) -> Result<()> {
    let capacity = out.len().saturating_sub(PAYLOAD_OVERHEAD);
    if out.len() < PAYLOAD_OVERHEAD || message.len() > capacity {
        return Err(SphinxError::PayloadTooLarge {
            len: message.len(),
            capacity,
        });
    }
    let len = u32::try_from(message.len()).map_err(|_| SphinxError::PayloadTooLarge {
        len: message.len(),
        capacity,
    })?;
    let (body, tag_out) = out.split_at_mut(out.len() - TAG_LEN);
    body[..LEN_FIELD].copy_from_slice(&len.to_le_bytes());
    body[LEN_FIELD..LEN_FIELD + message.len()].copy_from_slice(message);
    body[LEN_FIELD + message.len()..].fill(0);
    let tag = cipher(key, binding)?
        .seal_in_place_separate_tag(nonce(), Aad::empty(), body)
        .map_err(|_| SphinxError::PayloadTooLarge {
            len: message.len(),
            capacity,
        })?;
    tag_out.copy_from_slice(tag.as_ref());
    Ok(())
}

/// Opens a payload in place and returns the message inside it. `binding` is
/// the header the payload arrived with ([`crate::Processed::incoming`]).
/// If authentication fails the body is zeroed (ring decrypts and
/// authenticates in one pass, then wipes what failed).
pub fn open_payload<'a>(
    key: &LinkKey,
    binding: &HeaderBinding,
    payload: &'a mut [u8],
) -> Result<&'a [u8]> {
    if payload.len() < PAYLOAD_OVERHEAD {
        return Err(SphinxError::WrongSize { len: payload.len() });
    }
    let (body, tag) = payload.split_at_mut(payload.len() - TAG_LEN);
    let tag = Tag::try_from(&tag[..]).map_err(|_| SphinxError::PayloadAuth)?;
    cipher(key, binding)?
        .open_in_place_separate_tag(nonce(), Aad::empty(), tag, body, 0..)
        .map_err(|_| SphinxError::PayloadAuth)?;
    let len = body
        .get(..LEN_FIELD)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(SphinxError::Malformed("payload length"))? as usize;
    let end = LEN_FIELD
        .checked_add(len)
        .filter(|&e| e <= body.len())
        .ok_or(SphinxError::Malformed("payload length exceeds the class"))?;
    // An OR over the padding (no early exit) vectorises; a byte loop that
    // stops at the first non-zero byte cost ~30 µs per 64 KiB hop.
    if body[end..].iter().fold(0u8, |acc, &b| acc | b) != 0 {
        return Err(SphinxError::Malformed("payload padding not zero"));
    }
    Ok(&body[LEN_FIELD..end])
}

/// Seals `message` into a fresh payload of `class` bytes.
pub fn seal_payload_vec(
    key: &LinkKey,
    binding: &HeaderBinding,
    message: &[u8],
    class: usize,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; class];
    seal_payload(key, binding, message, &mut out)?;
    Ok(out)
}
