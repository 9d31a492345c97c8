//! Setting up a direct connection: the static keys are swapped over a
//! libp2p stream (authenticated by libp2p's Noise), then the dialer opens
//! a TCP connection to the port the listener announced and both run Noise
//! XX on it, each checking that the other's static key is the announced
//! one.
//!
//! The registration exchange, on a stream of [`protocol`]:
//! dialer → listener: its static key (32 bytes);
//! listener → dialer: its direct port (2 bytes, big-endian; 0 when it
//! accepts no direct connections) and its static key (32 bytes).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use futures::io::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::watch;
use tracing::debug;

use super::Direct;
use super::noise::{self, NoiseError};

/// How long the registration exchange and the TCP connect may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Peers whose address is remembered (bounded by the swarm's connection
/// limits already; this is a second cap).
const MAX_REMOTES: usize = 4096;

/// The protocol of registration streams.
pub(crate) fn protocol() -> StreamProtocol {
    StreamProtocol::new(mixnn_protocol::DIRECT_PROTOCOL)
}

/// The IP address each connected peer is reached at, as the swarm task
/// sees its connections; a direct connection goes to the same address.
#[derive(Debug, Default)]
pub struct RemoteIps(Mutex<HashMap<PeerId, IpAddr>>);

impl RemoteIps {
    /// Notes the address of a connection to `peer`.
    pub fn connected(&self, peer: PeerId, addr: &libp2p::Multiaddr) {
        use libp2p::multiaddr::Protocol;
        let ip = addr.iter().find_map(|p| match p {
            Protocol::Ip4(a) => Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => Some(IpAddr::V6(a)),
            _ => None,
        });
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = ip
            && (m.len() < MAX_REMOTES || m.contains_key(&peer))
        {
            m.insert(peer, ip);
        }
    }

    /// Forgets `peer` (its last connection closed).
    pub fn disconnected(&self, peer: &PeerId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer);
    }

    fn get(&self, peer: &PeerId) -> Option<IpAddr> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .copied()
    }
}

/// Answers registrations until `stop` changes: each announces a dialer's
/// key, which is remembered for its connection.
pub(super) fn spawn_answering(
    direct: Arc<Direct>,
    mut incoming: libp2p_stream::IncomingStreams,
    mut stop: watch::Receiver<bool>,
) {
    direct.runtime.clone().spawn(async move {
        loop {
            let next = tokio::select! {
                _ = stop.changed() => return,
                n = incoming.next() => n,
            };
            let Some((peer, stream)) = next else { return };
            let d = direct.clone();
            tokio::spawn(async move {
                let answered = tokio::time::timeout(SETUP_TIMEOUT, answer(&d, peer, stream)).await;
                if !matches!(answered, Ok(Ok(()))) {
                    debug!(%peer, "direct registration failed");
                }
            });
        }
    });
}

async fn answer(direct: &Direct, peer: PeerId, mut s: Stream) -> std::io::Result<()> {
    let mut key = [0u8; 32];
    s.read_exact(&mut key).await?;
    let port = match direct.port {
        Some(port) if direct.expect(key, peer) => port,
        _ => 0,
    };
    let mut reply = [0u8; 34];
    reply[..2].copy_from_slice(&port.to_be_bytes());
    reply[2..].copy_from_slice(&direct.public);
    s.write_all(&reply).await?;
    s.close().await
}

/// Registers with `peer` and connects to it; `true` once the link is up.
pub(super) async fn connect(direct: &Arc<Direct>, peer: PeerId) -> bool {
    // Registering first also waits for the libp2p connection, whose
    // address the direct connection goes to.
    let announced = tokio::time::timeout(SETUP_TIMEOUT, register(direct, peer)).await;
    let (port, key) = match announced {
        Ok(Ok(Some(a))) => a,
        Ok(Ok(None)) => {
            debug!(%peer, "the peer takes no direct connections");
            return false;
        }
        _ => {
            debug!(%peer, "direct registration failed");
            return false;
        }
    };
    let Some(ip) = direct.remotes.get(&peer) else {
        debug!(%peer, "no address of a connection to the peer: no direct link");
        return false;
    };
    let d = direct.clone();
    let dialed =
        tokio::task::spawn_blocking(move || dial(&d, peer, SocketAddr::new(ip, port), key));
    match dialed.await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "direct connection failed");
            false
        }
        Err(_) => false,
    }
}

async fn register(direct: &Direct, peer: PeerId) -> std::io::Result<Option<(u16, [u8; 32])>> {
    let mut control = direct.control.clone();
    let mut s = control
        .open_stream(peer, protocol())
        .await
        .map_err(std::io::Error::other)?;
    s.write_all(&direct.public).await?;
    s.flush().await?;
    let mut reply = [0u8; 34];
    s.read_exact(&mut reply).await?;
    let port = u16::from_be_bytes([reply[0], reply[1]]);
    let mut key = [0u8; 32];
    key.copy_from_slice(&reply[2..]);
    Ok((port != 0).then_some((port, key)))
}

/// Connects, runs the handshake as initiator, checks the listener's key
/// and adopts the link.
fn dial(
    direct: &Arc<Direct>,
    peer: PeerId,
    addr: SocketAddr,
    key: [u8; 32],
) -> Result<(), NoiseError> {
    let mut s = TcpStream::connect_timeout(&addr, SETUP_TIMEOUT)?;
    noise::tune(&s)?;
    let hs = noise::builder()?
        .local_private_key(&direct.secret)?
        .build_initiator()?;
    let (transport, remote) = noise::handshake(&mut s, hs)?;
    if remote != key {
        return Err(NoiseError::Framing(
            "the listener's key is not the one it announced",
        ));
    }
    let (link, opener) = direct
        .adopt(peer, s, transport)
        .ok_or(NoiseError::Framing("direct link table full"))?;
    direct.spawn_reader(link, opener);
    Ok(())
}

/// An accepted connection: the handshake as responder, the dialer's key
/// looked up among the registrations, then the link read on this thread.
pub(super) fn answer_connection(direct: &Arc<Direct>, s: TcpStream) {
    match accept(direct, s) {
        Ok((link, opener)) => super::link::read_loop(direct.clone(), link, opener),
        Err(e) => debug!(error = %e, "direct connection refused"),
    }
}

fn accept(
    direct: &Direct,
    mut s: TcpStream,
) -> Result<(Arc<super::Link>, noise::Opener), NoiseError> {
    noise::tune(&s)?;
    let hs = noise::builder()?
        .local_private_key(&direct.secret)?
        .build_responder()?;
    let (transport, remote) = noise::handshake(&mut s, hs)?;
    let peer = direct
        .expected(&remote)
        .ok_or(NoiseError::Framing("a static key nobody announced"))?;
    direct
        .adopt(peer, s, transport)
        .ok_or(NoiseError::Framing("direct link table full"))
}
