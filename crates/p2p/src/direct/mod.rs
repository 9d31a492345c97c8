//! The direct data plane: one Noise-encrypted TCP connection per
//! neighbour, next to the libp2p connection, carrying the packets.
//!
//! Why: on a libp2p packet stream a packet crosses the sender's link task,
//! yamux, the connection task and the kernel, then the receiver's
//! connection task, its stream reader and the inbound queue before a
//! worker thread sees it: six hand-offs between threads, each a wake-up
//! that costs tens of microseconds on a virtual machine, plus yamux's
//! framing and copies. Here the thread that produced a packet encrypts and
//! writes it ([`link::Link::send`]), and the receiver's reader thread
//! decrypts it and hands it straight to its consumer (a node's hop, or
//! the inbound queue): one wake-up per crossing. Measured in
//! docs/performance.md ("The network path").
//!
//! What it keeps of the libp2p path's guarantees:
//! - **Noise**, libp2p's suite (X25519, ChaCha20-Poly1305, SHA-256), XX
//!   pattern, with a static key per process made at start. The binding to
//!   the peer's identity comes from the libp2p connection: the two sides
//!   swap their static keys over a libp2p stream, which libp2p's Noise
//!   has authenticated ([`register`]); a handshake whose static key was not
//!   announced that way is refused.
//! - **Bounds**: registrations, links and connections per peer are capped,
//!   handshakes and begun packets have deadlines, and a packet's buffer is
//!   taken from the inbound budget before it is read.
//! - **The same counters and link trace** as the libp2p path.
//!
//! The libp2p path stays: packets to a peer with no direct connection yet
//! (or whose connection failed) go that way while one is set up, and a
//! peer that listens nowhere (the designer) is reached over the direct
//! connections it opened.

pub mod bench;
mod link;
pub(crate) mod noise;
mod register;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::watch;
use tracing::{debug, info};
use zeroize::Zeroizing;

use crate::link_metrics::LinkMetrics;
use crate::packets::{Held, InboundQueue, SizeClasses};
pub(crate) use link::Link;
pub use register::RemoteIps;

/// Where packets from direct connections go instead of the inbound queue
/// (a node hands them to its hop on the reader thread).
pub type DirectSink = Arc<dyn Fn(PeerId, Vec<u8>) + Send + Sync>;

/// Direct links a peer holds at once (both directions).
pub const MAX_DIRECT_LINKS: usize = 256;
/// Direct connections one peer may hold to this one at once.
const MAX_PER_PEER: usize = 4;
/// Registrations (static keys announced over libp2p, not yet connected).
const MAX_PENDING: usize = 1024;
/// Registrations one peer may hold at once, so one peer cannot fill the
/// table and leave every other neighbour on libp2p streams.
const MAX_PENDING_PER_PEER: usize = 8;
/// How long a registration waits for its connection.
const PENDING_TTL: Duration = Duration::from_secs(60);
/// How long a peer that could not be reached directly is left to libp2p.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Stack of a reader thread (it runs Sphinx, never a guest).
const READER_STACK: usize = 512 * 1024;

/// The direct plane of one peer.
pub(crate) struct Direct {
    /// This process's static private key and its public half.
    secret: Zeroizing<Vec<u8>>,
    public: [u8; 32],
    /// Where this peer accepts direct connections (`None`: it does not).
    port: Option<u16>,
    links: Mutex<HashMap<PeerId, Vec<Arc<Link>>>>,
    /// Static key → (peer, expiry): keys announced over libp2p.
    pending: Mutex<HashMap<[u8; 32], (PeerId, Instant)>>,
    /// Peers being connected, and peers left to libp2p until a time.
    attempts: Mutex<HashMap<PeerId, Option<Instant>>>,
    sink: OnceLock<DirectSink>,
    queue: InboundQueue,
    pub(crate) sizes: SizeClasses,
    pub(crate) metrics: Arc<LinkMetrics>,
    remotes: Arc<RemoteIps>,
    control: libp2p_stream::Control,
    runtime: tokio::runtime::Handle,
    connections: AtomicUsize,
}

