//! One training run as a position that moves forward (steps, test passes,
//! checkpoints) and, after a repaired failure, back to the latest
//! checkpoint.

use std::time::Instant;

use mixnn_data::{Dataset, Mnist};
use mixnn_layer::NamedTensor;

use super::{
    Checkpointing, TrainEvent, TrainObserver, TrainOptions, batch_tensor, evaluate, limit,
};
use crate::DesignerError;
use crate::cascade::Model;
use crate::checkpoint::{Checkpoint, Position};
use crate::report::{CheckpointReport, Detection, EpochReport, TrainReport, params_sha256};

/// What was running when a failure came: it decides the step a repair
/// names.
#[derive(Clone, Copy)]
enum Doing {
    Step,
    Other,
}

/// The state of a run.
pub(super) struct Run<'a> {
    opts: &'a TrainOptions,
    sample: &'a [usize],
    shard_count: usize,
    train: Dataset,
    test: Dataset,
    pos: Position,
    epochs: Vec<EpochReport>,
    doing: Doing,
    ck: Option<Checkpointing>,
    /// The latest checkpoint, held in memory (the job directory is the
    /// backup for a designer restart).
    latest: Option<Checkpoint>,
    cost: CheckpointReport,
    repairs: Vec<crate::report::Repair>,
    detections: Vec<Detection>,
    /// The held-out check's last measure.
    held: Option<super::alarm::Measure>,
    /// When this process began the run (for the report's wall time).
    began: Instant,
}

impl<'a> Run<'a> {
    pub(super) fn new(
        shard_count: usize,
        sample: &'a [usize],
        data: &Mnist,
        opts: &'a TrainOptions,
        ck: Option<Checkpointing>,
    ) -> Result<Self, DesignerError> {
        if opts.batch == 0 || opts.eval_batch == 0 {
            return Err(DesignerError::ZeroBatch);
        }
        if ck.as_ref().is_some_and(|c| c.every == 0) {
            return Err(DesignerError::BadCheckpoint(
                "checkpoints every 0 steps".into(),
            ));
        }
        let cost = CheckpointReport {
            every: ck.as_ref().map_or(0, |c| c.every),
            dir: (ck.as_ref())
                .and_then(|c| c.dir.as_ref())
                .map(|d| d.path().display().to_string()),
            ..CheckpointReport::default()
        };
        Ok(Run {
            began: Instant::now(),
            opts,
            sample,
            shard_count,
            train: limit(&data.train, opts.train_limit),
            test: limit(&data.test, opts.test_limit),
            pos: Position::start(),
            epochs: Vec::with_capacity(opts.epochs),
            doing: Doing::Other,
            ck,
            latest: None,
            cost,
            repairs: Vec::new(),
            detections: Vec::new(),
            held: None,
        })
    }

    /// Runs the job to its end: resumes or takes the step-0 checkpoint,
    /// then trains, tests and exports, recovering from failures.
    pub(super) fn train(
        mut self,
        model: &mut dyn Model,
        obs: &mut dyn TrainObserver,
    ) -> Result<TrainReport, DesignerError> {
        let resume = self.ck.as_mut().and_then(|c| c.resume.take());
        match resume {
            Some((cp, warnings)) => self.resume(model, cp, warnings, obs)?,
            None if self.ck.is_some() => self.checkpoint(model, obs)?,
            None => {}
        }
        let (accuracy, params) = loop {
            match self.epochs_then_export(model, obs) {
                Ok(done) => break done,
                Err(e) => self.recover(model, e, obs)?,
            }
        };
        Ok(self.report(accuracy, &params))
    }

    fn epochs_then_export(
        &mut self,
        model: &mut dyn Model,
        obs: &mut dyn TrainObserver,
    ) -> Result<(f64, Vec<Vec<NamedTensor>>), DesignerError> {
        while self.pos.epoch <= self.opts.epochs && obs.keep_going() {
            self.epoch(model, obs)?;
        }
        self.doing = Doing::Other;
        let accuracy = match self.epochs.last() {
            Some(e) => e.test_accuracy,
            None => evaluate(model, &self.test, self.sample, self.opts.eval_batch)?,
        };
        Ok((accuracy, model.export_params()?))
    }

