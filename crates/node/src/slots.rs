//! Send slots (Loopix-style mixing for an observer of every link): with
//! `slot_ms` set, this node sends one packet per neighbour per slot, at a
//! steady rate and staggered phases, and a real packet of the slot class
//! waits for its link's next slot, where it takes the place of the cover
//! packet that would have gone out. An observer of the links sees the same
//! rate on every link whether or not a job runs, and the packet that leaves
//! a node first after one arrived goes to any neighbour, not the next hop.
//!
//! This module is the queue the packet shell puts real packets in; the
//! cover task (`cover::slots`) drains it, one slot at a time. Bounded:
//! a link table of [`MAX_LINKS`] peers and [`MAX_PER_LINK`] packets per
//! link; beyond that a packet goes out at once (counted as a bypass).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use libp2p::PeerId;

/// Peers with real packets waiting, at most.
pub const MAX_LINKS: usize = 1024;
/// Real packets waiting per link, at most.
pub const MAX_PER_LINK: usize = 256;

/// Real packets waiting for their link's next slot.
#[derive(Debug)]
pub struct SlotQueue {
    /// Packet length of the slot class: only packets of this length wait.
    packet_len: usize,
    queues: Mutex<HashMap<PeerId, VecDeque<Vec<u8>>>>,
    /// Packets sent at once because they were of another class or no
    /// room was left.
    pub bypassed: AtomicU64,
}

impl SlotQueue {
    /// A queue for packets of `packet_len` bytes.
    pub fn new(packet_len: usize) -> Self {
        SlotQueue {
            packet_len,
            queues: Mutex::new(HashMap::new()),
            bypassed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, VecDeque<Vec<u8>>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The packet length slots carry.
    pub fn packet_len(&self) -> usize {
        self.packet_len
    }

    /// Queues `bytes` for `to`'s next slot; gives them back when they must
    /// go out at once (another class, or no room).
    pub fn push(&self, to: PeerId, bytes: Vec<u8>) -> Option<Vec<u8>> {
        let mut q = self.lock();
        let room = q.contains_key(&to) || q.len() < MAX_LINKS;
        if bytes.len() != self.packet_len || !room {
            self.bypassed.fetch_add(1, Ordering::Relaxed);
            return Some(bytes);
        }
        let link = q.entry(to).or_default();
        if link.len() >= MAX_PER_LINK {
            self.bypassed.fetch_add(1, Ordering::Relaxed);
            return Some(bytes);
        }
        link.push_back(bytes);
        None
    }

    /// The next real packet for `to`, if one waits.
    pub fn pop(&self, to: &PeerId) -> Option<Vec<u8>> {
        let mut q = self.lock();
        let link = q.get_mut(to)?;
        let p = link.pop_front();
        if link.is_empty() {
            q.remove(to);
        }
        p
    }

    /// Peers with real packets waiting.
    pub fn waiting(&self) -> Vec<PeerId> {
        self.lock().keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_slot_class_waits_and_links_are_bounded() {
        let q = SlotQueue::new(10);
        let a = PeerId::random();
        assert_eq!(q.push(a, vec![0; 9]), Some(vec![0; 9]), "another class");
        for i in 0..MAX_PER_LINK {
            assert_eq!(q.push(a, vec![i as u8; 10]), None);
        }
        assert!(q.push(a, vec![1; 10]).is_some(), "link full");
        assert_eq!(q.pop(&a), Some(vec![0; 10]), "first in, first out");
        assert_eq!(q.waiting(), vec![a]);
        for _ in 0..MAX_LINKS {
            let _ = q.push(PeerId::random(), vec![0; 10]);
        }
        assert!(q.lock().len() <= MAX_LINKS);
    }
}
