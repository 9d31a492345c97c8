//! The inverse network's architecture: a decoder that mirrors the layers
//! before the cut, as He et al. (2019, §5) build theirs.
//!
//! Walking the prefix backwards, each layer with a spatial footprint gets
//! its transposed counterpart and the activations are replaced by one ReLU
//! after every decoder layer, the last included; the reconstruction is then
//! clamped to `[0, 1]`, the images' range. A final ReLU rather than a
//! Sigmoid: MNIST's background is exactly 0, which a Sigmoid only reaches
//! in the limit (its gradient vanishes on the way), and a background left
//! at 0.01 halves SSIM's luminance term there. With a Sigmoid the conv1
//! inverse stalled at 31.9 dB / SSIM 0.81; with the ReLU it reaches
//! 62.9 dB / 1.000 (docs/audit.md). The price is that the final ReLU can
//! die; [`crate::collapse`] detects it and the training retries:
//!
//! | before the cut | in the decoder |
//! |---|---|
//! | Conv `C_in → C_out`, kernel k, stride s, pads p | ConvTranspose `C_out → C_in`, same k, s, p |
//! | MaxPool / AveragePool, kernel k, stride s, pads p | ConvTranspose `C → C`, same k, s, p (a learned unpooling) |
//! | Gemm / MatMul `n → m` (bias Add folded) | Gemm `m → n` |
//! | Flatten / Reshape of `(C, H, W)` | Reshape back to `(C, H, W)` |
//! | Relu, Sigmoid, Tanh, LeakyRelu, Dropout, Identity | nothing (see above) |
//!
//! `output_padding` makes each transposed layer land on exactly the size
//! its forward layer read, so the decoder's output has the input's shape;
//! when it cannot (an op not in the table, a dilated or grouped Conv, a
//! pool in ceil mode) the audit stops with [`AuditError::CannotMirror`].
//! The weights are declared without values, so the layer seeds them
//! (PyTorch's default uniform init).
//!
//! [`DecoderOutput::Linear`] drops the final ReLU, as He et al.'s own MNIST
//! decoders end (a transposed convolution with no activation, the image
//! clipped to its range only when it is saved and scored). It is the
//! weaker attacker: its background is regressed towards 0 from both sides
//! instead of cut at exactly 0, and the noise left there lowers SSIM. It
//! exists to compare with the paper (docs/audit.md), not as the audit's
//! default.
//!
//! [`DecoderShape::Compact`] is the shape of He et al.'s released MNIST
//! decoders: the table's Conv and Gemm rows only, each pool folded into
//! the stride of the transposed convolution that mirrors the Conv before
//! it (the same `output_padding` rule then lands it on the Conv's input).

use mixnn_onnx::{attr_int, attr_ints, i64_tensor, node, value_info};
use mixnn_shard::pb;

use crate::AuditError;

/// One layer of the prefix, with the per-sample shape it reads.
#[derive(Debug, Clone)]
enum Stage {
    /// Conv or pool (`channels_out` equals `channels_in` for a pool).
    Window {
        op: String,
        channels_in: usize,
        channels_out: usize,
        kernel: Vec<usize>,
        strides: Vec<usize>,
        pads: Vec<usize>,
        /// Spatial dims read.
        input: Vec<usize>,
    },
    /// A fully-connected layer `inputs → outputs`.
    Dense { inputs: usize, outputs: usize },
    /// A flattening of this per-sample shape.
    Flatten { shape: Vec<usize> },
}

fn ints(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    mixnn_onnx::find_attr(n, name).map(|a| a.ints.clone())
}

fn int(n: &pb::NodeProto, name: &str, default: i64) -> i64 {
    mixnn_onnx::find_attr(n, name)
        .map(|a| a.i)
        .unwrap_or(default)
}

fn usizes(v: &[i64]) -> Option<Vec<usize>> {
    v.iter().map(|&x| usize::try_from(x).ok()).collect()
}

/// Initializer shapes of a graph, by name.
fn init_dims(g: &pb::GraphProto, name: &str) -> Option<Vec<usize>> {
    let t = g.initializer.iter().find(|t| t.name == name)?;
    usizes(&t.dims)
}

