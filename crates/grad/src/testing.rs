//! Test support: a tiny model builder, a tract runner, and a central
//! finite-difference checker for the gradient graphs.
//!
//! Public (but hidden from the docs) so every crate that adds or uses rules
//! can check them the same way. Not meant for production paths; it panics on
//! nothing but reports every problem as an `Err(String)`.

use tract_onnx::prelude::*;

use crate::pb;
use crate::proto::{self, FloatType};
use crate::{GradOptions, TrainingGraphs, build};

/// INT attribute.
pub fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    proto::attr_int(name, v)
}
/// INTS attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    proto::attr_ints(name, v)
}
/// FLOAT attribute.
pub fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    proto::attr_float(name, v)
}
/// STRING attribute.
pub fn attr_string(name: &str, v: &str) -> pb::AttributeProto {
    proto::attr_string(name, v)
}

/// A DOUBLE value info with a static shape (tests edit it further, e.g. to
/// make a dim symbolic).
pub fn value_info_f64(name: &str, shape: &[usize]) -> pb::ValueInfoProto {
    proto::value_info(name, FloatType::F64.onnx(), shape)
}

/// A deterministic generator (splitmix64), so the checker needs no `rand`
/// dependency in the library.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * u
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// `n` values uniform in `[lo, hi)`.
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// Builds small ONNX models for tests: one or a few nodes, float or double.
#[derive(Debug, Clone)]
pub struct ModelBuilder {
    float: FloatType,
    opset: i64,
    inputs: Vec<pb::ValueInfoProto>,
    inits: Vec<pb::TensorProto>,
    nodes: Vec<pb::NodeProto>,
    outputs: Vec<pb::ValueInfoProto>,
}

