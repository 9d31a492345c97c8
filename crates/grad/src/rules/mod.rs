//! Gradient rules, one per ONNX op, and the context they build with.
//!
//! A rule has the signature of [`RuleFn`]: it gets the forward node and the
//! gradient of each of its outputs (`None` = no gradient flows into that
//! output), emits backward nodes through [`Ctx`], and returns one entry per
//! node input: the name of the tensor holding d(loss)/d(input), or `None`
//! where the input needs no gradient (check [`Ctx::requires_grad`]) or is not
//! differentiable (shapes, axes, ...). The backward graph contains every
//! forward node under its own output names, so a rule may use the forward
//! node's inputs and outputs (`node.input[i]`, `node.output[0]`) directly.
//! If several rules (or several inputs of one node) produce a gradient for the
//! same tensor, the driver sums them: rules never accumulate.
//!
//! # `Ctx` methods
//! Facts about the forward graph:
//! - `shape(name) -> Result<Vec<usize>>`: static shape of a forward tensor.
//! - `rank(name) -> Result<usize>`.
//! - `float_type() -> FloatType`, `float_code() -> i32`: the graph's float type
//!   (f32 or f64); every float constant must follow it (the `const_*` helpers do).
//! - `opset() -> i64`: the ai.onnx opset of the emitted graphs (>= 13).
//! - `requires_grad(name) -> bool`: whether a gradient for this tensor is wanted.
//! - `const_i64_of(name)`, `const_f64_of(name) -> Option<Vec<..>>`: value of a
//!   forward tensor when it is an initializer or a Constant node's output.
//!
//! Emitting (all names are fresh and unique; `fresh(hint)` gives one for
//! your own use, `take_name(name)` reserves a chosen one):
//! - `emit(op, inputs, attrs) -> String`: one node, one output.
//! - `emit_n(op, inputs, n_outputs, attrs) -> Vec<String>`.
//!   Pass `""` in `inputs` for an omitted optional input.
//! - `const_i64(values, shape)`, `const_scalar(f64)` (shape `[]`),
//!   `const_tensor(values: &[f64], shape)`, `zeros(shape)`.
//! - Shorthands: `reshape(x, shape)`, `transpose(x, perm)`, `mul`, `add`,
//!   `sub`, `neg`, `scale(x, f64)` (skips the node when the factor is 1),
//!   `reduce_sum(x, axes, keepdims)`, `sum(names)` (adds n tensors).
//! - `unbroadcast(grad, grad_shape, target_shape) -> Result<String>`: reduces
//!   a gradient of a broadcast result back to an operand's shape
//!   (ReduceSum over the broadcast axes, then Reshape).
//!
//! Attributes of the forward node (defaults when absent):
//! `attr_int(node, name, default)`, `attr_ints(node, name) -> Option<Vec<i64>>`,
//! `attr_float(node, name, default)`, `attr_string(node, name, default)`.
//! To build attributes for emitted nodes use [`a_int`], [`a_ints`],
//! [`a_float`], [`a_string`].
//!
//! Free helpers: `with_dy` and `unary` (the frames most rules share),
//! `first_grad(gy)` (gradient of output 0, if any),
//! `input(ctx, node, i)` / `output(ctx, node, i)` (name, or an error naming
//! the node when absent).
//!
//! Errors: `ctx.node_error(node, reason)` (a [`GradError::Node`] naming the
//! node and op) and `unsupported(node)` ([`GradError::UnsupportedOp`]).

use std::collections::HashSet;

use crate::GradError;
use crate::graph::Analysis;
use crate::pb;
use crate::proto::{self, FloatType};

pub(crate) mod activation;
pub(crate) mod conv;
pub(crate) mod deconv;
pub(crate) mod dense;
pub(crate) mod elementwise;
pub(crate) mod pool;
pub(crate) mod shape;

/// What a rule returns: one entry per node input (see the module docs).
pub(crate) type Grads = Result<Vec<Option<String>>, GradError>;

