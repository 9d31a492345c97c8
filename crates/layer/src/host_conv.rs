//! Host-kernel mode for convolutions: each 2-D `Conv` and `ConvTranspose`
//! becomes copies in the guest plus products on the host.
//!
//! Why a whole-op replacement: tract lowers a convolution to its own
//! image-to-column op and packed product while optimising, after the point
//! where [`crate::host_kernels`] patches products, and its packed panels are
//! tied to tract's own kernel. So a convolution is swapped, before
//! optimisation, for an op that gathers the patches in the guest (whole runs
//! of a row at a time, which compile to `memory.copy`) and hands each image's
//! product to the host. The host still sees nothing but a plain product.
//!
//! Quantised, grouped transposed, non-NCHW/OIHW and non-2-D convolutions stay
//! in tract: slower, never wrong.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, Deconv, KernelFormat, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::host_kernels::{MatMulDims, call_kernel, concrete, f32_op, f32_value, f32s};

/// One spatial axis of a convolution. Small-side position `o` and kernel tap
/// `k` meet big-side position `o · stride + k · dilation − pad`; taps landing
/// outside `0..big` read zero (conv) or are dropped (transposed conv).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Axis {
    /// The conv's input, the transposed conv's output.
    big: usize,
    /// The conv's output, the transposed conv's input.
    small: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
}

impl Axis {
    /// Which small-side positions tap `k` lands inside the big side for:
    /// `(lo, hi, first)`, with `first` the big-side position of `lo`.
    fn by_tap(&self, k: usize) -> (usize, usize, usize) {
        let off = (k * self.dilation) as isize - self.pad as isize;
        span(self.small, self.stride, off, self.big)
    }

    /// Which taps land inside the big side for small-side position `o`.
    fn by_position(&self, o: usize) -> (usize, usize, usize) {
        let off = (o * self.stride) as isize - self.pad as isize;
        span(self.kernel, self.dilation, off, self.big)
    }
}

/// The indices `i` in `0..len` with `i · step + off` inside `0..big`, as
/// `(lo, hi, lo · step + off)`; an empty range is `(0, 0, 0)`.
fn span(len: usize, step: usize, off: isize, big: usize) -> (usize, usize, usize) {
    let step = step as isize;
    let lo = if off >= 0 {
        0
    } else {
        (-off + step - 1) / step
    };
    let room = big as isize - off;
    let hi = if room <= 0 {
        0
    } else {
        ((room + step - 1) / step).min(len as isize)
    };
    if lo >= hi {
        return (0, 0, 0);
    }
    (lo as usize, hi as usize, (lo * step + off) as usize)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Geometry {
    h: Axis,
    w: Axis,
}

impl Geometry {
    fn taps(&self) -> usize {
        self.h.kernel * self.w.kernel
    }

    fn small(&self) -> usize {
        self.h.small * self.w.small
    }

    fn big(&self) -> usize {
        self.h.big * self.w.big
    }

    fn from_spec(
        spec: &PoolSpec,
        big: [usize; 2],
        small: [usize; 2],
        pads: [usize; 2],
    ) -> Geometry {
        let (strides, dilations) = (spec.strides(), spec.dilations());
        let axis = |i: usize| Axis {
            big: big[i],
            small: small[i],
            kernel: spec.kernel_shape[i],
            stride: strides[i],
            dilation: dilations[i],
            pad: pads[i],
        };
        Geometry {
            h: axis(0),
            w: axis(1),
        }
    }
}

/// A 2-D convolution: patches gathered in the guest, one host product per
/// image and group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostConv {
    geo: Geometry,
    batch: usize,
    in_ch: usize,
    out_ch: usize,
    group: usize,
    /// Patches laid out tap-major (one row per output position) rather than
    /// position-major: chosen when kernel rows are longer than output rows,
    /// as in a weight gradient, so the gathered runs stay long.
    by_position: bool,
}

/// A 2-D transposed convolution (group 1): one host product per image, then
/// the columns added into the output in the guest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostDeconv {
    geo: Geometry,
    batch: usize,
    in_ch: usize,
    out_ch: usize,
}

