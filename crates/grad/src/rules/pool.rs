//! Gradient rules for MaxPool and AveragePool.
//!
//! What tract 0.23.9 does with the ops emitted here (MaxPool's Indices
//! convention, ScatterElements reductions, AveragePool divisors, ceil mode,
//! ConvTranspose geometry) is written down at the top of [`super::conv`],
//! next to the window geometry both files share.
//!
//! # MaxPool
//! The backward graph recomputes the pool with its second output, Indices
//! (row-major storage order, whatever the forward node asked for), so the
//! argmax of every window is known; each `dY` value is then added at its
//! argmax with a ScatterElements over the flattened input. `reduction = "add"`
//! matters: with overlapping windows one input can be the max of several
//! windows and must receive the sum of their gradients. tract supports the
//! reduction (the attribute is ONNX opset 16; tract reads it at any opset).
//! Disjoint windows (stride >= dilated kernel on every axis, as in LeNet's
//! 2x2/2 pools) cannot collide, so they get a plain scatter, valid at any
//! opset.
//! Padding is never an argmax in tract, so no index points outside X.
//!
//! # AveragePool
//! `Y[o] = sum_{t in window(o)} X[t] / div(o)`, so `dX = ConvTranspose(dY /
//! div)` with a kernel of ones, one per channel (group = C), on the forward
//! window geometry. `div(o)` depends only on the spatial position: the kernel
//! size, or with `count_include_pad = 0` the number of taps inside X, or in
//! ceil mode the taps inside the padded input. It is computed at build time
//! exactly as tract computes it and folded into a constant.

use crate::GradError;
use crate::pb;
use crate::proto::numel;
use crate::rules::conv::Geometry;
use crate::rules::{Ctx, Grads, a_int, a_string, with_dy};

/// Input and output shapes of a pool node, checked to be `(N, C, spatial...)`
/// with the same N and C, plus the window geometry.
fn pool_geometry(
    ctx: &Ctx,
    node: &pb::NodeProto,
) -> Result<(Vec<usize>, Vec<usize>, Geometry), GradError> {
    let (Some(x), Some(y)) = (node.input.first(), node.output.first()) else {
        return Err(ctx.node_error(node, "pool node without input or output"));
    };
    let x_shape = ctx.shape(x)?;
    let y_shape = ctx.shape(y)?;
    if x_shape.len() < 3 || y_shape.len() != x_shape.len() || x_shape[..2] != y_shape[..2] {
        return Err(ctx.node_error(
            node,
            format!("shapes X {x_shape:?} and Y {y_shape:?} are not a pool's (N, C, spatial...)"),
        ));
    }
    let kernel = ctx
        .attr_ints(node, "kernel_shape")
        .ok_or_else(|| ctx.node_error(node, "kernel_shape attribute is required"))?;
    let kernel = kernel
        .iter()
        .map(|&k| usize::try_from(k).map_err(|_| ctx.node_error(node, "negative kernel_shape")))
        .collect::<Result<Vec<_>, _>>()?;
    let geo = Geometry::resolve(ctx, node, &x_shape[2..], &y_shape[2..], &kernel)?;
    Ok((x_shape, y_shape, geo))
}

/// Element count of a shape, as an error naming the node on overflow.
fn count(ctx: &Ctx, node: &pb::NodeProto, shape: &[usize]) -> Result<usize, GradError> {
    numel(shape).ok_or_else(|| ctx.node_error(node, format!("shape {shape:?} is too large")))
}

/// MaxPool: routes each `dY` value to its window's argmax (Indices output of
/// a recomputed MaxPool + ScatterElements with `reduction = "add"`).
pub(crate) fn max_pool(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    pool_rule(ctx, node, gy, |ctx, dy| max_pool_dx(ctx, node, dy))
}

/// dX of MaxPool (see [`max_pool`]).
fn max_pool_dx(ctx: &mut Ctx, node: &pb::NodeProto, dy: String) -> Result<String, GradError> {
    let (x_shape, y_shape, geo) = pool_geometry(ctx, node)?;
    let x_len = count(ctx, node, &x_shape)?;
    let y_len = count(ctx, node, &y_shape)?;

    // Indices must be row-major to index the flattened X directly. The
    // forward node's own Indices output (the backward graph holds every
    // forward node) does when it has the default storage order; otherwise
    // pool again with the same window attributes.
    let own = node.output.get(1).filter(|i| !i.is_empty());
    let indices = match own {
        Some(i) if ctx.attr_int(node, "storage_order", 0) == 0 => i.clone(),
        _ => {
            let attrs: Vec<pb::AttributeProto> = node
                .attribute
                .iter()
                .filter(|a| a.name != "storage_order")
                .cloned()
                .collect();
            ctx.emit_n("MaxPool", &[&node.input[0]], 2, attrs)
                .swap_remove(1)
        }
    };
    let indices = ctx.reshape(&indices, &[y_len]);
    let updates = ctx.reshape(&dy, &[y_len]);
    let zeros = ctx.zeros(&[x_len])?;
    // Disjoint windows have distinct argmaxes: a plain scatter suffices and
    // keeps the graph valid ONNX below opset 16, where `reduction` appeared.
    let overlapping = (0..geo.rank()).any(|a| geo.strides[a] < geo.field(a));
    let mut attrs = vec![a_int("axis", 0)];
    if overlapping {
        attrs.push(a_string("reduction", "add"));
    }
    let scattered = ctx.emit("ScatterElements", &[&zeros, &indices, &updates], attrs);
    Ok(ctx.reshape(&scattered, &x_shape))
}

