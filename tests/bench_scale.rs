//! `mixnn bench scale` on a small pool: the report has every figure, cover
//! shows up in the nodes' counters only when it is on, the job runs all
//! its steps; and bad arguments are clear errors. No timing is asserted:
//! the bench reports times, it does not judge them.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use serde_json::Value;

fn mixnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mixnn"))
        .args(args)
        .env("MIXNN_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("mixnn runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn num(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

#[test]
fn a_small_pool_reports_cover_load_cpu_and_step_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scale.json");
    let args = [
        "bench",
        "scale",
        "--nodes",
        "6",
        "--steps",
        "20",
        "--test-limit",
        "128",
        "--cover-rates",
        "0,2",
        "--idle-s",
        "3",
        "--settle-s",
        "1",
        "--report",
        path.to_str().unwrap(),
    ];
    let out = mixnn(&args);
    let printed = text(&out);
    assert!(out.status.success(), "bench scale failed:\n{printed}");
    assert!(printed.contains("pkts/s out"), "no table:\n{printed}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert!(run["error"].is_null(), "job failed: {run}");
        assert_eq!(run["nodes_exited"].as_array().map(Vec::len), Some(0));
        assert_eq!(num(run, "/figures/train_steps"), 20.0);
        assert!(num(run, "/figures/step_ms") > 0.0);
        for w in ["idle", "job"] {
            assert_eq!(num(run, &format!("/{w}/nodes_measured")), 6.0);
            assert_eq!(run[w]["nodes"].as_array().map(Vec::len), Some(6));
            // Every node process burns some CPU and holds some memory.
            assert!(num(run, &format!("/{w}/mean/cpu_share")) > 0.0);
            assert!(num(run, &format!("/{w}/max/rss_mib")) > 0.0);
        }
        // The job's packets went through the nodes: 3 layers + 2 dummies.
        assert!(num(run, "/job/mean/packets_out_per_s") > 0.0);
        assert_eq!(num(run, "/job_split/cascade_nodes"), 5.0);
        assert!(num(run, "/job_split/cascade/packets_out_per_s") > 0.0);
    }
    let (off, on) = (&runs[0], &runs[1]);
    assert_eq!(num(off, "/cover/bytes_per_sec"), 0.0);
    assert_eq!(num(off, "/idle/mean/packets_out_per_s"), 0.0);
    assert_eq!(num(off, "/idle/cover/loops_sent"), 0.0);
    assert_eq!(num(on, "/cover/multiple"), 2.0);
    assert!(num(on, "/idle/cover/loops_sent") > 0.0, "{on}");
    assert!(num(on, "/idle/cover/drops_sent") > 0.0, "{on}");
    assert!(num(on, "/idle/mean/packets_out_per_s") > 0.0);
    assert!(num(on, "/idle/mean/bytes_in_per_s") > 0.0);
}

#[test]
fn bad_arguments_are_clear_errors() {
    let few = mixnn(&["bench", "scale", "--nodes", "3", "--idle-s", "0"]);
    assert!(!few.status.success());
    assert!(
        text(&few).contains("the job needs 5 distinct nodes"),
        "{}",
        text(&few)
    );
    let negative = mixnn(&["bench", "scale", "--cover-rates=-1"]);
    assert!(!negative.status.success());
    assert!(
        text(&negative).contains("--cover-rates"),
        "{}",
        text(&negative)
    );
    let long = mixnn(&["bench", "scale", "--steps", "2000"]);
    assert!(!long.status.success());
    assert!(text(&long).contains("MNIST has 60000"), "{}", text(&long));
}
