//! Guest-side replacements for tract ops that are slow in wasm on the short
//! rows of a classifier's last layer (host-kernel mode only).
//!
//! Why: once products run on the host, a last layer (a 10-wide Gemm and a
//! LogSoftmax) spends most of its guest time in tract's softmax, `Ln`, `Exp`,
//! sums and broadcast adds: their wasm paths go through an aligned scratch
//! buffer or an ndarray zip per short row, at 10-30 ns an element. The ops
//! here work on whole contiguous runs, in loops LLVM vectorises for simd128.
//! Likewise the flat scatter-add of a MaxPool gradient, which tract indexes
//! element by element through ndarray (60% of a LeNet conv shard's backward
//! in the guest).
//!
//! They apply whenever a product kernel is installed (see [`crate::plans`]):
//! in the standard guest, in both modes; natively never. They compute the
//! same functions as tract's ops; results differ from tract's by float
//! rounding (a few ulps of exp), and are plain deterministic wasm, so pure-wasm
//! results stay the same on every machine.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{ScatterElements, ScatterReduction};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::identity::Identity;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, Softmax, SoftmaxKind};

use crate::host_kernels::{concrete, f32_op, f32_value, f32s};

/// Softmax or log-softmax over the last axis of an f32 tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RowSoftmax {
    log: bool,
}

/// Element-wise `exp` of an f32 tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FastExp;

/// A sum over a run of adjacent axes: the input seen as
/// `[outer, mid, inner]`, summed over `mid` (reduced axes kept as 1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SumRun {
    outer: usize,
    mid: usize,
    inner: usize,
    out_shape: TVec<usize>,
}

/// `a + b` where one operand is full-size and the other repeats along the
/// leading axes (a bias row); `full` is the index of the full-size input.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RowAdd {
    full: usize,
    shape: TVec<usize>,
}

/// `ScatterElements` on 1-D f32 data (axis 0, no reduction or `add`): the
/// MaxPool gradient's form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlatScatter {
    add: bool,
}

/// Replaces softmaxes over the last axis (fusing a following `Ln` into a
/// log-softmax), f32 `Exp`s, sums over adjacent axes, bias-row adds and
/// flat scatters; returns how many ops changed.
pub(crate) fn patch(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes.len() {
        let f32_out = model.outlet_fact(OutletId::new(id, 0))?.datum_type == f32::datum_type();
        if !f32_out || model.nodes[id].outputs.len() != 1 {
            continue;
        }
        let node = &model.nodes[id];
        if let Some(sm) = node.op_as::<Softmax>() {
            let rank = model.outlet_fact(OutletId::new(id, 0))?.rank();
            if sm.quant_output_dt.is_some() || rank == 0 || *sm.axes != [rank - 1] {
                continue;
            }
            let mut log = sm.kind == SoftmaxKind::LogSoftmax;
            // tract loads ONNX LogSoftmax as Softmax then Ln: fuse them when
            // the Ln is the softmax's only reader.
            let readers = &node.outputs[0].successors;
            if !log
                && readers.len() == 1
                && !model.output_outlets()?.contains(&OutletId::new(id, 0))
            {
                let next = readers[0].node;
                if is_elementwise(model.node(next), "Ln") {
                    model.nodes[next].op = Box::new(Identity);
                    log = true;
                }
            }
            model.nodes[id].op = Box::new(RowSoftmax { log });
            replaced += 1;
        } else if is_elementwise(node, "Exp") {
            model.nodes[id].op = Box::new(FastExp);
            replaced += 1;
        } else if let Some(op) = sum_run(model, id)? {
            model.nodes[id].op = Box::new(op);
            replaced += 1;
        } else if let Some(op) = row_add(model, id)? {
            model.nodes[id].op = Box::new(op);
            replaced += 1;
        } else if let Some(op) = flat_scatter(model, id)? {
            model.nodes[id].op = Box::new(op);
            replaced += 1;
        }
    }
    Ok(replaced)
}

