//! One neighbour's outbound link: a task that opens the packet stream,
//! writes what is queued in batches, and reopens the stream when it breaks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter};
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::frame::write_frames;
use super::protocol;
use super::sender::SenderInner;
use crate::link_metrics::DropReason;

/// How long opening a stream (dial included) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before reopening a stream that broke.
const REOPEN_BACKOFF: Duration = Duration::from_millis(200);
/// Write buffer per outbound stream: a few small packets per syscall.
const WRITE_BUFFER: usize = 64 * 1024;
/// Most packets written before one flush.
const MAX_BATCH: usize = 64;

/// How [`carry`] ended.
enum LinkEnd {
    /// The link is done (stop, queue closed, or an idle link whose peer left).
    Done,
    /// The stream ended or broke: open a new one after [`REOPEN_BACKOFF`].
    Reopen,
}

/// The link task: runs until `stop`, until its queue is closed, or until
/// its peer is unreachable (then what is queued is dropped as `no_route`).
pub(super) async fn run_link(
    inner: Arc<SenderInner>,
    peer: PeerId,
    mut rx: mpsc::Receiver<Vec<u8>>,
    up: watch::Sender<bool>,
    keep: bool,
) {
    let mut control = inner.control.clone();
    let mut stop = inner.stop.clone();
    loop {
        let Some(stream) = open(&inner, &mut control, peer, &mut stop).await else {
            // Unreachable: what is queued cannot be delivered.
            drain(&inner, &mut rx);
            return;
        };
        inner
            .metrics
            .streams_outbound
            .fetch_add(1, Ordering::Relaxed);
        up.send_replace(true);
        let end = carry(&inner, peer, stream, &mut rx, &up, keep, &mut stop).await;
        inner
            .metrics
            .streams_outbound
            .fetch_sub(1, Ordering::Relaxed);
        match end {
            LinkEnd::Done => return,
            // A peer that accepts streams and then resets them must not
            // make this task spin.
            LinkEnd::Reopen => tokio::time::sleep(REOPEN_BACKOFF).await,
        }
    }
}

/// Closes the queue first, so no packet slips in after the drain, then
/// drops what is queued as `no_route`.
fn drain(inner: &SenderInner, rx: &mut mpsc::Receiver<Vec<u8>>) {
    rx.close();
    while let Ok(p) = rx.try_recv() {
        inner.budget.give_back(p.len());
        inner.metrics.drop_packet(DropReason::NoRoute);
    }
}

/// Carries queued packets over one open stream until it ends.
async fn carry(
    inner: &SenderInner,
    peer: PeerId,
    stream: Stream,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    up: &watch::Sender<bool>,
    keep: bool,
    stop: &mut watch::Receiver<bool>,
) -> LinkEnd {
    let (mut r, w) = stream.split();
    let mut w = BufWriter::with_capacity(WRITE_BUFFER, w);
    let mut probe = [0u8; 1];
    loop {
        let first = tokio::select! {
            _ = stop.changed() => {
                let _ = w.close().await;
                return LinkEnd::Done;
            }
            // The peer never writes on a packet stream, so a read that
            // returns means the stream or its connection ended. A kept
            // link (the designer's way back in) reopens now, so it is up
            // when needed; any other idle link ends quietly (the peer
            // may have left for good) and the next packet starts anew.
            _ = r.read(&mut probe) => {
                up.send_replace(false);
                if !keep && rx.is_empty() {
                    debug!(%peer, "packet stream ended by the peer");
                    drain(inner, rx);
                    return LinkEnd::Done;
                }
                info!(%peer, "packet stream ended by the peer; reopening");
                return LinkEnd::Reopen;
            }
            p = rx.recv() => match p {
                Some(p) => p,
                None => {
                    let _ = w.close().await;
                    return LinkEnd::Done;
                }
            },
        };
        if let Err(e) = send_batch(inner, &mut w, first, rx).await {
            up.send_replace(false);
            info!(%peer, error = %e, "packet stream broke; reopening");
            return LinkEnd::Reopen;
        }
    }
}

/// Writes `first` and whatever else is queued (up to [`MAX_BATCH`]) in one
/// go, flushes once, and counts the outcome.
async fn send_batch<W: futures::io::AsyncWrite + Unpin>(
    inner: &SenderInner,
    w: &mut W,
    first: Vec<u8>,
    rx: &mut mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
    let written = write_frames(w, &batch).await;
    let metrics = &inner.metrics;
    for p in &batch {
        inner.budget.give_back(p.len());
    }
    match &written {
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
        // A batch that failed mid-way may be partly delivered; the receiver
        // cannot tell, so count it all as dropped (the mix layer above
        // retransmits or repairs).
        Err(_) => {
            for _ in &batch {
                metrics.drop_packet(DropReason::StreamError);
            }
        }
    }
    written
}

/// Opens a packet stream to `peer`; if that fails, asks Kademlia for the
/// peer's addresses once (if a lookup permit is free) and tries again.
async fn open(
    inner: &SenderInner,
    control: &mut libp2p_stream::Control,
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
        if attempt > 0 {
            break;
        }
        let Ok(_permit) = inner.lookups.try_acquire() else {
            debug!(%peer, "too many DHT lookups running: giving up on this peer");
            return None;
        };
        if !inner.swarm.find_peer(peer).await {
            warn!(%peer, "peer not found in the DHT");
            return None;
        }
    }
    None
}
