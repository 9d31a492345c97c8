//! The task that drives a pool peer's swarm (node or designer), and its
//! command handle.
//!
//! The swarm is owned by one task; everything else talks to it through
//! [`SwarmHandle`] commands with oneshot replies. Why: `Swarm` is `!Sync`
//! and must be polled continuously, and a command channel keeps the rest of
//! the peer (publishing, packet links, the phases) free of libp2p
//! event plumbing. Packet streams bypass this task entirely: they go
//! through `libp2p_stream::Control`, which is designed to be used from any
//! task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt as _;
use libp2p::kad::{self, QueryId, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use mixnn_protocol::cbor::CborError;
use mixnn_protocol::{DirectoryRequest, DirectoryResponse, NodeDescriptor};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info};

use crate::behaviour::{PeerBehaviour, PeerBehaviourEvent};
use crate::link_metrics::LinkMetrics;

/// Why a directory request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The swarm task has stopped.
    #[error("the peer is shutting down")]
    ShuttingDown,
    /// The answer is over the protocol's limits.
    #[error(transparent)]
    Limits(#[from] CborError),
    /// The request failed; `dial` is why the last dial to the peer failed,
    /// if it did (the usual reason behind the failure).
    #[error("{failure}{}", dial.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Failed {
        /// How the request-response behaviour reports the failure.
        failure: OutboundFailure,
        /// Text of the last failed dial to the peer, if there was one since
        /// it last connected.
        dial: Option<String>,
    },
    /// A list page was refused (over the limits, or not a list).
    #[error(transparent)]
    List(#[from] mixnn_protocol::ListError),
    /// No bootstrap to ask.
    #[error("no bootstrap configured")]
    NoBootstrap,
    /// What the last bootstrap asked answered.
    #[error("directory request to {bootstrap}: {source}")]
    From {
        /// The last bootstrap tried.
        bootstrap: PeerId,
        /// Why that bootstrap's answer was not usable.
        #[source]
        source: Box<DirectoryError>,
    },
}

/// A directory request's reply channel.
type DirectoryReply = oneshot::Sender<Result<DirectoryResponse, DirectoryError>>;

enum Command {
    Directory {
        peer: PeerId,
        request: DirectoryRequest,
        reply: DirectoryReply,
    },
    AddAddresses {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        done: oneshot::Sender<()>,
    },
    FindPeer {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    Dial {
        addr: Multiaddr,
    },
    DisconnectAll {
        done: oneshot::Sender<usize>,
    },
}

/// Talks to the swarm task; cheap to clone.
#[derive(Clone)]
pub struct SwarmHandle {
    tx: mpsc::Sender<Command>,
}

impl SwarmHandle {
    /// Sends a directory request to `peer` and waits for its answer.
    pub async fn directory(
        &self,
        peer: PeerId,
        request: DirectoryRequest,
    ) -> Result<DirectoryResponse, DirectoryError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Directory {
                peer,
                request,
                reply,
            })
            .await
            .map_err(|_| DirectoryError::ShuttingDown)?;
        rx.await.map_err(|_| DirectoryError::ShuttingDown)?
    }

    /// Makes `addrs` known as `peer`'s (Kademlia routing table, so dials to
    /// the peer, including stream opens, find them); returns once they are.
    pub async fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let (done, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::AddAddresses { peer, addrs, done })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Starts a connection to `addr` (which should end in `/p2p/<id>`).
    pub async fn dial(&self, addr: Multiaddr) {
        let _ = self.tx.send(Command::Dial { addr }).await;
    }

    /// Closes every connection now (each peer sees it closed at once, not
    /// after a timeout); returns how many peers were connected. Why: a
    /// node that stops must make the jobs that cross it fail fast, and its
    /// neighbours and a designer linked to it notice a closed connection
    /// at once (PROTOCOL.md §12.8).
    pub async fn disconnect_all(&self) -> usize {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::DisconnectAll { done }).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Looks `peer` up in the DHT; true if it was found with an address.
    pub async fn find_peer(&self, peer: PeerId) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::FindPeer { peer, reply })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

