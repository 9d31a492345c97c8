//! The link table: one queue and task per neighbour, started on first use
//! and restarted when its task has ended.
//!
//! The next hop of a packet is chosen by whoever built it, so the table is
//! keyed by outside data: it holds at most [`SenderInner::max_links`] links
//! ([`DEFAULT_MAX_LINKS`] unless the operator sets another), and a link to
//! a new neighbour at the limit evicts the least recently used link that is
//! not kept ([`PacketSender::open_link`]) and not carrying packets over an
//! open stream; if every link is busy, the packet is a counted
//! `link_table_full` drop. DHT lookups for unknown peers are bounded too
//! (at most [`MAX_LOOKUPS`] at once; a link that finds none free gives up
//! as `no_route`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::{Semaphore, mpsc, watch};

use super::link::run_link;
use super::{Budget, SendError, SizeClasses};
use crate::direct::Direct;
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
    /// When a packet or [`PacketSender::open_link`] last used the link.
    used: Instant,
}

/// Links a sender holds unless told otherwise ([`PacketSender::set_max_links`]).
pub const DEFAULT_MAX_LINKS: usize = 1024;
/// DHT lookups for unknown neighbours running at once, per sender.
pub const MAX_LOOKUPS: usize = 8;

impl Link {
    /// Whether evicting the link loses nothing a neighbour relies on: not
    /// kept, and its task ended, or its queue is empty, or its stream never
    /// opened (a next hop that does not answer).
    fn evictable(&self) -> bool {
        !self.keep
            && (self.tx.is_closed()
                || self.tx.capacity() == self.tx.max_capacity()
                || !*self.up.borrow())
    }
}

/// What every link task of a sender shares.
pub(super) struct SenderInner {
    pub(super) control: libp2p_stream::Control,
    pub(super) swarm: SwarmHandle,
    links: Mutex<HashMap<PeerId, Link>>,
    /// Most links in the table.
    max_links: AtomicUsize,
    /// Permits for DHT lookups of unknown neighbours.
    pub(super) lookups: Semaphore,
    sizes: SizeClasses,
    queue_len: usize,
    pub(super) budget: Arc<Budget>,
    pub(super) metrics: Arc<LinkMetrics>,
    pub(super) stop: watch::Receiver<bool>,
    /// The direct plane, tried before the libp2p link.
    direct: Option<Arc<Direct>>,
}

/// Queues packets on neighbour links; cheap to clone.
#[derive(Clone)]
pub struct PacketSender(Arc<SenderInner>);

