//! The libp2p pieces the pool's peers share: behaviours and swarm setup
//! (node, bootstrap, designer), the swarm task ([`peer`]) and the packet
//! streams ([`packets`]) that nodes and the designer both speak.
//!
//! Both speak the same protocols (Kademlia, identify, the directory
//! request-response) with the same codec limits, so the behaviours are built
//! here once; each side only picks the knobs where the two roles differ
//! (query timeout, periodic bootstrap, which side of the directory protocol
//! it serves, request timeout).

use std::collections::HashSet;
use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, kad, noise, tcp, yamux};
use mixnn_protocol::{
    DIRECTORY_PROTOCOL, DirectoryRequest, DirectoryResponse, IDENTIFY_PROTOCOL, KAD_PROTOCOL,
    MAX_DIRECTORY_REQUEST_BYTES, MAX_DIRECTORY_RESPONSE_BYTES, SOFTWARE_VERSION,
};
use tracing::debug;

pub mod link_metrics;
pub mod packets;
pub mod peer;

pub use link_metrics::{DropReason, LinkMetrics};
pub use packets::{InboundPacket, PacketInbox, PacketSender, SendError, SizeClasses};
pub use peer::{PeerBehaviour, SwarmHandle, split_p2p};

/// The directory behaviour both sides compose.
pub type DirectoryBehaviour =
    request_response::cbor::Behaviour<DirectoryRequest, DirectoryResponse>;

/// How long [`wait_listening`] waits for the listeners to report.
pub const LISTEN_DEADLINE: Duration = Duration::from_secs(10);

/// A swarm over TCP (nodelay), noise and yamux on tokio, with `behaviour`
/// built from the identity; idle connections close after a minute.
/// Errors are the transport's or the behaviour's, as text.
pub fn build_swarm<B: NetworkBehaviour>(
    keypair: libp2p::identity::Keypair,
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> Result<Swarm<B>, String> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| e.to_string())?
        .with_behaviour(behaviour)
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

/// A Kademlia behaviour on the pool's protocol, with an in-memory store.
///
/// `periodic_bootstrap: false` turns kad's periodic bootstrap off, for a peer
/// that has no one to bootstrap from (the bootstrap itself); `true` keeps
/// libp2p's default interval.
pub fn kad(
    key: &libp2p::identity::Keypair,
    query_timeout: Duration,
    periodic_bootstrap: bool,
) -> kad::Behaviour<kad::store::MemoryStore> {
    let peer_id = key.public().to_peer_id();
    let mut cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    cfg.set_query_timeout(query_timeout);
    if !periodic_bootstrap {
        cfg.set_periodic_bootstrap_interval(None);
    }
    let mut kad = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), cfg);
    // Pools on loopback or private networks never get a confirmed external
    // address, which would leave kad in client mode: the node unfindable and
    // the bootstrap useless as an entry point.
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

/// Makes a peer routable in the DHT under the addresses it listens on, if
/// identify shows it is of our pool (same identify protocol, speaks our kad
/// protocol); other peers are left out of the routing table.
pub fn add_identified_peer(
    kad: &mut kad::Behaviour<kad::store::MemoryStore>,
    peer: &PeerId,
    info: identify::Info,
) {
    let speaks_kad = info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL);
    if info.protocol_version == IDENTIFY_PROTOCOL && speaks_kad {
        for addr in info.listen_addrs {
            kad.add_address(peer, addr);
        }
    }
}

/// Identify on the pool's protocol, announcing this software's version.
pub fn identify(key: &libp2p::identity::Keypair) -> identify::Behaviour {
    identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
            .with_agent_version(SOFTWARE_VERSION.to_string()),
    )
}

/// The directory request-response behaviour: `support` says which side this
/// peer serves (the bootstrap answers, nodes ask). The CBOR codec is capped
/// at the protocol's message limits so a peer cannot make us buffer more.
pub fn directory(support: ProtocolSupport, request_timeout: Duration) -> DirectoryBehaviour {
    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_DIRECTORY_REQUEST_BYTES as u64)
        .set_response_size_maximum(MAX_DIRECTORY_RESPONSE_BYTES as u64);
    request_response::Behaviour::with_codec(
        codec,
        [(StreamProtocol::new(DIRECTORY_PROTOCOL), support)],
        request_response::Config::default().with_request_timeout(request_timeout),
    )
}

/// Why [`wait_listening`] found no address.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A listener failed while starting.
    #[error("{0}")]
    Listener(std::io::Error),
    /// Nothing was bound before [`LISTEN_DEADLINE`].
    #[error("no listen address was bound within {} s", LISTEN_DEADLINE.as_secs())]
    NothingBound,
}

/// Drives the swarm until each of `listeners` reported an address (or
/// [`LISTEN_DEADLINE`] passes), returning the addresses seen.
///
/// With `settle`, keeps collecting addresses for that long afterwards: a
/// wildcard listener reports one address per interface, back to back, and
/// the first one alone completes its listener.
pub async fn wait_listening<B>(
    swarm: &mut Swarm<B>,
    listeners: usize,
    settle: Option<Duration>,
) -> Result<Vec<Multiaddr>, ListenError>
where
    B: NetworkBehaviour,
    B::ToSwarm: Debug,
{
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
    if let Some(settle) = settle {
        let settle = tokio::time::sleep(settle);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::NewListenAddr { address, .. } = ev {
                        addrs.push(address);
                    }
                }
            }
        }
    }
    if addrs.is_empty() {
        return Err(ListenError::NothingBound);
    }
    Ok(addrs)
}
