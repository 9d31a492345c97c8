//! Node descriptors: what a node says about itself, signed by its identity.
//!
//! The signature covers the exact CBOR bytes of the body (prefixed with a
//! domain-separation context), and the body travels as those bytes. Why not
//! sign a re-encoding on the receiving side: two CBOR encoders may disagree
//! on a byte, and a signature must never depend on that. The body must still
//! be canonical ([`crate::cbor::decode_canonical`]), so one descriptor has one
//! valid byte string and the directory can compare entries by bytes.
//!
//! The signing key is the node's libp2p ed25519 identity, so the descriptor
//! binds the mix key and addresses to the same peer id that Noise
//! authenticates on every connection.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::cbor::{self, CborError};

/// Current body format. A verifier refuses any other.
pub const DESCRIPTOR_FORMAT: u16 = 1;
/// Largest accepted body, in bytes.
pub const MAX_DESCRIPTOR_BYTES: usize = 4096;
/// Largest accepted signed descriptor (body + signature + CBOR framing).
pub const MAX_SIGNED_DESCRIPTOR_BYTES: usize = MAX_DESCRIPTOR_BYTES + 128;
/// At most this many listen addresses per descriptor.
pub const MAX_ADDRS: usize = 16;
/// At most this many bytes per address string.
pub const MAX_ADDR_LEN: usize = 256;
/// At most this many bytes of software version.
pub const MAX_SOFTWARE_LEN: usize = 64;
/// A descriptor may claim to be valid for at most this long: a stolen or
/// stale one cannot be replayed for days.
pub const MAX_LIFETIME_SECS: u64 = 24 * 3600;
/// Tolerated clock difference between signer and verifier.
pub const CLOCK_SKEW_SECS: u64 = 300;

/// Prefixed to the body before signing so a descriptor signature can never
/// be taken for a signature over anything else the identity key signs
/// (libp2p's Noise handshake and identify records use the same key).
const SIGNING_CONTEXT: &[u8] = b"mixnn/descriptor/v1\0";

/// The node's packet key for one epoch: X25519 public key bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixKeyInfo {
    /// Epoch number: `unix_time / epoch_length` on the node's schedule.
    pub epoch: u64,
    /// Length of one epoch in seconds, so a designer can tell when the key
    /// rotates.
    pub epoch_secs: u64,
    /// X25519 public key for this epoch, which senders use to build packets
    /// addressed to this node.
    #[serde(with = "serde_bytes")]
    pub public: [u8; 32],
}

/// What a node offers to jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Layers of distinct jobs it hosts at once.
    pub jobs: u32,
    /// Memory it grants one guest, in MiB.
    pub memory_mib: u64,
}

/// The signed body. Field order is the encoding order: do not reorder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescriptor {
    /// Body format version; must equal [`DESCRIPTOR_FORMAT`].
    pub format: u16,
    /// The libp2p peer id (base58), derived from `identity_key`.
    pub peer_id: String,
    /// The ed25519 identity public key that signs this descriptor.
    #[serde(with = "serde_bytes")]
    pub identity_key: [u8; 32],
    /// Listen addresses as multiaddr strings (parsed by whoever dials).
    pub addrs: Vec<String>,
    /// The current epoch's packet key.
    pub mix_key: MixKeyInfo,
    /// What the node offers to jobs.
    pub capacity: Capacity,
    /// Free-form software name/version, at most [`MAX_SOFTWARE_LEN`] bytes.
    pub software: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the descriptor is invalid from this second on.
    pub expires_at: u64,
}

/// A descriptor as it travels: the canonical body bytes and an ed25519
/// signature over `SIGNING_CONTEXT || body`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDescriptor {
    /// Canonical CBOR encoding of the [`NodeDescriptor`], exactly as signed.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// ed25519 signature (64 bytes when valid) over
    /// `SIGNING_CONTEXT || body`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Why a descriptor was refused.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    /// The body or signed envelope is oversized, malformed or non-canonical
    /// CBOR.
    #[error(transparent)]
    Encoding(#[from] CborError),
    /// The body's `format` is not [`DESCRIPTOR_FORMAT`].
    #[error("descriptor format {0} is not supported (expected {DESCRIPTOR_FORMAT})")]
    UnsupportedFormat(u16),
    /// A field breaks a shape limit (address count or length, software
    /// length, zero epoch length).
    #[error("descriptor field {field} is invalid: {reason}")]
    Invalid {
        /// Name of the offending field, e.g. `"addrs"`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `identity_key` is not a valid ed25519 public key.
    #[error("identity key is not a valid ed25519 public key")]
    BadIdentityKey,
    /// The signature is malformed or does not verify (strict ed25519) over
    /// the body.
    #[error("signature does not verify")]
    BadSignature,
    /// The descriptor's `peer_id` is not the one derived from its identity
    /// key.
    #[error(
        "peer id {claimed} does not belong to the signing key (that key's peer id is {actual})"
    )]
    PeerIdMismatch {
        /// Peer id written in the descriptor.
        claimed: String,
        /// Peer id derived from `identity_key`.
        actual: String,
    },
    /// Signing was attempted with a key other than the descriptor's
    /// `identity_key`.
    #[error("the signing key does not match the descriptor's identity key")]
    WrongSigningKey,
    /// The descriptor's validity window has ended.
    #[error("descriptor expired at {expires_at} (now {now})")]
    Expired {
        /// Descriptor's `expires_at`, unix seconds.
        expires_at: u64,
        /// Verifier's clock, unix seconds.
        now: u64,
    },
    /// `issued_at` is later than `now` plus [`CLOCK_SKEW_SECS`].
    #[error("descriptor issued at {issued_at}, in the future (now {now})")]
    NotYetValid {
        /// Descriptor's `issued_at`, unix seconds.
        issued_at: u64,
        /// Verifier's clock, unix seconds.
        now: u64,
    },
    /// `expires_at` is not after `issued_at`, or the lifetime exceeds
    /// [`MAX_LIFETIME_SECS`].
    #[error(
        "descriptor lifetime {issued_at}..{expires_at} is empty or longer than {MAX_LIFETIME_SECS} s"
    )]
    BadLifetime {
        /// Descriptor's `issued_at`, unix seconds.
        issued_at: u64,
        /// Descriptor's `expires_at`, unix seconds.
        expires_at: u64,
    },
}

