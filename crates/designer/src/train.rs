//! The training loop (`mixnn train`), the same wherever the layers run:
//! seeded shuffling, the paper's batching (last partial batch kept), a test
//! pass per epoch; with [`Checkpointing`], a checkpoint every K steps and at
//! each epoch end, and on a failure a repair by the model and a replay from
//! the latest checkpoint (issue 11). The data order is a pure function of
//! the seed and the epoch, so a replay from batch b of epoch e is exact.

use mixnn_data::{Dataset, Mnist};
use mixnn_grad::pb;
use mixnn_layer::{Tensor, TrainConfig};
use mixnn_sandbox::Sandbox;

use crate::DesignerError;
use crate::backend::EngineKind;
use crate::cascade::{Cascade, Model};
use crate::checkpoint::{Checkpoint, DEFAULT_CHECKPOINT_EVERY, JobDir};
use crate::report::{Detection, EpochReport, Repair, TrainReport};

mod alarm;
mod run;
#[cfg(test)]
mod tests;
pub use alarm::HeldOut;
/// Settings of a training run.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Engine the layers run on.
    pub engine: EngineKind,
    /// Passes over the training data.
    pub epochs: usize,
    /// Training batch size (the last partial batch is kept).
    pub batch: usize,
    /// The layers' training config (optimizer, learning rate, seed, …).
    pub config: TrainConfig,
    /// Use only the first N training samples (CI, quick runs).
    pub train_limit: Option<usize>,
    /// Use only the first N test samples.
    pub test_limit: Option<usize>,
    /// Batch size of the test pass (a larger batch is faster; results are per sample).
    pub eval_batch: usize,
    /// A label for the report (e.g. the model file).
    pub model_name: String,
}

/// Repairs a job may make before it gives up: a pool that loses more
/// nodes than this in one job has a problem a replay will not fix.
pub const DEFAULT_MAX_REPAIRS: usize = 8;

/// How a job checkpoints, and so how it can be repaired and resumed.
#[derive(Debug)]
pub struct Checkpointing {
    /// Where checkpoints are written; `None`: held in memory only (a repair
    /// can still roll back; a dead designer cannot resume).
    pub dir: Option<JobDir>,
    /// Steps between checkpoints; there is also one at step 0 and one at
    /// each epoch end.
    pub every: u64,
    /// Repairs allowed over the job.
    pub max_repairs: usize,
    /// Start from this checkpoint instead of the beginning (`--resume`),
    /// with the warnings [`JobDir::latest_valid`] gave about newer ones.
    pub resume: Option<(Checkpoint, Vec<String>)>,
    /// The held-out check at every checkpoint (`None`: off).
    pub held_out: Option<HeldOut>,
}

impl Checkpointing {
    /// Checkpoints in memory only, every [`DEFAULT_CHECKPOINT_EVERY`] steps.
    pub fn in_memory() -> Self {
        Checkpointing {
            dir: None,
            every: DEFAULT_CHECKPOINT_EVERY,
            max_repairs: DEFAULT_MAX_REPAIRS,
            resume: None,
            held_out: None,
        }
    }

    /// Checkpoints written to `dir` every `every` steps.
    pub fn on_disk(dir: JobDir, every: u64) -> Self {
        Checkpointing {
            dir: Some(dir),
            every,
            ..Checkpointing::in_memory()
        }
    }
}

/// Something the training loop reports as it happens, besides epochs.
#[derive(Clone, Debug)]
pub enum TrainEvent {
    /// A checkpoint was taken.
    Checkpoint {
        /// Steps trained when it was taken.
        step: u64,
        /// Its epoch (`epochs + 1` after the last).
        epoch: usize,
        /// Batches of that epoch trained.
        batch: usize,
        /// Bytes written (or held, in memory).
        bytes: u64,
        /// Time it took, in seconds.
        seconds: f64,
    },
    /// A checkpoint was refused and an older one used (torn or corrupted);
    /// the text says which and why.
    Fallback(String),
    /// The job continued from a checkpoint (`--resume`).
    Resumed {
        /// The checkpoint's step.
        step: u64,
        /// Its epoch.
        epoch: usize,
        /// Batches of that epoch it had trained.
        batch: usize,
    },
    /// A failure was repaired and the job rolled back to its latest
    /// checkpoint.
    Repaired(Repair),
    /// A lie was found (replicas, held-out alarm).
    Detected(Detection),
}

