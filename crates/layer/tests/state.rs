//! A layer's whole training state: train N steps, export, train M more;
//! a freshly loaded layer that imports the state and trains the same M
//! steps ends with the same parameters, bit for bit (SGD with momentum,
//! Adam, a shard with dropout). Bad states are refused, the layer intact.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_grad::FloatType;
use mixnn_grad::testing::ModelBuilder;
use mixnn_layer::{Layer, LayerError, LossKind, OptimizerKind, Tensor, TrainConfig};

const BATCH: usize = 4;

/// A one-shard classifier with dropout: Gemm 8→6, Relu, Dropout(0.3),
/// Gemm 6→3, raw logits.
fn dropout_shard() -> Vec<u8> {
    let w1: Vec<f64> = (0..48)
        .map(|i| ((i * 7) % 11) as f64 / 11.0 - 0.5)
        .collect();
    let w2: Vec<f64> = (0..18).map(|i| ((i * 5) % 7) as f64 / 7.0 - 0.5).collect();
    let model = ModelBuilder::new(FloatType::F32)
        .input("x", &[BATCH, 8])
        .init("w1", &[6, 8], &w1)
        .init("b1", &[6], &[0.0; 6])
        .init("ratio", &[], &[0.3])
        .init("w2", &[3, 6], &w2)
        .init("b2", &[3], &[0.1; 3])
        .linear(&["x", "w1", "b1"], "h")
        .node("Relu", &["h"], &["r"], vec![])
        .node("Dropout", &["r", "ratio"], &["d"], vec![])
        .linear(&["d", "w2", "b2"], "y")
        .output("y")
        .build();
    mixnn_shard::encode(&model)
}

fn config(optimizer: OptimizerKind, seed: u64) -> TrainConfig {
    TrainConfig {
        optimizer,
        learning_rate: 0.05,
        momentum: 0.9,
        weight_decay: 1e-3,
        seed,
        loss: LossKind::SoftmaxCrossEntropy,
        need_input_grad: true,
        host_kernels: false,
        ..TrainConfig::default()
    }
}

/// Batch `k` of a fixed stream.
fn batch(k: usize) -> (Tensor, Vec<i64>) {
    let data = (0..BATCH * 8)
        .map(|i| (((i + 3 * k) * 13) % 17) as f32 / 17.0 - 0.4)
        .collect();
    let labels = (0..BATCH).map(|i| ((i + k) % 3) as i64).collect();
    (Tensor::new(vec![BATCH, 8], data).expect("tensor"), labels)
}

/// Steps `from..to` of the stream on `layer`.
fn train(layer: &mut Layer, from: usize, to: usize) {
    for k in from..to {
        let (x, labels) = batch(k);
        let z = layer.forward(x).expect("forward");
        let out = layer.loss(&z, &labels).expect("loss");
        layer.backward(out.grad).expect("backward");
        layer.step().expect("step");
    }
}

