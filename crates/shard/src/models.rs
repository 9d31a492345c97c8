//! Builders for the two reference networks: the MixNN paper's MLP and LeNet-5.
//!
//! They are written the way PyTorch's exporter writes them (node names like
//! `/fc1/Gemm`, initializers `fc1.weight`, graph input `input`, output
//! `output`), so the splitter, the gradient builder and the guests are tested
//! against the shape of model users will actually bring. Weights are drawn
//! like PyTorch's default init so training from them behaves like the paper.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::pb;
use crate::pb::tensor_proto::DataType;
use crate::proto::{
    IR_VERSION, attr_float, attr_int, attr_ints, f32_tensor, node, opset_imports, value_info,
};

/// How fully-connected layers are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// PyTorch exporter style: `Gemm` with `transB=1`, weight `[out, in]`.
    Gemm,
    /// `MatMul` with weight `[in, out]` followed by `Add` of the bias (the form
    /// other exporters and hand-written graphs use).
    MatMulAdd,
}

/// Accumulates nodes and initializers while a model is being built.
pub(crate) struct Builder {
    rng: ChaCha8Rng,
    pub(crate) nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    form: Form,
    /// Name of the tensor the next layer reads.
    pub(crate) cur: String,
}

impl Builder {
    pub(crate) fn new(seed: u64, form: Form) -> Self {
        Builder {
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: Vec::new(),
            inits: Vec::new(),
            form,
            cur: "input".to_string(),
        }
    }

    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)): what PyTorch's kaiming-uniform with
    /// a = sqrt(5) gives for weights, and its default bias init.
    fn uniform(&mut self, n: usize, fan_in: usize) -> Vec<f32> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        (0..n).map(|_| self.rng.gen_range(-bound..bound)).collect()
    }

    /// Appends a node that reads the current tensor and makes it current.
    pub(crate) fn push(
        &mut self,
        module: &str,
        op: &str,
        extra_inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) {
        let name = format!("/{module}/{op}");
        let out = format!("{name}_output_0");
        let mut inputs = vec![self.cur.as_str()];
        inputs.extend_from_slice(extra_inputs);
        self.nodes.push(node(&name, op, &inputs, &[&out], attrs));
        self.cur = out;
    }

    /// Initializer names of a module: PyTorch joins nested modules with
    /// dots where node names use slashes (`/a/fc/Gemm`, `a.fc.weight`).
    fn param_names(module: &str) -> (String, String) {
        let dotted = module.replace('/', ".");
        (format!("{dotted}.weight"), format!("{dotted}.bias"))
    }

    pub(crate) fn linear(&mut self, module: &str, fan_in: usize, fan_out: usize) {
        let w = self.uniform(fan_in * fan_out, fan_in);
        let b = self.uniform(fan_out, fan_in);
        let (wname, bname) = Self::param_names(module);
        match self.form {
            Form::Gemm => {
                // PyTorch stores Linear weights as [out, in] and exports transB=1.
                self.inits.push(f32_tensor(&wname, &[fan_out, fan_in], &w));
                self.inits.push(f32_tensor(&bname, &[fan_out], &b));
                let attrs = vec![
                    attr_float("alpha", 1.0),
                    attr_float("beta", 1.0),
                    attr_int("transB", 1),
                ];
                self.push(module, "Gemm", &[&wname, &bname], attrs);
            }
            Form::MatMulAdd => {
                // Same draws, stored transposed to [in, out] so that both forms
                // of one seed compute the same function.
                let mut wt = vec![0.0f32; w.len()];
                for o in 0..fan_out {
                    for i in 0..fan_in {
                        wt[i * fan_out + o] = w[o * fan_in + i];
                    }
                }
                self.inits.push(f32_tensor(&wname, &[fan_in, fan_out], &wt));
                self.inits.push(f32_tensor(&bname, &[fan_out], &b));
                self.push(module, "MatMul", &[&wname], vec![]);
                self.push(module, "Add", &[&bname], vec![]);
            }
        }
    }

    pub(crate) fn conv(&mut self, module: &str, cin: usize, cout: usize, k: usize, pad: usize) {
        let fan_in = cin * k * k;
        let w = self.uniform(cout * fan_in, fan_in);
        let b = self.uniform(cout, fan_in);
        let (wname, bname) = Self::param_names(module);
        self.inits.push(f32_tensor(&wname, &[cout, cin, k, k], &w));
        self.inits.push(f32_tensor(&bname, &[cout], &b));
        let p = pad as i64;
        let k = k as i64;
        let attrs = vec![
            attr_ints("dilations", &[1, 1]),
            attr_int("group", 1),
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("pads", &[p, p, p, p]),
            attr_ints("strides", &[1, 1]),
        ];
        self.push(module, "Conv", &[&wname, &bname], attrs);
    }

    pub(crate) fn relu(&mut self, module: &str) {
        self.push(module, "Relu", &[], vec![]);
    }

    pub(crate) fn maxpool(&mut self, module: &str) {
        let attrs = vec![
            attr_int("ceil_mode", 0),
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("pads", &[0, 0, 0, 0]),
            attr_ints("strides", &[2, 2]),
        ];
        self.push(module, "MaxPool", &[], attrs);
    }

    fn flatten(&mut self) {
        self.flatten_as("flatten");
    }

    pub(crate) fn flatten_as(&mut self, module: &str) {
        self.push(module, "Flatten", &[], vec![attr_int("axis", 1)]);
    }

    /// The fully-connected layers `fc1, fc2, ...` through `widths` (input
    /// width first), a ReLU after each but the last, the ReLUs numbered
    /// from `first_relu`.
    fn classifier(&mut self, widths: &[usize], first_relu: usize) {
        let layers = widths.len().saturating_sub(1);
        for (i, w) in widths.windows(2).enumerate() {
            self.linear(&format!("fc{}", i + 1), w[0], w[1]);
            if i + 1 < layers {
                self.relu(&format!("relu{}", first_relu + i));
            }
        }
    }

    /// Closes the graph with LogSoftmax writing the `output` tensor.
    fn finish(mut self, graph_name: &str, batch: usize) -> pb::ModelProto {
        let cur = self.cur.clone();
        self.nodes.push(node(
            "/log_softmax/LogSoftmax",
            "LogSoftmax",
            &[&cur],
            &["output"],
            vec![attr_int("axis", 1)],
        ));
        self.into_model(graph_name, batch)
    }

    /// The model around the nodes so far, whose last node must write the
    /// `output` tensor of [batch, 10].
    pub(crate) fn into_model(self, graph_name: &str, batch: usize) -> pb::ModelProto {
        let f32t = DataType::Float as i32;
        let graph = pb::GraphProto {
            name: graph_name.to_string(),
            node: self.nodes,
            initializer: self.inits,
            input: vec![value_info("input", f32t, &[batch, 1, 28, 28])],
            output: vec![value_info("output", f32t, &[batch, 10])],
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: opset_imports(),
            producer_name: "mixnn".to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            graph: Some(graph),
            ..Default::default()
        }
    }
}

