//! Gradient rule for ConvTranspose, which the leakage audit's inverse
//! network (a decoder of transposed convolutions) trains through.
//!
//! `Y = ConvTranspose(X, W, B)` with X `(N, C_in, in...)`, W
//! `(C_in, C_out/g, k...)` and Y `(N, C_out, out...)` writes
//! `X[n, c, i] · W[c, o, t]` to output position `i·s + t·d − pb`: it is the
//! adjoint of the Conv from Y's grid to X's grid with the same kernel,
//! strides, dilations, pads and group (see [`super::conv`]'s Conv rule,
//! which uses that adjoint the other way round). Hence:
//! - `dX = Conv(dY, W)` with the forward's strides, dilations, pads and
//!   group. Its length is `floor((out + pb + pe − field) / s) + 1 =
//!   in + floor(output_padding / s)`, which is `in` since
//!   `output_padding < s` (checked).
//! - `dW[c, o, t] = Σ_{n, i} X[n, c, i] · dY[n, o, i·s + t·d − pb]`: the
//!   weight gradient of that Conv with dY as its input and X as its output
//!   gradient, so [`super::conv::weight_grad`] computes it with the two
//!   roles exchanged.
//! - `dB = ReduceSum(dY, [0, 2, 3, ...])`.
//!
//! Only explicit pads (`auto_pad` `NOTSET` or `VALID`) are accepted, and no
//! `output_shape` attribute: ONNX derives ConvTranspose's pads for the
//! other forms by rules of its own, and the builders in this project
//! (grad's rules, the audit's decoder) always write explicit pads.

use crate::GradError;
use crate::pb;
use crate::rules::conv::{Geometry, as_i64, weight_grad};
use crate::rules::{Ctx, Grads, a_int, a_ints};

/// Shapes of one ConvTranspose node: X, W, Y, spatial rank and group.
struct Shapes {
    x: Vec<usize>,
    w: Vec<usize>,
    y: Vec<usize>,
    group: usize,
}

/// Reads and checks the node's shapes and the attributes this rule
/// supports.
fn shapes(ctx: &Ctx, node: &pb::NodeProto) -> Result<Shapes, GradError> {
    let n_in = node.input.len();
    if !(2..=3).contains(&n_in) || node.output.is_empty() {
        return Err(ctx.node_error(node, "ConvTranspose needs inputs X, W and optionally B"));
    }
    let x = ctx.shape(&node.input[0])?;
    let w = ctx.shape(&node.input[1])?;
    let y = ctx.shape(&node.output[0])?;
    let r = x.len().saturating_sub(2);
    if r == 0 || w.len() != r + 2 || y.len() != r + 2 {
        return Err(ctx.node_error(
            node,
            format!("shapes X {x:?}, W {w:?}, Y {y:?} are not a ConvTranspose's"),
        ));
    }
    let group = usize::try_from(ctx.attr_int(node, "group", 1))
        .map_err(|_| ctx.node_error(node, "bad group"))?;
    if group == 0 || w[0] != x[1] || !x[1].is_multiple_of(group) || w[1] * group != y[1] {
        return Err(ctx.node_error(
            node,
            format!("group {group} does not fit X {x:?}, W {w:?} and Y {y:?}"),
        ));
    }
    let auto_pad = ctx.attr_string(node, "auto_pad", "NOTSET");
    if auto_pad != "NOTSET" && auto_pad != "VALID" {
        return Err(ctx.node_error(
            node,
            format!("auto_pad {auto_pad}: only explicit pads are supported"),
        ));
    }
    if ctx.attr_ints(node, "output_shape").is_some() {
        return Err(ctx.node_error(node, "output_shape: only explicit pads are supported"));
    }
    if let Some(k) = ctx.attr_ints(node, "kernel_shape")
        && k != as_i64(&w[2..])
    {
        return Err(ctx.node_error(node, format!("kernel_shape {k:?} disagrees with W {w:?}")));
    }
    Ok(Shapes { x, w, y, group })
}

/// ConvTranspose: dX by a Conv with the forward attributes, dW by Conv's
/// weight gradient with input and output exchanged, dB by ReduceSum (see
/// the module docs).
pub(crate) fn conv_transpose(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    let mut grads = vec![None; node.input.len()];
    let Some(dy) = gy.first().cloned().flatten() else {
        return Ok(grads);
    };
    let s = shapes(ctx, node)?;
    let r = s.x.len() - 2;
    // The adjoint Conv reads Y's grid and writes X's.
    let geo = Geometry::resolve(ctx, node, &s.y[2..], &s.x[2..], &s.w[2..])?;
    let out_pad = ctx.attr_ints(node, "output_padding").unwrap_or(vec![0; r]);
    let fits = out_pad.len() == r
        && (0..r).all(|a| out_pad[a] >= 0 && (out_pad[a] as usize) < geo.strides[a]);
    if !fits {
        return Err(ctx.node_error(
            node,
            format!("output_padding {out_pad:?}: want {r} values in [0, stride)"),
        ));
    }
    if ctx.requires_grad(&node.input[0]) {
        let pads: Vec<usize> = geo
            .pads_begin
            .iter()
            .chain(&geo.pads_end)
            .copied()
            .collect();
        let attrs = vec![
            a_ints("kernel_shape", &as_i64(&geo.kernel)),
            a_ints("strides", &as_i64(&geo.strides)),
            a_ints("dilations", &as_i64(&geo.dilations)),
            a_ints("pads", &as_i64(&pads)),
            a_int("group", s.group as i64),
        ];
        grads[0] = Some(ctx.emit("Conv", &[&dy, &node.input[1]], attrs));
    }
    if ctx.requires_grad(&node.input[1]) {
        let x = node.input[0].clone();
        // The adjoint Conv's input is dY (N, C_out, out...), its output
        // gradient is X: exchange the roles.
        let dims = (s.y[0], s.y[1], s.group);
        grads[1] = Some(weight_grad(ctx, node, &geo, &dy, &x, dims, &s.w)?);
    }
    if node.input.len() == 3 && ctx.requires_grad(&node.input[2]) {
        let axes: Vec<usize> = std::iter::once(0).chain(2..r + 2).collect();
        grads[2] = Some(ctx.reduce_sum(&dy, &axes, false));
    }
    Ok(grads)
}
