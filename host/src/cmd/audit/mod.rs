//! `mixnn audit`: the leakage audit of a cut (SPEC §9, issue 14). Plays the
//! adversary who holds the shard after the cut and sees Z_K: the black-box
//! inverse network and the white-box rMLE of He et al. (2019), scored by
//! mean PSNR and SSIM over test images; writes a PNG grid of originals
//! beside reconstructions per attack and a JSON report. The attacks live in
//! `mixnn-audit`; this module reads files, picks the data and writes.

mod args;
mod defence;

pub use args::AuditArgs;
use args::{Attack, Aux, DecoderOptimizer, Images, SsimRange};

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use defence::Defence;
use mixnn_audit::{Attempt, InverseNet, InverseNetConfig, RmleConfig, Victim};
use mixnn_shard::pb::ModelProto;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Figures of one attack.
#[derive(Serialize, Debug)]
struct AttackReport {
    attack: Attack,
    mean_psnr_db: f64,
    mean_ssim: f64,
    /// Attacked images with SSIM < 0.3 (unrecognisable, He et al.).
    unrecognisable: usize,
    seconds: f64,
    /// Inverse network only: mean training MSE per epoch (of the decoder
    /// kept).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    epoch_loss: Vec<f64>,
    /// Inverse network only: every training of the decoder, in order, with
    /// its collapse check; more than one means the earlier ones collapsed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tries: Vec<serde_json::Value>,
    /// Inverse network only: set when every try collapsed, with why; the
    /// figures then measure a failed attacker, not a safe cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    collapsed: Option<String>,
    /// The attack's parameters, as run.
    settings: serde_json::Value,
}

#[derive(Serialize, Debug)]
struct Report {
    model: String,
    trained: Option<String>,
    defence: Defence,
    /// Test accuracy (fraction, whole test set) with the defence in place.
    test_accuracy: f64,
    /// Whether the audit trained the defended model itself.
    trained_by_audit: bool,
    cut_node: String,
    z_shape: Vec<usize>,
    attacked_images: usize,
    /// Which test images (`--images`) and SSIM's data range (`--ssim-range`).
    images: Images,
    ssim_range: SsimRange,
    attacks: Vec<AttackReport>,
}

/// The JSON of `--sweep`: one audit per level.
#[derive(Serialize, Debug)]
struct SweepReport {
    levels: Vec<Report>,
}

/// Test images per set half: the attacked images come from the first half,
/// `same-dist` auxiliary data from the second.
const HALF_TEST: usize = 5000;

pub fn run(a: AuditArgs) -> Result<()> {
    if a.images == Images::First && (a.count == 0 || a.count > HALF_TEST) {
        bail!("--count must be in 1..={HALF_TEST} (the first half of the test set)");
    }
    let mnist = mixnn_data::load_mnist(&a.data)
        .with_context(|| format!("loading MNIST from {}", a.data.display()))?;
    if mnist.test.count < 2 * HALF_TEST {
        bail!(
            "the test set has {} images; the audit needs {}",
            mnist.test.count,
            2 * HALF_TEST
        );
    }
    let model = load_model(&a.model, a.trained.as_deref())?;
    if a.sweep.is_empty() {
        let report = audit_one(&a, a.defence, &model, &mnist, None)?;
        return write_report(&a, &report);
    }
    let mut levels = Vec::new();
    for (i, level) in a.sweep.iter().enumerate() {
        eprintln!("== level {}/{}: {level}", i + 1, a.sweep.len());
        let sub = a
            .out
            .as_ref()
            .map(|d| d.join(level.to_string().replace(':', "-")));
        levels.push(audit_one(&a, *level, &model, &mnist, sub.as_deref())?);
    }
    if let Some(dir) = &a.out {
        let path = dir.join("tradeoff.png");
        tradeoff_figure(&path, &levels, a.accuracy_target / 100.0)?;
        eprintln!("wrote {}", path.display());
    }
    write_report(&a, &SweepReport { levels })
}

/// The JSON to `--report`, or stdout.
fn write_report(a: &AuditArgs, report: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    match &a.report {
        Some(p) => {
            std::fs::write(p, json + "\n").with_context(|| format!("writing {}", p.display()))?
        }
        None => println!("{json}"),
    }
    Ok(())
}

