//! Gradient rules for shape-only ops: Flatten, Reshape, Squeeze, Unsqueeze,
//! Identity, Concat.

use crate::pb;
use crate::rules::{Ctx, Grads, input, unary, with_dy};

/// Flatten, Reshape, Squeeze, Unsqueeze: the data is unchanged, only its
/// shape, so `dX = Reshape(dY, shape(X))`. Shape/axes inputs get no gradient.
pub(crate) fn reshape_like(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    unary(ctx, node, gy, |ctx, dy, x| {
        let s = ctx.shape(&x)?;
        Ok(ctx.reshape(&dy, &s))
    })
}

/// Identity: `dX = dY`.
pub(crate) fn identity(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    unary(ctx, node, gy, |_, dy, _| Ok(dy))
}

/// Concat: each input's gradient is its slice of `dY` along the axis.
pub(crate) fn concat(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    with_dy(ctx, node, gy, |ctx, dy, out| {
        let first = input(ctx, node, 0)?;
        let rank = ctx.rank(&first)? as i64;
        let axis = ctx.attr_int(node, "axis", i64::MIN);
        if axis == i64::MIN {
            return Err(ctx.node_error(node, "missing the required `axis` attribute"));
        }
        let a = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&a) {
            return Err(
                ctx.node_error(node, format!("axis {axis} is out of range for rank {rank}"))
            );
        }
        let a = a as usize;
        if node.input.len() == 1 {
            if ctx.requires_grad(&first) {
                out[0] = Some(dy);
            }
            return Ok(());
        }
        let mut offset = 0usize;
        for (i, x) in node.input.iter().enumerate() {
            let len = *ctx
                .shape(x)?
                .get(a)
                .ok_or_else(|| ctx.node_error(node, format!("input `{x}` has rank < {a}")))?;
            if ctx.requires_grad(x) {
                let starts = ctx.const_i64(&[offset as i64], &[1]);
                let ends = ctx.const_i64(&[(offset + len) as i64], &[1]);
                let axes = ctx.const_i64(&[a as i64], &[1]);
                out[i] = Some(ctx.emit("Slice", &[&dy, &starts, &ends, &axes], vec![]));
            }
            offset += len;
        }
        Ok(())
    })
}
