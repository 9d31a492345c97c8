//! Start-up failures give clear errors and lose nothing stored: a bootstrap
//! that is down, an identity file others can read, bad configuration.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{bootstrap, bounded, init_logs, node_config};
use mixnn_node::{IDENTITY_FILE, Node, NodeConfig, NodeError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_that_is_down_is_a_clear_error_and_identity_is_kept() {
    init_logs();
    bounded(60, async {
        // A real bootstrap's address, then the bootstrap stops: the port is
        // closed and the peer id is known, as after a bootstrap crash.
        let b = bootstrap().await;
        let d = tempfile::tempdir().unwrap();
        let mut cfg = node_config(d.path(), &b);
        cfg.bootstrap_timeout_secs = 3;
        b.shutdown().await;
        let started = tokio::time::Instant::now();
        let err = Node::start(cfg.clone()).await.err().expect("must fail");
        assert!(started.elapsed().as_secs() < 15);
        assert!(
            matches!(err, NodeError::BootstrapUnreachable { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("no bootstrap accepted"), "{msg}");
        assert!(msg.contains("unreachable"), "{msg}");
        // The identity created before the failure is still there.
        assert!(d.path().join(IDENTITY_FILE).is_file());
        let before = std::fs::read(d.path().join(IDENTITY_FILE)).unwrap();
        let _ = Node::start(cfg).await.err().expect("still down");
        assert_eq!(std::fs::read(d.path().join(IDENTITY_FILE)).unwrap(), before);
    })
    .await;
}

#[tokio::test]
async fn a_bootstrap_address_without_peer_id_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        data_dir: d.path().to_path_buf(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        ..NodeConfig::default()
    };
    let err = Node::start(cfg).await.err().unwrap();
    assert!(err.to_string().contains("/p2p/"), "{err}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    init_logs();
    bounded(60, async {
        let b = bootstrap().await;
        let d = tempfile::tempdir().unwrap();
        let n = Node::start(node_config(d.path(), &b)).await.unwrap();
        n.shutdown().await;
        let key = d.path().join(IDENTITY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Node::start(node_config(d.path(), &b)).await.err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("644") && msg.contains("chmod 600"), "{msg}");
        b.shutdown().await;
    })
    .await;
}

#[test]
fn config_file_is_parsed_and_checked() {
    let cfg = NodeConfig::from_toml(
        r#"
        listen = ["/ip4/127.0.0.1/tcp/4100"]
        bootstrap = ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"]
        metrics = "127.0.0.1:9100"
        epoch_secs = 600
        packet_sizes = [4096]
        "#,
    )
    .unwrap();
    assert_eq!(cfg.epoch_secs, 600);
    assert_eq!(cfg.metrics, Some("127.0.0.1:9100".parse().unwrap()));
    cfg.validate().unwrap();
    assert!(NodeConfig::from_toml("epoch_secs = 600\nepoch_sec = 1").is_err());
    let bad = NodeConfig {
        refresh_secs: 7200,
        ..NodeConfig::default()
    };
    assert!(bad.validate().is_err());
}

#[test]
fn the_example_config_is_the_default_config() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node.example.toml");
    let cfg = NodeConfig::from_file(&path).unwrap();
    cfg.validate().unwrap();
    let default = NodeConfig::default();
    // Same values except the fixed example port.
    assert_eq!(
        NodeConfig {
            listen: default.listen.clone(),
            ..cfg
        },
        default
    );
}
