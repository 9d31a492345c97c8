//! A Bident (fork-join) job on a real pool: a bootstrap and six nodes on
//! 127.0.0.1 (real tasks, real sockets, Noise and yamux, cover on), the
//! untrusted branch deployed with a dummy hop, the trusted branch, merge
//! and head in the designer. It must end bit for bit where the same
//! fork-join trained in one process (every shard in a wasm guest) ends,
//! send one packet length, and show the pool nothing of the labels, the
//! loss, the logits or the merge's output.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use mixnn_designer::fork::{ForkJoinModel, Part, fork_loss, load_part};
use mixnn_designer::pool::{PoolCascade, PoolOptions, payload_class};
use mixnn_designer::{EngineKind, TrainOptions, TrainReport};
use mixnn_layer::{OptimizerKind, TrainConfig};
use mixnn_node::NodeConfig;
use mixnn_shard::fork::ForkJoin;
use mixnn_shard::{BidentMerge, BidentShape};
use mixnn_sphinx::Geometry;

mod support;

const BATCH: usize = 16;

fn data() -> mixnn_data::Mnist {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    mixnn_data::load_mnist(&dir).expect("bundled MNIST")
}

fn options() -> TrainOptions {
    TrainOptions {
        engine: EngineKind::Wasm,
        epochs: 1,
        batch: BATCH,
        config: TrainConfig {
            optimizer: OptimizerKind::Adam,
            learning_rate: 1e-3,
            seed: 5,
            ..TrainConfig::default()
        },
        train_limit: Some(960),
        test_limit: Some(160),
        eval_batch: BATCH,
        model_name: "bident".into(),
    }
}

fn bident() -> ForkJoin {
    let model = mixnn_shard::bident(BidentMerge::Concat, BidentShape::Asymmetric, 3, BATCH);
    mixnn_shard::fork_join(&model, None)
        .expect("plans")
        .expect("a fork-join")
}

/// The same fork-join in this process, every shard in a wasm guest.
fn local(fj: &ForkJoin) -> TrainReport {
    let (opts, sb) = (options(), support::sandbox());
    let loss = fork_loss(fj).unwrap();
    let u = load_part(
        EngineKind::Wasm,
        &fj.untrusted,
        Part::Untrusted,
        &opts.config,
        loss,
        Some(&sb),
    )
    .unwrap();
    let mut m = ForkJoinModel::new(u, fj, EngineKind::Wasm, &opts.config, Some(&sb)).unwrap();
    train(&mut m, fj, &opts)
}

fn train<U: mixnn_designer::fork::Branch>(
    m: &mut ForkJoinModel<U>,
    fj: &ForkJoin,
    opts: &TrainOptions,
) -> TrainReport {
    let data = data();
    let sample = mixnn_designer::sample_shape(&fj.untrusted, &data).unwrap();
    let n = fj.untrusted.len() + fj.trusted.len() + fj.head.len();
    let mut r = mixnn_designer::train_model(m, n, &sample, &data, opts, &mut mixnn_designer::Quiet)
        .expect("trains");
    r.fork = Some(m.timing().clone());
    r
}

#[test]
fn a_bident_job_on_the_pool_is_bit_identical_to_local_wasm_and_hides_the_join() {
    let fj = bident();
    let g = Geometry::default();
    let class = payload_class(&g, &fj.untrusted, 0, fj.untrusted.len(), &[BATCH]).unwrap();
    let packet_len = g.packet_len(class).unwrap();
    let pool = support::start_pool(6, |_, cfg| NodeConfig {
        cover_loop_ms: 100,
        cover_drop_ms: 100,
        cover_bytes_per_sec: 16 << 20,
        packet_sizes: vec![u32::try_from(packet_len).unwrap()],
        ..cfg
    });
    let popts = PoolOptions {
        branch: true,
        batches: vec![BATCH],
        ..support::pool_options(pool.bootstrap_addrs(), false)
    };
    let job = fj.clone();
    let (report, net) = std::thread::spawn(move || {
        let (opts, sb) = (options(), support::sandbox());
        let cascade = PoolCascade::deploy(&job.untrusted, &opts.config, None, &popts, &mut |_| {})
            .expect("deploys the untrusted branch");
        let mut m =
            ForkJoinModel::new(cascade, &job, EngineKind::Wasm, &opts.config, Some(&sb)).unwrap();
        let report = train(&mut m, &job, &opts);
        let net = m.untrusted_mut().network();
        m.untrusted_mut().close();
        (report, net)
    })
    .join()
    .expect("designer thread");

    // Exactness: the onion path changes nothing.
    let reference = local(&fj);
    assert_eq!(report.params_sha256, reference.params_sha256);
    assert_eq!(report.final_test_accuracy, reference.final_test_accuracy);
    assert!(report.final_test_accuracy > 0.3, "it learned something");

    // The branches ran side by side: each step took less than both
    // branches one after the other.
    let t = report.fork.as_ref().unwrap();
    assert_eq!(t.steps, 960 / BATCH as u64);
    println!(
        "per step: {:.2} ms whole, untrusted {:.2} ms, trusted {:.2} ms, merge+head {:.2} ms",
        1e3 * t.step_seconds / t.steps as f64,
        1e3 * t.untrusted_seconds / t.steps as f64,
        1e3 * t.trusted_seconds / t.steps as f64,
        1e3 * t.merge_head_seconds / t.steps as f64
    );

    // The cascade: the untrusted layers and one dummy, never first.
    let order: Vec<_> = net
        .cascade
        .iter()
        .map(|(r, p)| (r.clone(), p.parse::<mixnn_node::PeerId>().unwrap()))
        .collect();
    assert_eq!(order.len(), fj.untrusted.len() + 1, "{order:?}");
    assert_eq!(order[0].0, "layer 0");
    assert_ne!(
        order.last().unwrap().0,
        "dummy",
        "a dummy never ends a branch"
    );

    // What the pool saw: shapes of the untrusted branch only (the image,
    // its activations and the gradients of them), never the merge's
    // output ([B, 168]) or the logits ([B, 10]); no labels, no loss.
    let merged = [BATCH as u32, 168];
    let logits = [BATCH as u32, 10];
    for n in &pool.nodes {
        for v in n.job_views() {
            for s in &v.input_shapes {
                assert!(
                    s[..] != merged && s[..] != logits,
                    "a node received a tensor of shape {s:?}"
                );
            }
            let kinds: BTreeSet<&str> = v.e2e_read.keys().map(String::as_str).collect();
            assert!(
                !kinds.contains("labels") && !kinds.contains("loss"),
                "a node read {kinds:?}"
            );
        }
    }
    // One packet length on the wire, cover included.
    for n in &pool.nodes {
        let lengths: Vec<usize> = n.metrics().link.lengths().keys().copied().collect();
        assert_eq!(lengths, vec![packet_len], "lengths seen by {}", n.peer_id());
    }
    pool.shutdown();
}

