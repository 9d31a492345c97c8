//! The pipelined test phase and `mixnn infer` over real sockets (issue 12,
//! item 3): a pool of nodes on 127.0.0.1 (bootstrap, Noise, yamux, onion
//! packets of the job's one length), the paper's MLP trained on a small
//! slice of MNIST.
//!
//! - With W test batches in flight the outputs are those of one batch at a
//!   time, bit for bit (so the accuracy is the training run's), and a hop
//!   that dies while batches are in flight is noticed by the measured
//!   bound instead of hanging the phase.
//! - `mixnn train --pool --keep-deployed` then `mixnn infer --job DIR` (a
//!   second designer process attaching to the cascade) gives the training
//!   run's final test accuracy, the single-process model's outputs, and
//!   the same again after `--redeploy` on fresh nodes.
//!
//! No test asserts a time.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use mixnn_designer::pool::{PoolCascade, PoolError};
use mixnn_designer::{DesignerError, EngineKind, Model, TrainOptions};
use mixnn_layer::TrainConfig;

mod support;
use support::mixnn;

fn data() -> mixnn_data::Mnist {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    mixnn_data::load_mnist(&dir).expect("bundled MNIST")
}

fn options() -> TrainOptions {
    TrainOptions {
        engine: EngineKind::Wasm,
        epochs: 1,
        batch: 64,
        config: TrainConfig {
            seed: 5,
            ..TrainConfig::default()
        },
        train_limit: Some(640),
        test_limit: Some(640),
        eval_batch: 64,
        model_name: "mlp".into(),
    }
}

/// Every output of the test set's batches, as bits, in batch order, and
/// the correct answers.
fn outputs(
    model: &mut dyn Model,
    test: &mixnn_data::Dataset,
    sample: &[usize],
) -> Result<(Vec<Vec<u32>>, usize), DesignerError> {
    let mut out = vec![Vec::new(); test.count.div_ceil(64)];
    let mut correct = 0;
    mixnn_designer::infer_dataset(model, test, sample, 64, &mut |i, labels, y| {
        for (row, &l) in y.data.chunks(10).zip(labels) {
            let best = (0..10).fold(0, |b, k| if row[k] > row[b] { k } else { b });
            correct += usize::from(best as i64 == l);
        }
        out[i] = y.data.iter().map(|v| v.to_bits()).collect();
        Ok(())
    })?;
    Ok((out, correct))
}

#[test]
fn pipelined_test_batches_give_the_sequential_outputs_and_a_lost_answer_is_noticed() {
    let mut pool = support::start_pool(5, |_, cfg| cfg);
    let data = data();
    let opts = options();
    let model = mixnn_shard::mlp(3, 64, mixnn_shard::Form::Gemm);
    let shards = mixnn_shard::split(&model, &mixnn_shard::plan(&model, None).unwrap()).unwrap();
    let popts = support::pool_options(pool.bootstrap_addrs(), false);
    let (mut cascade, report): (PoolCascade, _) =
        support::deploy_and_train(&shards, &data, &opts, &popts);
    let sample = mixnn_designer::sample_shape(&shards, &data).unwrap();
    let test = data.test.subset(640);

    cascade.set_test_window(1);
    let (sequential, correct) = outputs(&mut cascade, &test, &sample).unwrap();
    assert_eq!(
        correct as f64 / 640.0,
        report.final_test_accuracy,
        "one at a time is the training loop's own test phase"
    );
    for w in [2, 4, 16] {
        cascade.set_test_window(w);
        let (piped, c) = outputs(&mut cascade, &test, &sample).unwrap();
        assert_eq!(c, correct, "window {w}: accuracy");
        assert!(piped == sequential, "window {w}: outputs differ");
    }
    let net = cascade.network();
    assert_eq!(
        net.packet_lengths,
        vec![net.packet_len],
        "one packet length"
    );

    // A middle hop stops while batches are in flight: the designer holds
    // no link to it, so only the measured bound can notice.
    let (_, middle) = cascade.describe_hop(1);
    let k = (pool.nodes.iter())
        .position(|n| n.peer_id().to_base58() == middle)
        .expect("the node of hop 2");
    let node = pool.nodes.remove(k);
    pool.rt.block_on(node.shutdown());
    cascade.set_test_window(4);
    let err = outputs(&mut cascade, &test, &sample).unwrap_err();
    assert!(
        matches!(
            err,
            DesignerError::Job(PoolError::Lost { .. } | PoolError::LinkClosed { .. })
        ),
        "{err}"
    );
    drop(cascade);
    pool.shutdown();
}