impl ModelBuilder {
    /// An empty model of the given float type, opset 13.
    pub fn new(float: FloatType) -> Self {
        ModelBuilder {
            float,
            opset: 13,
            inputs: vec![],
            inits: vec![],
            nodes: vec![],
            outputs: vec![],
        }
    }
    /// Sets the ai.onnx opset.
    pub fn opset(mut self, v: i64) -> Self {
        self.opset = v;
        self
    }
    /// A float graph input (the first one is the data input).
    pub fn input(mut self, name: &str, shape: &[usize]) -> Self {
        self.inputs
            .push(proto::value_info(name, self.float.onnx(), shape));
        self
    }
    /// A float initializer (a parameter when used as a float operand).
    pub fn init(mut self, name: &str, shape: &[usize], values: &[f64]) -> Self {
        self.inits
            .push(proto::float_tensor(name, self.float, values, shape));
        self
    }
    /// An INT64 initializer (shapes, axes).
    pub fn init_i64(mut self, name: &str, shape: &[usize], values: &[i64]) -> Self {
        self.inits.push(proto::i64_tensor(name, values, shape));
        self
    }
    /// A node; its name is its first output's name prefixed with `n_`.
    pub fn node(
        mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> Self {
        let name = format!("n_{}", outputs.first().copied().unwrap_or(op));
        self.nodes
            .push(proto::node(&name, op, inputs, outputs, attrs));
        self
    }
    /// A graph output of the model's float type (shape left to inference).
    pub fn output(mut self, name: &str) -> Self {
        let mut vi = proto::value_info(name, self.float.onnx(), &[]);
        if let Some(pb::type_proto::Value::TensorType(t)) =
            vi.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.shape = None;
        }
        self.outputs.push(vi);
        self
    }
    /// The model.
    pub fn build(self) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            graph: Some(pb::GraphProto {
                name: "test".into(),
                node: self.nodes,
                initializer: self.inits,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A tensor as plain data: shape and values (f64 whatever the float type).
pub type Data = (Vec<usize>, Vec<f64>);

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e:#}")
}

/// A model loaded in tract, optimized for fixed input shapes.
pub struct Runner {
    plan: std::sync::Arc<TypedRunnableModel>,
    float: FloatType,
}

impl Runner {
    /// Loads `model` with concrete input facts: float inputs of `float`
    /// type, except those listed in `int_inputs` (INT64).
    pub fn new(
        model: &pb::ModelProto,
        shapes: &[Vec<usize>],
        float: FloatType,
        int_inputs: &[usize],
    ) -> Result<Runner, String> {
        // Declared intermediate and output shapes may be symbolic ("N");
        // the concrete input facts below must decide.
        let mut m = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .with_ignore_output_shapes(true)
            .model_for_proto_model(model)
            .map_err(err("load"))?;
        let dt = match float {
            FloatType::F32 => DatumType::F32,
            FloatType::F64 => DatumType::F64,
        };
        for (i, s) in shapes.iter().enumerate() {
            let t = if int_inputs.contains(&i) {
                DatumType::I64
            } else {
                dt
            };
            m = m
                .with_input_fact(i, InferenceFact::dt_shape(t, s.clone()))
                .map_err(err("input fact"))?;
        }
        let plan = m
            .into_optimized()
            .map_err(err("optimize"))?
            .into_runnable()
            .map_err(err("plan"))?;
        Ok(Runner { plan, float })
    }

    /// Runs with float inputs (values as f64; INT64 inputs are rounded) and
    /// returns every output as f64.
    pub fn run(&self, inputs: &[Data], int_inputs: &[usize]) -> Result<Vec<Data>, String> {
        let mut tv: TVec<TValue> = tvec![];
        for (i, (s, v)) in inputs.iter().enumerate() {
            let t = if int_inputs.contains(&i) {
                let iv: Vec<i64> = v.iter().map(|&x| x.round() as i64).collect();
                Tensor::from_shape(s, &iv)
            } else {
                match self.float {
                    FloatType::F32 => {
                        Tensor::from_shape(s, &v.iter().map(|&x| x as f32).collect::<Vec<_>>())
                    }
                    FloatType::F64 => Tensor::from_shape(s, v),
                }
            }
            .map_err(err("input tensor"))?;
            tv.push(t.into_tvalue());
        }
        let outs = self.plan.run(tv).map_err(err("run"))?;
        outs.iter()
            .map(|o| {
                let c = o.cast_to::<f64>().map_err(err("cast"))?;
                let view = c.try_as_plain_ram().map_err(err("read"))?;
                let s = view.as_slice::<f64>().map_err(err("read"))?;
                Ok((o.shape().to_vec(), s.to_vec()))
            })
            .collect()
    }
}

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

    // Forward inputs: x, params, masks.
    let model_inits: Vec<pb::TensorProto> = model
        .graph
        .as_ref()
        .map(|g| g.initializer.clone())
        .unwrap_or_default();
    let mut fwd: Vec<Data> = Vec::new();
    let n_x = proto::numel(&input_shape).ok_or("input too large")?;
    fwd.push((
        input_shape.clone(),
        rng.vec(n_x, opts.input_range.0, opts.input_range.1),
    ));
    for p in &g.params {
        let n = proto::numel(&p.shape).ok_or("param too large")?;
        let v = match model_inits.iter().find(|t| t.name == p.name) {
            Some(t) => proto::tensor_f64(t)?,
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

    let shapes: Vec<Vec<usize>> = fwd.iter().map(|d| d.0.clone()).collect();
    let f_run =
        Runner::new(&g.forward, &shapes, float, &[]).map_err(|e| format!("forward graph: {e}"))?;
    let mut b_shapes = shapes.clone();
    b_shapes.push(dz.0.clone());
    let b_run = Runner::new(&g.backward, &b_shapes, float, &[])
        .map_err(|e| format!("backward graph: {e}"))?;

    if g.masks.is_empty() {
        let orig = Runner::new(model, std::slice::from_ref(&input_shape), float, &[])
            .map_err(|e| format!("original model: {e}"))?;
        let want = orig
            .run(&fwd[..1], &[])
            .map_err(|e| format!("original model: {e}"))?;
        let got = f_run
            .run(&fwd, &[])
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
    }

    let mut b_in = fwd.clone();
    b_in.push(dz.clone());
    let grads = b_run
        .run(&b_in, &[])
        .map_err(|e| format!("backward graph: {e}"))?;
    check_training_pair(&g, float, &fwd, &b_in, &grads)?;
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

    let loss = |inputs: &[Data]| -> Result<f64, String> {
        let out = f_run.run(inputs, &[])?;
        Ok(out[0].1.iter().zip(&dz.1).map(|(a, b)| a * b).sum())
    };
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
            let mut plus = fwd.clone();
            plus[ti].1[k] += opts.eps;
            let mut minus = fwd.clone();
            minus[ti].1[k] -= opts.eps;
            let numeric = (loss(&plus)? - loss(&minus)?) / (2.0 * opts.eps);
            let analytic = gv[k];
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
