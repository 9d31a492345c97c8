//! The matrix product of pure-wasm mode, as a core wasm module.
//!
//! Why a module of its own: the sandbox compiles layer guests with NaN
//! canonicalisation, so that a NaN's bits cannot differ between machines.
//! Cranelift does that with a compare and a blend after every float
//! instruction, which halves the throughput of a product loop (see
//! docs/performance.md). This kernel is compiled by a second engine without
//! it, and canonicalises its own output instead. That is exact for a
//! product: its only float operations are `f32x4.mul` and `f32x4.add`, whose
//! non-NaN results IEEE 754 fixes bit for bit on every machine, and whose
//! NaN results are NaN exactly when an input is NaN or an operation is
//! invalid (also fixed); only the NaN's payload bits may vary, and every
//! NaN stored is the canonical one. Nothing reads a NaN's bits before that.
//!
//! Each element of C is summed in the order p = 0, 1, …, k-1 into one
//! accumulator (`acc = acc + a·b`, rounding after the product and after the
//! sum), so the result equals the plain scalar loop bit for bit, whatever
//! the tiling: the sandbox's tests check exactly that.
//!
//! Memory: the host writes A and B into this instance's memory, above the
//! module's own data and stack, and passes byte offsets. An offset out of
//! bounds traps this instance only.

#![no_std]

use core::arch::wasm32::*;

/// Rows of A per micro-tile.
const MR: usize = 8;
/// Columns of B per micro-tile, a multiple of 4 (f32x4 lanes). 8 × 8 measured
/// fastest under Cranelift of 8×8, 6×8, 4×12, 4×8 and 12×4 (about 20 GFLOP/s
/// on a 64×784×128 product here, against 16-18 for the others).
const NR: usize = 8;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    unreachable()
}

/// Floats of packing space `matmul` needs for A (one row panel) and B (all
/// column panels); the host lays out that much after C. `usize::MAX` when
/// the count does not fit this 32-bit address space.
#[unsafe(no_mangle)]
pub extern "C" fn scratch_len(k: usize, n: usize) -> usize {
    let b = n.div_ceil(NR).checked_mul(NR).and_then(|c| c.checked_mul(k));
    let a = MR.checked_mul(k);
    match (a, b) {
        (Some(a), Some(b)) => a.checked_add(b).unwrap_or(usize::MAX),
        _ => usize::MAX,
    }
}

/// C (m × n, row-major) = op(A) · op(B), op(A) m × k and op(B) k × n; A is
/// stored k × m when bit 0 of `flags` is set, B n × k when bit 1 is.
/// `scratch` holds [`scratch_len`] floats.
///
/// # Safety
/// The host lays out every range inside this instance's memory; a range it
/// got wrong traps (wasm bounds checks), it cannot reach outside.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn matmul(
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    m: usize,
    k: usize,
    n: usize,
    flags: u32,
    scratch: *mut f32,
) {
    if m == 0 || k == 0 || n == 0 {
        return;
    }
    let (a_trans, b_trans) = (flags & 1 != 0, flags & 2 != 0);
    let pack_a = scratch;
    // SAFETY (all below): offsets stay within the ranges the host laid out
    // for the stated m, k, n; see the function's contract.
    unsafe {
        let pack_b = scratch.add(MR * k);
        let panels = n.div_ceil(NR);
        for jp in 0..panels {
            pack_b_panel(b, pack_b.add(jp * k * NR), jp * NR, k, n, b_trans);
        }
        let mut tile = [0f32; MR * NR];
        for ip in 0..m.div_ceil(MR) {
            let i0 = ip * MR;
            pack_a_panel(a, pack_a, i0, m, k, a_trans);
            for jp in 0..panels {
                let j0 = jp * NR;
                micro_tile(pack_a, pack_b.add(jp * k * NR), k, &mut tile);
                let (rows, cols) = ((m - i0).min(MR), (n - j0).min(NR));
                for r in 0..rows {
                    let dst = c.add((i0 + r) * n + j0);
                    for col in 0..cols {
                        *dst.add(col) = tile[r * NR + col];
                    }
                }
            }
        }
    }
}

/// op(B)'s columns j0..j0+NR as k rows of NR floats (zeros past n).
unsafe fn pack_b_panel(b: *const f32, dst: *mut f32, j0: usize, k: usize, n: usize, b_trans: bool) {
    let cols = (n - j0).min(NR);
    unsafe {
        for p in 0..k {
            let row = dst.add(p * NR);
            for col in 0..NR {
                let v = if col >= cols {
                    0.0
                } else if b_trans {
                    *b.add((j0 + col) * k + p)
                } else {
                    *b.add(p * n + j0 + col)
                };
                *row.add(col) = v;
            }
        }
    }
}

/// op(A)'s rows i0..i0+MR as k columns of MR floats (zeros past m).
unsafe fn pack_a_panel(a: *const f32, dst: *mut f32, i0: usize, m: usize, k: usize, a_trans: bool) {
    let rows = (m - i0).min(MR);
    unsafe {
        for p in 0..k {
            let col = dst.add(p * MR);
            for r in 0..MR {
                let v = if r >= rows {
                    0.0
                } else if a_trans {
                    *a.add(p * m + i0 + r)
                } else {
                    *a.add((i0 + r) * k + p)
                };
                *col.add(r) = v;
            }
        }
    }
}

/// One MR × NR tile of C from packed panels, NaNs made canonical.
#[inline(always)]
unsafe fn micro_tile(pa: *const f32, pb: *const f32, k: usize, tile: &mut [f32; MR * NR]) {
    let zero = f32x4_splat(0.0);
    let mut acc = [[zero; NR / 4]; MR];
    unsafe {
        for p in 0..k {
            let mut bv = [zero; NR / 4];
            for (h, bv) in bv.iter_mut().enumerate() {
                *bv = v128_load(pb.add(p * NR + 4 * h) as *const v128);
            }
            let ap = pa.add(p * MR);
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = v128_load32_splat(ap.add(r) as *const u32);
                for (acc, bv) in acc.iter_mut().zip(&bv) {
                    *acc = f32x4_add(*acc, f32x4_mul(av, *bv));
                }
            }
        }
        let canonical = f32x4_splat(f32::NAN);
        for (r, acc) in acc.iter().enumerate() {
            for (h, v) in acc.iter().enumerate() {
                let v = v128_bitselect(canonical, *v, f32x4_ne(*v, *v));
                v128_store(tile.as_mut_ptr().add(r * NR + h * 4) as *mut v128, v);
            }
        }
    }
}