impl PacketSender {
    /// A sender whose links queue up to `limits.packets` each and
    /// `limits.bytes` all together; packets go over `direct` connections
    /// where there are some.
    pub(crate) fn new(
        control: libp2p_stream::Control,
        swarm: SwarmHandle,
        sizes: SizeClasses,
        limits: QueueLimits,
        metrics: Arc<LinkMetrics>,
        stop: watch::Receiver<bool>,
        direct: Option<Arc<Direct>>,
    ) -> Self {
        Self(Arc::new(SenderInner {
            control,
            swarm,
            links: Mutex::new(HashMap::new()),
            max_links: AtomicUsize::new(DEFAULT_MAX_LINKS),
            lookups: Semaphore::new(MAX_LOOKUPS),
            sizes,
            queue_len: limits.packets,
            budget: Budget::new(limits.bytes),
            metrics,
            stop,
            direct,
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
        if let Some(direct) = &inner.direct {
            match direct.link(&to) {
                Some(link) => match link.send(&packet) {
                    Ok(()) => {
                        inner.metrics.count_out(to, len);
                        return Ok(());
                    }
                    // The packet goes the libp2p way below.
                    Err(_) => direct.failed(&link),
                },
                None => direct.ensure(to),
            }
        }
        if !inner.budget.try_take(len) {
            inner.metrics.drop_packet(DropReason::OutboundQueueFull);
            return Err(SendError::QueueFull(to));
        }
        let mut links = inner.links.lock().unwrap_or_else(|p| p.into_inner());
        let Some(link) = self.live_link(&mut links, to, false) else {
            drop(links);
            inner.budget.give_back(len);
            inner.metrics.drop_packet(DropReason::LinkTableFull);
            return Err(SendError::QueueFull(to));
        };
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
        if let Some(direct) = &self.0.direct
            && direct.link(&peer).is_none()
        {
            direct.ensure(peer);
        }
        let mut up = {
            let mut links = self.0.links.lock().unwrap_or_else(|p| p.into_inner());
            match self.live_link(&mut links, peer, true) {
                Some(link) => {
                    link.keep = true;
                    link.up.clone()
                }
                None => return Err(SendError::Unreachable(peer)),
            }
        };
        match tokio::time::timeout(wait, up.wait_for(|open| *open)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(SendError::Unreachable(peer)),
        }
    }

    /// Whether the link to `peer` has its stream open now, and a watch of
    /// it (`None`: no link to `peer` in the table). The watch's sender is
    /// dropped when the link's task ends (its peer became unreachable), so
    /// a closed watch means a dead link. Why: the designer holds a kept
    /// link to each end of its cascade, and a peer that stops or dies
    /// closes the connection under it; watching the link lets a pending
    /// answer fail at once instead of after the detection bound.
    pub fn link_up(&self, peer: PeerId) -> Option<watch::Receiver<bool>> {
        let links = self.0.links.lock().unwrap_or_else(|p| p.into_inner());
        links.get(&peer).map(|l| l.up.clone())
    }

    /// Whether a direct connection to `peer` carries packets now (see
    /// [`crate::direct`]).
    pub fn direct_up(&self, peer: &PeerId) -> bool {
        self.0
            .direct
            .as_ref()
            .is_some_and(|d| d.link(peer).is_some())
    }

    /// The port this peer takes direct connections on, if it does.
    pub fn direct_port(&self) -> Option<u16> {
        self.0.direct.as_ref().and_then(|d| d.port())
    }

    /// Links to at most `n` neighbours from now on (at least one); links
    /// over the new limit leave as they become evictable.
    pub fn set_max_links(&self, n: usize) {
        self.0.max_links.store(n.max(1), Ordering::Relaxed);
    }

    /// Links in the table now (a gauge for operators and tests).
    pub fn link_count(&self) -> usize {
        self.0.links.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The link to `peer`, started, or restarted if its task ended (its
    /// peer was unreachable, or left); `None` if the table is full and no
    /// link can be evicted. `keep` applies to a new link; a restarted one
    /// keeps its own.
    fn live_link<'a>(
        &self,
        links: &'a mut HashMap<PeerId, Link>,
        peer: PeerId,
        keep: bool,
    ) -> Option<&'a mut Link> {
        if !links.contains_key(&peer) && !self.make_room(links) {
            return None;
        }
        let link = links
            .entry(peer)
            .or_insert_with(|| self.spawn_link(peer, keep));
        if link.tx.is_closed() {
            *link = self.spawn_link(peer, link.keep);
        }
        link.used = Instant::now();
        Some(link)
    }

    /// Evicts links until one more fits: the least recently used evictable
    /// one each time. An evicted link's task ends once its queue is empty.
    fn make_room(&self, links: &mut HashMap<PeerId, Link>) -> bool {
        let max = self.0.max_links.load(Ordering::Relaxed);
        while links.len() >= max {
            let oldest = links
                .iter()
                .filter(|(_, l)| l.evictable())
                .min_by_key(|(_, l)| l.used)
                .map(|(p, _)| *p);
            match oldest {
                Some(p) => {
                    links.remove(&p);
                }
                None => return false,
            }
        }
        true
    }

    /// `keep`: reopen the stream as soon as it ends, not at the next packet.
    fn spawn_link(&self, peer: PeerId, keep: bool) -> Link {
        let (tx, rx) = mpsc::channel(self.0.queue_len);
        let (up_tx, up) = watch::channel(false);
        tokio::spawn(run_link(self.0.clone(), peer, rx, up_tx, keep));
        Link {
            tx,
            up,
            keep,
            used: Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::behaviour::Role;
    use crate::setup::{PeerSetup, start_pool_peer};

    /// A flood of packets, each naming a fresh next hop (the builder of a
    /// packet chooses it): the link table never holds more than its limit,
    /// and the drops are counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_chosen_next_hops_keeps_the_link_table_bounded() {
        let (_stop_tx, stop) = watch::channel(false);
        let metrics = Arc::new(LinkMetrics::default());
        let peer = start_pool_peer(PeerSetup {
            keypair: libp2p::identity::Keypair::generate_ed25519(),
            role: Role::Client,
            listen: &[],
            settle: None,
            bootstraps: &[],
            sizes: SizeClasses::new(&[64]),
            inbound: QueueLimits {
                packets: 16,
                bytes: 1 << 20,
            },
            outbound: QueueLimits {
                packets: 4,
                bytes: 1 << 20,
            },
            metrics: metrics.clone(),
            stop,
            direct: true,
        })
        .await
        .unwrap();
        const LIMIT: usize = 16;
        peer.sender.set_max_links(LIMIT);
        for _ in 0..2000 {
            let _ = peer.sender.send(PeerId::random(), vec![0; 64]);
            assert!(peer.sender.link_count() <= LIMIT);
        }
        assert_eq!(peer.sender.link_count(), LIMIT);
    }
}
