//! The pool directory: the newest valid descriptor of each peer.
//!
//! Pure state, no I/O, so its rules are tested without a network. Every
//! entry was verified on the way in (signature, peer id, validity window);
//! the bootstrap adds no trust of its own, which is why clients verify again.
//!
//! Admission is not first come, first served: identities cost nothing, so a
//! publisher with many of them could otherwise fill the directory and lock
//! every later node out. Each entry is charged to the [`Source`] it was
//! published from (the publisher's IP address, an IPv6 /64), a source holds
//! at most `max_per_source` entries, and when the directory is full a new
//! descriptor displaces a random entry of the heaviest source if that
//! source would still hold more entries than the newcomer's (max-min
//! fairness, with no churn between equals): a node publishing from an
//! address not yet listed gets in as long as any address holds two
//! entries, however many identities another address has published. To lock
//! nodes out, an attacker needs as many addresses as the directory holds
//! entries; entries already listed are never displaced by an address that
//! holds as many.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use mixnn_protocol::{DescriptorError, NodeDescriptor, SignedDescriptor};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha20Rng;

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
    /// The peer is new, the directory already holds `max_entries` peers
    /// (the number given) and no source holds two more than the
    /// publisher's.
    #[error("directory is full ({0} entries)")]
    Full(usize),
    /// The publisher's source already holds `max_per_source` entries.
    #[error("source {source_key} already holds {max} entries")]
    SourceFull {
        /// The publisher's source.
        source_key: Source,
        /// Entries a source may hold.
        max: usize,
    },
}

/// Where a publish came from, as the directory charges it: the IPv4
/// address, or the IPv6 /64 (one customer's usual allocation), of the
/// publishing connection. Not the port: one host holds one share.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(String);

impl Source {
    /// The source of a connection from `addr` (its first IP component;
    /// an address without one is a source of its own, by its text).
    pub fn of_addr(addr: &Multiaddr) -> Source {
        for p in addr.iter() {
            match p {
                Protocol::Ip4(ip) => return Source::of_ip(IpAddr::V4(ip)),
                Protocol::Ip6(ip) => return Source::of_ip(IpAddr::V6(ip)),
                _ => {}
            }
        }
        Source(addr.to_string())
    }

    /// The source of an IP address.
    pub fn of_ip(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(v4.to_string()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(v4.to_string()),
                None => {
                    let s = v6.segments();
                    Source(format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How much the directory holds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Peers in all.
    pub max_entries: usize,
    /// Peers published from one [`Source`].
    pub max_per_source: usize,
}

struct Entry {
    signed: SignedDescriptor,
    desc: NodeDescriptor,
    source: Source,
}

/// Descriptors keyed by peer id (base58); the map's order is the order of
/// list pages, so paging is stable while the set does not change.
pub struct Directory {
    entries: BTreeMap<String, Entry>,
    /// Entries per source; a source with none has no key, so the map is
    /// never larger than `entries`.
    per_source: HashMap<Source, usize>,
    limits: Limits,
    rng: ChaCha20Rng,
}

impl Directory {
    /// An empty directory within `limits` (a bound on the memory any
    /// number of publishers can make it use); `seed` drives the choice of
    /// displaced entries (give it OS randomness: a publisher who can
    /// predict it can choose whom it displaces).
    pub fn new(limits: Limits, seed: [u8; 32]) -> Self {
        Self {
            entries: BTreeMap::new(),
            per_source: HashMap::new(),
            limits,
            rng: ChaCha20Rng::from_seed(seed),
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

    /// Entries charged to `source`.
    pub fn held_by(&self, source: &Source) -> usize {
        self.per_source.get(source).copied().unwrap_or(0)
    }

    /// Verifies `signed` at `now` and stores it, charged to `source`,
    /// unless the stored descriptor of that peer is newer. A descriptor
    /// issued in the same second as the stored one replaces it (the node
    /// signed both; the later publish wins).
    pub fn publish(
        &mut self,
        signed: SignedDescriptor,
        now: u64,
        source: Source,
    ) -> Result<NodeDescriptor, PublishError> {
        let desc = signed.verify_at(now)?;
        let moving = match self.entries.get(&desc.peer_id) {
            Some(old) if old.desc.issued_at > desc.issued_at => {
                return Err(PublishError::Stale {
                    stored: old.desc.issued_at,
                    offered: desc.issued_at,
                });
            }
            Some(old) => old.source != source,
            None => true,
        };
        if moving {
            self.admit(&source, now)?;
        }
        *self.per_source.entry(source.clone()).or_insert(0) += 1;
        let entry = Entry {
            signed,
            desc: desc.clone(),
            source,
        };
        if let Some(old) = self.entries.insert(desc.peer_id.clone(), entry) {
            self.uncharge(&old.source);
        }
        Ok(desc)
    }

    /// Makes room for one more entry of `source`, or says why not.
    fn admit(&mut self, source: &Source, now: u64) -> Result<(), PublishError> {
        if self.held_by(source) >= self.limits.max_per_source {
            self.expire(now);
            if self.held_by(source) >= self.limits.max_per_source {
                return Err(PublishError::SourceFull {
                    source_key: source.clone(),
                    max: self.limits.max_per_source,
                });
            }
        }
        if self.entries.len() < self.limits.max_entries {
            return Ok(());
        }
        self.expire(now);
        if self.entries.len() < self.limits.max_entries {
            return Ok(());
        }
        let heaviest = self.per_source.values().copied().max().unwrap_or(0);
        if heaviest <= self.held_by(source) + 1 {
            return Err(PublishError::Full(self.entries.len()));
        }
        let victims: Vec<&String> = self
            .entries
            .iter()
            .filter(|(_, e)| self.held_by(&e.source) == heaviest)
            .map(|(k, _)| k)
            .collect();
        let Some(victim) = victims.get(self.rng.gen_range(0..victims.len().max(1))) else {
            return Err(PublishError::Full(self.entries.len()));
        };
        let victim = (*victim).clone();
        if let Some(old) = self.entries.remove(&victim) {
            self.uncharge(&old.source);
        }
        Ok(())
    }

    fn uncharge(&mut self, source: &Source) {
        if let Some(n) = self.per_source.get_mut(source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(source);
            }
        }
    }

    /// Drops every entry that has expired at `now`; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.desc.expires_at > now);
        if self.entries.len() != before {
            self.per_source.clear();
            for e in self.entries.values() {
                *self.per_source.entry(e.source.clone()).or_insert(0) += 1;
            }
        }
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
