//! Training end to end on real MNIST: the engines agree, runs reproduce bit
//! for bit, the model learns, and the exported model matches the cascade.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::OnceLock;

use mixnn_data::Mnist;
use mixnn_designer::Model;
use mixnn_designer::{EngineKind, TrainOptions, TrainReport, train_local};
use mixnn_layer::{OptimizerKind, TrainConfig};
use mixnn_sandbox::{Sandbox, SandboxOptions};
use mixnn_shard::{Form, pb};

fn mnist() -> &'static Mnist {
    static DATA: OnceLock<Mnist> = OnceLock::new();
    DATA.get_or_init(|| {
        mixnn_data::load_mnist(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/mnist"
        )))
        .expect("bundled MNIST")
    })
}

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxOptions {
        cache_dir: SandboxOptions::default_cache_dir(),
        ..Default::default()
    })
    .expect("sandbox")
}

fn opts(engine: EngineKind, seed: u64, train: Option<usize>, test: Option<usize>) -> TrainOptions {
    TrainOptions {
        engine,
        epochs: 1,
        batch: 64,
        config: TrainConfig {
            seed,
            ..TrainConfig::default()
        },
        train_limit: train,
        test_limit: test,
        eval_batch: 1000,
        model_name: "test".into(),
    }
}

fn train(
    model: &pb::ModelProto,
    o: &TrainOptions,
    sb: Option<&Sandbox>,
) -> (TrainReport, mixnn_designer::Cascade, Vec<pb::ModelProto>) {
    let shards = mixnn_shard::split(model, &mixnn_shard::plan(model, None).unwrap()).unwrap();
    let (r, c) =
        train_local(&shards, mnist(), o, sb, &mut mixnn_designer::Quiet).expect("training runs");
    (r, c, shards)
}

#[test]
fn wasm_runs_reproduce_bit_for_bit_and_agree_with_native() {
    let model = mixnn_shard::mlp(7, 64, Form::Gemm);
    let sb = sandbox();
    // One full epoch of the paper's recipe (60k train, 10k test).
    let (a, _, _) = train(&model, &opts(EngineKind::Wasm, 7, None, None), Some(&sb));
    let (b, _, _) = train(&model, &opts(EngineKind::Wasm, 7, None, None), Some(&sb));
    let (n, _, _) = train(&model, &opts(EngineKind::Native, 7, None, None), None);
    assert_eq!(
        a.params_sha256, b.params_sha256,
        "two wasm runs with one seed must be bit-identical"
    );
    assert_eq!(a.epochs[0].train_loss, b.epochs[0].train_loss);
    let diff = (a.final_test_accuracy - n.final_test_accuracy).abs();
    eprintln!(
        "wasm {:.4} native {:.4} diff {diff:.5}",
        a.final_test_accuracy, n.final_test_accuracy
    );
    assert!(
        diff < 0.001,
        "wasm {} vs native {}",
        a.final_test_accuracy,
        n.final_test_accuracy
    );
    assert!(
        a.final_test_accuracy > 0.9,
        "the MLP must learn: {}",
        a.final_test_accuracy
    );
    // A different seed gives a different model.
    let (c, _, _) = train(
        &model,
        &opts(EngineKind::Wasm, 8, Some(640), Some(100)),
        Some(&sb),
    );
    assert_ne!(c.params_sha256, a.params_sha256);
}

/// Both guest modes on one full epoch: pure wasm (every product inside the
/// sandbox) is bit-identical from run to run, and agrees with host-kernel
/// mode and with native up to float rounding.
#[test]
fn pure_wasm_mode_reproduces_and_agrees_with_host_kernels() {
    let model = mixnn_shard::mlp(7, 64, Form::Gemm);
    let sb = sandbox();
    let mut pure = opts(EngineKind::Wasm, 7, None, None);
    pure.config.host_kernels = false;
    let (a, mut pure_cascade, _) = train(&model, &pure, Some(&sb));
    let (b, _, _) = train(&model, &pure, Some(&sb));
    assert_eq!(
        a.params_sha256, b.params_sha256,
        "pure wasm is deterministic"
    );
    let (h, mut host_cascade, _) = train(&model, &opts(EngineKind::Wasm, 7, None, None), Some(&sb));
    let (n, _, _) = train(&model, &opts(EngineKind::Native, 7, None, None), None);
    // How far float rounding moves the parameters over an epoch (quoted in
    // docs/performance.md); a bound far above it, far below a wrong result.
    let (pp, hp) = (
        pure_cascade.export_params().unwrap(),
        host_cascade.export_params().unwrap(),
    );
    let mut max_diff = 0f32;
    let mut max_param = 0f32;
    for (pl, hl) in pp.iter().zip(&hp) {
        for (pt, ht) in pl.iter().zip(hl) {
            assert_eq!(pt.name, ht.name);
            for (x, y) in pt.tensor.data.iter().zip(&ht.tensor.data) {
                max_diff = max_diff.max((x - y).abs());
                max_param = max_param.max(x.abs());
            }
        }
    }
    eprintln!(
        "pure vs host kernels after one epoch: max |param diff| {max_diff:e} (largest |param| {max_param})"
    );
    assert!(max_diff < 5e-2, "parameters drifted by {max_diff}");
    assert_ne!(
        a.params_sha256, h.params_sha256,
        "host kernels change the rounding, so the modes really differ"
    );
    for other in [&h, &n] {
        let diff = (a.final_test_accuracy - other.final_test_accuracy).abs();
        assert!(
            diff < 0.001,
            "pure {} vs {}",
            a.final_test_accuracy,
            other.final_test_accuracy
        );
    }
}

