//! The pool directory: the newest valid descriptor of each peer.
//!
//! Pure state, no I/O, so its rules are tested without a network. Every
//! entry was verified on the way in (signature, peer id, validity window);
//! the bootstrap adds no trust of its own, which is why clients verify again.

use std::collections::BTreeMap;

use mixnn_protocol::{DescriptorError, NodeDescriptor, SignedDescriptor};

/// Why a publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The descriptor does not verify (signature, peer id or validity window).
    #[error("invalid descriptor: {0}")]
    Invalid(#[from] DescriptorError),
    /// The directory holds a newer descriptor of that peer.
    #[error("older than the stored descriptor (issued at {stored}, this one at {offered})")]
    Stale {
        /// Issue time (Unix seconds) of the stored descriptor.
        stored: u64,
        /// Issue time (Unix seconds) of the refused one.
        offered: u64,
    },
    /// The peer is new but the directory already holds `max_entries` peers
    /// (the number given).
    #[error("directory is full ({0} entries)")]
    Full(usize),
}

struct Entry {
    signed: SignedDescriptor,
    desc: NodeDescriptor,
}

/// Descriptors keyed by peer id (base58); the map's order is the order of
/// list pages, so paging is stable while the set does not change.
pub struct Directory {
    entries: BTreeMap<String, Entry>,
    max_entries: usize,
}

impl Directory {
    /// An empty directory holding at most `max_entries` peers: a bound on
    /// the memory any number of publishers can make it use.
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            max_entries,
        }
    }

    /// Number of peers with a stored descriptor.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no descriptor is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Verifies `signed` at `now` and stores it unless the stored descriptor
    /// of that peer is newer. A descriptor issued in the same second as the
    /// stored one replaces it (the node signed both; the later publish wins).
    pub fn publish(
        &mut self,
        signed: SignedDescriptor,
        now: u64,
    ) -> Result<NodeDescriptor, PublishError> {
        let desc = signed.verify_at(now)?;
        if let Some(old) = self.entries.get(&desc.peer_id) {
            if old.desc.issued_at > desc.issued_at {
                return Err(PublishError::Stale {
                    stored: old.desc.issued_at,
                    offered: desc.issued_at,
                });
            }
        } else if self.entries.len() >= self.max_entries {
            self.expire(now);
            if self.entries.len() >= self.max_entries {
                return Err(PublishError::Full(self.entries.len()));
            }
        }
        self.entries.insert(
            desc.peer_id.clone(),
            Entry {
                signed,
                desc: desc.clone(),
            },
        );
        Ok(desc)
    }

    /// Drops every entry that has expired at `now`; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.desc.expires_at > now);
        before - self.entries.len()
    }

    /// Entries still valid at `now`, in peer-id order, from `offset`, at most
    /// `limit`; and the number of valid entries in total.
    pub fn list(&self, offset: usize, limit: usize, now: u64) -> (Vec<SignedDescriptor>, usize) {
        let valid = self.entries.values().filter(|e| e.desc.expires_at > now);
        let total = valid.clone().count();
        let page = valid
            .skip(offset)
            .take(limit)
            .map(|e| e.signed.clone())
            .collect();
        (page, total)
    }

    /// The stored descriptor of `peer_id`, if any.
    pub fn get(&self, peer_id: &str) -> Option<&NodeDescriptor> {
        self.entries.get(peer_id).map(|e| &e.desc)
    }
}
