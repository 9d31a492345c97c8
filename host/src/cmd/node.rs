//! `mixnn node`: run a pool node until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use mixnn_node::{Node, NodeConfig};

#[derive(Args)]
pub struct NodeArgs {
    /// Bootstrap multiaddr ending in `/p2p/<peer id>`, as `mixnn bootstrap`
    /// prints it. Repeat the flag (or separate with commas) for several; the
    /// descriptor is published to each.
    #[arg(long, value_name = "MULTIADDR", value_delimiter = ',')]
    pub bootstrap: Vec<String>,
    /// Multiaddr to listen on (repeatable). Default: `/ip4/0.0.0.0/tcp/0`,
    /// every interface on a random port.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Multiaddr to advertise in the descriptor instead of the bound ones
    /// (repeatable), for a node behind a port forward.
    #[arg(long, value_name = "MULTIADDR")]
    pub external_addr: Vec<String>,
    /// Where the identity key and mix keys live (created owner-only). The
    /// same directory gives the same peer id after a restart. Default:
    /// `mixnn-node` in the current directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file; flags given here override its values. Every
    /// key is optional, e.g. `epoch_secs = 3600`, `packet_sizes = [4657]`,
    /// `inbound_queue = 4096` (crates/node/node.example.toml lists them all).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (plain HTTP, `GET /metrics`),
    /// e.g. `127.0.0.1:9100`; `mixnn status --metrics` reads it.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Mix-key epoch length in seconds: the X25519 packet key rotates this
    /// often, and the descriptor is re-published at each rotation.
    #[arg(long, value_name = "SECS")]
    pub epoch_secs: Option<u64>,
    /// Seconds to keep waiting for a bootstrap at start before giving up.
    #[arg(long, value_name = "SECS")]
    pub bootstrap_timeout_secs: Option<u64>,
    /// Jobs (layers or dummy hops) hosted at once.
    #[arg(long, value_name = "N")]
    pub jobs: Option<u32>,
    /// Threads that run guest work (job packets); relaying has its own.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Threads that open and relay packets (never wait on a guest).
    #[arg(long, value_name = "N")]
    pub relay_workers: Option<usize>,
    /// Most neighbour links held at once (idle ones are evicted).
    #[arg(long, value_name = "N")]
    pub max_links: Option<usize>,
    /// Mean interval between loop cover packets (Poisson), ms; 0 = off.
    #[arg(long, value_name = "MS")]
    pub cover_loop_ms: Option<u64>,
    /// Mean interval between drop cover packets (Poisson), ms; 0 = off.
    #[arg(long, value_name = "MS")]
    pub cover_drop_ms: Option<u64>,
    /// Bandwidth budget of cover traffic, bytes per second (0 = no cover);
    /// cover goes out in every public class within it.
    #[arg(long, value_name = "BYTES")]
    pub cover_bytes_per_sec: Option<u64>,
    /// Send slots: one packet per pool neighbour every MS, real packets in
    /// place of cover (0 = off).
    #[arg(long, value_name = "MS")]
    pub slot_ms: Option<u64>,
    /// Payload class (bytes) of send slots, e.g. 65536; default the
    /// smallest public class.
    #[arg(long, value_name = "BYTES")]
    pub slot_class: Option<u32>,
    /// Carry every packet on libp2p streams: no direct Noise connection
    /// per neighbour on a port of its own (slower; for a firewall that
    /// admits the libp2p port only).
    #[arg(long)]
    pub no_direct_links: bool,
    /// Where compiled guests are cached (default: $MIXNN_CACHE_DIR,
    /// $XDG_CACHE_HOME/mixnn or ~/.cache/mixnn).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Lend this machine's native matrix kernels to the jobs that ask
    /// (`host`), or run every job in pure wasm (`wasm`). Default: the
    /// config's `host_kernels` (true: `host`).
    #[arg(long, value_enum)]
    pub guest_kernels: Option<super::KernelsArg>,
    /// Chaos testing only (`mixnn demo --lie`): on SIGUSR1 this node starts
    /// corrupting every output of its layers. Hidden: no operator wants it.
    #[arg(long, hide = true)]
    pub chaos_lie_on_signal: bool,
}

