//! Faults (issue 11): nodes killed with SIGKILL under a running job, the
//! designer noticing, locating and replacing the hop, and the demo's chaos
//! runs ending on the undisturbed run's parameters bit for bit.
//!
//! The designer-level tests drive one [`PoolCascade`] step by step over a
//! pool of real node processes (or, for the graceful stop, nodes of this
//! process): they check what the designer does between the failure and
//! the repaired cascade. The demo tests run `mixnn demo --kill` and read
//! its JSON: the whole loop, checkpoints and replay included.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use mixnn_designer::pool::{PoolCascade, PoolError};
use mixnn_designer::{DesignerError, Model, Repair};
use mixnn_layer::{Tensor, TrainConfig};

#[path = "faults/procs.rs"]
mod procs;
mod support;

fn data() -> mixnn_data::Mnist {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    mixnn_data::load_mnist(&dir).expect("bundled MNIST")
}

fn shards() -> Vec<mixnn_grad::pb::ModelProto> {
    let model = mixnn_shard::mlp(3, 64, mixnn_shard::Form::Gemm);
    let plan = mixnn_shard::plan(&model, None).expect("plan");
    mixnn_shard::split(&model, &plan).expect("split")
}

/// Training batch `i` (64 samples) as the first shard takes it.
fn batch(data: &mixnn_data::Mnist, sample: &[usize], i: usize) -> (Tensor, Vec<i64>) {
    let idx: Vec<usize> = (i * 64..(i + 1) * 64).collect();
    let (x, labels) = data.train.batch(&idx);
    let mut shape = vec![64];
    shape.extend_from_slice(sample);
    (Tensor::new(shape, x).expect("batch"), labels)
}

/// What the designer saw around one failed hop.
#[derive(Debug)]
struct Run {
    /// The cascade (role, peer) before and after the repair.
    before: Vec<(String, String)>,
    after: Vec<(String, String)>,
    /// The failed step's error, as text.
    failure: String,
    /// The hop (from 1) whose link closed, if the failure was that.
    closed: Option<usize>,
    /// Whether the failure was a loss within the detection bound.
    lost: bool,
    /// A repair asked for while every hop was alive (a loss of a message,
    /// no failure): probes only.
    idle: Result<Option<Repair>, String>,
    /// Probes of the bring-up sweep (deploy), then of the idle repair.
    deploy_probes: u64,
    idle_probes: u64,
    repair: Result<Option<Repair>, String>,
    probes: u64,
    /// The step after the repair.
    next: Option<Result<f32, String>>,
}

