//! Whole training states (issue 11): a cascade saves every layer's state,
//! trains on, is put back to the state and trains the same batches again
//! to the same parameters, bit for bit: locally (wasm guests and native
//! tract) and on a real pool (a bootstrap and five nodes on 127.0.0.1, a
//! dummy hop), where the states travel through the job protocol. A
//! garbled state sent to a hop is refused with a clear error and the
//! layer trains on from its own.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_designer::pool::PoolCascade;
use mixnn_designer::{Cascade, EngineKind, Model, params_sha256};
use mixnn_layer::{Tensor, TrainConfig};
use support::sandbox;

mod support;

const BATCH: usize = 64;
/// Batches before the state is saved, and after it.
const K: usize = 3;
const M: usize = 4;

fn data() -> mixnn_data::Mnist {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    mixnn_data::load_mnist(&dir).expect("bundled MNIST")
}

fn config() -> TrainConfig {
    TrainConfig {
        seed: 21,
        ..TrainConfig::default()
    }
}

fn mlp_shards() -> Vec<mixnn_grad::pb::ModelProto> {
    let model = mixnn_shard::mlp(3, BATCH, mixnn_shard::Form::Gemm);
    let plan = mixnn_shard::plan(&model, None).expect("plan");
    mixnn_shard::split(&model, &plan).expect("split")
}

/// Training batch `b` of MNIST (samples `64·b ..`), as the first shard takes it.
fn batch(data: &mixnn_data::Mnist, b: usize) -> (Tensor, Vec<i64>) {
    let idx: Vec<usize> = (b * BATCH..(b + 1) * BATCH).collect();
    let (x, labels) = data.train.batch(&idx);
    (
        Tensor::new(vec![BATCH, 1, 28, 28], x).expect("batch"),
        labels,
    )
}

/// Trains batches `from..to` on `model`.
fn train(model: &mut dyn Model, data: &mixnn_data::Mnist, from: usize, to: usize) {
    for b in from..to {
        let (x, labels) = batch(data, b);
        let loss = model.train_batch(x, &labels).expect("trains");
        assert!(loss.is_finite(), "batch {b}: loss {loss}");
    }
}

fn digest(model: &mut dyn Model) -> String {
    params_sha256(&model.export_params().expect("params"))
}

/// K batches, save, M batches → P1; load, the same M batches → P2 = P1.
/// Returns P1 and the saved states.
fn save_train_load_train(
    model: &mut dyn Model,
    data: &mixnn_data::Mnist,
) -> (String, Vec<Vec<u8>>) {
    train(model, data, 0, K);
    let saved = model.save_state().expect("saves the state");
    train(model, data, K, K + M);
    let p1 = digest(model);
    model.load_state(&saved).expect("loads the state");
    train(model, data, K, K + M);
    assert_eq!(digest(model), p1, "training after load_state diverged");
    (p1, saved)
}

fn local(engine: EngineKind) -> Cascade {
    let sb = sandbox();
    Cascade::load(engine, &mlp_shards(), &config(), Some(&sb)).expect("loads")
}

#[test]
fn local_cascades_continue_bit_for_bit_from_a_state() {
    let data = data();
    let mut wasm = local(EngineKind::Wasm);
    let (p_wasm, wasm_states) = save_train_load_train(&mut wasm, &data);
    let mut native = local(EngineKind::Native);
    let (p_native, native_states) = save_train_load_train(&mut native, &data);
    assert_eq!(wasm_states.len(), 3, "one state per shard");

    // A state is the layer's, not the engine's: the native layer takes the
    // guest's state (same format) and goes on from there.
    let mut mixed = local(EngineKind::Native);
    mixed
        .load_state(&wasm_states)
        .expect("a guest's state loads natively");

    // Both engines write the same format; whether their bytes agree
    // depends on whether their arithmetic did (host kernels vs tract).
    let fresh_equal = local(EngineKind::Wasm).save_state().expect("state")
        == local(EngineKind::Native).save_state().expect("state");
    assert!(
        fresh_equal,
        "untrained layers have the same state on both engines"
    );
    eprintln!(
        "after {K} batches: wasm and native states byte-equal: {}; params equal after {}: {}",
        wasm_states == native_states,
        K + M,
        p_wasm == p_native
    );

    // A wrong number of states, or one shard's state for another, is refused.
    assert!(wasm.load_state(&wasm_states[..2]).is_err());
    let swapped = vec![
        wasm_states[1].clone(),
        wasm_states[0].clone(),
        wasm_states[2].clone(),
    ];
    let err = wasm.load_state(&swapped).expect_err("swapped states");
    assert!(err.to_string().contains("layer state"), "{err}");
}

#[test]
fn a_pool_job_rolls_back_to_a_state_and_continues_bit_for_bit() {
    let pool = support::start_pool(5, |_, cfg| cfg);
    let bootstrap = pool.bootstrap_addrs();
    let (p1, after, local_p1, local_after) = std::thread::spawn(move || {
        let data = data();
        let sb = sandbox();
        let popts = support::pool_options(bootstrap, false);
        assert_eq!(popts.dummies, 1);
        let shards = mlp_shards();
        let mut cascade = PoolCascade::deploy(&shards, &config(), Some(&sb), &popts, &mut |_| {})
            .expect("deploys");
        assert_eq!(cascade.network().cascade.len(), 4, "3 layers and a dummy");
        let (p1, saved) = save_train_load_train(&mut cascade, &data);
        assert_eq!(saved.len(), 3, "one state per shard, none for the dummy");

        // A garbled state for the middle layer (a pool hop): the hop refuses
        // it with a clear error; the others get their own current state, so
        // every layer must go on exactly as if nothing had been sent.
        let mut states = cascade.save_state().expect("saves");
        let mid = states[1].len() / 2;
        states[1][mid] ^= 0x5a;
        let err = cascade.load_state(&states).expect_err("a garbled state");
        let msg = err.to_string();
        assert!(
            msg.contains("layer 1") && msg.contains("layer state") && msg.contains("checksum"),
            "{msg}"
        );
        // Truncated to a chunk's worth: refused as well.
        states[1].truncate(1000);
        let err = cascade.load_state(&states).expect_err("a truncated state");
        assert!(err.to_string().contains("layer state"), "{err}");
        train(&mut cascade, &data, K + M, K + M + 1);
        let after = digest(&mut cascade);
        cascade.close();

        let mut reference = local(EngineKind::Wasm);
        train(&mut reference, &data, 0, K + M);
        let local_p1 = digest(&mut reference);
        train(&mut reference, &data, K + M, K + M + 1);
        (p1, after, local_p1, digest(&mut reference))
    })
    .join()
    .expect("designer thread");
    assert_eq!(
        p1, local_p1,
        "the pool after a roll-back equals the local wasm run"
    );
    assert_eq!(
        after, local_after,
        "the refused state left the layer intact"
    );
    pool.shutdown();
}