/// The host-kernel replacement for `op`, if it is a convolution this module
/// handles, of concrete shape, with every product within `limit`.
pub(crate) fn replacement(
    op: &dyn TypedOp,
    inputs: &[&TypedFact],
    out: &TypedFact,
    limit: u64,
) -> Option<Box<dyn TypedOp>> {
    if inputs.len() != 3
        || inputs
            .iter()
            .chain([&out])
            .any(|f| f.datum_type != f32::datum_type())
    {
        return None;
    }
    let shape = |f: &TypedFact| -> Option<[usize; 4]> { concrete(f)?.as_slice().try_into().ok() };
    let (x, w, y) = (shape(inputs[0])?, shape(inputs[1])?, shape(out)?);
    // Empty tensors stay in tract (nothing to gain, and no zero-length runs
    // to reason about here).
    if [x, w, y].iter().any(|s| s.contains(&0)) {
        return None;
    }
    let bias = inputs[2].shape.volume().to_usize().ok()?;
    if let Some(conv) = op.downcast_ref::<Conv>() {
        return conv_op(conv, x, w, y, bias, limit).map(|c| Box::new(c) as _);
    }
    if let Some(deconv) = op.downcast_ref::<Deconv>() {
        return deconv_op(deconv, x, w, y, bias, limit).map(|d| Box::new(d) as _);
    }
    None
}

fn usual_layout(spec: &PoolSpec, kernel: KernelFormat) -> bool {
    spec.data_format == DataFormat::NCHW && kernel == KernelFormat::OIHW && spec.rank() == 2
}

fn conv_op(
    conv: &Conv,
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
    bias: usize,
    limit: u64,
) -> Option<HostConv> {
    let spec = &conv.pool_spec;
    if conv.q_params.is_some() || !usual_layout(spec, conv.kernel_fmt) {
        return None;
    }
    let [batch, in_ch, h, wd] = x;
    let (group, out_ch) = (conv.group, spec.output_channels);
    if group == 0 || in_ch != spec.input_channels || in_ch % group != 0 || out_ch % group != 0 {
        return None;
    }
    let kernel = [spec.kernel_shape[0], spec.kernel_shape[1]];
    if w != [out_ch, in_ch / group, kernel[0], kernel[1]] || (bias != 1 && bias != out_ch) {
        return None;
    }
    let padded = spec.computed_padding(&[h, wd]);
    let small = [padded[0].convoluted, padded[1].convoluted];
    if y != [batch, out_ch, small[0], small[1]] {
        return None;
    }
    let pads = [padded[0].pad_before, padded[1].pad_before];
    let geo = Geometry::from_spec(spec, [h, wd], small, pads);
    let work = (out_ch / group) as u64 * ((in_ch / group) * geo.taps()) as u64 * geo.small() as u64;
    (work > 0 && work <= limit).then_some(HostConv {
        geo,
        batch,
        in_ch,
        out_ch,
        group,
        by_position: geo.w.small < geo.w.kernel,
    })
}

fn deconv_op(
    deconv: &Deconv,
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
    bias: usize,
    limit: u64,
) -> Option<HostDeconv> {
    let spec = &deconv.pool_spec;
    if deconv.group != 1 || !usual_layout(spec, deconv.kernel_format) {
        return None;
    }
    let [batch, in_ch, h, wd] = x;
    let out_ch = spec.output_channels;
    let kernel = [spec.kernel_shape[0], spec.kernel_shape[1]];
    if in_ch != spec.input_channels
        || w != [out_ch, in_ch, kernel[0], kernel[1]]
        || (bias != 1 && bias != out_ch)
    {
        return None;
    }
    let padded = spec
        .padding
        .compute_for_deconv(
            &[h, wd],
            &spec.kernel_shape,
            &spec.dilations(),
            &spec.strides(),
            &deconv.adjustments,
        )
        .ok()?;
    let big = [padded[0].deconvoluted, padded[1].deconvoluted];
    if y != [batch, out_ch, big[0], big[1]] {
        return None;
    }
    let pads = [padded[0].pad_before, padded[1].pad_before];
    let geo = Geometry::from_spec(spec, big, [h, wd], pads);
    let work = (out_ch * geo.taps()) as u64 * in_ch as u64 * geo.small() as u64;
    (work > 0 && work <= limit).then_some(HostDeconv {
        geo,
        batch,
        in_ch,
        out_ch,
    })
}

