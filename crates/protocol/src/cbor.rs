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
    /// The input (on decode) or the encoded output (on encode) is over the
    /// caller's byte limit; on decode this is checked before any parsing.
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Caller's label for the value, used in the message.
        what: &'static str,
        /// Actual size, in bytes (or in entries where `what` says so).
        len: usize,
        /// Limit that `len` exceeded, in the same unit.
        max: usize,
    },
    /// The bytes do not decode as the target type, or bytes follow the value.
    #[error("{what} is not valid CBOR for its type: {reason}")]
    Malformed {
        /// Caller's label for the value, used in the message.
        what: &'static str,
        /// Decoder error text, or the count of trailing bytes.
        reason: String,
    },
    /// The bytes decode, but re-encoding the value gives different bytes, so
    /// they are not the one canonical encoding (see [`decode_canonical`]).
    #[error("{what} is not in canonical encoding")]
    NonCanonical {
        /// Caller's label for the value, used in the message.
        what: &'static str,
    },
    /// The serializer failed to encode the value.
    #[error("encoding {what}: {reason}")]
    Encode {
        /// Caller's label for the value, used in the message.
        what: &'static str,
        /// Serializer error text.
        reason: String,
    },
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
