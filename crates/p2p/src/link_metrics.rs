//! Counters of the packet links, shared by every peer that carries packets
//! (a node, the designer).
//!
//! Plain atomics: the node renders them in its Prometheus endpoint, the
//! designer reads them into its report. Lengths are counted per distinct
//! value because "every packet of a job has one length" is a property
//! operators and tests want to see directly.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why the link layer dropped a packet. Every drop is counted under one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A frame whose length is not one of the size classes (skipped; the
    /// stream goes on).
    BadLength,
    /// A frame longer than the largest class: the stream is closed, since
    /// reading it would mean allocating what the peer asks for.
    OversizeFrame,
    /// The handler's queue was full (count or bytes).
    InboundQueueFull,
    /// No handler is attached (the inbox was dropped).
    NoHandler,
    /// The outbound queue of a neighbour was full (count or bytes).
    OutboundQueueFull,
    /// Writing to the neighbour's stream failed.
    StreamError,
    /// No stream could be opened to the neighbour.
    NoRoute,
    /// A frame began but did not end within the frame deadline: the stream
    /// is closed.
    StalledFrame,
    /// The link table is full of busy links: no link to a new neighbour.
    LinkTableFull,
}

impl DropReason {
    /// Every reason once, in the order of the drop counters (for rendering
    /// all labels, including zero ones).
    pub const ALL: [DropReason; 9] = [
        Self::BadLength,
        Self::OversizeFrame,
        Self::InboundQueueFull,
        Self::NoHandler,
        Self::OutboundQueueFull,
        Self::StreamError,
        Self::NoRoute,
        Self::StalledFrame,
        Self::LinkTableFull,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::BadLength => "bad_length",
            Self::OversizeFrame => "oversize_frame",
            Self::InboundQueueFull => "inbound_queue_full",
            Self::NoHandler => "no_handler",
            Self::OutboundQueueFull => "outbound_queue_full",
            Self::StreamError => "stream_error",
            Self::NoRoute => "no_route",
            Self::StalledFrame => "stalled_frame",
            Self::LinkTableFull => "link_table_full",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|&r| r == self).unwrap_or(0)
    }
}

/// Packet-link counters; shared through an `Arc`.
#[derive(Default)]
pub struct LinkMetrics {
    /// Packets received and handed to the handler's queue.
    pub packets_in: AtomicU64,
    /// Packets written to a neighbour's stream.
    pub packets_out: AtomicU64,
    /// Of `packets_out`, those written on a direct connection
    /// ([`crate::direct`]) rather than a libp2p stream.
    pub direct_out: AtomicU64,
    /// Bytes of the packets counted in `packets_in` (packet bytes, not
    /// framing).
    pub bytes_in: AtomicU64,
    /// Bytes of the packets counted in `packets_out` (packet bytes, not
    /// framing).
    pub bytes_out: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    /// Packet streams opened by peers and open now (a gauge).
    pub streams_inbound: AtomicU64,
    /// Packet streams this peer opened and holds now (a gauge).
    pub streams_outbound: AtomicU64,
    /// Peers with at least one open connection now (a gauge).
    pub peers_connected: AtomicU64,
    /// Packets received and sent, by wire length.
    lengths: Mutex<BTreeMap<usize, u64>>,
    /// The observer's view of this peer's links (opt-in, off by default).
    pub trace: crate::link_trace::LinkTrace,
}

impl LinkMetrics {
    /// Counts one packet dropped for `reason`.
    pub fn drop_packet(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Packets dropped for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    /// Reads one of the public counters (relaxed load).
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a packet received from `from` (counters, lengths, trace).
    pub(crate) fn count_in(&self, from: libp2p::PeerId, len: usize) {
        self.packets_in.fetch_add(1, Ordering::Relaxed);
        self.count_length(len, 1);
        self.trace.record(false, from, len);
        self.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Counts a packet written to `to` on a direct link (counters,
    /// lengths, trace).
    pub(crate) fn count_out(&self, to: libp2p::PeerId, len: usize) {
        self.packets_out.fetch_add(1, Ordering::Relaxed);
        self.direct_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
        self.count_length(len, 1);
        self.trace.record(true, to, len);
    }

    pub(crate) fn count_length(&self, len: usize, n: u64) {
        let mut m = self.lengths.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(len).or_default() += n;
    }

    /// Packets received or sent so far, by wire length.
    pub fn lengths(&self) -> BTreeMap<usize, u64> {
        self.lengths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
