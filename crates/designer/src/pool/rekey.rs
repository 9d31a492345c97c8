//! Key refresh during a job: a node rotates its mix key every epoch and
//! drops the old one a grace period later, so a job that outlives an epoch
//! must build its headers with each hop's new key.
//!
//! From the end of a hop's key epoch on, before each message, the designer
//! reads the directory again (the same quorum, at most once a second) and
//! takes the hop's newer descriptor as soon as a quorum serves it; the old
//! key still works meanwhile (grace). After a message is lost it reads at
//! once, so the error says whether a rotation was the cause. A lost message
//! is not resent: a training step applied twice would break exactness.

use std::time::{Duration, Instant};

use mixnn_protocol::NodeDescriptor;
use mixnn_sphinx::MixPublicKey;

use super::PoolCascade;
use super::onion::Hop;

/// Least time between two directory reads for key refresh.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What the designer knows of its hops' key schedules.
pub(super) struct KeyWatch {
    quorum: usize,
    /// Epoch length of each hop's key, as its descriptor says.
    epoch_secs: Vec<u64>,
    last_read: Option<Instant>,
}

impl KeyWatch {
    /// The schedules of `hops`, from the descriptors they were chosen from.
    pub fn new(hops: &[Hop], pool: &[NodeDescriptor], quorum: usize) -> KeyWatch {
        let epoch_secs = hops
            .iter()
            .map(|h| {
                pool.iter()
                    .find(|d| d.identity_key == h.node.0)
                    .map_or(u64::MAX, |d| d.mix_key.epoch_secs)
            })
            .collect();
        KeyWatch {
            quorum,
            epoch_secs,
            last_read: None,
        }
    }

    /// Hop `t` is now served by a node whose key epochs last `epoch_secs`
    /// (a repair replaced it).
    pub fn replace(&mut self, t: usize, epoch_secs: u64) {
        if let Some(e) = self.epoch_secs.get_mut(t) {
            *e = epoch_secs;
        }
    }

    /// Whether some hop's key epoch has ended at `now` (unix seconds).
    fn due(&self, hops: &[Hop], now: u64) -> bool {
        hops.iter()
            .zip(&self.epoch_secs)
            .any(|(h, &len)| u64::from(h.epoch).saturating_add(1).saturating_mul(len) <= now)
    }
}

impl PoolCascade {
    /// Takes the newer mix keys a quorum of bootstraps serve for hops whose
    /// key epoch has ended (`force`: read now, whatever the schedule);
    /// returns how many hops got a new key.
    pub(super) fn refresh_keys(&mut self, force: bool) -> usize {
        let now = mixnn_p2p::unix_now();
        let recent = self
            .keys
            .last_read
            .is_some_and(|t| t.elapsed() < MIN_INTERVAL);
        if !force && (recent || !self.keys.due(&self.hops, now)) {
            return 0;
        }
        self.keys.last_read = Some(Instant::now());
        let read = self.ep.read_directory(self.keys.quorum);
        if read.answered < read.quorum {
            tracing::warn!(
                answered = read.answered,
                quorum = read.quorum,
                "key refresh: too few bootstraps answered"
            );
            return 0;
        }
        let mut updated = 0;
        for (h, len) in self.hops.iter_mut().zip(&mut self.keys.epoch_secs) {
            let Some(d) = read.nodes.iter().find(|d| d.identity_key == h.node.0) else {
                continue;
            };
            if d.mix_key.epoch <= u64::from(h.epoch) {
                continue;
            }
            match (
                MixPublicKey::from_bytes(d.mix_key.public),
                u32::try_from(d.mix_key.epoch),
            ) {
                (Ok(key), Ok(epoch)) => {
                    tracing::info!(peer = %h.peer, epoch, "hop's mix key refreshed");
                    h.mix_key = key;
                    h.epoch = epoch;
                    *len = d.mix_key.epoch_secs;
                    updated += 1;
                }
                _ => tracing::warn!(peer = %h.peer, "key refresh: unusable mix key"),
            }
        }
        self.net.key_refreshes += updated as u64;
        updated
    }
}
