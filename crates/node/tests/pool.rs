//! A bootstrap and three nodes in one process, over real TCP on 127.0.0.1:
//! directory, forged descriptors, restarts, packet streams.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PACKET, bootstrap, bounded, eventually, init_logs, node};
use futures::AsyncWriteExt as _;
use mixnn_node::metrics::{parse_text, scrape};
use mixnn_node::{DropReason, LinkMetrics};
use mixnn_protocol::{DirectoryRequest, DirectoryResponse, SignedDescriptor};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_and_are_listed_with_valid_signatures() {
    init_logs();
    bounded(60, async {
        let b = bootstrap().await;
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = Vec::new();
        for d in &dirs {
            nodes.push(node(d.path(), &b).await);
        }
        // From the bootstrap's own store ...
        let stored = b.descriptors();
        assert_eq!(stored.len(), 3);
        // ... and through the network, as a designer would read it.
        let listed = nodes[0].list_directory().await.unwrap();
        assert_eq!(listed.len(), 3);
        for n in &nodes {
            let d = listed
                .iter()
                .find(|d| d.peer_id == n.peer_id().to_base58())
                .expect("each node is listed");
            let (epoch, public) = n.mix_keys().current(mixnn_p2p::unix_now()).unwrap();
            assert_eq!(d.mix_key.epoch, epoch);
            assert_eq!(d.mix_key.public, public.to_bytes());
            assert!(d.addrs.iter().all(|a| a.starts_with("/ip4/127.0.0.1/tcp/")));
        }
        for s in &stored {
            s.verify_at(mixnn_p2p::unix_now())
                .expect("stored entries verify");
        }
        for n in nodes {
            n.shutdown().await;
        }
        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_forged_descriptors_are_rejected() {
    init_logs();
    bounded(60, async {
        let b = bootstrap().await;
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = node(da.path(), &b).await;
        let victim = node(db.path(), &b).await;
        let boot = b.peer_id();

        // Tampered: a byte of the victim's own descriptor changed.
        let mut tampered = victim.descriptor();
        let i = tampered.body.len() / 2;
        tampered.body[i] ^= 0x01;
        let r = a
            .directory_request(boot, DirectoryRequest::Publish(tampered))
            .await
            .unwrap();
        assert!(matches!(r, DirectoryResponse::Rejected { .. }), "{r:?}");

        // Forged: the victim's descriptor body re-signed by another key.
        let forged = SignedDescriptor {
            body: victim.descriptor().body,
            signature: a.descriptor().signature,
        };
        let r = a
            .directory_request(boot, DirectoryRequest::Publish(forged))
            .await
            .unwrap();
        let DirectoryResponse::Rejected { reason } = r else {
            panic!("forged descriptor accepted: {r:?}")
        };
        assert!(reason.contains("signature"), "{reason}");

        // The directory still holds the victim's genuine descriptor.
        let listed = a.list_directory().await.unwrap();
        let v = listed
            .iter()
            .find(|d| d.peer_id == victim.peer_id().to_base58())
            .unwrap();
        assert_eq!(
            *v,
            victim
                .descriptor()
                .verify_at(mixnn_p2p::unix_now())
                .unwrap(),
            "genuine entry unchanged"
        );
        a.shutdown().await;
        victim.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_data_dir_keeps_identity_and_mix_key() {
    init_logs();
    bounded(60, async {
        let b = bootstrap().await;
        let d = tempfile::tempdir().unwrap();
        let first = node(d.path(), &b).await;
        let id = first.peer_id();
        let now = mixnn_p2p::unix_now();
        let key = first.mix_keys().current(now).unwrap();
        first.shutdown().await;
        let second = node(d.path(), &b).await;
        assert_eq!(second.peer_id(), id);
        let again = second.mix_keys().current(now).unwrap();
        assert_eq!(again.0, key.0);
        assert_eq!(again.1.to_bytes(), key.1.to_bytes());
        second.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

fn packet(i: u32) -> Vec<u8> {
    let mut p = vec![0u8; PACKET as usize];
    p[..4].copy_from_slice(&i.to_be_bytes());
    p[PACKET as usize - 1] = (i % 251) as u8;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_packets_arrive_whole_and_are_counted() {
    init_logs();
    bounded(90, async {
        let b = bootstrap().await;
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let n1 = node(dirs[0].path(), &b).await;
        let mut n2 = node(dirs[1].path(), &b).await;
        let mut n3 = node(dirs[2].path(), &b).await;
        let mut inbox2 = n2.take_inbox().unwrap();
        let mut inbox3 = n3.take_inbox().unwrap();

        // n1 -> n2: addresses from n2's verified descriptor, as a designer
        // or packet processor would have them.
        let listed = n1.list_directory().await.unwrap();
        let d2 = listed
            .iter()
            .find(|d| d.peer_id == n2.peer_id().to_base58())
            .unwrap();
        let addrs = d2.addrs.iter().map(|a| a.parse().unwrap()).collect();
        n1.add_peer_addresses(n2.peer_id(), addrs).await;
        let sender = n1.sender();
        for i in 0..1000 {
            sender.send(n2.peer_id(), packet(i)).unwrap();
        }
        // Each arrives once and unaltered. Not necessarily in order: the
        // first packets take the libp2p stream while the direct link is
        // set up, and later ones on the direct link may overtake them
        // (PROTOCOL.md §15; nothing in the job protocol relies on order).
        let mut seen = vec![false; 1000];
        for _ in 0..1000 {
            let p = inbox2.recv().await.unwrap();
            assert_eq!(p.from, n1.peer_id());
            let i = u32::from_be_bytes(p.data[..4].try_into().unwrap());
            assert_eq!(p.data, packet(i), "packet {i} altered");
            assert!(!std::mem::replace(&mut seen[i as usize], true), "{i} twice");
        }

        // n2 -> n3 without telling n2 any address: found through Kademlia.
        for i in 0..10 {
            n2.sender().send(n3.peer_id(), packet(i)).unwrap();
        }
        for i in 0..10 {
            assert_eq!(inbox3.recv().await.unwrap().data, packet(i));
        }

        let m1 = n1.metrics();
        let m2 = n2.metrics();
        assert!(eventually(5, || LinkMetrics::get(&m1.packets_out) == 1000).await);
        assert!(eventually(5, || LinkMetrics::get(&m2.packets_in) == 1000).await);
        // The same figures over the HTTP endpoint (what `mixnn status` reads).
        let text = scrape(n2.metrics_addr().unwrap()).await.unwrap();
        let series = parse_text(&text);
        let value = |name: &str| series.iter().find(|(s, _)| s == name).map(|(_, v)| *v);
        assert_eq!(value("mixnn_packets_in_total"), Some(1000.0));
        assert_eq!(
            value("mixnn_packets_dropped_total{reason=\"bad_length\"}"),
            Some(0.0)
        );
        for n in [n1, n2, n3] {
            n.shutdown().await;
        }
        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_counted_drops_and_the_node_goes_on() {
    init_logs();
    bounded(60, async {
        let b = bootstrap().await;
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = node(da.path(), &b).await;
        let mut rx = node(db.path(), &b).await;
        let mut inbox = rx.take_inbox().unwrap();
        a.add_peer_addresses(
            rx.peer_id(),
            rx.listen_addrs()
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    m.pop();
                    m
                })
                .collect(),
        )
        .await;

        // A raw stream that skips the framing rules: a 100-byte frame (no
        // size class), then a good packet on the same stream.
        let mut control = a.stream_control();
        let proto = libp2p::StreamProtocol::new(mixnn_protocol::PACKET_PROTOCOL);
        let mut s = control
            .open_stream(rx.peer_id(), proto.clone())
            .await
            .unwrap();
        s.write_all(&100u32.to_be_bytes()).await.unwrap();
        s.write_all(&[0xAB; 100]).await.unwrap();
        s.write_all(&PACKET.to_be_bytes()).await.unwrap();
        s.write_all(&packet(7)).await.unwrap();
        s.flush().await.unwrap();
        let got = inbox.recv().await.unwrap();
        assert_eq!(got.data, packet(7), "the stream stayed in sync");
        let m = rx.metrics();
        assert_eq!(m.dropped(DropReason::BadLength), 1);

        // A frame claiming 4 GiB: counted, and that stream is closed ...
        s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        s.flush().await.unwrap();
        assert!(eventually(5, || m.dropped(DropReason::OversizeFrame) == 1).await);
        // ... while the node accepts new streams as before.
        a.sender().send(rx.peer_id(), packet(8)).unwrap();
        assert_eq!(inbox.recv().await.unwrap().data, packet(8));
        // (counted right after queueing, so possibly just after recv)
        assert!(eventually(5, || LinkMetrics::get(&m.packets_in) == 2).await);

        // A sender-side wrong length never reaches the wire.
        assert!(a.sender().send(rx.peer_id(), vec![0; 10]).is_err());
        a.shutdown().await;
        rx.shutdown().await;
        b.shutdown().await;
    })
    .await;
}
