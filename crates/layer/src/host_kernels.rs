//! Matrix products handed to the host, the rest of the layer in the guest.
//!
//! Why: tract's wasm simd128 kernels cannot get under ~4× of the host's
//! 512-bit FMA kernels on a matrix product (and lose half their speed to NaN
//! canonicalisation), and products are most of a dense layer's time. So the
//! guest keeps the graph, the parameters and the control flow, and hands
//! only each 2-D product to the host through a narrow call
//! (`mixnn:layer/kernels` in `wit/layer.wit`). The host computes it natively
//! (host-kernel mode) or in its own wasm product kernel (pure-wasm mode,
//! bit-identical on every machine); the guest does not know which.
//!
//! How: before tract optimises a plan, every `EinSum` that is a plain 2-D
//! product of two f32 wires is replaced by [`HostMatMul`], whose evaluation
//! calls the installed kernel. Products larger than the host's per-call
//! limit, batched or quantised ones stay in tract.
//!
//! The kernel is installed once per process by whoever has a host to call
//! (the standard guest does it in `load`); natively nothing is installed and
//! plans are unchanged, so the native engine is never affected.

use std::sync::OnceLock;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

/// The shape of one product: op(A) is m × k, op(B) is k × n, C is m × n.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatMulDims {
    /// Rows of op(A) and of C.
    pub m: usize,
    /// Columns of op(A), rows of op(B): the dimension summed over.
    pub k: usize,
    /// Columns of op(B) and of C.
    pub n: usize,
    /// A is stored k × m.
    pub a_trans: bool,
    /// B is stored n × k.
    pub b_trans: bool,
}

/// Computes C (m × n, row-major) from A and B as laid out in `dims`.
pub type MatMulKernel = fn(a: &[f32], b: &[f32], dims: MatMulDims) -> Result<Vec<f32>, String>;

struct Installed {
    kernel: MatMulKernel,
    /// Largest m · k · n one call may take.
    limit: u64,
}

static KERNEL: OnceLock<Installed> = OnceLock::new();

/// Installs the host's product kernel for this process; later calls are
/// ignored (one host per process). Returns whether this call installed it.
pub fn install_host_matmul(kernel: MatMulKernel, limit: u64) -> bool {
    KERNEL.set(Installed { kernel, limit }).is_ok()
}

/// Whether plans compiled with host kernels on will use them.
pub fn host_matmul_installed() -> bool {
    KERNEL.get().is_some()
}

/// The parts of a tract op that only describe it: `Op` with its name (and
/// the `Debug` of one field as its info) and `TypedOp` with an f32 output of
/// the shape `$shape`, computed from `$s` (the op: pass `self`) and
/// `$inputs` (the input facts). Each op writes its own `EvalOp`.
macro_rules! f32_op {
    (
        $ty:ty, $s:ident, $inputs:ident,
        name: $name:expr, $(info: $info:ident,)? shape: $shape:expr
    ) => {
        impl Op for $ty {
            fn name(&$s) -> StaticName {
                $name.into()
            }

            $(
                fn info(&$s) -> TractResult<Vec<String>> {
                    Ok(vec![format!("{:?}", $s.$info)])
                }
            )?

            op_as_typed_op!();
        }

        impl TypedOp for $ty {
            fn output_facts(&$s, $inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
                Ok(tvec!(f32::fact($shape)))
            }

            as_op!();
        }
    };
}
pub(crate) use f32_op;

/// A 2-D product computed by the installed kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostMatMul {
    dims: MatMulDims,
    /// The shape tract expects (C's rows and columns may each span several
    /// axes).
    out_shape: TVec<usize>,
    /// Which input is A (0 or 1): with a transposed output the operands
    /// swap, since Cᵀ = op(B)ᵀ · op(A)ᵀ.
    a_input: usize,
}

f32_op!(HostMatMul, self, _inputs, name: "HostMatMul", info: dims, shape: &*self.out_shape);

impl EvalOp for HostMatMul {
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let a = f32s(&inputs[self.a_input])?;
        let b = f32s(&inputs[1 - self.a_input])?;
        f32_value(&self.out_shape, call_kernel(a, b, self.dims)?)
    }
}

/// One product on the installed kernel, its result checked for size.
pub(crate) fn call_kernel(a: &[f32], b: &[f32], d: MatMulDims) -> TractResult<Vec<f32>> {
    let Some(installed) = KERNEL.get() else {
        bail!("a host product without a host kernel installed");
    };
    let c = (installed.kernel)(a, b, d).map_err(|e| format_err!("host matmul: {e}"))?;
    if c.len() != d.m * d.n {
        bail!(
            "host matmul returned {} values for {}×{}",
            c.len(),
            d.m,
            d.n
        );
    }
    Ok(c)
}

// Helpers shared by the ops that replace tract's (here, `host_conv`,
// `guest_ops`).

/// The f32 values of a plain in-memory tensor.
pub(crate) fn f32s(t: &Tensor) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}

/// `data` as an op's single f32 output of `shape`.
pub(crate) fn f32_value(shape: &[usize], data: Vec<f32>) -> TractResult<TVec<TValue>> {
    let t = tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape, data)?;
    Ok(tvec!(t.into_tvalue()))
}

/// A fact's shape, when every dimension is a known number.
pub(crate) fn concrete(fact: &TypedFact) -> Option<TVec<usize>> {
    fact.shape.iter().map(|d| d.to_usize().ok()).collect()
}

