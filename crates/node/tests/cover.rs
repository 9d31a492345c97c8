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