/// Deploys the MLP with `dummies` on the pool behind `bootstrap`, trains
/// six steps (so the detection bound is measured), has `stop` take a hop's
/// node down (on this thread, given the cascade), then runs a step, repairs
/// and runs one more.
fn fail_a_hop(
    bootstrap: Vec<String>,
    dummies: usize,
    stop: impl FnOnce(&[(String, String)]),
) -> Run {
    let (to_main, from_designer) = mpsc::channel();
    let (to_designer, from_main) = mpsc::channel::<()>();
    let designer = std::thread::spawn(move || {
        let data = data();
        let shards = shards();
        let sample = mixnn_designer::sample_shape(&shards, &data).expect("shape");
        let mut popts = support::pool_options(bootstrap, false);
        popts.dummies = dummies;
        // The ceiling: a node may compile its guest cold on a loaded machine.
        popts.timeout = Duration::from_secs(300);
        let config = TrainConfig {
            seed: 11,
            ..TrainConfig::default()
        };
        let sb = support::sandbox();
        let mut cascade =
            PoolCascade::deploy(&shards, &config, Some(&sb), &popts, &mut |_| {}).expect("deploys");
        let deploy_probes = cascade.network().probes;
        for i in 0..6 {
            let (x, labels) = batch(&data, &sample, i);
            cascade.train_batch(x, &labels).expect("a step");
        }
        let lost = DesignerError::Job(PoolError::Lost {
            exchange: "training message".into(),
            waited_ms: 1,
            rule: "test".into(),
            keys_refreshed: 0,
        });
        let idle = cascade.repair(&lost).map_err(|e| e.to_string());
        let idle_probes = cascade.network().probes - deploy_probes;
        to_main.send(cascade.network().cascade).unwrap();
        from_main.recv().unwrap();
        let (x, labels) = batch(&data, &sample, 6);
        let err = cascade
            .train_batch(x, &labels)
            .expect_err("a step over a dead hop fails");
        let closed = match &err {
            DesignerError::Job(PoolError::LinkClosed { hop, .. }) => Some(*hop),
            _ => None,
        };
        let lost = matches!(err, DesignerError::Job(PoolError::Lost { .. }));
        let repair = cascade.repair(&err).map_err(|e| e.to_string());
        let next = matches!(repair, Ok(Some(_))).then(|| {
            let (x, labels) = batch(&data, &sample, 7);
            cascade.train_batch(x, &labels).map_err(|e| e.to_string())
        });
        let net = cascade.network();
        cascade.close();
        Run {
            before: Vec::new(),
            after: net.cascade,
            failure: err.to_string(),
            closed,
            lost,
            idle,
            deploy_probes,
            idle_probes,
            repair,
            probes: net.probes - deploy_probes,
            next,
        }
    });
    let Ok(before) = from_designer.recv() else {
        std::panic::resume_unwind(designer.join().expect_err("the designer failed"));
    };
    stop(&before);
    to_designer.send(()).unwrap();
    let mut run = designer.join().expect("designer thread");
    run.before = before;
    run
}

/// Checks a run whose hop `t` (from 0) was replaced by the one spare.
fn replaced(run: &Run, t: usize, spare: &str) {
    let r = match &run.repair {
        Ok(Some(r)) => r,
        other => panic!("repair after {}: {other:?}", run.failure),
    };
    eprintln!("failure: {}\nrepair: {r:?}", run.failure);
    assert_eq!(r.hop, t, "{}", run.failure);
    assert_eq!(r.failed_node, run.before[t].1);
    assert_eq!(r.new_node, spare);
    assert_eq!(r.role, run.before[t].0);
    assert_eq!(run.after[t], (run.before[t].0.clone(), spare.to_string()));
    for j in (0..run.before.len()).filter(|&j| j != t) {
        assert_eq!(run.after[j], run.before[j], "only the failed hop changes");
    }
    match &run.next {
        Some(Ok(loss)) => assert!(loss.is_finite()),
        other => panic!("the step after the repair: {other:?}"),
    }
}

/// The spare of a pool: the node that holds no hop.
fn spare(nodes: &[String], cascade: &[(String, String)]) -> String {
    let free: Vec<&String> = (nodes.iter())
        .filter(|p| cascade.iter().all(|(_, c)| c != *p))
        .collect();
    assert_eq!(free.len(), 1, "one spare");
    free[0].clone()
}

/// SIGKILL to the node of the last hop: the designer's link to it closes,
/// so the step fails at once (not after the bound) naming that hop, and
/// the spare takes its place. While every hop was alive, a loss named no
/// hop: every probe came back and nothing was replaced.
#[test]
fn a_killed_end_hop_is_noticed_at_once_and_replaced() {
    let mut pool = procs::Procs::start(4);
    let peers: Vec<String> = pool.nodes.iter().map(|(_, p)| p.clone()).collect();
    let run = fail_a_hop(vec![pool.bootstrap.clone()], 0, |cascade| {
        pool.kill(&cascade[2].1);
    });
    assert!(matches!(run.idle, Ok(None)), "{:?}", run.idle);
    assert_eq!(run.deploy_probes, 1, "the bring-up sweep: one, to the end");
    assert_eq!(run.idle_probes, 3, "one probe per hop, all answered");
    assert_eq!(run.closed, Some(3), "{}", run.failure);
    replaced(&run, 2, &spare(&peers, &run.before));
    // A closed link needs no probe to locate it; the repaired cascade is
    // swept before the new node's init.
    assert_eq!(run.probes - run.idle_probes, 1);
}

