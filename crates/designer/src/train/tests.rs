//! The loop's logic on a model whose state is two numbers: checkpoints,
//! repairs with a replay, resume from disk, the limits.

use mixnn_data::{Dataset, Mnist};
use mixnn_layer::{NamedTensor, Tensor, TrainConfig};

use super::*;
use crate::checkpoint::{JobDir, JobRecipe};

fn dataset(count: usize, salt: f32) -> Dataset {
    Dataset {
        images: (0..count * 4)
            .map(|i| ((i as f32) * 0.37 + salt).sin())
            .collect(),
        labels: (0..count).map(|i| (i % 3) as u8).collect(),
        count,
        rows: 2,
        cols: 2,
    }
}

fn data() -> Mnist {
    Mnist {
        train: dataset(20, 0.0),
        test: dataset(6, 1.0),
    }
}

fn opts() -> TrainOptions {
    TrainOptions {
        engine: EngineKind::Native,
        epochs: 2,
        batch: 3,
        config: TrainConfig::default(),
        train_limit: None,
        test_limit: None,
        eval_batch: 4,
        model_name: "fake".into(),
    }
}

/// Two "layers" whose state is one number each; a step mixes the batch
/// in, order-sensitively, so a wrong replay shows in the digest.
#[derive(Default)]
struct Fake {
    w: [f32; 2],
    calls: u64,
    /// Calls of `train_batch` (counted over all, replays included) that fail.
    fail_at: Vec<u64>,
    repairable: bool,
    repairs: usize,
}

impl Model for Fake {
    fn train_batch(&mut self, x: Tensor, labels: &[i64]) -> Result<f32, DesignerError> {
        self.calls += 1;
        if self.fail_at.contains(&self.calls) {
            // A lost hop: its state is gone until the checkpoint comes back.
            self.w = [f32::NAN; 2];
            return Err(DesignerError::Pool(format!(
                "hop lost at call {}",
                self.calls
            )));
        }
        let s: f32 = x.data.iter().sum::<f32>() + labels.iter().sum::<i64>() as f32;
        self.w[0] = self.w[0] * 0.9 + s;
        self.w[1] = self.w[1] * 0.5 - self.w[0] * 0.01;
        Ok(self.w[0].abs() / 100.0)
    }

    fn infer(&mut self, x: Tensor) -> Result<Tensor, DesignerError> {
        let n = x.shape[0];
        let data = (0..n * 3).map(|i| (i as f32 + self.w[1]).cos()).collect();
        Tensor::new(vec![n, 3], data).map_err(DesignerError::Batch)
    }

    fn export_params(&mut self) -> Result<Vec<Vec<NamedTensor>>, DesignerError> {
        let one = |v: f32| NamedTensor {
            name: "w".into(),
            tensor: Tensor::new(vec![1], vec![v]).unwrap(),
        };
        Ok(vec![vec![one(self.w[0])], vec![one(self.w[1])]])
    }

    fn save_state(&mut self) -> Result<Vec<Vec<u8>>, DesignerError> {
        Ok(self.w.iter().map(|w| w.to_le_bytes().to_vec()).collect())
    }

    fn load_state(&mut self, states: &[Vec<u8>]) -> Result<(), DesignerError> {
        for (w, s) in self.w.iter_mut().zip(states) {
            *w = f32::from_le_bytes(s.as_slice().try_into().unwrap());
        }
        Ok(())
    }

    fn repair(&mut self, _: &DesignerError) -> Result<Option<Repair>, DesignerError> {
        self.repairs += 1;
        Ok(self.repairable.then(|| Repair {
            hop: 1,
            role: "layer 1".into(),
            ..Repair::default()
        }))
    }
}

/// Records what the loop told it.
#[derive(Default)]
struct Log {
    steps: Vec<u64>,
    epochs: usize,
    events: Vec<TrainEvent>,
}

impl TrainObserver for Log {
    fn epoch(&mut self, _: &EpochReport) {
        self.epochs += 1;
    }
    fn step(&mut self, step: u64, _: &mut dyn Model) {
        self.steps.push(step);
    }
    fn event(&mut self, e: &TrainEvent) {
        self.events.push(e.clone());
    }
}

fn checkpoint_steps(log: &Log) -> Vec<u64> {
    (log.events.iter())
        .filter_map(|e| match e {
            TrainEvent::Checkpoint { step, .. } => Some(*step),
            _ => None,
        })
        .collect()
}

fn undisturbed() -> TrainReport {
    train_model(
        &mut Fake::default(),
        2,
        &[2, 2],
        &data(),
        &opts(),
        &mut Quiet,
    )
    .unwrap()
}

fn every(k: u64) -> Checkpointing {
    Checkpointing {
        every: k,
        ..Checkpointing::in_memory()
    }
}

#[test]
fn checkpoints_change_nothing_and_come_at_step_zero_every_k_and_each_epoch_end() {
    let want = undisturbed();
    let mut log = Log::default();
    let mut m = Fake::default();
    let r = train_checkpointed(&mut m, 2, &[2, 2], &data(), &opts(), every(3), &mut log).unwrap();
    assert_eq!(r.params_sha256, want.params_sha256);
    assert_eq!(r.train_loss_bits(), want.train_loss_bits());
    // 20 samples in batches of 3: 7 steps per epoch.
    assert_eq!(log.steps, (1..=14).collect::<Vec<_>>());
    assert_eq!(checkpoint_steps(&log), vec![0, 3, 6, 7, 9, 12, 14]);
    let c = r.checkpoints.unwrap();
    assert_eq!((c.count, c.every, c.bytes), (7, 3, 7 * 8));
    assert!(r.repairs.is_empty());
}