/// `mixnn args`, which must succeed; its stdout.
fn mixnn_ok(args: &[&str]) -> String {
    let run = mixnn(args);
    let text = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "mixnn {args:?}: {text}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    text
}

fn mixnn(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mixnn"))
        .args(args)
        .env("MIXNN_LOG", "warn")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("mixnn runs")
}

/// A fork-join as PyTorch exports it (two branches, `torch.cat`, dynamic
/// batch) trains as it is, exports with its own graph and names, and the
/// flags that cannot apply to a fork-join are clear errors.
#[test]
fn a_pytorch_fork_join_trains_unedited_and_bad_flags_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("trained.onnx");
    let report = dir.path().join("report.json");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/shard/tests/fixtures/torch_fork_concat.onnx"
    );
    let (o, r) = (out.to_str().unwrap(), report.to_str().unwrap());
    let text = mixnn_ok(&[
        "train",
        "--local",
        "--engine",
        "native",
        "--model",
        fixture,
        "--train-limit",
        "640",
        "--test-limit",
        "200",
        "--batch",
        "32",
        "--optimizer",
        "adam",
        "--lr",
        "0.003",
        "--export",
        o,
        "--report",
        r,
    ]);
    assert!(
        text.contains("merge") && text.contains("Concat"),
        "no plan:\n{text}"
    );
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(rep["final_test_accuracy"].as_f64().unwrap() > 0.3, "{rep}");
    assert_eq!(rep["fork"]["steps"].as_u64(), Some(20));
    // The export is the PyTorch graph itself with trained weights.
    let original = mixnn_shard::decode(&std::fs::read(fixture).unwrap()).unwrap();
    let trained = mixnn_shard::decode(&std::fs::read(&out).unwrap()).unwrap();
    let (g0, g1) = (original.graph.unwrap(), trained.graph.unwrap());
    assert_eq!(g0.node.len(), g1.node.len());
    let changed = g0
        .initializer
        .iter()
        .zip(&g1.initializer)
        .filter(|(a, b)| a.name == b.name && a != b)
        .count();
    assert!(changed >= 6, "only {changed} initializers trained");
    // The exported model is a fork-join again and trains on.
    let again = mixnn(&[
        "train",
        "--local",
        "--engine",
        "native",
        "--model",
        o,
        "--train-limit",
        "64",
        "--test-limit",
        "64",
        "--batch",
        "32",
    ]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    for (args, want) in [
        (vec!["--trusted-branch", "nope"], "nope"),
        (vec!["--noise-at", "1:gaussian:0.5"], "fork-join"),
    ] {
        let mut all = vec![
            "train",
            "--local",
            "--engine",
            "native",
            "--model",
            fixture,
            "--train-limit",
            "64",
        ];
        all.extend(args);
        let bad = mixnn(&all);
        let err = String::from_utf8_lossy(&bad.stderr).into_owned();
        assert!(
            !bad.status.success() && err.contains(want),
            "{all:?}: {err}"
        );
    }
    let chain = dir.path().join("mlp.onnx");
    let c = chain.to_str().unwrap();
    assert!(mixnn(&["model", "mlp", "--out", c]).status.success());
    let bad = mixnn(&["train", "--local", "--model", c, "--trusted-branch", "x"]);
    let err = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(err.contains("chain, not a fork-join"), "{err}");
}

/// `mixnn bident-table` on a sliver of MNIST: one row per network asked
/// for, written as it goes, and a bad merge name refused up front.
#[test]
fn the_bident_table_command_reports_every_network_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("table.json");
    let r = report.to_str().unwrap();
    let text = mixnn_ok(&[
        "bident-table",
        "--epochs-max",
        "1",
        "--train-limit",
        "256",
        "--test-limit",
        "100",
        "--merges",
        "max,avg",
        "--shapes",
        "asymmetric",
        "--report",
        r,
    ]);
    assert!(text.contains("| max asymmetric | > 1 |"), "{text}");
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["params_untrusted"].as_u64(), Some(30_136));
    assert_eq!(rows[1]["params_trusted"].as_u64(), Some(5_626));
    assert_eq!(rows[0]["epochs"].as_array().unwrap().len(), 1);
    let bad = mixnn(&["bident-table", "--merges", "nope"]);
    let err = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(!bad.status.success() && err.contains("`nope`"), "{err}");
}
