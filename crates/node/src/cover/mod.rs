//! Cover traffic (SPEC §5): loop and drop packets at Poisson rates.
//!
//! Why: a link that carries packets only while a job runs tells an observer
//! when jobs run and which nodes serve them. Every node therefore sends, at
//! exponentially distributed gaps, packets of every public class under the
//! operator's byte budget ([`Schedule`]: a function of the node's own
//! configuration, never of what peers send): *loops* through 2–3 random pool
//! nodes back to itself, and *drops* through 1–2 random nodes, the last of
//! which discards them. They are built like a real job packet that a hop
//! relays ([`packet`]): link mode, op relay, a random handle, a job payload
//! with no tensor, so a relay cannot tell them from real traffic; only
//! their last hop can. Loops double as a probe:
//! if the node keeps sending them and none come back, it is likely cut off
//! (a partition, or neighbours that drop its packets), and it says so.

pub mod packet;
mod schedule;
mod slots;
mod track;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use mixnn_p2p::{PacketSender, SendError, SwarmHandle, split_p2p, unix_now};
use mixnn_protocol::NodeDescriptor;
use mixnn_sphinx::{Geometry, MixPublicKey, NodeId, SphinxError};
use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng as _};

use rand_chacha::ChaCha20Rng;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::NodeConfig;
use crate::hop::peer_of;
use crate::metrics::Metrics;
use crate::mixkeys::MixKeys;

pub use packet::{CoverHop, Kind};
pub use schedule::Schedule;
pub use slots::queue as slot_queue;
pub use track::{LoopTracker, MAX_LOOPS, TooManyLoops};

/// How often the pool view is re-read (new nodes); sooner when a mix key
/// in the view reaches the end of its epoch ([`Cover::next_refresh`]).
const REFRESH: Duration = Duration::from_secs(30);
/// Re-read sooner while the pool lists no other node (start-up), after a
/// failed read, and while a node's key epoch has ended but the directory
/// still serves its old key.
const RETRY: Duration = Duration::from_secs(2);
/// Bound on one directory read, so a silent bootstrap cannot stall cover.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(10);
/// A loop not back after this long is counted lost.
const LOOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Loops sent and none returned for this long: the node may be cut off.
const SILENCE: Duration = Duration::from_secs(60);
/// Pool nodes kept in the view at most.
const MAX_POOL: usize = 10_000;
/// How often lost loops are expired and the silence checked.
const TICK: Duration = Duration::from_secs(1);