/// Signature of a gradient rule (see the module docs).
pub(crate) type RuleFn = fn(&mut Ctx, &pb::NodeProto, &[Option<String>]) -> Grads;

/// The rule for an op type, `None` when the op has no gradient rule.
///
/// Dropout has no rule here on purpose: the builder rewrites it into
/// `x * mask * 1/(1-ratio)` before differentiation, so Mul's rule covers it.
pub(crate) fn rule_for(op_type: &str) -> Option<RuleFn> {
    Some(match op_type {
        "Conv" => conv::conv,
        "ConvTranspose" => deconv::conv_transpose,
        "MaxPool" => pool::max_pool,
        "AveragePool" => pool::average_pool,
        "Gemm" => dense::gemm,
        "MatMul" => dense::matmul,
        "Add" | "Sum" => elementwise::sum,
        "Sub" => elementwise::sub,
        "Mul" => elementwise::mul,
        "Div" => elementwise::div,
        "Neg" => elementwise::neg,
        "Max" => elementwise::max,
        "Mean" => elementwise::mean,
        "Relu" => activation::relu,
        "Sigmoid" => activation::sigmoid,
        "Tanh" => activation::tanh,
        "Softmax" => activation::softmax,
        "LogSoftmax" => activation::log_softmax,
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => shape::reshape_like,
        "Identity" => shape::identity,
        "Concat" => shape::concat,
        _ => return None,
    })
}

/// Whether input `idx` of an op carries a differentiable float value (as
/// opposed to a shape, axes, ratio or flag). Unknown ops count every input as
/// differentiable, which is the safe side: it can only make the builder ask
/// for a rule, never silently drop a gradient.
pub(crate) fn is_differentiable_input(op_type: &str, idx: usize) -> bool {
    match op_type {
        "Reshape" | "Squeeze" | "Unsqueeze" => idx == 0,
        "Dropout" => idx == 0,
        "Shape" | "Size" | "ConstantOfShape" => false,
        _ => true,
    }
}

/// Attribute builders for emitted nodes.
pub(crate) fn a_int(name: &str, v: i64) -> pb::AttributeProto {
    proto::attr_int(name, v)
}
/// INTS attribute for emitted nodes.
pub(crate) fn a_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    proto::attr_ints(name, v)
}
#[allow(dead_code)] // rule API: offered to every rule, not used by all of them
/// FLOAT attribute for emitted nodes.
pub(crate) fn a_float(name: &str, v: f32) -> pb::AttributeProto {
    proto::attr_float(name, v)
}
/// STRING attribute for emitted nodes.
pub(crate) fn a_string(name: &str, v: &str) -> pb::AttributeProto {
    proto::attr_string(name, v)
}

/// The gradient of a node's first output, if any flows (most ops have one output).
pub(crate) fn first_grad(gy: &[Option<String>]) -> Option<String> {
    gy.first().cloned().flatten()
}

/// The frame of most rules: when a gradient flows into output 0, runs
/// `body` with it and the gradient slots (one per input, all `None` at
/// first) for it to fill.
pub(crate) fn with_dy(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
    body: impl FnOnce(&mut Ctx, String, &mut [Option<String>]) -> Result<(), GradError>,
) -> Grads {
    let mut out = vec![None; node.input.len()];
    if let Some(dy) = first_grad(gy) {
        body(ctx, dy, &mut out)?;
    }
    Ok(out)
}

/// The frame of the rules of ops whose only differentiable input is input
/// 0: `dx(ctx, dY, X)` gives dX, called when a gradient flows and X needs one.
pub(crate) fn unary(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
    dx: impl FnOnce(&mut Ctx, String, String) -> Result<String, GradError>,
) -> Grads {
    let mut out = vec![None; node.input.len()];
    let x = input(ctx, node, 0)?;
    if let Some(dy) = first_grad(gy)
        && ctx.requires_grad(&x)
    {
        out[0] = Some(dx(ctx, dy, x)?);
    }
    Ok(out)
}

