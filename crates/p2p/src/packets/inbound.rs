//! The inbound side: accepted packet streams, each read by its own task,
//! feed one bounded queue (count and bytes) that the packet processor reads.
//!
//! Bounds against a hostile neighbour: a packet's buffer is allocated only
//! once the byte budget admitted it (see [`super::frame`]), a begun frame
//! must end within [`FRAME_DEADLINE`], and a peer has at most
//! [`MAX_STREAMS_PER_PEER`] packet streams open to this peer at once (the
//! number of peers is bounded by the swarm's connection limits).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use futures::io::AsyncWriteExt as _;
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::frame::{Admission, Frame, ReadError, read_frame};
use super::{Budget, InboundPacket, SizeClasses, protocol};
use crate::link_metrics::{DropReason, LinkMetrics};
use crate::setup::QueueLimits;

/// Buffer that frames of a wrong length are read into and thrown away.
const SKIP_BUFFER: usize = 16 * 1024;
/// How long the rest of a frame may take once its first byte came: a
/// largest-class packet at a slow 40 KiB/s still makes it.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(30);
/// Inbound packet streams one peer may hold open at once (a neighbour needs
/// one; a few allow for reconnects overlapping).
pub const MAX_STREAMS_PER_PEER: usize = 4;

/// The receiving end of the inbound queue: where the packet processor
/// reads. Dropping it makes further packets count as `no_handler` drops.
pub struct PacketInbox {
    rx: mpsc::Receiver<InboundPacket>,
    budget: Arc<Budget>,
    pub(crate) direct: Option<Arc<crate::direct::Direct>>,
}

impl PacketInbox {
    /// The next packet, or `None` once the node has shut down.
    pub async fn recv(&mut self) -> Option<InboundPacket> {
        let p = self.rx.recv().await?;
        self.budget.give_back(p.data.len());
        Some(p)
    }

    /// Hands packets from direct connections to `sink` on their reader
    /// thread instead of queueing them here (a node's hop: no hand-off
    /// between threads); `false` if a sink was set before or the peer has
    /// no direct plane.
    pub fn set_direct_sink(&self, sink: crate::direct::DirectSink) -> bool {
        self.direct.as_ref().is_some_and(|d| d.set_sink(sink))
    }
}

/// What the inbound side shares between stream readers.
#[derive(Clone)]
pub(crate) struct InboundQueue {
    tx: mpsc::Sender<InboundPacket>,
    pub(crate) budget: Arc<Budget>,
    metrics: Arc<LinkMetrics>,
}

impl InboundQueue {
    /// Queues a packet whose length the reader already took from the budget.
    pub(crate) fn push(&self, p: InboundPacket) {
        let (len, from) = (p.data.len(), p.from);
        match self.tx.try_send(p) {
            Ok(()) => self.metrics.count_in(from, len),
            Err(e) => {
                self.budget.give_back(len);
                self.metrics.drop_packet(match e {
                    mpsc::error::TrySendError::Full(_) => DropReason::InboundQueueFull,
                    mpsc::error::TrySendError::Closed(_) => DropReason::NoHandler,
                });
            }
        }
    }
}

/// Creates the inbound queue and starts accepting packet streams; the task
/// ends when `stop` changes. The queue is returned too, for the direct
/// plane to feed.
pub(crate) fn start_inbound(
    mut control: libp2p_stream::Control,
    sizes: SizeClasses,
    limits: QueueLimits,
    metrics: Arc<LinkMetrics>,
    stop: watch::Receiver<bool>,
) -> Result<
    (PacketInbox, tokio::task::JoinHandle<()>, InboundQueue),
    libp2p_stream::AlreadyRegistered,
> {
    let mut incoming = control.accept(protocol())?;
    let (tx, rx) = mpsc::channel(limits.packets);
    let budget = Budget::new(limits.bytes);
    let queue = InboundQueue {
        tx,
        budget: budget.clone(),
        metrics,
    };
    let fed = queue.clone();
    let mut stop_accept = stop.clone();
    let open = StreamCounts::default();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop_accept.changed() => break,
                next = incoming.next() => match next {
                    Some((peer, stream)) => {
                        let Some(slot) = open.take(peer) else {
                            debug!(%peer, "too many packet streams from one peer: refused");
                            drop(stream);
                            continue;
                        };
                        debug!(%peer, "inbound packet stream");
                        let reader = read_stream(peer, stream, sizes.clone(), queue.clone(), stop.clone());
                        tokio::spawn(async move {
                            reader.await;
                            drop(slot);
                        });
                    }
                    None => break,
                },
            }
        }
    });
    let inbox = PacketInbox {
        rx,
        budget,
        direct: None,
    };
    Ok((inbox, task, fed))
}

/// Open inbound streams per peer; an entry leaves when its count is zero.
#[derive(Clone, Default)]
struct StreamCounts(Arc<Mutex<HashMap<PeerId, usize>>>);

/// One open stream of a peer in [`StreamCounts`]; released on drop.
struct StreamSlot {
    counts: StreamCounts,
    peer: PeerId,
}

impl StreamCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one more stream of `peer`, unless it holds the maximum.
    fn take(&self, peer: PeerId) -> Option<StreamSlot> {
        let mut counts = self.lock();
        let n = counts.entry(peer).or_default();
        if *n >= MAX_STREAMS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            counts: self.clone(),
            peer,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// Reads one inbound stream into the queue until it ends, breaks, sends an
/// oversize frame, or `stop` changes.
async fn read_stream(
    peer: PeerId,
    mut stream: Stream,
    sizes: SizeClasses,
    queue: InboundQueue,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = queue.metrics.clone();
    metrics.streams_inbound.fetch_add(1, Ordering::Relaxed);
    let reading = async {
        let mut scratch = vec![0u8; SKIP_BUFFER];
        let admit = Admission {
            budget: &queue.budget,
            deadline: FRAME_DEADLINE,
        };
        loop {
            match read_frame(&mut stream, &sizes, &mut scratch, &admit).await {
                Ok(Frame::Packet(data)) => queue.push(InboundPacket { from: peer, data }),
                Ok(Frame::Refused(_)) => metrics.drop_packet(DropReason::InboundQueueFull),
                Ok(Frame::Skipped(len)) => {
                    metrics.drop_packet(DropReason::BadLength);
                    debug!(%peer, len, "dropped a frame of a length that is no size class");
                }
                Ok(Frame::Oversize(len)) => {
                    metrics.drop_packet(DropReason::OversizeFrame);
                    warn!(%peer, len, "frame longer than the largest size class: closing the stream");
                    return;
                }
                Err(ReadError::Closed(e)) => {
                    if e.kind() != std::io::ErrorKind::UnexpectedEof {
                        debug!(%peer, error = %e, "packet stream read");
                    }
                    return;
                }
                Err(ReadError::Truncated(e)) => {
                    debug!(%peer, error = %e, "packet stream ended inside a frame");
                    return;
                }
                Err(ReadError::Stalled) => {
                    metrics.drop_packet(DropReason::StalledFrame);
                    info!(%peer, "frame not finished within the deadline: closing the stream");
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = stop.changed() => {}
        _ = reading => {}
    }
    let _ = stream.close().await;
    metrics.streams_inbound.fetch_sub(1, Ordering::Relaxed);
}
