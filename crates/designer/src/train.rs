//! The local training loop (`mixnn train --local`): seeded shuffling, the
//! paper's batching (last partial batch kept), a test pass per epoch.

use std::time::Instant;

use mixnn_data::{Dataset, Mnist};
use mixnn_grad::pb;
use mixnn_layer::{Tensor, TrainConfig};
use mixnn_sandbox::Sandbox;

use crate::DesignerError;
use crate::backend::EngineKind;
use crate::cascade::{Cascade, Model};
use crate::report::{EpochReport, TrainReport, params_sha256};

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

/// Trains `shards` on `data`; calls `progress` after each epoch. Returns the
/// report and the trained cascade (for export).
pub fn train_local(
    shards: &[pb::ModelProto],
    data: &Mnist,
    opts: &TrainOptions,
    sandbox: Option<&Sandbox>,
    progress: &mut dyn FnMut(&EpochReport),
) -> Result<(TrainReport, Cascade), DesignerError> {
    let sample = sample_shape(shards, data)?;
    let mut cascade = Cascade::load(opts.engine, shards, &opts.config, sandbox)?;
    let report = train_model(&mut cascade, shards.len(), &sample, data, opts, progress)?;
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
pub fn train_model(
    cascade: &mut dyn Model,
    shard_count: usize,
    sample: &[usize],
    data: &Mnist,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(&EpochReport),
) -> Result<TrainReport, DesignerError> {
    if opts.batch == 0 || opts.eval_batch == 0 {
        return Err(DesignerError::ZeroBatch);
    }
    let train = limit(&data.train, opts.train_limit);
    let test = limit(&data.test, opts.test_limit);
    let mut epochs = Vec::with_capacity(opts.epochs);
    let mut train_seconds = 0.0;
    for epoch in 1..=opts.epochs {
        let start = Instant::now();
        let order = train.epoch_order(opts.config.seed, epoch);
        let (mut loss_sum, mut batches) = (0.0f64, 0usize);
        for idx in order.chunks(opts.batch) {
            let (x, labels) = batch_tensor(&train, idx, sample)?;
            loss_sum += f64::from(cascade.train_batch(x, &labels)?);
            batches += 1;
        }
        let seconds = start.elapsed().as_secs_f64();
        train_seconds += seconds;
        let t = Instant::now();
        let test_accuracy = evaluate(cascade, &test, sample, opts.eval_batch)?;
        let report = EpochReport {
            epoch,
            train_loss: loss_sum / batches.max(1) as f64,
            test_accuracy,
            seconds,
            test_seconds: t.elapsed().as_secs_f64(),
        };
        progress(&report);
        epochs.push(report);
    }
    let final_test_accuracy = match epochs.last() {
        Some(e) => e.test_accuracy,
        None => evaluate(cascade, &test, sample, opts.eval_batch)?,
    };
    let params = cascade.export_params()?;
    let report = TrainReport {
        engine: opts.engine.to_string(),
        model: opts.model_name.clone(),
        shards: shard_count,
        optimizer: opts.config.optimizer.as_str().into(),
        learning_rate: opts.config.learning_rate,
        momentum: opts.config.momentum,
        batch: opts.batch,
        seed: opts.config.seed,
        train_samples: train.count,
        test_samples: test.count,
        epochs,
        final_test_accuracy,
        train_seconds,
        params_sha256: params_sha256(&params),
        network: None,
        repairs: Vec::new(),
    };
    Ok(report)
}

fn limit(d: &Dataset, n: Option<usize>) -> Dataset {
    match n {
        Some(n) if n < d.count => d.subset(n),
        _ => d.clone(),
    }
}

fn batch_tensor(
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
    let order: Vec<usize> = (0..test.count).collect();
    let mut correct = 0usize;
    for idx in order.chunks(eval_batch) {
        let (x, labels) = batch_tensor(test, idx, sample)?;
        let out = cascade.infer(x)?;
        let classes = out.shape.get(1).copied().unwrap_or(0);
        if classes == 0 || out.data.len() != idx.len() * classes {
            return Err(DesignerError::OutputShape(out.shape));
        }
        for (row, &label) in out.data.chunks(classes).zip(&labels) {
            if argmax(row) == label as usize {
                correct += 1;
            }
        }
    }
    Ok(correct as f64 / test.count.max(1) as f64)
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