/// Both guest modes: pure wasm, then host kernels.
const MODES: [bool; 2] = [false, true];

#[test]
fn lenet5_trains_with_adam_in_guests() {
    let model = mixnn_shard::lenet5(3, 64, Form::Gemm);
    let sb = sandbox();
    let mut accuracy = vec![];
    for host_kernels in MODES {
        let mut o = opts(EngineKind::Wasm, 3, Some(10000), Some(2000));
        o.config.optimizer = OptimizerKind::Adam;
        o.config.learning_rate = 1e-3;
        o.config.host_kernels = host_kernels;
        let (r, _, shards) = train(&model, &o, Some(&sb));
        assert_eq!(shards.len(), 5);
        eprintln!(
            "lenet5 adam, 10000 samples, host kernels {host_kernels}: {:.4}",
            r.final_test_accuracy
        );
        assert!(
            r.final_test_accuracy > 0.85,
            "LeNet-5 must learn (host kernels {host_kernels}): {}",
            r.final_test_accuracy
        );
        accuracy.push(r.final_test_accuracy);
    }
    // Convolutions on host products differ from tract's by rounding only.
    assert!(
        (accuracy[0] - accuracy[1]).abs() <= 0.002,
        "pure {} vs host {}",
        accuracy[0],
        accuracy[1]
    );
}

#[test]
fn matmul_add_form_trains_like_gemm_form() {
    let sb = sandbox();
    for host_kernels in MODES {
        for form in [Form::Gemm, Form::MatMulAdd] {
            let model = mixnn_shard::mlp(5, 64, form);
            let mut o = opts(EngineKind::Wasm, 5, None, Some(2000));
            o.config.host_kernels = host_kernels;
            let (r, _, _) = train(&model, &o, Some(&sb));
            assert!(
                r.final_test_accuracy > 0.9,
                "{form:?}, host kernels {host_kernels}: {}",
                r.final_test_accuracy
            );
        }
    }
}

/// Test accuracy of one whole ONNX model run by native tract.
fn whole_model_accuracy(model: &pb::ModelProto, count: usize) -> f64 {
    use tract_onnx::prelude::*;
    let test = &mnist().test;
    let plan = tract_onnx::onnx()
        .model_for_proto_model(model)
        .unwrap()
        .with_input_fact(0, f32::fact([count, 1, 28, 28]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let idx: Vec<usize> = (0..count).collect();
    let (x, labels) = test.batch(&idx);
    let x = Tensor::from_shape(&[count, 1, 28, 28], &x).unwrap();
    let out = plan.run(tvec![x.into()]).unwrap();
    let out = out[0]
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap();
    let correct = out
        .chunks(10)
        .zip(&labels)
        .filter(|(row, l)| {
            let best = (0..10).fold(0, |b, i| if row[i] > row[b] { i } else { b });
            best as i64 == **l
        })
        .count();
    correct as f64 / count as f64
}

#[test]
fn exported_model_matches_the_trained_cascade() {
    let model = mixnn_shard::mlp(11, 64, Form::Gemm);
    let sb = sandbox();
    let (r, mut cascade, shards) = train(
        &model,
        &opts(EngineKind::Wasm, 11, Some(20000), Some(2000)),
        Some(&sb),
    );
    let merged = cascade.export_model(&shards).unwrap();
    // Round-trip through bytes, as a user would load the file.
    let merged = mixnn_shard::decode(&mixnn_shard::encode(&merged)).unwrap();
    let acc = whole_model_accuracy(&merged, 2000);
    eprintln!("cascade {:.4}, exported {:.4}", r.final_test_accuracy, acc);
    assert!(
        (acc - r.final_test_accuracy).abs() <= 0.001,
        "exported {acc} vs cascade {}",
        r.final_test_accuracy
    );
    assert!(acc > 0.85);
}
