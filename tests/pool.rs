//! The job on a real pool: a bootstrap and six nodes on 127.0.0.1 (real
//! tasks, real sockets, Noise and yamux), the designer training the paper's
//! MLP through onion packets with a dummy hop, and what each node saw.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use mixnn_bootstrap::{Bootstrap, BootstrapConfig};
use mixnn_designer::pool::{PoolCascade, PoolOptions};
use mixnn_designer::{Cascade, EngineKind, Model, TrainOptions, TrainReport, train_local};
use mixnn_layer::TrainConfig;
use mixnn_node::{Node, NodeConfig, PeerId};
use mixnn_sandbox::{Sandbox, SandboxOptions};

const NODES: usize = 6;

/// One sandbox for every pool, designer and reference run of this test
/// binary: the tests run at once, and each sandbox compiles its guest once.
fn sandbox() -> Arc<Sandbox> {
    static SANDBOX: std::sync::OnceLock<Arc<Sandbox>> = std::sync::OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            Arc::new(
                Sandbox::new(SandboxOptions {
                    cache_dir: std::env::var_os("MIXNN_CACHE_DIR").map(Into::into),
                    ..Default::default()
                })
                .expect("sandbox"),
            )
        })
        .clone()
}

fn data() -> mixnn_data::Mnist {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    mixnn_data::load_mnist(&dir).expect("bundled MNIST")
}

fn options(engine: EngineKind) -> TrainOptions {
    TrainOptions {
        engine,
        epochs: 1,
        batch: 64,
        config: TrainConfig {
            seed: 11,
            ..TrainConfig::default()
        },
        train_limit: Some(6400),
        test_limit: Some(640),
        eval_batch: 64,
        model_name: "mlp".into(),
    }
}

struct Pool {
    /// Drives the nodes and the bootstrap; dropped with the pool.
    _rt: tokio::runtime::Runtime,
    bootstrap: Bootstrap,
    nodes: Vec<Node>,
    _dirs: Vec<tempfile::TempDir>,
}

/// Node and designer logs when `RUST_LOG` is set (e.g. `mixnn_node=debug`).
fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

fn start_pool() -> Pool {
    logs();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sb = sandbox();
    let (bootstrap, nodes, dirs) = rt.block_on(async {
        let bootstrap = Bootstrap::start(BootstrapConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
            ..Default::default()
        })
        .await
        .expect("bootstrap starts");
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..NODES {
            let dir = tempfile::tempdir().expect("tempdir");
            let cfg = NodeConfig {
                data_dir: dir.path().to_path_buf(),
                listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
                bootstrap: bootstrap
                    .listen_addrs()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                bootstrap_timeout_secs: 10,
                // Cover traffic on, fast. The links accept one public
                // class, the job's (the MLP at batch 64 travels in 64 KiB
                // payloads), so cover, which goes out in every public
                // class, has the job's length too.
                cover_loop_ms: 100,
                cover_drop_ms: 100,
                cover_bytes_per_sec: 16 << 20,
                packet_sizes: vec![2609 + 65536],
                ..NodeConfig::default()
            };
            let mut node = Node::start(cfg).await.expect("node starts");
            node.serve_jobs(sb.clone()).expect("serve jobs");
            nodes.push(node);
            dirs.push(dir);
        }
        (bootstrap, nodes, dirs)
    });
    Pool {
        _rt: rt,
        bootstrap,
        nodes,
        _dirs: dirs,
    }
}

/// Trains on the pool in a thread of its own (the designer runs its own
/// runtime); returns the report, the cascade's peers in order, and the
/// exported model.
fn train_on_pool(
    pool: &Pool,
    shards: &[mixnn_grad::pb::ModelProto],
    keep_first: bool,
) -> (
    TrainReport,
    Vec<(String, PeerId)>,
    mixnn_grad::pb::ModelProto,
) {
    let bootstrap: Vec<String> = pool
        .bootstrap
        .listen_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let shards = shards.to_vec();
    std::thread::spawn(move || {
        let opts = options(EngineKind::Wasm);
        let data = data();
        let sb = sandbox();
        let popts = PoolOptions {
            bootstrap,
            dummies: 1,
            keep_first,
            keep_last: false,
            local_engine: EngineKind::Wasm,
            class: None,
            // A bound for failure, not a speed check: on a cold guest cache
            // and a loaded CI machine the nodes' first compile alone has
            // taken over a minute.
            timeout: Duration::from_secs(300),
            wait_for_nodes: Duration::from_secs(20),
            batches: vec![64],
        };
        let mut cascade =
            PoolCascade::deploy(&shards, &opts.config, Some(&sb), &popts, &mut |_| {})
                .expect("deploys");
        let sample = mixnn_designer::sample_shape(&shards, &data).expect("shape");
        let report = mixnn_designer::train_model(
            &mut cascade,
            shards.len(),
            &sample,
            &data,
            &opts,
            &mut |_| {},
        )
        .expect("trains on the pool");
        let exported = cascade.export_model(&shards).expect("exports");
        let peers = cascade
            .network()
            .cascade
            .into_iter()
            .map(|(role, p)| (role, p.parse().expect("peer id")))
            .collect();
        cascade.close();
        (report, peers, exported)
    })
    .join()
    .expect("designer thread")
}

