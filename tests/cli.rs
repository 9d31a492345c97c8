//! The `mixnn` binary as a user runs it: model → split → train → export,
//! the JSON report, the compiled-guest cache, the benchmark, `--help`.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn mixnn(args: &[&str], cache: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_mixnn"))
        .args(args)
        .env("MIXNN_CACHE_DIR", cache)
        .env("MIXNN_LOG", "info")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("mixnn runs");
    if !out.status.success() {
        panic!(
            "mixnn {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn model_split_train_export_and_cache() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let cache = dir.path().join("cache");

    mixnn(
        &["model", "mlp", "--out", &d("mlp.onnx"), "--seed", "3"],
        &cache,
    );
    let out = mixnn(&["split", &d("mlp.onnx"), "--out", &d("shards")], &cache);
    let table = text(&out);
    assert!(
        table.contains("Gemm") && table.contains("LogSoftmax"),
        "{table}"
    );
    for i in 0..3 {
        assert!(dir.path().join(format!("shards/shard{i}.onnx")).exists());
    }
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("shards/plan.json")).unwrap()).unwrap();
    assert_eq!(plan["shards"].as_array().unwrap().len(), 3);

    let train = |report: &str| {
        mixnn(
            &[
                "train",
                "--local",
                "--model",
                &d("mlp.onnx"),
                "--engine",
                "wasm",
                "--epochs",
                "1",
                "--seed",
                "3",
                "--train-limit",
                "6400",
                "--test-limit",
                "500",
                "--report",
                &d(report),
                "--export",
                &d("trained.onnx"),
            ],
            &cache,
        )
    };
    let first = text(&train("r1.json"));
    assert!(
        first.contains("compiled guest"),
        "first start compiles: {first}"
    );
    let second = text(&train("r2.json"));
    assert!(
        second.contains("loaded cached compiled guest"),
        "second start uses the cache: {second}"
    );
    assert!(second.contains("epoch   1"), "progress per epoch: {second}");

    let r1: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("r1.json")).unwrap()).unwrap();
    let r2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("r2.json")).unwrap()).unwrap();
    assert_eq!(r1["engine"], "wasm");
    assert_eq!(r1["epochs"].as_array().unwrap().len(), 1);
    for k in ["epoch", "train_loss", "test_accuracy", "seconds"] {
        assert!(r1["epochs"][0].get(k).is_some(), "epoch entry lacks {k}");
    }
    let acc = r1["final_test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.5 && acc <= 1.0, "{acc}");
    assert_eq!(r1["params_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        r1["params_sha256"], r2["params_sha256"],
        "same seed, same parameters"
    );

    // The exported model is one ONNX file that splits like the original.
    let out = mixnn(
        &["split", &d("trained.onnx"), "--out", &d("trained-shards")],
        &cache,
    );
    assert!(text(&out).contains("3 shards"));
}

#[test]
fn bench_guest_reports_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let cache = dir.path().join("cache");
    mixnn(&["model", "lenet5", "--out", &d("lenet.onnx")], &cache);
    let out = mixnn(
        &[
            "bench",
            "guest",
            "--model",
            &d("lenet.onnx"),
            "--iterations",
            "3",
            "--batch",
            "64",
            "--report",
            &d("b.json"),
        ],
        &cache,
    );
    assert!(text(&out).contains("ratio"));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("b.json")).unwrap()).unwrap();
    let shards = r["shards"].as_array().unwrap();
    // 5 shards, each in both modes.
    assert_eq!(shards.len(), 10);
    let modes: Vec<&str> = shards.iter().filter_map(|s| s["mode"].as_str()).collect();
    assert_eq!(modes.iter().filter(|m| **m == "wasm").count(), 5);
    assert_eq!(modes.iter().filter(|m| **m == "host").count(), 5);
    for s in shards {
        for k in [
            "name",
            "mode",
            "forward_native_us",
            "forward_guest_us",
            "backward_native_us",
            "backward_guest_us",
        ] {
            assert!(s.get(k).is_some(), "bench entry lacks {k}");
        }
        assert!(s["ratio"].as_f64().unwrap() > 0.0);
        assert_eq!(s["batch"].as_u64(), Some(64));
    }
}

