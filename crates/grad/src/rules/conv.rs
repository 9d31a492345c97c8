//! Gradient rule for Conv, and the window geometry shared with the pooling
//! rules in [`super::pool`].
//!
//! # What tract 0.23.9 does with the ops these rules emit
//! Read from the tract-onnx / tract-hir / tract-core 0.23.9 sources; the rules
//! below lean on each point.
//! - **Conv**: `strides`, `dilations`, `group`, `pads` (explicit, split half
//!   begin / half end), `auto_pad` (`NOTSET`, `VALID`, `SAME_UPPER`,
//!   `SAME_LOWER`), optional bias. Explicit pads give
//!   `out = floor((in + pb + pe - ((k-1)*d + 1)) / s) + 1`. The kernel may be a
//!   runtime tensor (not only an initializer) but its shape must be concrete
//!   when the graph is typed ("Expect concrete shape for kernel"), which holds
//!   here: every shape the builder sees is static.
//! - **ConvTranspose**: `strides`, `dilations`, `group`, `pads`,
//!   `output_padding` and `output_shape` are all read. The output length is
//!   `(in-1)*s + (k-1)*d + 1 - pb - pe + output_padding`: the full transposed
//!   convolution, zero-extended by `output_padding` at the end, then cropped by
//!   `pb` in front and `pe` at the back. tract does not check
//!   `output_padding < stride`; we keep to it anyway so the graph stays valid
//!   ONNX. The weight is `(C_in, C_out/group, k...)`, which is exactly the
//!   layout of the forward Conv's weight, so dX reuses W untouched.
//! - **MaxPool** with a second output: tract computes, per (n, c) plane, the
//!   row-major offset of the max inside the *unpadded* input plane (padding is
//!   never selected; ties keep the first tap in window order), then rewrites
//!   it to ONNX's convention: flattened over the whole `N*C*H*W` tensor, with
//!   the spatial part column-major when `storage_order = 1`. Indices are i64.
//! - **ScatterElements** (and the old `Scatter`): `axis` and
//!   `reduction` = none/add/mul/min/max are all supported for every number
//!   type (f32 and f64 included); tract parses `reduction` whatever the opset.
//!   Indices are not bounds-checked beyond ndarray's own indexing, so they must
//!   come from tract itself (they do: MaxPool's Indices). **ScatterND** has the
//!   same reductions.
//! - **GatherElements**: `axis` (default 0), negative indices allowed.
//! - **AveragePool**: `kernel_shape`, `strides`, `pads`, `dilations`,
//!   `auto_pad`, `ceil_mode` and `count_include_pad` (0/1 only). With
//!   `count_include_pad = 1` the divisor is the whole kernel, except in ceil
//!   mode where the last window can run past the end padding and the overhang
//!   is not counted; with 0 it is the number of taps inside the unpadded input.
//!   MaxPool and AveragePool share ONNX pool padding: in ceil mode the last
//!   window is dropped when it would start in the end padding.
//! - **Pad** (opset >= 11): pads/constant/axes as inputs; modes constant,
//!   reflect, edge (no wrap). **Slice** (opset >= 10): starts/ends/axes/steps as
//!   inputs. **Transpose**: `perm` (reversed axes when absent).
//!
//! # Conv's gradient
//! With `Y = Conv(X, W, B)` (N, C, spatial...) and `dY`:
//! - `dX = ConvTranspose(dY, W)` with the forward strides, dilations and
//!   group. Pads and `output_padding` are chosen so the result has exactly X's
//!   shape even when `(in + pb + pe - k_field) mod s != 0`; see
//!   [`Geometry::transposed_attrs`].
//! - `dW[o, c, t] = sum_{n, j} dY[n, o, j] * Xpad[n, c, j*s + t*d]`: a Conv of
//!   X with batch and channels swapped (batch C/g, channels g*N) by dY with
//!   batch and channels swapped (O, N, out...) as kernel, with
//!   dilation = forward stride and stride = forward dilation, group = g. The
//!   result, transposed back to (O, C/g, ...), can be longer than the kernel
//!   when the forward windows did not reach the end of the input; it is then
//!   sliced.
//! - `dB = ReduceSum(dY, [0, 2, 3, ...])`.

