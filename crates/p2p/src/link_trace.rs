//! An opt-in trace of what a global passive observer of the links sees of
//! this peer: per packet, the time, the direction, the neighbour and the
//! length. Off by default (nothing is recorded until [`LinkTrace::start`]);
//! bounded; it holds no secret (no packet bytes, no keys, no job handle).
//! The traffic-analysis tests and `docs/anonymity.md` use it to play the
//! observer on real sockets.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::PeerId;

/// One packet on one directed link, as an observer of the link sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    /// Wall-clock time, microseconds since the Unix epoch (comparable
    /// across peers of one machine).
    pub micros: u64,
    /// `true`: sent by this peer to `peer`; `false`: received from `peer`.
    pub out: bool,
    /// The neighbour at the other end of the link.
    pub peer: PeerId,
    /// Packet length in bytes.
    pub len: usize,
}

/// The trace buffer; `None` while tracing is off.
#[derive(Debug, Default)]
pub struct LinkTrace {
    buf: Mutex<Option<(usize, Vec<TraceEntry>)>>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl LinkTrace {
    /// Starts (or restarts, emptied) recording up to `max` packets.
    pub fn start(&self, max: usize) {
        *self.lock() = Some((max, Vec::new()));
    }

    /// Stops recording and returns what was recorded.
    pub fn take(&self) -> Vec<TraceEntry> {
        self.lock().take().map(|(_, v)| v).unwrap_or_default()
    }

    /// Records a packet, if tracing is on and the buffer has room.
    pub fn record(&self, out: bool, peer: PeerId, len: usize) {
        let mut g = self.lock();
        if let Some((max, v)) = g.as_mut()
            && v.len() < *max
        {
            v.push(TraceEntry {
                micros: now_micros(),
                out,
                peer,
                len,
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(usize, Vec<TraceEntry>)>> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }
}
