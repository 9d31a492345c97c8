//! A fork-join of two MLP branches run in this process: the parts compose
//! as the merge says, training learns, and a saved state replays exactly.

use mixnn_layer::{OptimizerKind, Tensor, TrainConfig};
use mixnn_shard::fork::{ForkJoin, MergeOp};
use mixnn_shard::{Form, pb};

use super::*;
use crate::report::params_sha256;

const BATCH: usize = 8;

fn chain(seed: u64) -> Vec<pb::ModelProto> {
    let m = mixnn_shard::mlp(seed, BATCH, Form::Gemm);
    let plan = mixnn_shard::plan(&m, None).unwrap();
    mixnn_shard::split(&m, &plan).unwrap()
}

/// Untrusted: the first two MLP shards (image → 64); trusted: the same
/// layers with other weights; head: the last shard (64 → 10, LogSoftmax).
fn fork(merge: MergeOp, untrusted_slot: usize) -> ForkJoin {
    let (u, t) = (chain(1), chain(2));
    ForkJoin {
        untrusted: u[..2].to_vec(),
        trusted: t[..2].to_vec(),
        untrusted_slot,
        merge,
        head: vec![u[2].clone()],
    }
}

fn base() -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerKind::Adam,
        learning_rate: 1e-3,
        seed: 7,
        ..TrainConfig::default()
    }
}

fn model(fj: &ForkJoin) -> ForkJoinModel<Cascade> {
    let loss = fork_loss(fj).unwrap();
    let u = load_part(
        EngineKind::Native,
        &fj.untrusted,
        Part::Untrusted,
        &base(),
        loss,
        None,
    )
    .unwrap();
    ForkJoinModel::new(u, fj, EngineKind::Native, &base(), None).unwrap()
}

/// A batch whose label is readable from the image: class k lights the
/// k-th band of rows.
fn batch(step: usize) -> (Tensor, Vec<i64>) {
    let mut x = vec![0.0f32; BATCH * 784];
    let mut labels = Vec::with_capacity(BATCH);
    for s in 0..BATCH {
        let k = (s * 3 + step * 7) % 10;
        for p in 0..784 {
            let band = (p / 28) * 10 / 28;
            let noise = (((s * 784 + p + step * 31) * 2_654_435_761) % 1000) as f32 / 4000.0;
            x[s * 784 + p] = noise + if band == k { 0.8 } else { 0.0 };
        }
        labels.push(k as i64);
    }
    (Tensor::new(vec![BATCH, 1, 28, 28], x).unwrap(), labels)
}

#[test]
fn inference_is_the_parts_composed_in_merge_order() {
    for (merge, slot) in [
        (MergeOp::Concat { axis: 1 }, 1),
        (MergeOp::Mul, 0),
        (MergeOp::Max, 1),
        (MergeOp::Mean, 0),
    ] {
        let fj = fork(merge, slot);
        let loss = fork_loss(&fj).unwrap();
        let load = |shards: &[pb::ModelProto], part| {
            load_part(EngineKind::Native, shards, part, &base(), loss, None).unwrap()
        };
        let (x, _) = batch(0);
        let u = load(&fj.untrusted, Part::Untrusted)
            .infer(x.clone())
            .unwrap();
        let t = load(&fj.trusted, Part::Trusted).infer(x.clone()).unwrap();
        let (a, b) = ordered(slot, &u, &t);
        if let MergeOp::Concat { .. } = merge {
            // A 64→10 head cannot take 128 features: the merge alone.
            let m = merge::forward(merge, a, b).unwrap();
            assert_eq!(m.shape, vec![BATCH, 128]);
            assert_eq!(&m.data[..64], &a.data[..64]);
            continue;
        }
        let want = load(&fj.head, Part::Head)
            .infer(merge::forward(merge, a, b).unwrap())
            .unwrap();
        let got = model(&fj).infer(x).unwrap();
        assert_eq!(got.data, want.data, "{merge:?}");
    }
}

