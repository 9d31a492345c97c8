//! Why a packet was refused. A node counts drops by [`SphinxError::reason`],
//! so every way a packet can fail has its own variant and none of them
//! carries packet bytes (nothing an attacker sends ends up in a log line).

/// Everything that can go wrong building, parsing or processing a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SphinxError {
    /// The byte string is not `header_len + class` for any size class of the geometry.
    #[error("length {len} is not a packet length of this geometry")]
    WrongSize {
        /// The length that was offered.
        len: usize,
    },
    /// A field failed to parse (bad group element, unknown op, non-zero reserved bytes...).
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// The header MAC did not verify: tampered, truncated, or not for this key.
    #[error("header MAC check failed")]
    BadMac,
    /// This hop has already processed a packet with the same replay tag in this key epoch.
    #[error("replayed packet")]
    Replay,
    /// The packet names a key epoch this hop holds no key for (never had it, or it expired).
    #[error("no mix key for the packet's key epoch")]
    UnknownEpoch,
    /// The replay cache of the epoch reached its hard cap; the packet is refused
    /// rather than accepted unrecorded (fail closed).
    #[error("replay cache for epoch {epoch} is full")]
    ReplayCacheFull {
        /// The key epoch whose cache is full.
        epoch: u32,
    },
    /// The routing info carries a version this code does not speak.
    #[error("unsupported routing-info version {0}")]
    UnsupportedVersion(u8),
    /// The payload's AEAD tag (per-link or end-to-end) did not verify.
    #[error("payload authentication failed")]
    PayloadAuth,
    /// A message does not fit the payload capacity of the chosen class.
    #[error("message of {len} bytes exceeds the class capacity of {capacity} bytes")]
    PayloadTooLarge {
        /// Message length.
        len: usize,
        /// What the class can hold.
        capacity: usize,
    },
    /// A route the designer asked for cannot be encoded (empty, too long, ...).
    #[error("invalid route: {0}")]
    InvalidRoute(&'static str),
    /// Geometry parameters out of range.
    #[error("invalid geometry: {0}")]
    InvalidGeometry(&'static str),
    /// A mix public key that is not a usable X25519 point (off-curve, small order, torsion).
    #[error("invalid mix public key")]
    InvalidPublicKey,
    /// A key-ring operation that would make epoch hints ambiguous or lose a key.
    #[error("key ring: {0}")]
    KeyRing(&'static str),
}

impl SphinxError {
    /// A short, stable label for metrics (`drops_total{reason="bad_mac"}`).
    pub fn reason(&self) -> &'static str {
        match self {
            SphinxError::WrongSize { .. } => "wrong_size",
            SphinxError::Malformed(_) => "malformed",
            SphinxError::BadMac => "bad_mac",
            SphinxError::Replay => "replay",
            SphinxError::UnknownEpoch => "unknown_epoch",
            SphinxError::ReplayCacheFull { .. } => "replay_cache_full",
            SphinxError::UnsupportedVersion(_) => "unsupported_version",
            SphinxError::PayloadAuth => "payload_auth",
            SphinxError::PayloadTooLarge { .. } => "payload_too_large",
            SphinxError::InvalidRoute(_) => "invalid_route",
            SphinxError::InvalidGeometry(_) => "invalid_geometry",
            SphinxError::InvalidPublicKey => "invalid_public_key",
            SphinxError::KeyRing(_) => "key_ring",
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, SphinxError>;
