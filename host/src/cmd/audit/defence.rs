//! The defence under audit (`--defence`, `--sweep`): what it does to the
//! model before the attacks run, and what it costs in test accuracy.
//!
//! - `none`: nothing.
//! - `keep-first:N`: the designer keeps the first N shards of the automatic
//!   plan, so the first pool node sees Z_N: the cut under attack moves
//!   there. The model is unchanged, and so is its accuracy.
//! - a noise defence (`gaussian:σ`, `laplace:b`, `dropout:p`,
//!   `dropout-train:p`): noise on Z_K in training and at inference
//!   (`mixnn_designer::defence`); the attacker receives noisy Z_K.
//!
//! A defence's cost only shows in a model trained with it, and a sweep's
//! levels are only comparable when trained alike, so without `--trained`
//! the audit trains the model from `--model`'s initial weights
//! (`--train-epochs`, Adam 1e-3, batch 64), with the defence in place;
//! `--trained` names a model already trained (with that defence).

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use mixnn_audit::{Observed, SplitAt};
use mixnn_designer::defence::{CutNoise, NoiseKind, NoiseSpec};
use mixnn_designer::{Cascade, EngineKind, TrainObserver, TrainOptions};
use mixnn_layer::{OptimizerKind, TrainConfig};
use mixnn_shard::pb::ModelProto;

/// A defence level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Defence {
    /// Nothing.
    None,
    /// The designer keeps the first N shards.
    KeepFirst(usize),
    /// Noise or dropout on Z_K.
    Noise(NoiseKind),
}

impl FromStr for Defence {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Defence::None);
        }
        if let Some(n) = s.strip_prefix("keep-first:") {
            return match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Defence::KeepFirst(n)),
                _ => Err(format!(
                    "`{s}`: keep-first takes a positive shard count, e.g. keep-first:3"
                )),
            };
        }
        // The noise kinds parse as `--noise-at` does, with the cut given by
        // `--split` rather than in the value.
        NoiseSpec::from_str(&format!("1:{s}"))
            .map(|spec| Defence::Noise(spec.kind))
            .map_err(|_| {
                format!(
                    "`{s}` is not a defence: none, keep-first:N, gaussian:σ, laplace:b, \
                     dropout:p or dropout-train:p"
                )
            })
    }
}

impl fmt::Display for Defence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Defence::None => write!(f, "none"),
            Defence::KeepFirst(n) => write!(f, "keep-first:{n}"),
            Defence::Noise(kind) => {
                // NoiseSpec prints `K:kind:level`; drop the cut.
                let spec = NoiseSpec {
                    after: 1,
                    kind: *kind,
                }
                .to_string();
                write!(f, "{}", spec.split_once(':').map_or(&*spec, |(_, k)| k))
            }
        }
    }
}

impl serde::Serialize for Defence {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Defence {
    /// The cut the attacker sees under this defence: keep-first moves it
    /// after the kept shards; the others leave `--split`.
    pub fn split(&self, split: Option<&SplitAt>) -> Result<SplitAt> {
        match (self, split) {
            (Defence::KeepFirst(n), None) => Ok(SplitAt::Shards(*n)),
            (Defence::KeepFirst(n), Some(s)) if *s == SplitAt::Shards(*n) => Ok(s.clone()),
            (Defence::KeepFirst(n), Some(_)) => bail!(
                "keep-first:{n} places the cut after shard {n} (the first pool node sees Z_{n}); \
                 drop --split or give --split {n}"
            ),
            (_, Some(s)) => Ok(s.clone()),
            (_, None) => bail!("--split is required (a shard count or a node name)"),
        }
    }

