//! The inbound side: accepted packet streams, each read by its own task,
//! feed one bounded queue (count and bytes) that the packet processor reads.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt as _;
use futures::io::AsyncWriteExt as _;
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::frame::{Frame, ReadError, read_frame};
use super::{Budget, InboundPacket, SizeClasses, protocol};
use crate::link_metrics::{DropReason, LinkMetrics};
use crate::setup::QueueLimits;

/// Buffer that frames of a wrong length are read into and thrown away.
const SKIP_BUFFER: usize = 16 * 1024;

/// The receiving end of the inbound queue: where the packet processor
/// reads. Dropping it makes further packets count as `no_handler` drops.
pub struct PacketInbox {
    rx: mpsc::Receiver<InboundPacket>,
    budget: Arc<Budget>,
}

impl PacketInbox {
    /// The next packet, or `None` once the node has shut down.
    pub async fn recv(&mut self) -> Option<InboundPacket> {
        let p = self.rx.recv().await?;
        self.budget.give_back(p.data.len());
        Some(p)
    }
}

/// What the inbound side shares between stream readers.
#[derive(Clone)]
struct InboundQueue {
    tx: mpsc::Sender<InboundPacket>,
    budget: Arc<Budget>,
    metrics: Arc<LinkMetrics>,
}

impl InboundQueue {
    fn push(&self, p: InboundPacket) {
        let (len, from) = (p.data.len(), p.from);
        if !self.budget.try_take(len) {
            self.metrics.drop_packet(DropReason::InboundQueueFull);
            return;
        }
        match self.tx.try_send(p) {
            Ok(()) => {
                self.metrics.packets_in.fetch_add(1, Ordering::Relaxed);
                self.metrics.count_length(len, 1);
                self.metrics.trace.record(false, from, len);
                self.metrics
                    .bytes_in
                    .fetch_add(len as u64, Ordering::Relaxed);
            }
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
/// ends when `stop` changes.
pub fn start_inbound(
    mut control: libp2p_stream::Control,
    sizes: SizeClasses,
    limits: QueueLimits,
    metrics: Arc<LinkMetrics>,
    stop: watch::Receiver<bool>,
) -> Result<(PacketInbox, tokio::task::JoinHandle<()>), libp2p_stream::AlreadyRegistered> {
    let mut incoming = control.accept(protocol())?;
    let (tx, rx) = mpsc::channel(limits.packets);
    let budget = Budget::new(limits.bytes);
    let queue = InboundQueue {
        tx,
        budget: budget.clone(),
        metrics,
    };
    let mut stop_accept = stop.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop_accept.changed() => break,
                next = incoming.next() => match next {
                    Some((peer, stream)) => {
                        debug!(%peer, "inbound packet stream");
                        let reader = read_stream(peer, stream, sizes.clone(), queue.clone(), stop.clone());
                        tokio::spawn(reader);
                    }
                    None => break,
                },
            }
        }
    });
    Ok((PacketInbox { rx, budget }, task))
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
        loop {
            match read_frame(&mut stream, &sizes, &mut scratch).await {
                Ok(Frame::Packet(data)) => queue.push(InboundPacket { from: peer, data }),
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
