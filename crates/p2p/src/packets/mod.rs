//! Long-lived packet streams between neighbours.
//!
//! Transport choice: `libp2p-stream` (0.5.0-alpha, built against libp2p
//! 0.57). A neighbour link is one yamux stream that stays open for the life
//! of the connection and carries packets back to back, so a packet costs one
//! frame write, not a stream negotiation (request-response opens a stream
//! and runs multistream-select per message, and would frame each packet as
//! a request expecting a reply the mix protocol does not have). The stream
//! runs inside the Noise-encrypted connection, so the frame headers are
//! encrypted too.
//!
//! The pieces, one job each:
//! - [`frame`]: the frame codec (a 4-byte big-endian length, then the
//!   packet). A frame of a wrong length is skipped and the stream stays in
//!   sync (a counted `bad_length` drop), while a length above the largest
//!   class ends the stream (`oversize_frame`), since only a broken or
//!   hostile peer sends it.
//! - [`inbound`]: accepted streams feed one bounded queue (count and bytes)
//!   read through [`PacketInbox`] by whatever processes packets (a node's
//!   Sphinx processor, the designer's reply collector).
//! - [`sender`]: the link table. [`PacketSender::send`] queues a packet on
//!   the neighbour's link task.
//! - [`link`]: one neighbour's link task, which opens the stream on first
//!   use (asking Kademlia for the peer's addresses if it is not known),
//!   writes batches, and reopens the stream after an error.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use libp2p::{PeerId, StreamProtocol};

mod frame;
pub(crate) mod inbound;
mod link;
mod sender;

pub use inbound::PacketInbox;
pub(crate) use inbound::{FRAME_DEADLINE, InboundQueue, start_inbound};
pub use sender::{DEFAULT_MAX_LINKS, PacketSender};

/// The protocol of packet streams.
pub fn protocol() -> StreamProtocol {
    StreamProtocol::new(mixnn_protocol::PACKET_PROTOCOL)
}

/// A packet as it arrived.
#[derive(Debug)]
pub struct InboundPacket {
    /// The neighbour that sent it (authenticated by Noise).
    pub from: PeerId,
    /// The packet bytes (frame header removed); the length is one of the
    /// size classes.
    pub data: Vec<u8>,
}

/// Errors handing a packet to [`PacketSender::send`].
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The packet's length (in bytes) is not one of the [`SizeClasses`];
    /// nothing was queued.
    #[error("packet of {0} bytes is not one of the size classes")]
    BadLength(usize),
    /// The neighbour's packet queue or the shared byte budget is full; the
    /// packet was dropped and counted.
    #[error("the queue to {0} is full (packet dropped)")]
    QueueFull(PeerId),
    /// The peer is stopping; no more packets are accepted.
    #[error("the node is shutting down")]
    Closed,
    /// [`PacketSender::open_link`] saw no stream open to this neighbour
    /// within its wait.
    #[error("no packet stream to {0} could be opened")]
    Unreachable(PeerId),
}

/// The accepted packet lengths.
#[derive(Clone, Debug)]
pub struct SizeClasses(BTreeSet<usize>);

impl SizeClasses {
    /// The set of `sizes` (packet lengths in bytes; duplicates collapse).
    pub fn new(sizes: &[u32]) -> Self {
        Self(sizes.iter().map(|&s| s as usize).collect())
    }
    /// Whether `len` bytes is an accepted packet length.
    pub fn contains(&self, len: usize) -> bool {
        self.0.contains(&len)
    }
    /// The longest accepted length in bytes (0 if there are none); frames
    /// above it end the stream.
    pub fn largest(&self) -> usize {
        self.0.last().copied().unwrap_or(0)
    }
}

/// A byte budget shared by producers and consumers of a queue.
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }
    pub(crate) fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.limit).then_some(u + n)
            })
            .is_ok()
    }
    pub(crate) fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
    /// Takes `n` bytes held by a guard (`None` if there is no room): a
    /// packet being read holds them, and they go back unless it is queued.
    pub(crate) fn hold(&self, n: usize) -> Option<Held<'_>> {
        // Built only once the bytes are taken: a guard gives back on drop.
        self.try_take(n).then(|| Held {
            budget: self,
            len: n,
        })
    }
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes taken from a [`Budget`] for a packet being read: given back on
/// drop (the read failed, was cut at its deadline, or the packet went
/// elsewhere) unless [`Held::keep`] hands them to the queue, which gives
/// them back when the packet is taken off it.
pub(crate) struct Held<'a> {
    budget: &'a Budget,
    len: usize,
}

impl Held<'_> {
    /// The packet is queued: its bytes stay counted.
    pub(crate) fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.len);
    }
}

#[cfg(test)]
mod held_tests {
    use super::*;

    #[test]
    fn a_packet_that_never_arrives_gives_its_budget_back() {
        let budget = Budget::new(100);
        let a = budget.hold(60).expect("room");
        assert!(budget.hold(60).is_none(), "budget full");
        drop(a); // the body failed
        assert_eq!(budget.used(), 0);
        budget.hold(60).expect("room").keep();
        assert_eq!(budget.used(), 60, "a queued packet stays counted");
    }
}