/// The libp2p peer id (base58) of an ed25519 public key.
pub fn peer_id_of(identity_key: &[u8; 32]) -> Result<String, DescriptorError> {
    let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(identity_key)
        .map_err(|_| DescriptorError::BadIdentityKey)?;
    let public: libp2p_identity::PublicKey = key.into();
    Ok(public.to_peer_id().to_base58())
}

impl NodeDescriptor {
    /// Checks the limits and field shapes that do not need a clock or a key.
    fn check_shape(&self) -> Result<(), DescriptorError> {
        if self.format != DESCRIPTOR_FORMAT {
            return Err(DescriptorError::UnsupportedFormat(self.format));
        }
        let invalid = |field, reason: String| DescriptorError::Invalid { field, reason };
        if self.addrs.is_empty() {
            return Err(invalid("addrs", "no address".into()));
        }
        if self.addrs.len() > MAX_ADDRS {
            return Err(invalid(
                "addrs",
                format!("{} addresses, at most {MAX_ADDRS}", self.addrs.len()),
            ));
        }
        if let Some(a) = self
            .addrs
            .iter()
            .find(|a| a.is_empty() || a.len() > MAX_ADDR_LEN)
        {
            return Err(invalid(
                "addrs",
                format!("address of {} bytes (1..={MAX_ADDR_LEN})", a.len()),
            ));
        }
        if self.software.len() > MAX_SOFTWARE_LEN {
            return Err(invalid(
                "software",
                format!("{} bytes, at most {MAX_SOFTWARE_LEN}", self.software.len()),
            ));
        }
        if self.mix_key.epoch_secs == 0 {
            return Err(invalid("mix_key.epoch_secs", "zero".into()));
        }
        if self.expires_at <= self.issued_at || self.expires_at - self.issued_at > MAX_LIFETIME_SECS
        {
            return Err(DescriptorError::BadLifetime {
                issued_at: self.issued_at,
                expires_at: self.expires_at,
            });
        }
        Ok(())
    }

    /// Checks the validity window against `now` (unix seconds).
    pub fn check_time(&self, now: u64) -> Result<(), DescriptorError> {
        if self.expires_at <= now {
            return Err(DescriptorError::Expired {
                expires_at: self.expires_at,
                now,
            });
        }
        if self.issued_at > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(DescriptorError::NotYetValid {
                issued_at: self.issued_at,
                now,
            });
        }
        Ok(())
    }
}

impl SignedDescriptor {
    /// Signs `desc` with the node's identity key. Refuses a descriptor that
    /// would fail [`verify_at`](Self::verify_at) for shape reasons, and a key
    /// that is not the descriptor's identity key.
    pub fn sign(desc: &NodeDescriptor, key: &SigningKey) -> Result<Self, DescriptorError> {
        desc.check_shape()?;
        if key.verifying_key().to_bytes() != desc.identity_key {
            return Err(DescriptorError::WrongSigningKey);
        }
        let actual = peer_id_of(&desc.identity_key)?;
        if actual != desc.peer_id {
            return Err(DescriptorError::PeerIdMismatch {
                claimed: desc.peer_id.clone(),
                actual,
            });
        }
        let body = cbor::encode("descriptor", desc, MAX_DESCRIPTOR_BYTES)?;
        let signature = key.sign(&signing_input(&body)).to_bytes().to_vec();
        Ok(Self { body, signature })
    }

    /// Checks the encoding and limits, the signature (strict ed25519), that
    /// the peer id is the signing key's, and the validity window at `now`;
    /// returns the descriptor only if all hold.
    pub fn verify_at(&self, now: u64) -> Result<NodeDescriptor, DescriptorError> {
        let desc: NodeDescriptor =
            cbor::decode_canonical("descriptor", &self.body, MAX_DESCRIPTOR_BYTES)?;
        desc.check_shape()?;
        let key = VerifyingKey::from_bytes(&desc.identity_key)
            .map_err(|_| DescriptorError::BadIdentityKey)?;
        let signature =
            Signature::from_slice(&self.signature).map_err(|_| DescriptorError::BadSignature)?;
        key.verify_strict(&signing_input(&self.body), &signature)
            .map_err(|_| DescriptorError::BadSignature)?;
        let actual = peer_id_of(&desc.identity_key)?;
        if actual != desc.peer_id {
            return Err(DescriptorError::PeerIdMismatch {
                claimed: desc.peer_id,
                actual,
            });
        }
        desc.check_time(now)?;
        Ok(desc)
    }

    /// Encodes for storage or transport outside libp2p.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CborError> {
        cbor::encode("signed descriptor", self, MAX_SIGNED_DESCRIPTOR_BYTES)
    }

    /// Decodes with the size limit; does not verify (call [`verify_at`](Self::verify_at)).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CborError> {
        cbor::decode("signed descriptor", bytes, MAX_SIGNED_DESCRIPTOR_BYTES)
    }
}

fn signing_input(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(body);
    m
}
