//! The job on a real pool: a bootstrap and six nodes on 127.0.0.1 (real
//! tasks, real sockets, Noise and yamux), the designer training the paper's
//! MLP through onion packets with a dummy hop, and what each node saw.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use mixnn_designer::{Cascade, EngineKind, Model, TrainOptions, TrainReport, train_local};
use mixnn_layer::TrainConfig;
use mixnn_node::{NodeConfig, PeerId};
use support::{Pool, sandbox};

mod support;

const NODES: usize = 6;

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
    support::start_pool(NODES, |cfg| NodeConfig {
        // Cover traffic on, fast. The links accept one public class, the
        // job's (the MLP at batch 64 travels in 64 KiB payloads), so cover,
        // which goes out in every public class, has the job's length too.
        cover_loop_ms: 100,
        cover_drop_ms: 100,
        cover_bytes_per_sec: 16 << 20,
        packet_sizes: vec![2609 + 65536],
        ..cfg
    })
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
    let bootstrap = pool.bootstrap_addrs();
    let shards = shards.to_vec();
    std::thread::spawn(move || {
        let opts = options(EngineKind::Wasm);
        let data = data();
        let popts = support::pool_options(bootstrap, keep_first);
        let (mut cascade, report) = support::deploy_and_train(&shards, &data, &opts, &popts);
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
