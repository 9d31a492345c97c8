//! Start-up steps before the node joins: addresses from the configuration,
//! the identity from the data dir, and the pool peer (swarm, listeners,
//! packet streams) through the one start-up path of `mixnn_p2p`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use mixnn_p2p::{BootstrapAddr, PeerSetup, PoolPeer, QueueLimits, Role, SizeClasses};
use tokio::sync::watch;
use tracing::info;

use super::{IDENTITY_FILE, NodeError};
use crate::config::NodeConfig;
use crate::metrics::LinkMetrics;

fn parse_addr(s: &str) -> Result<Multiaddr, NodeError> {
    s.parse()
        .map_err(|e: libp2p::multiaddr::Error| NodeError::Addr {
            addr: s.to_string(),
            reason: e.to_string(),
        })
}

/// Parses every address of `list`.
pub(super) fn parse_addrs(list: &[String]) -> Result<Vec<Multiaddr>, NodeError> {
    list.iter().map(|s| parse_addr(s)).collect()
}

/// The configured bootstraps; each address must name its peer.
pub(super) fn bootstraps(cfg: &NodeConfig) -> Result<Vec<BootstrapAddr>, NodeError> {
    if cfg.bootstrap.is_empty() {
        return Err(NodeError::NoBootstrap);
    }
    cfg.bootstrap
        .iter()
        .map(|s| {
            mixnn_p2p::parse_bootstrap(s).map_err(|e| NodeError::Addr {
                addr: s.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Loads (or creates) the identity seed in `data_dir`.
pub(super) fn load_identity(
    data_dir: &Path,
) -> Result<(libp2p::identity::Keypair, SigningKey), NodeError> {
    let id = mixnn_p2p::identity::load_or_create(&data_dir.join(IDENTITY_FILE))?;
    let signing = SigningKey::from_bytes(&id.seed);
    info!(created = id.created, peer_id = %id.keypair.public().to_peer_id(), "identity");
    Ok((id.keypair, signing))
}

/// The pool peer of this node: swarm, listeners, bootstrap dials, packet
/// streams; its bound addresses are cut to a descriptor's worth.
pub(super) async fn start_peer(
    cfg: &NodeConfig,
    keypair: libp2p::identity::Keypair,
    listen: &[Multiaddr],
    bootstraps: &[BootstrapAddr],
    link: &Arc<LinkMetrics>,
    stop: &watch::Receiver<bool>,
) -> Result<PoolPeer, NodeError> {
    let mut peer = mixnn_p2p::start_pool_peer(PeerSetup {
        keypair,
        role: Role::Node,
        listen,
        // A wildcard listener reports one address per interface, back to
        // back: give the rest 100 ms to arrive after the first.
        settle: Some(Duration::from_millis(100)),
        bootstraps,
        sizes: SizeClasses::new(&cfg.packet_sizes),
        inbound: QueueLimits {
            packets: cfg.inbound_queue,
            bytes: cfg.inbound_queue_bytes,
        },
        outbound: QueueLimits {
            packets: cfg.outbound_queue,
            bytes: cfg.outbound_queue_bytes,
        },
        metrics: link.clone(),
        stop: stop.clone(),
        direct: cfg.direct_links,
    })
    .await
    .map_err(|e| match e {
        mixnn_p2p::SetupError::Listen(mixnn_p2p::ListenError::Refused { addr, source }) => {
            NodeError::Listen {
                addr: addr.to_string(),
                reason: source.to_string(),
            }
        }
        e => NodeError::Transport(e.to_string()),
    })?;
    peer.listen_addrs
        .truncate(mixnn_protocol::descriptor::MAX_ADDRS);
    peer.sender.set_max_links(cfg.max_links);
    Ok(peer)
}