/// The stages of the prefix and the per-sample shape after each, from the
/// input shape `shape`.
fn stages(prefix: &pb::ModelProto, input: &[usize]) -> Result<Vec<Stage>, AuditError> {
    let g = prefix
        .graph
        .as_ref()
        .ok_or_else(|| AuditError::Model("the prefix has no graph".into()))?;
    let mut shape = input.to_vec();
    let mut out = Vec::new();
    for n in &g.node {
        let cannot = |why: &str| AuditError::CannotMirror {
            node: n.name.clone(),
            op: n.op_type.clone(),
            reason: why.to_string(),
        };
        match n.op_type.as_str() {
            "Relu" | "Sigmoid" | "Tanh" | "LeakyRelu" | "Dropout" | "Identity" => {}
            "Add" if matches!(out.last(), Some(Stage::Dense { .. })) => {}
            "Conv" | "MaxPool" | "AveragePool" => {
                let (next, stage) = window(g, n, &shape).map_err(|e| cannot(&e))?;
                out.push(stage);
                shape = next;
            }
            "Gemm" | "MatMul" => {
                let w = n.input.get(1).and_then(|w| init_dims(g, w));
                let trans_b = n.op_type == "Gemm" && int(n, "transB", 0) == 1;
                let (inputs, outputs) = match w.as_deref() {
                    Some([a, b]) if trans_b => (*b, *a),
                    Some([a, b]) => (*a, *b),
                    _ => return Err(cannot("its weight is not a 2-D initializer")),
                };
                if shape != [inputs] {
                    return Err(cannot(&format!("reads {shape:?}, weight wants [{inputs}]")));
                }
                out.push(Stage::Dense { inputs, outputs });
                shape = vec![outputs];
            }
            "Flatten" | "Reshape" => {
                out.push(Stage::Flatten {
                    shape: shape.clone(),
                });
                shape = vec![shape.iter().product()];
            }
            _ => return Err(cannot("no mirror layer for this op")),
        }
    }
    Ok(out)
}

/// A Conv or pool node as a [`Stage::Window`], and the shape it writes.
fn window(
    g: &pb::GraphProto,
    n: &pb::NodeProto,
    shape: &[usize],
) -> Result<(Vec<usize>, Stage), String> {
    let [c, h, w] = shape else {
        return Err(format!("reads {shape:?}, not (channels, height, width)"));
    };
    let (channels_out, kernel) = if n.op_type == "Conv" {
        let wd = n
            .input
            .get(1)
            .and_then(|w| init_dims(g, w))
            .ok_or("its weight is not an initializer")?;
        if wd.len() != 4 || wd[1] != *c {
            return Err(format!("weight {wd:?} does not read {c} channels"));
        }
        if int(n, "group", 1) != 1 {
            return Err("grouped convolutions are not mirrored".into());
        }
        (wd[0], wd[2..].to_vec())
    } else {
        if int(n, "ceil_mode", 0) != 0 {
            return Err("ceil mode is not mirrored".into());
        }
        let k = ints(n, "kernel_shape").and_then(|k| usizes(&k));
        (*c, k.ok_or("no kernel_shape")?)
    };
    if ints(n, "dilations").is_some_and(|d| d.iter().any(|&x| x != 1)) {
        return Err("dilated windows are not mirrored".into());
    }
    let auto_pad = mixnn_onnx::find_attr(n, "auto_pad")
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .unwrap_or_default();
    if !matches!(auto_pad.as_str(), "" | "NOTSET" | "VALID") {
        return Err(format!("auto_pad {auto_pad} is not mirrored"));
    }
    let strides = ints(n, "strides")
        .and_then(|s| usizes(&s))
        .unwrap_or(vec![1, 1]);
    let pads = ints(n, "pads")
        .and_then(|p| usizes(&p))
        .unwrap_or(vec![0; 4]);
    if kernel.len() != 2 || strides.len() != 2 || pads.len() != 4 || strides.contains(&0) {
        return Err("not a 2-D window".into());
    }
    let input = vec![*h, *w];
    let mut spatial = Vec::with_capacity(2);
    for a in 0..2 {
        let padded = input[a] + pads[a] + pads[a + 2];
        if padded < kernel[a] {
            return Err("the window is larger than its input".into());
        }
        spatial.push((padded - kernel[a]) / strides[a] + 1);
    }
    let stage = Stage::Window {
        op: n.op_type.clone(),
        channels_in: *c,
        channels_out,
        kernel,
        strides,
        pads,
        input,
    };
    Ok((vec![channels_out, spatial[0], spatial[1]], stage))
}

/// What follows the decoder's last layer (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecoderOutput {
    /// A ReLU, as after every other layer: the background lands on exactly
    /// 0 (the stronger attacker, the audit's default).
    #[default]
    Relu,
    /// Nothing: the last transposed layer's output as it is, clamped to
    /// `[0, 1]` only when the reconstruction is scored (He et al.'s MNIST
    /// decoders).
    Linear,
}

