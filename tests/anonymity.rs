//! The traffic-analysis adversary (SPEC §7): a global passive observer of
//! every link of a real pool (a bootstrap and six nodes on 127.0.0.1, real
//! tasks, real sockets) records, per directed link, when packets go and how
//! long they are (the nodes' opt-in link trace, which holds no secret),
//! while a short job runs with cover traffic. It then runs a simple
//! correlation attack: for each packet the designer sends, follow the
//! packet that leaves the receiving node first after it arrived, hop after
//! hop, and guess the cascade's nodes and order as the most common chain.
//! It reports how often a message's chain, and the majority guess, is the
//! true cascade, with send slots off and on.
//!
//! What is asserted is only what is sound: the trace is complete (every
//! node traced, the designer's packets seen, a guess computed for every
//! message), and with slots off the attack finds the cascade (the observer
//! this mode exists against). The rates are printed (`--nocapture`) and
//! kept in docs/anonymity.md; no time is asserted.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use mixnn_designer::{EngineKind, TrainOptions};
use mixnn_layer::TrainConfig;
use mixnn_node::{NodeConfig, PeerId, TraceEntry};
use support::Pool;

mod support;

const NODES: usize = 6;
/// Jobs (cascades, seeds) per mode.
const RUNS: u64 = 3;
/// The job's packet length: the MLP at batch 64 travels in 64 KiB payloads.
const JOB_LEN: u32 = 2609 + 65536;
/// How long after a packet arrives the attacker looks for the one it became.
const WINDOW_US: u64 = 2_000_000;
/// Packets each node's trace keeps at most.
const TRACE_MAX: usize = 1 << 20;

/// A pool whose nodes run cover traffic and, with `slot_ms` > 0, send slots
/// in the job's class.
fn observed_pool(slot_ms: u64) -> Pool {
    support::start_pool(NODES, |_, cfg| NodeConfig {
        cover_loop_ms: 100,
        cover_drop_ms: 100,
        cover_bytes_per_sec: 32 << 20,
        packet_sizes: vec![JOB_LEN],
        slot_ms,
        slot_class: 65536,
        ..cfg
    })
}

/// Trains a short job with `seed` (its own random cascade); returns the
/// cascade's peers in order.
fn short_job(pool: &Pool, seed: u64) -> Vec<PeerId> {
    let bootstrap = pool.bootstrap_addrs();
    std::thread::spawn(move || {
        let opts = TrainOptions {
            engine: EngineKind::Wasm,
            epochs: 1,
            batch: 64,
            config: TrainConfig {
                seed,
                ..TrainConfig::default()
            },
            train_limit: Some(640),
            test_limit: Some(64),
            eval_batch: 64,
            model_name: "mlp".into(),
        };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
        let data = mixnn_data::load_mnist(&dir).expect("bundled MNIST");
        let model = mixnn_shard::mlp(3, 64, mixnn_shard::Form::Gemm);
        let plan = mixnn_shard::plan(&model, None).expect("plan");
        let shards = mixnn_shard::split(&model, &plan).expect("split");
        let popts = support::pool_options(bootstrap, false);
        let (mut cascade, _) = support::deploy_and_train(&shards, &data, &opts, &popts);
        let order = (cascade.network().cascade.into_iter())
            .map(|(_, p)| p.parse().expect("peer id"))
            .collect();
        cascade.close();
        order
    })
    .join()
    .expect("designer thread")
}

/// What the observer saw: each node's packets, in and out, by time.
struct View {
    traces: BTreeMap<PeerId, Vec<TraceEntry>>,
    designer: PeerId,
}

impl View {
    fn new(traces: BTreeMap<PeerId, Vec<TraceEntry>>) -> View {
        let pool: BTreeSet<PeerId> = traces.keys().copied().collect();
        let mut outsiders = BTreeMap::<PeerId, usize>::new();
        for e in traces.values().flatten().filter(|e| !e.out) {
            if !pool.contains(&e.peer) {
                *outsiders.entry(e.peer).or_default() += 1;
            }
        }
        let designer = (outsiders.into_iter().max_by_key(|(_, n)| *n))
            .map(|(p, _)| p)
            .expect("the observer saw the designer's packets");
        View { traces, designer }
    }

