//! The worker pools of the packet shell.
//!
//! Why two pools: a guest call may take up to its CPU deadline (a minute by
//! default), and a packet of a job waits for the job's lock while another
//! of its packets runs. Were relaying on the same threads, one slow job
//! would stall every cascade through the node and its cover. So relay
//! workers open every packet and finish whatever needs no guest, and hand
//! job work to the guest workers through a bounded queue in which one job
//! holds at most [`GUEST_QUEUE_PER_JOB`] packets: the rest of a flooding or
//! stalled job's packets are counted drops (`guest_queue_full`), and other
//! jobs keep their place.
//!
//! Packets from direct connections skip the relay queue: the connection's
//! reader thread does the relay worker's part itself ([`Pools::dispatch`]),
//! so a relayed packet crosses the node without a hand-off between
//! threads. Each reader thread serves one neighbour, so a slow neighbour
//! stalls only its own link, as on a libp2p stream.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use mixnn_p2p::PacketInbox;
use tokio::sync::watch;
use tracing::warn;

use super::Processor;
use crate::hop::Peeled;

/// Packets waiting for a relay worker.
const RELAY_QUEUE: usize = 256;
/// Packets waiting for a guest worker, all jobs together.
pub const GUEST_QUEUE: usize = 64;
/// Packets of one job waiting for a guest worker.
pub const GUEST_QUEUE_PER_JOB: usize = 16;
/// How often the replay tags are synced to disk.
const SYNC_EVERY: Duration = Duration::from_secs(1);

type Job = (PeerId, Peeled);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Packets of each job in the guest queue; an entry leaves at zero, so
/// the table is bounded by [`GUEST_QUEUE`].
#[derive(Default)]
struct Waiting(Mutex<HashMap<[u8; 32], usize>>);

impl Waiting {
    fn take(&self, job: [u8; 32]) -> bool {
        let mut w = lock(&self.0);
        let n = w.entry(job).or_default();
        if *n >= GUEST_QUEUE_PER_JOB {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, job: &[u8; 32]) {
        let mut w = lock(&self.0);
        if let Some(n) = w.get_mut(job) {
            *n -= 1;
            if *n == 0 {
                w.remove(job);
            }
        }
    }
}

/// The two worker pools; [`Pools::submit`] feeds them.
pub struct Pools {
    relay: SyncSender<(PeerId, Vec<u8>)>,
    /// What [`Pools::dispatch`] needs: the relay worker's part on the
    /// caller's thread.
    inline: Dispatch,
}

/// A relay worker's part: open, serve what needs no guest, queue the rest.
#[derive(Clone)]
struct Dispatch {
    processor: Arc<Processor>,
    guests: SyncSender<Job>,
    waiting: Arc<Waiting>,
}

impl Dispatch {
    /// `false` once the guest workers are gone.
    fn run(&self, from: PeerId, bytes: Vec<u8>) -> bool {
        let processor = &self.processor;
        let Some(peeled) = processor.peel(from, bytes) else {
            return true;
        };
        if !peeled.needs_guest() {
            processor.serve(from, peeled);
            return true;
        }
        let job = peeled.job();
        if !self.waiting.take(job) {
            processor.metrics.drop_processed("guest_queue_full");
            return true;
        }
        match self.guests.try_send((from, peeled)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.waiting.give_back(&job);
                processor.metrics.drop_processed("guest_queue_full");
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

impl Pools {
    /// Starts `relay_workers` relay threads and `guest_workers` guest
    /// threads (at least one each) on `processor`; they end once the
    /// [`Pools`] is dropped and their queues are empty.
    pub fn start(processor: Arc<Processor>, relay_workers: usize, guest_workers: usize) -> Self {
        let (guest_tx, guest_rx) = sync_channel::<Job>(GUEST_QUEUE);
        let waiting = Arc::new(Waiting::default());
        let guest_rx = Arc::new(Mutex::new(guest_rx));
        for i in 0..guest_workers.max(1) {
            let (processor, rx, waiting) = (processor.clone(), guest_rx.clone(), waiting.clone());
            thread(format!("mixnn-guest-{i}"), move || {
                guest_loop(&processor, &rx, &waiting);
            });
        }
        let (relay_tx, relay_rx) = sync_channel::<(PeerId, Vec<u8>)>(RELAY_QUEUE);
        let relay_rx = Arc::new(Mutex::new(relay_rx));
        let inline = Dispatch {
            processor,
            guests: guest_tx,
            waiting,
        };
        for i in 0..relay_workers.max(1) {
            let (d, rx) = (inline.clone(), relay_rx.clone());
            thread(format!("mixnn-relay-{i}"), move || relay_loop(&d, &rx));
        }
        Pools {
            relay: relay_tx,
            inline,
        }
    }

    /// Does a relay worker's part for one packet on the calling thread
    /// (a direct connection's reader): Sphinx, then the relay or the
    /// queue to the guest workers.
    pub fn dispatch(&self, from: PeerId, bytes: Vec<u8>) {
        self.inline.run(from, bytes);
    }

    /// Queues a packet for the relay workers, waiting while their queue is
    /// full (they never wait on a guest, so the wait is short); `false`
    /// once the workers are gone.
    pub fn submit(&self, from: PeerId, bytes: Vec<u8>) -> bool {
        self.relay.send((from, bytes)).is_ok()
    }
}

fn thread(name: String, f: impl FnOnce() + Send + 'static) {
    let rt = tokio::runtime::Handle::try_current().ok();
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let _guard = rt.as_ref().map(tokio::runtime::Handle::enter);
        f();
    });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start a packet worker");
    }
}

fn relay_loop(d: &Dispatch, rx: &Mutex<Receiver<(PeerId, Vec<u8>)>>) {
    loop {
        let next = lock(rx).recv();
        let Ok((from, bytes)) = next else { return };
        if !d.run(from, bytes) {
            return;
        }
    }
}

fn guest_loop(processor: &Processor, rx: &Mutex<Receiver<Job>>, waiting: &Waiting) {
    loop {
        let next = lock(rx).recv();
        let Ok((from, peeled)) = next else { return };
        waiting.give_back(&peeled.job());
        processor.serve(from, peeled);
    }
}

/// Moves packets from the inbox to the worker pools until `stop` changes,
/// and syncs the replay tags to disk about once a second.
pub fn spawn(
    processor: Arc<Processor>,
    mut inbox: PacketInbox,
    relay_workers: usize,
    guest_workers: usize,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let pools = Arc::new(Pools::start(
        processor.clone(),
        relay_workers,
        guest_workers,
    ));
    let direct = pools.clone();
    inbox.set_direct_sink(Arc::new(move |from, data| direct.dispatch(from, data)));
    tokio::spawn(async move {
        let mut sync = tokio::time::interval(SYNC_EVERY);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = sync.tick() => {
                    let p = processor.clone();
                    let _ = tokio::task::spawn_blocking(move || p.replay().sync()).await;
                }
                p = inbox.recv() => match p {
                    Some(p) => match pools.relay.try_send((p.from, p.data)) {
                        Ok(()) => {}
                        Err(TrySendError::Full((from, data))) => {
                            // Relay workers busy: wait for room off the runtime.
                            let pools = pools.clone();
                            let queued = tokio::task::spawn_blocking(move || pools.submit(from, data));
                            if !matches!(queued.await, Ok(true)) {
                                break;
                            }
                        }
                        Err(TrySendError::Disconnected(_)) => break,
                    },
                    None => break,
                },
            }
        }
        processor.replay().sync();
    })
}
