//! One direct connection: written under a lock by whichever thread has a
//! packet for the neighbour, read by a thread of its own that hands each
//! packet to the peer's consumer at once.

use std::io::{ErrorKind, Write as _};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use snow::StatelessTransportState;
use tracing::debug;

use super::Direct;
use super::noise::{NoiseError, Opener, seal_packet};
use crate::link_metrics::DropReason;

/// How long a write may block on a neighbour that does not read: a
/// packet normally lands in the socket buffer at once; a neighbour that
/// leaves it full this long has its connection closed (the packet goes
/// the libp2p way instead).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Once a packet's header came, the rest must come within this.
const FRAME_DEADLINE: Duration = crate::packets::FRAME_DEADLINE;

struct Writer {
    stream: TcpStream,
    nonce: u64,
    buf: Vec<u8>,
}

/// A direct connection to one neighbour.
pub(crate) struct Link {
    pub(crate) peer: PeerId,
    transport: Arc<StatelessTransportState>,
    writer: Mutex<Writer>,
    alive: AtomicBool,
}

impl Link {
    /// A link over `stream` (handshaken) with `transport`.
    pub(crate) fn new(
        peer: PeerId,
        stream: &TcpStream,
        transport: Arc<StatelessTransportState>,
    ) -> std::io::Result<Arc<Self>> {
        let w = stream.try_clone()?;
        w.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(Arc::new(Self {
            peer,
            transport,
            writer: Mutex::new(Writer {
                stream: w,
                nonce: 0,
                buf: Vec::new(),
            }),
            alive: AtomicBool::new(true),
        }))
    }

    /// Whether the connection still carries packets.
    pub(crate) fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Encrypts and writes `packet` on the calling thread. On an error the
    /// connection is closed (a partly written packet leaves the stream out
    /// of sync) and the caller sends the packet another way.
    pub(crate) fn send(&self, packet: &[u8]) -> Result<(), NoiseError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if !self.alive() {
            return Err(NoiseError::Framing("connection closed"));
        }
        let Writer { stream, nonce, buf } = &mut *w;
        buf.clear();
        let r = seal_packet(&self.transport, nonce, packet, buf)
            .and_then(|()| stream.write_all(buf).map_err(NoiseError::from));
        // Large buffers of a burst are not kept for the link's lifetime.
        if buf.capacity() > 4 << 20 {
            *buf = Vec::new();
        }
        if r.is_err() {
            self.close_locked(stream);
        }
        r
    }

    fn close_locked(&self, stream: &TcpStream) {
        self.alive.store(false, Ordering::Release);
        let _ = stream.shutdown(Shutdown::Both);
    }

    /// Closes the connection; its reader thread ends.
    pub(crate) fn close(&self) {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.close_locked(&w.stream);
    }
}

/// The reader thread's loop: packets go to the direct plane's consumer
/// until the connection ends; then the link leaves the table.
pub(crate) fn read_loop(direct: Arc<Direct>, link: Arc<Link>, mut opener: Opener) {
    let peer = link.peer;
    let end = loop {
        match read_one(&direct, peer, &mut opener) {
            Ok(()) => {}
            Err(e) => break e,
        }
    };
    // The first byte of a packet is awaited without a deadline, so a
    // timeout means a begun packet stalled.
    if let NoiseError::Io(e) = &end
        && matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
    {
        direct.metrics.drop_packet(DropReason::StalledFrame);
    }
    debug!(%peer, error = %end, "direct connection ended");
    link.close();
    direct.forget(&link);
}

fn read_one(direct: &Direct, peer: PeerId, opener: &mut Opener) -> Result<(), NoiseError> {
    let len = opener.next_len(FRAME_DEADLINE)?;
    let metrics = &direct.metrics;
    if len > direct.sizes.largest() {
        metrics.drop_packet(DropReason::OversizeFrame);
        return Err(NoiseError::Framing("packet above the largest class"));
    }
    if !direct.sizes.contains(len) {
        metrics.drop_packet(DropReason::BadLength);
        return opener.skip(len);
    }
    let Some((mut data, held)) = direct.admit(len) else {
        metrics.drop_packet(DropReason::InboundQueueFull);
        return opener.skip(len);
    };
    // On an error `held` drops here and gives the bytes back.
    opener.body(&mut data)?;
    direct.deliver(peer, data, held);
    Ok(())
}