/// Name of input `i` of a node; an error naming the node when it is absent.
pub(crate) fn input(ctx: &Ctx, node: &pb::NodeProto, i: usize) -> Result<String, GradError> {
    match node.input.get(i) {
        Some(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ctx.node_error(node, format!("input {i} is missing"))),
    }
}

/// Name of output `i` of a node; an error naming the node when it is absent.
pub(crate) fn output(ctx: &Ctx, node: &pb::NodeProto, i: usize) -> Result<String, GradError> {
    match node.output.get(i) {
        Some(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ctx.node_error(node, format!("output {i} is missing"))),
    }
}

/// Everything the rules may know about the forward graph, plus the backward
/// nodes emitted so far.
pub(crate) struct Ctx<'a> {
    /// The analysed forward graph (shapes, constants, float type, opset).
    graph: &'a Analysis,
    requires: &'a HashSet<String>,
    /// Names already taken (forward tensors and everything emitted).
    taken: HashSet<String>,
    counter: usize,
    /// Prefix of fresh names: the forward node being differentiated, so a
    /// backward tensor can be traced back to its rule when debugging.
    prefix: String,
    pub(crate) nodes: Vec<pb::NodeProto>,
}

impl<'a> Ctx<'a> {
    /// A context over the analysed forward graph. `taken` holds every name
    /// already used in the graph being built.
    pub(crate) fn new(
        graph: &'a Analysis,
        requires: &'a HashSet<String>,
        taken: HashSet<String>,
    ) -> Self {
        Ctx {
            graph,
            requires,
            taken,
            counter: 0,
            prefix: "mixnn".into(),
            nodes: Vec::new(),
        }
    }

    /// Sets the prefix of fresh names (the driver sets it per forward node).
    pub(crate) fn set_prefix(&mut self, prefix: &str) {
        self.prefix = prefix.to_string();
    }

    // ---- facts -------------------------------------------------------

    /// Static shape of a forward tensor.
    pub(crate) fn shape(&self, name: &str) -> Result<Vec<usize>, GradError> {
        self.graph
            .shapes
            .get(name)
            .cloned()
            .ok_or_else(|| GradError::Invalid(format!("no static shape known for tensor `{name}`")))
    }

    /// Rank of a forward tensor.
    pub(crate) fn rank(&self, name: &str) -> Result<usize, GradError> {
        Ok(self.shape(name)?.len())
    }

    #[allow(dead_code)] // rule API: offered to every rule, not used by all of them
    /// The graph's float type.
    pub(crate) fn float_type(&self) -> FloatType {
        self.graph.float
    }

    /// The ONNX data type code of the graph's float type.
    pub(crate) fn float_code(&self) -> i32 {
        self.graph.float.onnx()
    }

    #[allow(dead_code)] // rule API: offered to every rule, not used by all of them
    /// The ai.onnx opset version of the emitted graphs.
    pub(crate) fn opset(&self) -> i64 {
        self.graph.opset
    }

    /// Whether a gradient is wanted for `name` (it depends on a parameter, or
    /// on the data input when dX is requested).
    pub(crate) fn requires_grad(&self, name: &str) -> bool {
        !name.is_empty() && self.requires.contains(name)
    }

    #[allow(dead_code)] // rule API: offered to every rule, not used by all of them
    /// Value of an integer forward tensor that is constant (initializer or
    /// Constant node output).
    pub(crate) fn const_i64_of(&self, name: &str) -> Option<Vec<i64>> {
        self.graph
            .consts
            .get(name)
            .and_then(|t| proto::tensor_i64(t).ok())
    }

    #[allow(dead_code)] // rule API: offered to every rule, not used by all of them
    /// Value of a float forward tensor that is constant.
    pub(crate) fn const_f64_of(&self, name: &str) -> Option<Vec<f64>> {
        self.graph
            .consts
            .get(name)
            .and_then(|t| proto::tensor_f64(t).ok())
    }

    // ---- attributes of forward nodes ----------------------------------

    /// INT attribute, `default` when absent.
    pub(crate) fn attr_int(&self, node: &pb::NodeProto, name: &str, default: i64) -> i64 {
        proto::find_attr(node, name).map(|a| a.i).unwrap_or(default)
    }

