//! The cover side of send slots ([`crate::slots`]): one packet per pool
//! neighbour per slot, staggered so the links' slots do not fall together.
//! A slot carries the link's waiting real packet, else a one-hop cover drop
//! of the slot class (only the neighbour, its end, knows it is cover).
//! Real packets for peers outside the pool (the designer) go out at the
//! next step. The slot period is stretched to fit the cover byte budget.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mixnn_sphinx::Geometry;
use rand::rngs::OsRng;
use tracing::debug;

use super::packet::{self, Kind};
use super::{Cover, CoverError};
use crate::config::NodeConfig;
use crate::hop::peer_of;
use crate::slots::SlotQueue;

/// Neighbours that get slots at most (the pool view may be larger).
pub const MAX_SLOT_NEIGHBOURS: usize = 64;

/// The slots of one node.
pub(super) struct Slots {
    pub queue: Arc<SlotQueue>,
    /// `slot_ms`: the period of each link's slots, at least.
    pub period: Duration,
    pub class: usize,
    pub budget: u64,
    /// The neighbour whose slot is next.
    pub next: usize,
}

/// The slot queue of `cfg` (`None`: slots off) and its payload class: the
/// configured `slot_class` if it is a public class, else the smallest one.
pub fn queue(g: &Geometry, cfg: &NodeConfig) -> Option<(Arc<SlotQueue>, usize)> {
    if cfg.slot_ms == 0 {
        return None;
    }
    let public: Vec<usize> = (g.size_classes().iter().copied())
        .filter(|&c| {
            let len = g.packet_len(c).ok().and_then(|l| u32::try_from(l).ok());
            len.is_some_and(|l| cfg.packet_sizes.contains(&l))
        })
        .collect();
    let wanted = cfg.slot_class as usize;
    let class = Some(wanted)
        .filter(|c| public.contains(c))
        .or(public.iter().copied().min())?;
    let len = g.packet_len(class).ok()?;
    Some((Arc::new(SlotQueue::new(len)), class))
}

impl Cover {
    /// One slot: the next neighbour in turn gets its waiting real packet or
    /// a cover drop. Returns the time to the next slot.
    pub(super) fn slot_step(&mut self) -> Duration {
        let Some(s) = self.slots.as_mut() else {
            return Duration::from_secs(1);
        };
        let n = self.pool.len().min(MAX_SLOT_NEIGHBOURS);
        let neighbours: Vec<_> = (self.pool.iter().take(n))
            .filter_map(|h| Some((*h, peer_of(&h.id)?)))
            .collect();
        for peer in s.queue.waiting() {
            if neighbours.iter().all(|(_, p)| *p != peer) {
                while let Some(b) = s.queue.pop(&peer) {
                    if let Err(e) = self.links.sender.send(peer, b) {
                        debug!(%peer, error = %e, "slot: sending failed");
                    }
                }
            }
        }
        let len = s.queue.packet_len() as u64;
        let need =
            Duration::from_micros((n as u64 * len).saturating_mul(1_000_000) / s.budget.max(1));
        let step = s.period.max(need) / u32::try_from(n.max(1)).unwrap_or(1);
        let Some((hop, peer)) = neighbours.get(s.next % neighbours.len().max(1)).copied() else {
            return step;
        };
        s.next = (s.next + 1) % neighbours.len();
        let sent = match s.queue.pop(&peer) {
            Some(real) => self.links.sender.send(peer, real).map_err(CoverError::from),
            None => packet::build(
                &self.links.geometry,
                &[hop],
                Kind::Drop,
                s.class,
                &mut OsRng,
            )
            .and_then(|(b, _)| Ok(self.links.sender.send(peer, b)?))
            .map(|()| {
                (self.links.metrics.cover_drops_sent).fetch_add(1, Ordering::Relaxed);
            }),
        };
        if let Err(e) = sent {
            debug!(%peer, error = %e, "slot: packet not sent");
        }
        step
    }
}
