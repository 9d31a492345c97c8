//! `mixnn demo`: the MixNN paper's MNIST experiment three ways, compared.
//!
//! 1. **distributed**: the local harness ([`super::harness`]) starts a
//!    bootstrap and N node processes on 127.0.0.1, and the paper's MLP is
//!    trained through onion packets with every protection on: dummy hops,
//!    loop and drop cover traffic in every public class under a byte
//!    budget, one size class for every packet of the job;
//! 2. the same shards in one process, each in a wasm guest;
//! 3. the same in one process with the native engine (the reference).
//!
//! All three use the same `TrainOptions`, the test batch included (the
//! training batch: pool packets are sized for it), so the wasm run must
//! end with the distributed run's parameters bit for bit; what is left to
//! compare is what the network costs in time. The pool is stopped before
//! the single-process runs so its cover traffic does not slow them.
//! Prints the comparison, writes the JSON report and a PNG in the style
//! of the paper's Figure 3.
//!
//! `--kill HOP@STEP` turns the harness into a chaos tool ([`chaos`]): the
//! node holding a hop is SIGKILLed mid-job, the designer repairs the
//! cascade from its latest checkpoint, and `matches_undisturbed` says
//! whether the job still ended on the single-process run's parameters.

mod chaos;
pub mod setup;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use mixnn_designer::{EngineKind, TrainReport};
use serde::Serialize;

use super::SandboxArgs;
use super::harness::{LocalPool, LocalPoolOptions};
use super::train::{PoolArgs, RecipeArgs};
use chaos::{Chaos, DemoDetection, DemoRepair, KillAt, KillReport};
use setup::{demo_model, job_class, pool_nodes, pool_shards, warm_guest_cache};

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Run this ONNX model instead of the paper's MLP: a chain, or a
    /// fork-join (Bident) model whose untrusted branch goes to the pool
    /// while its trusted branch, merge and head stay here (e.g. from
    /// `mixnn model bident`).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// For a fork-join `--model`: a node inside the branch that stays here
    /// (default: the branch with fewer parameters).
    #[arg(long, value_name = "NODE", requires = "model")]
    pub trusted_branch: Option<String>,
    /// Pool nodes to start. Default: one per pool layer and per dummy,
    /// plus one spare per `--kill` (at least one): 6 for the paper's MLP
    /// with 2 dummies.
    #[arg(long, value_name = "N")]
    pub nodes: Option<usize>,
    /// Dummy relay hops in the cascade (2: a cascade of 5 hops).
    #[arg(long, default_value_t = 2, value_name = "R")]
    pub dummies: usize,
    /// The designer runs the first layer itself (the pool never sees the
    /// raw input).
    #[arg(long)]
    pub keep_first: bool,
    /// The designer runs the last layer and the loss itself.
    #[arg(long)]
    pub keep_last: bool,
    /// Chaos: SIGKILL the node process holding hop HOP (from 1, as the
    /// `cascade:` line prints it; or `dummy`, the first dummy hop; or
    /// `layerK`) once the designer has done global training step STEP;
    /// repeatable. The designer detects the loss, replaces the
    /// node with a spare and replays from its latest checkpoint; one spare
    /// node per kill is started.
    #[arg(long = "kill", value_name = "HOP@STEP")]
    pub kills: Vec<KillAt>,
    /// Chaos: the node holding hop HOP of replica A (`b:HOP`: of replica
    /// B) starts corrupting its layer's outputs after step STEP;
    /// repeatable. Implies `--verify-replicas`, which finds, replaces and
    /// excludes it.
    #[arg(long = "lie", value_name = "[b:]HOP@STEP")]
    pub lies: Vec<KillAt>,
    /// Run every layer on two nodes in pure-wasm mode and compare them hop
    /// by hop (`train --verify-replicas`); twice the nodes.
    #[arg(long)]
    pub verify_replicas: bool,
    /// Mean interval between loop cover packets of each node, ms (0 = off).
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub cover_loop_ms: u64,
    /// Mean interval between drop cover packets of each node, ms (0 = off).
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub cover_drop_ms: u64,
    /// Cover bandwidth budget of each node, bytes per second (0 = no cover).
    #[arg(long, default_value_t = 256 << 10, value_name = "BYTES")]
    pub cover_bytes_per_sec: u64,
    /// Send slots of each node: one packet per neighbour every MS, real
    /// packets in place of cover, in the job's class (0 = off).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub slot_ms: u64,
    /// Test batches in flight in the distributed run's test phase. After
    /// training, the test set also goes through the cascade one batch at a
    /// time and with this window; the report's `test_phase` compares them.
    #[arg(long, default_value_t = super::train::DEFAULT_TEST_WINDOW, value_name = "W")]
    pub test_window: usize,
    /// MNIST directory. Default: the bundled copy.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the Figure-3-style plot (accuracy and seconds per epoch) here.
    #[arg(long, value_name = "FILE", default_value = "mixnn-demo.png")]
    pub plot: PathBuf,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Cover packets of all nodes together.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CoverReport {
    pub loop_ms: u64,
    pub drop_ms: u64,
    pub class: usize,
    /// Cover byte budget of each node (bytes per second).
    pub bytes_per_sec: u64,
    /// Send slots of each node, ms (0 = off).
    pub slot_ms: u64,
    /// Distributed training time per step (one training message), ms.
    pub step_ms: f64,
    pub loops_sent: u64,
    pub loops_returned: u64,
    pub drops_sent: u64,
}