    /// The rest of the current epoch from its position: its steps (with
    /// checkpoints every K), its test pass, the epoch-end checkpoint.
    fn epoch(
        &mut self,
        model: &mut dyn Model,
        obs: &mut dyn TrainObserver,
    ) -> Result<(), DesignerError> {
        let epoch = self.pos.epoch;
        let order = self.train.epoch_order(self.opts.config.seed, epoch);
        let chunks: Vec<&[usize]> = order.chunks(self.opts.batch).collect();
        let n = chunks.len();
        let rest = chunks.get(self.pos.batch..).ok_or_else(|| {
            DesignerError::BadCheckpoint(format!(
                "batch {} of epoch {epoch}, which has {n}",
                self.pos.batch
            ))
        })?;
        let mut clock = Instant::now();
        for idx in rest {
            let (x, labels) = batch_tensor(&self.train, idx, self.sample)?;
            self.doing = Doing::Step;
            let loss = model.train_batch(x, &labels)?;
            self.doing = Doing::Other;
            self.take_detections(model, obs);
            self.pos.loss_sum += f64::from(loss);
            self.pos.batch += 1;
            self.pos.step += 1;
            obs.step(self.pos.step, model);
            obs.progress(&crate::train::StepProgress {
                step: self.pos.step,
                epoch,
                batch: self.pos.batch,
                batches: n,
                loss,
            });
            let due = self
                .ck
                .as_ref()
                .is_some_and(|c| self.pos.step.is_multiple_of(c.every));
            // The last batch's checkpoint is the epoch end's, after the test.
            if due && self.pos.batch < n {
                self.pos.epoch_seconds += clock.elapsed().as_secs_f64();
                self.checkpoint(model, obs)?;
                clock = Instant::now();
            }
        }
        self.pos.epoch_seconds += clock.elapsed().as_secs_f64();
        let t = Instant::now();
        let test_accuracy = evaluate(model, &self.test, self.sample, self.opts.eval_batch)?;
        let report = EpochReport {
            epoch,
            train_loss: self.pos.loss_sum / self.pos.batch.max(1) as f64,
            test_accuracy,
            seconds: self.pos.epoch_seconds,
            test_seconds: t.elapsed().as_secs_f64(),
        };
        obs.epoch(&report);
        self.epochs.push(report);
        self.pos = Position {
            epoch: epoch + 1,
            step: self.pos.step,
            ..Position::default()
        };
        if self.ck.is_some() {
            self.checkpoint(model, obs)?;
        }
        Ok(())
    }

    /// Takes a checkpoint at the current position: every layer's state,
    /// written to the job directory if there is one, kept in memory.
    fn checkpoint(
        &mut self,
        model: &mut dyn Model,
        obs: &mut dyn TrainObserver,
    ) -> Result<(), DesignerError> {
        self.held_out(model, obs)?;
        let start = Instant::now();
        let states = model.save_state()?;
        if states.len() != self.shard_count {
            return Err(DesignerError::ShardCount {
                shards: self.shard_count,
                layers: states.len(),
            });
        }
        let cp = Checkpoint {
            position: self.pos.clone(),
            epochs: self.epochs.clone(),
            states,
        };
        let dir = self.ck.as_ref().and_then(|c| c.dir.as_ref());
        let bytes = match dir {
            Some(dir) => dir.write_checkpoint(&cp)?,
            None => cp.state_bytes(),
        };
        let seconds = start.elapsed().as_secs_f64();
        self.cost.count += 1;
        self.cost.seconds += seconds;
        self.cost.bytes += bytes;
        obs.event(&TrainEvent::Checkpoint {
            step: cp.position.step,
            epoch: cp.position.epoch,
            batch: cp.position.batch,
            bytes,
            seconds,
        });
        self.latest = Some(cp);
        Ok(())
    }

