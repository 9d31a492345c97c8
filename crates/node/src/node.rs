//! [`Node::start`]: identity, keys, swarm, descriptor, packet streams.
//!
//! Start-up order matters for the failure modes SPEC §6 names: the identity
//! and mix keys are loaded (or created and persisted) before any network
//! activity, so a node that then fails to reach its bootstrap has lost
//! nothing; and start-up only returns once at least one bootstrap has
//! accepted the descriptor, so "started" means "listed in the pool".

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mixnn_p2p::secret_file::{self, SecretFileError};
use mixnn_p2p::unix_now;
use mixnn_protocol::{
    Capacity, DirectoryRequest, DirectoryResponse, MixKeyInfo, NodeDescriptor, SOFTWARE_VERSION,
    SignedDescriptor,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{ConfigError, NodeConfig};
use crate::jobs::{JobLimits, Jobs};
use crate::metrics::{self, Metrics, MetricsError};
use crate::mixkeys::{MixKeyError, MixKeyStore, MixKeys};
use crate::processor::{JobView, Processor};
use mixnn_p2p::{
    PacketInbox, PacketSender, PeerSetup, QueueLimits, Role, SizeClasses, SwarmHandle,
};

/// The identity file's name inside the data dir.
pub const IDENTITY_FILE: &str = "identity.key";

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] SecretFileError),
    #[error(transparent)]
    MixKeys(#[from] MixKeyError),
    #[error("bad multiaddr {addr:?}: {reason}")]
    Addr { addr: String, reason: String },
    #[error("libp2p: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Descriptor(#[from] mixnn_protocol::DescriptorError),
    #[error(
        "no bootstrap accepted this node's descriptor within {secs} s:\n  {}",
        failures.join("\n  ")
    )]
    BootstrapUnreachable { secs: u64, failures: Vec<String> },
    #[error("no bootstrap configured (give at least one --bootstrap MULTIADDR)")]
    NoBootstrap,
    #[error("directory request to {peer}: {reason}")]
    Directory { peer: PeerId, reason: String },
}

