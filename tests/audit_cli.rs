//! `mixnn audit` refuses a cut it cannot play with a message that says
//! why, before it trains or attacks anything.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
use support::mixnn;

#[test]
fn cuts_the_audit_cannot_play_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lenet = dir.path().join("lenet5.onnx");
    let fork = dir.path().join("bident.onnx");
    let (l, f) = (lenet.to_str().unwrap(), fork.to_str().unwrap());
    assert!(mixnn(&["model", "lenet5", "--out", l]).0);
    let made = mixnn(&[
        "model",
        "bident",
        "--merge",
        "max",
        "--shape",
        "symmetric",
        "--out",
        f,
    ]);
    assert!(made.0, "{}", made.1);
    let cases: [(&str, &str, &[&str]); 5] = [
        (l, "9", &["out of range", "1..=4"]),
        (l, "0", &["out of range"]),
        (l, "nosuch", &["nosuch", "/conv1/Conv"]),
        (l, "/fc1/Gemm,/fc2/Gemm", &["fc1"]),
        (f, "1", &["not a chain here", "parallel branch"]),
    ];
    for (model, split, want) in cases {
        let (ok, text) = mixnn(&[
            "audit",
            "--model",
            model,
            "--split",
            split,
            "--count",
            "2",
            "--data",
            "data/mnist",
        ]);
        assert!(!ok, "--split {split} on {model} was accepted:\n{text}");
        for w in want {
            assert!(text.contains(w), "--split {split}: no `{w}` in:\n{text}");
        }
        assert!(
            !text.contains("training the model"),
            "--split {split}: refused only after training:\n{text}"
        );
    }
}

/// He et al.'s setup end to end, small: their decoder shape, their noise,
/// one image of each class, SSIM over the reconstruction's range; the
/// report says what ran.
#[test]
fn the_papers_setup_runs_and_the_report_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let lenet = dir.path().join("lenet-he.onnx");
    let report = dir.path().join("r.json");
    let (l, r) = (lenet.to_str().unwrap(), report.to_str().unwrap());
    assert!(mixnn(&["model", "lenet-he", "--out", l]).0);
    let (ok, text) = mixnn(&[
        "audit",
        "--model",
        l,
        "--train-epochs",
        "0",
        "--split",
        "relu2",
        "--data",
        "data/mnist",
        "--attack",
        "inverse-net,rmle",
        "--rmle-steps",
        "5",
        "--aux",
        "gaussian",
        "--aux-count",
        "256",
        "--epochs",
        "2",
        "--decoder-optimizer",
        "amsgrad",
        "--lr-halve-every",
        "1",
        "--batch",
        "32",
        "--decoder",
        "compact",
        "--adam-eps",
        "1e-3",
        "--images",
        "per-class",
        "--ssim-range",
        "reconstruction",
        "--report",
        r,
    ]);
    assert!(ok, "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["attacked_images"], 10, "one image per class");
    assert_eq!(v["images"], "per-class");
    assert_eq!(v["ssim_range"], "reconstruction");
    let inv = &v["attacks"][0];
    assert_eq!(inv["settings"]["decoder"], "compact");
    assert_eq!(
        inv["settings"]["decoder_output"], "linear",
        "compact ends linear"
    );
    assert_eq!(inv["settings"]["aux"], "gaussian");
    assert_eq!(inv["settings"]["optimizer"], "amsgrad");
    let loss = inv["epoch_loss"].as_array().unwrap();
    assert_eq!(loss.len(), 2, "two epochs");
    assert_eq!(inv["settings"]["lr_halve_every"], 1);
    for a in v["attacks"].as_array().unwrap() {
        let s = a["mean_ssim"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&s), "{a}");
    }
}
