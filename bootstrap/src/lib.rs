//! The bootstrap peer: Kademlia entry point and pool directory.
//!
//! A bootstrap is the MixNN paper's "authority" without the trust: it stores
//! descriptors that nodes signed themselves, verifies each one on arrival
//! (signature, peer id, validity window), keeps the newest per peer, drops
//! expired ones, and answers list requests. Clients verify again, so a
//! lying bootstrap can hide nodes but never forge one. The only secret it
//! holds is its own libp2p identity (persisted with `data_dir` so its
//! multiaddr, which nodes are configured with, survives restarts).
//!
//! Several bootstraps may run; they do not talk to each other about the
//! directory: nodes publish to every bootstrap they know.

pub mod directory;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use mixnn_p2p::secret_file::{self, SecretFileError};
use mixnn_p2p::{BuildError, ListenError, PeerBehaviour, PeerBehaviourEvent, Role, unix_now};
use mixnn_protocol::{DirectoryRequest, DirectoryResponse, MAX_LIST_ENTRIES, SignedDescriptor};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

pub use directory::{Directory, Limits, PublishError, Source};

/// The identity file's name inside `data_dir`.
pub const KEY_FILE: &str = "bootstrap.key";

/// How the bootstrap runs.
#[derive(Clone, Debug)]
pub struct BootstrapConfig {
    /// Addresses to listen on (e.g. `/ip4/127.0.0.1/tcp/4001`).
    pub listen: Vec<Multiaddr>,
    /// Where the identity key lives; `None` gives a fresh identity per run.
    pub data_dir: Option<PathBuf>,
    /// Directory capacity in peers.
    pub max_entries: usize,
    /// Peers published from one IP address (an IPv6 /64): what one host
    /// with many identities can hold (see [`directory`]).
    pub max_per_source: usize,
    /// How often expired descriptors are dropped.
    pub expire_interval: Duration,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            data_dir: None,
            max_entries: 10_000,
            max_per_source: 64,
            expire_interval: Duration::from_secs(30),
        }
    }
}

/// Errors starting a bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Loading or creating the identity key in the data dir failed.
    #[error(transparent)]
    Identity(#[from] SecretFileError),
    /// `listen` was empty: a bootstrap must listen on at least one address.
    #[error("no listen address given")]
    NoListenAddr,
    /// Binding a listen address failed.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Building the libp2p swarm failed.
    #[error(transparent)]
    Transport(#[from] BuildError),
    /// The OS random source failed (seeding the directory's choices).
    #[error("OS randomness: {0}")]
    Randomness(getrandom::Error),
}

/// A running bootstrap; [`shutdown`](Self::shutdown) stops it.
pub struct Bootstrap {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    directory: Arc<Mutex<Directory>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Bootstrap {
    /// Loads or creates the identity, listens, and serves in a background
    /// task until [`shutdown`](Self::shutdown). Returns once every listen
    /// address is bound.
    pub async fn start(cfg: BootstrapConfig) -> Result<Self, BootstrapError> {
        if cfg.listen.is_empty() {
            return Err(BootstrapError::NoListenAddr);
        }
        let keypair = match &cfg.data_dir {
            Some(dir) => {
                secret_file::ensure_private_dir(dir)?;
                let id = mixnn_p2p::identity::load_or_create(&dir.join(KEY_FILE))?;
                info!(created = id.created, dir = %dir.display(), "bootstrap identity");
                id.keypair
            }
            None => libp2p::identity::Keypair::generate_ed25519(),
        };
        let mut swarm = mixnn_p2p::build_swarm(keypair, Role::Bootstrap)?;
        let peer_id = *swarm.local_peer_id();
        let listen_addrs = mixnn_p2p::listen(&mut swarm, &cfg.listen, None).await?;
        let listen_addrs: Vec<Multiaddr> = listen_addrs
            .into_iter()
            .map(|a| a.with(Protocol::P2p(peer_id)))
            .collect();
        for a in &listen_addrs {
            info!(addr = %a, "bootstrap listening");
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(BootstrapError::Randomness)?;
        let limits = Limits {
            max_entries: cfg.max_entries,
            max_per_source: cfg.max_per_source,
        };
        let directory = Arc::new(Mutex::new(Directory::new(limits, seed)));
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(swarm, directory.clone(), stop_rx, cfg.expire_interval));
        Ok(Self {
            peer_id,
            listen_addrs,
            directory,
            stop: Some(stop),
            task,
        })
    }

    /// The bootstrap's libp2p peer id, derived from its identity key.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The bound addresses, each ending in `/p2p/<peer id>`: what a node
    /// passes to `--bootstrap`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// The stored descriptors still valid now (for tests and operators).
    pub fn descriptors(&self) -> Vec<SignedDescriptor> {
        let dir = self.directory.lock().unwrap_or_else(|p| p.into_inner());
        dir.list(0, usize::MAX, unix_now()).0
    }

    /// Stops serving and waits for the network task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            warn!(error = %e, "bootstrap task ended abnormally");
        }
    }
}