/// What the node's background tasks share.
struct Shared {
    cfg: NodeConfig,
    signing: SigningKey,
    peer_id: PeerId,
    addrs: Vec<String>,
    bootstraps: Vec<PeerId>,
    mix_keys: MixKeys,
    descriptor: Mutex<SignedDescriptor>,
    swarm: SwarmHandle,
    metrics: Arc<Metrics>,
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
    processor: Option<Arc<Processor>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn parse_addr(s: &str) -> Result<Multiaddr, NodeError> {
    s.parse()
        .map_err(|e: libp2p::multiaddr::Error| NodeError::Addr {
            addr: s.to_string(),
            reason: e.to_string(),
        })
}

/// Loads (or creates) the identity seed in `data_dir`.
fn load_identity(data_dir: &Path) -> Result<(libp2p::identity::Keypair, SigningKey), NodeError> {
    let id = mixnn_p2p::identity::load_or_create(&data_dir.join(IDENTITY_FILE))?;
    let signing = SigningKey::from_bytes(&id.seed);
    info!(created = id.created, peer_id = %id.keypair.public().to_peer_id(), "identity");
    Ok((id.keypair, signing))
}

impl Node {
    /// Starts a node: loads state from `cfg.data_dir`, listens, joins the
    /// pool through the bootstraps and publishes its descriptor. Fails with
    /// [`NodeError::BootstrapUnreachable`] if no bootstrap accepts the
    /// descriptor within `bootstrap_timeout_secs` (nothing stored is lost).
    pub async fn start(cfg: NodeConfig) -> Result<Self, NodeError> {
        cfg.validate()?;
        if cfg.bootstrap.is_empty() {
            return Err(NodeError::NoBootstrap);
        }
        let mut bootstraps = Vec::new();
        for s in &cfg.bootstrap {
            bootstraps.push(mixnn_p2p::parse_bootstrap(s).map_err(|e| NodeError::Addr {
                addr: s.clone(),
                reason: e.to_string(),
            })?);
        }
        let listen: Vec<Multiaddr> = cfg
            .listen
            .iter()
            .map(|s| parse_addr(s))
            .collect::<Result<_, _>>()?;
        let external: Vec<Multiaddr> = cfg
            .external_addrs
            .iter()
            .map(|s| parse_addr(s))
            .collect::<Result<_, _>>()?;

        secret_file::ensure_private_dir(&cfg.data_dir)?;
        let (keypair, signing) = load_identity(&cfg.data_dir)?;
        let now = unix_now();
        let store = MixKeyStore::open(&cfg.data_dir, cfg.epoch_secs, cfg.key_grace_secs, now)?;
        let mix_keys = MixKeys(Arc::new(RwLock::new(store)));

        let peer_id = keypair.public().to_peer_id();
        let metrics = Arc::new(Metrics::new(peer_id.to_base58()));
        let (stop, stop_rx) = watch::channel(false);
        let peer = mixnn_p2p::start_pool_peer(PeerSetup {
            keypair,
            role: Role::Node,
            listen: &listen,
            // A wildcard listener reports one address per interface, back
            // to back: give the rest 100 ms to arrive after the first.
            settle: Some(Duration::from_millis(100)),
            bootstraps: &bootstraps,
            sizes: SizeClasses::new(&cfg.packet_sizes),
            inbound: QueueLimits {
                packets: cfg.inbound_queue,
                bytes: cfg.inbound_queue_bytes,
            },
            outbound: QueueLimits {
                packets: cfg.outbound_queue,
                bytes: cfg.outbound_queue_bytes,
            },
            metrics: metrics.link.clone(),
            stop: stop_rx.clone(),
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
        let mut tasks = peer.tasks;
        let mut bound = peer.listen_addrs;
        bound.truncate(mixnn_protocol::descriptor::MAX_ADDRS);
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
        let mut node = Self {
            shared: shared.clone(),
            listen_addrs: bound
                .iter()
                .map(|a| a.clone().with(Protocol::P2p(peer_id)))
                .collect(),
            metrics_addr,
            control,
            sender,
            inbox: Some(inbox),
            processor: None,
            stop,
            tasks,
        };

        // Join: the first publish must succeed somewhere, retried until the
        // timeout (a bootstrap that is still starting gets a second chance).
        let secs = shared.cfg.bootstrap_timeout_secs;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut failures;
        loop {
            failures = shared.publish().await;
            if failures.len() < shared.bootstraps.len() {
                break;
            }
            if tokio::time::Instant::now() + Duration::from_secs(1) >= deadline {
                for f in &failures {
                    warn!("{f}");
                }
                node.shutdown().await;
                return Err(NodeError::BootstrapUnreachable { secs, failures });
            }
            warn!(failures = ?failures, "no bootstrap reachable yet; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for f in &failures {
            warn!("{f}");
        }
        node.tasks
            .push(tokio::spawn(refresh_loop(shared.clone(), stop_rx)));
        info!(peer_id = %peer_id, addrs = ?node.listen_addrs, "node joined the pool");
        Ok(node)
    }

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

    /// Starts serving jobs: packets from the inbox go through the Sphinx
    /// processor to layers in `sandbox`, and the node sends cover traffic.
    /// Without this call the inbox is left to the caller (tests, tools).
    pub fn serve_jobs(&mut self, sandbox: Arc<mixnn_sandbox::Sandbox>) -> Result<(), NodeError> {
        let inbox = self
            .inbox
            .take()
            .ok_or_else(|| NodeError::Transport("the packet inbox is taken already".into()))?;
        let cfg = &self.shared.cfg;
        if cfg.jobs > 0 {
            warm_up(sandbox.clone());
        }
        let jobs = Jobs::new(
            sandbox,
            JobLimits {
                max_jobs: cfg.jobs as usize,
                max_shard_bytes: cfg.max_shard_bytes,
                idle: Duration::from_secs(cfg.job_idle_secs),
            },
            self.shared.metrics.clone(),
        );
        let processor = Arc::new(Processor::new(
            mixnn_sphinx::Geometry::default(),
            self.shared.mix_keys.clone(),
            jobs,
            self.sender.clone(),
            self.shared.metrics.clone(),
            self.node_id(),
        ));
        let stop = self.stop.subscribe();
        self.tasks.push(crate::processor::spawn(
            processor.clone(),
            inbox,
            cfg.workers,
            stop,
        ));
        self.tasks.push(crate::cover::spawn(
            processor.clone(),
            self.shared.swarm.clone(),
            self.shared.bootstraps.clone(),
            cfg,
            self.stop.subscribe(),
        ));
        self.processor = Some(processor);
        Ok(())
    }

    /// How routing info names this node (its ed25519 identity key).
    pub fn node_id(&self) -> mixnn_sphinx::NodeId {
        crate::processor::node_id_of(&self.shared.signing.verifying_key().to_bytes())
    }

    /// What this node saw of each job it served (empty before
    /// [`serve_jobs`](Self::serve_jobs)).
    pub fn job_views(&self) -> Vec<JobView> {
        match &self.processor {
            Some(p) => p
                .views
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect(),
            None => Vec::new(),
        }
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

    /// Stops every task and waits for them (up to 5 s). Stored state is
    /// written as it changes, so nothing is lost here; the mix keys are
    /// written once more for good measure.
    pub async fn shutdown(mut self) {
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

fn sign_descriptor(
    cfg: &NodeConfig,
    signing: &SigningKey,
    peer_id: PeerId,
    addrs: &[String],
    mix_keys: &MixKeys,
    now: u64,
) -> Result<SignedDescriptor, NodeError> {
    let (epoch, public) = mix_keys
        .current(now)
        .ok_or_else(|| NodeError::Transport("no mix key for the current epoch".into()))?;
    let desc = NodeDescriptor {
        format: mixnn_protocol::descriptor::DESCRIPTOR_FORMAT,
        peer_id: peer_id.to_base58(),
        identity_key: signing.verifying_key().to_bytes(),
        addrs: addrs.to_vec(),
        mix_key: MixKeyInfo {
            epoch,
            epoch_secs: cfg.epoch_secs,
            public: public.to_bytes(),
        },
        capacity: Capacity {
            jobs: cfg.jobs,
            memory_mib: cfg.guest_memory_mib,
        },
        software: SOFTWARE_VERSION.to_string(),
        issued_at: now,
        expires_at: now + cfg.descriptor_ttl_secs,
    };
    Ok(SignedDescriptor::sign(&desc, signing)?)
}

impl Shared {
    /// Rotates the mix keys if the epoch changed and re-signs the descriptor.
    fn refresh_descriptor(&self) -> Result<(), NodeError> {
        let now = unix_now();
        self.mix_keys.write(|s| s.rotate(now))?;
        let d = sign_descriptor(
            &self.cfg,
            &self.signing,
            self.peer_id,
            &self.addrs,
            &self.mix_keys,
            now,
        )?;
        if let Some((epoch, _)) = self.mix_keys.current(now) {
            self.metrics.mix_epoch.store(epoch, Ordering::Relaxed);
        }
        *lock(&self.descriptor) = d;
        Ok(())
    }

    /// Publishes the current descriptor to every bootstrap at once; returns
    /// a line per failure.
    async fn publish(&self) -> Vec<String> {
        let signed = lock(&self.descriptor).clone();
        let attempts = self.bootstraps.iter().map(|&b| {
            let req = DirectoryRequest::Publish(signed.clone());
            async move { (b, self.swarm.directory(b, req).await) }
        });
        let mut failures = Vec::new();
        for (b, r) in futures::future::join_all(attempts).await {
            match r {
                Ok(DirectoryResponse::Published) => {
                    self.metrics.publish_ok.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(bootstrap = %b, "descriptor published");
                }
                Ok(DirectoryResponse::Rejected { reason }) => {
                    self.metrics.publish_failed.fetch_add(1, Ordering::Relaxed);
                    failures.push(format!("bootstrap {b} rejected the descriptor: {reason}"));
                }
                Ok(_) => {
                    self.metrics.publish_failed.fetch_add(1, Ordering::Relaxed);
                    failures.push(format!("bootstrap {b} gave an unexpected answer"));
                }
                Err(e) => {
                    self.metrics.publish_failed.fetch_add(1, Ordering::Relaxed);
                    failures.push(format!("bootstrap {b} unreachable: {e}"));
                }
            }
        }
        failures
    }
}

/// Re-signs and re-publishes every `refresh_secs` and at each epoch change;
/// after a failed round it retries sooner (every 10 s), logging each failure.
async fn refresh_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut failed = false;
    loop {
        let now = unix_now();
        let next_epoch = shared.mix_keys.read(|s| s.next_rotation(now));
        let mut wait = shared
            .cfg
            .refresh_secs
            .min(next_epoch.saturating_sub(now).max(1));
        if failed {
            wait = wait.min(10);
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
        }
        if let Err(e) = shared.refresh_descriptor() {
            warn!(error = %e, "re-signing the descriptor");
            failed = true;
            continue;
        }
        let failures = shared.publish().await;
        for f in &failures {
            warn!("{f}");
        }
        failed = failures.len() == shared.bootstraps.len();
    }
}

/// Compiles (or loads from the cache) the standard guest off the packet
/// path, so that the first job's init does not stall a worker for the
/// seconds Cranelift needs while packets for other jobs and cover traffic
/// pile up behind it. A job that arrives earlier waits for this same compile.
fn warm_up(sandbox: Arc<mixnn_sandbox::Sandbox>) {
    let spawned = std::thread::Builder::new()
        .name("guest-warm-up".into())
        .spawn(move || {
            let start = std::time::Instant::now();
            match sandbox.guest(mixnn_sandbox::GuestKind::Standard) {
                Ok(g) => info!(
                    ms = start.elapsed().as_millis() as u64,
                    from_cache = g.from_cache(),
                    "layer guest ready"
                ),
                Err(e) => warn!(error = %e, "the layer guest does not compile; jobs will fail"),
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the guest warm-up; the first job compiles it");
    }
}