/// Which layers the decoder has (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecoderShape {
    /// Every layer before the cut mirrored, a pool by a learned unpooling.
    #[default]
    Mirror,
    /// The shape of He et al.'s released MNIST decoders: only the
    /// convolutions (and fully-connected layers) are mirrored; a pool is
    /// folded into the stride of the transposed convolution that mirrors
    /// the convolution before it. For LeNet cut at relu2 that is their
    /// `ConvTranspose(16→8, 5)`, ReLU, `ConvTranspose(8→1, 5, stride 2)`;
    /// cut at conv1, one 5×5 layer. Fewer parameters, and no unpooling
    /// layer of its own to learn the pool's inverse.
    Compact,
}

impl Stage {
    fn is_pool(&self) -> bool {
        matches!(self, Stage::Window { op, .. } if op != "Conv")
    }
}

/// In a compact decoder, whether the pool at `i` folds into the Conv
/// before it (pools in between fold too): the Conv's mirror takes the
/// pool's stride.
fn folds(stages: &[Stage], i: usize) -> bool {
    stages[i].is_pool()
        && matches!(
            stages[..i].iter().rev().find(|s| !s.is_pool()),
            Some(Stage::Window { .. })
        )
}

/// `stage` with its strides multiplied by `by`.
fn strided(stage: &Stage, by: [usize; 2]) -> Stage {
    let mut s = stage.clone();
    if let Stage::Window { strides, .. } = &mut s {
        strides[0] *= by[0];
        strides[1] *= by[1];
    }
    s
}

/// The decoder for `prefix` (see the module docs) with a final ReLU:
/// input `z` of shape `[batch] + z_shape`, output `x` of shape
/// `[batch] + input_shape`; its parameters are graph inputs without values.
pub fn decoder(
    prefix: &pb::ModelProto,
    input_shape: &[usize],
    z_shape: &[usize],
    batch: usize,
) -> Result<pb::ModelProto, AuditError> {
    let spec = (DecoderShape::Mirror, DecoderOutput::Relu);
    decoder_with(prefix, input_shape, z_shape, batch, spec)
}

/// [`decoder`] with the choice of its layers and of what follows its last
/// layer.
pub fn decoder_with(
    prefix: &pb::ModelProto,
    input_shape: &[usize],
    z_shape: &[usize],
    batch: usize,
    (layers, output): (DecoderShape, DecoderOutput),
) -> Result<pb::ModelProto, AuditError> {
    let stages = stages(prefix, input_shape)?;
    if !stages.iter().any(|s| !matches!(s, Stage::Flatten { .. })) {
        return Err(AuditError::CannotMirror {
            node: String::new(),
            op: String::new(),
            reason: "no layer with parameters before the cut".into(),
        });
    }
    let f32t = pb::tensor_proto::DataType::Float as i32;
    let mut b = Builder {
        nodes: Vec::new(),
        inputs: vec![value_info("z", f32t, &with_batch(batch, z_shape))],
        inits: Vec::new(),
        cur: "z".into(),
        shape: z_shape.to_vec(),
        layer: 0,
    };
    // The decoder's last layer with parameters mirrors the prefix's first.
    let last = stages
        .iter()
        .position(|s| !matches!(s, Stage::Flatten { .. }));
    // Compact: the product of the strides of the pools waiting to fold
    // into the next Conv mirrored.
    let mut fold = [1usize, 1];
    for (i, stage) in stages.iter().enumerate().rev() {
        match stage {
            Stage::Flatten { shape } => b.reshape(shape),
            Stage::Dense { inputs, outputs } => b.dense(*outputs, *inputs),
            Stage::Window { strides, .. }
                if layers == DecoderShape::Compact && folds(&stages, i) =>
            {
                fold = [fold[0] * strides[0], fold[1] * strides[1]];
                continue;
            }
            Stage::Window { .. } => {
                b.transposed(&strided(stage, fold))?;
                fold = [1, 1];
            }
        }
        let skip = output == DecoderOutput::Linear && Some(i) == last;
        if !matches!(stage, Stage::Flatten { .. }) && !skip {
            b.unary("Relu");
        }
    }
    if b.shape != input_shape {
        return Err(AuditError::CannotMirror {
            node: String::new(),
            op: String::new(),
            reason: format!(
                "the decoder writes {:?}, the model reads {input_shape:?}",
                b.shape
            ),
        });
    }
    Ok(b.finish(f32t, batch, input_shape))
}

