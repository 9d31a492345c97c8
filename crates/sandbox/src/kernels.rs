//! The host side of `mixnn:layer/kernels`: the matrix products a guest
//! hands out, in both modes.
//!
//! The guest keeps its graph, parameters and control flow; it hands the
//! host two operands that stay in its own linear memory. wasmtime checks
//! that each list lies inside that memory before the host sees it, and this
//! module checks everything else before touching a number: dimensions
//! against list lengths, the work of one call against [`MATMUL_LIMIT`], the
//! result against the instance's memory cap.
//!
//! In host-kernel mode the product runs natively, in row chunks on this
//! thread (single-threaded, so deterministic on one machine), and the call's
//! CPU deadline is checked between chunks: a host call cannot outlive the
//! deadline the epoch ticker enforces on wasm code. In pure-wasm mode it
//! runs in the layer's instance of the wasm product kernel
//! ([`crate::wasm_kernel`]), under the same deadline and memory cap.
//!
//! Failures the guest may cause (bad arguments) are returned to it as
//! errors; only a passed deadline traps, exactly like the epoch deadline.

use std::time::Instant;

use wasmtime::component::{Linker, WasmList};
use wasmtime::{StoreContextMut, Trap};

use crate::guest::GuestState;
use crate::wasm_kernel::KernelInstance;

/// Largest m · k · n one call computes (about 0.1 s on one core here).
pub const MATMUL_LIMIT: u64 = 1 << 32;
/// Multiply-adds per chunk between two deadline checks (about 0.3 ms).
const CHUNK_WORK: u64 = 1 << 24;

#[cfg(not(target_endian = "little"))]
compile_error!("host kernels read f32 operands in place from little-endian wasm memory");

/// Why a product was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// One of m, k, n is zero.
    #[error("a dimension is zero (m={m}, k={k}, n={n})")]
    Empty {
        /// Rows of op(A) and of the result.
        m: usize,
        /// Columns of op(A), rows of op(B): the dimension summed over.
        k: usize,
        /// Columns of op(B) and of the result.
        n: usize,
    },
    /// m · k · n exceeds [`MATMUL_LIMIT`] (or overflows `u64`).
    #[error("{m}·{k}·{n} multiply-adds exceed the host's limit of {MATMUL_LIMIT} per call")]
    TooMuchWork {
        /// Rows of op(A) and of the result.
        m: usize,
        /// Columns of op(A), rows of op(B): the dimension summed over.
        k: usize,
        /// Columns of op(B) and of the result.
        n: usize,
    },
    /// The m × n result would not fit in the instance's memory cap (or, in
    /// pure-wasm mode, in the kernel's 32-bit address space).
    #[error("a {m}×{n} result exceeds the instance's memory cap")]
    TooLarge {
        /// Rows of the result.
        m: usize,
        /// Columns of the result.
        n: usize,
    },
    /// An operand's length does not match the dimensions.
    #[error("operand {which} holds {got} values, the dimensions need {want}")]
    Length {
        /// Which operand: `'A'` or `'B'`.
        which: char,
        /// Values the guest passed.
        got: usize,
        /// Values the dimensions call for (m · k for A, k · n for B).
        want: usize,
    },
    /// Pure-wasm mode: the product kernel's memory would pass what the
    /// layer's memory cap leaves beside the guest's own memories.
    #[error(
        "the product kernel needs {bytes} bytes of memory, more than the layer's memory cap leaves"
    )]
    KernelMemory {
        /// Linear memory, in bytes, the kernel would need to hold.
        bytes: usize,
    },
    /// The call's CPU deadline passed while the product ran; the only
    /// failure that traps the guest rather than being returned to it.
    #[error("the call's CPU deadline passed")]
    Deadline,
    /// The wasm product kernel could not be instantiated or trapped; the
    /// message is wasmtime's.
    #[error("the wasm product kernel failed: {0}")]
    Failed(String),
}

/// The shape of one product as the guest states it (see `wit/layer.wit`).
#[derive(Clone, Copy, Debug)]
pub struct Product {
    /// Rows of op(A) and of the result.
    pub m: usize,
    /// Columns of op(A), rows of op(B): the dimension summed over.
    pub k: usize,
    /// Columns of op(B) and of the result.
    pub n: usize,
    /// A is stored transposed (k × m, row-major), so op(A) = Aᵀ.
    pub a_trans: bool,
    /// B is stored transposed (n × k, row-major), so op(B) = Bᵀ.
    pub b_trans: bool,
}