/// What `--report` writes.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub distributed: TrainReport,
    pub single_process_wasm: TrainReport,
    pub single_process_native: TrainReport,
    /// Training time (tests excluded) distributed / single-process.
    pub time_ratio_wasm: f64,
    pub time_ratio_native: f64,
    /// (distributed − wasm training seconds) per training hop crossing.
    pub per_hop_overhead_us: f64,
    /// Hop crossings of the training messages (steps × (2·hops − 1)).
    pub train_hop_crossings: u64,
    /// Distinct packet lengths the nodes sent and received.
    pub packet_lengths: Vec<u64>,
    /// Packets per length, all nodes together.
    pub packet_length_counts: BTreeMap<u64, u64>,
    /// Final test accuracy, distributed − native (fraction).
    pub accuracy_diff_native: f64,
    pub bit_identical_wasm: bool,
    pub bit_identical_native: bool,
    pub nodes: usize,
    /// Peer ids of the nodes started (the cascade is in `distributed.network`).
    pub node_peers: Vec<String>,
    pub dummies: usize,
    pub cover: CoverReport,
    /// Packets the nodes dropped, by reason (non-zero ones).
    pub node_drops: BTreeMap<String, u64>,
    /// The distributed run ended with the single-process wasm run's
    /// parameters bit for bit, whatever was killed on the way.
    pub matches_undisturbed: bool,
    /// Repairs of the distributed job, in order.
    pub repairs: Vec<DemoRepair>,
    /// Lies found by the designer: step, hop, node, how it was decided.
    pub detections: Vec<DemoDetection>,
    /// Nodes killed by `--kill` or made to lie by `--lie`, in order.
    pub kills: Vec<KillReport>,
    /// The test set through the trained cascade one batch at a time and
    /// with `--test-window` in flight (a run without kills or replicas).
    pub test_phase: Option<super::infer::WindowComparison>,
    /// How busy the machine's cores were over the distributed run's first
    /// epoch of training steps (an undisturbed run, on Linux).
    pub training_cpu: Option<super::cpu::TrainingCpu>,
}

