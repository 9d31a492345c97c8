//! [`Node::start`]: identity, keys, swarm, descriptor, packet streams.
//!
//! Start-up order matters for the failure modes SPEC §6 names: the identity
//! and mix keys are loaded (or created and persisted) before any network
//! activity, so a node that then fails to reach its bootstrap has lost
//! nothing; and start-up only returns once at least one bootstrap has
//! accepted the descriptor, so "started" means "listed in the pool".

mod publish;
mod serve;
mod setup;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mixnn_p2p::secret_file::{self, SecretFileError};
use mixnn_p2p::{PacketInbox, PacketSender, unix_now};
use mixnn_protocol::{DirectoryRequest, DirectoryResponse, NodeDescriptor, SignedDescriptor};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{ConfigError, NodeConfig};
use crate::metrics::{self, Metrics, MetricsError};
use crate::mixkeys::{MixKeyError, MixKeyStore, MixKeys};
use crate::views::JobViews;
use publish::{Shared, sign_descriptor};

/// How long a stopping node waits for its connections to close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The identity file's name inside the data dir.
pub const IDENTITY_FILE: &str = "identity.key";

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Loading or creating the identity key failed.
    #[error(transparent)]
    Identity(#[from] SecretFileError),
    /// Loading, creating or rotating the mix keys failed.
    #[error(transparent)]
    MixKeys(#[from] MixKeyError),
    /// A listen or bootstrap address does not parse.
    #[error("bad multiaddr {addr:?}: {reason}")]
    Addr {
        /// The address as given.
        addr: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Setting up the transport or the node's tasks failed; the message
    /// says what.
    #[error("libp2p: {0}")]
    Transport(String),
    /// Binding a listen address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why binding failed.
        reason: String,
    },
    /// The metrics endpoint could not bind its address.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Signing the node's descriptor failed.
    #[error(transparent)]
    Descriptor(#[from] mixnn_protocol::DescriptorError),
    /// No bootstrap accepted the descriptor before the timeout.
    #[error(
        "no bootstrap accepted this node's descriptor within {secs} s:\n  {}",
        failures.join("\n  ")
    )]
    BootstrapUnreachable {
        /// The timeout, in seconds.
        secs: u64,
        /// Why each bootstrap refused the last attempt, one line each.
        failures: Vec<String>,
    },
    /// No bootstrap address is configured.
    #[error("no bootstrap configured (give at least one --bootstrap MULTIADDR)")]
    NoBootstrap,
    /// A directory request to a bootstrap failed.
    #[error("directory request to {peer}: {reason}")]
    Directory {
        /// The bootstrap asked.
        peer: PeerId,
        /// Why the request failed.
        reason: String,
    },
}

