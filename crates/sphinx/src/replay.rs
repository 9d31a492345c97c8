//! The replay cache: per key epoch, the tags of packets already processed.
//!
//! Memory is bounded twice: a tag set lives only as long as its epoch's key
//! (once the key is removed, packets of that epoch are refused as
//! `UnknownEpoch` anyway, so [`ReplayCache::forget_epoch`] drops the set), and
//! each set has a hard cap. At the cap the cache refuses new packets
//! ([`SphinxError::ReplayCacheFull`], counted) instead of forgetting old tags:
//! forgetting would let an attacker flush a tag and replay its packet.

use std::collections::{HashMap, HashSet};

use crate::crypto::{REPLAY_TAG_LEN, ReplayTag};
use crate::error::{Result, SphinxError};

/// Default cap per epoch: 2^22 tags, about 100 MiB at worst with hash-set
/// overhead; at 5,000 packets/s that is 14 minutes of traffic per key.
pub const DEFAULT_MAX_TAGS_PER_EPOCH: usize = 1 << 22;

/// The replay check [`crate::process`] makes once the header's MAC
/// verified: record `tag` for `epoch`, refusing a tag seen before.
///
/// Why a trait: the Diffie-Hellman step and the MAC come first and need no
/// shared state, so a caller that processes packets on several threads
/// passes an implementation that locks its shared cache only inside this
/// call (and may persist what it inserts); a single-threaded caller passes
/// the [`ReplayCache`] itself.
pub trait ReplayCheck {
    /// Records `tag` for `epoch`: `Replay` if it was there already.
    fn check_and_insert(&mut self, epoch: u32, tag: &ReplayTag) -> Result<()>;
}

impl ReplayCheck for ReplayCache {
    fn check_and_insert(&mut self, epoch: u32, tag: &ReplayTag) -> Result<()> {
        ReplayCache::check_and_insert(self, epoch, tag)
    }
}

/// Seen replay tags, by key epoch.
#[derive(Debug)]
pub struct ReplayCache {
    epochs: HashMap<u32, HashSet<[u8; REPLAY_TAG_LEN]>>,
    max_per_epoch: usize,
    refused_full: u64,
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::new(DEFAULT_MAX_TAGS_PER_EPOCH)
    }
}

impl ReplayCache {
    /// A cache holding at most `max_per_epoch` tags for each epoch.
    pub fn new(max_per_epoch: usize) -> Self {
        ReplayCache {
            epochs: HashMap::new(),
            max_per_epoch,
            refused_full: 0,
        }
    }

    /// Records `tag` for `epoch`; `Replay` if it was already there,
    /// `ReplayCacheFull` if the epoch's set is at its cap.
    pub fn check_and_insert(&mut self, epoch: u32, tag: &ReplayTag) -> Result<()> {
        let set = self.epochs.entry(epoch).or_default();
        if set.contains(&tag.0) {
            return Err(SphinxError::Replay);
        }
        if set.len() >= self.max_per_epoch {
            self.refused_full += 1;
            return Err(SphinxError::ReplayCacheFull { epoch });
        }
        set.insert(tag.0);
        Ok(())
    }

    /// Whether `tag` was seen in `epoch`.
    pub fn contains(&self, epoch: u32, tag: &ReplayTag) -> bool {
        self.epochs.get(&epoch).is_some_and(|s| s.contains(&tag.0))
    }

    /// Drops every tag of `epoch` (call when its key leaves the key ring).
    pub fn forget_epoch(&mut self, epoch: u32) {
        self.epochs.remove(&epoch);
    }

    /// Keeps only the epochs for which `keep` is true.
    pub fn retain_epochs(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.epochs.retain(|e, _| keep(*e));
    }

    /// Tags held for `epoch`.
    pub fn len(&self, epoch: u32) -> usize {
        self.epochs.get(&epoch).map_or(0, HashSet::len)
    }

    /// Tags held in all epochs.
    pub fn total_len(&self) -> usize {
        self.epochs.values().map(HashSet::len).sum()
    }

    /// Whether no tag is held.
    pub fn is_empty(&self) -> bool {
        self.total_len() == 0
    }

    /// Records `tag` for `epoch` without the cap (tags read back from a
    /// store the caller bounds itself); whether it was new.
    pub fn restore(&mut self, epoch: u32, tag: &ReplayTag) -> bool {
        self.epochs.entry(epoch).or_default().insert(tag.0)
    }

    /// The cap per epoch.
    pub fn max_per_epoch(&self) -> usize {
        self.max_per_epoch
    }

    /// Epochs with a tag set.
    pub fn epochs(&self) -> Vec<u32> {
        self.epochs.keys().copied().collect()
    }

    /// Packets refused because a set was full, since creation.
    pub fn refused_full(&self) -> u64 {
        self.refused_full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_and_cap() {
        let mut c = ReplayCache::new(2);
        let t = |b: u8| ReplayTag([b; REPLAY_TAG_LEN]);
        c.check_and_insert(1, &t(1)).unwrap();
        assert_eq!(c.check_and_insert(1, &t(1)), Err(SphinxError::Replay));
        c.check_and_insert(2, &t(1)).unwrap();
        c.check_and_insert(1, &t(2)).unwrap();
        assert_eq!(
            c.check_and_insert(1, &t(3)),
            Err(SphinxError::ReplayCacheFull { epoch: 1 })
        );
        assert_eq!(c.check_and_insert(1, &t(2)), Err(SphinxError::Replay));
        assert_eq!(c.refused_full(), 1);
        assert_eq!(c.total_len(), 3);
        c.forget_epoch(1);
        assert_eq!(c.len(1), 0);
        c.retain_epochs(|e| e != 2);
        assert!(c.is_empty());
    }
}
