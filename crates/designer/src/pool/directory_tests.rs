//! Lying bootstraps, played by fake `fetch` functions, against the
//! designer's directory rules.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use mixnn_protocol::descriptor::{DESCRIPTOR_FORMAT, peer_id_of};
use mixnn_protocol::{
    Capacity, MAX_DIRECTORY_ENTRIES, MAX_LIST_ENTRIES, MixKeyInfo, SignedDescriptor,
};
use mixnn_sphinx::Geometry;

use super::*;
use crate::backend::EngineKind;
use crate::pool::PoolOptions;
use crate::pool::placement::{self, Layout};

const NOW: u64 = 1_700_000_000;

fn signed(seed: u16, addrs: &[&str], issued_at: u64) -> SignedDescriptor {
    let mut secret = [9u8; 32];
    secret[..2].copy_from_slice(&seed.to_le_bytes());
    let key = SigningKey::from_bytes(&secret);
    let identity_key = key.verifying_key().to_bytes();
    let public = mixnn_sphinx::MixKeyPair::from_secret_bytes(1, [seed as u8 | 1; 32])
        .public()
        .to_bytes();
    let d = NodeDescriptor {
        format: DESCRIPTOR_FORMAT,
        peer_id: peer_id_of(&identity_key).unwrap(),
        identity_key,
        addrs: addrs.iter().map(ToString::to_string).collect(),
        mix_key: MixKeyInfo {
            epoch: issued_at / 3600,
            epoch_secs: 3600,
            public,
        },
        capacity: Capacity {
            jobs: 1,
            memory_mib: 64,
        },
        software: "mixnn/test".into(),
        issued_at,
        expires_at: issued_at + 600,
    };
    SignedDescriptor::sign(&d, &key).unwrap()
}

/// A node on a host of its own.
fn honest(seed: u16) -> SignedDescriptor {
    let addr = format!("/ip4/10.0.{}.{}/tcp/4001", seed / 250, seed % 250);
    signed(seed, &[&addr], NOW)
}

fn block<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A bootstrap that answers every list request with `page` and `total`;
/// returns what the designer kept and how many requests it made.
fn read_liar(page: Vec<SignedDescriptor>, total: u32) -> (View, usize) {
    let calls = Cell::new(0);
    let fetch = |_req| {
        calls.set(calls.get() + 1);
        let entries = page.clone();
        async move { Ok::<_, String>(DirectoryResponse::Descriptors { entries, total }) }
    };
    let view = block(read_bootstrap(fetch, NOW)).unwrap();
    (view, calls.get())
}

fn view(list: &[SignedDescriptor]) -> View {
    read_liar(list.to_vec(), list.len() as u32).0
}

fn options(distinct: Distinct) -> PoolOptions {
    PoolOptions {
        bootstrap: Vec::new(),
        quorum: None,
        distinct,
        dummies: 1,
        keep_first: false,
        keep_last: false,
        branch: false,
        local_engine: EngineKind::Native,
        class: None,
        timeout: Duration::from_secs(1),
        wait_for_nodes: Duration::from_secs(1),
        batches: vec![1],
        job_secret: None,
        witness: false,
        exclude: Vec::new(),
    }
}

fn rng() -> ChaCha20Rng {
    placement::os_rng().unwrap()
}

#[test]
fn a_bootstrap_repeating_one_descriptor_yields_one_node() {
    let d = honest(1);
    let page = vec![d; MAX_LIST_ENTRIES as usize];
    let (v, calls) = read_liar(page, u32::MAX);
    assert_eq!(v.len(), 1);
    assert!(calls <= (MAX_DIRECTORY_ENTRIES / MAX_LIST_ENTRIES) as usize + 1);
    let agreed = agree(&[v], 1);
    assert_eq!(pick(&agreed, 4, Distinct::Host, &mut rng()), Err(1));
}

