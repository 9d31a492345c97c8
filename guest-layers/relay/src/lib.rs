//! The relay guest for dummy hops (SPEC §5): it exports the same world as the
//! standard guest so that its neighbours see an ordinary layer, but only
//! applies a parameter-free op. It carries no tract, so it loads in
//! milliseconds and costs a node almost nothing to host.
//!
//! The designer's dummies run `sign:<bits>`: a secret ±1 per index of axis 1
//! (feature or channel), `1` flips that index's sign, forward and backward
//! alike (the op is its own transpose and inverse). The designer folds the
//! same signs into the next real layer's weights, so the training stays
//! bit-exact while the hops on both sides of the dummy see different bytes
//! (PROTOCOL.md §12.6).

wit_bindgen::generate!({ world: "layer", path: "../../wit" });

use mixnn::layer::types;

#[derive(Clone)]
enum Op {
    Identity,
    Relu,
    /// Flip the sign of axis-1 index c where the mask is true.
    Sign(Vec<bool>),
}

thread_local! {
    static OP: std::cell::RefCell<Option<Op>> = const { std::cell::RefCell::new(None) };
    /// The last forward input, needed by ReLU's backward mask.
    static LAST: std::cell::RefCell<Option<types::Tensor>> = const { std::cell::RefCell::new(None) };
}

struct RelayGuest;

fn op() -> Result<Op, String> {
    OP.with(|o| o.borrow().clone()).ok_or_else(|| "no relay op loaded: call load first".to_string())
}

/// `sign:` followed by one `0` or `1` per index of axis 1.
fn parse_sign(bits: &[u8]) -> Result<Op, String> {
    if bits.is_empty() {
        return Err("relay guest: a sign mask needs at least one index".into());
    }
    bits.iter()
        .map(|b| match b {
            b'0' => Ok(false),
            b'1' => Ok(true),
            _ => Err("relay guest: a sign mask is made of `0` and `1`".to_string()),
        })
        .collect::<Result<Vec<bool>, String>>()
        .map(Op::Sign)
}

/// Flips the signs `mask` asks for, along axis 1 of `t`.
fn flip(mask: &[bool], mut t: types::Tensor) -> Result<types::Tensor, String> {
    if t.shape.len() < 2 || t.shape[1] as usize != mask.len() {
        return Err(format!("sign mask of {} indices does not fit axis 1 of shape {:?}", mask.len(), t.shape));
    }
    let inner: usize = t.shape[2..].iter().map(|&d| d as usize).product();
    for (i, v) in t.data.iter_mut().enumerate() {
        if mask[(i / inner.max(1)) % mask.len()] {
            *v = f32::from_bits(v.to_bits() ^ 0x8000_0000);
        }
    }
    Ok(t)
}

fn check(t: &types::Tensor) -> Result<(), String> {
    let n = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d as usize));
    match n {
        Some(n) if n == t.data.len() => Ok(()),
        _ => Err(format!("tensor data ({} values) does not fill shape {:?}", t.data.len(), t.shape)),
    }
}

fn apply(op: &Op, mut t: types::Tensor) -> Result<types::Tensor, String> {
    match op {
        Op::Identity => Ok(t),
        Op::Relu => {
            t.data.iter_mut().for_each(|v| *v = v.max(0.0));
            Ok(t)
        }
        Op::Sign(mask) => flip(mask, t),
    }
}

impl Guest for RelayGuest {
    fn load(shard: Vec<u8>, _cfg: types::TrainConfig) -> Result<types::LayerInfo, String> {
        let op = match shard.as_slice() {
            b"identity" => Op::Identity,
            b"relu" => Op::Relu,
            s if s.starts_with(b"sign:") => parse_sign(&s[5..])?,
            _ => return Err("relay guest: the shard must be the op `identity`, `relu` or `sign:<bits>`".into()),
        };
        OP.with(|o| *o.borrow_mut() = Some(op));
        Ok(types::LayerInfo { params: Vec::new(), param_count: 0, output_shape: Vec::new() })
    }

    fn forward(input: types::Tensor) -> Result<types::Tensor, String> {
        let op = op()?;
        check(&input)?;
        if let Op::Relu = op {
            LAST.with(|l| *l.borrow_mut() = Some(input.clone()));
        }
        apply(&op, input)
    }

    fn loss(_output: types::Tensor, _labels: Vec<i64>) -> Result<types::LossOutput, String> {
        Err("a relay hop computes no loss".into())
    }

    fn backward(grad_output: types::Tensor) -> Result<Option<types::Tensor>, String> {
        check(&grad_output)?;
        match op()? {
            Op::Identity => Ok(Some(grad_output)),
            Op::Sign(mask) => flip(&mask, grad_output).map(Some),
            Op::Relu => {
                let x = LAST
                    .with(|l| l.borrow_mut().take())
                    .ok_or_else(|| "backward without a preceding forward".to_string())?;
                if x.shape != grad_output.shape {
                    return Err(format!("gradient shape {:?} != input shape {:?}", grad_output.shape, x.shape));
                }
                let mut g = grad_output;
                g.data.iter_mut().zip(&x.data).for_each(|(g, &x)| {
                    if x <= 0.0 {
                        *g = 0.0
                    }
                });
                Ok(Some(g))
            }
        }
    }

    fn step() -> Result<(), String> {
        op().map(|_| ())
    }

    fn infer(input: types::Tensor) -> Result<types::Tensor, String> {
        let op = op()?;
        check(&input)?;
        apply(&op, input)
    }

    fn export_params() -> Result<Vec<types::NamedTensor>, String> {
        op().map(|_| Vec::new())
    }

    fn import_params(params: Vec<types::NamedTensor>) -> Result<(), String> {
        if params.is_empty() { Ok(()) } else { Err("a relay hop has no parameters".into()) }
    }

    /// Stateless: the op and its sign mask come with `load`, nothing
    /// changes while training, so its state is empty.
    fn export_state() -> Result<Vec<u8>, String> {
        op().map(|_| Vec::new())
    }

    fn import_state(state: Vec<u8>) -> Result<(), String> {
        op()?;
        if state.is_empty() { Ok(()) } else { Err("a relay hop has no state: only an empty one imports".into()) }
    }
}

export!(RelayGuest);