    /// Continues from `cp` (`--resume`): every layer gets its state back.
    fn resume(
        &mut self,
        model: &mut dyn Model,
        cp: Checkpoint,
        warnings: Vec<String>,
        obs: &mut dyn TrainObserver,
    ) -> Result<(), DesignerError> {
        for w in warnings {
            obs.event(&TrainEvent::Fallback(w.clone()));
            self.cost.fallbacks.push(w);
        }
        let p = &cp.position;
        if cp.states.len() != self.shard_count {
            return Err(DesignerError::ShardCount {
                shards: self.shard_count,
                layers: cp.states.len(),
            });
        }
        if p.epoch == 0 || p.epoch > self.opts.epochs + 1 || cp.epochs.len() + 1 != p.epoch {
            return Err(DesignerError::BadCheckpoint(format!(
                "epoch {} with {} finished epochs, of a job of {}",
                p.epoch,
                cp.epochs.len(),
                self.opts.epochs
            )));
        }
        model.load_state(&cp.states)?;
        model.rolled_back(p.step);
        self.pos = p.clone();
        self.epochs = cp.epochs.clone();
        self.cost.resumed_from = Some(p.step);
        obs.event(&TrainEvent::Resumed {
            step: p.step,
            epoch: p.epoch,
            batch: p.batch,
        });
        self.latest = Some(cp);
        Ok(())
    }

    /// After `failure`: the model repairs what failed (or the failure is
    /// returned), every layer goes back to the latest checkpoint, and the
    /// position with it.
    fn recover(
        &mut self,
        model: &mut dyn Model,
        failure: DesignerError,
        obs: &mut dyn TrainObserver,
    ) -> Result<(), DesignerError> {
        let (Some(ck), Some(cp)) = (self.ck.as_ref(), self.latest.as_ref()) else {
            return Err(failure);
        };
        if self.repairs.len() >= ck.max_repairs {
            return Err(DesignerError::TooManyRepairs {
                limit: ck.max_repairs,
                last: Box::new(failure),
            });
        }
        let Some(mut repair) = model.repair(&failure)? else {
            return Err(failure);
        };
        model.load_state(&cp.states)?;
        model.rolled_back(cp.position.step);
        repair.step = match self.doing {
            Doing::Step => self.pos.step + 1,
            Doing::Other => self.pos.step,
        };
        repair.steps_replayed = self.pos.step.saturating_sub(cp.position.step);
        self.pos = cp.position.clone();
        self.epochs = cp.epochs.clone();
        self.doing = Doing::Other;
        obs.event(&TrainEvent::Repaired(repair.clone()));
        self.repairs.push(repair);
        self.take_detections(model, obs);
        self.held = None;
        Ok(())
    }

    /// Reports the lies the model found.
    fn take_detections(&mut self, model: &mut dyn Model, obs: &mut dyn TrainObserver) {
        for d in model.take_detections() {
            self.detect(d, obs);
        }
    }

    fn detect(&mut self, d: Detection, obs: &mut dyn TrainObserver) {
        tracing::warn!(step = d.step, hop = ?d.hop.map(|h| h + 1), how = %d.how, "lie detected");
        obs.event(&TrainEvent::Detected(d.clone()));
        self.detections.push(d);
    }

    /// The held-out check (see `alarm.rs`), when configured.
    fn held_out(
        &mut self,
        model: &mut dyn Model,
        obs: &mut dyn TrainObserver,
    ) -> Result<(), DesignerError> {
        let Some(h) = self.ck.as_ref().and_then(|c| c.held_out.clone()) else {
            return Ok(());
        };
        if self.test.count == 0 || h.samples == 0 {
            return Ok(());
        }
        let now = h.measure(model, &self.test, self.sample, self.opts.eval_batch)?;
        if let Some(d) = self
            .held
            .and_then(|before| h.judge(self.pos.step, before, now))
        {
            self.detect(d, obs);
        }
        self.held = Some(now);
        Ok(())
    }

    fn report(self, final_test_accuracy: f64, params: &[Vec<NamedTensor>]) -> TrainReport {
        let opts = self.opts;
        TrainReport {
            engine: opts.engine.to_string(),
            model: opts.model_name.clone(),
            shards: self.shard_count,
            optimizer: opts.config.optimizer.as_str().into(),
            learning_rate: opts.config.learning_rate,
            momentum: opts.config.momentum,
            batch: opts.batch,
            seed: opts.config.seed,
            train_samples: self.train.count,
            test_samples: self.test.count,
            train_seconds: self.epochs.iter().map(|e| e.seconds).sum(),
            wall_seconds: self.began.elapsed().as_secs_f64(),
            epochs: self.epochs,
            final_test_accuracy,
            params_sha256: params_sha256(params),
            network: None,
            network_b: None,
            repairs: self.repairs,
            checkpoints: self.ck.is_some().then_some(self.cost),
            detections: self.detections,
            fork: None,
        }
    }
}
