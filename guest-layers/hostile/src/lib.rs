//! A hostile guest, used only by tests: it exports the `mixnn:layer` world
//! like an honest layer, but `load` misbehaves as its shard bytes ask:
//! `loop` spins forever, `alloc` allocates until something gives, `trap`
//! executes `unreachable`, `ok` loads fine (then `forward` echoes its input).
//! The `kernel-*` modes abuse the host's product kernel: `kernel-dims`
//! (lengths that do not match the dimensions), `kernel-huge` (absurd
//! dimensions), `kernel-outside` (operands outside linear memory); and
//! `kernel-ok` computes a small product honestly; `kernel-crowded` holds
//! most of its memory cap, then asks for a product whose working memory
//! would not fit beside it; `kernel-then-grow` (honest) runs a large product,
//! then needs the room the product kernel held. Each reports what the host
//! answered as its error message.
//! `export-state` answers a 64 MiB junk state.
//! The sandbox must turn each into a clear error and keep serving.

wit_bindgen::generate!({ world: "layer", path: "../../wit" });

use mixnn::layer::types;

struct HostileGuest;

#[inline(never)]
fn spin() -> u64 {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        if x == 0 {
            return x;
        }
    }
}

fn hoard() -> usize {
    let mut keep: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut v = vec![0u8; 16 << 20];
        v[0] = 1;
        keep.push(std::hint::black_box(v));
        if keep.len() == usize::MAX {
            return keep.len();
        }
    }
}

fn answer(r: Result<Vec<f32>, String>) -> String {
    match r {
        Ok(c) => format!("product {c:?}"),
        Err(e) => format!("refused: {e}"),
    }
}

impl Guest for HostileGuest {
    fn load(shard: Vec<u8>, _cfg: types::TrainConfig) -> Result<types::LayerInfo, String> {
        match shard.as_slice() {
            b"loop" => Err(format!("unreachable {}", spin())),
            b"alloc" => Err(format!("unreachable {}", hoard())),
            b"trap" => std::process::abort(),
            b"ok" => Ok(types::LayerInfo { params: vec![], param_count: 0, output_shape: vec![] }),
            b"kernel-dims" => Err(answer(mixnn::layer::kernels::matmul(&[0; 6], &[0; 6], 2, 4, 3, false, false))),
            b"kernel-huge" => {
                Err(answer(mixnn::layer::kernels::matmul(&[0; 6], &[0; 6], u32::MAX, u32::MAX, u32::MAX, false, true)))
            }
            b"kernel-outside" => {
                // SAFETY: none, on purpose: the slice points past the end of
                // linear memory and is never read here; the binding passes
                // only its address and length to the host.
                let far = unsafe { std::slice::from_raw_parts(0xFFF0_0000usize as *const u32, 1 << 20) };
                Err(answer(mixnn::layer::kernels::matmul(far, far, 1024, 1024, 1024, false, false)))
            }
            b"kernel-ok" => {
                let (a, b) = ([1.0f32, 2.0, 3.0, 4.0], [5.0f32, 6.0, 7.0, 8.0]);
                Err(answer(mixnn::layer::kernels::matmul(&a.map(f32::to_bits), &b.map(f32::to_bits), 2, 2, 2, false, false)))
            }
            b"kernel-crowded" => {
                // 224 MiB of ballast under a 256 MiB cap, then 12 MiB of
                // operands: a pure-wasm product of 2048×1024 by 1024×1024
                // needs ~24 MiB of kernel memory, which the cap no longer has.
                let ballast: Vec<Vec<u8>> = (0..14).map(|_| vec![1u8; 16 << 20]).collect();
                let (a, b) = (vec![0u32; 2048 * 1024], vec![0u32; 1024 * 1024]);
                let r = mixnn::layer::kernels::matmul(&a, &b, 2048, 1024, 1024, false, false);
                std::hint::black_box(&ballast);
                Err(answer(r.map(|c| c[..4].to_vec())))
            }
            b"kernel-then-grow" => {
                // A ~24 MiB pure-wasm product under a 256 MiB cap, then 224
                // MiB more: this fits only if the kernel gives its memory back.
                let (a, b) = (vec![0u32; 2048 * 1024], vec![0u32; 1024 * 1024]);
                let r = mixnn::layer::kernels::matmul(&a, &b, 2048, 1024, 1024, false, false);
                drop((a, b));
                let ballast: Vec<Vec<u8>> = (0..14).map(|_| vec![1u8; 16 << 20]).collect();
                std::hint::black_box(&ballast);
                Err(answer(r.map(|c| c[..4].to_vec())))
            }
            _ => Err("hostile guest: unknown mode".into()),
        }
    }
    fn forward(input: types::Tensor) -> Result<types::Tensor, String> {
        Ok(input)
    }
    fn loss(_o: types::Tensor, _l: Vec<i64>) -> Result<types::LossOutput, String> {
        Err("no loss".into())
    }
    fn backward(g: types::Tensor) -> Result<Option<types::Tensor>, String> {
        Ok(Some(g))
    }
    fn step() -> Result<(), String> {
        Ok(())
    }
    fn infer(input: types::Tensor) -> Result<types::Tensor, String> {
        Ok(input)
    }
    fn export_params() -> Result<Vec<types::NamedTensor>, String> {
        Ok(vec![])
    }
    fn import_params(_p: Vec<types::NamedTensor>) -> Result<(), String> {
        Ok(())
    }
    /// A state far larger than any honest one (64 MiB of junk): the host
    /// must bound what it keeps of an answer by the memory cap.
    fn export_state() -> Result<Vec<u8>, String> {
        Ok(vec![0xA5; 64 << 20])
    }
    fn import_state(_s: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
}

export!(HostileGuest);