#[test]
fn every_command_explains_itself_and_bad_input_is_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    for cmd in [
        &["--help"][..],
        &["model", "--help"],
        &["split", "--help"],
        &["train", "--help"],
        &["bench", "guest", "--help"],
        &["demo", "--help"],
    ] {
        let out = mixnn(cmd, cache.path());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{cmd:?}"
        );
    }
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), b"not an onnx file at all").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mixnn"))
        .args([
            "split",
            &bad.path().to_string_lossy(),
            "--out",
            &cache.path().to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parsing"), "{err}");
}

/// The local harness end to end: a bootstrap and node processes, the job
/// over the pool with dummies and cover traffic, the two single-process
/// runs, the report; the processes are gone afterwards.
#[test]
fn demo_runs_the_job_on_a_local_pool_of_processes() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("demo.json");
    let plot = dir.path().join("demo.png");
    let out = mixnn(
        &[
            "demo",
            "--train-limit",
            "1280",
            "--test-limit",
            "320",
            "--report",
            &report.to_string_lossy(),
            "--plot",
            &plot.to_string_lossy(),
        ],
        &dir.path().join("cache"),
    );
    let t = text(&out);
    assert!(
        t.contains("time ratio distributed / single-process wasm"),
        "{t}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["bit_identical_wasm"], serde_json::json!(true), "{t}");
    assert_eq!(
        r["distributed"]["params_sha256"],
        r["single_process_wasm"]["params_sha256"]
    );
    // Every packet of the job has one length (the designer sends and
    // receives only job packets); cover, on the nodes' links, goes out in
    // every public class, the job's among them.
    let job = r["distributed"]["network"]["packet_lengths"]
        .as_array()
        .unwrap();
    assert_eq!(job.len(), 1, "one packet length for the job: {job:?}");
    let lengths = r["packet_lengths"].as_array().unwrap();
    assert!(lengths.contains(&job[0]), "{lengths:?}");
    let public = mixnn_node::config::DEFAULT_PACKET_SIZES;
    assert!(
        (lengths.iter()).all(|l| public.contains(&(l.as_u64().unwrap() as u32))),
        "only public classes on the wire: {lengths:?}"
    );
    for k in [
        "time_ratio_wasm",
        "time_ratio_native",
        "per_hop_overhead_us",
    ] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}");
    }
    assert!(std::fs::metadata(&plot).unwrap().len() > 1000);
}

/// `model bident` writes a fork-join that `split` cuts into its parts,
/// printing the graph plan; `--trusted-branch` swaps the sides and a node
/// outside both branches is refused by name.
#[test]
fn bident_model_splits_into_parts() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let cache = dir.path().join("cache");
    let args = ["--merge", "max", "--shape", "asymmetric", "--seed", "2"];
    let out = d("b.onnx");
    let model = [&["model", "bident", "--out", out.as_str()][..], &args[..]].concat();
    mixnn(&model, &cache);
    let t = text(&mixnn(&["split", &d("b.onnx"), "--out", &d("p")], &cache));
    assert!(t.contains("Max, untrusted branch = input 0"), "{t}");
    assert!(t.contains("pool: 30136 parameters in 4 shard(s)"), "{t}");
    for f in ["untrusted-3", "trusted-1", "head-0"] {
        assert!(dir.path().join(format!("p/{f}.onnx")).exists(), "{f}");
    }
    let fork: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("p/fork.json")).unwrap()).unwrap();
    assert_eq!(fork["untrusted_slot"], 0);
    assert_eq!(fork["trusted"].as_array().unwrap().len(), 2);
    let swap = ["split", &d("b.onnx"), "--out", &d("q")];
    let t = text(&mixnn(
        &[&swap[..], &["--trusted-branch", "/untrusted/conv2/Conv"]].concat(),
        &cache,
    ));
    assert!(t.contains("untrusted branch = input 1"), "{t}");
    let bad = Command::new(env!("CARGO_BIN_EXE_mixnn"))
        .args([&swap[..], &["--trusted-branch", "/head/fc/Gemm"]].concat())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("'/head/fc/Gemm': is after the merge"),
        "{}",
        text(&bad)
    );
}

/// `mixnn bench hop` times real crossings and reports every stage, the
/// crossing and the floor (no time is asserted, only that the figures
/// are there and consistent: the stages add up to about the crossing).
#[test]
fn the_hop_budget_reports_each_stage_against_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("hop.json");
    let r = report.to_string_lossy().into_owned();
    let out = mixnn(
        &[
            "bench",
            "hop",
            "--iterations",
            "30",
            "--classes",
            "2048,65536",
            "--report",
            &r,
        ],
        &dir.path().join("cache"),
    );
    let printed = text(&out);
    assert!(
        printed.contains("sphinx unwrap") && printed.contains("crossing / floor"),
        "{printed}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, class) in rows.iter().zip([2048, 65536]) {
        assert_eq!(row["class"], class);
        let f = |k: &str| row[k].as_f64().unwrap();
        for k in [
            "receive_us",
            "noise_open_us",
            "sphinx_us",
            "payload_open_us",
            "payload_seal_us",
            "noise_seal_us",
            "send_us",
            "floor_us",
        ] {
            assert!(f(k) > 0.0, "{k} of class {class}: {row}");
        }
        assert!(f("total_us") <= 2.0 * f("crossing_us") + 50.0, "{row}");
        assert!(row["packet_len"].as_u64().unwrap() > class as u64);
    }
}
