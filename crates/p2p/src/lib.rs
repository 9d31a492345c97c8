//! The libp2p pieces the pool's peers share: one swarm constructor for
//! node, designer and bootstrap ([`behaviour`]), the start-up path of a
//! pool peer ([`setup`]), the swarm task ([`peer`]), the packet streams
//! ([`packets`]) that nodes and the designer both speak, and the I/O the
//! protocol crate must not do itself: persistent identities in secret
//! files ([`secret_file`], [`identity`]) and the wall clock ([`clock`]).

pub mod behaviour;
pub mod clock;
pub mod direct;
pub mod identity;
pub mod link_metrics;
pub mod link_trace;
pub mod packets;
pub mod peer;
pub mod secret_file;
pub mod setup;

pub use behaviour::{
    BuildError, DirectoryBehaviour, PeerBehaviour, PeerBehaviourEvent, Role, add_identified_peer,
    build_swarm,
};
pub use clock::unix_now;
pub use direct::{DirectSink, RemoteIps};
pub use link_metrics::{DropReason, LinkMetrics};
pub use link_trace::{LinkTrace, TraceEntry};
pub use packets::{
    DEFAULT_MAX_LINKS, InboundPacket, PacketInbox, PacketSender, SendError, SizeClasses,
};
pub use peer::{DirectoryError, SwarmHandle, split_p2p};
pub use setup::{
    AddrError, BootstrapAddr, LISTEN_DEADLINE, ListenError, PeerSetup, PoolPeer, QueueLimits,
    SetupError, listen, parse_bootstrap, start_pool_peer,
};