/// On main `choose` shuffled the list as given, so a directory repeating
/// one descriptor put that one node on every hop: it saw the input, every
/// activation and the labels.
#[test]
fn choose_never_places_one_node_twice() {
    let g = Geometry::default();
    let opts = options(Distinct::Host);
    let layout = Layout::new(3, &opts, &g).unwrap();
    assert_eq!(layout.count, 4);
    let d = honest(1).verify_at(NOW).unwrap();
    let pool = vec![d; 4];
    match placement::choose(
        &pool,
        &layout,
        &opts,
        &placement::JobSecret::new(None).unwrap(),
        &mut rng(),
    ) {
        Err(PoolError::TooFewNodes {
            listed: 1,
            needed: 4,
            ..
        }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(hops) => panic!("one node placed on {} hops", hops.len()),
    }
    let pool: Vec<NodeDescriptor> = (1..=4).map(|s| honest(s).verify_at(NOW).unwrap()).collect();
    let hops = placement::choose(
        &pool,
        &layout,
        &opts,
        &placement::JobSecret::new(None).unwrap(),
        &mut rng(),
    )
    .unwrap();
    let ids: BTreeSet<[u8; 32]> = hops.iter().map(|h| h.node.0).collect();
    assert_eq!(ids.len(), 4);
}

#[test]
fn a_huge_total_is_not_believed() {
    let page: Vec<SignedDescriptor> = (0..MAX_LIST_ENTRIES as u16).map(honest).collect();
    let (v, calls) = read_liar(page, u32::MAX);
    assert_eq!(v.len(), MAX_LIST_ENTRIES as usize);
    assert!(
        calls <= (MAX_DIRECTORY_ENTRIES / MAX_LIST_ENTRIES) as usize + 1,
        "{calls} requests"
    );
    // A short page ends the walk whatever the total says.
    let (v, calls) = read_liar(vec![honest(1), honest(2)], u32::MAX);
    assert_eq!((v.len(), calls), (2, 1));
}

#[test]
fn bootstraps_that_disagree_are_trusted_only_by_quorum() {
    let nodes: Vec<SignedDescriptor> = (1..=4).map(honest).collect();
    let sybils: Vec<SignedDescriptor> = (100..106).map(honest).collect();
    let a = view(&nodes);
    let b = view(&[&nodes[..2], &sybils[..]].concat());
    let c = view(&nodes);
    let ids = |l: &[NodeDescriptor]| -> Vec<u16> {
        let mut v: Vec<u16> = l
            .iter()
            .map(|d| {
                (1..200)
                    .find(|&s| honest(s).verify_at(NOW).unwrap().identity_key == d.identity_key)
                    .unwrap()
            })
            .collect();
        v.sort();
        v
    };
    // Two of three: the lying bootstrap's Sybils are out, the nodes it hid
    // are in.
    assert_eq!(ids(&agree(&[a.clone(), b.clone(), c], 2)), vec![1, 2, 3, 4]);
    // Two of two: only what both serve.
    let agreed = agree(&[a, b], 2);
    assert_eq!(ids(&agreed), vec![1, 2]);
    let best = pick(&agreed, 4, Distinct::Host, &mut rng()).unwrap_err();
    let msg = PoolError::TooFewAgreed {
        quorum: 2,
        asked: 2,
        agreed: agreed.len(),
        distinct: best,
        needed: 4,
        note: "",
    }
    .to_string();
    assert!(
        msg.starts_with("2 of 2 bootstraps agree on only 2 nodes") && msg.contains("4 needed"),
        "{msg}"
    );
}

#[test]
fn the_newest_descriptor_of_an_identity_wins() {
    let old = signed(7, &["/ip4/10.9.9.9/tcp/1"], NOW - 100);
    let new = signed(7, &["/ip4/10.9.9.9/tcp/1"], NOW - 10);
    let agreed = agree(&[view(&[old]), view(&[new])], 2);
    assert_eq!(agreed.len(), 1);
    assert_eq!(agreed[0].issued_at, NOW - 10);
}

#[test]
fn no_two_hops_share_a_host() {
    let pool: Vec<NodeDescriptor> = [
        signed(1, &["/ip4/192.0.2.4/tcp/1000"], NOW),
        signed(2, &["/ip4/192.0.2.4/tcp/2000"], NOW),
        signed(3, &["/ip4/198.51.100.8/tcp/1", "/ip4/127.0.0.1/tcp/1"], NOW),
        signed(4, &["/ip6/2001:db8:0:1::1/tcp/1"], NOW),
        signed(5, &["/ip6/2001:db8:0:1::2/tcp/1"], NOW),
        signed(6, &["/ip4/127.0.0.1/tcp/3000"], NOW),
    ]
    .iter()
    .map(|s| s.verify_at(NOW).unwrap())
    .collect();
    // One per IPv4 address and per IPv6 /64; loopback names no host.
    assert_eq!(pick(&pool, 4, Distinct::Host, &mut rng()), Err(3));
    assert_eq!(anonymous(&pool, Distinct::Host), 1);
    assert_eq!(pick(&pool, 3, Distinct::Host, &mut rng()).unwrap().len(), 3);
    // A pool on one machine: host and port.
    assert_eq!(
        pick(&pool, 6, Distinct::HostPort, &mut rng())
            .unwrap()
            .len(),
        6
    );
}

#[test]
fn the_quorum_is_a_majority_unless_given() {
    assert_eq!(resolve_quorum(None, 1).unwrap(), 1);
    assert_eq!(resolve_quorum(None, 2).unwrap(), 2);
    assert_eq!(resolve_quorum(None, 3).unwrap(), 2);
    assert_eq!(resolve_quorum(Some(1), 3).unwrap(), 1);
    assert!(resolve_quorum(Some(0), 3).is_err());
    assert!(resolve_quorum(Some(4), 3).is_err());
}