impl HostConv {
    /// N, C, H, W of the output (the small side).
    fn out_shape(&self) -> [usize; 4] {
        let g = &self.geo;
        [self.batch, self.out_ch, g.h.small, g.w.small]
    }
}

f32_op!(HostConv, self, _inputs, name: "HostConv", info: geo, shape: self.out_shape());

impl EvalOp for HostConv {
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, w, bias) = (f32s(&inputs[0])?, f32s(&inputs[1])?, f32s(&inputs[2])?);
        let g = &self.geo;
        let (cg, og) = (self.in_ch / self.group, self.out_ch / self.group);
        let k = cg * g.taps();
        let p = g.small();
        let mut out = vec![0f32; self.batch * self.out_ch * p];
        let mut col = vec![0f32; k * p];
        for n in 0..self.batch {
            for grp in 0..self.group {
                let plane = &x[(n * self.in_ch + grp * cg) * g.big()..][..cg * g.big()];
                let weights = &w[grp * og * k..][..og * k];
                // By position, the patches come out transposed.
                if self.by_position {
                    gather_by_position(g, plane, cg, &mut col);
                } else {
                    gather_by_tap(g, plane, cg, &mut col);
                }
                let dims = MatMulDims {
                    m: og,
                    k,
                    n: p,
                    a_trans: false,
                    b_trans: self.by_position,
                };
                let c = call_kernel(weights, &col, dims)?;
                out[(n * self.out_ch + grp * og) * p..][..og * p].copy_from_slice(&c);
            }
        }
        add_bias(&mut out, bias, self.out_ch, p);
        f32_value(&self.out_shape(), out)
    }
}

impl HostDeconv {
    /// N, C, H, W of the output (the big side).
    fn out_shape(&self) -> [usize; 4] {
        let g = &self.geo;
        [self.batch, self.out_ch, g.h.big, g.w.big]
    }
}

f32_op!(HostDeconv, self, _inputs, name: "HostDeconv", info: geo, shape: self.out_shape());

impl EvalOp for HostDeconv {
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, w, bias) = (f32s(&inputs[0])?, f32s(&inputs[1])?, f32s(&inputs[2])?);
        let g = &self.geo;
        let (taps, p, big) = (g.taps(), g.small(), g.big());
        // The product wants the kernel as rows (output channel, tap) by
        // columns (input channel); it is stored [out, in, tap].
        let mut a = vec![0f32; self.out_ch * taps * self.in_ch];
        for o in 0..self.out_ch {
            for i in 0..self.in_ch {
                let src = &w[(o * self.in_ch + i) * taps..][..taps];
                for (t, v) in src.iter().enumerate() {
                    a[(o * taps + t) * self.in_ch + i] = *v;
                }
            }
        }
        let mut out = vec![0f32; self.batch * self.out_ch * big];
        add_bias(&mut out, bias, self.out_ch, big);
        let dims = MatMulDims {
            m: self.out_ch * taps,
            k: self.in_ch,
            n: p,
            a_trans: false,
            b_trans: false,
        };
        for n in 0..self.batch {
            let cols = call_kernel(&a, &x[n * self.in_ch * p..][..self.in_ch * p], dims)?;
            let image = &mut out[n * self.out_ch * big..][..self.out_ch * big];
            scatter_by_tap(g, &cols, self.out_ch, image);
        }
        f32_value(&self.out_shape(), out)
    }
}

/// Patches of `channels` big-side planes as a (channel, tap) × position
/// matrix: row by row, each output row's valid run is one copy.
fn gather_by_tap(g: &Geometry, planes: &[f32], channels: usize, col: &mut [f32]) {
    let (wb, ws, p) = (g.w.big, g.w.small, g.small());
    let mut rows = col.chunks_exact_mut(p);
    for c in 0..channels {
        let plane = &planes[c * g.big()..][..g.big()];
        for ky in 0..g.h.kernel {
            let (ylo, yhi, y0) = g.h.by_tap(ky);
            for kx in 0..g.w.kernel {
                let (xlo, xhi, x0) = g.w.by_tap(kx);
                let Some(dst) = rows.next() else { return };
                dst[..ylo * ws].fill(0.0);
                dst[yhi * ws..].fill(0.0);
                for oy in ylo..yhi {
                    let src = &plane[(y0 + (oy - ylo) * g.h.stride) * wb..][..wb];
                    let d = &mut dst[oy * ws..][..ws];
                    d[..xlo].fill(0.0);
                    d[xhi..].fill(0.0);
                    copy_run(&mut d[xlo..xhi], src, x0, g.w.stride);
                }
            }
        }
    }
}