impl SwarmHandle {
    /// The pool as the first answering bootstrap lists it, every entry
    /// verified (signature, peer id, expiry at the time of the answer);
    /// entries that fail are skipped with a warning.
    pub async fn list_directory(
        &self,
        bootstraps: &[PeerId],
    ) -> Result<Vec<NodeDescriptor>, DirectoryError> {
        let mut last = DirectoryError::NoBootstrap;
        for &b in bootstraps {
            match self.list_from(b).await {
                Ok(list) => return Ok(list),
                Err(e) => {
                    last = DirectoryError::From {
                        bootstrap: b,
                        source: Box::new(e),
                    }
                }
            }
        }
        Err(last)
    }

    async fn list_from(&self, bootstrap: PeerId) -> Result<Vec<NodeDescriptor>, DirectoryError> {
        let mut out = Vec::new();
        let mut cursor = mixnn_protocol::ListCursor::new();
        while let Some(req) = cursor.request() {
            let entries = cursor.accept(self.directory(bootstrap, req).await?)?;
            let now = crate::unix_now();
            for e in entries {
                match e.verify_at(now) {
                    Ok(d) => out.push(d),
                    Err(err) => {
                        tracing::warn!(%bootstrap, error = %err, "directory entry fails verification")
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Splits `/…/p2p/<id>` into the peer id and the address without it.
pub fn split_p2p(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut a = addr.clone();
    match a.pop() {
        Some(Protocol::P2p(peer)) => Some((peer, a)),
        _ => None,
    }
}

struct Task {
    swarm: Swarm<PeerBehaviour>,
    metrics: Arc<LinkMetrics>,
    /// Where connected peers are reached (the direct plane dials there).
    remotes: Arc<crate::direct::RemoteIps>,
    requests: HashMap<OutboundRequestId, DirectoryReply>,
    finds: HashMap<QueryId, (PeerId, oneshot::Sender<bool>)>,
    dial_errors: HashMap<PeerId, String>,
}

/// Failed dials remembered at once, for the message of a directory request
/// that fails after one. Peers to dial come from others (Kademlia answers,
/// next hops named in packets), so the table is bounded: when full, it is
/// emptied, which only makes a later error message less specific.
const MAX_DIAL_ERRORS: usize = 1024;

fn note_dial_error(errors: &mut HashMap<PeerId, String>, peer: PeerId, error: String) {
    if errors.len() >= MAX_DIAL_ERRORS && !errors.contains_key(&peer) {
        errors.clear();
    }
    errors.insert(peer, error);
}

/// Spawns the swarm task; it ends when `stop` changes or every handle is
/// dropped.
pub fn spawn(
    swarm: Swarm<PeerBehaviour>,
    metrics: Arc<LinkMetrics>,
    remotes: Arc<crate::direct::RemoteIps>,
    mut stop: watch::Receiver<bool>,
) -> (SwarmHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel(256);
    let mut task = Task {
        swarm,
        metrics,
        remotes,
        requests: HashMap::new(),
        finds: HashMap::new(),
        dial_errors: HashMap::new(),
    };
    let join = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => task.command(cmd),
                    None => break,
                },
                ev = task.swarm.select_next_some() => task.event(ev),
            }
        }
        debug!("swarm task stopped");
    });
    (SwarmHandle { tx }, join)
}

impl Task {
    fn command(&mut self, cmd: Command) {
        let b = self.swarm.behaviour_mut();
        match cmd {
            Command::Directory {
                peer,
                request,
                reply,
            } => {
                let id = b.directory_mut().send_request(&peer, request);
                self.requests.insert(id, reply);
            }
            Command::AddAddresses { peer, addrs, done } => {
                for a in addrs {
                    b.kad_mut().add_address(&peer, a);
                }
                let _ = done.send(());
            }
            Command::FindPeer { peer, reply } => {
                let id = b.kad_mut().get_closest_peers(peer);
                self.finds.insert(id, (peer, reply));
            }
            Command::Dial { addr } => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    info!(%addr, error = %e, "dial failed");
                }
            }
            Command::DisconnectAll { done } => {
                let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                for p in &peers {
                    let _ = self.swarm.disconnect_peer_id(*p);
                }
                let _ = done.send(peers.len());
            }
        }
    }

    fn event(&mut self, ev: SwarmEvent<PeerBehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(PeerBehaviourEvent::Directory(e)) => self.directory_event(e),
            SwarmEvent::Behaviour(PeerBehaviourEvent::Kad(
                kad::Event::OutboundQueryProgressed {
                    id,
                    result: QueryResult::GetClosestPeers(result),
                    step,
                    ..
                },
            )) => {
                let found = match &result {
                    Ok(ok) => ok.peers.iter().find(|p| {
                        self.finds
                            .get(&id)
                            .is_some_and(|(want, _)| p.peer_id == *want)
                    }),
                    Err(_) => None,
                };
                if let Some(info) = found.filter(|i| !i.addrs.is_empty()).cloned()
                    && let Some((peer, reply)) = self.finds.remove(&id)
                {
                    for a in info.addrs {
                        self.swarm.behaviour_mut().kad_mut().add_address(&peer, a);
                    }
                    let _ = reply.send(true);
                } else if step.last
                    && let Some((peer, reply)) = self.finds.remove(&id)
                {
                    debug!(%peer, "DHT lookup ended without the peer");
                    let _ = reply.send(false);
                }
            }
            SwarmEvent::Behaviour(PeerBehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                crate::add_identified_peer(self.swarm.behaviour_mut().kad_mut(), &peer_id, info);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                self.dial_errors.remove(&peer_id);
                (self.remotes).connected(peer_id, endpoint.get_remote_address());
                if num_established.get() == 1 {
                    self.metrics.peers_connected.fetch_add(1, Ordering::Relaxed);
                }
                debug!(%peer_id, "connected");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    self.metrics.peers_connected.fetch_sub(1, Ordering::Relaxed);
                    self.remotes.disconnected(&peer_id);
                }
                debug!(%peer_id, "disconnected");
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                debug!(%peer, %error, "outgoing connection failed");
                note_dial_error(&mut self.dial_errors, peer, error.to_string());
            }
            SwarmEvent::NewListenAddr { address, .. } => info!(%address, "listening"),
            other => debug!(event = ?other, "swarm event"),
        }
    }

    fn directory_event(&mut self, e: request_response::Event<DirectoryRequest, DirectoryResponse>) {
        match e {
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let checked = response
                        .check_limits()
                        .map(|()| response)
                        .map_err(DirectoryError::from);
                    let _ = reply.send(checked);
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Err(DirectoryError::Failed {
                        failure: error,
                        dial: self.dial_errors.get(&peer).cloned(),
                    }));
                }
            }
            // Nodes do not serve the directory (outbound support only).
            other => debug!(event = ?other, "directory event"),
        }
    }
}

#[cfg(test)]
mod dial_error_tests {
    use super::*;

    #[test]
    fn failed_dials_to_made_up_peers_stay_bounded() {
        let mut errors = HashMap::new();
        let kept = PeerId::random();
        note_dial_error(&mut errors, kept, "refused".into());
        for _ in 0..3 * MAX_DIAL_ERRORS {
            note_dial_error(&mut errors, PeerId::random(), "unreachable".into());
            assert!(errors.len() <= MAX_DIAL_ERRORS);
        }
        // A peer already in the table is updated without emptying it.
        let last = PeerId::random();
        note_dial_error(&mut errors, last, "a".into());
        let before = errors.len();
        note_dial_error(&mut errors, last, "b".into());
        assert_eq!(errors.len(), before);
        assert_eq!(errors.get(&last).map(String::as_str), Some("b"));
    }
}
