//! Cover traffic: three nodes serving jobs send loops and drops through each
//! other, their loops come back, and the packets on the wire have the
//! lengths of the public classes, more than one of them (cover goes out in
//! every public class).

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{bootstrap, bounded, eventually, init_logs, node_config};
use mixnn_node::config::DEFAULT_PACKET_SIZES;
use mixnn_node::{Metrics, Node, NodeConfig};
use mixnn_sandbox::{Sandbox, SandboxOptions};

fn counts(m: &Metrics) -> (u64, u64, u64) {
    (
        m.cover_loops_sent.load(Ordering::Relaxed),
        m.cover_loops_returned.load(Ordering::Relaxed),
        m.cover_drops_sent.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_return_and_cover_uses_the_public_classes() {
    init_logs();
    bounded(90, async {
        let b = bootstrap().await;
        let sandbox = Arc::new(Sandbox::new(SandboxOptions::default()).expect("sandbox"));
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes: Vec<Node> = Vec::new();
        for d in &dirs {
            let cfg = NodeConfig {
                // The real classes: cover uses all of them.
                packet_sizes: DEFAULT_PACKET_SIZES.to_vec(),
                cover_loop_ms: 50,
                cover_drop_ms: 50,
                cover_bytes_per_sec: 4 << 20,
                ..node_config(d.path(), &b)
            };
            let mut n = Node::start(cfg).await.expect("node starts");
            n.serve_jobs(sandbox.clone()).expect("serve jobs");
            nodes.push(n);
        }
        let metrics: Vec<Arc<Metrics>> = nodes.iter().map(Node::metrics).collect();
        let ok = eventually(20, || {
            metrics.iter().all(|m| {
                let (sent, returned, drops) = counts(m);
                sent > 5 && returned > 0 && drops > 0
            })
        })
        .await;
        let all: Vec<_> = metrics.iter().map(|m| counts(m)).collect();
        assert!(
            ok,
            "cover (loops sent, returned, drops sent) per node: {all:?}"
        );

        let public: Vec<usize> = DEFAULT_PACKET_SIZES.iter().map(|&l| l as usize).collect();
        let mut all_lengths = std::collections::BTreeSet::new();
        for m in &metrics {
            let lengths = m.link.lengths();
            assert!(!lengths.is_empty());
            assert!(
                lengths.keys().all(|l| public.contains(l)),
                "packet lengths seen: {lengths:?}"
            );
            all_lengths.extend(lengths.keys().copied());
            let text = m.render();
            assert!(text.contains("mixnn_cover_packets_total{kind=\"loop_lost\"}"));
        }
        assert!(all_lengths.len() > 1, "one class only: {all_lengths:?}");
        for n in nodes {
            n.shutdown().await;
        }
        b.shutdown().await;
    })
    .await;
}

/// Finding 2: a hostile peer sends a node packets of the 1 MiB class that
/// open under the node's mix key (and then fail: their payload is garbage).
/// The node's own cover keeps its classes and rates: the packets leaving
/// it (link trace) stay mostly small, as its schedule draws them, instead
/// of switching to the hostile class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_large_packets_do_not_steer_cover() {
    use mixnn_sphinx::{
        Exit, Geometry, JobHandle, LinkKey, MixPublicKey, NodeId, Op, PayloadMode, RouteHop,
    };
    init_logs();
    bounded(90, async {
        let b = bootstrap().await;
        let sandbox = Arc::new(Sandbox::new(SandboxOptions::default()).expect("sandbox"));
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let cfg = |i: usize| NodeConfig {
            packet_sizes: DEFAULT_PACKET_SIZES.to_vec(),
            cover_loop_ms: 50,
            cover_drop_ms: 50,
            cover_bytes_per_sec: 4 << 20,
            ..node_config(dirs[i].path(), &b)
        };
        let mut a = Node::start(cfg(0)).await.expect("node starts");
        a.serve_jobs(sandbox.clone()).expect("serve jobs");
        let mut c = Node::start(cfg(1)).await.expect("node starts");
        c.serve_jobs(sandbox.clone()).expect("serve jobs");
        // The hostile peer: a node that only sends.
        let hostile = Node::start(NodeConfig {
            cover_bytes_per_sec: 0,
            ..cfg(2)
        })
        .await
        .expect("node starts");
        hostile
            .add_peer_addresses(a.peer_id(), a.listen_addrs().to_vec())
            .await;
        let d = a
            .descriptor()
            .verify_at(mixnn_p2p::unix_now())
            .expect("valid");
        let g = Geometry::default();
        let big = *g.size_classes().last().expect("classes");
        let mut rng = rand::rngs::OsRng;
        let hostile_packet = |rng: &mut rand::rngs::OsRng| {
            let hop = RouteHop {
                node_id: NodeId(d.identity_key),
                mix_key: MixPublicKey::from_bytes(d.mix_key.public).expect("key"),
                epoch: d.mix_key.epoch as u32,
                op: Op::Relay,
                job: JobHandle([9; 32]),
                key_in: LinkKey::random(rng),
                key_out: LinkKey::random(rng),
                app_flags: 0,
            };
            let exit = Exit::Endpoint(NodeId(d.identity_key));
            let (p, _) =
                mixnn_sphinx::build_packet(&g, &[hop], exit, PayloadMode::Link, big, &[], rng)
                    .expect("build");
            p.into_bytes()
        };
        let trace = &a.metrics().link.trace;
        trace.start(1 << 16);
        for _ in 0..40 {
            let _ = hostile.sender().send(a.peer_id(), hostile_packet(&mut rng));
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let seen = trace.take();
        let big_len = g.packet_len(big).expect("len");
        let hostile_in = (seen.iter())
            .filter(|e| !e.out && e.peer == hostile.peer_id() && e.len == big_len)
            .count();
        assert!(
            hostile_in >= 30,
            "the hostile packets arrived: {hostile_in}"
        );
        let out: Vec<_> = seen.into_iter().filter(|e| e.out).collect();
        let large = out.iter().filter(|e| e.len == big_len).count();
        assert!(out.len() > 20, "the node sent cover: {}", out.len());
        assert!(
            large * 4 < out.len(),
            "{large} of {} packets leaving the node are of the hostile class",
            out.len()
        );
        for n in [a, c, hostile] {
            n.shutdown().await;
        }
        b.shutdown().await;
    })
    .await;
}