fn bits(layer: &Layer) -> Vec<Vec<u32>> {
    layer
        .export_params()
        .expect("export")
        .iter()
        .map(|p| p.tensor.data.iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// N steps, state, M steps → P1; a fresh layer imports the state and
/// takes the same M steps → P2. Returns the state.
fn continues_bit_for_bit(shard: &[u8], cfg: TrainConfig) -> Vec<u8> {
    let (n, m) = (3, 4);
    let mut a = Layer::load(shard, cfg.clone()).expect("load").0;
    train(&mut a, 0, n);
    let state = a.export_state().expect("export state");
    train(&mut a, n, n + m);
    let p1 = bits(&a);

    let mut b = Layer::load(shard, cfg).expect("load").0;
    let fresh = bits(&b);
    b.import_state(&state).expect("import state");
    train(&mut b, n, n + m);
    assert_eq!(bits(&b), p1, "restored layer diverged");
    assert_ne!(p1, fresh, "training changed nothing");
    state
}

#[test]
fn sgd_with_momentum_continues_bit_for_bit() {
    continues_bit_for_bit(&dropout_shard(), config(OptimizerKind::Sgd, 1));
}

#[test]
fn adam_continues_bit_for_bit() {
    continues_bit_for_bit(&dropout_shard(), config(OptimizerKind::Adam, 2));
}

#[test]
fn the_dropout_stream_is_part_of_the_state() {
    // Restoring only the parameters (and the step count's effect) is not
    // enough: without the mask stream's position the masks differ.
    let shard = dropout_shard();
    let cfg = config(OptimizerKind::Sgd, 3);
    let mut a = Layer::load(&shard, cfg.clone()).expect("load").0;
    train(&mut a, 0, 2);
    let params = a.export_params().expect("params");
    train(&mut a, 2, 4);
    let mut b = Layer::load(&shard, cfg).expect("load").0;
    b.import_params(params).expect("params");
    train(&mut b, 2, 4);
    assert_ne!(bits(&a), bits(&b), "parameters alone reproduced the run");
}

#[test]
fn the_paper_mlp_shards_continue_bit_for_bit() {
    let model = mixnn_shard::mlp(5, BATCH, mixnn_shard::Form::Gemm);
    let plan = mixnn_shard::plan(&model, None).expect("plan");
    let shards = mixnn_shard::split(&model, &plan).expect("split");
    // The middle shard on its own, driven with a fixed output gradient.
    let shard = mixnn_shard::encode(&shards[1]);
    let cfg = TrainConfig {
        seed: 4,
        loss: LossKind::None,
        host_kernels: false,
        ..TrainConfig::default()
    };
    let (_, info) = Layer::load(&shard, cfg.clone()).expect("load");
    let fan_in = info.input_shape[1];
    let steps = |l: &mut Layer, from: usize, to: usize| {
        for k in from..to {
            let x: Vec<f32> = (0..BATCH * fan_in)
                .map(|i| ((i * 31 + k) % 23) as f32 / 23.0)
                .collect();
            let y = l
                .forward(Tensor::new(vec![BATCH, fan_in], x).expect("x"))
                .expect("forward");
            let dz = Tensor::new(
                y.shape.clone(),
                (0..y.data.len())
                    .map(|i| ((i + k) % 5) as f32 * 0.01)
                    .collect(),
            )
            .expect("dz");
            l.backward(dz).expect("backward");
            l.step().expect("step");
        }
    };
    let mut a = Layer::load(&shard, cfg.clone()).expect("load").0;
    steps(&mut a, 0, 2);
    let state = a.export_state().expect("state");
    steps(&mut a, 2, 5);
    let mut b = Layer::load(&shard, cfg).expect("load").0;
    b.import_state(&state).expect("import");
    steps(&mut b, 2, 5);
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn bad_states_are_refused_and_the_layer_keeps_its_own() {
    let shard = dropout_shard();
    let cfg = config(OptimizerKind::Adam, 5);
    let state = continues_bit_for_bit(&shard, cfg.clone());
    let mut layer = Layer::load(&shard, cfg.clone()).expect("load").0;
    train(&mut layer, 0, 1);
    let before = layer.export_state().expect("state");

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", state[..state.len() / 2].to_vec()),
        ("one byte short", state[..state.len() - 1].to_vec()),
        ("trailing byte", [state.as_slice(), &[0]].concat()),
    ];
    for i in [0, 5, 20, 90, state.len() / 2, state.len() - 3] {
        let mut g = state.clone();
        g[i] ^= 0x41;
        cases.push(("garbled", g));
    }
    // A state of a layer with another optimizer, another seed, another shard.
    let mut sgd = Layer::load(&shard, config(OptimizerKind::Sgd, 5))
        .expect("load")
        .0;
    cases.push(("sgd state", sgd.export_state().expect("state")));
    let other_seed = Layer::load(&shard, config(OptimizerKind::Adam, 6))
        .expect("load")
        .0;
    cases.push(("other seed", other_seed.export_state().expect("state")));
    let model = mixnn_shard::mlp(5, BATCH, mixnn_shard::Form::Gemm);
    let plan = mixnn_shard::plan(&model, None).expect("plan");
    let mlp = mixnn_shard::encode(&mixnn_shard::split(&model, &plan).expect("split")[2]);
    let other_shard = Layer::load(&mlp, cfg).expect("load").0;
    cases.push(("other shard", other_shard.export_state().expect("state")));

    for (what, bytes) in cases {
        match layer.import_state(&bytes) {
            Err(LayerError::State(msg)) => assert!(!msg.is_empty(), "{what}"),
            other => panic!("{what}: expected a state error, got {other:?}"),
        }
        assert_eq!(layer.export_state().expect("state"), before, "{what}");
    }

    // Between forward and backward there is no state to take.
    let (x, _) = batch(0);
    sgd.forward(x).expect("forward");
    assert!(matches!(sgd.export_state(), Err(LayerError::State(_))));
}
