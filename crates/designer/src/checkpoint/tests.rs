//! The job directory: round trips, modes, torn and corrupted checkpoints.

use std::path::Path;

use super::*;
use crate::backend::EngineKind;
use crate::train::TrainOptions;

fn recipe() -> JobRecipe {
    let opts = TrainOptions {
        engine: EngineKind::Native,
        epochs: 2,
        batch: 8,
        config: mixnn_layer::TrainConfig::default(),
        train_limit: Some(64),
        test_limit: None,
        eval_batch: 32,
        model_name: "m".into(),
    };
    JobRecipe::new(&opts, String::new(), None, 5, None)
}

fn checkpoint(step: u64) -> Checkpoint {
    Checkpoint {
        position: Position {
            epoch: 1 + (step / 10) as usize,
            batch: (step % 10) as usize,
            step,
            loss_sum: 0.1 + step as f64 / 3.0,
            epoch_seconds: 1.5,
        },
        epochs: Vec::new(),
        states: vec![vec![step as u8; 40], vec![7, 8, 9], Vec::new()],
    }
}

fn job(dir: &Path) -> JobDir {
    JobDir::create(&dir.join("job"), &recipe(), b"model bytes").unwrap()
}

fn state_file(job: &JobDir, step: u64, shard: usize) -> std::path::PathBuf {
    job.path()
        .join(format!("checkpoints/{step}/shard{shard}.state"))
}

#[test]
fn round_trip_keeps_the_newest_three() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    for step in [0, 5, 10, 15] {
        job.write_checkpoint(&checkpoint(step)).unwrap();
    }
    assert_eq!(job.checkpoint_steps().unwrap(), vec![5, 10, 15]);
    let (cp, warnings) = job.latest_valid().unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let want = checkpoint(15);
    assert_eq!(cp.position, want.position);
    assert_eq!(
        cp.position.loss_sum.to_bits(),
        want.position.loss_sum.to_bits()
    );
    assert_eq!(cp.states, want.states);

    let again = JobDir::open(job.path()).unwrap();
    let r = again.recipe().unwrap();
    assert_eq!(r.checkpoint_every, 5);
    assert_eq!(again.model(&r).unwrap(), b"model bytes");
    assert_eq!(again.secret().unwrap().len(), 32);
    // The same step written again replaces it.
    job.write_checkpoint(&checkpoint(15)).unwrap();
    assert_eq!(job.checkpoint_steps().unwrap(), vec![5, 10, 15]);
}

#[cfg(unix)]
#[test]
fn files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    job.write_checkpoint(&checkpoint(3)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(job.path()), 0o700);
    assert_eq!(mode(&job.path().join("checkpoints")), 0o700);
    assert_eq!(mode(&job.path().join("checkpoints/3")), 0o700);
    for f in [
        "job.json",
        "model.onnx",
        "secret",
        "checkpoints/3/manifest.json",
    ] {
        assert_eq!(mode(&job.path().join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&state_file(&job, 3, 0)), 0o600);
}

#[test]
fn a_new_job_in_a_job_directory_is_refused_and_an_empty_one_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    let again = JobDir::create(job.path(), &recipe(), b"x").unwrap_err();
    assert!(again.to_string().contains("--resume"), "{again}");
    let none = JobDir::open(dir.path()).unwrap_err();
    assert!(none.to_string().contains("job.json is missing"), "{none}");
    let empty = job.latest_valid().unwrap_err();
    assert!(
        empty
            .to_string()
            .contains("no valid checkpoint (none was written)"),
        "{empty}"
    );
}

#[test]
fn a_flipped_byte_falls_back_to_the_previous_checkpoint_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    for step in [200, 300] {
        job.write_checkpoint(&checkpoint(step)).unwrap();
    }
    let f = state_file(&job, 300, 1);
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[1] ^= 0x10;
    std::fs::write(&f, bytes).unwrap();
    let (cp, warnings) = job.latest_valid().unwrap();
    assert_eq!(cp.position.step, 200);
    assert_eq!(
        warnings,
        vec!["checkpoint step 300: state of shard 1 does not match its digest; using step 200"]
    );
}

#[test]
fn an_interrupted_write_is_ignored_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    job.write_checkpoint(&checkpoint(5)).unwrap();
    // A crash mid-write: a temporary directory with a state and no
    // manifest, and a step directory whose manifest never came.
    let cps = job.path().join("checkpoints");
    std::fs::create_dir(cps.join(".tmp-10-1")).unwrap();
    std::fs::write(cps.join(".tmp-10-1/shard0.state"), b"half").unwrap();
    std::fs::create_dir(cps.join("10")).unwrap();
    std::fs::write(cps.join("10/shard0.state"), b"half").unwrap();
    let (cp, warnings) = job.latest_valid().unwrap();
    assert_eq!(cp.position.step, 5);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("checkpoint step 10: manifest:"),
        "{warnings:?}"
    );
    job.write_checkpoint(&checkpoint(15)).unwrap();
    assert!(!cps.join(".tmp-10-1").exists());
}

#[test]
fn all_corrupted_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    for step in [1, 2] {
        job.write_checkpoint(&checkpoint(step)).unwrap();
    }
    std::fs::write(state_file(&job, 2, 0), b"short").unwrap();
    std::fs::write(job.path().join("checkpoints/1/manifest.json"), b"{").unwrap();
    let e = job.latest_valid().unwrap_err().to_string();
    assert!(e.contains("no valid checkpoint"), "{e}");
    assert!(e.contains("checkpoint step 2: state of shard 0"), "{e}");
    assert!(
        e.contains("checkpoint step 1: manifest does not parse"),
        "{e}"
    );
}

#[test]
fn a_model_file_that_changed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    std::fs::write(job.path().join("model.onnx"), b"other bytes").unwrap();
    let r = job.recipe().unwrap();
    let e = job.model(&r).unwrap_err().to_string();
    assert!(e.contains("does not match the digest"), "{e}");
}

/// The failed nodes a job directory records survive the process, each
/// once, in the order they failed; a tampered file is refused by name.
#[test]
fn failed_nodes_are_recorded_once_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    assert!(job.failed_nodes().unwrap().is_empty());
    job.record_failed(&[[1; 32], [2; 32]]).unwrap();
    job.record_failed(&[[2; 32], [3; 32]]).unwrap();
    let again = JobDir::open(job.path()).unwrap();
    assert_eq!(
        again.failed_nodes().unwrap(),
        vec![[1; 32], [2; 32], [3; 32]]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(job.path().join("failed_nodes.json")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    std::fs::write(job.path().join("failed_nodes.json"), b"[\"zz\"]").unwrap();
    let e = again.failed_nodes().unwrap_err().to_string();
    assert!(e.contains("failed_nodes.json") && e.contains("zz"), "{e}");
}