/// Where a training run stands after a step.
#[derive(Clone, Copy, Debug)]
pub struct StepProgress {
    /// The step, counted from 1 over the whole job.
    pub step: u64,
    /// The epoch, from 1.
    pub epoch: usize,
    /// Batches of this epoch done.
    pub batch: usize,
    /// Batches in this epoch.
    pub batches: usize,
    /// The step's training loss.
    pub loss: f32,
}

/// Watches a training run: the CLI prints, the demo acts at a step (kills
/// the node of a hop). Every method has an empty default.
pub trait TrainObserver {
    /// After each epoch's test pass (an epoch replayed after a repair is
    /// reported again).
    fn epoch(&mut self, report: &EpochReport) {
        let _ = report;
    }
    /// After each training step, `step` counted from 1 over the whole job.
    /// Replayed steps are reported again: an observer that acts once must
    /// remember it did.
    fn step(&mut self, step: u64, model: &mut dyn Model) {
        let _ = (step, model);
    }
    /// Checkpoints, fallbacks, resumes, repairs.
    fn event(&mut self, event: &TrainEvent) {
        let _ = event;
    }
    /// After each training step, where it stands: for progress displays.
    fn progress(&mut self, p: &StepProgress) {
        let _ = p;
    }
    /// Asked before each epoch: `false` ends training there (e.g. once a
    /// target accuracy is reached); the report then has the epochs run.
    fn keep_going(&self) -> bool {
        true
    }
}

/// An observer that watches nothing.
pub struct Quiet;

impl TrainObserver for Quiet {}

impl<F: FnMut(&EpochReport)> TrainObserver for F {
    fn epoch(&mut self, report: &EpochReport) {
        self(report)
    }
}

/// Trains `shards` on `data`, telling `observer` as it goes. Returns the
/// report and the trained cascade (for export).
pub fn train_local(
    shards: &[pb::ModelProto],
    data: &Mnist,
    opts: &TrainOptions,
    sandbox: Option<&Sandbox>,
    observer: &mut dyn TrainObserver,
) -> Result<(TrainReport, Cascade), DesignerError> {
    let sample = sample_shape(shards, data)?;
    let mut cascade = Cascade::load(opts.engine, shards, &opts.config, sandbox)?;
    let report = train_model(&mut cascade, shards.len(), &sample, data, opts, observer)?;
    Ok((report, cascade))
}
/// The shape of one sample as the first shard takes it, checked against
/// the data's images.
pub fn sample_shape(shards: &[pb::ModelProto], data: &Mnist) -> Result<Vec<usize>, DesignerError> {
    let first = shards.first().ok_or(DesignerError::NoShards)?;
    let sample: Vec<usize> = mixnn_layer::declared_input_shape(first)
        .map_err(|source| DesignerError::Layer { index: 0, source })?[1..]
        .to_vec();
    let t = &data.train;
    if sample.iter().product::<usize>() != t.rows * t.cols {
        return Err(DesignerError::SampleShape {
            sample,
            rows: t.rows,
            cols: t.cols,
        });
    }
    Ok(sample)
}

/// The training loop over any [`Model`]: the same data order, batching and
/// test pass wherever the layers run, so runs are comparable bit for bit.
/// No checkpoints, so a failure ends the run.
pub fn train_model(
    model: &mut dyn Model,
    shard_count: usize,
    sample: &[usize],
    data: &Mnist,
    opts: &TrainOptions,
    observer: &mut dyn TrainObserver,
) -> Result<TrainReport, DesignerError> {
    run::Run::new(shard_count, sample, data, opts, None)?.train(model, observer)
}

