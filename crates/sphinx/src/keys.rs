//! Mix keys: a node's X25519 key pair per key epoch, and the ring of keys a
//! node still accepts packets for (current epoch plus grace period).
//!
//! Why the Edwards form: a hop does two variable-base scalar multiplications
//! per packet (shared secret and blinding). curve25519-dalek runs them on its
//! vectorised Edwards backend, about 2.5x faster here than the Montgomery
//! ladder behind `x25519()`. The shared secret is the same X25519 value
//! (clamped scalar, same point), only encoded by its Edwards y-coordinate.

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use rand::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{Result, SphinxError};

/// A validated X25519 mix public key (as published in a node descriptor),
/// kept with its Edwards form so the designer converts it once, not per packet.
#[derive(Clone, Copy, Debug)]
pub struct MixPublicKey {
    u: [u8; 32],
    point: EdwardsPoint,
}

/// Keys are equal when their X25519 encodings are (the stored Edwards sign may differ).
impl PartialEq for MixPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.u == other.u
    }
}

impl Eq for MixPublicKey {}

impl MixPublicKey {
    /// Parses and checks an X25519 public key (Montgomery u, 32 bytes LE).
    ///
    /// Refuses non-canonical encodings, points on the twist, and points with a
    /// small-order component: with such a key the designer's shared secret
    /// would differ from the hop's and a hostile node could probe bits of the
    /// designer's ephemeral scalar through MAC failures.
    pub fn from_bytes(u: [u8; 32]) -> Result<Self> {
        let mont = MontgomeryPoint(u);
        let point = mont.to_edwards(0).ok_or(SphinxError::InvalidPublicKey)?;
        if point.to_montgomery().to_bytes() != u
            || point.is_small_order()
            || !point.is_torsion_free()
        {
            return Err(SphinxError::InvalidPublicKey);
        }
        Ok(MixPublicKey { u, point })
    }

    /// The X25519 encoding (Montgomery u).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.u
    }

    /// The Edwards point (sign chosen arbitrarily; the shared-secret encoding
    /// ignores the sign, so both choices give the same secret).
    pub(crate) fn edwards(&self) -> &EdwardsPoint {
        &self.point
    }
}

/// A node's mix key for one key epoch. The secret is wiped on drop
/// (x25519-dalek's `StaticSecret` zeroizes itself).
pub struct MixKeyPair {
    epoch: u32,
    secret: StaticSecret,
    public: MixPublicKey,
}

impl std::fmt::Debug for MixKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixKeyPair")
            .field("epoch", &self.epoch)
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl MixKeyPair {
    /// A fresh key for `epoch`.
    pub fn generate<R: RngCore + CryptoRng + ?Sized>(epoch: u32, rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        Self::from_secret_bytes(epoch, *bytes)
    }

    /// Restores a key from its 32 secret bytes (as written by [`Self::secret_bytes`]).
    pub fn from_secret_bytes(epoch: u32, bytes: [u8; 32]) -> Self {
        // The caller's copy is theirs to wipe; this one is wiped here.
        let bytes = Zeroizing::new(bytes);
        let secret = StaticSecret::from(*bytes);
        let u = *PublicKey::from(&secret).as_bytes();
        // X25519 of a clamped scalar times the base point is always a valid,
        // torsion-free point; build the Edwards form directly from the scalar
        // so no fallible conversion is involved.
        let point = EdwardsPoint::mul_base_clamped(*bytes);
        MixKeyPair {
            epoch,
            secret,
            public: MixPublicKey { u, point },
        }
    }

    /// The key epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The public half, for the node's descriptor.
    pub fn public(&self) -> &MixPublicKey {
        &self.public
    }

    /// The secret bytes, for the node's key file (wiped when dropped).
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The X25519 static secret.
    pub fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    /// The header's epoch hint for this key: the epoch's low byte.
    pub fn hint(&self) -> u8 {
        epoch_hint(self.epoch)
    }
}

/// The one-byte epoch hint a header carries in clear so the hop knows which
/// key to try without a DH per live key. All packets to keys of the same
/// epoch carry the same byte, so it tells an observer only the epoch.
pub fn epoch_hint(epoch: u32) -> u8 {
    (epoch & 0xff) as u8
}

/// The mix keys a node accepts packets for. Two keys whose epochs share a
/// hint byte cannot coexist (the hint would be ambiguous), which limits a
/// ring to 256 consecutive epochs: far more than current + grace.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Vec<MixKeyPair>,
}

impl KeyRing {
    /// An empty ring.
    pub fn new() -> Self {
        KeyRing::default()
    }

    /// A ring holding one key.
    pub fn with_key(key: MixKeyPair) -> Self {
        KeyRing { keys: vec![key] }
    }

    /// Adds a key. Refused if a key with the same hint is present.
    pub fn insert(&mut self, key: MixKeyPair) -> Result<()> {
        if self.keys.iter().any(|k| k.hint() == key.hint()) {
            return Err(SphinxError::KeyRing(
                "a key with the same epoch hint is present",
            ));
        }
        self.keys.push(key);
        Ok(())
    }

    /// Drops (and wipes) the key of `epoch`; true if there was one. Pair it
    /// with [`crate::ReplayCache::forget_epoch`]: once the key is gone its
    /// packets are refused as `UnknownEpoch`, so the tags need not be kept.
    pub fn remove(&mut self, epoch: u32) -> bool {
        let before = self.keys.len();
        self.keys.retain(|k| k.epoch != epoch);
        before != self.keys.len()
    }

    /// The key of `epoch`, if held.
    pub fn get(&self, epoch: u32) -> Option<&MixKeyPair> {
        self.keys.iter().find(|k| k.epoch == epoch)
    }

    /// Epochs held, in insertion order.
    pub fn epochs(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.epoch).collect()
    }

    pub(crate) fn by_hint(&self, hint: u8) -> Option<&MixKeyPair> {
        self.keys.iter().find(|k| k.hint() == hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn public_key_validation() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let kp = MixKeyPair::generate(3, &mut rng);
        let pk = MixPublicKey::from_bytes(kp.public().to_bytes()).unwrap();
        assert_eq!(pk.to_bytes(), kp.public().to_bytes());
        // u = 0 and u = 1 are small order / off the prime subgroup.
        assert!(MixPublicKey::from_bytes([0; 32]).is_err());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(MixPublicKey::from_bytes(one).is_err());
        // Non-canonical: top bit set.
        let mut b = kp.public().to_bytes();
        b[31] |= 0x80;
        assert!(MixPublicKey::from_bytes(b).is_err());
    }

    #[test]
    fn ring_hints() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let mut ring = KeyRing::new();
        ring.insert(MixKeyPair::generate(7, &mut rng)).unwrap();
        ring.insert(MixKeyPair::generate(8, &mut rng)).unwrap();
        assert!(
            ring.insert(MixKeyPair::generate(7 + 256, &mut rng))
                .is_err()
        );
        assert_eq!(ring.by_hint(8).map(|k| k.epoch()), Some(8));
        assert!(ring.remove(7));
        assert!(ring.by_hint(7).is_none());
        assert_eq!(ring.epochs(), vec![8]);
    }
}