pub fn run(a: DemoArgs) -> Result<()> {
    super::harness::exit_on_interrupt()?;
    let data = super::load_mnist(&a.data.clone().unwrap_or_else(super::default_data_dir))?;
    let (model, name) = demo_model(&a)?;
    let shards = pool_shards(&a, &model)?;
    let nodes = pool_nodes(&a, shards.len())?;
    let mut opts = a.recipe.options(EngineKind::Wasm, name.clone());
    let verify = a.verify_replicas || !a.lies.is_empty();
    // Replicas compare bytes, which only pure wasm makes alike everywhere.
    opts.config.host_kernels = a.sandbox.host_kernels() && !verify;
    opts.eval_batch = a.recipe.eval_batch.unwrap_or(opts.batch);
    let (class, packet_len) = job_class(&shards, &[opts.batch, opts.eval_batch])?;
    println!(
        "mixnn demo: {name} on MNIST, distributed over {nodes} local node processes, then in \
         one process (wasm, native)"
    );

    println!(
        "\n[1/3] distributed: {} layers + {} dummies, cover loops every {} ms and drops every {} ms per node, \
         all packets {packet_len} bytes (class {class})",
        shards.len(),
        a.dummies,
        a.cover_loop_ms,
        a.cover_drop_ms
    );
    warm_guest_cache(&a.sandbox)?;
    let pool = LocalPool::start(
        &LocalPoolOptions {
            nodes,
            cover_loop_ms: a.cover_loop_ms,
            cover_drop_ms: a.cover_drop_ms,
            cover_bytes_per_sec: Some(a.cover_bytes_per_sec),
            slots: (a.slot_ms > 0)
                .then(|| Ok::<_, anyhow::Error>((a.slot_ms, u32::try_from(class)?)))
                .transpose()?,
            cache_dir: a.sandbox.cache_dir.clone(),
            chaos_lie: !a.lies.is_empty(),
            ..LocalPoolOptions::default()
        },
        &mut |m| println!("  {m}"),
    )?;
    let watch: Vec<String> = pool.metrics_addrs().iter().map(|m| m.to_string()).collect();
    println!(
        "  pool up; `mixnn status --metrics ADDR` shows a node while it runs: {}",
        watch.join(", ")
    );
    let node_peers: Vec<String> = pool.nodes().iter().map(|n| n.peer_id.clone()).collect();
    // Kills and lies fire from the training loop's step observer; a job
    // with either (or replicas) keeps checkpoints in memory to repair.
    let mut chaos = Chaos::new(a.kills.clone(), a.lies.clone(), pool.killer());
    // The class printed above (cover uses every public class).
    let pool_args = PoolArgs {
        keep_first: a.keep_first,
        keep_last: a.keep_last,
        verify_replicas: verify,
        test_window: a.test_window,
        ..PoolArgs::local(pool.bootstrap_addr(), a.dummies, class)
    };
    let mut test_phase = None;
    let mut training_cpu = None;
    let (distributed, _) = if a.kills.is_empty() && !verify {
        let popts = super::pool::pool_options(&pool_args, &opts);
        let mut printer = super::progress::Printer::new();
        let mut cpu = super::cpu::FirstEpochCpu::new(&mut printer);
        let run = super::pool::JobRun {
            ck: None,
            observer: &mut cpu,
            trusted_branch: a.trusted_branch.clone(),
            serve: super::pool::Serve {
                compare: Some(&mut test_phase),
                ..super::pool::Serve::of(&pool_args)
            },
        };
        let out =
            super::pool::train_on_pool_job(&model, &data, &opts, &popts, &a.sandbox, None, run)?;
        training_cpu = cpu.training();
        out
    } else {
        let popts = super::pool::pool_options(&pool_args, &opts);
        let mut observer = chaos::ChaosObserver::new(&mut chaos);
        let run = super::pool::JobRun {
            ck: Some(mixnn_designer::Checkpointing {
                held_out: pool_args.held_out_check(),
                ..mixnn_designer::Checkpointing::in_memory()
            }),
            observer: &mut observer,
            trusted_branch: a.trusted_branch.clone(),
            serve: super::pool::Serve::of(&pool_args),
        };
        let out =
            super::pool::train_on_pool_job(&model, &data, &opts, &popts, &a.sandbox, None, run)?;
        observer.finish()?;
        out
    };
    if let Some(k) = chaos.pending().first() {
        // (a lie as much as a kill)
        bail!(
            "--kill {}@{} was not carried out: the job ended before step {}",
            k.target,
            k.step,
            k.step
        );
    }
    let kills = chaos.report();
    let metrics = pool.metrics_sum()?;
    println!("stopping the local pool ({nodes} nodes and the bootstrap)");
    pool.stop();

    println!("\n[2/3] single process, every shard in a wasm guest");
    let local = |opts: &mixnn_designer::TrainOptions| {
        let run = super::train::LocalRun {
            export: None,
            ck: None,
            noise: None,
            trusted_branch: a.trusted_branch.clone(),
        };
        super::train::train_local_run(&model, &data, opts, &a.sandbox, run)
    };
    let (wasm, _) = local(&opts)?;
    println!("\n[3/3] single process, native engine");
    opts.engine = EngineKind::Native;
    let (native, _) = local(&opts)?;

    let mut report = compare(
        distributed,
        wasm,
        native,
        &metrics,
        node_peers,
        a.dummies,
        CoverReport {
            loop_ms: a.cover_loop_ms,
            drop_ms: a.cover_drop_ms,
            class,
            bytes_per_sec: a.cover_bytes_per_sec,
            slot_ms: a.slot_ms,
            ..CoverReport::default()
        },
    )?;
    report.kills = kills;
    report.test_phase = test_phase;
    report.training_cpu = training_cpu;
    print_comparison(&report);
    plot(&report, &a.plot)?;
    println!("plot written to {}", a.plot.display());
    if let Some(p) = &a.report {
        super::write_json(p, &report)?;
        println!("report written to {}", p.display());
    }
    Ok(())
}