/// Why one cover packet was not sent (logged at debug level: cover is best
/// effort, and a persistent failure shows up as loops that do not return).
#[derive(Debug, thiserror::Error)]
pub enum CoverError {
    #[error("building the packet: {0}")]
    Sphinx(#[from] SphinxError),
    #[error("this node has no mix key for the current epoch")]
    NoKey,
    #[error("{MAX_LOOPS} loops in flight already")]
    TooManyLoops,
    #[error("cover is off: no public class")]
    NoClass,
    #[error("the route names a node that is no ed25519 key")]
    BadHop,
    #[error(transparent)]
    Send(#[from] SendError),
}

impl From<TooManyLoops> for CoverError {
    fn from(_: TooManyLoops) -> Self {
        CoverError::TooManyLoops
    }
}

/// What cover traffic needs of the node: how to build and send packets,
/// where to count them, and the state it shares with the packet shell.
pub struct CoverLinks {
    pub geometry: Geometry,
    pub keys: MixKeys,
    pub sender: PacketSender,
    pub metrics: Arc<Metrics>,
    /// How routes name this node (the last hop of its loops).
    pub self_id: NodeId,
    /// Loops in flight; the packet shell answers returning ones.
    pub loops: Arc<LoopTracker>,
    /// Send slots (`slot_ms`): the queue the packet shell fills and its
    /// class; `None` when off.
    pub slots: Option<(Arc<crate::slots::SlotQueue>, usize)>,
}

struct Cover {
    links: CoverLinks,
    swarm: SwarmHandle,
    bootstraps: Vec<PeerId>,
    /// Classes and rates, from the configuration only (`None`: only slots).
    schedule: Option<Schedule>,
    slots: Option<slots::Slots>,
    pool: Vec<CoverHop>,
    /// Unix second at which the first key epoch in `pool` ends.
    keys_end: Option<u64>,
    /// Addresses already given to the swarm, per peer.
    known: HashMap<PeerId, Vec<String>>,
    /// Gaps and route choice; packet keys come from `OsRng` directly.
    rng: ChaCha20Rng,
    seen_returned: u64,
    /// First loop sent since the last one returned.
    waiting_since: Option<Instant>,
    warned: bool,
}

/// Starts the cover task; it ends when `stop` changes. With cover off
/// ([`Schedule::new`] gives none) it ends at once.
pub fn spawn(
    links: CoverLinks,
    swarm: SwarmHandle,
    bootstraps: Vec<PeerId>,
    cfg: &NodeConfig,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let schedule = Schedule::new(&links.geometry, cfg);
    let slots = (links.slots.clone()).map(|(queue, class)| slots::Slots {
        queue,
        period: Duration::from_millis(cfg.slot_ms),
        class,
        budget: cfg.cover_bytes_per_sec,
        next: 0,
    });
    let Ok(rng) = ChaCha20Rng::from_rng(OsRng) else {
        warn!("no OS randomness: cover traffic is off");
        return tokio::spawn(async {});
    };
    if schedule.is_none() && slots.is_none() {
        info!("cover traffic is off (no rate, no budget or no public class)");
        return tokio::spawn(async {});
    }
    let loop_mean = schedule.as_ref().and_then(|s| s.loop_mean);
    let drop_mean = schedule.as_ref().and_then(|s| s.drop_mean);
    if let Some(s) = &schedule {
        info!(
            classes = ?s.classes(),
            bytes_per_sec = s.bytes_per_sec() as u64,
            "cover traffic in every public class"
        );
    }
    let cover = Cover {
        links,
        swarm,
        bootstraps,
        schedule,
        slots,
        pool: Vec::new(),
        keys_end: None,
        known: HashMap::new(),
        rng,
        seen_returned: 0,
        waiting_since: None,
        warned: false,
    };
    tokio::spawn(cover.run(loop_mean, drop_mean, stop))
}

/// An exponentially distributed gap of mean `mean`: the waiting time of a
/// Poisson process, so send times carry no pattern.
fn gap(rng: &mut ChaCha20Rng, mean: Duration) -> Duration {
    let u: f64 = rng.r#gen();
    let x = -(1.0 - u).ln();
    let x = if x > 0.0 { x.min(50.0) } else { 0.0 };
    Duration::try_from_secs_f64(mean.as_secs_f64() * x).unwrap_or(mean)
}

fn peer_from(d: &NodeDescriptor) -> Option<CoverHop> {
    Some(CoverHop {
        id: NodeId(d.identity_key),
        key: MixPublicKey::from_bytes(d.mix_key.public).ok()?,
        epoch: u32::try_from(d.mix_key.epoch).ok()?,
    })
}

impl Cover {
    async fn run(
        mut self,
        loop_mean: Option<Duration>,
        drop_mean: Option<Duration>,
        mut stop: watch::Receiver<bool>,
    ) {
        let now = Instant::now();
        let mut next_refresh = now;
        let mut next_loop = loop_mean.map(|m| now + gap(&mut self.rng, m));
        let mut next_drop = drop_mean.map(|m| now + gap(&mut self.rng, m));
        let mut next_tick = now + TICK;
        let mut next_slot = self.slots.as_ref().map(|_| now);
        while !*stop.borrow() {
            let wake = [
                next_loop,
                next_drop,
                next_slot,
                Some(next_refresh.min(next_tick)),
            ];
            let wake = wake.into_iter().flatten().min().unwrap_or(next_tick);
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = Instant::now();
            if now >= next_refresh {
                let read = tokio::select! {
                    _ = stop.changed() => return,
                    read = self.refresh() => read,
                };
                next_refresh = Instant::now() + self.next_refresh(read);
            }
            for (next, mean, is_loop) in [
                (&mut next_loop, loop_mean, true),
                (&mut next_drop, drop_mean, false),
            ] {
                if let (Some(t), Some(m)) = (*next, mean)
                    && now >= t
                {
                    if let Err(e) = self.send(is_loop) {
                        debug!(error = %e, is_loop, "cover packet not sent");
                    }
                    *next = Some(Instant::now() + gap(&mut self.rng, m));
                }
            }
            if let Some(t) = next_slot
                && now >= t
            {
                // Steady: the next slot is due a step after this one was,
                // not after it was served.
                let floor = now.checked_sub(TICK).unwrap_or(now);
                next_slot = Some(t.max(floor) + self.slot_step());
            }
            if now >= next_tick {
                self.check(now);
                next_tick = now + TICK;
            }
        }
    }

    /// How long until the pool view is re-read, after a read that
    /// succeeded or not (`read`). Why follow the keys' epochs: a node's old
    /// key is refused once its grace is over, and a view re-read on a fixed
    /// period longer than the grace (or kept after failed reads) built
    /// cover with expired keys, packets the next hop refused steadily.
    fn next_refresh(&self, read: bool) -> Duration {
        if !read || self.pool.is_empty() {
            return RETRY;
        }
        let Some(end) = self.keys_end else {
            return REFRESH;
        };
        // A second past the epoch's end: the node has re-published by then.
        let secs = end.saturating_sub(unix_now()).saturating_add(1);
        Duration::from_secs(secs).clamp(RETRY, REFRESH)
    }

    /// Re-reads the pool from the directory and tells the swarm where new
    /// nodes listen (so the first packet to one finds it); whether the
    /// read succeeded.
    async fn refresh(&mut self) -> bool {
        let list = self.swarm.list_directory(&self.bootstraps);
        let list = match tokio::time::timeout(DIRECTORY_TIMEOUT, list).await {
            Ok(Ok(list)) => list,
            Ok(Err(e)) => {
                debug!(error = %e, "cover: directory read failed");
                return false;
            }
            Err(_) => {
                debug!("cover: directory read timed out");
                return false;
            }
        };
        let (me, now) = (self.links.self_id.0, unix_now());
        let mut pool = Vec::new();
        let mut keys_end: Option<u64> = None;
        let mut known = HashMap::new();
        for d in list.iter().filter(|d| d.identity_key != me).take(MAX_POOL) {
            let Some((p, peer)) = peer_from(d).and_then(|p| Some((peer_of(&p.id)?, p))) else {
                debug!(peer = %d.peer_id, "cover: unusable descriptor");
                continue;
            };
            if self.known.get(&p) != Some(&d.addrs) {
                let addrs = (d.addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()))
                    .map(|a| split_p2p(&a).map_or(a, |(_, plain)| plain))
                    .collect();
                self.swarm.add_addresses(p, addrs).await;
            }
            known.insert(p, d.addrs.clone());
            pool.push(peer);
            // A key whose epoch ended long ago (a node that stopped
            // publishing) would have the view re-read every RETRY until its
            // descriptor expires: only recent ends count.
            let end = (d.mix_key.epoch.saturating_add(1)).saturating_mul(d.mix_key.epoch_secs);
            if end.saturating_add(REFRESH.as_secs()) > now {
                keys_end = Some(keys_end.map_or(end, |e| e.min(end)));
            }
        }
        (self.known, self.pool, self.keys_end) = (known, pool, keys_end);
        true
    }

    /// Sends one loop (2–3 other nodes, then this one) or drop packet (1–2
    /// other nodes, the last discards it) of a class the schedule draws;
    /// nothing while the pool lists no other node.
    fn send(&mut self, is_loop: bool) -> Result<(), CoverError> {
        if self.pool.is_empty() {
            return Ok(());
        }
        let n = if is_loop {
            self.rng.gen_range(2..=3)
        } else {
            self.rng.gen_range(1..=2)
        };
        let mut route: Vec<CoverHop> = (self.pool.choose_multiple(&mut self.rng, n))
            .copied()
            .collect();
        if is_loop {
            let (epoch, public) = (self.links.keys.current(unix_now())).ok_or(CoverError::NoKey)?;
            route.push(CoverHop {
                id: self.links.self_id,
                key: MixPublicKey::from_bytes(public.to_bytes())?,
                epoch: u32::try_from(epoch).map_err(|_| CoverError::NoKey)?,
            });
        }
        let first = (route.first())
            .and_then(|h| peer_of(&h.id))
            .ok_or(CoverError::BadHop)?;
        let schedule = self.schedule.as_ref().ok_or(CoverError::NoClass)?;
        let class = schedule.class(&mut self.rng);
        let kind = if is_loop { Kind::Loop } else { Kind::Drop };
        let (bytes, tag) = packet::build(&self.links.geometry, &route, kind, class, &mut OsRng)?;
        let metrics = &self.links.metrics;
        if !is_loop {
            self.links.sender.send(first, bytes)?;
            metrics.cover_drops_sent.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // Registered before sending: the loop can be back before `send`
        // returns.
        self.links.loops.register(&tag, Instant::now())?;
        if let Err(e) = self.links.sender.send(first, bytes) {
            self.links.loops.forget(&tag);
            return Err(e.into());
        }
        metrics.cover_loops_sent.fetch_add(1, Ordering::Relaxed);
        self.waiting_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Expires lost loops and warns once when loops stop returning.
    fn check(&mut self, now: Instant) {
        let metrics = &self.links.metrics;
        let returned = metrics.cover_loops_returned.load(Ordering::Relaxed);
        if returned != self.seen_returned {
            (self.seen_returned, self.waiting_since) = (returned, None);
            if std::mem::take(&mut self.warned) {
                info!("cover loops return again");
            }
        }
        let lost = self.links.loops.expire(now, LOOP_TIMEOUT);
        metrics
            .cover_loops_lost
            .fetch_add(lost as u64, Ordering::Relaxed);
        if let Some(since) = self.waiting_since
            && !self.warned
            && now.saturating_duration_since(since) >= SILENCE
        {
            warn!(
                secs = SILENCE.as_secs(),
                "loops stopped returning: the node may be cut off"
            );
            self.warned = true;
        }
    }
}
