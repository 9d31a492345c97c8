//! Pure-wasm mode's products: the kernel module (`guest-layers/matmul`) run
//! in an instance of its own beside each layer guest.
//!
//! Why: the layer guest is compiled with NaN canonicalisation, which costs a
//! product loop half its speed. The kernel module is compiled by a second
//! engine without it and makes every NaN it stores canonical itself (the
//! argument is in `guest-layers/matmul/src/lib.rs`), so pure-wasm results stay
//! identical on every machine. The host only moves bytes: the operands into
//! the kernel's memory, the result back out.
//!
//! Limits: the kernel instance runs under the same epoch deadline as the
//! guest call that asked for the product, and its memory counts against the
//! layer's memory cap together with the guest's own (see
//! [`crate::guest::MemoryBudget`]).

use std::time::Instant;

use wasmtime::{
    Engine, Instance, Memory, Module, Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc,
};

use crate::SandboxError;
use crate::kernels::{KernelError, Product};

/// The kernel module, compiled once per sandbox by its own engine.
#[derive(Clone)]
pub(crate) struct KernelModule {
    engine: Engine,
    module: Module,
    /// Bytes of memory an instance holds before any product.
    initial_bytes: usize,
}

impl KernelModule {
    pub(crate) fn new() -> Result<Self, SandboxError> {
        // Everything as for the guests but canonicalisation, which the
        // kernel does on its output (see the module docs).
        let cfg = crate::engine_config(false);
        let setup = |e: wasmtime::Error| SandboxError::Setup(format!("product kernel: {e:#}"));
        let engine = Engine::new(&cfg).map_err(setup)?;
        let module = Module::new(&engine, kernel_wasm()).map_err(setup)?;
        let initial_bytes = module
            .exports()
            .find_map(|e| e.ty().memory().map(|m| m.minimum()))
            .and_then(|pages| usize::try_from(pages).ok()?.checked_mul(65536))
            .ok_or_else(|| SandboxError::Setup("product kernel: no memory export".into()))?;
        Ok(KernelModule {
            engine,
            module,
            initial_bytes,
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// The kernel module's bytes, built by this crate's build script.
pub(crate) fn kernel_wasm() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/mixnn_guest_matmul.wasm"))
}

type MatMulFn = TypedFunc<(u32, u32, u32, u32, u32, u32, u32, u32), ()>;

/// One kernel instance, owned by one guest instance.
pub(crate) struct KernelInstance {
    store: Store<StoreLimits>,
    memory: Memory,
    matmul: MatMulFn,
    scratch_len: TypedFunc<(u32, u32), u32>,
    /// First byte above the module's own data and stack.
    base: usize,
}

impl KernelInstance {
    /// A fresh instance whose memory may never exceed `cap` bytes.
    pub(crate) fn new(module: &KernelModule, cap: usize) -> Result<Self, KernelError> {
        if module.initial_bytes > cap {
            return Err(KernelError::KernelMemory {
                bytes: module.initial_bytes,
            });
        }
        let limits = StoreLimitsBuilder::new()
            .memory_size(cap)
            .instances(1)
            .memories(1)
            .build();
        let mut store = Store::new(&module.engine, limits);
        store.limiter(|l| l);
        store.set_epoch_deadline(u64::MAX / 2);
        let err = |e: wasmtime::Error| KernelError::Failed(format!("{e:#}"));
        let instance = Instance::new(&mut store, &module.module, &[]).map_err(err)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| KernelError::Failed("no memory export".into()))?;
        let matmul = instance.get_typed_func(&mut store, "matmul").map_err(err)?;
        let scratch_len = instance
            .get_typed_func(&mut store, "scratch_len")
            .map_err(err)?;
        let base = memory.data_size(&store);
        Ok(KernelInstance {
            store,
            memory,
            matmul,
            scratch_len,
            base,
        })
    }

    /// Bytes of linear memory this instance holds.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.memory.data_size(&self.store)
    }

    /// C = op(A) · op(B) for an already validated product, in at most
    /// `budget` bytes of kernel memory, within `ticks` epoch ticks.
    pub(crate) fn matmul(
        &mut self,
        a: &[f32],
        b: &[f32],
        p: Product,
        budget: usize,
        ticks: u64,
    ) -> Result<Vec<f32>, KernelError> {
        let Product { m, k, n, .. } = p;
        let too_large = KernelError::TooLarge { m, n };
        let (k32, n32) = (
            u32::try_from(k).map_err(|_| too_large.clone())?,
            u32::try_from(n).map_err(|_| too_large.clone())?,
        );
        // The kernel states its packing space (u32::MAX when that overflows).
        let scratch = self
            .scratch_len
            .call(&mut self.store, (k32, n32))
            .map_err(|e| KernelError::Failed(format!("{e:#}")))?;
        if scratch == u32::MAX {
            return Err(too_large);
        }
        let scratch = scratch as usize;
        // Layout above `base`: A, B, C, then the packing scratch.
        let floats = [m * k, k * n, m * n, scratch];
        let total: usize = floats.iter().sum();
        let end = total
            .checked_mul(4)
            .and_then(|b| b.checked_add(self.base))
            .filter(|&end| end <= u32::MAX as usize)
            .ok_or(too_large)?;
        let have = self.memory_bytes();
        let refused = KernelError::KernelMemory {
            bytes: end.max(have),
        };
        if end > budget {
            return Err(refused);
        }
        if end > have {
            let pages = (end - have).div_ceil(65536) as u64;
            self.memory
                .grow(&mut self.store, pages)
                .map_err(|_| refused)?;
        }
        let at = |i: usize| self.base + 4 * floats[..i].iter().sum::<usize>();
        let (pa, pb, pc, ps) = (at(0), at(1), at(2), at(3));
        let mem = self.memory.data_mut(&mut self.store);
        mem[pa..pb].copy_from_slice(as_bytes(a));
        mem[pb..pc].copy_from_slice(as_bytes(b));
        let flags = u32::from(p.a_trans) | u32::from(p.b_trans) << 1;
        let offset = |v: usize| v as u32; // all below `end` ≤ u32::MAX
        self.store.set_epoch_deadline(ticks);
        let started = Instant::now();
        let run = self.matmul.call(
            &mut self.store,
            (
                offset(pa),
                offset(pb),
                offset(pc),
                m as u32,
                k32,
                n32,
                flags,
                offset(ps),
            ),
        );
        if let Err(e) = run {
            return Err(match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => KernelError::Deadline,
                _ => KernelError::Failed(format!("{e:#} (after {:?})", started.elapsed())),
            });
        }
        let mem = self.memory.data(&self.store);
        Ok(mem[pc..ps]
            .chunks_exact(4)
            .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect())
    }
}

