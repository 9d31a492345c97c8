//! The relay guest for dummy hops (SPEC §5): it exports the same world as the
//! standard guest so that its neighbours see an ordinary layer, but only
//! applies a parameter-free op. It carries no tract, so it loads in
//! milliseconds and costs a node almost nothing to host.

use std::cell::Cell;

wit_bindgen::generate!({ world: "layer", path: "../../wit" });

use mixnn::layer::types;

#[derive(Clone, Copy)]
enum Op {
    Identity,
    Relu,
}

thread_local! {
    static OP: Cell<Option<Op>> = const { Cell::new(None) };
    /// The last forward input, needed by ReLU's backward mask.
    static LAST: std::cell::RefCell<Option<types::Tensor>> = const { std::cell::RefCell::new(None) };
}

struct RelayGuest;

fn op() -> Result<Op, String> {
    OP.with(|o| o.get()).ok_or_else(|| "no relay op loaded: call load first".to_string())
}

fn check(t: &types::Tensor) -> Result<(), String> {
    let n = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d as usize));
    match n {
        Some(n) if n == t.data.len() => Ok(()),
        _ => Err(format!("tensor data ({} values) does not fill shape {:?}", t.data.len(), t.shape)),
    }
}

fn apply(op: Op, mut t: types::Tensor) -> types::Tensor {
    if let Op::Relu = op {
        t.data.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    t
}

impl Guest for RelayGuest {
    fn load(shard: Vec<u8>, _cfg: types::TrainConfig) -> Result<types::LayerInfo, String> {
        let op = match shard.as_slice() {
            b"identity" => Op::Identity,
            b"relu" => Op::Relu,
            _ => return Err("relay guest: the shard must be the op name `identity` or `relu`".into()),
        };
        OP.with(|o| o.set(Some(op)));
        Ok(types::LayerInfo { params: Vec::new(), param_count: 0, output_shape: Vec::new() })
    }

    fn forward(input: types::Tensor) -> Result<types::Tensor, String> {
        let op = op()?;
        check(&input)?;
        if let Op::Relu = op {
            LAST.with(|l| *l.borrow_mut() = Some(input.clone()));
        }
        Ok(apply(op, input))
    }

    fn loss(_output: types::Tensor, _labels: Vec<i64>) -> Result<types::LossOutput, String> {
        Err("a relay hop computes no loss".into())
    }

    fn backward(grad_output: types::Tensor) -> Result<Option<types::Tensor>, String> {
        check(&grad_output)?;
        match op()? {
            Op::Identity => Ok(Some(grad_output)),
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
        Ok(apply(op, input))
    }

    fn export_params() -> Result<Vec<types::NamedTensor>, String> {
        op().map(|_| Vec::new())
    }

    fn import_params(params: Vec<types::NamedTensor>) -> Result<(), String> {
        if params.is_empty() { Ok(()) } else { Err("a relay hop has no parameters".into()) }
    }
}

export!(RelayGuest);