fn sum_run(model: &TypedModel, id: usize) -> TractResult<Option<SumRun>> {
    let Some(reduce) = model.nodes[id].op_as::<Reduce>() else {
        return Ok(None);
    };
    let input = model.node_input_facts(id)?[0];
    let Some(shape) = concrete(input) else {
        return Ok(None);
    };
    let axes = &reduce.axes;
    let adjacent = axes.windows(2).all(|w| w[1] == w[0] + 1);
    if reduce.reducer != Reducer::Sum
        || input.datum_type != f32::datum_type()
        || axes.is_empty()
        || !adjacent
        || axes[axes.len() - 1] >= shape.len()
    {
        return Ok(None);
    }
    if shape.contains(&0) {
        return Ok(None);
    }
    let (first, last) = (axes[0], axes[axes.len() - 1]);
    let mut out_shape = shape.clone();
    axes.iter().for_each(|&a| out_shape[a] = 1);
    Ok(Some(SumRun {
        outer: shape[..first].iter().product(),
        mid: shape[first..=last].iter().product(),
        inner: shape[last + 1..].iter().product(),
        out_shape,
    }))
}

fn flat_scatter(model: &TypedModel, id: usize) -> TractResult<Option<FlatScatter>> {
    let Some(scatter) = model.nodes[id].op_as::<ScatterElements>() else {
        return Ok(None);
    };
    let add = match scatter.reduction {
        ScatterReduction::None => false,
        ScatterReduction::Add => true,
        _ => return Ok(None),
    };
    let facts = model.node_input_facts(id)?;
    let flat = |f: &TypedFact, dt: DatumType| f.rank() == 1 && f.datum_type == dt;
    let fits = facts.len() == 3
        && scatter.axis == 0
        && flat(facts[0], f32::datum_type())
        && flat(facts[1], i64::datum_type())
        && flat(facts[2], f32::datum_type())
        && facts[1].shape == facts[2].shape;
    Ok(fits.then_some(FlatScatter { add }))
}

fn row_add(model: &TypedModel, id: usize) -> TractResult<Option<RowAdd>> {
    let Some(bin) = model.nodes[id].op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if bin.1.is_some() || bin.0.name() != "Add" {
        return Ok(None);
    }
    let facts = model.node_input_facts(id)?;
    if facts.len() != 2 || facts.iter().any(|f| f.datum_type != f32::datum_type()) {
        return Ok(None);
    }
    let (Some(a), Some(b)) = (concrete(facts[0]), concrete(facts[1])) else {
        return Ok(None);
    };
    if a.contains(&0) || b.contains(&0) {
        return Ok(None);
    }
    // The row: same rank, ones on a leading run of axes, the rest equal.
    let is_row = |full: &[usize], row: &[usize]| {
        full.len() == row.len()
            && full != row
            && full
                .iter()
                .zip(row)
                .skip_while(|(_, r)| **r == 1)
                .all(|(f, r)| f == r)
    };
    Ok(if is_row(&a, &b) {
        Some(RowAdd { full: 0, shape: a })
    } else if is_row(&b, &a) {
        Some(RowAdd { full: 1, shape: b })
    } else {
        None
    })
}

fn is_elementwise(node: &TypedNode, name: &str) -> bool {
    node.op_as::<ElementWiseOp>()
        .is_some_and(|ew| ew.1.is_none() && ew.0.name() == name)
}

f32_op!(RowSoftmax, self, inputs,
    name: if self.log { "RowLogSoftmax" } else { "RowSoftmax" },
    shape: inputs[0].shape.clone());