    /// INTS attribute, `None` when absent.
    pub(crate) fn attr_ints(&self, node: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
        proto::find_attr(node, name).map(|a| a.ints.clone())
    }

    /// FLOAT attribute, `default` when absent.
    pub(crate) fn attr_float(&self, node: &pb::NodeProto, name: &str, default: f32) -> f32 {
        proto::find_attr(node, name).map(|a| a.f).unwrap_or(default)
    }

    /// STRING attribute, `default` when absent.
    pub(crate) fn attr_string(&self, node: &pb::NodeProto, name: &str, default: &str) -> String {
        proto::find_attr(node, name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_else(|| default.to_string())
    }

    // ---- errors ---------------------------------------------------------

    /// An error naming the node and op.
    pub(crate) fn node_error(&self, node: &pb::NodeProto, reason: impl Into<String>) -> GradError {
        GradError::Node {
            node: node.name.clone(),
            op: node.op_type.clone(),
            reason: reason.into(),
        }
    }

    #[allow(dead_code)] // rule API: offered to every rule, not used by all of them
    /// The op has no gradient rule (or not for these attributes).
    pub(crate) fn unsupported(&self, node: &pb::NodeProto) -> GradError {
        GradError::UnsupportedOp {
            node: node.name.clone(),
            op: node.op_type.clone(),
        }
    }

    // ---- emitting -------------------------------------------------------

    /// A fresh, unused tensor or node name.
    pub(crate) fn fresh(&mut self, hint: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("{}/grad/{}_{}", self.prefix, hint, self.counter);
            if self.taken.insert(name.clone()) {
                return name;
            }
        }
    }

    /// Reserves `name` if it is free; false when it is already taken.
    pub(crate) fn take_name(&mut self, name: &str) -> bool {
        self.taken.insert(name.to_string())
    }