use crate::GradError;
use crate::pb;
use crate::rules::{Ctx, Grads, a_int, a_ints};

/// Window geometry of a Conv or pool over the spatial axes, resolved to
/// explicit pads whatever `auto_pad` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Geometry {
    /// Spatial input dims.
    pub input: Vec<usize>,
    /// Spatial output dims, as the forward graph's shape inference found them.
    pub output: Vec<usize>,
    /// Kernel dims.
    pub kernel: Vec<usize>,
    /// Strides (>= 1).
    pub strides: Vec<usize>,
    /// Dilations (>= 1).
    pub dilations: Vec<usize>,
    /// Padding before each axis.
    pub pads_begin: Vec<usize>,
    /// Padding after each axis.
    pub pads_end: Vec<usize>,
}

/// Largest span (padded input, or ground covered by the windows) accepted:
/// far beyond any real tensor, and small enough that sums of a few spans
/// neither overflow `usize` on wasm32 nor leave `i64` attribute range.
const MAX_SPAN: usize = 1 << 30;

/// `(out - 1) * stride + (kernel - 1) * dilation + 1`, the ground `out`
/// windows cover, `None` on overflow (`out` and `kernel` are >= 1).
fn window_span(out: usize, stride: usize, kernel: usize, dilation: usize) -> Option<usize> {
    let starts = out.checked_sub(1)?.checked_mul(stride)?;
    let field = kernel
        .checked_sub(1)?
        .checked_mul(dilation)?
        .checked_add(1)?;
    starts.checked_add(field)
}

/// Reads an INTS attribute of `len` positive values, or `default` repeated.
fn positive_ints(
    ctx: &Ctx,
    node: &pb::NodeProto,
    name: &str,
    len: usize,
) -> Result<Vec<usize>, GradError> {
    match ctx.attr_ints(node, name) {
        None => Ok(vec![1; len]),
        Some(v) if v.len() == len && v.iter().all(|&x| x >= 1) => {
            v.iter().map(|&x| to_usize(ctx, node, x, name)).collect()
        }
        Some(v) => Err(ctx.node_error(
            node,
            format!("attribute {name} = {v:?}: want {len} values >= 1"),
        )),
    }
}

fn to_usize(ctx: &Ctx, node: &pb::NodeProto, v: i64, what: &str) -> Result<usize, GradError> {
    usize::try_from(v).map_err(|_| ctx.node_error(node, format!("{what}: bad value {v}")))
}