/// A running pool node. Dropping it stops its tasks; [`shutdown`](Self::shutdown)
/// also waits for them.
pub struct Node {
    shared: Arc<Shared>,
    listen_addrs: Vec<Multiaddr>,
    metrics_addr: Option<SocketAddr>,
    control: libp2p_stream::Control,
    sender: PacketSender,
    inbox: Option<PacketInbox>,
    /// What the node saw per job, once it serves jobs.
    views: Option<Arc<JobViews>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Starts a node: loads state from `cfg.data_dir`, listens, joins the
    /// pool through the bootstraps and publishes its descriptor. Fails with
    /// [`NodeError::BootstrapUnreachable`] if no bootstrap accepts the
    /// descriptor within `bootstrap_timeout_secs` (nothing stored is lost).
    pub async fn start(cfg: NodeConfig) -> Result<Self, NodeError> {
        cfg.validate()?;
        let bootstraps = setup::bootstraps(&cfg)?;
        let listen = setup::parse_addrs(&cfg.listen)?;
        let external = setup::parse_addrs(&cfg.external_addrs)?;

        secret_file::ensure_private_dir(&cfg.data_dir)?;
        let (keypair, signing) = setup::load_identity(&cfg.data_dir)?;
        let now = unix_now();
        let store = MixKeyStore::open(&cfg.data_dir, cfg.epoch_secs, cfg.key_grace_secs, now)?;
        let mix_keys = MixKeys(Arc::new(RwLock::new(store)));

        let peer_id = keypair.public().to_peer_id();
        let metrics = Arc::new(Metrics::new(peer_id.to_base58()));
        let (stop, stop_rx) = watch::channel(false);
        let peer =
            setup::start_peer(&cfg, keypair, &listen, &bootstraps, &metrics.link, &stop_rx).await?;
        let bound = peer.listen_addrs;
        let mut tasks = peer.tasks;
        let advertised: Vec<String> = if external.is_empty() {
            &bound
        } else {
            &external
        }
        .iter()
        .map(ToString::to_string)
        .collect();

        let (metrics_addr, metrics_task) = match cfg.metrics {
            Some(addr) => {
                let (bound, task) = metrics::serve(addr, metrics.clone(), stop_rx.clone()).await?;
                info!(addr = %bound, "metrics at http://{bound}/metrics");
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        tasks.extend(metrics_task);
        let (handle, control, sender, inbox) = (peer.swarm, peer.control, peer.sender, peer.inbox);

        let descriptor = sign_descriptor(&cfg, &signing, peer_id, &advertised, &mix_keys, now)?;
        if let Some((epoch, _)) = mix_keys.current(now) {
            metrics.mix_epoch.store(epoch, Ordering::Relaxed);
        }
        let shared = Arc::new(Shared {
            signing,
            peer_id,
            addrs: advertised,
            bootstraps: bootstraps.iter().map(|b| b.peer).collect(),
            mix_keys,
            descriptor: Mutex::new(descriptor),
            swarm: handle,
            metrics,
            cfg,
        });
        let listen_addrs = (bound.iter())
            .map(|a| a.clone().with(Protocol::P2p(peer_id)))
            .collect();
        let node = Self {
            shared: shared.clone(),
            listen_addrs,
            metrics_addr,
            control,
            sender,
            inbox: Some(inbox),
            views: None,
            stop,
            tasks,
        };
        node.join(stop_rx).await
    }

    /// Waits for a bootstrap to accept the descriptor, then keeps it fresh;
    /// a node no bootstrap accepts is shut down.
    async fn join(mut self, stop: watch::Receiver<bool>) -> Result<Self, NodeError> {
        let shared = self.shared.clone();
        if let Err(failures) = publish::join(&shared).await {
            self.shutdown().await;
            let secs = shared.cfg.bootstrap_timeout_secs;
            return Err(NodeError::BootstrapUnreachable { secs, failures });
        }
        (self.tasks).push(tokio::spawn(publish::refresh_loop(shared.clone(), stop)));
        info!(peer_id = %shared.peer_id, addrs = ?self.listen_addrs, "node joined the pool");
        Ok(self)
    }

    /// The node's libp2p peer id, derived from its identity key.
    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    /// The bound listen addresses, each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Where the metrics endpoint listens, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The node's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The descriptor as last signed and published.
    pub fn descriptor(&self) -> SignedDescriptor {
        lock(&self.shared.descriptor).clone()
    }

    /// The mix keys by epoch, for the packet processor.
    pub fn mix_keys(&self) -> MixKeys {
        self.shared.mix_keys.clone()
    }

    /// Queues packets to neighbours.
    pub fn sender(&self) -> PacketSender {
        self.sender.clone()
    }

    /// The inbound packet queue; there is one, so the first caller gets it.
    pub fn take_inbox(&mut self) -> Option<PacketInbox> {
        self.inbox.take()
    }

    /// Raw stream access (for tools and tests): streams opened here skip
    /// the packet framing, so the peer sees whatever is written.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Makes `addrs` known as `peer`'s, e.g. from its verified descriptor.
    pub async fn add_peer_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        self.shared.swarm.add_addresses(peer, addrs).await;
    }

    /// Signs the descriptor anew and publishes it to every bootstrap now;
    /// returns one line per bootstrap that refused or was unreachable.
    pub async fn republish(&self) -> Result<Vec<String>, NodeError> {
        self.shared.refresh_descriptor()?;
        Ok(self.shared.publish().await)
    }

    /// Sends one directory request to `bootstrap` (for tools and tests: the
    /// answer is not verified here).
    pub async fn directory_request(
        &self,
        bootstrap: PeerId,
        request: DirectoryRequest,
    ) -> Result<DirectoryResponse, NodeError> {
        self.shared
            .swarm
            .directory(bootstrap, request)
            .await
            .map_err(|e| NodeError::Directory {
                peer: bootstrap,
                reason: e.to_string(),
            })
    }

    /// The pool as the first answering bootstrap lists it, every entry
    /// verified; entries that fail verification are skipped with a warning.
    pub async fn list_directory(&self) -> Result<Vec<NodeDescriptor>, NodeError> {
        self.shared
            .swarm
            .list_directory(&self.shared.bootstraps)
            .await
            .map_err(|e| NodeError::Directory {
                peer: self
                    .shared
                    .bootstraps
                    .first()
                    .copied()
                    .unwrap_or(self.shared.peer_id),
                reason: e.to_string(),
            })
    }

    /// Closes every connection first, so the jobs crossing this node fail
    /// fast (its neighbours' links close, and a designer linked to it sees
    /// its pending answer fail at once: PROTOCOL.md §12.8), then stops
    /// every task and waits for them (up to 5 s). Stored state is written
    /// as it changes, so nothing is lost here; the mix keys are written
    /// once more for good measure.
    pub async fn shutdown(mut self) {
        let peers = self.shared.swarm.disconnect_all().await;
        // Let the swarm task carry the closes out before it stops (bounded).
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        while self
            .shared
            .metrics
            .link
            .peers_connected
            .load(Ordering::Relaxed)
            > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        info!(peers, "connections closed");
        let _ = self.stop.send(true);
        if let Err(e) = self.shared.mix_keys.read(|s| s.persist()) {
            warn!(error = %e, "saving mix keys at shutdown");
        }
        let tasks = std::mem::take(&mut self.tasks);
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            warn!("some node tasks did not stop within 5 s");
        }
        info!(peer_id = %self.shared.peer_id, "node stopped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
