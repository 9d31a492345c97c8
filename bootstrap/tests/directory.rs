//! The directory's rules (newest per peer, expiry, forged entries refused,
//! capacity), and the bootstrap's identity across restarts.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::SigningKey;
use mixnn_bootstrap::{Bootstrap, BootstrapConfig, Directory, Limits, PublishError, Source};
use mixnn_protocol::descriptor::{DESCRIPTOR_FORMAT, peer_id_of};
use mixnn_protocol::{Capacity, MixKeyInfo, NodeDescriptor, SignedDescriptor};

const NOW: u64 = 1_700_000_000;

fn dir(max_entries: usize) -> Directory {
    Directory::new(
        Limits {
            max_entries,
            max_per_source: max_entries,
        },
        [7; 32],
    )
}

fn from(ip: &str) -> Source {
    Source::of_ip(ip.parse().unwrap())
}

fn here() -> Source {
    from("192.0.2.1")
}

fn signed(seed: u16, issued_at: u64, ttl: u64) -> SignedDescriptor {
    let mut secret = [1u8; 32];
    secret[..2].copy_from_slice(&seed.to_le_bytes());
    let key = SigningKey::from_bytes(&secret);
    let identity_key = key.verifying_key().to_bytes();
    let d = NodeDescriptor {
        format: DESCRIPTOR_FORMAT,
        peer_id: peer_id_of(&identity_key).unwrap(),
        identity_key,
        addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", 4000 + seed)],
        mix_key: MixKeyInfo {
            epoch: issued_at / 3600,
            epoch_secs: 3600,
            public: [seed as u8; 32],
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
    let mut dir = dir(10);
    dir.publish(signed(1, NOW, 600), NOW, here()).unwrap();
    dir.publish(signed(1, NOW + 10, 600), NOW + 10, here())
        .unwrap();
    assert_eq!(dir.len(), 1);
    let err = dir
        .publish(signed(1, NOW, 600), NOW + 10, here())
        .unwrap_err();
    assert!(matches!(err, PublishError::Stale { .. }));
    let (list, total) = dir.list(0, 10, NOW + 10);
    assert_eq!((list.len(), total), (1, 1));
    assert_eq!(list[0].verify_at(NOW + 10).unwrap().issued_at, NOW + 10);
}

#[test]
fn expires_stale_entries() {
    let mut dir = dir(10);
    dir.publish(signed(1, NOW, 60), NOW, here()).unwrap();
    dir.publish(signed(2, NOW, 600), NOW, here()).unwrap();
    // Listing hides expired entries even before the sweep runs.
    assert_eq!(dir.list(0, 10, NOW + 61).1, 1);
    assert_eq!(dir.expire(NOW + 61), 1);
    assert_eq!(dir.len(), 1);
}

#[test]
fn refuses_tampered_and_expired() {
    let mut dir = dir(10);
    let mut t = signed(1, NOW, 600);
    let last = t.body.len() - 1;
    t.body[last] ^= 1;
    assert!(matches!(
        dir.publish(t, NOW, here()),
        Err(PublishError::Invalid(_))
    ));
    assert!(matches!(
        dir.publish(signed(2, NOW, 60), NOW + 100, here()),
        Err(PublishError::Invalid(_))
    ));
    assert!(dir.is_empty());
}

#[test]
fn is_bounded_and_pages_in_order() {
    let mut dir = dir(3);
    for s in 1..=3 {
        let ip = format!("192.0.2.{s}");
        dir.publish(signed(s, NOW, 600), NOW, from(&ip)).unwrap();
    }
    assert!(matches!(
        dir.publish(signed(9, NOW, 600), NOW, from("192.0.2.9")),
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

/// A Sybil flood: one address publishes a thousand identities, then a
/// hundred addresses fill the directory. On a first-come directory (main)
/// the honest node that comes last is refused `Full`; here one address
/// holds at most its share, and a node from an address not yet listed
/// displaces an entry of the heaviest address and stays listed however
/// long the flood goes on.
#[test]
fn a_sybil_flood_from_few_addresses_does_not_lock_out_honest_nodes() {
    let mut dir = Directory::new(
        Limits {
            max_entries: 100,
            max_per_source: 16,
        },
        [3; 32],
    );
    let attacker = from("198.51.100.7");
    let mut refused = 0;
    for s in 1000..2000 {
        match dir.publish(signed(s, NOW, 600), NOW, attacker.clone()) {
            Ok(_) => {}
            Err(PublishError::SourceFull { max: 16, .. }) => refused += 1,
            Err(e) => panic!("unexpected refusal: {e}"),
        }
    }
    assert_eq!((dir.held_by(&attacker), refused), (16, 984));
    // Many identities from a handful of addresses fill the directory.
    let mut seed = 2000;
    for a in 0..10 {
        for _ in 0..16 {
            let _ = dir.publish(
                signed(seed, NOW, 600),
                NOW,
                from(&format!("198.51.100.{a}")),
            );
            seed += 1;
        }
    }
    assert_eq!(dir.len(), 100, "the flood filled the directory");
    let honest = signed(1, NOW, 600);
    let id = honest.verify_at(NOW).unwrap().peer_id;
    dir.publish(honest, NOW, from("203.0.113.5"))
        .expect("a node from a new address gets in");
    // The flood goes on from more addresses, one identity each: it only
    // ever displaces entries of the heaviest addresses.
    for a in 0..200u16 {
        let ip = format!("198.18.{}.{}", a / 250, a % 250);
        let _ = dir.publish(signed(5000 + a, NOW, 600), NOW, from(&ip));
    }
    assert!(dir.get(&id).is_some(), "the honest node is still listed");
    assert_eq!(dir.len(), 100, "the bound holds");
}

#[test]
fn sources_are_hosts_not_ports() {
    let a: libp2p::Multiaddr = "/ip4/192.0.2.9/tcp/4001".parse().unwrap();
    let b: libp2p::Multiaddr = "/ip4/192.0.2.9/tcp/5555".parse().unwrap();
    assert_eq!(Source::of_addr(&a), Source::of_addr(&b));
    let c: libp2p::Multiaddr = "/ip6/2001:db8:1:2:aa::1/tcp/1".parse().unwrap();
    let d: libp2p::Multiaddr = "/ip6/2001:db8:1:2:bb::9/tcp/1".parse().unwrap();
    let e: libp2p::Multiaddr = "/ip6/2001:db8:1:3::1/tcp/1".parse().unwrap();
    assert_eq!(Source::of_addr(&c), Source::of_addr(&d), "one /64");
    assert_ne!(Source::of_addr(&c), Source::of_addr(&e));
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
