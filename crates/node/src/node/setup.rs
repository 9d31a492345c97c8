//! Start-up steps before the node joins: addresses from the configuration,
//! the identity from the data dir, the swarm listening, the packet streams.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::{Multiaddr, PeerId};
use mixnn_p2p::packets::{self, PacketInbox, PacketSender, SizeClasses};
use mixnn_p2p::peer::{self as swarm, SwarmHandle};
use mixnn_protocol::secret_file;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;
use zeroize::Zeroizing;

use super::{IDENTITY_FILE, NodeError};
use crate::config::NodeConfig;
use crate::metrics::LinkMetrics;

/// A bootstrap as configured: its peer id, its address without the
/// `/p2p/` suffix, and the full address.
pub(super) type BootstrapAddr = (PeerId, Multiaddr, Multiaddr);

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
    let mut bootstraps = Vec::new();
    for s in &cfg.bootstrap {
        let addr = parse_addr(s)?;
        let (peer, plain) = swarm::split_p2p(&addr).ok_or_else(|| NodeError::Addr {
            addr: s.clone(),
            reason: "a bootstrap address must end in /p2p/<peer id> \
                     (`mixnn bootstrap` prints it)"
                .into(),
        })?;
        bootstraps.push((peer, plain, addr));
    }
    Ok(bootstraps)
}

/// Loads (or creates) the identity seed in `data_dir`.
pub(super) fn load_identity(
    data_dir: &Path,
) -> Result<(libp2p::identity::Keypair, SigningKey), NodeError> {
    let (seed, created) = secret_file::load_or_create_identity(&data_dir.join(IDENTITY_FILE))?;
    let mut copy = Zeroizing::new(*seed);
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut copy[..])
        .map_err(|e| NodeError::Transport(format!("identity key: {e}")))?;
    let signing = SigningKey::from_bytes(&seed);
    info!(created, peer_id = %keypair.public().to_peer_id(), "identity");
    Ok((keypair, signing))
}

/// The libp2p swarm of this node, listening on `listen`; returns it with
/// the bound addresses (at most a descriptor's worth).
pub(super) async fn build_swarm(
    keypair: libp2p::identity::Keypair,
    listen: &[Multiaddr],
) -> Result<(libp2p::Swarm<swarm::PeerBehaviour>, Vec<Multiaddr>), NodeError> {
    let mut swarm = swarm::build(keypair).map_err(NodeError::Transport)?;
    for a in listen {
        swarm.listen_on(a.clone()).map_err(|e| NodeError::Listen {
            addr: a.to_string(),
            reason: e.to_string(),
        })?;
    }
    // A wildcard listener reports one address per interface, back to
    // back: give the rest 100 ms to arrive after the first.
    let mut bound =
        mixnn_p2p::wait_listening(&mut swarm, listen.len(), Some(Duration::from_millis(100)))
            .await
            .map_err(|e| NodeError::Transport(e.to_string()))?;
    bound.truncate(mixnn_protocol::descriptor::MAX_ADDRS);
    Ok((swarm, bound))
}

/// The packet streams: the inbound queue (with its task) and the sender.
pub(super) fn packet_streams(
    cfg: &NodeConfig,
    control: &libp2p_stream::Control,
    handle: &SwarmHandle,
    link: &Arc<LinkMetrics>,
    stop: &watch::Receiver<bool>,
) -> Result<(PacketInbox, JoinHandle<()>, PacketSender), NodeError> {
    let sizes = SizeClasses::new(&cfg.packet_sizes);
    let (inbox, inbound_task) = packets::start_inbound(
        control.clone(),
        sizes.clone(),
        cfg.inbound_queue,
        cfg.inbound_queue_bytes,
        link.clone(),
        stop.clone(),
    )
    .map_err(|e| NodeError::Transport(e.to_string()))?;
    let sender = PacketSender::new(
        control.clone(),
        handle.clone(),
        sizes,
        cfg.outbound_queue,
        cfg.outbound_queue_bytes,
        link.clone(),
        stop.clone(),
    );
    Ok((inbox, inbound_task, sender))
}
