//! Shared set-up: a bootstrap and nodes on 127.0.0.1 with random ports.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use mixnn_bootstrap::{Bootstrap, BootstrapConfig};
use mixnn_node::{Node, NodeConfig};

/// Packet length used by the tests (one size class).
pub const PACKET: u32 = 2048;

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIXNN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub async fn bootstrap() -> Bootstrap {
    Bootstrap::start(BootstrapConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..Default::default()
    })
    .await
    .expect("bootstrap starts")
}

pub fn node_config(data_dir: &Path, bootstrap: &Bootstrap) -> NodeConfig {
    NodeConfig {
        data_dir: data_dir.to_path_buf(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: bootstrap
            .listen_addrs()
            .iter()
            .map(ToString::to_string)
            .collect(),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        packet_sizes: vec![PACKET],
        bootstrap_timeout_secs: 10,
        ..NodeConfig::default()
    }
}

pub async fn node(data_dir: &Path, bootstrap: &Bootstrap) -> Node {
    Node::start(node_config(data_dir, bootstrap))
        .await
        .expect("node starts")
}

/// Runs a test body with a time bound, so a hang fails instead of blocking
/// the suite.
pub async fn bounded<F: std::future::Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test exceeded its time bound");
}

/// Polls `cond` every 50 ms until it holds or `secs` pass.
pub async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}