/// Replaces every eligible product of `model` (decluttered, not yet
/// optimised) by a [`HostMatMul`], and every eligible convolution by its
/// host-product form ([`crate::host_conv`]); returns how many. Nothing
/// happens when no kernel is installed.
pub(crate) fn patch(model: &mut TypedModel) -> TractResult<usize> {
    let Some(installed) = KERNEL.get() else {
        return Ok(0);
    };
    let mut replaced = 0;
    for id in 0..model.nodes.len() {
        let op: Option<Box<dyn TypedOp>> = {
            let node = &model.nodes[id];
            let facts = model.node_input_facts(id)?;
            let out = model.outlet_fact(OutletId::new(id, 0))?;
            match node.op_as::<EinSum>() {
                Some(es) => eligible(es, &facts, out, installed.limit).map(|op| Box::new(op) as _),
                None if node.outputs.len() == 1 => {
                    crate::host_conv::replacement(node.op.as_ref(), &facts, out, installed.limit)
                }
                None => None,
            }
        };
        let Some(op) = op else {
            continue;
        };
        model.nodes[id].op = op;
        replaced += 1;
    }
    Ok(replaced)
}

/// The [`HostMatMul`] equivalent to `es`, if it is a plain f32 product of
/// concrete shape within the host's limit.
///
/// "Plain" allows what tract's declutter folds into an `EinSum` without
/// moving data: several adjacent axes acting as one (a Flatten before a
/// Gemm gives `mbak,nak->mn`) and unit axes summed away. Every axis must
/// belong to one of three groups: m (in A and C), n (in B and C), k (in A
/// and B); each tensor holds its two groups as two contiguous runs, with
/// the axes of a group in the same order wherever it appears.
fn eligible(es: &EinSum, inputs: &[&TypedFact], out: &TypedFact, limit: u64) -> Option<HostMatMul> {
    if es.q_params.is_some() || es.operating_dt != f32::datum_type() || inputs.len() != 2 {
        return None;
    }
    if inputs.iter().any(|f| f.datum_type != f32::datum_type()) {
        return None;
    }
    let facts = [inputs[0], inputs[1], out];
    let shapes: Vec<TVec<usize>> = facts.iter().map(|f| concrete(f)).collect::<Option<_>>()?;
    // Per tensor, the group of each position (None: a unit axis summed away).
    let mut layout: Vec<Vec<Option<(Group, char)>>> =
        shapes.iter().map(|s| vec![None; s.len()]).collect();
    let (mut m, mut n, mut k) = (1u64, 1u64, 1u64);
    for ax in es.axes.iter_all_axes() {
        let places = [
            ax.inputs[0].as_slice(),
            ax.inputs[1].as_slice(),
            ax.outputs[0].as_slice(),
        ];
        if places.iter().any(|p| p.len() > 1) {
            return None;
        }
        let pos: Vec<Option<usize>> = places.iter().map(|p| p.first().copied()).collect();
        let group = match (pos[0], pos[1], pos[2]) {
            (Some(_), None, Some(_)) => Group::M,
            (None, Some(_), Some(_)) => Group::N,
            (Some(_), Some(_), None) => Group::K,
            _ => {
                // Only a unit axis may appear elsewhere (in one tensor).
                let unit = (0..3).all(|t| pos[t].is_none_or(|p| shapes[t][p] == 1));
                if unit {
                    continue;
                }
                return None;
            }
        };
        let size = match group {
            Group::N => shapes[1][pos[1]?],
            _ => shapes[0][pos[0]?],
        } as u64;
        match group {
            Group::M => m *= size,
            Group::N => n *= size,
            Group::K => k *= size,
        }
        for t in 0..3 {
            if let Some(p) = pos[t] {
                layout[t][p] = Some((group, ax.repr));
            }
        }
    }
    let [a, b, c] = [&layout[0], &layout[1], &layout[2]].map(|l| runs(l));
    let (a, b, c) = (a?, b?, c?);
    // The same axis order within a group wherever it appears.
    let order =
        |t: &[(Group, Vec<char>)], g: Group| t.iter().find(|r| r.0 == g).map(|r| r.1.clone());
    if order(&a, Group::K)? != order(&b, Group::K)?
        || order(&a, Group::M)? != order(&c, Group::M)?
        || order(&b, Group::N)? != order(&c, Group::N)?
    {
        return None;
    }
    let work = m.checked_mul(k)?.checked_mul(n)?;
    if work == 0 || work > limit {
        return None;
    }
    let a_trans = a[0].0 == Group::K;
    let b_trans = b[0].0 == Group::N;
    let (m, k, n) = (
        usize::try_from(m).ok()?,
        usize::try_from(k).ok()?,
        usize::try_from(n).ok()?,
    );
    let out_shape = shapes[2].iter().copied().collect();
    Some(if c[0].0 == Group::M {
        HostMatMul {
            dims: MatMulDims {
                m,
                k,
                n,
                a_trans,
                b_trans,
            },
            a_input: 0,
            out_shape,
        }
    } else {
        // C is stored n × m: compute Cᵀ = op(B)ᵀ · op(A)ᵀ with the operands
        // swapped; op(B)ᵀ is n × k, stored k × n exactly when B is not
        // transposed, and likewise for A.
        HostMatMul {
            dims: MatMulDims {
                m: n,
                k,
                n: m,
                a_trans: !b_trans,
                b_trans: !a_trans,
            },
            a_input: 1,
            out_shape,
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    M,
    N,
    K,
}

/// A tensor's groups as contiguous runs (axis order kept), unit axes
/// skipped; `None` unless there are exactly two runs of different groups.
fn runs(layout: &[Option<(Group, char)>]) -> Option<Vec<(Group, Vec<char>)>> {
    let mut out: Vec<(Group, Vec<char>)> = Vec::new();
    for (g, repr) in layout.iter().flatten() {
        match out.last_mut() {
            Some((last, axes)) if last == g => axes.push(*repr),
            _ => out.push((*g, vec![*repr])),
        }
    }
    (out.len() == 2 && out[0].0 != out[1].0).then_some(out)
}