    /// Emits one node with `n` outputs and returns the output names.
    pub(crate) fn emit_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        n: usize,
        attrs: Vec<pb::AttributeProto>,
    ) -> Vec<String> {
        let node_name = self.fresh(op);
        let outputs: Vec<String> = (0..n).map(|i| format!("{node_name}:{i}")).collect();
        for o in &outputs {
            self.taken.insert(o.clone());
        }
        let outs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        self.nodes
            .push(proto::node(&node_name, op, inputs, &outs, attrs));
        outputs
    }

    /// Emits one node with one output and returns its name.
    pub(crate) fn emit(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> String {
        let node_name = self.fresh(op);
        self.nodes.push(proto::node(
            &node_name,
            op,
            inputs,
            &[node_name.as_str()],
            attrs,
        ));
        node_name
    }

    /// A Constant node holding the tensor `make(name)`, named `name`.
    fn constant(&mut self, make: impl FnOnce(&str) -> pb::TensorProto) -> String {
        let name = self.fresh("const");
        let t = make(&name);
        self.nodes.push(proto::node(
            &name,
            "Constant",
            &[],
            &[name.as_str()],
            vec![proto::attr_tensor("value", t)],
        ));
        name
    }

    /// An INT64 constant.
    pub(crate) fn const_i64(&mut self, values: &[i64], shape: &[usize]) -> String {
        self.constant(|name| proto::i64_tensor(name, values, shape))
    }

    /// A float constant of the graph's float type.
    pub(crate) fn const_tensor(&mut self, values: &[f64], shape: &[usize]) -> String {
        let float = self.graph.float;
        self.constant(|name| proto::float_tensor(name, float, values, shape))
    }

    /// A float scalar (shape `[]`) of the graph's float type.
    pub(crate) fn const_scalar(&mut self, v: f64) -> String {
        self.const_tensor(&[v], &[])
    }

    /// Zeros of `shape` (a gradient that is identically zero).
    pub(crate) fn zeros(&mut self, shape: &[usize]) -> Result<String, GradError> {
        proto::numel(shape)
            .ok_or_else(|| GradError::Invalid(format!("shape {shape:?} is too large")))?;
        let z = self.const_scalar(0.0);
        let s = self.const_shape(shape);
        Ok(self.emit("Expand", &[&z, &s], vec![]))
    }

    /// A 1-D INT64 constant holding `shape`.
    fn const_shape(&mut self, shape: &[usize]) -> String {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.const_i64(&dims, &[shape.len()])
    }

    /// Reshape to a static shape.
    pub(crate) fn reshape(&mut self, x: &str, shape: &[usize]) -> String {
        let s = self.const_shape(shape);
        self.emit("Reshape", &[x, &s], vec![])
    }

    /// Transpose with an explicit permutation.
    pub(crate) fn transpose(&mut self, x: &str, perm: &[usize]) -> String {
        let p: Vec<i64> = perm.iter().map(|&d| d as i64).collect();
        self.emit("Transpose", &[x], vec![a_ints("perm", &p)])
    }

    /// `a * b` (broadcasting).
    pub(crate) fn mul(&mut self, a: &str, b: &str) -> String {
        self.emit("Mul", &[a, b], vec![])
    }

    /// `a + b` (broadcasting).
    pub(crate) fn add(&mut self, a: &str, b: &str) -> String {
        self.emit("Add", &[a, b], vec![])
    }

    /// `a - b` (broadcasting).
    pub(crate) fn sub(&mut self, a: &str, b: &str) -> String {
        self.emit("Sub", &[a, b], vec![])
    }

    /// `-a`.
    pub(crate) fn neg(&mut self, a: &str) -> String {
        self.emit("Neg", &[a], vec![])
    }

    /// `x * factor`, or `x` itself when the factor is 1.
    pub(crate) fn scale(&mut self, x: &str, factor: f64) -> String {
        if factor == 1.0 {
            return x.to_string();
        }
        let c = self.const_scalar(factor);
        self.mul(x, &c)
    }

    /// ReduceSum over constant `axes` (opset-13 form: axes as an input).
    /// With no axes this is the identity (never "reduce everything").
    pub(crate) fn reduce_sum(&mut self, x: &str, axes: &[usize], keepdims: bool) -> String {
        if axes.is_empty() {
            return x.to_string();
        }
        let a: Vec<i64> = axes.iter().map(|&d| d as i64).collect();
        let ax = self.const_i64(&a, &[a.len()]);
        self.emit(
            "ReduceSum",
            &[x, &ax],
            vec![a_int("keepdims", keepdims as i64)],
        )
    }

    /// Sum of one or more tensors (same shape).
    pub(crate) fn sum(&mut self, names: &[String]) -> Result<String, GradError> {
        match names {
            [] => Err(GradError::Invalid("sum of no tensors".into())),
            [one] => Ok(one.clone()),
            [a, b] => Ok(self.add(a, b)),
            many => {
                let refs: Vec<&str> = many.iter().map(String::as_str).collect();
                Ok(self.emit("Sum", &refs, vec![]))
            }
        }
    }

    /// Reduces `grad` (of shape `from`, the broadcast result) to `to`, the
    /// shape of an operand that was broadcast (numpy rules: `to` is aligned
    /// right, missing leading dims and dims of size 1 were broadcast).
    pub(crate) fn unbroadcast(
        &mut self,
        grad: &str,
        from: &[usize],
        to: &[usize],
    ) -> Result<String, GradError> {
        if from == to {
            return Ok(grad.to_string());
        }
        if to.len() > from.len() {
            return Err(GradError::Invalid(format!(
                "cannot reduce a gradient of shape {from:?} to {to:?}"
            )));
        }
        let lead = from.len() - to.len();
        let mut axes: Vec<usize> = (0..lead).collect();
        for (i, &t) in to.iter().enumerate() {
            let f = from[lead + i];
            if t == f {
                continue;
            }
            if t != 1 {
                return Err(GradError::Invalid(format!(
                    "shape {to:?} does not broadcast to {from:?}"
                )));
            }
            axes.push(lead + i);
        }
        let reduced = self.reduce_sum(grad, &axes, true);
        Ok(self.reshape(&reduced, to))
    }
}