fn compare(
    distributed: TrainReport,
    wasm: TrainReport,
    native: TrainReport,
    metrics: &BTreeMap<String, f64>,
    node_peers: Vec<String>,
    dummies: usize,
    mut cover: CoverReport,
) -> Result<DemoReport> {
    let net = distributed
        .network
        .as_ref()
        .context("the distributed run reports no network figures")?;
    // Training messages only: the designer counts them (a step is one
    // message over 2·hops − 1 hops with both ends on the pool).
    let train_hop_crossings = net.train_hop_crossings;
    let extra = distributed.train_seconds - wasm.train_seconds;
    let per_hop_overhead_us = extra / train_hop_crossings.max(1) as f64 * 1e6;
    cover.step_ms = net.train_seconds / net.train_messages.max(1) as f64 * 1e3;

    let count = |series: &str| metrics.get(series).copied().unwrap_or(0.0) as u64;
    let labelled = |family: &str, label: &str| -> Vec<(String, u64)> {
        let prefix = format!("{family}{{{label}=\"");
        metrics
            .iter()
            .filter_map(|(k, v)| {
                let value = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                Some((value.to_string(), *v as u64))
            })
            .collect()
    };
    let packet_length_counts: BTreeMap<u64, u64> = labelled("mixnn_packet_lengths_total", "length")
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .filter_map(|(len, n)| Some((len.parse().ok()?, n)))
        .collect();
    let node_drops = labelled("mixnn_packets_dropped_total", "reason")
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    cover.loops_sent = count("mixnn_cover_packets_total{kind=\"loop_sent\"}");
    cover.loops_returned = count("mixnn_cover_packets_total{kind=\"loop_returned\"}");
    cover.drops_sent = count("mixnn_cover_packets_total{kind=\"drop_sent\"}");

    Ok(DemoReport {
        matches_undisturbed: distributed.params_sha256 == wasm.params_sha256,
        repairs: distributed.repairs.iter().map(DemoRepair::from).collect(),
        detections: (distributed.detections.iter())
            .map(DemoDetection::from)
            .collect(),
        kills: Vec::new(),
        test_phase: None,
        training_cpu: None,
        time_ratio_wasm: distributed.train_seconds / wasm.train_seconds,
        time_ratio_native: distributed.train_seconds / native.train_seconds,
        per_hop_overhead_us,
        train_hop_crossings,
        packet_lengths: packet_length_counts.keys().copied().collect(),
        packet_length_counts,
        accuracy_diff_native: distributed.final_test_accuracy - native.final_test_accuracy,
        bit_identical_wasm: distributed.params_sha256 == wasm.params_sha256,
        bit_identical_native: distributed.params_sha256 == native.params_sha256,
        nodes: node_peers.len(),
        node_peers,
        dummies,
        cover,
        node_drops,
        distributed,
        single_process_wasm: wasm,
        single_process_native: native,
    })
}