    /// First packet `node` sent in `[t, t + WINDOW]`.
    fn first_out(&self, node: &PeerId, t: u64) -> Option<TraceEntry> {
        (self.traces.get(node)?.iter())
            .filter(|e| e.out && e.micros >= t && e.micros <= t + WINDOW_US)
            .min_by_key(|e| e.micros)
            .copied()
    }

    /// When `to` received the first packet from `from` at or after `t`.
    fn arrival(&self, to: &PeerId, from: &PeerId, t: u64) -> Option<u64> {
        (self.traces.get(to)?.iter())
            .filter(|e| !e.out && e.peer == *from && e.micros >= t)
            .map(|e| e.micros)
            .min()
    }

    /// The chain of one designer packet arriving at `first` at `t`, up to
    /// the first node seen twice (the forward path of every message).
    fn chain(&self, first: PeerId, mut t: u64) -> Vec<PeerId> {
        let mut chain = vec![first];
        let mut cur = first;
        while let Some(e) = self.first_out(&cur, t) {
            if e.peer == self.designer || chain.contains(&e.peer) {
                break;
            }
            t = self.arrival(&e.peer, &cur, e.micros).unwrap_or(e.micros);
            cur = e.peer;
            chain.push(cur);
        }
        chain
    }

    /// Every designer packet's chain.
    fn guesses(&self) -> Vec<Vec<PeerId>> {
        let mut starts: Vec<(u64, PeerId)> = (self.traces.iter())
            .flat_map(|(node, es)| {
                (es.iter())
                    .filter(|e| !e.out && e.peer == self.designer)
                    .map(|e| (e.micros, *node))
            })
            .collect();
        starts.sort();
        starts.into_iter().map(|(t, n)| self.chain(n, t)).collect()
    }
}

/// Per-message success rate and whether the majority guess was right.
fn attack(view: &View, truth: &[PeerId]) -> (f64, bool, usize) {
    let guesses = view.guesses();
    assert!(!guesses.is_empty(), "a guess for every designer packet");
    let right = guesses.iter().filter(|g| g.as_slice() == truth).count();
    let mut votes = BTreeMap::<&Vec<PeerId>, usize>::new();
    for g in &guesses {
        *votes.entry(g).or_default() += 1;
    }
    let majority = votes.into_iter().max_by_key(|(_, n)| *n).map(|(g, _)| g);
    let rate = right as f64 / guesses.len() as f64;
    (rate, majority.is_some_and(|g| g == truth), guesses.len())
}

/// Runs [`RUNS`] jobs on one observed pool; per job the per-message
/// success rate and whether the majority guess was the cascade.
fn observe(slot_ms: u64) -> Vec<(f64, bool)> {
    let pool = observed_pool(slot_ms);
    let mut results = Vec::new();
    for seed in 0..RUNS {
        for n in &pool.nodes {
            n.metrics().link.trace.start(TRACE_MAX);
        }
        let truth = short_job(&pool, 100 + seed);
        let traces: BTreeMap<PeerId, Vec<TraceEntry>> = (pool.nodes.iter())
            .map(|n| (n.peer_id(), n.metrics().link.trace.take()))
            .collect();
        for (peer, t) in &traces {
            assert!(!t.is_empty(), "node {peer}: empty trace");
            assert!(t.len() < TRACE_MAX, "node {peer}: trace cut short");
        }
        let view = View::new(traces);
        let (rate, majority, messages) = attack(&view, &truth);
        println!(
            "slots {slot_ms} ms, seed {seed}: {messages} designer packets, \
             chain right {:.1}%, majority guess right: {majority}",
            rate * 100.0
        );
        results.push((rate, majority));
    }
    pool.shutdown();
    results
}

fn summary(slot_ms: u64, r: &[(f64, bool)]) -> f64 {
    let mean = r.iter().map(|(x, _)| x).sum::<f64>() / r.len().max(1) as f64;
    let majority = r.iter().filter(|(_, m)| *m).count();
    println!(
        "ANONYMITY slot_ms={slot_ms}: mean chain success {:.1}%, majority right {majority}/{}",
        mean * 100.0,
        r.len()
    );
    mean
}

#[test]
fn a_link_observer_finds_the_cascade_without_slots_and_the_figures_with() {
    let off = observe(0);
    let off_mean = summary(0, &off);
    let on = observe(50);
    summary(50, &on);
    // Without slots the observer of every link rebuilds the cascade.
    assert!(
        off.iter().any(|(_, majority)| *majority),
        "the attack found no cascade without slots (mean {off_mean})"
    );
}