#[test]
fn a_repaired_failure_replays_from_the_latest_checkpoint_to_the_same_parameters() {
    let want = undisturbed();
    let mut log = Log::default();
    // Call 5 is step 5 (checkpoint at 3: step 4 replayed); then step n is
    // call n + 2, so call 11 is step 9 (checkpoint at 7, the epoch end:
    // step 8 replayed); then call n + 4, so call 15 is step 11 (checkpoint
    // at 9: 1 replayed); then call n + 6, so call 16 is step 10, right
    // after the checkpoint at 9 (nothing replayed).
    let mut m = Fake {
        fail_at: vec![5, 11, 15, 16],
        repairable: true,
        ..Fake::default()
    };
    let r = train_checkpointed(&mut m, 2, &[2, 2], &data(), &opts(), every(3), &mut log).unwrap();
    assert_eq!(r.params_sha256, want.params_sha256);
    assert_eq!(r.train_loss_bits(), want.train_loss_bits());
    let got: Vec<(u64, u64)> = r
        .repairs
        .iter()
        .map(|r| (r.step, r.steps_replayed))
        .collect();
    assert_eq!(got, vec![(5, 1), (9, 1), (11, 1), (10, 0)]);
    assert_eq!(r.repairs[0].role, "layer 1");
    let repaired = (log.events.iter())
        .filter(|e| matches!(e, TrainEvent::Repaired(_)))
        .count();
    assert_eq!(repaired, 4);
    // Replayed steps are reported again.
    assert_eq!(log.steps.iter().filter(|&&s| s == 4).count(), 2);
}

#[test]
fn an_unrepairable_failure_is_returned_and_the_repairs_are_bounded() {
    let mut m = Fake {
        fail_at: vec![4],
        ..Fake::default()
    };
    let e =
        train_checkpointed(&mut m, 2, &[2, 2], &data(), &opts(), every(3), &mut Quiet).unwrap_err();
    assert!(e.to_string().contains("hop lost at call 4"), "{e}");
    assert_eq!(m.repairs, 1);

    // Without checkpoints nothing can roll back: the model is not asked.
    let mut m = Fake {
        fail_at: vec![4],
        repairable: true,
        ..Fake::default()
    };
    train_model(&mut m, 2, &[2, 2], &data(), &opts(), &mut Quiet).unwrap_err();
    assert_eq!(m.repairs, 0);

    let mut m = Fake {
        fail_at: (2..100).collect(),
        repairable: true,
        ..Fake::default()
    };
    let ck = Checkpointing {
        max_repairs: 2,
        ..every(3)
    };
    let e = train_checkpointed(&mut m, 2, &[2, 2], &data(), &opts(), ck, &mut Quiet).unwrap_err();
    assert!(
        matches!(e, DesignerError::TooManyRepairs { limit: 2, .. }),
        "{e}"
    );
}

#[test]
fn a_job_resumes_from_its_directory_to_the_same_parameters() {
    let want = undisturbed();
    let dir = tempfile::tempdir().unwrap();
    let recipe = JobRecipe::new(&opts(), String::new(), None, 2, None);
    let job = JobDir::create(&dir.path().join("job"), &recipe, b"m").unwrap();
    // The designer dies at step 10 (a failure nobody repairs).
    let mut m = Fake {
        fail_at: vec![10],
        ..Fake::default()
    };
    let ck = Checkpointing::on_disk(job.clone(), 2);
    train_checkpointed(&mut m, 2, &[2, 2], &data(), &opts(), ck, &mut Quiet).unwrap_err();
    assert_eq!(job.checkpoint_steps().unwrap(), vec![6, 7, 8]);

    // A new designer, a new model: resumes from step 8, mid-epoch 2.
    let (cp, warnings) = JobDir::open(job.path()).unwrap().latest_valid().unwrap();
    assert!(warnings.is_empty());
    assert_eq!(
        (cp.position.step, cp.position.epoch, cp.position.batch),
        (8, 2, 1)
    );
    let ck = Checkpointing {
        resume: Some((cp, vec!["an older warning".into()])),
        ..Checkpointing::on_disk(job.clone(), 2)
    };
    let mut log = Log::default();
    let r = train_checkpointed(
        &mut Fake::default(),
        2,
        &[2, 2],
        &data(),
        &opts(),
        ck,
        &mut log,
    )
    .unwrap();
    assert_eq!(r.params_sha256, want.params_sha256);
    assert_eq!(r.train_loss_bits(), want.train_loss_bits());
    assert_eq!(r.epochs.len(), 2);
    assert_eq!(log.steps, (9..=14).collect::<Vec<_>>());
    let c = r.checkpoints.unwrap();
    assert_eq!(c.resumed_from, Some(8));
    assert_eq!(c.fallbacks, vec!["an older warning".to_string()]);
    assert!(matches!(log.events[0], TrainEvent::Fallback(_)));
    assert!(matches!(
        log.events[1],
        TrainEvent::Resumed {
            step: 8,
            epoch: 2,
            batch: 1
        }
    ));
    // Resuming a finished job exports it again.
    let (cp, _) = job.latest_valid().unwrap();
    assert_eq!(cp.position.epoch, 3);
    let ck = Checkpointing {
        resume: Some((cp, Vec::new())),
        ..Checkpointing::on_disk(job, 2)
    };
    let r = train_checkpointed(
        &mut Fake::default(),
        2,
        &[2, 2],
        &data(),
        &opts(),
        ck,
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(r.params_sha256, want.params_sha256);
}

trait LossBits {
    fn train_loss_bits(&self) -> Vec<u64>;
}

impl LossBits for TrainReport {
    fn train_loss_bits(&self) -> Vec<u64> {
        self.epochs.iter().map(|e| e.train_loss.to_bits()).collect()
    }
}