/// SIGKILL to the node of the middle layer: nothing the designer is linked
/// to closes, so the step is lost after the measured bound; probes outward
/// from the first hop find the middle one silent, and the spare takes it.
#[test]
fn a_killed_middle_hop_is_located_by_probes() {
    let mut pool = procs::Procs::start(4);
    let peers: Vec<String> = pool.nodes.iter().map(|(_, p)| p.clone()).collect();
    let run = fail_a_hop(vec![pool.bootstrap.clone()], 0, |cascade| {
        pool.kill(&cascade[1].1);
    });
    assert!(run.lost, "{}", run.failure);
    assert!(
        run.failure.contains("median"),
        "a measured bound: {}",
        run.failure
    );
    replaced(&run, 1, &spare(&peers, &run.before));
    // Hop 1 answered, hop 2 did not; then the repaired cascade's sweep.
    assert_eq!(run.probes - run.idle_probes, 2 + 1);
}

/// A node stopped the clean way (as on Ctrl-C) closes its links: the
/// designer, linked to it as the first hop, fails at once. With no node
/// outside the cascade the repair is a clear error naming what is missing.
#[test]
fn a_stopped_node_fails_fast_and_no_spare_is_a_clear_error() {
    let mut pool = support::start_pool(3, |_, cfg| mixnn_node::NodeConfig {
        cover_loop_ms: 0,
        cover_drop_ms: 0,
        ..cfg
    });
    let nodes = std::mem::take(&mut pool.nodes);
    let mut nodes: Vec<Option<mixnn_node::Node>> = nodes.into_iter().map(Some).collect();
    let rt = &pool.rt;
    let run = fail_a_hop(pool.bootstrap_addrs(), 0, |cascade| {
        let first = &cascade[0].1;
        let node = (nodes.iter_mut())
            .find(|n| {
                n.as_ref()
                    .is_some_and(|n| n.peer_id().to_base58() == *first)
            })
            .and_then(Option::take)
            .expect("the first hop's node");
        rt.block_on(node.shutdown());
    });
    assert_eq!(run.closed, Some(1), "{}", run.failure);
    let e = run.repair.expect_err("no spare node");
    assert!(
        e.contains("hop 1 (layer 0) failed")
            && e.contains("no node outside the cascade and the 1 failed node")
            && e.contains("start another node"),
        "{e}"
    );
    pool.nodes = nodes.into_iter().flatten().collect();
    pool.shutdown();
}

/// `mixnn demo` with `args` on the small subset; its JSON report.
fn demo(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--train-limit", "1280", "--test-limit", "320"];
    all.extend_from_slice(args);
    support::demo(&all).0
}

/// The job finished on the undisturbed run's parameters with one repair
/// per kill, each at the hop killed.
fn check_repaired(r: &serde_json::Value, kills: usize) {
    assert_eq!(r["matches_undisturbed"], serde_json::json!(true), "{r:#}");
    let repairs = r["repairs"].as_array().unwrap();
    let done = r["kills"].as_array().unwrap();
    assert_eq!(done.len(), kills, "{r:#}");
    assert_eq!(repairs.len(), kills, "{r:#}");
    for (k, rep) in done.iter().zip(repairs) {
        assert_eq!(k["hop"], rep["hop"], "{r:#}");
        for f in ["detected_after_ms", "repaired_after_ms", "steps_replayed"] {
            assert!(rep[f].is_u64(), "{f}: {r:#}");
        }
    }
    assert_eq!(r["detections"], serde_json::json!([]));
    // The counted training time leaves out what the faults cost (a
    // rollback restores the checkpoint's clock); the wall time has it.
    let d = &r["distributed"];
    let waited: u64 = (repairs.iter())
        .map(|x| {
            x["detected_after_ms"].as_u64().unwrap() + x["repaired_after_ms"].as_u64().unwrap()
        })
        .sum();
    let (wall, train) = (
        d["wall_seconds"].as_f64().unwrap(),
        d["train_seconds"].as_f64().unwrap(),
    );
    assert!(
        wall >= train + waited as f64 / 1e3,
        "wall {wall} s, training {train} s, faults {waited} ms"
    );
}

