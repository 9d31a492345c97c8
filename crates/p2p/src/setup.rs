//! Starting a peer: bootstrap addresses, listening, and the one start-up
//! path a node and the designer share.
//!
//! Why one path: a node and the designer are the same kind of libp2p peer
//! (the swarm task, bootstrap dials, an inbound packet queue and a packet
//! sender); they differ in their [`Role`], where they listen (the designer
//! listens nowhere) and their queue sizes. The bootstrap builds the same
//! swarm with [`build_swarm`] and [`listen`] but runs its own event loop,
//! since it serves the directory instead of asking it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, TransportError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::behaviour::{BuildError, PeerBehaviour, Role, build_swarm};
use crate::link_metrics::LinkMetrics;
use crate::packets::{self, PacketInbox, PacketSender, SizeClasses};
use crate::peer::{self, SwarmHandle, split_p2p};

/// How long [`listen`] waits for the listeners to report.
pub const LISTEN_DEADLINE: Duration = Duration::from_secs(10);

/// A bootstrap's address as given on the command line, split.
#[derive(Clone, Debug)]
pub struct BootstrapAddr {
    /// The bootstrap's peer id (the `/p2p/<id>` suffix).
    pub peer: PeerId,
    /// The address without the suffix (what Kademlia stores).
    pub addr: Multiaddr,
    /// The address as given (what is dialled).
    pub full: Multiaddr,
}

/// Why a bootstrap address is unusable.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    /// Not a multiaddr.
    #[error(transparent)]
    Parse(#[from] libp2p::multiaddr::Error),
    /// No peer id at the end: the peer could not be authenticated.
    #[error("a bootstrap address must end in /p2p/<peer id> (`mixnn bootstrap` prints it)")]
    NoPeerId,
}

/// Parses a bootstrap address, which must end in `/p2p/<peer id>`.
pub fn parse_bootstrap(s: &str) -> Result<BootstrapAddr, AddrError> {
    let full: Multiaddr = s.parse()?;
    let (peer, addr) = split_p2p(&full).ok_or(AddrError::NoPeerId)?;
    Ok(BootstrapAddr { peer, addr, full })
}

/// Why [`listen`] found no address.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The transport refused the address.
    #[error("cannot listen on {addr}: {source}")]
    Refused {
        /// The address that could not be listened on.
        addr: Multiaddr,
        /// The transport's error.
        #[source]
        source: TransportError<std::io::Error>,
    },
    /// A listener failed while starting.
    #[error("{0}")]
    Listener(std::io::Error),
    /// Nothing was bound before [`LISTEN_DEADLINE`].
    #[error("no listen address was bound within {} s", LISTEN_DEADLINE.as_secs())]
    NothingBound,
}

/// Listens on every address of `addrs` and drives the swarm until each
/// reported an address (or [`LISTEN_DEADLINE`] passes); returns the bound
/// addresses (without `/p2p/<id>`). No addresses: returns at once.
///
/// With `settle`, keeps collecting addresses for that long afterwards: a
/// wildcard listener reports one address per interface, back to back, and
/// the first one alone completes its listener.
pub async fn listen(
    swarm: &mut Swarm<PeerBehaviour>,
    addrs: &[Multiaddr],
    settle: Option<Duration>,
) -> Result<Vec<Multiaddr>, ListenError> {
    if addrs.is_empty() {
        return Ok(Vec::new());
    }
    for a in addrs {
        swarm
            .listen_on(a.clone())
            .map_err(|source| ListenError::Refused {
                addr: a.clone(),
                source,
            })?;
    }
    let mut bound = wait_listening(swarm, addrs.len()).await?;
    if let Some(settle) = settle {
        let settle = tokio::time::sleep(settle);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::NewListenAddr { address, .. } = ev {
                        bound.push(address);
                    }
                }
            }
        }
    }
    if bound.is_empty() {
        return Err(ListenError::NothingBound);
    }
    Ok(bound)
}

/// The addresses reported until each of `listeners` reported one, or
/// [`LISTEN_DEADLINE`] passed.
async fn wait_listening(
    swarm: &mut Swarm<PeerBehaviour>,
    listeners: usize,
) -> Result<Vec<Multiaddr>, ListenError> {
    let mut addrs = Vec::new();
    let mut seen = HashSet::new();
    let deadline = tokio::time::sleep(LISTEN_DEADLINE);
    tokio::pin!(deadline);
    while seen.len() < listeners {
        tokio::select! {
            _ = &mut deadline => break,
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    seen.insert(listener_id);
                    addrs.push(address);
                }
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(ListenError::Listener(error));
                }
                other => debug!(event = ?other, "event while starting"),
            }
        }
    }
    Ok(addrs)
}