/// Why the direct plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The key pair could not be made.
    #[error("direct plane keys: {0}")]
    Keys(String),
    /// The listener could not be bound.
    #[error("direct plane listener: {0}")]
    Listen(#[from] std::io::Error),
    /// Registrations were accepted already on this swarm.
    #[error("direct plane registrations: {0}")]
    Streams(#[from] libp2p_stream::AlreadyRegistered),
}

/// What [`Direct::start`] needs.
pub(crate) struct DirectSetup {
    pub(crate) listen_ip: Option<IpAddr>,
    pub(crate) queue: InboundQueue,
    pub(crate) sizes: SizeClasses,
    pub(crate) metrics: Arc<LinkMetrics>,
    pub(crate) remotes: Arc<RemoteIps>,
    pub(crate) control: libp2p_stream::Control,
    pub(crate) stop: watch::Receiver<bool>,
}

impl Direct {
    /// Makes the key pair, binds the listener (if `listen_ip`), and starts
    /// accepting registrations and connections until `stop` changes.
    pub(crate) fn start(setup: DirectSetup) -> Result<Arc<Self>, DirectError> {
        let keys = noise::builder()
            .and_then(|b| b.generate_keypair().map_err(noise::NoiseError::from))
            .map_err(|e| DirectError::Keys(e.to_string()))?;
        let public: [u8; 32] = keys
            .public
            .as_slice()
            .try_into()
            .map_err(|_| DirectError::Keys("public key length".into()))?;
        let listener = match setup.listen_ip {
            Some(ip) => Some(TcpListener::bind(SocketAddr::new(ip, 0))?),
            None => None,
        };
        let port = listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?
            .map(|a| a.port());
        let mut control = setup.control.clone();
        let incoming = control.accept(register::protocol())?;
        let direct = Arc::new(Self {
            secret: Zeroizing::new(keys.private),
            public,
            port,
            links: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
            sink: OnceLock::new(),
            queue: setup.queue,
            sizes: setup.sizes,
            metrics: setup.metrics,
            remotes: setup.remotes,
            control: setup.control,
            runtime: tokio::runtime::Handle::current(),
            connections: AtomicUsize::new(0),
        });
        register::spawn_answering(direct.clone(), incoming, setup.stop.clone());
        if let Some(l) = listener {
            direct.clone().spawn_accepting(l, setup.stop.clone());
        }
        direct.clone().spawn_closing(setup.stop);
        Ok(direct)
    }

    /// Where this peer accepts direct connections, if it does.
    pub(crate) fn port(&self) -> Option<u16> {
        self.port
    }

    /// Sends packets from direct connections to `sink` from now on.
    pub(crate) fn set_sink(&self, sink: DirectSink) -> bool {
        self.sink.set(sink).is_ok()
    }

    /// A live direct link to `peer`, if there is one.
    pub(crate) fn link(&self, peer: &PeerId) -> Option<Arc<Link>> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.get(peer)?.iter().rev().find(|l| l.alive()).cloned()
    }

    /// Starts setting up a direct connection to `peer` in the background,
    /// unless one is being set up or `peer` was left to libp2p lately.
    pub(crate) fn ensure(self: &Arc<Self>, peer: PeerId) {
        {
            let mut a = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
            match a.get(&peer) {
                Some(None) => return,
                Some(Some(until)) if Instant::now() < *until => return,
                _ => {}
            }
            if a.len() >= MAX_DIRECT_LINKS {
                let now = Instant::now();
                a.retain(|_, v| v.is_none_or(|until| until > now));
                if a.len() >= MAX_DIRECT_LINKS {
                    return;
                }
            }
            a.insert(peer, None);
        }
        let direct = self.clone();
        self.runtime.spawn(async move {
            let ok = register::connect(&direct, peer).await;
            let mut a = direct.attempts.lock().unwrap_or_else(|p| p.into_inner());
            if ok {
                a.remove(&peer);
            } else {
                a.insert(peer, Some(Instant::now() + RETRY_AFTER));
            }
        });
    }

    /// Remembers that `peer` announced `key` (over its authenticated
    /// libp2p connection); `false` if the table is full.
    fn expect(&self, key: [u8; 32], peer: PeerId) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if p.len() >= MAX_PENDING {
            p.retain(|_, (_, until)| *until > now);
        }
        let mine = p
            .values()
            .filter(|(who, until)| *who == peer && *until > now);
        if p.len() >= MAX_PENDING || mine.count() >= MAX_PENDING_PER_PEER {
            return false;
        }
        p.insert(key, (peer, now + PENDING_TTL));
        true
    }

    /// The peer that announced `key`, once.
    fn expected(&self, key: &[u8; 32]) -> Option<PeerId> {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (peer, until) = p.remove(key)?;
        (until > Instant::now()).then_some(peer)
    }

    /// Adds a handshaken connection to the table; `None` (connection
    /// dropped) when the table or the peer's share is full.
    fn adopt(
        &self,
        peer: PeerId,
        stream: TcpStream,
        transport: snow::StatelessTransportState,
    ) -> Option<(Arc<Link>, noise::Opener)> {
        let transport = Arc::new(transport);
        let link = Link::new(peer, &stream, transport.clone()).ok()?;
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = links.values().map(Vec::len).sum();
        let mine = links.entry(peer).or_default();
        mine.retain(|l| l.alive());
        if mine.len() >= MAX_PER_PEER || total >= MAX_DIRECT_LINKS {
            debug!(%peer, "direct link table full: connection refused");
            return None;
        }
        mine.push(link.clone());
        info!(%peer, "direct link up");
        Some((link, noise::Opener::new(stream, transport)))
    }

    /// Reads an adopted link on a thread of its own.
    fn spawn_reader(self: &Arc<Self>, link: Arc<Link>, opener: noise::Opener) {
        let (direct, l) = (self.clone(), link.clone());
        let spawned = std::thread::Builder::new()
            .name("mixnn-direct".into())
            .stack_size(READER_STACK)
            .spawn(move || {
                // The consumer may send on (a libp2p link task is spawned).
                let rt = direct.runtime.clone();
                let _guard = rt.enter();
                link::read_loop(direct, l, opener);
            });
        if spawned.is_err() {
            link.close();
            self.forget(&link);
        }
    }

    /// Drops an ended link from the table.
    fn forget(&self, link: &Arc<Link>) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mine) = links.get_mut(&link.peer) {
            mine.retain(|l| !Arc::ptr_eq(l, link) && l.alive());
            if mine.is_empty() {
                links.remove(&link.peer);
            }
        }
    }

    /// A buffer for an admitted packet of `len` bytes: a node's hop takes
    /// it at once; otherwise its bytes are held from the inbound queue's
    /// budget (and go back if the packet is never delivered).
    fn admit(&self, len: usize) -> Option<(Vec<u8>, Option<Held<'_>>)> {
        let held = match self.sink.get() {
            Some(_) => None,
            None => Some(self.queue.budget.hold(len)?),
        };
        Some((vec![0u8; len], held))
    }

    /// Hands an admitted packet to the sink or the inbound queue.
    fn deliver(&self, from: PeerId, data: Vec<u8>, held: Option<Held<'_>>) {
        match (self.sink.get(), held) {
            // (A sink set after the packet was admitted: the held bytes go
            // back as `held` drops.)
            (Some(sink), _) => {
                self.metrics.count_in(from, data.len());
                sink(from, data);
            }
            (None, Some(held)) => {
                held.keep();
                self.queue
                    .push(crate::packets::InboundPacket { from, data });
            }
            (None, None) => {} // unreachable: no sink means the bytes were held
        }
    }

    /// Accepts connections on `l`, each handshaken (as responder) on a
    /// thread of its own that then reads it.
    fn spawn_accepting(self: Arc<Self>, l: TcpListener, mut stop: watch::Receiver<bool>) {
        let runtime = self.runtime.clone();
        runtime.spawn(async move {
            let Ok(()) = l.set_nonblocking(true) else {
                return;
            };
            let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                return;
            };
            loop {
                let accepted = tokio::select! {
                    _ = stop.changed() => return,
                    a = l.accept() => a,
                };
                let Ok((s, from)) = accepted else { continue };
                // Tokio's sockets are non-blocking; the reader thread blocks.
                let Ok(s) = s.into_std() else { continue };
                if s.set_nonblocking(false).is_err() {
                    continue;
                }
                if self.connections.load(Ordering::Acquire) >= MAX_DIRECT_LINKS {
                    debug!(%from, "too many direct connections: refused");
                    continue;
                }
                let direct = self.clone();
                direct.connections.fetch_add(1, Ordering::AcqRel);
                let _ = std::thread::Builder::new()
                    .name("mixnn-direct-accept".into())
                    .stack_size(READER_STACK)
                    .spawn(move || {
                        let rt = direct.runtime.clone();
                        let _guard = rt.enter();
                        register::answer_connection(&direct, s);
                        direct.connections.fetch_sub(1, Ordering::AcqRel);
                    });
            }
        });
    }

    /// Closes every link when `stop` changes, so reader threads end.
    fn spawn_closing(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        self.runtime.clone().spawn(async move {
            let _ = stop.changed().await;
            let links: Vec<Arc<Link>> = {
                let l = self.links.lock().unwrap_or_else(|p| p.into_inner());
                l.values().flatten().cloned().collect()
            };
            for l in links {
                l.close();
            }
        });
    }

    /// Forgets a link that failed to carry a packet (the caller sends the
    /// packet the libp2p way).
    pub(crate) fn failed(&self, link: &Arc<Link>) {
        debug!(peer = %link.peer, "direct link failed; back to libp2p for now");
        self.forget(link);
    }
}
