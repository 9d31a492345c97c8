//! Designer restarts over real processes (issue 11): the `mixnn` binary
//! trains with a job directory, is killed with SIGKILL mid-epoch, and
//! `train --resume DIR` finishes the job with the parameters an
//! uninterrupted run has, to the bit; a corrupted checkpoint is refused,
//! said so, and the one before it used.
//!
//! These need every layer's state (`Model::save_state`/`load_state`).

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

fn command(args: &[&str], cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mixnn"));
    c.args(args)
        .env("MIXNN_CACHE_DIR", cache)
        .env("MIXNN_LOG", "info")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `mixnn args` to success; returns its output.
fn mixnn(args: &[&str], cache: &Path) -> String {
    let out = command(args, cache).output().expect("mixnn runs");
    let t = text(&out);
    assert!(out.status.success(), "mixnn {args:?} failed:\n{t}");
    t
}

fn digest(report: &Path) -> String {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    r["params_sha256"].as_str().unwrap().to_string()
}

/// The checkpoint steps in a job directory.
fn checkpoints(job: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(job.join("checkpoints"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    steps.sort_unstable();
    steps
}

/// Starts `mixnn args` and SIGKILLs it once its job directory holds a
/// checkpoint past step 0; fails if it finished on its own first.
fn kill_after_first_checkpoint(args: &[&str], cache: &Path, job: &Path) {
    let mut child = start_until_first_checkpoint(args, cache, job, Stdio::null);
    // Child::kill is SIGKILL on Unix: no chance to clean up.
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Starts `mixnn args` (output to `out()`) and returns it, still running,
/// once its job directory holds a checkpoint past step 0.
fn start_until_first_checkpoint(
    args: &[&str],
    cache: &Path,
    job: &Path,
    out: impl Fn() -> Stdio,
) -> Child {
    let mut child: Child = command(args, cache)
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("mixnn starts");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !checkpoints(job).iter().any(|&s| s > 0) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "mixnn ended before its first checkpoint past step 0"
        );
        assert!(Instant::now() < deadline, "no checkpoint within the bound");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "mixnn ended before it could be stopped mid-run"
    );
    child
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn mlp(dir: &Path, cache: &Path) -> PathBuf {
    let model = dir.join("mlp.onnx");
    mixnn(
        &["model", "mlp", "--out", &path(&model), "--seed", "3"],
        cache,
    );
    model
}

/// The recipe of the tests: small, two epochs.
fn recipe<'a>(model: &'a str, train_limit: &'a str) -> Vec<&'a str> {
    vec![
        "--model",
        model,
        "--engine",
        "wasm",
        "--epochs",
        "2",
        "--seed",
        "7",
        "--train-limit",
        train_limit,
        "--test-limit",
        "256",
    ]
}

#[test]
fn a_killed_local_job_resumes_to_the_parameters_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let model = path(&mlp(dir.path(), &cache));
    let job = dir.path().join("job");
    let (reference, resumed) = (dir.path().join("ref.json"), dir.path().join("r.json"));
    let base = recipe(&model, "6400");

    let mut args = vec!["train", "--local"];
    args.extend(&base);
    let reference_s = path(&reference);
    args.extend(["--report", &reference_s]);
    mixnn(&args, &cache);

    let mut args = vec!["train", "--local"];
    args.extend(&base);
    let job_s = path(&job);
    args.extend(["--job-dir", &job_s, "--checkpoint-every", "5"]);
    kill_after_first_checkpoint(&args, &cache, &job);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&job), 0o700);
        assert_eq!(mode(&job.join("secret")), 0o600);
        assert_eq!(mode(&job.join("job.json")), 0o600);
    }

    let out = mixnn(
        &["train", "--resume", &job_s, "--report", &path(&resumed)],
        &cache,
    );
    assert!(out.contains("resuming job"), "{out}");
    assert!(out.contains("resumed at step"), "{out}");
    assert_eq!(digest(&resumed), digest(&reference), "{out}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&resumed).unwrap()).unwrap();
    assert_eq!(r["epochs"].as_array().unwrap().len(), 2);
    assert!(r["checkpoints"]["resumed_from"].as_u64().unwrap() > 0);
    assert!(r["checkpoints"]["count"].as_u64().unwrap() > 0);
}