impl Geometry {
    /// Resolves the window attributes of `node` for an input of spatial dims
    /// `input` producing spatial dims `output` with a `kernel`-sized window.
    /// `pool` selects ONNX pool rules (ceil mode is read) over Conv rules.
    pub(super) fn resolve(
        ctx: &Ctx,
        node: &pb::NodeProto,
        input: &[usize],
        output: &[usize],
        kernel: &[usize],
    ) -> Result<Geometry, GradError> {
        let r = input.len();
        if output.len() != r || kernel.len() != r || r == 0 {
            return Err(ctx.node_error(
                node,
                format!(
                    "spatial ranks disagree: input {input:?}, output {output:?}, kernel {kernel:?}"
                ),
            ));
        }
        if kernel.contains(&0) || input.contains(&0) || output.contains(&0) {
            return Err(ctx.node_error(node, "zero-sized spatial dim or kernel"));
        }
        let strides = positive_ints(ctx, node, "strides", r)?;
        let dilations = positive_ints(ctx, node, "dilations", r)?;
        let auto_pad = ctx.attr_string(node, "auto_pad", "NOTSET");
        let (pads_begin, pads_end) = match auto_pad.as_str() {
            "NOTSET" => match ctx.attr_ints(node, "pads") {
                None => (vec![0; r], vec![0; r]),
                Some(p) if p.len() == 2 * r && p.iter().all(|&x| x >= 0) => {
                    let p = p
                        .iter()
                        .map(|&x| to_usize(ctx, node, x, "pads"))
                        .collect::<Result<Vec<_>, _>>()?;
                    (p[..r].to_vec(), p[r..].to_vec())
                }
                Some(p) => {
                    return Err(ctx.node_error(
                        node,
                        format!("attribute pads = {p:?}: want {} values >= 0", 2 * r),
                    ));
                }
            },
            "VALID" => (vec![0; r], vec![0; r]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut b = vec![0; r];
                let mut e = vec![0; r];
                for a in 0..r {
                    let out = input[a].div_ceil(strides[a]);
                    let total = window_span(out, strides[a], kernel[a], dilations[a])
                        .ok_or_else(|| ctx.node_error(node, "window attributes overflow"))?
                        .saturating_sub(input[a]);
                    let (small, big) = (total / 2, total - total / 2);
                    (b[a], e[a]) = if auto_pad == "SAME_UPPER" {
                        (small, big)
                    } else {
                        (big, small)
                    };
                }
                (b, e)
            }
            other => {
                return Err(ctx.node_error(node, format!("unsupported auto_pad {other}")));
            }
        };
        let geo = Geometry {
            input: input.to_vec(),
            output: output.to_vec(),
            kernel: kernel.to_vec(),
            strides,
            dilations,
            pads_begin,
            pads_end,
        };
        for a in 0..r {
            // Bounded spans make every later sum of these lengths safe, and
            // every window must start inside the padded input, or the shapes
            // came from somewhere else than this node's attributes.
            let covered = window_span(output[a], geo.strides[a], kernel[a], geo.dilations[a]);
            let padded = geo.pads_begin[a]
                .checked_add(input[a])
                .and_then(|p| p.checked_add(geo.pads_end[a]));
            let (Some(covered), Some(padded)) = (covered, padded) else {
                return Err(ctx.node_error(node, "window attributes overflow"));
            };
            if covered.max(padded) > MAX_SPAN {
                return Err(ctx.node_error(node, "window attributes overflow"));
            }
            if (output[a] - 1) * geo.strides[a] >= padded {
                return Err(ctx.node_error(
                    node,
                    format!("output dims {output:?} do not fit the padded input on axis {a}"),
                ));
            }
        }
        Ok(geo)
    }

    /// Number of spatial axes.
    pub(super) fn rank(&self) -> usize {
        self.input.len()
    }

    /// Span of the dilated kernel on axis `a`.
    pub(super) fn field(&self, a: usize) -> usize {
        (self.kernel[a] - 1) * self.dilations[a] + 1
    }

    /// Length, in padded coordinates, that the windows cover on axis `a`.
    fn covered(&self, a: usize) -> usize {
        (self.output[a] - 1) * self.strides[a] + self.field(a)
    }

