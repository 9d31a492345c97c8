//! The designer's own libp2p peer: reads the directory, dials the cascade's
//! two ends and exchanges packets with them.
//!
//! It speaks the pool's protocols as a client (Kademlia client mode, no
//! descriptor), so it never appears in the DHT or the directory, and it
//! does not listen: the first and last hop answer over the connections the
//! designer opened. A fresh identity per run keeps jobs unlinkable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use mixnn_p2p::{
    LinkMetrics, PacketInbox, PacketSender, PeerSetup, QueueLimits, Role, SizeClasses, SwarmHandle,
};
use mixnn_protocol::NodeDescriptor;
use mixnn_sphinx::{Geometry, NodeId};
use tokio::sync::watch;

use super::PoolError;
use super::directory::{self, Distinct, Reading};
use crate::DesignerError;

fn err(m: impl std::fmt::Display) -> DesignerError {
    DesignerError::Pool(m.to_string())
}

pub struct Endpoint {
    rt: tokio::runtime::Runtime,
    swarm: SwarmHandle,
    sender: PacketSender,
    inbox: PacketInbox,
    bootstraps: Vec<PeerId>,
    node_id: NodeId,
    pub metrics: Arc<LinkMetrics>,
    stop: watch::Sender<bool>,
}

impl Endpoint {
    /// Starts the peer and connects to the bootstraps.
    pub fn start(bootstraps: &[String], g: &Geometry) -> Result<Endpoint, DesignerError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| err(format!("starting the async runtime: {e}")))?;
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let node_id = NodeId(keypair.public().try_into_ed25519().map_err(err)?.to_bytes());
        let parsed = bootstraps
            .iter()
            .map(|s| {
                mixnn_p2p::parse_bootstrap(s)
                    .map_err(|e| err(format!("bad bootstrap address {s:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if parsed.is_empty() {
            return Err(err("no bootstrap address given (--pool MULTIADDR)"));
        }
        let metrics = Arc::new(LinkMetrics::default());
        let (stop, stop_rx) = watch::channel(false);
        let sizes: Vec<u32> = g
            .size_classes()
            .iter()
            .filter_map(|&c| g.packet_len(c).ok())
            .map(|l| l as u32)
            .collect();
        // No listen address: the cascade's ends answer over the
        // connections the designer opens (see `connect`).
        let peer = rt
            .block_on(mixnn_p2p::start_pool_peer(PeerSetup {
                keypair,
                role: Role::Client,
                listen: &[],
                settle: None,
                bootstraps: &parsed,
                sizes: SizeClasses::new(&sizes),
                inbound: QueueLimits {
                    packets: 4096,
                    bytes: 512 << 20,
                },
                outbound: QueueLimits {
                    packets: 1024,
                    bytes: 512 << 20,
                },
                metrics: metrics.clone(),
                stop: stop_rx,
                direct: true,
            }))
            .map_err(err)?;
        Ok(Endpoint {
            rt,
            swarm: peer.swarm,
            sender: peer.sender,
            inbox: peer.inbox,
            bootstraps: parsed.iter().map(|b| b.peer).collect(),
            node_id,
            metrics,
            stop,
        })
    }

    /// How routing info addresses the designer (the exit of every route).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The directory a quorum of the bootstraps agree on (every bootstrap
    /// asked at once), retried for up to `wait` until it holds `want` nodes
    /// with distinct identities and addresses (nodes of a freshly started
    /// pool are still joining), none of them one of `exclude` (a stopped
    /// node stays listed for a while: it must not count).
    pub fn directory(
        &self,
        want: usize,
        quorum: usize,
        rule: Distinct,
        wait: Duration,
        exclude: &[[u8; 32]],
    ) -> Result<Vec<NodeDescriptor>, DesignerError> {
        let deadline = Instant::now() + wait;
        let mut rng = super::placement::os_rng()?;
        loop {
            let mut r = self.read_directory(quorum);
            r.nodes.retain(|d| !exclude.contains(&d.identity_key));
            let late = Instant::now() >= deadline;
            if r.answered < r.quorum {
                if late {
                    return Err(PoolError::QuorumUnreached {
                        answered: r.answered,
                        asked: r.asked,
                        quorum: r.quorum,
                        failures: r.failures.join("; "),
                    }
                    .into());
                }
            } else {
                let distinct = match directory::pick(&r.nodes, want, rule, &mut rng) {
                    Ok(_) => return Ok(r.nodes),
                    Err(best) => best,
                };
                if late {
                    let lone = rule == Distinct::Host && directory::anonymous(&r.nodes, rule) > 0;
                    return Err(PoolError::TooFewAgreed {
                        quorum: r.quorum,
                        asked: r.asked,
                        agreed: r.nodes.len(),
                        distinct,
                        needed: want,
                        note: if lone {
                            " (some nodes list loopback addresses only: for a pool on one \
                             machine pass --local-pool)"
                        } else {
                            ""
                        },
                    }
                    .into());
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// One reading of every bootstrap, kept by `quorum`.
    pub(super) fn read_directory(&self, quorum: usize) -> Reading {
        self.rt.block_on(directory::read_quorum(
            &self.swarm,
            &self.bootstraps,
            quorum,
        ))
    }

    /// Bootstraps the designer was given.
    pub fn bootstraps(&self) -> usize {
        self.bootstraps.len()
    }

    /// Makes `peer` reachable at `addrs` and opens the packet link to it,
    /// waiting up to `wait`. The designer listens nowhere: the cascade's
    /// ends answer it over this link's connection, which the open stream
    /// keeps up however long the job pauses.
    pub fn connect(
        &self,
        peer: PeerId,
        addrs: &[String],
        wait: Duration,
    ) -> Result<(), DesignerError> {
        let parsed: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
        self.rt.block_on(async {
            self.swarm.add_addresses(peer, parsed.clone()).await;
            for a in parsed {
                self.swarm
                    .dial(a.with(libp2p::multiaddr::Protocol::P2p(peer)))
                    .await;
            }
            self.sender
                .open_link(peer, wait)
                .await
                .map_err(|e| err(format!("connecting to node {peer} at {addrs:?}: {e}")))
        })
    }

    /// Queues a packet to `peer`.
    pub fn send(&self, peer: PeerId, packet: Vec<u8>) -> Result<(), DesignerError> {
        let _g = self.rt.enter();
        self.sender
            .send(peer, packet)
            .map_err(|e| err(format!("sending to {peer}: {e}")))
    }

    /// The next packet whose header carries `alpha` (the exit id of the
    /// message sent); anything else arriving meanwhile is stale and dropped.
    /// Waits at most `bound`; fails at once (after [`LINK_GRACE`]) when the
    /// link to one of `ends` (hop index, peer: the cascade's ends, the only
    /// nodes the designer is linked to) closes and stays closed.
    pub fn receive(
        &mut self,
        alpha: &[u8; 32],
        bound: Duration,
        ends: &[(usize, PeerId)],
    ) -> Result<Vec<u8>, Received> {
        self.receive_any(|a| a == alpha, Instant::now() + bound, ends)
    }

    /// The next packet whose header's exit id `wanted` accepts (one of the
    /// messages in flight: the pipelined test phase waits for whichever of
    /// its batches answers first); anything else is stale and dropped.
    /// Waits until `deadline`; a closed end link fails it as in
    /// [`Endpoint::receive`].
    pub fn receive_any(
        &mut self,
        wanted: impl Fn(&[u8; 32]) -> bool,
        deadline: Instant,
        ends: &[(usize, PeerId)],
    ) -> Result<Vec<u8>, Received> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let mut links: Vec<EndLink> = ends
            .iter()
            .map(|&(hop, peer)| (hop, self.sender.link_up(peer), None))
            .collect();
        let inbox = &mut self.inbox;
        self.rt.block_on(async {
            loop {
                tokio::select! {
                    p = tokio::time::timeout_at(deadline, inbox.recv()) => {
                        let p = p.map_err(|_| Received::TimedOut)?.ok_or(Received::Stopped)?;
                        let exit = p.data.get(1..33).and_then(|a| <&[u8; 32]>::try_from(a).ok());
                        if exit.is_some_and(&wanted) {
                            return Ok(p.data);
                        }
                        tracing::debug!(from = %p.from, "stray packet ignored");
                    }
                    _ = tokio::time::sleep(LINK_POLL) => {
                        if let Some(hop) = closed_link(&mut links) {
                            return Err(Received::LinkClosed { hop });
                        }
                    }
                }
            }
        })
    }
}

/// How long a link to a cascade end may be down before the pending answer
/// is given up: a stream that merely reset reopens well within it (the link
/// task retries after 200 ms); a peer that stopped or died refuses the
/// reopen, so the link stays down.
pub const LINK_GRACE: Duration = Duration::from_millis(1000);
/// How often a pending answer looks at the links to the cascade's ends.
const LINK_POLL: Duration = Duration::from_millis(50);

/// A link to a cascade end as a pending answer watches it: the hop's
/// index, the link's up/down watch (`None`: no link), and since when it
/// is down.
type EndLink = (usize, Option<watch::Receiver<bool>>, Option<Instant>);

/// Why [`Endpoint::receive`] returned no answer.
#[derive(Debug)]
pub enum Received {
    /// Nothing came within the bound.
    TimedOut,
    /// The link to this end hop (index) closed and stayed closed.
    LinkClosed {
        /// Index of the hop in the cascade.
        hop: usize,
    },
    /// The designer's own peer stopped.
    Stopped,
}

/// The first of `links` down for at longer than [`LINK_GRACE`] (or whose
/// link task ended, or that has no link at all); remembers since when each
/// one is down.
fn closed_link(links: &mut [EndLink]) -> Option<usize> {
    for (hop, up, since) in links.iter_mut() {
        let down = match up {
            Some(rx) => rx.has_changed().is_err() || !*rx.borrow(),
            None => true,
        };
        if !down {
            *since = None;
            continue;
        }
        let t = *since.get_or_insert_with(Instant::now);
        let ended = up.as_ref().is_none_or(|rx| rx.has_changed().is_err());
        if ended || t.elapsed() >= LINK_GRACE {
            return Some(*hop);
        }
    }
    None
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link that is up is no failure; one that just went down gets its
    /// grace (it may reopen); one whose task ended, or that is missing,
    /// fails the pending answer at once.
    #[test]
    fn a_closed_end_link_fails_the_answer() {
        let (tx0, rx0) = watch::channel(true);
        let (tx1, rx1) = watch::channel(true);
        let mut links = vec![(0, Some(rx0), None), (4, Some(rx1), None)];
        assert_eq!(closed_link(&mut links), None);
        tx1.send_replace(false);
        assert_eq!(closed_link(&mut links), None, "down, within its grace");
        assert!(links[1].2.is_some(), "down since now");
        tx1.send_replace(true);
        assert_eq!(closed_link(&mut links), None);
        assert!(links[1].2.is_none(), "up again: the grace starts over");
        drop(tx1);
        assert_eq!(closed_link(&mut links), Some(4), "its task ended");
        drop(tx0);
        assert_eq!(closed_link(&mut links[..1]), Some(0));
        assert_eq!(
            closed_link(&mut [(2, None, None)]),
            Some(2),
            "no link at all"
        );
    }
}
