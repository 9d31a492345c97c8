//! Gradient rules for broadcasting elementwise ops: Add, Sub, Mul, Div, Neg,
//! Sum, Mean, Max.
//!
//! Every operand may have been broadcast (numpy rules), so each input's
//! gradient is reduced back to its own shape with [`Ctx::unbroadcast`].

use crate::GradError;
use crate::pb;
use crate::rules::{Ctx, Grads, a_int, input, output, unary, with_dy};

/// Reduces `g` (shaped like the node's output) to the shape of input `i`.
fn to_input(ctx: &mut Ctx, node: &pb::NodeProto, g: &str, i: usize) -> Result<String, GradError> {
    let y_s = ctx.shape(&output(ctx, node, 0)?)?;
    let x_s = ctx.shape(&input(ctx, node, i)?)?;
    ctx.unbroadcast(g, &y_s, &x_s)
        .map_err(|e| ctx.node_error(node, e.to_string()))
}

/// Gradient `dY * factor` for every input that needs one, the factor being
/// the same for all inputs.
fn spread(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>], factor: f64) -> Grads {
    with_dy(ctx, node, gy, |ctx, dy, out| {
        let scaled = ctx.scale(&dy, factor);
        for (i, x) in node.input.iter().enumerate() {
            if ctx.requires_grad(x) {
                out[i] = Some(to_input(ctx, node, &scaled, i)?);
            }
        }
        Ok(())
    })
}

/// Add, and Sum (its variadic form): every input gets `dY`, reduced to its
/// operand's shape.
pub(crate) fn sum(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    spread(ctx, node, gy, 1.0)
}

/// Mean (variadic): every input gets `dY / n`.
pub(crate) fn mean(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    let n = node.input.len().max(1) as f64;
    spread(ctx, node, gy, 1.0 / n)
}

/// Sub: `dA = dY`, `dB = -dY` (negated after the reduction, on the smaller tensor).
pub(crate) fn sub(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    let mut out = spread(ctx, node, gy, 1.0)?;
    if let Some(Some(g)) = out.get(1).cloned() {
        out[1] = Some(ctx.neg(&g));
    }
    Ok(out)
}

/// Neg: `dX = -dY`.
pub(crate) fn neg(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    unary(ctx, node, gy, |ctx, dy, _| Ok(ctx.neg(&dy)))
}

/// Signature of the gradient of one operand of a binary op, from `(dY, A, B)`.
type OperandGrad<'n> = &'n dyn Fn(&mut Ctx, &str, &str, &str) -> Result<String, GradError>;

/// The frame of the binary ops: `da` / `db` give the gradient of A / B
/// (reduced to its shape), each called only when that operand needs one.
fn binary(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
    da: OperandGrad<'_>,
    db: OperandGrad<'_>,
) -> Grads {
    with_dy(ctx, node, gy, |ctx, dy, out| {
        let a = input(ctx, node, 0)?;
        let b = input(ctx, node, 1)?;
        if ctx.requires_grad(&a) {
            out[0] = Some(da(ctx, &dy, &a, &b)?);
        }
        if ctx.requires_grad(&b) {
            out[1] = Some(db(ctx, &dy, &a, &b)?);
        }
        Ok(())
    })
}

/// Mul: `dA = dY * B`, `dB = dY * A`. `x * x` works too: the driver adds the
/// two contributions to the same tensor.
pub(crate) fn mul(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    binary(
        ctx,
        node,
        gy,
        &|ctx, dy, _, b| {
            let g = ctx.mul(dy, b);
            to_input(ctx, node, &g, 0)
        },
        &|ctx, dy, a, _| {
            let g = ctx.mul(dy, a);
            to_input(ctx, node, &g, 1)
        },
    )
}

/// Div: `dA = dY / B`, `dB = -dY * A / B^2 = -(dY * Y) / B`.
pub(crate) fn div(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    binary(
        ctx,
        node,
        gy,
        &|ctx, dy, _, b| {
            let g = ctx.emit("Div", &[dy, b], vec![]);
            to_input(ctx, node, &g, 0)
        },
        &|ctx, dy, _, b| {
            let y = output(ctx, node, 0)?;
            let t = ctx.mul(dy, &y);
            let t = ctx.emit("Div", &[&t, b], vec![]);
            let g = to_input(ctx, node, &t, 1)?;
            Ok(ctx.neg(&g))
        },
    )
}

/// Max (variadic, broadcasting): `dY` flows to the input that holds the
/// maximum. Ties go to the first such input (lowest index), so exactly one
/// input receives each element's gradient and the result is deterministic.
pub(crate) fn max(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    with_dy(ctx, node, gy, |ctx, dy, out| {
        if node.input.len() == 1 {
            if ctx.requires_grad(&node.input[0]) {
                out[0] = Some(dy);
            }
            return Ok(());
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
        Ok(())
    })
}