    /// Attributes of a ConvTranspose (same kernel, strides, dilations) that
    /// maps a tensor of the output grid back onto exactly the input grid.
    ///
    /// The full transposed convolution covers `covered` padded positions;
    /// input position `h` is padded position `h + pb`. Cropping `pb` in front
    /// and `covered - pb - in` at the back, or zero-extending by
    /// `pb + in - covered` through `output_padding` when the windows stopped
    /// short of the end, lands on `in` exactly. The extension is always
    /// smaller than the stride for shapes that ONNX's formulas produce.
    pub(super) fn transposed_attrs(
        &self,
        ctx: &Ctx,
        node: &pb::NodeProto,
    ) -> Result<Vec<pb::AttributeProto>, GradError> {
        let r = self.rank();
        let mut pads = vec![0i64; 2 * r];
        let mut out_pad = vec![0i64; r];
        for a in 0..r {
            let covered = self.covered(a);
            let want_end = self.pads_begin[a] + self.input[a];
            if self.pads_begin[a] >= covered {
                return Err(ctx.node_error(
                    node,
                    format!(
                        "padding {} on axis {a} exceeds the windows' span",
                        self.pads_begin[a]
                    ),
                ));
            }
            let crop_end = covered.saturating_sub(want_end);
            let extend = want_end.saturating_sub(covered);
            if extend >= self.strides[a] {
                return Err(ctx.node_error(
                    node,
                    format!(
                        "output dims {:?} too small for input {:?}",
                        self.output, self.input
                    ),
                ));
            }
            pads[a] = self.pads_begin[a] as i64;
            pads[r + a] = crop_end as i64;
            out_pad[a] = extend as i64;
        }
        Ok(vec![
            a_ints("kernel_shape", &as_i64(&self.kernel)),
            a_ints("strides", &as_i64(&self.strides)),
            a_ints("dilations", &as_i64(&self.dilations)),
            a_ints("pads", &pads),
            a_ints("output_padding", &out_pad),
        ])
    }
}

