//! A hostile guest, used only by tests: it exports the `mixnn:layer` world
//! like an honest layer, but `load` misbehaves as its shard bytes ask:
//! `loop` spins forever, `alloc` allocates until something gives, `trap`
//! executes `unreachable`, `ok` loads fine (then `forward` echoes its input).
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

impl Guest for HostileGuest {
    fn load(shard: Vec<u8>, _cfg: types::TrainConfig) -> Result<types::LayerInfo, String> {
        match shard.as_slice() {
            b"loop" => Err(format!("unreachable {}", spin())),
            b"alloc" => Err(format!("unreachable {}", hoard())),
            b"trap" => std::process::abort(),
            b"ok" => Ok(types::LayerInfo { params: vec![], param_count: 0, output_shape: vec![] }),
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
}

export!(HostileGuest);