/// Checks `p` against the operands' lengths and the limits; returns the
/// product's work (m · k · n).
pub fn check(
    a_len: usize,
    b_len: usize,
    p: Product,
    max_result_values: usize,
) -> Result<u64, KernelError> {
    let Product { m, k, n, .. } = p;
    if m == 0 || k == 0 || n == 0 {
        return Err(KernelError::Empty { m, k, n });
    }
    let work = (m as u64)
        .checked_mul(k as u64)
        .and_then(|w| w.checked_mul(n as u64))
        .filter(|&w| w <= MATMUL_LIMIT)
        .ok_or(KernelError::TooMuchWork { m, k, n })?;
    // Both below fit: each factor is at most MATMUL_LIMIT.
    if m * n > max_result_values {
        return Err(KernelError::TooLarge { m, n });
    }
    for (which, got, want) in [('A', a_len, m * k), ('B', b_len, k * n)] {
        if got != want {
            return Err(KernelError::Length { which, got, want });
        }
    }
    Ok(work)
}

/// Checks `p` against the operands and limits; computes C = op(A) · op(B)
/// (m × n, row-major) natively in chunks, giving up at `deadline`.
pub fn matmul(
    a: &[f32],
    b: &[f32],
    p: Product,
    max_result_values: usize,
    deadline: Instant,
) -> Result<Vec<f32>, KernelError> {
    let work = check(a.len(), b.len(), p, max_result_values)?;
    native(a, b, p, work, deadline)
}

/// The native product of an already checked `p` (whose work is `work`).
fn native(
    a: &[f32],
    b: &[f32],
    p: Product,
    work: u64,
    deadline: Instant,
) -> Result<Vec<f32>, KernelError> {
    let Product { m, k, n, .. } = p;
    let len_c = m * n;
    let (rsa, csa) = if p.a_trans { (1, m) } else { (k, 1) };
    let (rsb, csb) = if p.b_trans { (1, k) } else { (n, 1) };
    let mut c = vec![0f32; len_c];
    let rows_per_chunk = ((CHUNK_WORK / (work / m as u64).max(1)) as usize).clamp(1, m);
    let mut row = 0;
    while row < m {
        if Instant::now() >= deadline {
            return Err(KernelError::Deadline);
        }
        let rows = rows_per_chunk.min(m - row);
        // SAFETY: the lengths of `a`, `b` and `c` were checked against m, k
        // and n above, so for rows `row..row + rows` every element the
        // strides address lies inside its slice; `c`'s chunk is written by
        // this call alone.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                k,
                n,
                1.0,
                a.as_ptr().add(row * rsa),
                rsa as isize,
                csa as isize,
                b.as_ptr(),
                rsb as isize,
                csb as isize,
                0.0,
                c.as_mut_ptr().add(row * n),
                n as isize,
                1,
            );
        }
        row += rows;
    }
    Ok(c)
}

/// Registers `mixnn:layer/kernels` by hand rather than through `bindgen!`'s
/// trait: the generated signature would copy both operands into host
/// vectors, while [`WasmList`] lets the host read them where they are.
pub(crate) fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    let mut kernels = linker.instance("mixnn:layer/kernels@0.1.0")?;
    kernels.func_wrap("matmul-limit", |_store, (): ()| Ok((MATMUL_LIMIT,)))?;
    kernels.func_wrap(
        "matmul",
        |store: StoreContextMut<'_, GuestState>,
         (a, b, m, k, n, a_trans, b_trans): (
            WasmList<u32>,
            WasmList<u32>,
            u32,
            u32,
            u32,
            bool,
            bool,
        )| {
            let p = Product {
                m: m as usize,
                k: k as usize,
                n: n as usize,
                a_trans,
                b_trans,
            };
            let state = store.data();
            let (on_host, deadline) = (state.native, state.deadline);
            // The result goes into the guest's memory: it may be at most
            // what the cap leaves beside the guest's memory now, so a guest
            // with no room cannot make the host allocate a cap's worth.
            let room = state.budget.kernel_room(state.memory_bytes);
            let max_values = room / std::mem::size_of::<f32>();
            // One validation for both modes, before either touches a number.
            let result = check(a.len(), b.len(), p, max_values).and_then(|work| {
                if on_host {
                    let (a, b) = (a.as_le_slice(&store), b.as_le_slice(&store));
                    native(as_f32(a), as_f32(b), p, work, deadline)
                } else {
                    in_wasm(store, &a, &b, p, deadline)
                }
            });
            match result {
                Ok(c) => Ok((Ok(c),)),
                // The epoch deadline traps wasm code; a host call past it
                // ends the same way.
                Err(KernelError::Deadline) => Err(Trap::Interrupt.into()),
                Err(e) => Ok((Err(e.to_string()),)),
            }
        },
    )?;
    Ok(())
}