fn with_batch(batch: usize, shape: &[usize]) -> Vec<usize> {
    std::iter::once(batch)
        .chain(shape.iter().copied())
        .collect()
}

/// The decoder graph under construction.
struct Builder {
    nodes: Vec<pb::NodeProto>,
    inputs: Vec<pb::ValueInfoProto>,
    inits: Vec<pb::TensorProto>,
    cur: String,
    /// Per-sample shape of `cur`.
    shape: Vec<usize>,
    /// Layers with parameters emitted so far.
    layer: usize,
}

impl Builder {
    fn push(&mut self, op: &str, extra: &[&str], attrs: Vec<pb::AttributeProto>) {
        let out = format!("dec/{}_{op}", self.nodes.len());
        let mut inputs = vec![self.cur.as_str()];
        inputs.extend_from_slice(extra);
        self.nodes.push(node(&out, op, &inputs, &[&out], attrs));
        self.cur = out;
    }

    fn unary(&mut self, op: &str) {
        self.push(op, &[], vec![]);
    }

    /// A parameter input of this shape, named after the current layer.
    fn param(&mut self, what: &str, shape: &[usize]) -> String {
        let name = format!("dec{}.{what}", self.layer);
        let f32t = pb::tensor_proto::DataType::Float as i32;
        self.inputs.push(value_info(&name, f32t, shape));
        name
    }

    fn reshape(&mut self, shape: &[usize]) {
        let name = format!("dec/shape_{}", self.inits.len());
        let dims: Vec<i64> = std::iter::once(-1)
            .chain(shape.iter().map(|&d| d as i64))
            .collect();
        self.inits.push(i64_tensor(&name, &dims, &[dims.len()]));
        self.push("Reshape", &[&name], vec![]);
        self.shape = shape.to_vec();
    }

    fn dense(&mut self, inputs: usize, outputs: usize) {
        self.layer += 1;
        let w = self.param("weight", &[outputs, inputs]);
        let b = self.param("bias", &[outputs]);
        self.push("Gemm", &[&w, &b], vec![attr_int("transB", 1)]);
        self.shape = vec![outputs];
    }

    fn transposed(&mut self, stage: &Stage) -> Result<(), AuditError> {
        let Stage::Window {
            op,
            channels_in,
            channels_out,
            kernel,
            strides,
            pads,
            input,
        } = stage
        else {
            return Ok(());
        };
        let mut out_pad = Vec::with_capacity(2);
        for a in 0..2 {
            let z = self.shape.get(1 + a).copied().unwrap_or(0);
            let reach = (z.max(1) - 1) * strides[a] + kernel[a];
            let grown = reach.saturating_sub(pads[a] + pads[a + 2]);
            match input[a].checked_sub(grown) {
                Some(extra) if extra < strides[a] => out_pad.push(extra as i64),
                _ => {
                    return Err(AuditError::CannotMirror {
                        node: String::new(),
                        op: op.clone(),
                        reason: format!(
                            "a transposed window cannot grow {:?} back to {input:?}",
                            self.shape
                        ),
                    });
                }
            }
        }
        self.layer += 1;
        let w = self.param(
            "weight",
            &[*channels_out, *channels_in, kernel[0], kernel[1]],
        );
        let b = self.param("bias", &[*channels_in]);
        let as_i64 = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        let attrs = vec![
            attr_ints("kernel_shape", &as_i64(kernel)),
            attr_ints("strides", &as_i64(strides)),
            attr_ints("pads", &as_i64(pads)),
            attr_ints("output_padding", &out_pad),
        ];
        self.push("ConvTranspose", &[&w, &b], attrs);
        self.shape = vec![*channels_in, input[0], input[1]];
        Ok(())
    }

    fn finish(mut self, f32t: i32, batch: usize, input_shape: &[usize]) -> pb::ModelProto {
        let last = self.cur.clone();
        self.nodes
            .push(node("dec/output", "Identity", &[&last], &["x"], vec![]));
        let graph = pb::GraphProto {
            name: "mixnn_inverse_network".into(),
            node: self.nodes,
            input: self.inputs,
            initializer: self.inits,
            output: vec![value_info("x", f32t, &with_batch(batch, input_shape))],
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            producer_name: "mixnn-audit".into(),
            graph: Some(graph),
            ..Default::default()
        }
    }
}
