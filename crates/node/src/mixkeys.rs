//! X25519 mix keys, one per epoch, persisted across restarts.
//!
//! Epochs are global: epoch `e` covers unix seconds `[e·L, (e+1)·L)` for the
//! configured length `L`, so a designer can tell from a descriptor which key
//! a packet must use at a given time. The key of epoch `e` stays usable
//! until `(e+1)·L + grace`, so packets built just before a rotation still
//! decrypt (and a replay cache per epoch can be dropped with its key).
//!
//! Why persist: a restarted node keeps serving routes built from its last
//! descriptor. The file `mix-keys.cbor` is written owner-only through
//! [`mixnn_p2p::secret_file`]. If the epoch length changed since the
//! file was written, the old keys are numbered on the wrong schedule and are
//! discarded (logged).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use mixnn_p2p::secret_file::{self, SecretFileError};
use mixnn_protocol::cbor;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

/// The mix-key file inside the data dir.
pub const MIX_KEY_FILE: &str = "mix-keys.cbor";
const FILE_FORMAT: u16 = 1;
/// A mix-key file never holds more than this many keys.
const MAX_KEYS: usize = 64;
const MAX_FILE_BYTES: usize = 64 * 1024;

/// Errors of the key store.
#[derive(Debug, thiserror::Error)]
pub enum MixKeyError {
    /// Reading or writing the key file (or its directory) failed.
    #[error(transparent)]
    File(#[from] SecretFileError),
    /// The key file does not decode or breaks the store's rules.
    #[error("mix-key file {}: {reason}", path.display())]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    epoch: u64,
    #[serde(with = "serde_bytes")]
    secret: [u8; 32],
}

impl Drop for StoredKey {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
struct StoredFile {
    format: u16,
    epoch_secs: u64,
    keys: Vec<StoredKey>,
}

/// The node's mix keys by epoch.
pub struct MixKeyStore {
    path: PathBuf,
    epoch_secs: u64,
    grace_secs: u64,
    keys: BTreeMap<u64, StaticSecret>,
    /// Bumped whenever a key is added or dropped, so a packet processor
    /// that caches a key ring sees a new key at once (see
    /// [`generation`](Self::generation)).
    generation: u64,
}

impl MixKeyStore {
    /// Loads the keys in `dir` (or starts empty), then [`rotate`](Self::rotate)s
    /// to `now`.
    pub fn open(
        dir: &Path,
        epoch_secs: u64,
        grace_secs: u64,
        now: u64,
    ) -> Result<Self, MixKeyError> {
        let path = dir.join(MIX_KEY_FILE);
        let mut keys = BTreeMap::new();
        if let Some(bytes) = secret_file::read_secret(&path, MAX_FILE_BYTES)? {
            let stored: StoredFile =
                cbor::decode("mix-key file", &bytes, MAX_FILE_BYTES).map_err(|e| {
                    MixKeyError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
            if stored.format != FILE_FORMAT || stored.keys.len() > MAX_KEYS {
                return Err(MixKeyError::Corrupt {
                    path,
                    reason: format!(
                        "format {} with {} keys (expected format {FILE_FORMAT}, at most {MAX_KEYS})",
                        stored.format,
                        stored.keys.len()
                    ),
                });
            }
            if stored.epoch_secs == epoch_secs {
                for k in &stored.keys {
                    keys.insert(k.epoch, StaticSecret::from(k.secret));
                }
            } else {
                warn!(
                    old = stored.epoch_secs,
                    new = epoch_secs,
                    "epoch length changed: discarding stored mix keys"
                );
            }
        }
        let mut store = Self {
            path,
            epoch_secs,
            grace_secs,
            keys,
            generation: 0,
        };
        store.rotate(now)?;
        Ok(store)
    }

    /// The epoch that contains `now`.
    pub fn epoch_at(&self, now: u64) -> u64 {
        now / self.epoch_secs
    }

    /// Length of a key epoch, in seconds.
    pub fn epoch_secs(&self) -> u64 {
        self.epoch_secs
    }

    /// Unix second at which the epoch after the current one starts.
    pub fn next_rotation(&self, now: u64) -> u64 {
        (self.epoch_at(now) + 1).saturating_mul(self.epoch_secs)
    }

    /// Makes sure the current epoch has a key and drops keys whose grace
    /// period is over; persists if anything changed. Returns whether it did.
    pub fn rotate(&mut self, now: u64) -> Result<bool, MixKeyError> {
        let current = self.epoch_at(now);
        let mut changed = false;
        if let std::collections::btree_map::Entry::Vacant(slot) = self.keys.entry(current) {
            let seed = secret_file::random_secret::<32>()?;
            slot.insert(StaticSecret::from(*seed));
            info!(epoch = current, "new mix key");
            changed = true;
        }
        let (epoch_secs, grace) = (self.epoch_secs, self.grace_secs);
        let before = self.keys.len();
        self.keys.retain(|&e, _| {
            e >= current || (e + 1).saturating_mul(epoch_secs).saturating_add(grace) > now
        });
        changed |= self.keys.len() != before;
        if changed {
            self.generation = self.generation.wrapping_add(1);
            self.persist()?;
        }
        Ok(changed)
    }

    /// The current epoch and its public key.
    pub fn current(&self, now: u64) -> Option<(u64, PublicKey)> {
        let e = self.epoch_at(now);
        self.keys.get(&e).map(|s| (e, PublicKey::from(s)))
    }

    /// The secret of `epoch` if it is the current one or still in its grace
    /// period at `now`; what a packet processor asks before it unwraps.
    pub fn secret(&self, epoch: u64, now: u64) -> Option<StaticSecret> {
        let current = self.epoch_at(now);
        let usable = epoch == current
            || (epoch < current
                && (epoch + 1)
                    .saturating_mul(self.epoch_secs)
                    .saturating_add(self.grace_secs)
                    > now);
        if usable {
            self.keys.get(&epoch).cloned()
        } else {
            None
        }
    }

    /// Changes whenever the set of keys does (a rotation added or dropped
    /// one). Why: the node publishes a new key as soon as it is stored, and
    /// a designer or this node's own cover may build packets for it at
    /// once; a packet processor that rebuilt its key ring only on a timer
    /// refused them meanwhile as of an unknown epoch.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Epochs with a stored key.
    pub fn epochs(&self) -> Vec<u64> {
        self.keys.keys().copied().collect()
    }

    /// Writes all keys to the mix-key file (atomically, owner-only).
    pub fn persist(&self) -> Result<(), MixKeyError> {
        let file = StoredFile {
            format: FILE_FORMAT,
            epoch_secs: self.epoch_secs,
            keys: self
                .keys
                .iter()
                .map(|(&epoch, s)| StoredKey {
                    epoch,
                    secret: s.to_bytes(),
                })
                .collect(),
        };
        let bytes = Zeroizing::new(cbor::encode("mix-key file", &file, MAX_FILE_BYTES).map_err(
            |e| MixKeyError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            },
        )?);
        secret_file::write_secret(&self.path, &bytes)?;
        Ok(())
    }
}

/// A shared handle on the node's key store, for the packet processor.
#[derive(Clone)]
pub struct MixKeys(pub(crate) Arc<RwLock<MixKeyStore>>);

impl MixKeys {
    /// See [`MixKeyStore::secret`].
    pub fn secret(&self, epoch: u64, now: u64) -> Option<StaticSecret> {
        self.read(|s| s.secret(epoch, now))
    }

    /// See [`MixKeyStore::current`].
    pub fn current(&self, now: u64) -> Option<(u64, PublicKey)> {
        self.read(|s| s.current(now))
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&MixKeyStore) -> T) -> T {
        f(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut MixKeyStore) -> T) -> T {
        f(&mut self.0.write().unwrap_or_else(|p| p.into_inner()))
    }
}
