//! Which failures a repair takes on, and which nodes may replace a hop.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::SigningKey;
use mixnn_protocol::descriptor::{DESCRIPTOR_FORMAT, peer_id_of};
use mixnn_protocol::{Capacity, MixKeyInfo};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::super::onion::Role;
use super::*;

fn node(seed: u16, addr: &str) -> NodeDescriptor {
    let mut secret = [7u8; 32];
    secret[..2].copy_from_slice(&seed.to_le_bytes());
    let identity_key = SigningKey::from_bytes(&secret).verifying_key().to_bytes();
    let public = mixnn_sphinx::MixKeyPair::from_secret_bytes(1, [seed as u8 | 1; 32])
        .public()
        .to_bytes();
    NodeDescriptor {
        format: DESCRIPTOR_FORMAT,
        peer_id: peer_id_of(&identity_key).unwrap(),
        identity_key,
        addrs: vec![addr.to_string()],
        mix_key: MixKeyInfo {
            epoch: 1,
            epoch_secs: 3600,
            public,
        },
        capacity: Capacity {
            jobs: 1,
            memory_mib: 64,
        },
        software: "mixnn/test".into(),
        issued_at: 1,
        expires_at: 2,
    }
}

/// Five nodes on their own ports of one host; the first three serve a
/// cascade. A spare is any node outside the cascade and never failed; a
/// failed node stays out for the job's life, even when listed again; a
/// node on a hop's address is refused.
#[test]
fn a_spare_is_outside_the_cascade_and_never_failed() {
    let listed: Vec<NodeDescriptor> = (0..5)
        .map(|i| node(i, &format!("/ip4/127.0.0.1/tcp/{}", 4000 + i)))
        .collect();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let roles = [Role::Layer(0), Role::Dummy, Role::Layer(1)];
    let hops: Vec<Hop> = listed[..3]
        .iter()
        .zip(roles)
        .map(|(d, r)| placement::hop(d, r, &mut rng).unwrap())
        .collect();
    let mut spares = Spares::new(&hops, &listed, 1, Distinct::HostPort);
    let ids = |c: &[&NodeDescriptor]| c.iter().map(|d| d.identity_key).collect::<Vec<_>>();
    let (c, shared) = spares.candidates(&hops, &listed, 1);
    assert_eq!(ids(&c), ids(&[&listed[3], &listed[4]]));
    assert_eq!(shared, 0);

    // Hop 1's node fails and is replaced by node 3; node 1 comes back to
    // the directory but is never chosen again, nor is node 3 (in the cascade).
    spares.failed.push(hops[1].node.0);
    let mut hops = hops;
    hops[1] = placement::hop(&listed[3], Role::Dummy, &mut rng).unwrap();
    spares.addrs[1] = directory::address_keys(&listed[3], Distinct::HostPort);
    let (c, _) = spares.candidates(&hops, &listed, 2);
    assert_eq!(ids(&c), ids(&[&listed[4]]));

    // A newcomer on hop 0's address (same host and port) is refused.
    let mut with_clash = listed.clone();
    with_clash.push(node(9, "/ip4/127.0.0.1/tcp/4000"));
    let (c, shared) = spares.candidates(&hops, &with_clash, 2);
    assert_eq!(ids(&c), ids(&[&listed[4]]));
    assert_eq!(shared, 1);
    // ...but may replace hop 0 itself, whose address is free once it failed.
    spares.failed.push(hops[0].node.0);
    let (c, _) = spares.candidates(&hops, &with_clash, 0);
    assert_eq!(ids(&c), ids(&[&listed[4], &with_clash[5]]));

    // With every node in the cascade or failed: no candidate.
    spares.failed.push(listed[4].identity_key);
    spares.failed.push(with_clash[5].identity_key);
    let (c, _) = spares.candidates(&hops, &with_clash, 2);
    assert!(c.is_empty());
}

/// A hop that stopped answering is repairable; a hop that answers with
/// an error (it is alive, and bad input fails on any node) is not.
#[test]
fn only_silence_and_closed_links_are_repairable() {
    let lost = DesignerError::Job(PoolError::Lost {
        exchange: "training message".into(),
        waited_ms: 4000,
        rule: "bound".into(),
        keys_refreshed: 0,
    });
    assert_eq!(repairable(&lost), Some((None, 4000)));
    let closed = DesignerError::Job(PoolError::LinkClosed {
        hop: 3,
        role: "layer 2".into(),
        peer: "p".into(),
        exchange: "training message".into(),
        after_ms: 12,
    });
    assert_eq!(repairable(&closed), Some((Some(2), 12)));
    let typed = DesignerError::Pool("hop 2 (layer 1, node p): bad input: wrong shape".into());
    assert_eq!(repairable(&typed), None);
    let unexpected = DesignerError::Job(PoolError::NoAnswer { hop: 2 });
    assert_eq!(repairable(&unexpected), None);
}

/// The no-spare error names the hop, what it held, and what to do.
#[test]
fn no_spare_node_says_what_is_missing() {
    let e = PoolError::NoSpareNode {
        hop: 3,
        role: "layer 2".into(),
        failed: 1,
        listed: 4,
        note: String::new(),
    }
    .to_string();
    assert!(
        e.contains("hop 3 (layer 2) failed")
            && e.contains("no node outside the cascade and the 1 failed node")
            && e.contains("start another node")
            && e.contains("--resume"),
        "{e}"
    );
}