/// [`train_model`] with checkpoints: one at step 0 (or the resumed one),
/// every `ck.every` steps and at each epoch end, written to the job
/// directory if there is one and always held in memory. When a step, a
/// test, a checkpoint or the export fails, the model is asked to
/// [`Model::repair`]; if it does, every layer is put back to the latest
/// checkpoint and the data order replayed from there. Same parameters, to
/// the bit, as a run without failures.
pub fn train_checkpointed(
    model: &mut dyn Model,
    shard_count: usize,
    sample: &[usize],
    data: &Mnist,
    opts: &TrainOptions,
    ck: Checkpointing,
    observer: &mut dyn TrainObserver,
) -> Result<TrainReport, DesignerError> {
    run::Run::new(shard_count, sample, data, opts, Some(ck))?.train(model, observer)
}

pub(crate) fn limit(d: &Dataset, n: Option<usize>) -> Dataset {
    match n {
        Some(n) if n < d.count => d.subset(n),
        _ => d.clone(),
    }
}

pub(crate) fn batch_tensor(
    d: &Dataset,
    idx: &[usize],
    sample: &[usize],
) -> Result<(Tensor, Vec<i64>), DesignerError> {
    let (x, labels) = d.batch(idx);
    let mut shape = vec![idx.len()];
    shape.extend_from_slice(sample);
    let x = Tensor::new(shape, x).map_err(DesignerError::Batch)?;
    Ok((x, labels))
}

/// Test accuracy of the cascade on `test` (argmax of each output row).
pub fn evaluate(
    cascade: &mut dyn Model,
    test: &Dataset,
    sample: &[usize],
    eval_batch: usize,
) -> Result<f64, DesignerError> {
    let mut correct = 0usize;
    infer_dataset(cascade, test, sample, eval_batch, &mut |_, labels, out| {
        let classes = out.shape.get(1).copied().unwrap_or(0);
        for (row, &label) in out.data.chunks(classes).zip(labels) {
            if argmax(row) == label as usize {
                correct += 1;
            }
        }
        Ok(())
    })?;
    Ok(correct as f64 / test.count.max(1) as f64)
}

/// What [`infer_dataset`] hands each batch to: its index, labels, output.
pub type BatchSink<'a> = dyn FnMut(usize, &[i64], &Tensor) -> Result<(), DesignerError> + 'a;

/// Runs `test` through `model`'s test phase ([`Model::infer_stream`]:
/// pipelined on the pool) in batches of `eval_batch`, in order, and hands
/// `done` each batch's index, labels and output, checked to hold one row
/// per sample. Outputs may come out of order; each is matched to its batch
/// by index, so what `done` computes is the sequential test phase's.
pub fn infer_dataset(
    model: &mut dyn Model,
    test: &Dataset,
    sample: &[usize],
    eval_batch: usize,
    done: &mut BatchSink<'_>,
) -> Result<(), DesignerError> {
    let order: Vec<usize> = (0..test.count).collect();
    let chunks: Vec<&[usize]> = order.chunks(eval_batch.max(1)).collect();
    let mut batches = chunks
        .iter()
        .map(|idx| batch_tensor(test, idx, sample).map(|(x, _)| x));
    model.infer_stream(&mut batches, &mut |i, out| {
        let idx = chunks.get(i).ok_or(DesignerError::UnknownBatch(i))?;
        let classes = out.shape.get(1).copied().unwrap_or(0);
        if classes == 0 || out.data.len() != idx.len() * classes {
            return Err(DesignerError::OutputShape(out.shape));
        }
        let labels: Vec<i64> = idx.iter().map(|&j| i64::from(test.labels[j])).collect();
        done(i, &labels, &out)
    })
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