#[test]
fn training_through_the_merge_learns_for_every_elementwise_merge() {
    for merge in [MergeOp::Add, MergeOp::Mul, MergeOp::Max, MergeOp::Mean] {
        let mut m = model(&fork(merge, 1));
        let first: f32 = (0..4)
            .map(|s| m.train_batch(batch(s).0, &batch(s).1).unwrap())
            .sum();
        for s in 4..60 {
            let (x, y) = batch(s);
            m.train_batch(x, &y).unwrap();
        }
        let last: f32 = (60..64)
            .map(|s| m.train_batch(batch(s).0, &batch(s).1).unwrap())
            .sum();
        assert!(
            last < first * 0.5,
            "{merge:?}: loss {first} over the first 4 steps, {last} over the last 4"
        );
        let t = m.timing();
        assert_eq!(t.steps, 64);
        assert!(t.trusted_seconds > 0.0 && t.untrusted_seconds > 0.0);
    }
}

#[test]
fn a_saved_state_replays_bit_for_bit_and_every_part_trains() {
    let fj = fork(MergeOp::Max, 0);
    let mut m = model(&fj);
    let before = m.export_params().unwrap();
    for s in 0..3 {
        let (x, y) = batch(s);
        m.train_batch(x, &y).unwrap();
    }
    let saved = m.save_state().unwrap();
    assert_eq!(saved.len(), 5, "2 untrusted + 2 trusted + 1 head");
    let after = m.export_params().unwrap();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_ne!(
            b[0].tensor.data, a[0].tensor.data,
            "layer {i} did not train"
        );
    }
    let run = |m: &mut ForkJoinModel<Cascade>| {
        for s in 3..6 {
            let (x, y) = batch(s);
            m.train_batch(x, &y).unwrap();
        }
        params_sha256(&m.export_params().unwrap())
    };
    let once = run(&mut m);
    m.load_state(&saved).unwrap();
    assert_eq!(run(&mut m), once);
    let mut fresh = model(&fj);
    for s in 0..3 {
        let (x, y) = batch(s);
        fresh.train_batch(x, &y).unwrap();
    }
    assert_eq!(run(&mut fresh), once, "two runs of one seed differ");
    let e = m.load_state(&saved[..4]).unwrap_err().to_string();
    assert!(e.contains("5 shards for 4 layers"), "{e}");
}

#[test]
fn parts_draw_distinct_seeds() {
    let b = base();
    let seeds: Vec<u64> = [Part::Untrusted, Part::Trusted, Part::Head]
        .iter()
        .flat_map(|&p| (0..3).map(move |i| (p, i)))
        .map(|(p, i)| part_config(&b, p, i, 3, LossKind::Nll).seed)
        .collect();
    let mut uniq = seeds.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), seeds.len());
    let head0 = part_config(&b, Part::Head, 0, 2, LossKind::Nll);
    assert!(head0.need_input_grad);
    assert_eq!(head0.loss, LossKind::None);
    assert_eq!(
        part_config(&b, Part::Head, 1, 2, LossKind::Nll).loss,
        LossKind::Nll
    );
    assert!(!part_config(&b, Part::Untrusted, 0, 2, LossKind::Nll).need_input_grad);
}

/// The untrusted branch's answer must have the batch and the shape its last
/// shard declares: a pool hop that answers `[K, 1, 1]` is refused before
/// the merge would broadcast it against the trusted branch.
#[test]
fn an_untrusted_answer_of_another_shape_is_refused_before_the_merge() {
    let m = model(&fork(MergeOp::Add, 0));
    assert_eq!(m.untrusted_out.as_deref(), Some(&[64][..]));
    let ok = Tensor::new(vec![BATCH, 64], vec![0.0; BATCH * 64]).unwrap();
    assert!(m.checked_untrusted(BATCH, ok).is_ok());
    let k = 1 << 12;
    for shape in [
        vec![k, 1, 1],
        vec![BATCH, 65],
        vec![BATCH + 1, 64],
        vec![BATCH, 64, 1],
    ] {
        let n: usize = shape.iter().product();
        let lie = Tensor::new(shape, vec![0.0; n]).unwrap();
        let e = m.checked_untrusted(BATCH, lie).unwrap_err().to_string();
        assert!(e.contains("untrusted branch answered"), "{e}");
    }
}
