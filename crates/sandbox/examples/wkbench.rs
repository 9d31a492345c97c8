// TEMPORARY micro-benchmark (not to be committed).
use wasmtime::*;
fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).unwrap();
    let canon = std::env::var_os("NOCANON").is_none();
    let mut cfg = Config::new();
    let epoch = std::env::var_os("NOEPOCH").is_none();
    let fuel = std::env::var_os("FUEL").is_some();
    cfg.cranelift_nan_canonicalization(canon)
        .wasm_relaxed_simd(false)
        .wasm_simd(true)
        .epoch_interruption(epoch)
        .consume_fuel(fuel);
    let engine = Engine::new(&cfg)?;
    let module = Module::from_file(&engine, &path)?;
    let mut store = Store::new(&engine, ());
    if epoch {
        store.set_epoch_deadline(1 << 40);
    }
    if fuel {
        store.set_fuel(u64::MAX).unwrap();
    }
    let inst = Instance::new(&mut store, &module, &[])?;
    let run = inst.get_typed_func::<(u32, u32, u32, u32, u32), f32>(&mut store, "run")?;
    let (m, n, k) = (128u32, 96u32, 784u32);
    for which in [0u32, 3, 5] {
        let reps = 20;
        run.call(&mut store, (which, m, n, k, 2))?;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            run.call(&mut store, (which, m, n, k, reps))?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        let flops = 2.0 * (m * n * k) as f64 * reps as f64;
        let name = [
            "8x8",
            "4x8",
            "4x8 load-splat",
            "8x4",
            "4x4",
            "4x12",
            "8x4 load-splat",
            "12x4",
            "8x4 unroll2",
        ][which as usize];
        println!(
            "{name:16} {:6.2} GFLOP/s (canon={canon} epoch={epoch} fuel={fuel})",
            flops / best / 1e9
        );
    }
    Ok(())
}