/// Accuracy against SSIM, one series point per level and attack.
fn tradeoff_figure(path: &Path, levels: &[Report], target: f64) -> Result<()> {
    let mut points = Vec::new();
    for level in levels {
        for attack in &level.attacks {
            let name = match attack.attack {
                Attack::InverseNet => "inv",
                Attack::Rmle => "rMLE",
            };
            points.push(mixnn_plot::TradeoffPoint {
                label: format!("{} {name}", level.defence),
                ssim: attack.mean_ssim,
                accuracy: level.test_accuracy,
            });
        }
    }
    let cut = levels.first().map_or("", |l| l.cut_node.as_str());
    mixnn_plot::tradeoff(
        path,
        &format!("Defences at `{cut}`: accuracy vs attacker SSIM"),
        &points,
        target,
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// The audit of one defence level: defend, then attack.
fn audit_one(
    a: &AuditArgs,
    level: Defence,
    model: &ModelProto,
    mnist: &mixnn_data::Mnist,
    out: Option<&Path>,
) -> Result<Report> {
    let split = level.split(a.split.as_ref())?;
    let cut = mixnn_audit::cut(model, &split).context("choosing the cut")?;
    eprintln!(
        "cut after `{}`: Z_K of shape {:?} (input {:?}); defence {level}",
        cut.node, cut.z_shape, cut.input_shape
    );
    let training = defence::Training {
        model,
        trained: a.trained.is_some(),
        cut_node: &cut.node,
        epochs: a.train_epochs,
        seed: a.seed,
    };
    let defended = defence::defend(level, &training, mnist)?;
    eprintln!(
        "test accuracy with {level}: {:.2}%",
        defended.accuracy * 100.0
    );
    let cut = if defended.trained_here {
        mixnn_audit::cut(&defended.model, &split).context("cutting the defended model")?
    } else {
        cut
    };
    let (rows, cols) = (mnist.test.rows, mnist.test.cols);
    let mut victim = Victim::new(&cut).context("loading the part before the cut")?;
    if let Some(observed) = level.observed(a.seed) {
        victim.observe_through(observed);
    }
    let per = victim.input_len();
    if rows * cols != per {
        bail!(
            "the data's {rows}x{cols} images do not fit the model input {:?}",
            cut.input_shape
        );
    }
    let attacked = attacked_images(a, &mnist.test, per)?;
    let originals = &attacked[..];
    let count = originals.len() / per;
    let z = victim
        .query(originals)
        .context("querying the part before the cut")?;
    let mut reports = Vec::new();
    for attack in &a.attack {
        let start = Instant::now();
        let outcome = attack_one(a, *attack, &cut, &mut victim, mnist, &z)?;
        let recon = outcome.recon.clone();
        let report = score(
            *attack,
            originals,
            (rows, cols, a.ssim_range),
            start,
            outcome,
        )?;
        eprintln!(
            "{:?}: mean PSNR {:.2} dB, mean SSIM {:.4} ({} of {} images below SSIM 0.3){}",
            attack,
            report.mean_psnr_db,
            report.mean_ssim,
            report.unrecognisable,
            count,
            match (&report.collapsed, report.tries.len()) {
                (Some(why), n) => format!(
                    "\nWARNING: the decoder collapsed in all {n} tries ({why}): \
                     these figures measure a failed attacker, not a safe cut"
                ),
                (None, n) if n > 1 => format!(" [decoder kept from try {n}]"),
                _ => String::new(),
            }
        );
        if let Some(dir) = out.or(a.out.as_deref()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let name = match attack {
                Attack::InverseNet => "inverse-net.png",
                Attack::Rmle => "rmle.png",
            };
            let path = dir.join(name);
            write_grid(&path, originals, &recon, rows, cols)?;
            eprintln!("wrote {}", path.display());
        }
        reports.push(report);
    }
    Ok(Report {
        model: a.model.display().to_string(),
        trained: a.trained.as_ref().map(|p| p.display().to_string()),
        defence: level,
        test_accuracy: defended.accuracy,
        trained_by_audit: defended.trained_here,
        cut_node: cut.node.clone(),
        z_shape: cut.z_shape.clone(),
        attacked_images: count,
        images: a.images,
        ssim_range: a.ssim_range,
        attacks: reports,
    })
}

/// What one attack produced.
struct Outcome {
    recon: Vec<f32>,
    /// Inverse network: the kept decoder's loss per epoch.
    epoch_loss: Vec<f64>,
    /// The settings as run.
    settings: serde_json::Value,
    /// Inverse network: every training and its check.
    tries: Vec<serde_json::Value>,
    /// Inverse network: why the kept decoder is still collapsed.
    collapsed: Option<String>,
}

/// One attack: the reconstructions, the inverse network's loss per epoch
/// and tries, and the settings as run.
fn attack_one(
    a: &AuditArgs,
    attack: Attack,
    cut: &mixnn_audit::Cut,
    victim: &mut Victim,
    mnist: &mixnn_data::Mnist,
    z: &[f32],
) -> Result<Outcome> {
    let per = victim.input_len();
    Ok(match attack {
        Attack::InverseNet => {
            let aux = aux_images(a, mnist, per)?;
            let (shape, output) = a.decoder_spec();
            let cfg = InverseNetConfig {
                epochs: a.epochs,
                batch: a.batch,
                learning_rate: a.lr,
                seed: a.seed,
                tries: a.tries,
                shape,
                output,
                adam_epsilon: a.adam_eps,
                optimizer: match a.decoder_optimizer {
                    DecoderOptimizer::Sgd => mixnn_layer::OptimizerKind::Sgd,
                    _ => mixnn_layer::OptimizerKind::Adam,
                },
                amsgrad: a.decoder_optimizer == DecoderOptimizer::Amsgrad,
                halve_every: a.lr_halve_every,
            };
            eprintln!(
                "inverse network: {} {:?} auxiliary images, {} epochs",
                aux.len() / per,
                a.aux,
                a.epochs
            );
            let mut tried = 0;
            let mut on_try = |t: &Attempt| {
                tried += 1;
                eprintln!("{}", try_line(t, tried, cfg.tries));
            };
            let mut net = InverseNet::train(cut, victim, &aux, &cfg, &mut on_try)
                .context("training the inverse network")?;
            let recon = net.invert(z)?;
            let settings = serde_json::json!({
                "aux": a.aux, "aux_images": aux.len() / per, "epochs": a.epochs,
                "batch": a.batch, "lr": a.lr, "seed": a.seed, "max_tries": a.tries,
                "decoder": a.decoder,
                "decoder_output": format!("{output:?}").to_lowercase(),
                "adam_eps": a.adam_eps, "optimizer": a.decoder_optimizer,
                "lr_halve_every": a.lr_halve_every,
            });
            Outcome {
                recon,
                epoch_loss: net.epoch_loss.clone(),
                settings,
                tries: net.attempts.iter().map(try_json).collect(),
                collapsed: net.collapse().map(|c| c.to_string()),
            }
        }
        Attack::Rmle => {
            let cfg = RmleConfig {
                steps: a.rmle_steps,
                lambda: a.rmle_lambda,
                learning_rate: a.rmle_lr,
                adam_epsilon: a.rmle_adam_eps,
                clamp_each_step: !a.rmle_clip_at_end,
                amsgrad: a.rmle_amsgrad,
                ..RmleConfig::default()
            };
            let recon = mixnn_audit::rmle(victim, z, &cfg).context("rMLE")?;
            let settings = serde_json::json!({
                "steps": cfg.steps, "lambda": cfg.lambda, "lr": cfg.learning_rate,
                "start": cfg.start, "adam_eps": cfg.adam_epsilon,
                "clamp_each_step": cfg.clamp_each_step, "amsgrad": cfg.amsgrad,
            });
            Outcome {
                recon,
                epoch_loss: Vec::new(),
                settings,
                tries: Vec::new(),
                collapsed: None,
            }
        }
    })
}

/// The progress line of one inverse-network training.
fn try_line(t: &Attempt, n: usize, of: usize) -> String {
    let h = &t.health;
    let verdict = match (t.collapse, t.dead_after) {
        (None, _) => "healthy".to_string(),
        (Some(c), dead) => format!(
            "COLLAPSED: {c}{}{}",
            dead.map_or(String::new(), |e| format!(
                "; stopped after epoch {e}, dead"
            )),
            if n < of { "; retrying" } else { "" }
        ),
    };
    format!(
        "inverse network try {n}/{of} (seed {}, lr {}{}): check MSE {:.5} on {} aux images \
         (mean image {:.5}), output spread {:.4}: {verdict}",
        t.seed,
        t.learning_rate,
        if t.alive_start { ", alive start" } else { "" },
        h.mse,
        h.images,
        h.mean_image_mse,
        h.spread
    )
}

/// One inverse-network training in the JSON report.
fn try_json(t: &Attempt) -> serde_json::Value {
    serde_json::json!({
        "seed": t.seed,
        "lr": t.learning_rate,
        "alive_start": t.alive_start,
        "epoch_loss": t.epoch_loss,
        "stopped_dead_after_epoch": t.dead_after,
        "check_images": t.health.images,
        "check_mse": t.health.mse,
        "mean_image_mse": t.health.mean_image_mse,
        "output_spread": t.health.spread,
        "collapsed": t.collapse.map(|c| c.to_string()),
    })
}

/// The model, with the trained weights set into it when given.
fn load_model(model: &Path, trained: Option<&Path>) -> Result<mixnn_shard::pb::ModelProto> {
    let read = |p: &Path| -> Result<mixnn_shard::pb::ModelProto> {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        mixnn_shard::decode(&bytes).with_context(|| format!("decoding {}", p.display()))
    };
    let m = read(model)?;
    match trained {
        None => Ok(m),
        Some(t) => {
            let params = mixnn_shard::get_params(&read(t)?)
                .with_context(|| format!("reading the weights of {}", t.display()))?;
            mixnn_shard::set_params(&m, &params).with_context(|| {
                format!(
                    "{} does not hold weights for {}",
                    t.display(),
                    model.display()
                )
            })
        }
    }
}

/// The test images attacked (module docs of `args`: `--images`), all from
/// the first half of the test set.
fn attacked_images(a: &AuditArgs, test: &mixnn_data::Dataset, per: usize) -> Result<Vec<f32>> {
    Ok(match a.images {
        Images::First => test.images[..a.count * per].to_vec(),
        Images::PerClass => {
            let mut out = Vec::with_capacity(10 * per);
            for class in 0..10u8 {
                let i = test.labels[..HALF_TEST]
                    .iter()
                    .position(|&l| l == class)
                    .with_context(|| format!("no test image of class {class}"))?;
                out.extend_from_slice(&test.images[i * per..(i + 1) * per]);
            }
            out
        }
    })
}

/// The auxiliary images the inverse-network attacker queries.
fn aux_images(a: &AuditArgs, mnist: &mixnn_data::Mnist, per: usize) -> Result<Vec<f32>> {
    if a.aux_count == 0 {
        bail!("--aux-count must be positive");
    }
    Ok(match a.aux {
        Aux::SameSet => {
            let n = a.aux_count.min(mnist.train.count);
            mnist.train.images[..n * per].to_vec()
        }
        Aux::SameDist => {
            let n = a.aux_count.min(mnist.test.count - HALF_TEST);
            mnist.test.images[HALF_TEST * per..(HALF_TEST + n) * per].to_vec()
        }
        Aux::Random => {
            let mut r = ChaCha8Rng::seed_from_u64(a.seed ^ 0x5EED);
            (0..a.aux_count * per)
                .map(|_| r.gen_range(0.0..1.0))
                .collect()
        }
        Aux::Gaussian => {
            let mut r = ChaCha8Rng::seed_from_u64(a.seed ^ 0x5EED);
            let normal = rand_distr::StandardNormal;
            (0..a.aux_count * per)
                .map(|_| 0.5 + 0.5 * r.sample::<f32, _>(normal))
                .collect()
        }
    })
}

fn score(
    attack: Attack,
    originals: &[f32],
    (rows, cols, range): (usize, usize, SsimRange),
    start: Instant,
    outcome: Outcome,
) -> Result<AttackReport> {
    let recon = &outcome.recon;
    let per = rows * cols;
    if recon.len() != originals.len() {
        bail!(
            "{} reconstructed values for {} pixels",
            recon.len(),
            originals.len()
        );
    }
    let (mut psnr, mut ssim, mut bad) = (0.0, 0.0, 0);
    let n = originals.len() / per;
    for (o, r) in originals.chunks_exact(per).zip(recon.chunks_exact(per)) {
        let s = match range {
            SsimRange::One => mixnn_audit::ssim(o, r, rows, cols)?,
            SsimRange::Reconstruction => {
                // A constant reconstruction (a collapsed decoder's black
                // image) has no range: score it on the images' range, 1,
                // rather than stop the audit (scikit-image would divide
                // by zero).
                let dr = mixnn_audit::reconstruction_range(r);
                let dr = if dr > 0.0 { dr } else { 1.0 };
                mixnn_audit::ssim_with_range(o, r, rows, cols, dr)?
            }
        };
        // An exact reconstruction has infinite PSNR: cap it at 100 dB so the
        // mean stays a number.
        psnr += mixnn_audit::psnr(o, r, rows, cols)?.min(100.0);
        ssim += s;
        if s < 0.3 {
            bad += 1;
        }
    }
    Ok(AttackReport {
        attack,
        mean_psnr_db: psnr / n as f64,
        mean_ssim: ssim / n as f64,
        unrecognisable: bad,
        seconds: start.elapsed().as_secs_f64(),
        epoch_loss: outcome.epoch_loss,
        settings: outcome.settings,
        tries: outcome.tries,
        collapsed: outcome.collapsed,
    })
}

/// A PNG of up to 10 columns of pairs: originals on the upper row of each
/// band, their reconstructions below (`mixnn_plot::image_grid`).
fn write_grid(
    path: &Path,
    originals: &[f32],
    recon: &[f32],
    rows: usize,
    cols: usize,
) -> Result<()> {
    const PER_ROW: usize = 10;
    let per = rows * cols;
    let n = (originals.len() / per).min(20);
    let mut grid = Vec::new();
    for start in (0..n).step_by(PER_ROW) {
        let end = (start + PER_ROW).min(n);
        for src in [originals, recon] {
            grid.push(
                (start..end)
                    .map(|i| src[i * per..(i + 1) * per].to_vec())
                    .collect(),
            );
        }
    }
    mixnn_plot::image_grid(path, &grid, cols, rows)
        .with_context(|| format!("writing {}", path.display()))
}
