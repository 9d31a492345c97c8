//! `mixnn bootstrap`: run a bootstrap peer (Kademlia entry point and pool
//! directory) until Ctrl-C.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use mixnn_bootstrap::{Bootstrap, BootstrapConfig};

#[derive(Args)]
pub struct BootstrapArgs {
    /// Multiaddr to listen on, e.g. `/ip4/0.0.0.0/tcp/4001`; repeat the flag
    /// to listen on several. The full addresses to give nodes (ending in
    /// `/p2p/<peer id>`) are printed at start.
    #[arg(long, value_name = "MULTIADDR", required = true)]
    pub listen: Vec<String>,
    /// Directory for the bootstrap's identity key (created 0700/0600). With
    /// it, the peer id, and so the address nodes are configured with,
    /// survives restarts; without it, every start has a new identity.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Most descriptors the directory holds (a memory bound); when it is
    /// full, a new peer displaces a random entry of the address holding
    /// the most.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_entries: usize,
    /// Most descriptors published from one IP address (an IPv6 /64).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_per_source: usize,
}

pub fn run(a: BootstrapArgs) -> Result<()> {
    let listen = a
        .listen
        .iter()
        .map(|s| {
            s.parse()
                .with_context(|| format!("--listen {s}: not a multiaddr"))
        })
        .collect::<Result<Vec<_>>>()?;
    let cfg = BootstrapConfig {
        listen,
        data_dir: a.data_dir,
        max_entries: a.max_entries,
        max_per_source: a.max_per_source,
        ..BootstrapConfig::default()
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let b = Bootstrap::start(cfg)
            .await
            .context("starting the bootstrap")?;
        println!("bootstrap {} listening on:", b.peer_id());
        for addr in b.listen_addrs() {
            println!("  {addr}");
        }
        println!("(give nodes `--bootstrap ADDR` with one of these; Ctrl-C stops)");
        super::node::wait_for_stop().await?;
        println!("stopping");
        b.shutdown().await;
        Ok(())
    })
}
