//! The directory's rules (newest per peer, expiry, forged entries refused,
//! capacity), and the bootstrap's identity across restarts.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::SigningKey;
use mixnn_bootstrap::{Bootstrap, BootstrapConfig, Directory, PublishError};
use mixnn_protocol::descriptor::{DESCRIPTOR_FORMAT, peer_id_of};
use mixnn_protocol::{Capacity, MixKeyInfo, NodeDescriptor, SignedDescriptor};

const NOW: u64 = 1_700_000_000;

fn signed(seed: u8, issued_at: u64, ttl: u64) -> SignedDescriptor {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let identity_key = key.verifying_key().to_bytes();
    let d = NodeDescriptor {
        format: DESCRIPTOR_FORMAT,
        peer_id: peer_id_of(&identity_key).unwrap(),
        identity_key,
        addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", 4000 + seed as u16)],
        mix_key: MixKeyInfo {
            epoch: issued_at / 3600,
            epoch_secs: 3600,
            public: [seed; 32],
        },
        capacity: Capacity {
            jobs: 1,
            memory_mib: 64,
        },
        software: "mixnn/test".into(),
        issued_at,
        expires_at: issued_at + ttl,
    };
    SignedDescriptor::sign(&d, &key).unwrap()
}

#[test]
fn keeps_the_newest_per_peer() {
    let mut dir = Directory::new(10);
    dir.publish(signed(1, NOW, 600), NOW).unwrap();
    dir.publish(signed(1, NOW + 10, 600), NOW + 10).unwrap();
    assert_eq!(dir.len(), 1);
    let err = dir.publish(signed(1, NOW, 600), NOW + 10).unwrap_err();
    assert!(matches!(err, PublishError::Stale { .. }));
    let (list, total) = dir.list(0, 10, NOW + 10);
    assert_eq!((list.len(), total), (1, 1));
    assert_eq!(list[0].verify_at(NOW + 10).unwrap().issued_at, NOW + 10);
}

#[test]
fn expires_stale_entries() {
    let mut dir = Directory::new(10);
    dir.publish(signed(1, NOW, 60), NOW).unwrap();
    dir.publish(signed(2, NOW, 600), NOW).unwrap();
    // Listing hides expired entries even before the sweep runs.
    assert_eq!(dir.list(0, 10, NOW + 61).1, 1);
    assert_eq!(dir.expire(NOW + 61), 1);
    assert_eq!(dir.len(), 1);
}

#[test]
fn refuses_tampered_and_expired() {
    let mut dir = Directory::new(10);
    let mut t = signed(1, NOW, 600);
    let last = t.body.len() - 1;
    t.body[last] ^= 1;
    assert!(matches!(dir.publish(t, NOW), Err(PublishError::Invalid(_))));
    assert!(matches!(
        dir.publish(signed(2, NOW, 60), NOW + 100),
        Err(PublishError::Invalid(_))
    ));
    assert!(dir.is_empty());
}

#[test]
fn is_bounded_and_pages_in_order() {
    let mut dir = Directory::new(3);
    for s in 1..=3 {
        dir.publish(signed(s, NOW, 600), NOW).unwrap();
    }
    assert!(matches!(
        dir.publish(signed(9, NOW, 600), NOW),
        Err(PublishError::Full(3))
    ));
    let (a, total) = dir.list(0, 2, NOW);
    let (b, _) = dir.list(2, 2, NOW);
    assert_eq!((a.len(), b.len(), total), (2, 1, 3));
    let ids: Vec<String> = a
        .iter()
        .chain(&b)
        .map(|s| s.verify_at(NOW).unwrap().peer_id)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
}

#[tokio::test]
async fn identity_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let cfg = BootstrapConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    };
    let a = Bootstrap::start(cfg.clone()).await.unwrap();
    let id = a.peer_id();
    assert!(a.listen_addrs()[0].to_string().ends_with(&id.to_string()));
    a.shutdown().await;
    let b = Bootstrap::start(cfg).await.unwrap();
    assert_eq!(b.peer_id(), id);
    b.shutdown().await;
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = BootstrapConfig {
        listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()],
        ..Default::default()
    };
    let err = Bootstrap::start(cfg).await.err().expect("port is taken");
    let msg = err.to_string();
    assert!(msg.contains(&port.to_string()), "{msg}");
}
