//! The job on a real pool: a bootstrap and six nodes on 127.0.0.1 (real
//! tasks, real sockets, Noise and yamux), the designer training the paper's
//! MLP through onion packets with a dummy hop, and what each node saw.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use mixnn_bootstrap::{Bootstrap, BootstrapConfig};
use mixnn_designer::pool::{NetworkReport, PoolCascade};
use mixnn_designer::{Cascade, EngineKind, Model, TrainOptions, TrainReport, train_local};
use mixnn_layer::TrainConfig;
use mixnn_node::{NodeConfig, PeerId};
use support::{Pool, sandbox};

mod support;

const NODES: usize = 6;

fn data() -> mixnn_data::Mnist {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    mixnn_data::load_mnist(&dir).expect("bundled MNIST")
}

fn options(engine: EngineKind) -> TrainOptions {
    TrainOptions {
        engine,
        epochs: 1,
        batch: 64,
        config: TrainConfig {
            seed: 11,
            ..TrainConfig::default()
        },
        train_limit: Some(6400),
        test_limit: Some(640),
        eval_batch: 64,
        model_name: "mlp".into(),
    }
}

/// Node and designer logs when `RUST_LOG` is set (e.g. `mixnn_node=debug`).
fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

fn start_pool() -> Pool {
    start_pool_with(|_, _| {})
}

/// A pool whose nodes' configuration `tweak` adjusts (given the node's
/// index).
fn start_pool_with(tweak: impl Fn(usize, &mut NodeConfig)) -> Pool {
    logs();
    support::start_pool(NODES, |i, cfg| {
        // Cover traffic on, fast. The links accept one public class, the
        // job's (the MLP at batch 64 travels in 64 KiB payloads), so cover,
        // which goes out in every public class, has the job's length too.
        let mut cfg = NodeConfig {
            cover_loop_ms: 100,
            cover_drop_ms: 100,
            cover_bytes_per_sec: 16 << 20,
            packet_sizes: vec![2609 + 65536],
            ..cfg
        };
        tweak(i, &mut cfg);
        cfg
    })
}

/// Trains on the pool in a thread of its own (the designer runs its own
/// runtime); returns the report, the cascade's peers in order, and the
/// exported model.
fn train_on_pool(
    pool: &Pool,
    shards: &[mixnn_grad::pb::ModelProto],
    keep_first: bool,
) -> (
    TrainReport,
    Vec<(String, PeerId)>,
    mixnn_grad::pb::ModelProto,
) {
    let (report, net, exported) = train_on_pool_after(pool, shards, keep_first, || {});
    let peers = net
        .cascade
        .into_iter()
        .map(|(role, p)| (role, p.parse().expect("peer id")))
        .collect();
    (report, peers, exported)
}

/// The same, with `pause` run between deployment and training; returns
/// the job's network report.
fn train_on_pool_after(
    pool: &Pool,
    shards: &[mixnn_grad::pb::ModelProto],
    keep_first: bool,
    pause: impl FnOnce() + Send + 'static,
) -> (TrainReport, NetworkReport, mixnn_grad::pb::ModelProto) {
    let bootstrap = pool.bootstrap_addrs();
    let shards = shards.to_vec();
    std::thread::spawn(move || {
        let opts = options(EngineKind::Wasm);
        let data = data();
        let sb = sandbox();
        let popts = support::pool_options(bootstrap, keep_first);
        let mut cascade =
            PoolCascade::deploy(&shards, &opts.config, Some(&sb), &popts, &mut |_| {})
                .expect("deploys");
        pause();
        let sample = mixnn_designer::sample_shape(&shards, &data).expect("shape");
        let report = mixnn_designer::train_model(
            &mut cascade,
            shards.len(),
            &sample,
            &data,
            &opts,
            &mut mixnn_designer::Quiet,
        )
        .expect("trains on the pool");
        let exported = cascade.export_model(&shards).expect("exports");
        let net = cascade.network();
        cascade.close();
        (report, net, exported)
    })
    .join()
    .expect("designer thread")
}