/// The MixNN paper's MLP: Flatten (1x28x28 -> 784), 784-128 ReLU, 128-64 ReLU,
/// 64-10, LogSoftmax over classes. `batch` is fixed in the declared shapes so
/// every shard gets concrete shapes.
pub fn mlp(seed: u64, batch: usize, form: Form) -> pb::ModelProto {
    let mut b = Builder::new(seed, form);
    b.flatten();
    b.classifier(&[784, 128, 64, 10], 1);
    b.finish("mlp", batch)
}

/// LeNet-5 on 28x28 inputs: Conv 6@5x5 pad 2, ReLU, MaxPool 2/2, Conv 16@5x5,
/// ReLU, MaxPool 2/2, Flatten (400), 400-120 ReLU, 120-84 ReLU, 84-10,
/// LogSoftmax. Convolutions are the same in both forms; `form` only changes
/// the fully-connected layers.
pub fn lenet5(seed: u64, batch: usize, form: Form) -> pb::ModelProto {
    lenet("lenet5", 6, 2, seed, batch, form)
}

/// The LeNet that He, Zhang and Lee attack on MNIST (their released
/// `net.py`): Conv 8@5x5 without padding, ReLU, MaxPool 2/2, Conv 16@5x5,
/// ReLU, MaxPool 2/2, Flatten (256), 256-120 ReLU, 120-84 ReLU, 84-10,
/// LogSoftmax. Its second ReLU writes 16x8x8 values where [`lenet5`]'s
/// writes 16x10x10, so the audit can compare with the paper's figures on
/// the model they were measured on (docs/audit.md).
pub fn lenet5_he(seed: u64, batch: usize, form: Form) -> pb::ModelProto {
    lenet("lenet5_he", 8, 0, seed, batch, form)
}

/// A LeNet on 28x28 inputs whose first convolution has `filters` 5x5
/// filters and `pad` padding; the rest is LeNet-5's (the two models above
/// differ only there, and in the flattened width that follows from it).
fn lenet(
    name: &str,
    filters: usize,
    pad: usize,
    seed: u64,
    batch: usize,
    form: Form,
) -> pb::ModelProto {
    let mut b = Builder::new(seed, form);
    b.conv("conv1", 1, filters, 5, pad);
    b.relu("relu1");
    b.maxpool("pool1");
    b.conv("conv2", filters, 16, 5, 0);
    b.relu("relu2");
    b.maxpool("pool2");
    b.flatten();
    // 28 + 2·pad − 4, halved; − 4, halved: the side of conv2's pooled map.
    let side = ((28 + 2 * pad - 4) / 2 - 4) / 2;
    b.classifier(&[16 * side * side, 120, 84, 10], 3);
    b.finish(name, batch)
}
