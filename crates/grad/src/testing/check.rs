//! The central finite-difference checker: [`check_gradients`] compares
//! the backward graph with central differences of the forward graph, and
//! the training pair with the self-contained pair.

use super::{Data, Runner, SplitMix};
use crate::pb;
use crate::proto::{self, FloatType};
use crate::{GradOptions, TrainingGraphs, build};

/// Options of [`check_gradients`].
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Seed of the random inputs, parameters without values, masks and dZ.
    pub seed: u64,
    /// Finite-difference step.
    pub eps: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// At most this many elements of each tensor are perturbed (chosen at
    /// random), to keep big tensors cheap.
    pub max_points: usize,
    /// Also check dX.
    pub need_input_grad: bool,
    /// Input shape; `None` takes the model's declared (static) one.
    pub input_shape: Option<Vec<usize>>,
    /// Range of the random data input.
    pub input_range: (f64, f64),
}

impl Default for CheckOptions {
    /// Defaults for f64 graphs.
    fn default() -> Self {
        CheckOptions {
            seed: 1,
            eps: 1e-6,
            rtol: 1e-5,
            atol: 1e-7,
            max_points: 24,
            need_input_grad: true,
            input_shape: None,
            input_range: (-1.0, 1.0),
        }
    }
}

/// What [`check_gradients`] compared.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Number of gradient elements compared.
    pub checked: usize,
    /// Largest |analytic - numeric|.
    pub max_abs_err: f64,
    /// The training graphs that were checked.
    pub graphs: TrainingGraphs,
}

fn declared_input_shape(model: &pb::ModelProto) -> Result<Vec<usize>, String> {
    let g = model.graph.as_ref().ok_or("no graph")?;
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let i = g
        .input
        .iter()
        .find(|i| !inits.contains(&i.name.as_str()))
        .ok_or("no data input")?;
    let (_, s) = proto::declared_type(i).ok_or("input has no type")?;
    s.and_then(|s| s.into_iter().collect())
        .ok_or_else(|| "input shape is not static".to_string())
}

/// Checks [`build`]'s backward graph against central finite differences of
/// its forward graph, on the scalar `L = sum(forward(x, params, masks) * dZ)`
/// with random `dZ`: for every checked element `v` of x and of each
/// parameter, `dL/dv ~ (L(v+eps) - L(v-eps)) / (2 eps)`. Also checks that the
/// rewritten forward graph computes what the original model computes (when
/// there is no Dropout, whose original form is random).
///
/// Runs in the model's float type; pass f64 models to get tight tolerances.
pub fn check_gradients(model: &pb::ModelProto, opts: &CheckOptions) -> Result<CheckReport, String> {
    let input_shape = match &opts.input_shape {
        Some(s) => s.clone(),
        None => declared_input_shape(model)?,
    };
    let g = build(
        model,
        &GradOptions {
            input_shape: input_shape.clone(),
            need_input_grad: opts.need_input_grad,
        },
    )
    .map_err(|e| e.to_string())?;
    let float = match g
        .forward
        .graph
        .as_ref()
        .and_then(|g| g.input.first())
        .and_then(proto::declared_type)
    {
        Some((code, _)) => FloatType::from_onnx(code).ok_or("forward input is not float")?,
        None => return Err("forward graph has no input".into()),
    };
    let mut rng = SplitMix::new(opts.seed);
    let (fwd, dz) = random_inputs(model, &g, &input_shape, opts, &mut rng)?;

    let shapes: Vec<Vec<usize>> = fwd.iter().map(|d| d.0.clone()).collect();
    let f_run =
        Runner::new(&g.forward, &shapes, float, &[]).map_err(|e| format!("forward graph: {e}"))?;
    let mut b_shapes = shapes.clone();
    b_shapes.push(dz.0.clone());
    let b_run = Runner::new(&g.backward, &b_shapes, float, &[])
        .map_err(|e| format!("backward graph: {e}"))?;

    if g.masks.is_empty() {
        check_rewritten_forward(model, &input_shape, float, &f_run, &fwd, opts)?;
    }

    let mut b_in = fwd.clone();
    b_in.push(dz.clone());
    let grads = b_run
        .run(&b_in, &[])
        .map_err(|e| format!("backward graph: {e}"))?;
    check_training_pair(&g, float, &fwd, &b_in, &grads)?;
    let probe = Probe {
        g: &g,
        f_run: &f_run,
        fwd: &fwd,
        dz: &dz,
        opts,
    };
    probe.compare(&grads, &mut rng)
}