fn mlp_shards() -> Vec<mixnn_grad::pb::ModelProto> {
    let model = mixnn_shard::mlp(3, 64, mixnn_shard::Form::Gemm);
    let plan = mixnn_shard::plan(&model, None).expect("plan");
    mixnn_shard::split(&model, &plan).expect("split")
}

/// The single-process reference: the same shards and options in guests.
fn local_wasm(shards: &[mixnn_grad::pb::ModelProto]) -> TrainReport {
    let sb = sandbox();
    train_local(
        shards,
        &data(),
        &options(EngineKind::Wasm),
        Some(&sb),
        &mut mixnn_designer::Quiet,
    )
    .expect("local run")
    .0
}

#[test]
fn pool_training_is_bit_identical_to_local_wasm_and_nodes_see_only_neighbours() {
    let pool = start_pool();
    let shards = mlp_shards();
    let (report, cascade, exported) = train_on_pool(&pool, &shards, false);

    // The onion path changes nothing numerically.
    let local = local_wasm(&shards);
    assert_eq!(report.params_sha256, local.params_sha256);
    assert_eq!(report.final_test_accuracy, local.final_test_accuracy);
    assert_eq!(report.epochs[0].train_loss, local.epochs[0].train_loss);
    assert!(report.final_test_accuracy > 0.5, "it learned something");

    // Export: the merged model, run natively, scores what the pool scored.
    let mut merged = Cascade::load(
        EngineKind::Native,
        std::slice::from_ref(&exported),
        &TrainConfig::default(),
        None,
    )
    .expect("merged model loads");
    let test = data().test.subset(640);
    let sample = mixnn_designer::sample_shape(&shards, &data()).expect("shape");
    let acc = mixnn_designer::evaluate(&mut merged, &test, &sample, 64).expect("evaluates");
    assert!(
        (acc - report.final_test_accuracy).abs() < 1e-9,
        "exported {acc} vs distributed {}",
        report.final_test_accuracy
    );

    // What each node saw: its two neighbours and nothing else of the cascade.
    assert_eq!(cascade.len(), 4, "3 layers + 1 dummy: {cascade:?}");
    let order: Vec<PeerId> = cascade.iter().map(|(_, p)| *p).collect();
    // A dummy is never first: the first hop is the first layer.
    assert_eq!(cascade[0].0, "layer 0", "{cascade:?}");
    for (i, (role, peer)) in cascade.iter().enumerate() {
        let node = pool
            .nodes
            .iter()
            .find(|n| n.peer_id() == *peer)
            .expect("cascade node is ours");
        let views = node.job_views();
        assert_eq!(views.len(), 1, "{role}: one job");
        let v = &views[0];
        let seen: BTreeSet<PeerId> = v.from.union(&v.to).copied().collect();
        let neighbours: BTreeSet<PeerId> = [i.checked_sub(1), Some(i + 1)]
            .into_iter()
            .flatten()
            .filter_map(|j| order.get(j).copied())
            .collect();
        for other in order
            .iter()
            .filter(|p| **p != *peer && !neighbours.contains(p))
        {
            assert!(
                !seen.contains(other),
                "{role} (hop {i}) saw a non-neighbour"
            );
        }
        for n in &neighbours {
            assert!(
                seen.contains(n),
                "{role} (hop {i}) never talked to its neighbour"
            );
        }
        // At most the two neighbours (the designer counts as one at the ends).
        assert!(
            seen.len() <= 2,
            "{role} (hop {i}) talked to {} peers",
            seen.len()
        );
        let reads_labels = v.e2e_read.contains_key("labels");
        assert_eq!(reads_labels, role == "layer 2", "{role}: labels");
        if i > 0 {
            assert!(
                !v.input_shapes
                    .iter()
                    .any(|s| s.len() == 4 && s[1..] == [1, 28, 28]),
                "{role} (hop {i}) received raw input"
            );
        }
        assert!(
            v.e2e_read.contains_key("init"),
            "{role}: its shard came end to end"
        );
    }
    hop_views_are_alike(&pool, &order);
    // The wire: every packet any node sent or received, cover included,
    // has the one length of the job's class (counted at the stream tap).
    for n in &pool.nodes {
        let lengths = n.metrics().link.lengths();
        assert_eq!(
            lengths.keys().copied().collect::<Vec<_>>(),
            vec![2609 + 65536],
            "packet lengths seen by {}",
            n.peer_id()
        );
        assert!(mixnn_node::LinkMetrics::get(&n.metrics().cover_loops_sent) > 0);
    }
    // Nodes outside the cascade never heard of the job.
    for n in &pool.nodes {
        if !order.contains(&n.peer_id()) {
            assert!(n.job_views().is_empty());
        }
    }
}

