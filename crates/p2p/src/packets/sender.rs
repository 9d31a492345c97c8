//! The link table: one queue and task per neighbour, started on first use
//! and restarted when its task has ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{mpsc, watch};

use super::link::run_link;
use super::{Budget, SendError, SizeClasses};
use crate::link_metrics::{DropReason, LinkMetrics};
use crate::peer::SwarmHandle;
use crate::setup::QueueLimits;

/// A neighbour's entry in the link table.
struct Link {
    tx: mpsc::Sender<Vec<u8>>,
    /// True while the link's stream is open.
    up: watch::Receiver<bool>,
    /// Reopens as soon as its stream ends (see [`PacketSender::open_link`]);
    /// a restarted link keeps this.
    keep: bool,
}

/// What every link task of a sender shares.
pub(super) struct SenderInner {
    pub(super) control: libp2p_stream::Control,
    pub(super) swarm: SwarmHandle,
    links: Mutex<HashMap<PeerId, Link>>,
    sizes: SizeClasses,
    queue_len: usize,
    pub(super) budget: Arc<Budget>,
    pub(super) metrics: Arc<LinkMetrics>,
    pub(super) stop: watch::Receiver<bool>,
}

/// Queues packets on neighbour links; cheap to clone.
#[derive(Clone)]
pub struct PacketSender(Arc<SenderInner>);

impl PacketSender {
    /// A sender whose links queue up to `limits.packets` each and
    /// `limits.bytes` all together.
    pub fn new(
        control: libp2p_stream::Control,
        swarm: SwarmHandle,
        sizes: SizeClasses,
        limits: QueueLimits,
        metrics: Arc<LinkMetrics>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self(Arc::new(SenderInner {
            control,
            swarm,
            links: Mutex::new(HashMap::new()),
            sizes,
            queue_len: limits.packets,
            budget: Budget::new(limits.bytes),
            metrics,
            stop,
        }))
    }

    /// Queues `packet` for `to`; the link's stream is opened on first use.
    /// Never blocks: a full queue is a counted drop and an error.
    pub fn send(&self, to: PeerId, packet: Vec<u8>) -> Result<(), SendError> {
        let inner = &self.0;
        if *inner.stop.borrow() {
            return Err(SendError::Closed);
        }
        let len = packet.len();
        if !inner.sizes.contains(len) {
            return Err(SendError::BadLength(len));
        }
        if !inner.budget.try_take(len) {
            inner.metrics.drop_packet(DropReason::OutboundQueueFull);
            return Err(SendError::QueueFull(to));
        }
        let mut links = inner.links.lock().unwrap_or_else(|p| p.into_inner());
        let link = self.live_link(&mut links, to, false);
        let result = match link.tx.try_send(packet) {
            // The task ended between the check and the send: once more.
            Err(mpsc::error::TrySendError::Closed(p)) => {
                *link = self.spawn_link(to, link.keep);
                link.tx.try_send(p)
            }
            other => other,
        };
        drop(links);
        match result {
            Ok(()) => {
                inner.metrics.trace.record(true, to, len);
                Ok(())
            }
            Err(_) => {
                inner.budget.give_back(len);
                inner.metrics.drop_packet(DropReason::OutboundQueueFull);
                Err(SendError::QueueFull(to))
            }
        }
    }

    /// Opens the link to `peer` now, without a packet, and waits up to
    /// `wait` for its stream. Why: an open stream keeps the connection up
    /// in both directions, and a peer without a listen address (the
    /// designer) is reachable only over connections it opened; without a
    /// stream the connection is idle and closes after a minute, and packets
    /// coming back to the designer after a long pause would have no way in.
    pub async fn open_link(&self, peer: PeerId, wait: Duration) -> Result<(), SendError> {
        if *self.0.stop.borrow() {
            return Err(SendError::Closed);
        }
        let mut up = {
            let mut links = self.0.links.lock().unwrap_or_else(|p| p.into_inner());
            self.live_link(&mut links, peer, true).up.clone()
        };
        match tokio::time::timeout(wait, up.wait_for(|open| *open)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(SendError::Unreachable(peer)),
        }
    }

    /// The link to `peer`, started, or restarted if its task ended (its
    /// peer was unreachable, or left). `keep` applies to a new link; a
    /// restarted one keeps its own.
    fn live_link<'a>(
        &self,
        links: &'a mut HashMap<PeerId, Link>,
        peer: PeerId,
        keep: bool,
    ) -> &'a mut Link {
        let link = links
            .entry(peer)
            .or_insert_with(|| self.spawn_link(peer, keep));
        if link.tx.is_closed() {
            *link = self.spawn_link(peer, link.keep);
        }
        link
    }

    /// `keep`: reopen the stream as soon as it ends, not at the next packet.
    fn spawn_link(&self, peer: PeerId, keep: bool) -> Link {
        let (tx, rx) = mpsc::channel(self.0.queue_len);
        let (up_tx, up) = watch::channel(false);
        tokio::spawn(run_link(self.0.clone(), peer, rx, up_tx, keep));
        Link { tx, up, keep }
    }
}