/// The middle layer of a 3-hop cascade killed mid-epoch.
#[test]
fn demo_survives_a_killed_middle_layer() {
    let r = demo(&["--dummies", "0", "--kill", "2@8"]);
    check_repaired(&r, 1);
    assert_eq!(r["repairs"][0]["hop"], serde_json::json!(2));
}

/// The dummy hop killed, wherever the job placed it.
#[test]
fn demo_survives_a_killed_dummy() {
    let r = demo(&["--dummies", "1", "--kill", "dummy@8"]);
    check_repaired(&r, 1);
    let hop = r["repairs"][0]["hop"].as_u64().unwrap() as usize;
    let cascade = r["distributed"]["network"]["cascade"].as_array().unwrap();
    assert_eq!(cascade[hop - 1][0], serde_json::json!("dummy"));
}

/// Both ends kept by the designer: the pool's only layer killed.
#[test]
fn demo_survives_a_kill_with_both_ends_kept() {
    let r = demo(&[
        "--keep-first",
        "--keep-last",
        "--dummies",
        "1",
        "--kill",
        "layer1@8",
    ]);
    check_repaired(&r, 1);
}

/// Two kills in one epoch, the second at the cascade's end.
#[test]
fn demo_survives_two_kills_in_one_epoch() {
    let r = demo(&["--dummies", "0", "--kill", "2@6", "--kill", "3@14"]);
    check_repaired(&r, 2);
}

/// A node SIGKILLed before the job starts stays listed by the bootstrap
/// until its descriptor expires. Chosen as a middle hop, which the designer
/// never dials, it is found by the bring-up sweep (a relay needs no
/// compiling, so a probe waits 10 s, or ten times the slowest before it)
/// instead of a lost init at the full timeout (here 300 s), and replaced;
/// the job then trains. Where the dead node lands is chance (OS
/// randomness), so the test deploys until it lands in the middle.
#[test]
fn a_dead_middle_hop_at_deploy_is_found_by_the_sweep_and_replaced() {
    let mut pool = procs::Procs::start(4);
    let dead = pool.nodes[0].1.clone();
    pool.kill(&dead);
    let data = data();
    let shards = shards();
    let sample = mixnn_designer::sample_shape(&shards, &data).expect("shape");
    let mut popts = support::pool_options(vec![pool.bootstrap.clone()], false);
    popts.dummies = 0;
    let sb = support::sandbox();
    let config = TrainConfig::default();
    for attempt in 1..=40 {
        let mut cascade = PoolCascade::deploy(&shards, &config, Some(&sb), &popts, &mut |_| {})
            .expect("deploys around the dead node");
        let net = cascade.network();
        assert!(
            net.cascade.iter().all(|(_, p)| *p != dead),
            "the dead node holds a hop: {net:?}"
        );
        let (x, labels) = batch(&data, &sample, 0);
        let loss = cascade.train_batch(x, &labels).expect("a step");
        assert!(loss.is_finite());
        cascade.close();
        let middle = (net.unreachable.iter()).find(|u| u.starts_with("hop 2 "));
        if let Some(found) = middle {
            eprintln!("attempt {attempt}: {found}; {} probes", net.probes);
            assert!(found.contains(&dead), "{found}");
            assert!(
                found.contains("bring-up sweep"),
                "found by a probe: {found}"
            );
            // The sweep's probe to the end went unanswered; of the probes
            // locating the silent hop, hop 1's came back and hop 2's did
            // not; then the new cascade's sweep came back.
            assert_eq!(net.probes, 1 + 2 + 1, "{net:?}");
            return;
        }
        eprintln!(
            "attempt {attempt}: dead node not in the middle: {:?}",
            net.unreachable
        );
    }
    panic!("the dead node never landed in the middle in 40 deploys");
}
