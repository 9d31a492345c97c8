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
