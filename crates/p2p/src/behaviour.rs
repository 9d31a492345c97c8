//! The behaviours every pool peer composes, and the one swarm constructor.
//!
//! Node, designer and bootstrap speak the same protocols (Kademlia, identify,
//! ping, the directory request-response) with the same codec limits, so the
//! swarm is built here once; a [`Role`] picks the few knobs where they
//! differ (Kademlia mode and timeouts, which side of the directory protocol
//! the peer serves, whether it carries packet streams).

use std::time::Duration;

use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{PeerId, StreamProtocol, Swarm, identify, kad, noise, ping, tcp, yamux};
use mixnn_protocol::{
    DIRECTORY_PROTOCOL, DirectoryRequest, DirectoryResponse, IDENTIFY_PROTOCOL, KAD_PROTOCOL,
    MAX_DIRECTORY_REQUEST_BYTES, MAX_DIRECTORY_RESPONSE_BYTES, SOFTWARE_VERSION,
};

/// Connections being set up by others at once (handshakes are not free).
pub const MAX_PENDING_INCOMING: u32 = 128;
/// Connections others opened that are up at once.
pub const MAX_ESTABLISHED_INCOMING: u32 = 1024;
/// Connections to or from one peer at once (a neighbour needs one; a few
/// allow for simultaneous dials and reconnects).
pub const MAX_ESTABLISHED_PER_PEER: u32 = 4;

/// The swarm's connection limits: a peer that opens connection after
/// connection is refused past these, whatever its identity.
fn connection_limits() -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        ConnectionLimits::default()
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
            .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
            .with_max_established_per_peer(Some(MAX_ESTABLISHED_PER_PEER)),
    )
}

/// The directory behaviour every peer composes.
pub type DirectoryBehaviour =
    request_response::cbor::Behaviour<DirectoryRequest, DirectoryResponse>;

/// The part a peer plays in the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A pool node: findable in the DHT, asks the directory, carries packets.
    Node,
    /// A peer that only uses the pool (the designer): Kademlia in client
    /// mode, so it never enters the nodes' routing tables (a designer must
    /// not be findable in the DHT); otherwise as a node.
    Client,
    /// The bootstrap: where others start. It serves the directory, carries
    /// no packets, and has no one to bootstrap from itself.
    Bootstrap,
}

impl Role {
    /// Kademlia query timeout.
    fn kad_timeout(self) -> Duration {
        match self {
            Role::Node | Role::Client => Duration::from_secs(20),
            Role::Bootstrap => Duration::from_secs(30),
        }
    }

    /// Kademlia's periodic bootstrap: only a node has a DHT to keep fresh
    /// (a client never serves it, a bootstrap learns the pool as peers connect).
    fn periodic_bootstrap(self) -> bool {
        self == Role::Node
    }

    /// Which side of the directory protocol the peer serves, and its
    /// request timeout.
    fn directory(self) -> (ProtocolSupport, Duration) {
        match self {
            Role::Node | Role::Client => (ProtocolSupport::Outbound, Duration::from_secs(10)),
            Role::Bootstrap => (ProtocolSupport::Inbound, Duration::from_secs(15)),
        }
    }

    /// Whether the peer opens and accepts packet streams.
    pub fn carries_packets(self) -> bool {
        self != Role::Bootstrap
    }
}

pub use composed::{PeerBehaviour, PeerBehaviourEvent};

/// The derive also generates `PeerBehaviourEvent`, one variant per field,
/// each carrying that behaviour's own event; the generated variants cannot
/// carry docs, hence the allow on this module alone.
#[allow(missing_docs)]
mod composed {
    use super::{
        DirectoryBehaviour, NetworkBehaviour, Toggle, connection_limits, identify, kad, ping,
    };

    /// One behaviour per concern, composed as in rust-libp2p's examples.
    #[derive(NetworkBehaviour)]
    pub struct PeerBehaviour {
        pub(super) limits: connection_limits::Behaviour,
        pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
        pub(super) identify: identify::Behaviour,
        pub(super) ping: ping::Behaviour,
        pub(super) directory: DirectoryBehaviour,
        pub(super) stream: Toggle<libp2p_stream::Behaviour>,
    }
}

impl PeerBehaviour {
    fn new(key: &libp2p::identity::Keypair, role: Role) -> Self {
        let mut kad = kad(key, role.kad_timeout(), role.periodic_bootstrap());
        if role == Role::Client {
            kad.set_mode(Some(kad::Mode::Client));
        }
        let (support, timeout) = role.directory();
        Self {
            limits: connection_limits(),
            kad,
            identify: identify(key),
            ping: ping::Behaviour::default(),
            directory: directory(support, timeout),
            stream: Toggle::from(role.carries_packets().then(libp2p_stream::Behaviour::new)),
        }
    }

    /// The Kademlia behaviour.
    pub fn kad_mut(&mut self) -> &mut kad::Behaviour<kad::store::MemoryStore> {
        &mut self.kad
    }

    /// The directory request-response behaviour.
    pub fn directory_mut(&mut self) -> &mut DirectoryBehaviour {
        &mut self.directory
    }

    /// A handle to open and accept packet streams; `None` for a role that
    /// carries no packets.
    pub fn stream_control(&self) -> Option<libp2p_stream::Control> {
        self.stream
            .as_ref()
            .map(libp2p_stream::Behaviour::new_control)
    }
}

/// Why a swarm could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Noise configuration refused the identity.
    #[error("building the libp2p transport: {0}")]
    Noise(#[from] noise::Error),
}

/// A swarm for `role` over TCP (nodelay), Noise and yamux on tokio;
/// idle connections close after a minute.
pub fn build_swarm(
    keypair: libp2p::identity::Keypair,
    role: Role,
) -> Result<Swarm<PeerBehaviour>, BuildError> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| PeerBehaviour::new(key, role))
        .map_err(|never: std::convert::Infallible| -> BuildError { match never {} })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

/// A Kademlia behaviour on the pool's protocol, with an in-memory store.
///
/// `periodic_bootstrap: false` turns kad's periodic bootstrap off, for a peer
/// that has no one to bootstrap from (the bootstrap itself); `true` keeps
/// libp2p's default interval.
fn kad(
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
fn identify(key: &libp2p::identity::Keypair) -> identify::Behaviour {
    identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
            .with_agent_version(SOFTWARE_VERSION.to_string()),
    )
}

/// The directory request-response behaviour: `support` says which side this
/// peer serves (the bootstrap answers, nodes ask). The CBOR codec is capped
/// at the protocol's message limits so a peer cannot make us buffer more.
fn directory(support: ProtocolSupport, request_timeout: Duration) -> DirectoryBehaviour {
    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_DIRECTORY_REQUEST_BYTES as u64)
        .set_response_size_maximum(MAX_DIRECTORY_RESPONSE_BYTES as u64);
    request_response::Behaviour::with_codec(
        codec,
        [(StreamProtocol::new(DIRECTORY_PROTOCOL), support)],
        request_response::Config::default().with_request_timeout(request_timeout),
    )
}