fn ok(args: &[&str]) -> String {
    let (success, text) = mixnn(args);
    assert!(success, "mixnn {args:?} failed:\n{text}");
    text
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Trains the MLP on `pool` with `--keep-deployed` and `extra` flags into
/// `dir/job`, then runs `mixnn infer` on it (attaching); checks that the
/// inference has the training run's final accuracy and the single-process
/// model's outputs, bit for bit. Returns the job directory and accuracy.
fn train_kept_then_infer(pool: &support::Pool, dir: &Path, extra: &[&str]) -> (String, f64) {
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (model, job, train, infer) = (p("mlp.onnx"), p("job"), p("train.json"), p("infer.json"));
    ok(&["model", "mlp", "--out", &model, "--seed", "2"]);
    let boot = pool.bootstrap_addrs().join(",");
    let mut args = vec![
        "train",
        "--pool",
        &boot,
        "--local-pool",
        "--model",
        &model,
        "--seed",
        "4",
        "--train-limit",
        "640",
        "--test-limit",
        "640",
        "--job-dir",
        &job,
        "--keep-deployed",
        "--test-window",
        "4",
        "--report",
        &train,
        // Bounds for failure, not speed checks: on a loaded machine the
        // nodes' first compile alone has taken over a minute.
        "--timeout-s",
        "300",
        "--wait-for-nodes-s",
        "120",
    ];
    args.extend_from_slice(extra);
    ok(&args);
    let trained = json(Path::new(&train))["final_test_accuracy"]
        .as_f64()
        .unwrap();
    assert!(Path::new(&job).join("deployed.json").is_file());

    let out = ok(&[
        "infer", "--job", &job, "--limit", "640", "--window", "4", "--report", &infer,
    ]);
    let r = json(Path::new(&infer));
    assert_eq!(r["cascade_from"], "attached", "{out}");
    assert_eq!(r["accuracy"].as_f64().unwrap(), trained, "{out}");
    assert_eq!(r["samples"], 640);
    assert!(r["inferences_per_second"].as_f64().unwrap() > 0.0);
    let single = &r["single_process"];
    assert_eq!(single["accuracy"].as_f64().unwrap(), trained, "{out}");
    assert_eq!(single["identical_outputs"], true, "{out}");
    assert!(r["ratio_to_single_process"].as_f64().unwrap() > 0.0);
    // Not a terminal: plain progress lines, one per tenth of the batches.
    assert!(out.contains("  9/10 batches (90%), "), "{out}");
    (job, trained)
}

#[test]
fn infer_on_a_kept_cascade_gives_the_training_runs_accuracy() {
    let pool = support::start_pool(5, |_, cfg| cfg);
    let dir = tempfile::tempdir().unwrap();
    let (job, trained) = train_kept_then_infer(&pool, dir.path(), &["--dummies", "1"]);
    let again = dir.path().join("again.json").to_string_lossy().into_owned();

    let no_data = dir.path().join("no-data").to_string_lossy().into_owned();
    let (success, text) = mixnn(&["infer", "--job", &job, "--data", &no_data]);
    assert!(!success);
    assert!(text.contains("loading MNIST from"), "{text}");

    // Fresh nodes from the latest checkpoint: the same answers.
    let out = ok(&[
        "infer",
        "--job",
        &job,
        "--limit",
        "640",
        "--redeploy",
        "--close",
        "--no-local",
        "--report",
        &again,
    ]);
    let r = json(Path::new(&again));
    assert_eq!(r["cascade_from"], "redeployed", "{out}");
    assert_eq!(r["accuracy"].as_f64().unwrap(), trained, "{out}");
    assert!(
        !Path::new(&job).join("deployed.json").exists(),
        "closed: forgotten"
    );
    pool.shutdown();
}

/// The designer's kept ends are rebuilt from the checkpoint and the job
/// secret (the dummy's sign mask folded into the last shard) when a new
/// process attaches.
#[test]
fn infer_attaches_to_a_cascade_whose_ends_the_designer_keeps() {
    let pool = support::start_pool(3, |_, cfg| cfg);
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--dummies", "1", "--keep-first", "--keep-last"];
    train_kept_then_infer(&pool, dir.path(), &flags);
    pool.shutdown();
}

#[test]
fn infer_says_what_is_wrong_with_its_job_or_data() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing");
    let (success, text) = mixnn(&["infer", "--job", &missing.to_string_lossy()]);
    assert!(!success);
    assert!(text.contains("is not a job directory"), "{text}");

    // A job directory whose recipe is garbled.
    std::fs::create_dir_all(&missing).unwrap();
    std::fs::write(missing.join("job.json"), b"{ not json").unwrap();
    let (success, text) = mixnn(&["infer", "--job", &missing.to_string_lossy()]);
    assert!(!success);
    assert!(text.contains("job.json"), "{text}");
}
