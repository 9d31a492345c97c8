//! Gradient rules for activations: Relu, Sigmoid, Tanh, Softmax, LogSoftmax.
//!
//! Where the derivative is a function of the output (sigmoid, tanh,
//! softmax), the rule uses the forward output rather than recomputing from
//! the input.

use crate::GradError;
use crate::pb;
use crate::rules::{Ctx, Grads, a_int, output, unary};

/// The pointwise rules whose derivative is a function of the output:
/// `dX = dY * deriv(Y)`, with `deriv` emitting the graph of the derivative.
fn from_output(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
    deriv: impl FnOnce(&mut Ctx, &str) -> String,
) -> Grads {
    unary(ctx, node, gy, |ctx, dy, _| {
        let y = output(ctx, node, 0)?;
        let d = deriv(ctx, &y);
        Ok(ctx.mul(&dy, &d))
    })
}

/// Relu: `dX = dY * (X > 0)` (the subgradient at 0 is 0), computed as
/// `Y > 0`, the same mask: the output is what a training forward hands over
/// anyway, while X would have to be kept (and tract could no longer fuse
/// the Relu into the product before it).
pub(crate) fn relu(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    from_output(ctx, node, gy, |ctx, y| {
        let zero = ctx.const_scalar(0.0);
        let pos = ctx.emit("Greater", &[y, &zero], vec![]);
        ctx.emit("Cast", &[&pos], vec![a_int("to", ctx.float_code() as i64)])
    })
}

/// Sigmoid: `dX = dY * Y * (1 - Y)`.
pub(crate) fn sigmoid(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    from_output(ctx, node, gy, |ctx, y| {
        let c1 = ctx.const_scalar(1.0);
        let omy = ctx.sub(&c1, y);
        ctx.mul(y, &omy)
    })
}

/// Tanh: `dX = dY * (1 - Y^2)`.
pub(crate) fn tanh(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
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

/// The rules over a Softmax-like output along its axis: `dx(ctx, dY, Y,
/// axis)` gives dX.
fn along_axis(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
    dx: impl FnOnce(&mut Ctx, &str, &str, usize) -> String,
) -> Grads {
    unary(ctx, node, gy, |ctx, dy, x| {
        let axis = softmax_axis(ctx, node, &x)?;
        let y = output(ctx, node, 0)?;
        Ok(dx(ctx, &dy, &y, axis))
    })
}

/// Softmax: `dX = Y * (dY - sum_axis(dY * Y))`.
pub(crate) fn softmax(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    along_axis(ctx, node, gy, |ctx, dy, y, axis| {
        let p = ctx.mul(dy, y);
        let s = ctx.reduce_sum(&p, &[axis], true);
        let d = ctx.sub(dy, &s);
        ctx.mul(y, &d)
    })
}

/// LogSoftmax: `dX = dY - exp(Y) * sum_axis(dY)`.
pub(crate) fn log_softmax(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    along_axis(ctx, node, gy, |ctx, dy, y, axis| {
        let s = ctx.reduce_sum(dy, &[axis], true);
        let p = ctx.emit("Exp", &[y], vec![]);
        let t = ctx.mul(&p, &s);
        ctx.sub(dy, &t)
    })
}