    /// The attacker's view of Z_K under a noise defence: the service's
    /// inference noise, from its own seeded stream.
    pub fn observed(&self, seed: u64) -> Option<Observed> {
        let Defence::Noise(kind) = *self else {
            return None;
        };
        let mut noise = CutNoise::new(NoiseSpec { after: 1, kind }, seed ^ 0x0A77_AC4E);
        Some(Box::new(move |z| noise.infer(z)))
    }
}

/// How the audit trains a defended model.
pub struct Training<'a> {
    /// The model (initial weights, or trained ones).
    pub model: &'a ModelProto,
    /// Whether `model` is already trained (with this defence).
    pub trained: bool,
    /// The cut's node label (the model is split there into two shards).
    pub cut_node: &'a str,
    /// Passes over the training set when the audit trains.
    pub epochs: usize,
    /// Seeds the training and the noise.
    pub seed: u64,
}

/// The model the attacks run against, and its test accuracy with the
/// defence in place.
pub struct Defended {
    /// Weights after training (or as given).
    pub model: ModelProto,
    /// Test accuracy with the defence applied at inference, a fraction.
    pub accuracy: f64,
    /// Whether the audit trained it.
    pub trained_here: bool,
}

/// Trains (no `--trained`) or takes the model, and measures
/// its accuracy on the whole test set.
pub fn defend(defence: Defence, t: &Training, data: &mixnn_data::Mnist) -> Result<Defended> {
    let cut = [t.cut_node.to_string()];
    let plan = mixnn_shard::plan(t.model, Some(&cut)).context("splitting at the cut")?;
    let shards = mixnn_shard::split(t.model, &plan).context("splitting at the cut")?;
    let opts = TrainOptions {
        engine: EngineKind::Native,
        epochs: t.epochs,
        batch: 64,
        config: TrainConfig {
            optimizer: OptimizerKind::Adam,
            learning_rate: 1e-3,
            seed: t.seed,
            ..TrainConfig::default()
        },
        train_limit: None,
        test_limit: None,
        eval_batch: 1000,
        model_name: "audit".into(),
    };
    let mut cascade = Cascade::load(EngineKind::Native, &shards, &opts.config, None)?;
    if let Defence::Noise(kind) = defence {
        cascade.set_cut_noise(NoiseSpec { after: 1, kind }, t.seed)?;
    }
    let sample = mixnn_designer::sample_shape(&shards, data)?;
    let train_here = !t.trained && t.epochs > 0;
    if train_here {
        eprintln!(
            "training the model ({defence} at `{}`): {} epochs, Adam 1e-3, batch 64, seed {}",
            t.cut_node, t.epochs, t.seed
        );
        mixnn_designer::train_model(
            &mut cascade,
            shards.len(),
            &sample,
            data,
            &opts,
            &mut Progress,
        )?;
    }
    let accuracy = mixnn_designer::evaluate(&mut cascade, &data.test, &sample, opts.eval_batch)?;
    let model = if train_here {
        mixnn_designer::Model::export_model(&mut cascade, &shards)?
    } else {
        t.model.clone()
    };
    Ok(Defended {
        model,
        accuracy,
        trained_here: train_here,
    })
}

/// One stderr line per training epoch.
struct Progress;

impl TrainObserver for Progress {
    fn epoch(&mut self, e: &mixnn_designer::EpochReport) {
        eprintln!(
            "  epoch {:>2}  loss {:.4}  test accuracy {:.2}%",
            e.epoch,
            e.train_loss,
            e.test_accuracy * 100.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defences_parse_and_print_back() {
        for s in [
            "none",
            "keep-first:3",
            "gaussian:0.5",
            "laplace:0.3",
            "dropout:0.2",
            "dropout-train:0.5",
        ] {
            let d: Defence = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        for bad in ["keep-first:0", "gaussian", "blur:1", "gaussian:-1", ""] {
            assert!(bad.parse::<Defence>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keep_first_moves_the_cut_and_refuses_another() {
        let d = Defence::KeepFirst(3);
        assert_eq!(d.split(None).unwrap(), SplitAt::Shards(3));
        assert!(d.split(Some(&SplitAt::Node("conv1".into()))).is_err());
        assert!(Defence::None.split(None).is_err());
    }
}