/// Finding 3 of issue 10, from what each hop saw: the end-to-end sections
/// of one kind of packet have one length at every hop, and the only
/// control packets (init, export, close) a hop can attribute to the job are
/// the ones addressed to it: the blanks of the padded batches and the other
/// hops' messages pass it as relays under fresh handles, like cover
/// (PROTOCOL.md §12.3, §14.1). On the code before, the sections differed
/// (requests, replies, last chunks) and every hop relayed the others'
/// chunks under the job's handle, so their count showed the shard sizes and
/// its position.
fn hop_views_are_alike(pool: &Pool, order: &[PeerId]) {
    let mut lens = Vec::new();
    let mut controls = Vec::new();
    for peer in order {
        let node = pool
            .nodes
            .iter()
            .find(|n| n.peer_id() == *peer)
            .expect("ours");
        let v = node.job_views().pop().expect("a view");
        let kind = |op: &str| {
            if op == "init" || op == "relay" {
                "control"
            } else {
                "compute"
            }
        };
        let l: BTreeSet<(&str, usize)> = v.e2e_lens.keys().map(|(op, n)| (kind(op), *n)).collect();
        let c: u64 = ["init", "relay"]
            .iter()
            .filter_map(|op| v.ops.get(*op))
            .sum();
        let own: u64 = ["init", "export", "close"]
            .iter()
            .filter_map(|k| v.e2e_read.get(*k))
            .sum();
        assert_eq!(
            c, own,
            "every control packet a hop ties to the job is one addressed to it"
        );
        lens.push(l);
        controls.push(c);
    }
    for (i, l) in lens.iter().enumerate() {
        assert_eq!(l, &lens[0], "hop {i} saw other section lengths than hop 0");
        assert_eq!(l.len(), 2, "one control and one compute length: {l:?}");
    }
    println!(
        "control packets tied to the job, per hop: {controls:?}; section lengths {:?}",
        lens[0]
    );
}

