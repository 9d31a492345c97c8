//! Bounded CBOR encoding (ciborium).
//!
//! Why a wrapper: every decode of network or file bytes must refuse input
//! above a stated size *before* parsing, and the signing code needs one
//! canonical encoder. ciborium writes struct fields in declaration order with
//! definite lengths and the shortest integer forms, so encoding the same value
//! twice gives the same bytes; [`decode_canonical`] uses that to reject any
//! other encoding of a signed body.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors of the bounded codec.
#[derive(Debug, thiserror::Error)]
pub enum CborError {
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} is not valid CBOR for its type: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what} is not in canonical encoding")]
    NonCanonical { what: &'static str },
    #[error("encoding {what}: {reason}")]
    Encode { what: &'static str, reason: String },
}

/// Encodes `value`; fails if the result exceeds `max` bytes.
pub fn encode<T: Serialize>(
    what: &'static str,
    value: &T,
    max: usize,
) -> Result<Vec<u8>, CborError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| CborError::Encode {
        what,
        reason: e.to_string(),
    })?;
    if out.len() > max {
        return Err(CborError::TooLarge {
            what,
            len: out.len(),
            max,
        });
    }
    Ok(out)
}

/// Decodes `bytes` after checking `bytes.len() <= max`. Trailing bytes after
/// the value are an error (they would let two different byte strings decode
/// to the same value).
pub fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, CborError> {
    if bytes.len() > max {
        return Err(CborError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    let mut reader = bytes;
    let value = ciborium::from_reader(&mut reader).map_err(|e| CborError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if !reader.is_empty() {
        return Err(CborError::Malformed {
            what,
            reason: format!("{} trailing bytes", reader.len()),
        });
    }
    Ok(value)
}

/// [`decode`], then re-encodes and requires the same bytes: the input must be
/// the one encoding [`encode`] produces. Used for signed bodies so a
/// signature covers exactly one byte string per value.
pub fn decode_canonical<T: DeserializeOwned + Serialize>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, CborError> {
    let value: T = decode(what, bytes, max)?;
    let again = encode(what, &value, max)?;
    if again != bytes {
        return Err(CborError::NonCanonical { what });
    }
    Ok(value)
}