/// The frame of the pool rules: a pool has one input, `dx(ctx, dY)` gives
/// its gradient when a gradient flows and the input needs one.
fn pool_rule(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    gy: &[Option<String>],
    dx: impl FnOnce(&mut Ctx, String) -> Result<String, GradError>,
) -> Grads {
    with_dy(ctx, node, gy, |ctx, dy, out| {
        if node.input.len() == 1 && ctx.requires_grad(&node.input[0]) {
            out[0] = Some(dx(ctx, dy)?);
        }
        Ok(())
    })
}

/// Number of taps `t` in `0..k` with `start + t * d` in `lo..hi`, in closed
/// form so a huge kernel costs nothing at build time.
fn taps_in(start: usize, d: usize, k: usize, lo: usize, hi: usize) -> usize {
    // First tap at or after `lo`, first tap at or after `hi`, clamped to 0..=k.
    let first_at = |bound: usize| bound.saturating_sub(start).div_ceil(d).min(k);
    first_at(hi).saturating_sub(first_at(lo))
}

/// Per output position on axis `a`, how many kernel taps the AveragePool
/// divides by (see the module docs).
fn divisors_on_axis(geo: &Geometry, a: usize, include_pad: bool, ceil: bool) -> Vec<usize> {
    let (pb, len, s, d, k) = (
        geo.pads_begin[a],
        geo.input[a],
        geo.strides[a],
        geo.dilations[a],
        geo.kernel[a],
    );
    let padded = pb + len + geo.pads_end[a];
    (0..geo.output[a])
        .map(|o| {
            if !include_pad {
                taps_in(o * s, d, k, pb, pb + len)
            } else if ceil {
                taps_in(o * s, d, k, 0, padded)
            } else {
                k
            }
        })
        .collect()
}

/// Largest divisor grid (spatial output positions) folded into a constant.
const MAX_GRID: usize = 1 << 24;

/// AveragePool: `dX = ConvTranspose(dY / div, ones)` per channel.
pub(crate) fn average_pool(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    pool_rule(ctx, node, gy, |ctx, dy| average_pool_dx(ctx, node, dy))
}

/// dX of AveragePool (see [`average_pool`]).
fn average_pool_dx(ctx: &mut Ctx, node: &pb::NodeProto, dy: String) -> Result<String, GradError> {
    let (x_shape, _y_shape, geo) = pool_geometry(ctx, node)?;
    let include_pad = match ctx.attr_int(node, "count_include_pad", 0) {
        0 => false,
        1 => true,
        v => return Err(ctx.node_error(node, format!("count_include_pad = {v}: want 0 or 1"))),
    };
    let ceil = match ctx.attr_int(node, "ceil_mode", 0) {
        0 => false,
        1 => true,
        v => return Err(ctx.node_error(node, format!("ceil_mode = {v}: want 0 or 1"))),
    };
    // tract applies ceil mode only with explicit (NOTSET) padding.
    let ceil = ceil && ctx.attr_string(node, "auto_pad", "NOTSET") == "NOTSET";

    let r = geo.rank();
    let per_axis: Vec<Vec<usize>> = (0..r)
        .map(|a| divisors_on_axis(&geo, a, include_pad, ceil))
        .collect();
    let first = per_axis
        .iter()
        .map(|v| v.first().copied().unwrap_or(1))
        .product::<usize>();
    let uniform = per_axis
        .iter()
        .all(|v| v.iter().all(|&x| Some(&x) == v.first()));
    let scaled = if uniform {
        ctx.scale(&dy, recip(first))
    } else {
        // Reciprocal divisors over the spatial output grid, row-major.
        let n_out = count(ctx, node, &geo.output)?;
        if n_out > MAX_GRID {
            return Err(ctx.node_error(node, format!("output grid {:?} is too large", geo.output)));
        }
        let mut recips = Vec::with_capacity(n_out);
        let mut pos = vec![0usize; r];
        for _ in 0..n_out {
            recips.push(recip((0..r).map(|a| per_axis[a][pos[a]]).product()));
            for a in (0..r).rev() {
                pos[a] += 1;
                if pos[a] < geo.output[a] {
                    break;
                }
                pos[a] = 0;
            }
        }
        let shape: Vec<usize> = [1, 1].iter().chain(&geo.output).copied().collect();
        let k = ctx.const_tensor(&recips, &shape);
        ctx.mul(&dy, &k)
    };

    let channels = x_shape[1];
    let kernel_len = count(ctx, node, &geo.kernel)?;
    let ones_len = channels
        .checked_mul(kernel_len)
        .ok_or_else(|| ctx.node_error(node, "kernel too large"))?;
    let ones_shape: Vec<usize> = [channels, 1].iter().chain(&geo.kernel).copied().collect();
    let ones = ctx.const_tensor(&vec![1.0; ones_len], &ones_shape);
    let mut attrs = geo.transposed_attrs(ctx, node)?;
    attrs.push(a_int("group", channels as i64));
    Ok(ctx.emit("ConvTranspose", &[&scaled, &ones], attrs))
}

/// `1 / n`, or 0 for a window with no taps inside X: such an output takes
/// nothing from X, so no gradient flows back through it.
fn recip(n: usize) -> f64 {
    if n == 0 { 0.0 } else { 1.0 / n as f64 }
}