/// Patches as a position × (channel, tap) matrix: for each output position,
/// each kernel row's valid run is one copy.
fn gather_by_position(g: &Geometry, planes: &[f32], channels: usize, col: &mut [f32]) {
    let (wb, kw) = (g.w.big, g.w.kernel);
    let k = channels * g.taps();
    for oy in 0..g.h.small {
        let (kylo, kyhi, y0) = g.h.by_position(oy);
        for ox in 0..g.w.small {
            let (kxlo, kxhi, x0) = g.w.by_position(ox);
            let row = &mut col[(oy * g.w.small + ox) * k..][..k];
            for (c, dst) in row.chunks_exact_mut(g.taps()).enumerate() {
                let plane = &planes[c * g.big()..][..g.big()];
                dst[..kylo * kw].fill(0.0);
                dst[kyhi * kw..].fill(0.0);
                for ky in kylo..kyhi {
                    let src = &plane[(y0 + (ky - kylo) * g.h.dilation) * wb..][..wb];
                    let d = &mut dst[ky * kw..][..kw];
                    d[..kxlo].fill(0.0);
                    d[kxhi..].fill(0.0);
                    copy_run(&mut d[kxlo..kxhi], src, x0, g.w.dilation);
                }
            }
        }
    }
}

/// `dst[j] = src[first + j · step]`.
fn copy_run(dst: &mut [f32], src: &[f32], first: usize, step: usize) {
    if step == 1 {
        dst.copy_from_slice(&src[first..first + dst.len()]);
    } else {
        for (j, d) in dst.iter_mut().enumerate() {
            *d = src[first + j * step];
        }
    }
}

/// Adds a (channel, tap) × position matrix into `channels` big-side planes,
/// the inverse movement of [`gather_by_tap`].
fn scatter_by_tap(g: &Geometry, cols: &[f32], channels: usize, planes: &mut [f32]) {
    let (wb, ws, p) = (g.w.big, g.w.small, g.small());
    let mut rows = cols.chunks_exact(p);
    for c in 0..channels {
        let plane = &mut planes[c * g.big()..][..g.big()];
        for ky in 0..g.h.kernel {
            let (ylo, yhi, y0) = g.h.by_tap(ky);
            for kx in 0..g.w.kernel {
                let (xlo, xhi, x0) = g.w.by_tap(kx);
                let Some(src) = rows.next() else { return };
                for oy in ylo..yhi {
                    let d = &mut plane[(y0 + (oy - ylo) * g.h.stride) * wb..][..wb];
                    let s = &src[oy * ws + xlo..oy * ws + xhi];
                    if g.w.stride == 1 {
                        for (dv, sv) in d[x0..x0 + s.len()].iter_mut().zip(s) {
                            *dv += sv;
                        }
                    } else {
                        for (j, sv) in s.iter().enumerate() {
                            d[x0 + j * g.w.stride] += sv;
                        }
                    }
                }
            }
        }
    }
}

/// Adds a per-channel (or scalar) bias to NC(spatial) data.
fn add_bias(out: &mut [f32], bias: &[f32], channels: usize, plane: usize) {
    if bias.iter().all(|b| *b == 0.0) {
        return;
    }
    for (i, chunk) in out.chunks_exact_mut(plane).enumerate() {
        let b = if bias.len() == 1 {
            bias[0]
        } else {
            bias[i % channels]
        };
        chunk.iter_mut().for_each(|v| *v += b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_clip_to_the_big_side() {
        // 5 outputs, stride 1, pad 2, big 5: tap 0 covers outputs 2.. at 0.
        assert_eq!(span(5, 1, -2, 5), (2, 5, 0));
        assert_eq!(span(5, 1, 2, 5), (0, 3, 2));
        // Stride 2, offset -3: first valid i is 2 (position 1).
        assert_eq!(span(4, 2, -3, 6), (2, 4, 1));
        // Nothing inside.
        assert_eq!(span(3, 1, 9, 5), (0, 0, 0));
        assert_eq!(span(3, 1, -9, 5), (0, 0, 0));
    }
}
