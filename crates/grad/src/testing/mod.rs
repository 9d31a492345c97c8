//! Test support: a tiny model builder, a tract runner, and a central
//! finite-difference checker for the gradient graphs.
//!
//! Behind the `testing` feature, which only dev-dependencies enable, so
//! every crate that adds or uses rules can check them the same way without
//! this code reaching the library or the guest. Not meant for production paths; it panics on
//! nothing but reports every problem as an `Err(String)`.

use tract_onnx::prelude::*;

use crate::pb;
use crate::proto::{self, FloatType};

mod check;

pub use check::{CheckOptions, CheckReport, check_gradients};
pub use mixnn_onnx::{attr_float, attr_int, attr_ints, attr_string};

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
    /// A Gemm node as PyTorch exports `nn.Linear`: `transB = 1`.
    pub fn linear(self, inputs: &[&str], output: &str) -> Self {
        let attrs = vec![attr_int("transB", 1)];
        self.node("Gemm", inputs, &[output], attrs)
    }
    /// A MaxPool node with the window `kernel` moved by `strides`.
    pub fn max_pool(self, x: &str, y: &str, kernel: &[i64], strides: &[i64]) -> Self {
        let attrs = vec![
            attr_ints("kernel_shape", kernel),
            attr_ints("strides", strides),
        ];
        self.node("MaxPool", &[x], &[y], attrs)
    }
    /// A graph output of the model's float type (shape left to inference).
    pub fn output(mut self, name: &str) -> Self {
        self.outputs
            .push(proto::value_info_unshaped(name, self.float.onnx()));
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