/// Finding 4 of issue 10: two colluding hops on both sides of a dummy try
/// to tell which message that one of them sent is which the other got.
/// Layer 0 (colluder A) emits its activations, the dummy passes them on,
/// layer 1 (colluder B) receives them; 10 messages of 64 samples. With the
/// old identity dummy, byte equality links all of them; with the secret
/// sign mask (folded into layer 1, still bit-exact forward, backward and
/// through SGD steps), byte equality links none. Comparing magnitudes
/// still links all of them: no exact computation can hide |x| (PROTOCOL.md
/// §12.6), and the test states that figure rather than hide it.
#[test]
fn colluders_across_a_dummy_match_no_bytes_but_still_magnitudes() {
    use mixnn_designer::pool::mask::{Fold, relay_op};
    use mixnn_layer::{LossKind, Tensor};
    let shards = mlp_shards();
    let data = data();
    let base = options(EngineKind::Native).config;
    let layer = |i: usize, shard: &mixnn_grad::pb::ModelProto| {
        let cfg = mixnn_designer::layer_config(&base, i, shards.len(), LossKind::Nll);
        mixnn_designer::load_layer(
            EngineKind::Native,
            i,
            &mixnn_shard::encode(shard),
            cfg,
            None,
        )
        .expect("layer")
    };
    let fold = Fold::of(&shards[1], 1).expect("layer 1 takes a mask");
    let mask: Vec<bool> = (0..fold.width()).map(|c| (c * 7 + 3) % 5 < 2).collect();
    let folded = fold.apply_to_shard(&shards[1], &mask, 1).expect("folds");
    let sb = sandbox();
    let relay = |op: &str| {
        let mut g = sb
            .instantiate(sb.guest(mixnn_sandbox::GuestKind::Relay).unwrap())
            .unwrap();
        g.load(op.as_bytes(), &base).expect("relay loads");
        g
    };
    let (mut dummy, mut old_dummy) = (relay(&relay_op(&mask)), relay("identity"));
    let (mut a, mut b, mut reference) = (
        layer(0, &shards[0]),
        layer(1, &folded),
        layer(1, &shards[1]),
    );
    let sample = mixnn_designer::sample_shape(&shards, &data).expect("shape");
    let (mut sent, mut got, mut got_old) = (Vec::new(), Vec::new(), Vec::new());
    // The bundled data's first 640 training images are distinct (later
    // batches repeat some, which would tie any matcher).
    for m in 0..10 {
        let idx: Vec<usize> = (m * 64..(m + 1) * 64).collect();
        let (x, _) = data.train.batch(&idx);
        let x = Tensor::new([&[64][..], &sample].concat(), x).unwrap();
        let y = a.forward(x).unwrap();
        let z = dummy.forward(&y).unwrap();
        got_old.push(old_dummy.forward(&y).unwrap());
        // Exact: layer 1 on the masked input with folded weights is layer 1.
        let (out, want) = (
            b.forward(z.clone()).unwrap(),
            reference.forward(y.clone()).unwrap(),
        );
        assert_eq!(bits(&out), bits(&want), "forward stays bit-identical");
        let dz = Tensor::new(
            out.shape.clone(),
            out.data.iter().map(|v| v - 0.5).collect(),
        )
        .unwrap();
        let dx = dummy
            .backward(&b.backward(dz.clone()).unwrap().unwrap())
            .unwrap()
            .unwrap();
        let want = reference.backward(dz).unwrap().unwrap();
        assert_eq!(dx.data, want.data, "the gradient A gets back is the same");
        b.step().unwrap();
        reference.step().unwrap();
        a.backward(dx).unwrap();
        a.step().unwrap();
        sent.push(y);
        got.push(z);
    }
    let link = |got: &[Tensor], same: &dyn Fn(&Tensor, &Tensor) -> bool| {
        got.iter()
            .enumerate()
            .filter(|(j, g)| {
                let hits: Vec<usize> = (0..sent.len()).filter(|&i| same(&sent[i], g)).collect();
                hits == [*j]
            })
            .count()
    };
    let bytes = |a: &Tensor, b: &Tensor| bits(a) == bits(b);
    let magnitude = |a: &Tensor, b: &Tensor| {
        a.data
            .iter()
            .zip(&b.data)
            .all(|(x, y)| x.abs().to_bits() == y.abs().to_bits())
    };
    let (old, new, mag) = (
        link(&got_old, &bytes),
        link(&got, &bytes),
        link(&got, &magnitude),
    );
    println!(
        "colluders across a dummy, 10 messages: bytes {old}/10 before, {new}/10 after; |x| {mag}/10"
    );
    assert_eq!(old, 10, "the identity dummy is transparent");
    assert_eq!(new, 0, "byte equality links nothing across a masked dummy");
    assert_eq!(mag, 10, "magnitudes still link (the price of exactness)");
}

