//! A real pool for the end-to-end tests: a bootstrap and nodes on
//! 127.0.0.1 (real tasks, real sockets, Noise and yamux), on a runtime of
//! their own, sharing one sandbox with the designer of the test binary.
//! Also the `mixnn demo` run the chaos tests (faults, lying layers) read.

#![allow(dead_code)]

use std::sync::Arc;

use mixnn_bootstrap::{Bootstrap, BootstrapConfig};
use mixnn_node::{Node, NodeConfig};
use mixnn_sandbox::{Sandbox, SandboxOptions};

/// One sandbox for every pool, designer and reference run of a test
/// binary: the tests run at once, and each sandbox compiles its guest once.
pub fn sandbox() -> Arc<Sandbox> {
    static SANDBOX: std::sync::OnceLock<Arc<Sandbox>> = std::sync::OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            Arc::new(
                Sandbox::new(SandboxOptions {
                    cache_dir: std::env::var_os("MIXNN_CACHE_DIR").map(Into::into),
                    ..Default::default()
                })
                .expect("sandbox"),
            )
        })
        .clone()
}

/// A running pool.
pub struct Pool {
    /// Drives the nodes and the bootstrap; dropped with the pool.
    pub rt: tokio::runtime::Runtime,
    pub bootstrap: Bootstrap,
    pub nodes: Vec<Node>,
    _dirs: Vec<tempfile::TempDir>,
}

/// Starts a bootstrap and `n` nodes serving jobs; `tune` (given the node's
/// index) sets what a test needs on top of the base configuration (data
/// dir, loopback listen address, the bootstrap).
pub fn start_pool(n: usize, tune: impl Fn(usize, NodeConfig) -> NodeConfig) -> Pool {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sb = sandbox();
    let (bootstrap, nodes, dirs) = rt.block_on(async {
        let bootstrap = Bootstrap::start(BootstrapConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
            ..Default::default()
        })
        .await
        .expect("bootstrap starts");
        let (mut nodes, mut dirs) = (Vec::new(), Vec::new());
        for i in 0..n {
            let (node, dir) = start_node(&sb, tune(i, base_config(&bootstrap))).await;
            nodes.push(node);
            dirs.push(dir);
        }
        (bootstrap, nodes, dirs)
    });
    Pool {
        rt,
        bootstrap,
        nodes,
        _dirs: dirs,
    }
}

/// The base configuration of a test node on `bootstrap` (its data dir
/// is set by [`start_node`]).
fn base_config(bootstrap: &Bootstrap) -> NodeConfig {
    NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: (bootstrap.listen_addrs().iter())
            .map(ToString::to_string)
            .collect(),
        bootstrap_timeout_secs: 10,
        ..NodeConfig::default()
    }
}

/// Starts a node serving jobs with `cfg` in a fresh data dir.
async fn start_node(sb: &Arc<Sandbox>, cfg: NodeConfig) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = NodeConfig {
        data_dir: dir.path().to_path_buf(),
        ..cfg
    };
    let mut node = Node::start(cfg).await.expect("node starts");
    node.serve_jobs(sb.clone()).expect("serve jobs");
    (node, dir)
}

impl Pool {
    /// Starts one more node (listed once it has published).
    #[allow(dead_code)]
    pub fn add_node(&mut self) {
        let sb = sandbox();
        let cfg = base_config(&self.bootstrap);
        let (node, dir) = self.rt.block_on(start_node(&sb, cfg));
        self.nodes.push(node);
        self._dirs.push(dir);
    }

    /// The bootstrap's addresses, as a designer is given them.
    pub fn bootstrap_addrs(&self) -> Vec<String> {
        (self.bootstrap.listen_addrs().iter())
            .map(ToString::to_string)
            .collect()
    }

    /// Stops the nodes and the bootstrap.
    pub fn shutdown(self) {
        let Pool {
            rt,
            bootstrap,
            nodes,
            ..
        } = self;
        rt.block_on(async {
            for n in nodes {
                n.shutdown().await;
            }
            bootstrap.shutdown().await;
        });
    }
}

/// The designer's options for a job of the tests on `bootstrap`: one dummy,
/// the batch-64 class, generous bounds.
pub fn pool_options(bootstrap: Vec<String>, keep_first: bool) -> mixnn_designer::pool::PoolOptions {
    mixnn_designer::pool::PoolOptions {
        bootstrap,
        quorum: None,
        // The test pools run on one host: nodes are told apart by port.
        distinct: mixnn_designer::pool::Distinct::HostPort,
        dummies: 1,
        keep_first,
        keep_last: false,
        branch: false,
        local_engine: mixnn_designer::EngineKind::Wasm,
        class: None,
        // A bound for failure, not a speed check: on a cold guest cache
        // and a loaded CI machine the nodes' first compile alone has
        // taken over a minute.
        timeout: std::time::Duration::from_secs(300),
        wait_for_nodes: std::time::Duration::from_secs(20),
        batches: vec![64],
        job_secret: None,
        witness: false,
        exclude: Vec::new(),
    }
}

/// Deploys `shards` on the pool and trains them with `opts`.
pub fn deploy_and_train(
    shards: &[mixnn_grad::pb::ModelProto],
    data: &mixnn_data::Mnist,
    opts: &mixnn_designer::TrainOptions,
    popts: &mixnn_designer::pool::PoolOptions,
) -> (
    mixnn_designer::pool::PoolCascade,
    mixnn_designer::TrainReport,
) {
    let sb = sandbox();
    let mut cascade = mixnn_designer::pool::PoolCascade::deploy(
        shards,
        &opts.config,
        Some(&sb),
        popts,
        &mut |_| {},
    )
    .expect("deploys");
    let sample = mixnn_designer::sample_shape(shards, data).expect("shape");
    let n = shards.len();
    let report = mixnn_designer::train_model(
        &mut cascade,
        n,
        &sample,
        data,
        opts,
        &mut mixnn_designer::Quiet,
    )
    .expect("trains on the pool");
    (cascade, report)
}

/// `mixnn demo` with `args`, cover traffic off, its report and plot in a
/// temporary directory: the JSON report and the console output. A failed
/// demo fails the test with that output.
pub fn demo(args: &[&str]) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("demo.json");
    let plot = dir.path().join("demo.png");
    let (r, p) = (
        report.to_string_lossy().into_owned(),
        plot.to_string_lossy().into_owned(),
    );
    let mut all = vec!["demo", "--cover-loop-ms", "0", "--cover-drop-ms", "0"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--report", r.as_str(), "--plot", p.as_str()]);
    let (ok, text) = run(&all, "info");
    assert!(ok, "mixnn {all:?} failed:\n{text}");
    let written = std::fs::read_to_string(&report).expect("the demo's report");
    let json = serde_json::from_str(&written).expect("the report is JSON");
    (json, text)
}

/// Runs the `mixnn` binary from the repository root with `args` (logs at
/// `warn`, no backtraces); returns whether it succeeded and its stdout
/// and stderr together.
pub fn mixnn(args: &[&str]) -> (bool, String) {
    run(args, "warn")
}

/// Runs the binary with logs at `log` and no backtraces; whether it
/// succeeded, and its stdout then its stderr.
fn run(args: &[&str], log: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mixnn"))
        .args(args)
        .env("MIXNN_LOG", log)
        .env("RUST_BACKTRACE", "0")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("mixnn runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
