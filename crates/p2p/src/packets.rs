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
//! Frame: a 4-byte big-endian length, then the packet. Every packet has one
//! of the configured lengths (the public size classes); the prefix lets the
//! receiver skip a frame of a wrong length and stay in sync (a counted
//! `bad_length` drop), while a length above the largest class ends the
//! stream (`oversize_frame`), since only a broken or hostile peer sends it.
//!
//! Inbound packets go into one bounded queue (count and bytes) read through
//! [`PacketInbox`] by whatever processes packets (a node's Sphinx
//! processor, the designer's reply collector). Outbound, [`PacketSender::send`] queues a packet on the
//! neighbour's link task, which opens the stream on first use (asking
//! Kademlia for the peer's addresses if it is not known) and reopens it
//! after an error.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use futures::io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::link_metrics::{DropReason, LinkMetrics};
use crate::peer::SwarmHandle;

/// The protocol of packet streams.
pub fn protocol() -> StreamProtocol {
    StreamProtocol::new(mixnn_protocol::PACKET_PROTOCOL)
}

/// How long opening a stream (dial included) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before reopening a stream that broke.
const REOPEN_BACKOFF: Duration = Duration::from_millis(200);
/// Write buffer per outbound stream: a few small packets per syscall.
const WRITE_BUFFER: usize = 64 * 1024;

/// A packet as it arrived.
#[derive(Debug)]
pub struct InboundPacket {
    /// The neighbour that sent it (authenticated by Noise).
    pub from: PeerId,
    pub data: Vec<u8>,
}

/// Errors handing a packet to [`PacketSender::send`].
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("packet of {0} bytes is not one of the size classes")]
    BadLength(usize),
    #[error("the queue to {0} is full (packet dropped)")]
    QueueFull(PeerId),
    #[error("the node is shutting down")]
    Closed,
    #[error("no packet stream to {0} could be opened")]
    Unreachable(PeerId),
}

/// The accepted packet lengths.
#[derive(Clone, Debug)]
pub struct SizeClasses(BTreeSet<usize>);

impl SizeClasses {
    pub fn new(sizes: &[u32]) -> Self {
        Self(sizes.iter().map(|&s| s as usize).collect())
    }
    pub fn contains(&self, len: usize) -> bool {
        self.0.contains(&len)
    }
    pub fn largest(&self) -> usize {
        self.0.last().copied().unwrap_or(0)
    }
}