impl EvalOp for RowSoftmax {
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let mut t = input.into_tensor();
        let len = t.shape().last().copied().unwrap_or(1).max(1);
        let mut view = t.try_as_plain_ram_mut()?;
        let data = view.as_slice_mut::<f32>()?;
        // Shift each row by its maximum, so exp never overflows. (A compare,
        // not `f32::max`, which is a libm call in wasm.)
        for row in data.chunks_exact_mut(len) {
            let max = row
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            row.iter_mut().for_each(|v| *v -= max);
        }
        let mut e = data.to_vec();
        exp_in_place(&mut e);
        for (row, e) in data.chunks_exact_mut(len).zip(e.chunks_exact(len)) {
            let sum: f32 = e.iter().sum();
            if self.log {
                let ln = sum.ln();
                row.iter_mut().for_each(|v| *v -= ln);
            } else {
                let inv = 1.0 / sum;
                row.iter_mut().zip(e).for_each(|(v, e)| *v = e * inv);
            }
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

f32_op!(FastExp, self, inputs, name: "FastExp", shape: inputs[0].shape.clone());

impl EvalOp for FastExp {
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let mut t = input.into_tensor();
        exp_in_place(t.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        Ok(tvec!(t.into_tvalue()))
    }
}

f32_op!(SumRun, self, _inputs, name: "SumRun", shape: &*self.out_shape);

impl EvalOp for SumRun {
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let x = f32s(&input)?;
        let (mid, inner) = (self.mid, self.inner);
        ensure!(x.len() == self.outer * mid * inner, "SumRun: input size");
        let mut out = vec![0f32; self.outer * inner];
        for (o, dst) in out.chunks_exact_mut(inner).enumerate() {
            let block = &x[o * mid * inner..][..mid * inner];
            if inner == 1 {
                dst[0] = block.iter().sum();
            } else {
                for row in block.chunks_exact(inner) {
                    dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
                }
            }
        }
        f32_value(&self.out_shape, out)
    }
}

f32_op!(RowAdd, self, _inputs, name: "RowAdd", shape: &*self.shape);

impl EvalOp for RowAdd {
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let row = inputs.remove(1 - self.full);
        let full = inputs.remove(0);
        let row = f32s(&row)?;
        let mut t = full.into_tensor();
        let mut view = t.try_as_plain_ram_mut()?;
        let data = view.as_slice_mut::<f32>()?;
        ensure!(
            !row.is_empty() && data.len() % row.len() == 0,
            "RowAdd: shapes"
        );
        for chunk in data.chunks_exact_mut(row.len()) {
            chunk.iter_mut().zip(row).for_each(|(d, r)| *d += r);
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

f32_op!(FlatScatter, self, inputs, name: "FlatScatter",
    shape: inputs[0].shape.clone());

impl EvalOp for FlatScatter {
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (data, indices, updates) = args_3!(inputs);
        let indices = indices.try_as_plain_ram()?.as_slice::<i64>()?;
        let updates = f32s(&updates)?;
        ensure!(indices.len() == updates.len(), "FlatScatter: lengths");
        let mut t = data.into_tensor();
        let mut view = t.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        let len = out.len() as i64;
        for (&i, &u) in indices.iter().zip(updates) {
            // ONNX: a negative index counts from the end.
            let at = if i < 0 { i + len } else { i };
            ensure!(
                (0..len).contains(&at),
                "ScatterElements index {i} outside 0..{len}"
            );
            let slot = &mut out[at as usize];
            *slot = if self.add { *slot + u } else { u };
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

/// `exp` over a slice, branch-free so the loop vectorises.
fn exp_in_place(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = exp(*x));
}

/// exp(x) = 2^k · exp(r) with k = ⌊x·log₂e⌉ and |r| ≤ ln2/2; exp(r) by its
/// Taylor series to degree 7 (error under 2e-8 relative, on top of the
/// rounding of the steps). 2^k is applied in two halves so that subnormal
/// results and results near `f32::MAX` come out right. Below −104 the result
/// is 0 and above ln(`f32::MAX`) it is +inf; NaN stays NaN.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so k · LN2_HI is exact for the k that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const LOW: f32 = -104.0;
    const HIGH: f32 = 88.722_83;
    let c = x.clamp(LOW, HIGH);
    let k = (c * LOG2E + 0.5).floor();
    let r = c - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let k = k as i32;
    let (k1, k2) = (k >> 1, k - (k >> 1));
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let y = p * pow2(k1) * pow2(k2);
    if x < LOW {
        0.0
    } else if x > HIGH {
        f32::INFINITY
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulps_of_libm() {
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x < 88.72 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-110.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        // Subnormal results, and the top of the range.
        assert!((exp(-90.0) as f64 / (-90f64).exp() - 1.0).abs() < 1e-4);
        assert!(exp(88.72).is_finite());
    }
}
