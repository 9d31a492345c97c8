//! Noise at a cut as a training option, on real MNIST and the paper's MLP
//! (native engine, a few hundred samples): runs reproduce from the seed,
//! the noise changes the result, a level of 0 changes nothing, and bad
//! specs are refused with a reason.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::OnceLock;

use mixnn_data::Mnist;
use mixnn_designer::defence::NoiseSpec;
use mixnn_designer::{Cascade, DesignerError, EngineKind, Quiet, TrainOptions, TrainReport};
use mixnn_layer::TrainConfig;
use mixnn_shard::{Form, pb};

fn mnist() -> &'static Mnist {
    static DATA: OnceLock<Mnist> = OnceLock::new();
    DATA.get_or_init(|| {
        mixnn_data::load_mnist(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/mnist"
        )))
        .expect("bundled MNIST")
    })
}

fn shards() -> Vec<pb::ModelProto> {
    let model = mixnn_shard::mlp(7, 32, Form::Gemm);
    mixnn_shard::split(&model, &mixnn_shard::plan(&model, None).unwrap()).unwrap()
}

fn opts(seed: u64, train: usize) -> TrainOptions {
    TrainOptions {
        engine: EngineKind::Native,
        epochs: 1,
        batch: 32,
        config: TrainConfig {
            seed,
            ..TrainConfig::default()
        },
        train_limit: Some(train),
        test_limit: Some(200),
        eval_batch: 100,
        model_name: "defence".into(),
    }
}

/// Trains the MLP with `noise` (a `--noise-at` spec) at `seed` on 640
/// samples.
fn train(noise: Option<&str>, seed: u64) -> TrainReport {
    train_on(noise, seed, 640)
}

fn train_on(noise: Option<&str>, seed: u64, samples: usize) -> TrainReport {
    let shards = shards();
    let o = opts(seed, samples);
    let mut cascade = Cascade::load(o.engine, &shards, &o.config, None).unwrap();
    if let Some(spec) = noise {
        cascade.set_cut_noise(spec.parse().unwrap(), seed).unwrap();
    }
    let sample = mixnn_designer::sample_shape(&shards, mnist()).unwrap();
    mixnn_designer::train_model(&mut cascade, shards.len(), &sample, mnist(), &o, &mut Quiet)
        .unwrap()
}

#[test]
fn the_same_seed_gives_the_same_run() {
    for spec in ["1:gaussian:0.5", "1:laplace:0.3", "2:dropout:0.2"] {
        let a = train(Some(spec), 3);
        let b = train(Some(spec), 3);
        assert_eq!(a.params_sha256, b.params_sha256, "{spec}");
        assert_eq!(a.final_test_accuracy, b.final_test_accuracy, "{spec}");
        let c = train(Some(spec), 4);
        assert_ne!(
            a.params_sha256, c.params_sha256,
            "{spec}: the seed must matter"
        );
    }
}

#[test]
fn noise_changes_the_result_and_level_zero_does_not() {
    let none = train(None, 3);
    for spec in [
        "1:gaussian:0.5",
        "1:laplace:0.3",
        "1:dropout:0.2",
        "1:dropout-train:0.2",
    ] {
        let noisy = train(Some(spec), 3);
        assert_ne!(noisy.params_sha256, none.params_sha256, "{spec}");
    }
    // Noise at a different cut is a different run.
    assert_ne!(
        train(Some("1:gaussian:0.5"), 3).params_sha256,
        train(Some("2:gaussian:0.5"), 3).params_sha256
    );
    for spec in ["1:gaussian:0", "1:laplace:0.0", "2:dropout:0"] {
        let zero = train(Some(spec), 3);
        assert_eq!(zero.params_sha256, none.params_sha256, "{spec}");
        assert_eq!(zero.final_test_accuracy, none.final_test_accuracy, "{spec}");
    }
}

#[test]
fn heavy_noise_costs_accuracy() {
    let none = train_on(None, 3, 6400).final_test_accuracy;
    let heavy = train_on(Some("1:gaussian:20"), 3, 6400).final_test_accuracy;
    assert!(none > 0.7, "the MLP must learn without noise: {none}");
    assert!(
        heavy < none - 0.1,
        "σ=20 on the first cut must hurt: {heavy} vs {none} without"
    );
}

#[test]
fn a_cut_outside_the_model_is_refused() {
    let shards = shards();
    let o = opts(0, 640);
    let mut cascade = Cascade::load(o.engine, &shards, &o.config, None).unwrap();
    let n = shards.len();
    let spec: NoiseSpec = format!("{n}:gaussian:0.5").parse().unwrap();
    let err = cascade.set_cut_noise(spec, 0).unwrap_err();
    assert!(matches!(err, DesignerError::NoiseCut { .. }), "{err}");
    assert!(err.to_string().contains(&format!("1..{n}")), "{err}");
}

#[test]
fn bad_specs_say_what_is_wrong() {
    let cases = [
        ("gaussian:0.5", "2 parts"),
        ("1:gaussian:0.5:1", "4 parts"),
        ("x:gaussian:0.5", "not a shard count"),
        ("0:gaussian:0.5", "at least one shard"),
        ("1:poisson:0.5", "unknown noise `poisson`"),
        ("1:gaussian:abc", "not a number"),
        ("1:gaussian:-1", "at least 0"),
        ("1:laplace:inf", "finite"),
        ("1:gaussian:NaN", "finite"),
        ("1:dropout:1", "below 1"),
        ("1:dropout-train:1.5", "below 1"),
    ];
    for (spec, want) in cases {
        let err = spec.parse::<NoiseSpec>().unwrap_err().to_string();
        assert!(err.contains(want), "{spec}: {err}");
        assert!(
            err.contains("K:gaussian:σ"),
            "{spec}: the error shows the form: {err}"
        );
    }
    let ok: NoiseSpec = " 2 : Gaussian : 0.5 ".parse().unwrap();
    assert_eq!(ok.to_string(), "2:gaussian:0.5");
}