/// An f32 slice as its little-endian bytes, in place.
fn as_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: any initialised f32 is 4 initialised bytes; u8 has alignment
    // 1; the length is the byte length of the same allocation. The host is
    // little-endian (kernels.rs refuses to build otherwise), as wasm is.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The plain scalar loop, summing in k order, NaNs made canonical: what
    /// the kernel must equal bit for bit on any machine.
    fn scalar(a: &[f32], b: &[f32], p: Product) -> Vec<f32> {
        let mut c = vec![0f32; p.m * p.n];
        for i in 0..p.m {
            for j in 0..p.n {
                let mut s = 0f32;
                for q in 0..p.k {
                    let x = if p.a_trans {
                        a[q * p.m + i]
                    } else {
                        a[i * p.k + q]
                    };
                    let y = if p.b_trans {
                        b[j * p.k + q]
                    } else {
                        b[q * p.n + j]
                    };
                    s += x * y;
                }
                c[i * p.n + j] = if s.is_nan() { f32::NAN } else { s };
            }
        }
        c
    }

    fn values(seed: u32, n: usize) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i ^ seed).wrapping_mul(0x9E37_79B9).rotate_left(13);
                (h % 2001) as f32 / 997.0 - 1.0
            })
            .collect()
    }

    fn product(m: usize, k: usize, n: usize, a_trans: bool, b_trans: bool) -> Product {
        Product {
            m,
            k,
            n,
            a_trans,
            b_trans,
        }
    }

    #[test]
    fn equals_the_scalar_loop_bit_for_bit() {
        let module = KernelModule::new().expect("kernel module");
        let mut kernel = KernelInstance::new(&module, 64 << 20).expect("instance");
        let shapes = [
            (1, 1, 1),
            (7, 13, 11),
            (8, 8, 8),
            (9, 17, 23),
            (64, 100, 10),
            (3, 300, 2),
        ];
        for (s, &(m, k, n)) in shapes.iter().enumerate() {
            for layout in 0..4 {
                let p = product(m, k, n, layout & 1 != 0, layout & 2 != 0);
                let mut a = values(s as u32, m * k);
                let b = values(100 + s as u32, k * n);
                if m * k > 3 {
                    // Non-finite inputs: a NaN with a payload, ±inf, -0.
                    a[0] = f32::from_bits(0x7fa0_1234);
                    a[1] = f32::INFINITY;
                    a[2] = f32::NEG_INFINITY;
                    a[3] = -0.0;
                }
                let got = kernel
                    .matmul(&a, &b, p, 64 << 20, u64::MAX / 2)
                    .expect("runs");
                let want = scalar(&a, &b, p);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{p:?}: differs from the scalar loop");
            }
        }
    }

    #[test]
    fn a_product_past_its_deadline_stops() {
        let module = KernelModule::new().expect("kernel module");
        let mut kernel = KernelInstance::new(&module, 256 << 20).expect("instance");
        let engine = module.engine().clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let ticker = std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                engine.increment_epoch();
            }
        });
        let (m, k, n) = (512, 2048, 512);
        let (a, b) = (values(1, m * k), values(2, k * n));
        let t = Instant::now();
        let r = kernel.matmul(&a, &b, product(m, k, n, false, false), 256 << 20, 2);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        ticker.join().expect("ticker");
        assert_eq!(r, Err(KernelError::Deadline), "after {:?}", t.elapsed());
    }

    #[test]
    fn working_memory_beyond_the_budget_is_refused() {
        let module = KernelModule::new().expect("kernel module");
        let mut kernel = KernelInstance::new(&module, 64 << 20).expect("instance");
        let (m, k, n) = (256, 256, 256);
        // Not even the empty instance fits in 1 KiB.
        let tiny = KernelInstance::new(&module, 1024).err();
        assert!(
            matches!(tiny, Some(KernelError::KernelMemory { .. })),
            "{tiny:?}"
        );
        let (a, b) = (values(1, m * k), values(2, k * n));
        let budget = kernel.memory_bytes() + 100_000;
        let r = kernel.matmul(&a, &b, product(m, k, n, false, false), budget, u64::MAX / 2);
        assert!(
            matches!(r, Err(KernelError::KernelMemory { bytes }) if bytes > budget),
            "{r:?}"
        );
        assert!(
            kernel.memory_bytes() <= budget,
            "nothing grown past the budget"
        );
    }
}