/// `usize` dims as ONNX `i64` attribute values.
pub(super) fn as_i64(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// Conv: dX by ConvTranspose, dW by a dilated Conv, dB by ReduceSum (see the
/// module docs for the derivation).
pub(crate) fn conv(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    let n_in = node.input.len();
    let mut grads = vec![None; n_in];
    let Some(dy) = gy.first().cloned().flatten() else {
        return Ok(grads);
    };
    if !(2..=3).contains(&n_in) || node.output.is_empty() {
        return Err(ctx.node_error(node, "Conv needs inputs X, W and optionally B"));
    }
    let x_shape = ctx.shape(&node.input[0])?;
    let w_shape = ctx.shape(&node.input[1])?;
    let y_shape = ctx.shape(&node.output[0])?;
    let r = x_shape.len().saturating_sub(2);
    if r == 0 || w_shape.len() != r + 2 || y_shape.len() != r + 2 {
        return Err(ctx.node_error(
            node,
            format!("shapes X {x_shape:?}, W {w_shape:?}, Y {y_shape:?} are not a Conv's"),
        ));
    }
    let group = to_usize(ctx, node, ctx.attr_int(node, "group", 1), "group")?;
    let (n, c, o) = (x_shape[0], x_shape[1], w_shape[0]);
    if group == 0
        || !c.is_multiple_of(group)
        || !o.is_multiple_of(group)
        || w_shape[1].checked_mul(group) != Some(c)
    {
        return Err(ctx.node_error(
            node,
            format!("group {group} does not fit X {x_shape:?} and W {w_shape:?}"),
        ));
    }
    if let Some(k) = ctx.attr_ints(node, "kernel_shape")
        && k != as_i64(&w_shape[2..])
    {
        return Err(ctx.node_error(
            node,
            format!("kernel_shape {k:?} disagrees with W {w_shape:?}"),
        ));
    }
    let geo = Geometry::resolve(ctx, node, &x_shape[2..], &y_shape[2..], &w_shape[2..])?;

    if ctx.requires_grad(&node.input[0]) {
        let mut attrs = geo.transposed_attrs(ctx, node)?;
        attrs.push(a_int("group", group as i64));
        grads[0] = Some(ctx.emit("ConvTranspose", &[&dy, &node.input[1]], attrs));
    }
    if ctx.requires_grad(&node.input[1]) {
        let x = node.input[0].clone();
        grads[1] = Some(weight_grad(
            ctx,
            node,
            &geo,
            &x,
            &dy,
            (n, c, group),
            &w_shape,
        )?);
    }
    if n_in == 3 && ctx.requires_grad(&node.input[2]) {
        let axes: Vec<usize> = std::iter::once(0).chain(2..r + 2).collect();
        grads[2] = Some(ctx.reduce_sum(&dy, &axes, false));
    }
    Ok(grads)
}

/// dW as a Conv of X (batch and channels swapped) by dY (batch and channels
/// swapped), dilated by the forward stride, then brought back to W's layout
/// and cropped to W's spatial dims. `x` is the Conv's input (N, C, sp...)
/// and `(n, c, group)` its batch, channels and group; ConvTranspose's rule
/// calls it with the roles of its input and output gradient exchanged.
pub(super) fn weight_grad(
    ctx: &mut Ctx,
    node: &pb::NodeProto,
    geo: &Geometry,
    x: &str,
    dy: &str,
    (n, c, group): (usize, usize, usize),
    w_shape: &[usize],
) -> Result<String, GradError> {
    let r = geo.rank();
    let cg = c / group;
    // (N, C, sp...) -> (C/g, g*N, sp...): batch = channel within the group,
    // channels = (group, sample), group-major as Conv's `group` expects.
    let xt = if group == 1 {
        let perm: Vec<usize> = [1, 0].into_iter().chain(2..r + 2).collect();
        ctx.transpose(x, &perm)
    } else {
        let split: Vec<usize> = [n, group, cg].iter().chain(&geo.input).copied().collect();
        let xs = ctx.reshape(x, &split);
        let perm: Vec<usize> = [2, 1, 0].into_iter().chain(3..r + 3).collect();
        let xp = ctx.transpose(&xs, &perm);
        let gn = group
            .checked_mul(n)
            .ok_or_else(|| ctx.node_error(node, "batch too large"))?;
        let merged: Vec<usize> = [cg, gn].iter().chain(&geo.input).copied().collect();
        ctx.reshape(&xp, &merged)
    };
    // (N, O, out...) -> (O, N, out...): O kernels of N channels each.
    let perm: Vec<usize> = [1, 0].into_iter().chain(2..r + 2).collect();
    let dyt = ctx.transpose(dy, &perm);

    // Kernel tap k-1 of the last output position reads padded position
    // `covered - 1`: pad the end only as far as that, so no more than the
    // kernel's taps are computed unless the input extends past the windows.
    let mut pads = vec![0i64; 2 * r];
    let mut full = vec![0usize; r];
    for a in 0..r {
        let span = (geo.output[a] - 1) * geo.strides[a] + 1;
        let reach = geo.pads_begin[a] + geo.input[a];
        let need_end = geo.covered(a).saturating_sub(reach).min(geo.pads_end[a]);
        let len = reach + need_end;
        if len < span {
            return Err(ctx.node_error(node, "inconsistent Conv geometry"));
        }
        full[a] = (len - span) / geo.dilations[a] + 1;
        if full[a] < geo.kernel[a] {
            return Err(ctx.node_error(node, "inconsistent Conv geometry"));
        }
        pads[a] = geo.pads_begin[a] as i64;
        pads[r + a] = need_end as i64;
    }
    let attrs = vec![
        a_ints("kernel_shape", &as_i64(&geo.output)),
        a_ints("strides", &as_i64(&geo.dilations)),
        a_ints("dilations", &as_i64(&geo.strides)),
        a_ints("pads", &pads),
        a_int("group", group as i64),
    ];
    let dw_t = ctx.emit("Conv", &[&xt, &dyt], attrs);
    // (C/g, O, k'...) -> (O, C/g, k'...)
    let perm: Vec<usize> = [1, 0].into_iter().chain(2..r + 2).collect();
    let dw = ctx.transpose(&dw_t, &perm);
    if full == w_shape[2..] {
        return Ok(dw);
    }
    let axes: Vec<i64> = (2..r as i64 + 2).collect();
    let starts = ctx.const_i64(&vec![0; r], &[r]);
    let ends = ctx.const_i64(&as_i64(&w_shape[2..]), &[r]);
    let axes = ctx.const_i64(&axes, &[r]);
    Ok(ctx.emit("Slice", &[&dw, &starts, &ends, &axes], vec![]))
}
