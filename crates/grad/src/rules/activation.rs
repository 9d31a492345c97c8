//! Gradient rules for activations: Relu, Sigmoid, Tanh, Softmax, LogSoftmax.
//!
//! Where the derivative is a function of the output (sigmoid, tanh,
//! softmax), the rule uses the forward output rather than recomputing from
//! the input.

use crate::GradError;
use crate::pb;
use crate::rules::{Ctx, a_int, first_grad, input, output};

/// Shared prologue: the gradient of output 0 and the input name, or `None`
/// when there is nothing to do.
fn unary(
    ctx: &Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Option<(String, String)>, GradError> {
    let x = input(ctx, node, 0)?;
    match first_grad(gy) {
        Some(dy) if ctx.requires_grad(&x) => Ok(Some((dy, x))),
        _ => Ok(None),
    }
}

fn one(g: String, n: usize) -> Vec<Option<String>> {
    let mut v = vec![None; n.max(1)];
    v[0] = Some(g);
    v
}

/// The pointwise rules whose derivative is a function of the output:
/// `dX = dY * deriv(Y)`, with `deriv` emitting the graph of the derivative.
fn from_output(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
    deriv: impl FnOnce(&mut Ctx, &str) -> String,
) -> Result<Vec<Option<String>>, GradError> {
    let Some((dy, _)) = unary(ctx, node, gy)? else {
        return Ok(vec![None; node.input.len()]);
    };
    let y = output(ctx, node, 0)?;
    let d = deriv(ctx, &y);
    Ok(one(ctx.mul(&dy, &d), node.input.len()))
}

/// Relu: `dX = dY * (X > 0)` (the subgradient at 0 is 0), computed as
/// `Y > 0`, the same mask: the output is what a training forward hands over
/// anyway, while X would have to be kept (and tract could no longer fuse
/// the Relu into the product before it).
pub(crate) fn relu(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    from_output(ctx, node, gy, |ctx, y| {
        let zero = ctx.const_scalar(0.0);
        let pos = ctx.emit("Greater", &[y, &zero], vec![]);
        ctx.emit("Cast", &[&pos], vec![a_int("to", ctx.float_code() as i64)])
    })
}

/// Sigmoid: `dX = dY * Y * (1 - Y)`.
pub(crate) fn sigmoid(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    from_output(ctx, node, gy, |ctx, y| {
        let c1 = ctx.const_scalar(1.0);
        let omy = ctx.sub(&c1, y);
        ctx.mul(y, &omy)
    })
}

/// Tanh: `dX = dY * (1 - Y^2)`.
pub(crate) fn tanh(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    from_output(ctx, node, gy, |ctx, y| {
        let c1 = ctx.const_scalar(1.0);
        let y2 = ctx.mul(y, y);
        ctx.sub(&c1, &y2)
    })
}

/// The normalised `axis` attribute of Softmax/LogSoftmax (opset 13: one
/// axis, default -1).
fn softmax_axis(ctx: &Ctx, node: &pb::NodeProto, x: &str) -> Result<usize, GradError> {
    let rank = ctx.rank(x)? as i64;
    let axis = ctx.attr_int(node, "axis", -1);
    let a = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&a) {
        return Err(ctx.node_error(node, format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Softmax: `dX = Y * (dY - sum_axis(dY * Y))`.
pub(crate) fn softmax(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    let Some((dy, x)) = unary(ctx, node, gy)? else {
        return Ok(vec![None; node.input.len()]);
    };
    let axis = softmax_axis(ctx, node, &x)?;
    let y = output(ctx, node, 0)?;
    let p = ctx.mul(&dy, &y);
    let s = ctx.reduce_sum(&p, &[axis], true);
    let d = ctx.sub(&dy, &s);
    Ok(one(ctx.mul(&y, &d), node.input.len()))
}

/// LogSoftmax: `dX = dY - exp(Y) * sum_axis(dY)`.
pub(crate) fn log_softmax(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    let Some((dy, x)) = unary(ctx, node, gy)? else {
        return Ok(vec![None; node.input.len()]);
    };
    let axis = softmax_axis(ctx, node, &x)?;
    let y = output(ctx, node, 0)?;
    let s = ctx.reduce_sum(&dy, &[axis], true);
    let p = ctx.emit("Exp", &[&y], vec![]);
    let t = ctx.mul(&p, &s);
    Ok(one(ctx.sub(&dy, &t), node.input.len()))
}