#[test]
fn a_corrupted_checkpoint_is_refused_said_so_and_the_previous_one_used() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let model = path(&mlp(dir.path(), &cache));
    let job = dir.path().join("job");
    let job_s = path(&job);
    let (full, resumed) = (dir.path().join("full.json"), dir.path().join("r.json"));
    let mut args = vec!["train", "--local"];
    args.extend(recipe(&model, "1280"));
    args.extend(["--job-dir", &job_s, "--checkpoint-every", "5"]);
    let full_s = path(&full);
    args.extend(["--report", &full_s]);
    mixnn(&args, &cache);
    // 20 steps per epoch, two epochs: the newest three are kept.
    assert_eq!(checkpoints(&job), vec![30, 35, 40]);
    let state = job.join("checkpoints/40/shard1.state");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&state, bytes).unwrap();

    let out = mixnn(
        &["train", "--resume", &job_s, "--report", &path(&resumed)],
        &cache,
    );
    assert!(
        out.contains(
            "checkpoint step 40: state of shard 1 does not match its digest; using step 35"
        ),
        "{out}"
    );
    assert!(out.contains("resumed at step 35"), "{out}");
    assert_eq!(digest(&resumed), digest(&full));

    // Every checkpoint broken: a clear error that names the directory.
    for step in checkpoints(&job) {
        std::fs::remove_file(job.join(format!("checkpoints/{step}/manifest.json"))).unwrap();
    }
    let out = command(&["train", "--resume", &job_s], &cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("nothing to resume from"), "{t}");
    assert!(t.contains("no valid checkpoint"), "{t}");
}

/// The designer of a pool job (a real process, talking to a pool of real
/// nodes over sockets) is killed mid-epoch; `--resume` deploys the job on
/// the pool again with the stored secret and finishes it with the
/// parameters of the uninterrupted single-process run.
#[test]
fn a_killed_pool_designer_resumes_on_the_pool_to_the_same_parameters() {
    let pool = support::start_pool(5, |_, c| c);
    let addr = pool.bootstrap_addrs()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let model = path(&mlp(dir.path(), &cache));
    let job = dir.path().join("job");
    let job_s = path(&job);
    let (reference, resumed) = (dir.path().join("ref.json"), dir.path().join("r.json"));
    let base = recipe(&model, "1280");

    let mut args = vec!["train", "--local", "--eval-batch", "64"];
    args.extend(&base);
    let reference_s = path(&reference);
    args.extend(["--report", &reference_s]);
    mixnn(&args, &cache);

    let mut args = vec!["train", "--pool", &addr, "--local-pool", "--dummies", "1"];
    args.extend(&base);
    args.extend(["--job-dir", &job_s, "--checkpoint-every", "5"]);
    kill_after_first_checkpoint(&args, &cache, &job);

    let out = mixnn(
        &["train", "--resume", &job_s, "--report", &path(&resumed)],
        &cache,
    );
    assert!(out.contains("resumed at step"), "{out}");
    assert!(out.contains("deploying"), "a fresh deploy: {out}");
    assert_eq!(digest(&resumed), digest(&reference), "{out}");
    pool.shutdown();
}

/// A pool of exactly the cascade's nodes loses one mid-job: the designer
/// says there is no spare node and what to do, its checkpoints stay, and
/// once a node joins `--resume` finishes the job with the parameters of
/// the uninterrupted run.
#[test]
fn no_spare_node_is_a_clear_error_and_resume_works_once_a_node_joins() {
    let mut pool = support::start_pool(3, |_, c| c);
    let addr = pool.bootstrap_addrs()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let model = path(&mlp(dir.path(), &cache));
    let job = dir.path().join("job");
    let job_s = path(&job);
    let (reference, resumed) = (dir.path().join("ref.json"), dir.path().join("r.json"));
    let base = recipe(&model, "1280");
    let mut args = vec!["train", "--local", "--eval-batch", "64"];
    args.extend(&base);
    let reference_s = path(&reference);
    args.extend(["--report", &reference_s]);
    mixnn(&args, &cache);

    let mut args = vec!["train", "--pool", &addr, "--local-pool", "--dummies", "0"];
    args.extend(&base);
    args.extend(["--job-dir", &job_s, "--checkpoint-every", "5"]);
    let child = start_until_first_checkpoint(&args, &cache, &job, Stdio::piped);
    // Every node holds a hop: stop one (its links close at once).
    let node = pool.nodes.remove(0);
    pool.rt.block_on(node.shutdown());
    let out = child.wait_with_output().unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "the job cannot go on:\n{said}");
    assert!(said.contains("lists no node outside the cascade"), "{said}");
    assert!(said.contains("mixnn train --resume JOB_DIR"), "{said}");
    // The stopped node stays listed by the bootstrap for a while: the job
    // directory records it, and the resume avoids it up front.
    assert!(said.contains("failed node(s) recorded in"), "{said}");
    let kept = checkpoints(&job);
    assert!(kept.iter().any(|&s| s > 0), "checkpoints intact: {kept:?}");

    pool.add_node();
    let out = mixnn(
        &["train", "--resume", &job_s, "--report", &path(&resumed)],
        &cache,
    );
    assert!(out.contains("avoiding 1 node(s) that failed"), "{out}");
    assert!(out.contains("resumed at step"), "{out}");
    assert_eq!(digest(&resumed), digest(&reference), "{out}");
    pool.shutdown();
}