async fn run(
    mut swarm: Swarm<PeerBehaviour>,
    directory: Arc<Mutex<Directory>>,
    mut stop: oneshot::Receiver<()>,
    expire_interval: Duration,
) {
    let mut expire = tokio::time::interval(expire_interval);
    // Where each open connection comes from: a publish is charged to it.
    // One entry per open connection, removed when it closes.
    let mut sources: HashMap<ConnectionId, Source> = HashMap::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = expire.tick() => {
                let n = lock(&directory).expire(unix_now());
                if n > 0 {
                    info!(expired = n, "dropped stale descriptors");
                }
            }
            ev = swarm.select_next_some() => handle_event(&mut swarm, &directory, &mut sources, ev),
        }
    }
    info!("bootstrap stopped");
}

fn lock(d: &Mutex<Directory>) -> std::sync::MutexGuard<'_, Directory> {
    // A panic while holding the lock cannot leave the map half-updated in a
    // way that matters (entries are inserted whole), so recover the guard.
    d.lock().unwrap_or_else(|p| p.into_inner())
}

fn handle_event(
    swarm: &mut Swarm<PeerBehaviour>,
    directory: &Mutex<Directory>,
    sources: &mut HashMap<ConnectionId, Source>,
    ev: SwarmEvent<PeerBehaviourEvent>,
) {
    match ev {
        SwarmEvent::Behaviour(PeerBehaviourEvent::Directory(
            request_response::Event::Message {
                peer,
                connection_id,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
            },
        )) => {
            let source = sources
                .get(&connection_id)
                .cloned()
                .unwrap_or_else(|| Source::of_addr(&Multiaddr::empty()));
            let response = answer(swarm, directory, peer, &source, request);
            if swarm
                .behaviour_mut()
                .directory_mut()
                .send_response(channel, response)
                .is_err()
            {
                debug!(%peer, "directory client left before the answer");
            }
        }
        SwarmEvent::Behaviour(PeerBehaviourEvent::Directory(
            request_response::Event::InboundFailure { peer, error, .. },
        )) => debug!(%peer, %error, "directory request failed"),
        SwarmEvent::Behaviour(PeerBehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => {
            mixnn_p2p::add_identified_peer(swarm.behaviour_mut().kad_mut(), &peer_id, info);
        }
        SwarmEvent::ConnectionEstablished {
            peer_id,
            connection_id,
            endpoint,
            ..
        } => {
            sources.insert(
                connection_id,
                Source::of_addr(endpoint.get_remote_address()),
            );
            debug!(%peer_id, "connected");
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            ..
        } => {
            sources.remove(&connection_id);
            debug!(%peer_id, "disconnected");
        }
        SwarmEvent::IncomingConnectionError { error, .. } => {
            debug!(%error, "incoming connection failed")
        }
        other => debug!(event = ?other, "swarm event"),
    }
}

fn answer(
    swarm: &mut Swarm<PeerBehaviour>,
    directory: &Mutex<Directory>,
    from: PeerId,
    source: &Source,
    request: DirectoryRequest,
) -> DirectoryResponse {
    let now = unix_now();
    match request {
        DirectoryRequest::Publish(signed) => {
            let result = lock(directory).publish(signed, now, source.clone());
            match result {
                Ok(desc) => {
                    info!(
                        peer = %desc.peer_id,
                        epoch = desc.mix_key.epoch,
                        %from,
                        "descriptor stored"
                    );
                    if let Ok(pid) = desc.peer_id.parse::<PeerId>() {
                        for a in desc
                            .addrs
                            .iter()
                            .filter_map(|a| a.parse::<Multiaddr>().ok())
                        {
                            swarm.behaviour_mut().kad_mut().add_address(&pid, a);
                        }
                    }
                    DirectoryResponse::Published
                }
                Err(e) => {
                    warn!(%from, %source, error = %e, "descriptor rejected");
                    DirectoryResponse::Rejected {
                        reason: e.to_string(),
                    }
                }
            }
        }
        DirectoryRequest::List { offset, limit } => {
            let limit = limit.min(MAX_LIST_ENTRIES) as usize;
            let (entries, total) = lock(directory).list(offset as usize, limit, now);
            debug!(%from, returned = entries.len(), total, "directory listed");
            DirectoryResponse::Descriptors {
                entries,
                total: u32::try_from(total).unwrap_or(u32::MAX),
            }
        }
    }
}