/// A byte budget shared by producers and consumers of a queue.
struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }
    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.limit).then_some(u + n)
            })
            .is_ok()
    }
    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

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
        let len = p.data.len();
        if !self.budget.try_take(len) {
            self.metrics.drop_packet(DropReason::InboundQueueFull);
            return;
        }
        match self.tx.try_send(p) {
            Ok(()) => {
                self.metrics.packets_in.fetch_add(1, Ordering::Relaxed);
                self.metrics.count_length(len, 1);
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
    queue_len: usize,
    queue_bytes: usize,
    metrics: Arc<LinkMetrics>,
    stop: watch::Receiver<bool>,
) -> Result<(PacketInbox, tokio::task::JoinHandle<()>), libp2p_stream::AlreadyRegistered> {
    let mut incoming = control.accept(protocol())?;
    let (tx, rx) = mpsc::channel(queue_len);
    let budget = Budget::new(queue_bytes);
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
        let mut len_buf = [0u8; 4];
        let mut scratch = vec![0u8; 16 * 1024];
        loop {
            if let Err(e) = stream.read_exact(&mut len_buf).await {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    debug!(%peer, error = %e, "packet stream read");
                }
                return;
            }
            let len = u32::from_be_bytes(len_buf) as usize;
            if sizes.contains(len) {
                let mut data = vec![0u8; len];
                if let Err(e) = stream.read_exact(&mut data).await {
                    debug!(%peer, error = %e, "packet stream ended inside a frame");
                    return;
                }
                queue.push(InboundPacket { from: peer, data });
            } else if len <= sizes.largest() {
                // Skip the frame without allocating for it: the stream stays
                // in sync and the next frame is read normally.
                let mut left = len;
                while left > 0 {
                    let n = left.min(scratch.len());
                    if let Err(e) = stream.read_exact(&mut scratch[..n]).await {
                        debug!(%peer, error = %e, "packet stream ended inside a frame");
                        return;
                    }
                    left -= n;
                }
                metrics.drop_packet(DropReason::BadLength);
                debug!(%peer, len, "dropped a frame of a length that is no size class");
            } else {
                metrics.drop_packet(DropReason::OversizeFrame);
                warn!(%peer, len, "frame longer than the largest size class: closing the stream");
                return;
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

struct Link {
    tx: mpsc::Sender<Vec<u8>>,
    /// True while the link's stream is open.
    up: watch::Receiver<bool>,
    /// Reopens as soon as its stream ends (see [`PacketSender::open_link`]);
    /// a restarted link keeps this.
    keep: bool,
}

struct SenderInner {
    control: libp2p_stream::Control,
    swarm: SwarmHandle,
    links: Mutex<HashMap<PeerId, Link>>,
    sizes: SizeClasses,
    queue_len: usize,
    budget: Arc<Budget>,
    metrics: Arc<LinkMetrics>,
    stop: watch::Receiver<bool>,
}

/// Queues packets on neighbour links; cheap to clone.
#[derive(Clone)]
pub struct PacketSender(Arc<SenderInner>);

impl PacketSender {
    pub fn new(
        control: libp2p_stream::Control,
        swarm: SwarmHandle,
        sizes: SizeClasses,
        queue_len: usize,
        queue_bytes: usize,
        metrics: Arc<LinkMetrics>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self(Arc::new(SenderInner {
            control,
            swarm,
            links: Mutex::new(HashMap::new()),
            sizes,
            queue_len,
            budget: Budget::new(queue_bytes),
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
            Ok(()) => Ok(()),
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

async fn run_link(
    inner: Arc<SenderInner>,
    peer: PeerId,
    mut rx: mpsc::Receiver<Vec<u8>>,
    up: watch::Sender<bool>,
    keep: bool,
) {
    let mut control = inner.control.clone();
    let mut stop = inner.stop.clone();
    let metrics = inner.metrics.clone();
    let release = |p: &[u8]| inner.budget.give_back(p.len());
    'reopen: loop {
        let Some(stream) = open(&mut control, &inner.swarm, peer, &mut stop).await else {
            // Unreachable: what is queued cannot be delivered. Close the
            // queue first so no packet slips in after the drain.
            rx.close();
            while let Ok(p) = rx.try_recv() {
                release(&p);
                metrics.drop_packet(DropReason::NoRoute);
            }
            return;
        };
        metrics.streams_outbound.fetch_add(1, Ordering::Relaxed);
        up.send_replace(true);
        let (mut r, w) = stream.split();
        let mut w = BufWriter::with_capacity(WRITE_BUFFER, w);
        let mut probe = [0u8; 1];
        loop {
            let first = tokio::select! {
                _ = stop.changed() => {
                    let _ = w.close().await;
                    metrics.streams_outbound.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                // The peer never writes on a packet stream, so a read that
                // returns means the stream or its connection ended. A kept
                // link (the designer's way back in) reopens now, so it is up
                // when needed; any other idle link ends quietly (the peer
                // may have left for good) and the next packet starts anew.
                _ = r.read(&mut probe) => {
                    up.send_replace(false);
                    metrics.streams_outbound.fetch_sub(1, Ordering::Relaxed);
                    if !keep && rx.is_empty() {
                        debug!(%peer, "packet stream ended by the peer");
                        rx.close();
                        while let Ok(p) = rx.try_recv() {
                            release(&p);
                            metrics.drop_packet(DropReason::NoRoute);
                        }
                        return;
                    }
                    info!(%peer, "packet stream ended by the peer; reopening");
                    tokio::time::sleep(REOPEN_BACKOFF).await;
                    continue 'reopen;
                }
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => {
                        let _ = w.close().await;
                        metrics.streams_outbound.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                },
            };
            // Write what is queued in one go, then flush once.
            let mut batch = vec![first];
            while batch.len() < 64 {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let written = async {
                for p in &batch {
                    w.write_all(&(p.len() as u32).to_be_bytes()).await?;
                    w.write_all(p).await?;
                }
                w.flush().await
            }
            .await;
            for p in &batch {
                release(p);
            }
            match written {
                Ok(()) => {
                    let bytes: usize = batch.iter().map(Vec::len).sum();
                    metrics
                        .packets_out
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    metrics.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
                    for p in &batch {
                        metrics.count_length(p.len(), 1);
                    }
                }
                Err(e) => {
                    // A batch that failed mid-way may be partly delivered;
                    // the receiver cannot tell, so count it all as dropped
                    // (the mix layer above retransmits or repairs).
                    for _ in &batch {
                        metrics.drop_packet(DropReason::StreamError);
                    }
                    metrics.streams_outbound.fetch_sub(1, Ordering::Relaxed);
                    up.send_replace(false);
                    info!(%peer, error = %e, "packet stream broke; reopening");
                    // A peer that accepts streams and then resets them must
                    // not make this task spin.
                    tokio::time::sleep(REOPEN_BACKOFF).await;
                    continue 'reopen;
                }
            }
        }
    }
}

/// Opens a packet stream to `peer`; if that fails, asks Kademlia for the
/// peer's addresses once and tries again.
async fn open(
    control: &mut libp2p_stream::Control,
    swarm: &SwarmHandle,
    peer: PeerId,
    stop: &mut watch::Receiver<bool>,
) -> Option<Stream> {
    for attempt in 0..2 {
        let opened = tokio::select! {
            _ = stop.changed() => return None,
            r = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, protocol())) => r,
        };
        match opened {
            Ok(Ok(s)) => {
                debug!(%peer, "outbound packet stream open");
                return Some(s);
            }
            Ok(Err(e)) => info!(%peer, error = %e, attempt, "cannot open packet stream"),
            Err(_) => info!(%peer, attempt, "opening packet stream timed out"),
        }
        if attempt == 0 && !swarm.find_peer(peer).await {
            warn!(%peer, "peer not found in the DHT");
            return None;
        }
    }
    None
}