fn print_comparison(r: &DemoReport) {
    let runs = [
        &r.distributed,
        &r.single_process_wasm,
        &r.single_process_native,
    ];
    println!("\ncomparison (test accuracy after each epoch; training seconds of the epoch)");
    println!(
        "{:>5}  {:>20}  {:>20}  {:>20}",
        "epoch", "distributed", "1 process, wasm", "1 process, native"
    );
    let epochs = runs.iter().map(|t| t.epochs.len()).max().unwrap_or(0);
    for e in 0..epochs {
        let mut line = format!("{:>5}", e + 1);
        for t in runs {
            line += &match t.epochs.get(e) {
                Some(x) => format!("  {:>9.2}% {:>8.1}s", x.test_accuracy * 100.0, x.seconds),
                None => format!("  {:>20}", "-"),
            };
        }
        println!("{line}");
    }
    let row = |label: &str, value: String| println!("{label:<48}{value}");
    let (dist, wasm, native) = (runs[0], runs[1], runs[2]);
    let hops = dist.network.as_ref().map_or(0, |n| n.cascade.len());
    row(
        "time ratio distributed / single-process wasm",
        format!("{:.2}x", r.time_ratio_wasm),
    );
    row(
        "time ratio distributed / single-process native",
        format!("{:.2}x", r.time_ratio_native),
    );
    row(
        "per-hop overhead (µs)",
        format!(
            "{:.1}  ({:.1} s more than wasm over {} training hop crossings, {hops} hops)",
            r.per_hop_overhead_us,
            dist.train_seconds - wasm.train_seconds,
            r.train_hop_crossings
        ),
    );
    row(
        "accuracy difference to native",
        format!(
            "{:+.2} points ({:.2}% vs {:.2}%)",
            r.accuracy_diff_native * 100.0,
            dist.final_test_accuracy * 100.0,
            native.final_test_accuracy * 100.0
        ),
    );
    if let Some(c) = &r.training_cpu {
        row(
            "cores busy while training",
            format!(
                "{:.2} of {}  (CPU {:.2} ms and wall {:.2} ms per step, over {} steps)",
                c.cores.cores_busy, c.cores.cores, c.cpu_ms_per_step, c.wall_ms_per_step, c.steps
            ),
        );
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    row(
        "bit-identical to wasm",
        format!(
            "{}  (to native: {}; params sha256 {})",
            yes(r.bit_identical_wasm),
            yes(r.bit_identical_native),
            dist.params_sha256
        ),
    );
    let list = |items: Vec<String>| items.join(", ");
    if !r.kills.is_empty() || !r.repairs.is_empty() {
        row(
            "nodes killed; repairs",
            format!(
                "{}; {}",
                r.kills.len(),
                list(
                    (r.repairs.iter())
                        .map(|x| format!(
                            "hop {} at step {} (detected after {} ms, repaired in {} ms, {} steps replayed)",
                            x.hop, x.step, x.detected_after_ms, x.repaired_after_ms, x.steps_replayed
                        ))
                        .collect()
                )
            ),
        );
        row(
            "matches the undisturbed run",
            yes(r.matches_undisturbed).to_string(),
        );
        let d = &r.distributed;
        row(
            "wall time of the distributed run",
            format!(
                "{:.1} s (of which training as counted: {:.1} s; tests, checkpoints, detection, \
                 repair and replay: the rest)",
                d.wall_seconds, d.train_seconds
            ),
        );
        for d in &r.detections {
            let hop = d.hop.map(|h| format!(" hop {h}")).unwrap_or_default();
            row(&format!("lie at step {}{hop}", d.step), d.how.clone());
        }
    }
    row(
        "packet lengths on the wire (all nodes)",
        list(
            r.packet_length_counts
                .iter()
                .map(|(len, n)| format!("{len} bytes ({n} packets)"))
                .collect(),
        ),
    );
    if let Some(n) = &dist.network {
        row(
            "packet lengths at the designer",
            list(n.packet_lengths.iter().map(ToString::to_string).collect()),
        );
    }
    let c = &r.cover;
    row(
        "cover traffic (all nodes)",
        format!(
            "loops sent {}, returned {}; drops sent {}",
            c.loops_sent, c.loops_returned, c.drops_sent
        ),
    );
    row(
        "send slots; step time",
        format!(
            "slot {} ms ({}); {:.1} ms per training step",
            c.slot_ms,
            if c.slot_ms == 0 { "off" } else { "on" },
            c.step_ms
        ),
    );
    if !r.node_drops.is_empty() {
        row(
            "packets dropped by nodes",
            list(
                r.node_drops
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect(),
            ),
        );
    }
}

fn plot(r: &DemoReport, path: &std::path::Path) -> Result<()> {
    let hops = r
        .distributed
        .network
        .as_ref()
        .map_or(0, |n| n.cascade.len());
    let series = |label: String, t: &TrainReport| mixnn_plot::Series {
        label,
        accuracy: t.epochs.iter().map(|e| e.test_accuracy * 100.0).collect(),
        seconds: t.epochs.iter().map(|e| e.seconds).collect(),
    };
    let all = [
        series(
            format!("distributed ({hops} hops, cover on)"),
            &r.distributed,
        ),
        series("single process, wasm".into(), &r.single_process_wasm),
        series("single process, native".into(), &r.single_process_native),
    ];
    mixnn_plot::figure3(
        "MixNN paper MLP on MNIST: distributed vs single process",
        &all,
        path,
    )
    .with_context(|| format!("writing the plot {}", path.display()))
}