impl NodeArgs {
    fn config(&self) -> Result<NodeConfig> {
        let mut cfg = match &self.config {
            Some(p) => NodeConfig::from_file(p)?,
            None => NodeConfig::default(),
        };
        if !self.bootstrap.is_empty() {
            cfg.bootstrap = self.bootstrap.clone();
        }
        if !self.listen.is_empty() {
            cfg.listen = self.listen.clone();
        }
        if !self.external_addr.is_empty() {
            cfg.external_addrs = self.external_addr.clone();
        }
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        if self.metrics.is_some() {
            cfg.metrics = self.metrics;
        }
        if let Some(e) = self.epoch_secs {
            cfg.epoch_secs = e;
        }
        if let Some(t) = self.bootstrap_timeout_secs {
            cfg.bootstrap_timeout_secs = t;
        }
        if let Some(j) = self.jobs {
            cfg.jobs = j;
        }
        if let Some(w) = self.workers {
            cfg.workers = w;
        }
        if let Some(w) = self.relay_workers {
            cfg.relay_workers = w;
        }
        if let Some(n) = self.max_links {
            cfg.max_links = n;
        }
        if let Some(c) = self.cover_loop_ms {
            cfg.cover_loop_ms = c;
        }
        if let Some(c) = self.cover_drop_ms {
            cfg.cover_drop_ms = c;
        }
        if let Some(c) = self.cover_bytes_per_sec {
            cfg.cover_bytes_per_sec = c;
        }
        if let Some(s) = self.slot_ms {
            cfg.slot_ms = s;
        }
        if let Some(c) = self.slot_class {
            cfg.slot_class = c;
        }
        if self.no_direct_links {
            cfg.direct_links = false;
        }
        if let Some(k) = self.guest_kernels {
            cfg.host_kernels = k == super::KernelsArg::Host;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn run(a: NodeArgs) -> Result<()> {
    let cfg = a.config()?;
    let sandbox = super::SandboxArgs {
        guest_memory_mib: cfg.guest_memory_mib as usize,
        guest_call_timeout_s: cfg.guest_call_secs,
        cache_dir: a.cache_dir.clone(),
        no_cache: false,
        guest_kernels: if cfg.host_kernels {
            super::KernelsArg::Host
        } else {
            super::KernelsArg::Wasm
        },
    }
    .sandbox()?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let mut node = Node::start(cfg).await.context("starting the node")?;
        let lie = a.chaos_lie_on_signal.then(lie_on_signal).transpose()?;
        node.serve_jobs_with(std::sync::Arc::new(sandbox), lie)
            .context("starting the packet processor")?;
        println!("node {} listening on:", node.peer_id());
        for addr in node.listen_addrs() {
            println!("  {addr}");
        }
        if let Some(m) = node.metrics_addr() {
            println!("metrics: http://{m}/metrics  (mixnn status --metrics {m})");
        }
        println!("(Ctrl-C stops; identity and keys stay in the data dir)");
        wait_for_stop().await?;
        println!("stopping");
        node.shutdown().await;
        Ok(())
    })
}

/// A switch that SIGUSR1 turns on (chaos testing: the demo's `--lie`).
#[cfg(unix)]
fn lie_on_signal() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let switch = std::sync::Arc::new(AtomicBool::new(false));
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("installing the SIGUSR1 handler")?;
    let on = switch.clone();
    tokio::spawn(async move {
        if usr1.recv().await.is_some() {
            eprintln!("chaos: this node now corrupts its layers' outputs");
            on.store(true, Ordering::Relaxed);
        }
    });
    Ok(switch)
}

#[cfg(not(unix))]
fn lie_on_signal() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    anyhow::bail!("--chaos-lie-on-signal needs a Unix signal")
}

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM, which is how a process
/// supervisor (or `mixnn demo`) stops a node.
pub async fn wait_for_stop() -> Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
