//! The direct data plane over real sockets: two nodes and a designer-like
//! client that listens nowhere. Packets switch from the libp2p stream to
//! the direct connection once it is up, arrive intact and in order, and a
//! node answers the client over the connection the client opened.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mixnn_p2p::{
    LinkMetrics, PeerSetup, PoolPeer, QueueLimits, Role, SizeClasses, start_pool_peer,
};
use tokio::sync::watch;

const LEN: usize = 70_000;

struct Peer {
    p: PoolPeer,
    id: PeerId,
    m: Arc<LinkMetrics>,
}

async fn peer(role: Role, direct: bool, stop: &watch::Receiver<bool>) -> Peer {
    let metrics = Arc::new(LinkMetrics::default());
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let id = keypair.public().to_peer_id();
    let listen: Vec<Multiaddr> = match role {
        Role::Node => vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        _ => Vec::new(),
    };
    let p = start_pool_peer(PeerSetup {
        keypair,
        role,
        listen: &listen,
        settle: None,
        bootstraps: &[],
        sizes: SizeClasses::new(&[64, LEN as u32]),
        inbound: QueueLimits {
            packets: 256,
            bytes: 64 << 20,
        },
        outbound: QueueLimits {
            packets: 256,
            bytes: 64 << 20,
        },
        metrics: metrics.clone(),
        stop: stop.clone(),
        direct,
    })
    .await
    .unwrap();
    Peer { p, id, m: metrics }
}

/// `client` dials `node` and keeps a link to it (which also sets up the
/// direct connection when both ends have the plane). The node's address
/// is made known first (and awaited): a `dial` is only queued, and a link
/// opened before it was handled found no address for the peer.
async fn link(client: &Peer, node: &Peer) {
    let addr = node.p.listen_addrs[0].clone();
    (client.p.swarm)
        .add_addresses(node.id, vec![addr.clone()])
        .await;
    client.p.swarm.dial(addr.with(Protocol::P2p(node.id))).await;
    client
        .p
        .sender
        .open_link(node.id, Duration::from_secs(10))
        .await
        .unwrap();
}

fn packet(i: u32) -> Vec<u8> {
    let mut p = vec![(i % 251) as u8; LEN];
    p[..4].copy_from_slice(&i.to_be_bytes());
    p
}

/// Sends `n` packets from `a` to `b` one at a time (each waits for its
/// arrival, as a training step does) and checks each.
async fn ping(a: &Peer, b: &mut Peer, n: u32, from: u32) {
    for i in from..from + n {
        a.p.sender.send(b.id, packet(i)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), b.p.inbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.data, packet(i), "packet {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_move_to_the_direct_connection_and_come_back_over_it() {
    let (_stop_tx, stop) = watch::channel(false);
    let mut node = peer(Role::Node, true, &stop).await;
    let mut client = peer(Role::Client, true, &stop).await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("mixnn_p2p=debug")
        .with_test_writer()
        .try_init();
    link(&client, &node).await;
    ping(&client, &mut node, 5, 0).await;
    for _ in 0..100 {
        if client.p.sender.direct_up(&node.id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        client.p.sender.direct_up(&node.id),
        "the direct link never came up"
    );
    ping(&client, &mut node, 45, 5).await;
    let direct = client.m.direct_out.load(Ordering::Relaxed);
    assert!(
        direct >= 45,
        "only {direct} packets took the direct connection"
    );
    // The node answers over the connection the client opened (it listens
    // nowhere), so every answer is direct.
    ping(&node, &mut client, 20, 1000).await;
    assert_eq!(node.m.direct_out.load(Ordering::Relaxed), 20);
    assert_eq!(node.m.packets_in.load(Ordering::Relaxed), 50);
    // A wrong length never reaches the wire.
    assert!(client.p.sender.send(node.id, vec![0; 65]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_direct_plane_packets_take_libp2p_streams() {
    let (_stop_tx, stop) = watch::channel(false);
    let mut node = peer(Role::Node, false, &stop).await;
    let client = peer(Role::Client, true, &stop).await;
    link(&client, &node).await;
    ping(&client, &mut node, 20, 0).await;
    assert_eq!(client.m.direct_out.load(Ordering::Relaxed), 0);
    assert_eq!(client.m.packets_out.load(Ordering::Relaxed), 20);
}

/// Whether a read saw the connection closed (not a read timeout: a node
/// that kept the connection open would let the read time out).
fn closed(r: std::io::Result<usize>) -> bool {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    match r {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), WouldBlock | TimedOut),
    }
}

/// A TCP client that was never announced over libp2p: a well-formed
/// Noise handshake with a fresh key is refused (the connection closes and
/// nothing reaches the inbox), as is garbage; the node keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unannounced_key_and_garbage_are_refused() {
    use std::io::{Read as _, Write as _};
    let (_stop_tx, stop) = watch::channel(false);
    let mut node = peer(Role::Node, true, &stop).await;
    let port = node
        .p
        .sender
        .direct_port()
        .expect("the node listens for direct links");
    let refused = tokio::task::spawn_blocking(move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        // Garbage instead of a handshake.
        let mut g = std::net::TcpStream::connect(addr).unwrap();
        g.write_all(&[0xff; 4096]).unwrap();
        g.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 64];
        let garbage_closed = closed(g.read(&mut b));
        // A correct XX handshake with a key nobody announced.
        let params: snow::params::NoiseParams = "Noise_XX_25519_AESGCM_SHA256".parse().unwrap();
        let kp = snow::Builder::new(params.clone())
            .generate_keypair()
            .unwrap();
        let mut hs = snow::Builder::new(params)
            .local_private_key(&kp.private)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut msg = vec![0u8; 1024];
        let frame = |s: &mut std::net::TcpStream, m: &[u8]| {
            let mut out = (m.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(m);
            s.write_all(&out).unwrap();
        };
        let n = hs.write_message(&[], &mut msg).unwrap();
        frame(&mut s, &msg[..n]);
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut m2 = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut m2).unwrap();
        let mut scratch = vec![0u8; 1024];
        hs.read_message(&m2, &mut scratch).unwrap();
        let n = hs.write_message(&[], &mut msg).unwrap();
        frame(&mut s, &msg[..n]);
        let mut b = [0u8; 64];
        let unannounced_closed = closed(s.read(&mut b));
        (garbage_closed, unannounced_closed)
    })
    .await
    .unwrap();
    assert_eq!(refused, (true, true));
    assert_eq!(node.m.packets_in.load(Ordering::Relaxed), 0);
    // The node still takes a real neighbour's packets.
    let client = peer(Role::Client, true, &stop).await;
    link(&client, &node).await;
    ping(&client, &mut node, 3, 0).await;
}
