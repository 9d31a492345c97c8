//! Gradient rules for broadcasting elementwise ops: Add, Sub, Mul, Div, Neg,
//! Sum, Mean, Max.
//!
//! Every operand may have been broadcast (numpy rules), so each input's
//! gradient is reduced back to its own shape with [`Ctx::unbroadcast`].

use crate::GradError;
use crate::pb;
use crate::rules::{Ctx, a_int, first_grad, input, output};

/// Reduces `g` (shaped like the node's output) to the shape of input `i`.
fn to_input(ctx: &mut Ctx, node: &pb::NodeProto, g: &str, i: usize) -> Result<String, GradError> {
    let y_s = ctx.shape(&output(ctx, node, 0)?)?;
    let x_s = ctx.shape(&input(ctx, node, i)?)?;
    ctx.unbroadcast(g, &y_s, &x_s)
        .map_err(|e| ctx.node_error(node, e.to_string()))
}

/// Gradient `dY * factor_i` for every input that needs one, where the
/// factor is the same for all inputs (Add, Sum, Mean).
fn spread(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
    factor: f64,
) -> Result<Vec<Option<String>>, GradError> {
    let mut out = vec![None; node.input.len()];
    let Some(dy) = first_grad(gy) else {
        return Ok(out);
    };
    let scaled = ctx.scale(&dy, factor);
    for (i, x) in node.input.iter().enumerate() {
        if ctx.requires_grad(x) {
            out[i] = Some(to_input(ctx, node, &scaled, i)?);
        }
    }
    Ok(out)
}

/// Add: `dA = dY`, `dB = dY`, each reduced to its operand's shape.
pub(crate) fn add(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    spread(ctx, node, gy, 1.0)
}

/// Sum (variadic): every input gets `dY`.
pub(crate) fn sum(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    spread(ctx, node, gy, 1.0)
}

/// Mean (variadic): every input gets `dY / n`.
pub(crate) fn mean(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    let n = node.input.len().max(1) as f64;
    spread(ctx, node, gy, 1.0 / n)
}

/// Sub: `dA = dY`, `dB = -dY` (negated after the reduction, on the smaller tensor).
pub(crate) fn sub(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    let mut out = spread(ctx, node, gy, 1.0)?;
    if let Some(Some(g)) = out.get(1).cloned() {
        out[1] = Some(ctx.neg(&g));
    }
    Ok(out)
}

/// Neg: `dX = -dY`.
pub(crate) fn neg(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    let mut out = vec![None; node.input.len()];
    if let Some(dy) = first_grad(gy)
        && ctx.requires_grad(&input(ctx, node, 0)?)
    {
        out[0] = Some(ctx.neg(&dy));
    }
    Ok(out)
}

/// Mul: `dA = dY * B`, `dB = dY * A`. `x * x` works too: the driver adds the
/// two contributions to the same tensor.
pub(crate) fn mul(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    let mut out = vec![None; node.input.len()];
    let Some(dy) = first_grad(gy) else {
        return Ok(out);
    };
    let a = input(ctx, node, 0)?;
    let b = input(ctx, node, 1)?;
    if ctx.requires_grad(&a) {
        let g = ctx.mul(&dy, &b);
        out[0] = Some(to_input(ctx, node, &g, 0)?);
    }
    if ctx.requires_grad(&b) {
        let g = ctx.mul(&dy, &a);
        out[1] = Some(to_input(ctx, node, &g, 1)?);
    }
    Ok(out)
}

/// Div: `dA = dY / B`, `dB = -dY * A / B^2 = -(dY * Y) / B`.
pub(crate) fn div(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    let mut out = vec![None; node.input.len()];
    let Some(dy) = first_grad(gy) else {
        return Ok(out);
    };
    let a = input(ctx, node, 0)?;
    let b = input(ctx, node, 1)?;
    if ctx.requires_grad(&a) {
        let g = ctx.emit("Div", &[&dy, &b], vec![]);
        out[0] = Some(to_input(ctx, node, &g, 0)?);
    }
    if ctx.requires_grad(&b) {
        let y = output(ctx, node, 0)?;
        let t = ctx.mul(&dy, &y);
        let t = ctx.emit("Div", &[&t, &b], vec![]);
        let g = to_input(ctx, node, &t, 1)?;
        out[1] = Some(ctx.neg(&g));
    }
    Ok(out)
}

/// Max (variadic, broadcasting): `dY` flows to the input that holds the
/// maximum. Ties go to the first such input (lowest index), so exactly one
/// input receives each element's gradient and the result is deterministic.
pub(crate) fn max(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
) -> Result<Vec<Option<String>>, GradError> {
    let mut out = vec![None; node.input.len()];
    let Some(dy) = first_grad(gy) else {
        return Ok(out);
    };
    if node.input.len() == 1 {
        if ctx.requires_grad(&node.input[0]) {
            out[0] = Some(dy);
        }
        return Ok(out);
    }
    let y = output(ctx, node, 0)?;
    // `taken`: elements already claimed by an earlier input.
    let mut taken: Option<String> = None;
    let last = node.input.len() - 1;
    for (i, x) in node.input.iter().enumerate() {
        let need = ctx.requires_grad(x);
        if !need && i == last {
            break;
        }
        let eq = ctx.emit("Equal", &[x, &y], vec![]);
        let mine = match &taken {
            None => eq.clone(),
            Some(t) => {
                let free = ctx.emit("Not", &[t], vec![]);
                ctx.emit("And", &[&eq, &free], vec![])
            }
        };
        if need {
            let m = ctx.emit("Cast", &[&mine], vec![a_int("to", ctx.float_code() as i64)]);
            let g = ctx.mul(&dy, &m);
            out[i] = Some(to_input(ctx, node, &g, i)?);
        }
        if i < last {
            taken = Some(match taken {
                None => eq,
                Some(t) => ctx.emit("Or", &[&t, &eq], vec![]),
            });
        }
    }
    Ok(out)
}