/// An already checked product on the layer's wasm kernel instance (made on
/// first use).
fn in_wasm(
    mut store: StoreContextMut<'_, GuestState>,
    a: &WasmList<u32>,
    b: &WasmList<u32>,
    p: Product,
    deadline: Instant,
) -> Result<Vec<f32>, KernelError> {
    if Instant::now() >= deadline {
        return Err(KernelError::Deadline);
    }
    let state = store.data_mut();
    let cap = state.memory_bytes;
    let room = state.budget.kernel_room(cap);
    let mut kernel = match state.kernel.take() {
        Some(k) => k,
        None => KernelInstance::new(&state.kernel_module, room)?,
    };
    let ticks = crate::ticks(deadline.saturating_duration_since(Instant::now()));
    let result = kernel.matmul(
        as_f32(a.as_le_slice(&store)),
        as_f32(b.as_le_slice(&store)),
        p,
        room,
        ticks,
    );
    let state = store.data_mut();
    state.budget.kernel_bytes = kernel.memory_bytes();
    state.kernel = Some(kernel);
    result
}

/// f32 bit patterns as f32 values, in place.
fn as_f32(bits: &[u32]) -> &[f32] {
    // SAFETY: u32 and f32 have the same size and alignment and every bit
    // pattern is a valid f32; the slice's lifetime carries over.
    unsafe { std::slice::from_raw_parts(bits.as_ptr().cast::<f32>(), bits.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn naive(a: &[f32], b: &[f32], p: Product) -> Vec<f32> {
        let at = |i: usize, q: usize| {
            if p.a_trans {
                a[q * p.m + i]
            } else {
                a[i * p.k + q]
            }
        };
        let bt = |q: usize, j: usize| {
            if p.b_trans {
                b[j * p.k + q]
            } else {
                b[q * p.n + j]
            }
        };
        let mut c = vec![0f32; p.m * p.n];
        for i in 0..p.m {
            for j in 0..p.n {
                c[i * p.n + j] = (0..p.k).map(|q| at(i, q) * bt(q, j)).sum();
            }
        }
        c
    }

    #[test]
    fn every_layout_matches_the_textbook_product() {
        let (m, k, n) = (37, 300, 19);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        for a_trans in [false, true] {
            for b_trans in [false, true] {
                let p = Product {
                    m,
                    k,
                    n,
                    a_trans,
                    b_trans,
                };
                let got = matmul(&a, &b, p, usize::MAX, later()).expect("product");
                // Small integers: exact in f32 whatever the summation order.
                assert_eq!(got, naive(&a, &b, p), "{p:?}");
            }
        }
    }

    #[test]
    fn hostile_arguments_are_refused() {
        let a = vec![1.0f32; 6];
        let p = |m, k, n| Product {
            m,
            k,
            n,
            a_trans: false,
            b_trans: false,
        };
        let e = |r: Result<Vec<f32>, KernelError>| r.expect_err("refused");
        assert_eq!(
            e(matmul(&a, &a, p(2, 4, 3), usize::MAX, later())),
            KernelError::Length {
                which: 'A',
                got: 6,
                want: 8
            }
        );
        assert!(matches!(
            e(matmul(
                &a,
                &a,
                p(u32::MAX as usize, u32::MAX as usize, 2),
                usize::MAX,
                later()
            )),
            KernelError::TooMuchWork { .. }
        ));
        assert!(matches!(
            e(matmul(&a, &a, p(0, 3, 2), usize::MAX, later())),
            KernelError::Empty { .. }
        ));
        assert!(matches!(
            e(matmul(&a, &a, p(1 << 20, 1, 1 << 11), 1 << 20, later())),
            KernelError::TooLarge { .. }
        ));
        assert_eq!(
            e(matmul(&a, &a, p(2, 3, 2), usize::MAX, Instant::now())),
            KernelError::Deadline
        );
    }
}