/// The forward inputs (x, params, masks) and dZ, random where the model
/// gives no value, drawn in that order.
fn random_inputs(
    model: &pb::ModelProto,
    g: &TrainingGraphs,
    input_shape: &[usize],
    opts: &CheckOptions,
    rng: &mut SplitMix,
) -> Result<(Vec<Data>, Data), String> {
    let model_inits: Vec<pb::TensorProto> = model
        .graph
        .as_ref()
        .map(|g| g.initializer.clone())
        .unwrap_or_default();
    let mut fwd: Vec<Data> = Vec::new();
    let n_x = proto::numel(input_shape).ok_or("input too large")?;
    fwd.push((
        input_shape.to_vec(),
        rng.vec(n_x, opts.input_range.0, opts.input_range.1),
    ));
    for p in &g.params {
        let n = proto::numel(&p.shape).ok_or("param too large")?;
        let v = match model_inits.iter().find(|t| t.name == p.name) {
            Some(t) => proto::tensor_f64(t).map_err(|e| e.to_string())?,
            None => rng.vec(n, -1.0, 1.0),
        };
        fwd.push((p.shape.clone(), v));
    }
    for m in &g.masks {
        let n = proto::numel(&m.shape).ok_or("mask too large")?;
        let keep = 1.0 - m.ratio as f64;
        let v = (0..n)
            .map(|_| {
                if rng.uniform(0.0, 1.0) < keep {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        fwd.push((m.shape.clone(), v));
    }
    let n_out = proto::numel(&g.output_shape).ok_or("output too large")?;
    let dz: Data = (g.output_shape.clone(), rng.vec(n_out, -1.0, 1.0));
    Ok((fwd, dz))
}

/// The rewritten forward graph computes what the original model computes.
fn check_rewritten_forward(
    model: &pb::ModelProto,
    input_shape: &[usize],
    float: FloatType,
    f_run: &Runner,
    fwd: &[Data],
    opts: &CheckOptions,
) -> Result<(), String> {
    let orig = Runner::new(model, &[input_shape.to_vec()], float, &[])
        .map_err(|e| format!("original model: {e}"))?;
    let want = orig
        .run(&fwd[..1], &[])
        .map_err(|e| format!("original model: {e}"))?;
    let got = f_run
        .run(fwd, &[])
        .map_err(|e| format!("forward graph: {e}"))?;
    let (w, o) = (&want[0], &got[0]);
    if w.0 != o.0 {
        return Err(format!(
            "forward graph output shape {:?} != original {:?}",
            o.0, w.0
        ));
    }
    for (k, (a, b)) in w.1.iter().zip(&o.1).enumerate() {
        if (a - b).abs() > opts.atol + opts.rtol * a.abs().max(b.abs()) {
            return Err(format!(
                "forward graph output [{k}] = {b} but the original model gives {a}"
            ));
        }
    }
    Ok(())
}

/// The forward graph and the point around which it is differentiated.
struct Probe<'a> {
    g: &'a TrainingGraphs,
    f_run: &'a Runner,
    fwd: &'a [Data],
    dz: &'a Data,
    opts: &'a CheckOptions,
}

impl Probe<'_> {
    /// `L = sum(forward(inputs) * dZ)`.
    fn loss(&self, inputs: &[Data]) -> Result<f64, String> {
        let out = self.f_run.run(inputs, &[])?;
        Ok(out[0].1.iter().zip(&self.dz.1).map(|(a, b)| a * b).sum())
    }

    /// Compares the backward graph's outputs `grads` with central
    /// differences of [`Probe::loss`], at up to `max_points` elements of
    /// each checked tensor.
    fn compare(&self, grads: &[Data], rng: &mut SplitMix) -> Result<CheckReport, String> {
        let (g, fwd, opts) = (self.g, self.fwd, self.opts);
        let checked_tensors: Vec<usize> = if opts.need_input_grad {
            (0..=g.params.len()).collect()
        } else {
            (1..=g.params.len()).collect()
        };
        if grads.len() != checked_tensors.len() {
            return Err(format!(
                "backward graph has {} outputs, expected {}",
                grads.len(),
                checked_tensors.len()
            ));
        }
        let mut report = CheckReport {
            checked: 0,
            max_abs_err: 0.0,
            graphs: g.clone(),
        };
        let mut failures = Vec::new();
        for (gi, &ti) in checked_tensors.iter().enumerate() {
            let name = if ti == 0 {
                g.input_name.clone()
            } else {
                g.params[ti - 1].name.clone()
            };
            let (gs, gv) = &grads[gi];
            if *gs != fwd[ti].0 {
                return Err(format!(
                    "gradient of `{name}` has shape {gs:?}, expected {:?}",
                    fwd[ti].0
                ));
            }
            let n = gv.len();
            let points: Vec<usize> = if n <= opts.max_points {
                (0..n).collect()
            } else {
                (0..opts.max_points).map(|_| rng.below(n)).collect()
            };
            for k in points {
                let (numeric, analytic) = (self.numeric(ti, k)?, gv[k]);
                let e = (numeric - analytic).abs();
                report.checked += 1;
                report.max_abs_err = report.max_abs_err.max(e);
                if e > opts.atol + opts.rtol * numeric.abs().max(analytic.abs()) {
                    failures.push(format!(
                        "d/d{name}[{k}]: analytic {analytic:.9e}, numeric {numeric:.9e}"
                    ));
                }
            }
        }
        if !failures.is_empty() {
            return Err(format!(
                "{} gradient mismatches:\n{}",
                failures.len(),
                failures.join("\n")
            ));
        }
        Ok(report)
    }

    /// Central difference of the loss in element `k` of input `ti`.
    fn numeric(&self, ti: usize, k: usize) -> Result<f64, String> {
        let eps = self.opts.eps;
        let mut plus = self.fwd.to_vec();
        plus[ti].1[k] += eps;
        let mut minus = self.fwd.to_vec();
        minus[ti].1[k] -= eps;
        Ok((self.loss(&plus)? - self.loss(&minus)?) / (2.0 * eps))
    }
}

/// The training pair (forward returning its saved activations, backward
/// taking them) must give what the self-contained pair gives: the same
/// output and, up to the rounding of a different fusion, the same gradients.
fn check_training_pair(
    g: &TrainingGraphs,
    float: FloatType,
    fwd: &[Data],
    b_in: &[Data],
    grads: &[Data],
) -> Result<(), String> {
    let shapes: Vec<Vec<usize>> = fwd.iter().map(|d| d.0.clone()).collect();
    let tf = Runner::new(&g.train_forward, &shapes, float, &[])
        .map_err(|e| format!("training forward graph: {e}"))?;
    let saved = tf
        .run(fwd, &[])
        .map_err(|e| format!("training forward graph: {e}"))?;
    if saved.len() != 1 + g.saved.len() {
        return Err(format!(
            "training forward graph has {} outputs, expected {}",
            saved.len(),
            1 + g.saved.len()
        ));
    }
    let mut tb_in = b_in.to_vec();
    tb_in.extend(saved.iter().cloned());
    let ints: Vec<usize> = g
        .saved
        .iter()
        .enumerate()
        .filter(|(_, s)| s.integer)
        .map(|(k, _)| b_in.len() + 1 + k)
        .collect();
    let tb_shapes: Vec<Vec<usize>> = tb_in.iter().map(|d| d.0.clone()).collect();
    let tb = Runner::new(&g.train_backward, &tb_shapes, float, &ints)
        .map_err(|e| format!("training backward graph: {e}"))?;
    let got = tb
        .run(&tb_in, &ints)
        .map_err(|e| format!("training backward graph: {e}"))?;
    let tol = match float {
        FloatType::F64 => 1e-9,
        FloatType::F32 => 1e-4,
    };
    if got.len() != grads.len() {
        return Err(format!(
            "training backward graph has {} outputs, the backward graph {}",
            got.len(),
            grads.len()
        ));
    }
    for (i, (w, o)) in grads.iter().zip(&got).enumerate() {
        if w.0 != o.0 {
            return Err(format!(
                "training backward output {i} has shape {:?}, expected {:?}",
                o.0, w.0
            ));
        }
        for (k, (a, b)) in w.1.iter().zip(&o.1).enumerate() {
            if (a - b).abs() > tol * (1.0 + a.abs().max(b.abs())) {
                return Err(format!(
                    "training backward output {i}[{k}] = {b} but the backward graph gives {a}"
                ));
            }
        }
    }
    Ok(())
}