fn mlp_shards() -> Vec<mixnn_grad::pb::ModelProto> {
    let model = mixnn_shard::mlp(3, 64, mixnn_shard::Form::Gemm);
    let plan = mixnn_shard::plan(&model, None).expect("plan");
    mixnn_shard::split(&model, &plan).expect("split")
}

/// The single-process reference: the same shards and options in guests.
fn local_wasm(shards: &[mixnn_grad::pb::ModelProto]) -> TrainReport {
    let sb = sandbox();
    train_local(
        shards,
        &data(),
        &options(EngineKind::Wasm),
        Some(&sb),
        &mut |_| {},
    )
    .expect("local run")
    .0
}

#[test]
fn pool_training_is_bit_identical_to_local_wasm_and_nodes_see_only_neighbours() {
    let pool = start_pool();
    let shards = mlp_shards();
    let (report, cascade, exported) = train_on_pool(&pool, &shards, false);

    // The onion path changes nothing numerically.
    let local = local_wasm(&shards);
    assert_eq!(report.params_sha256, local.params_sha256);
    assert_eq!(report.final_test_accuracy, local.final_test_accuracy);
    assert_eq!(report.epochs[0].train_loss, local.epochs[0].train_loss);
    assert!(report.final_test_accuracy > 0.5, "it learned something");

    // Export: the merged model, run natively, scores what the pool scored.
    let mut merged = Cascade::load(
        EngineKind::Native,
        std::slice::from_ref(&exported),
        &TrainConfig::default(),
        None,
    )
    .expect("merged model loads");
    let test = data().test.subset(640);
    let sample = mixnn_designer::sample_shape(&shards, &data()).expect("shape");
    let acc = mixnn_designer::evaluate(&mut merged, &test, &sample, 64).expect("evaluates");
    assert!(
        (acc - report.final_test_accuracy).abs() < 1e-9,
        "exported {acc} vs distributed {}",
        report.final_test_accuracy
    );

    // What each node saw: its two neighbours and nothing else of the cascade.
    assert_eq!(cascade.len(), 4, "3 layers + 1 dummy: {cascade:?}");
    let order: Vec<PeerId> = cascade.iter().map(|(_, p)| *p).collect();
    let first_layer = cascade
        .iter()
        .position(|(r, _)| r == "layer 0")
        .expect("layer 0 is on the pool");
    for (i, (role, peer)) in cascade.iter().enumerate() {
        let node = pool
            .nodes
            .iter()
            .find(|n| n.peer_id() == *peer)
            .expect("cascade node is ours");
        let views = node.job_views();
        assert_eq!(views.len(), 1, "{role}: one job");
        let v = &views[0];
        let seen: BTreeSet<PeerId> = v.from.union(&v.to).copied().collect();
        let neighbours: BTreeSet<PeerId> = [i.checked_sub(1), Some(i + 1)]
            .into_iter()
            .flatten()
            .filter_map(|j| order.get(j).copied())
            .collect();
        for other in order
            .iter()
            .filter(|p| **p != *peer && !neighbours.contains(p))
        {
            assert!(
                !seen.contains(other),
                "{role} (hop {i}) saw a non-neighbour"
            );
        }
        for n in &neighbours {
            assert!(
                seen.contains(n),
                "{role} (hop {i}) never talked to its neighbour"
            );
        }
        // At most the two neighbours (the designer counts as one at the ends).
        assert!(
            seen.len() <= 2,
            "{role} (hop {i}) talked to {} peers",
            seen.len()
        );
        let reads_labels = v.e2e_read.contains_key("labels");
        assert_eq!(reads_labels, role == "layer 2", "{role}: labels");
        if i > first_layer {
            assert!(
                !v.input_shapes
                    .iter()
                    .any(|s| s.len() == 4 && s[1..] == [1, 28, 28]),
                "{role} (hop {i}) received raw input"
            );
        }
        assert!(
            v.e2e_read.contains_key("init"),
            "{role}: its shard came end to end"
        );
    }
    // The wire: every packet any node sent or received, cover included,
    // has the one length of the job's class (counted at the stream tap).
    for n in &pool.nodes {
        let lengths = n.metrics().link.lengths();
        assert_eq!(
            lengths.keys().copied().collect::<Vec<_>>(),
            vec![2609 + 65536],
            "packet lengths seen by {}",
            n.peer_id()
        );
        assert!(mixnn_node::LinkMetrics::get(&n.metrics().cover_loops_sent) > 0);
    }
    // Nodes outside the cascade never heard of the job.
    for n in &pool.nodes {
        if !order.contains(&n.peer_id()) {
            assert!(n.job_views().is_empty());
        }
    }
}

#[test]
fn keeping_the_first_layer_keeps_raw_input_off_the_pool() {
    let pool = start_pool();
    let shards = mlp_shards();
    let (report, cascade, _) = train_on_pool(&pool, &shards, true);
    let local = local_wasm(&shards);
    assert_eq!(report.params_sha256, local.params_sha256);
    for (_, peer) in &cascade {
        let node = pool
            .nodes
            .iter()
            .find(|n| n.peer_id() == *peer)
            .expect("cascade node is ours");
        for v in node.job_views() {
            assert!(
                !v.input_shapes.iter().any(|s| s.len() == 4),
                "a pool node received image-shaped input"
            );
        }
    }
}