/// Bounds of a packet queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// Packets.
    pub packets: usize,
    /// Bytes of the packets together.
    pub bytes: usize,
}

/// What a pool peer (node or designer) is started with.
pub struct PeerSetup<'a> {
    /// The peer's identity.
    pub keypair: libp2p::identity::Keypair,
    /// [`Role::Node`] or [`Role::Client`]; a bootstrap carries no packets.
    pub role: Role,
    /// Where to listen (nothing for the designer).
    pub listen: &'a [Multiaddr],
    /// See [`listen`].
    pub settle: Option<Duration>,
    /// Dialled (and added to Kademlia) once the swarm runs.
    pub bootstraps: &'a [BootstrapAddr],
    /// The accepted packet lengths.
    pub sizes: SizeClasses,
    /// The inbound queue (all links together).
    pub inbound: QueueLimits,
    /// Each neighbour's outbound queue (packets), all of them (bytes).
    pub outbound: QueueLimits,
    /// The link counters, shared with whoever reports them.
    pub metrics: Arc<LinkMetrics>,
    /// Every task started here ends when this changes.
    pub stop: watch::Receiver<bool>,
    /// Carry packets over direct connections where both ends can
    /// ([`crate::direct`]); off, every packet takes its libp2p stream.
    pub direct: bool,
}

/// A started pool peer.
pub struct PoolPeer {
    /// The bound listen addresses, without `/p2p/<id>`.
    pub listen_addrs: Vec<Multiaddr>,
    /// Commands to the swarm task.
    pub swarm: SwarmHandle,
    /// Raw stream access (tools and tests).
    pub control: libp2p_stream::Control,
    /// Queues packets to neighbours.
    pub sender: PacketSender,
    /// The inbound packet queue.
    pub inbox: PacketInbox,
    /// The swarm task and the inbound accept task.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Why a pool peer did not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The swarm could not be built (transport setup).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// No listen address could be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The role carries no packets (a bootstrap).
    #[error("a {0:?} peer carries no packet streams")]
    NoPackets(Role),
    /// Packet streams were accepted already on this swarm.
    #[error("packet streams: {0}")]
    Streams(#[from] libp2p_stream::AlreadyRegistered),
    /// The direct plane did not start.
    #[error(transparent)]
    Direct(#[from] crate::direct::DirectError),
}

/// Builds the swarm, listens, spawns the swarm task, dials the bootstraps,
/// and starts the packet streams (inbound queue and sender). Returns once
/// every listen address is bound.
pub async fn start_pool_peer(setup: PeerSetup<'_>) -> Result<PoolPeer, SetupError> {
    let mut swarm = build_swarm(setup.keypair, setup.role)?;
    let control = swarm
        .behaviour()
        .stream_control()
        .ok_or(SetupError::NoPackets(setup.role))?;
    let listen_addrs = listen(&mut swarm, setup.listen, setup.settle).await?;
    let remotes = Arc::new(crate::direct::RemoteIps::default());
    let (handle, swarm_task) = peer::spawn(
        swarm,
        setup.metrics.clone(),
        remotes.clone(),
        setup.stop.clone(),
    );
    for b in setup.bootstraps {
        handle.add_addresses(b.peer, vec![b.addr.clone()]).await;
        handle.dial(b.full.clone()).await;
    }
    let (mut inbox, inbound_task, queue) = packets::start_inbound(
        control.clone(),
        setup.sizes.clone(),
        setup.inbound,
        setup.metrics.clone(),
        setup.stop.clone(),
    )?;
    let direct = if setup.direct {
        let d = crate::direct::Direct::start(crate::direct::DirectSetup {
            listen_ip: listen_addrs.iter().find_map(ip_of),
            queue,
            sizes: setup.sizes.clone(),
            metrics: setup.metrics.clone(),
            remotes,
            control: control.clone(),
            stop: setup.stop.clone(),
        })?;
        inbox.direct = Some(d.clone());
        Some(d)
    } else {
        None
    };
    let sender = PacketSender::new(
        control.clone(),
        handle.clone(),
        setup.sizes,
        setup.outbound,
        setup.metrics,
        setup.stop,
        direct,
    );
    Ok(PoolPeer {
        listen_addrs,
        swarm: handle,
        control,
        sender,
        inbox,
        tasks: vec![swarm_task, inbound_task],
    })
}

/// The IP address of a bound listen address (the direct plane listens on
/// the same one).
fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(a) => Some(a.into()),
        libp2p::multiaddr::Protocol::Ip6(a) => Some(a.into()),
        _ => None,
    })
}
