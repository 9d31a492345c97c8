//! A mixnn pool node: identity, mix keys, descriptor, discovery, and the
//! packet streams between neighbours.
//!
//! [`Node::start`] loads a persistent ed25519 identity (its libp2p peer id)
//! and the per-epoch X25519 mix keys from the data dir, joins the pool
//! (TCP + Noise + Yamux; Kademlia, identify, ping), publishes a signed
//! [`mixnn_protocol::NodeDescriptor`] to the bootstraps and keeps it fresh,
//! and carries fixed-size packets over long-lived streams (see [`packets`]).
//!
//! [`Node::serve_jobs`] attaches the packet [`processor`], a thin shell of
//! threads and queues around the [`hop`]: Sphinx unwrap, the hop's op on its
//! [`jobs`] (layers in the sandbox), re-seal, forward, each decision a pure
//! function of the packet and the node's state; and the node's cover
//! traffic (loops and drops, see `cover`).

pub mod bench;
pub mod config;
mod cover;
pub mod hop;
pub mod jobs;
pub mod metrics;
pub mod mixkeys;
mod node;
pub mod processor;
pub mod slots;
pub mod views;

pub use config::{ConfigError, NodeConfig};
pub use hop::{node_id_of, peer_of};
pub use libp2p::{Multiaddr, PeerId};
pub use metrics::{DropReason, LinkMetrics, Metrics};
pub use mixkeys::{MixKeyStore, MixKeys};
pub use mixnn_p2p::{InboundPacket, PacketInbox, PacketSender, SendError, TraceEntry};
pub use node::{IDENTITY_FILE, Node, NodeError};
pub use views::{JobView, JobViews};