fn bits(t: &mixnn_layer::Tensor) -> Vec<u32> {
    t.data.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn keeping_the_first_layer_keeps_raw_input_off_the_pool() {
    let pool = start_pool();
    let shards = mlp_shards();
    let (report, cascade, _) = train_on_pool(&pool, &shards, true);
    let local = local_wasm(&shards);
    assert_eq!(report.params_sha256, local.params_sha256);
    for (_, peer) in &cascade {
        let node = pool
            .nodes
            .iter()
            .find(|n| n.peer_id() == *peer)
            .expect("cascade node is ours");
        for v in node.job_views() {
            assert!(
                !v.input_shapes.iter().any(|s| s.len() == 4),
                "a pool node received image-shaped input"
            );
        }
    }
}

/// A job that outlives its nodes' mix keys: 15 s epochs with 30 s of grace
/// (short enough for a test; the grace long enough that a loaded machine
/// delivers every deployment packet within the grace of its key),
/// and the designer waits after deployment until every key it deployed
/// with has expired. On main the designer kept the keys it read at
/// deployment, so every later packet named an epoch the hops no longer
/// held and the job died; now it reads the nodes' new keys (quorum of the
/// directory) and the job stays bit-identical to the local run.
#[test]
fn a_job_outlives_its_nodes_key_rotation() {
    const EPOCH: u64 = 15;
    const GRACE: u64 = 30;
    let pool = start_pool_with(|_, cfg| {
        cfg.epoch_secs = EPOCH;
        cfg.key_grace_secs = GRACE;
    });
    let shards = mlp_shards();
    // The reference first: it compiles the guest in the sandbox the nodes
    // share, so no deployment packet waits out a key's grace behind a cold
    // compile (tens of seconds on a loaded 2-core machine).
    let local = local_wasm(&shards);
    let (report, net, _) = train_on_pool_after(&pool, &shards, false, || {
        // Past the grace of the epoch the deployment's keys belong to.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let expiry = (now / EPOCH + 1) * EPOCH + GRACE + 1;
        std::thread::sleep(Duration::from_secs(expiry - now));
    });
    assert!(
        net.key_refreshes >= net.cascade.len() as u64,
        "every hop's key was refreshed: {} refreshes for {} hops",
        net.key_refreshes,
        net.cascade.len()
    );
    assert_eq!(report.params_sha256, local.params_sha256);
    assert_eq!(report.final_test_accuracy, local.final_test_accuracy);
}

/// Two bootstraps that disagree: the second lists only half the pool (its
/// other nodes never reach it, as if it hid them). On main the designer
/// used the first bootstrap that answered; now both must list a node (the
/// default quorum of two is both), and the job is refused with an error
/// naming what is short, unless the operator accepts a quorum of one.
#[test]
fn two_bootstraps_that_disagree_are_trusted_only_by_quorum() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let partial = rt
        .block_on(Bootstrap::start(BootstrapConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
            ..Default::default()
        }))
        .expect("second bootstrap starts");
    let partial_addr = partial.listen_addrs()[0].to_string();
    let pool = start_pool_with(move |i, cfg| {
        if i < 3 {
            cfg.bootstrap.push(partial_addr.clone());
        }
    });
    let both = vec![
        pool.bootstrap.listen_addrs()[0].to_string(),
        partial.listen_addrs()[0].to_string(),
    ];
    let shards = mlp_shards();
    let deploy = |quorum: Option<usize>| {
        let (both, shards) = (both.clone(), shards.clone());
        std::thread::spawn(move || {
            let mut popts = support::pool_options(both, false);
            popts.quorum = quorum;
            popts.wait_for_nodes = Duration::from_secs(3);
            let sb = sandbox();
            let cfg = options(EngineKind::Wasm).config;
            PoolCascade::deploy(&shards, &cfg, Some(&sb), &popts, &mut |_| {})
                .map(|mut c| c.close())
                .map_err(|e| e.to_string())
        })
        .join()
        .expect("designer thread")
    };
    let err = deploy(None).expect_err("3 agreed nodes cannot hold 4 hops");
    assert!(
        err.contains("2 of 2 bootstraps agree on only 3 nodes") && err.contains("4 needed"),
        "{err}"
    );
    deploy(Some(1)).expect("a quorum of one takes what either lists");
    rt.block_on(partial.shutdown());
}
