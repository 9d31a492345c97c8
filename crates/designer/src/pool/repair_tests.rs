//! Which failures a repair takes on, and which nodes may replace a hop.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::SigningKey;
use mixnn_protocol::descriptor::{DESCRIPTOR_FORMAT, peer_id_of};
use mixnn_protocol::{Capacity, MixKeyInfo};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::super::bringup;
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
    let undialable = DesignerError::Job(PoolError::Unreachable {
        hop: 1,
        role: "layer 0".into(),
        peer: "p".into(),
        reason: "connection refused".into(),
    });
    assert_eq!(repairable(&undialable), Some((Some(0), 0)));
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

/// A cascade over a directory with stopped nodes still listed, as
/// [`bringup::bring_up`] sees it: an attempt fails on the first pending
/// hop whose node is down, as dialing a stopped node does, and a
/// replacement takes a node the way a real one does ([`Spares::choose`]).
struct Fake {
    hops: Vec<Hop>,
    spares: Spares,
    listed: Vec<NodeDescriptor>,
    down: Vec<[u8; 32]>,
    rng: ChaCha20Rng,
    /// A failure the next attempt gives instead (a hop that answers).
    typed: Option<DesignerError>,
}

impl bringup::Hops for Fake {
    fn attempt(&mut self, pending: &BTreeSet<usize>) -> Result<(), DesignerError> {
        if let Some(e) = self.typed.take() {
            return Err(e);
        }
        for &t in pending {
            let h = &self.hops[t];
            if self.down.contains(&h.node.0) {
                return Err(PoolError::Unreachable {
                    hop: t + 1,
                    role: describe_role(h.role),
                    peer: h.peer.to_base58(),
                    reason: "connection refused".into(),
                }
                .into());
            }
        }
        Ok(())
    }

    fn unreachable(&mut self, failure: &DesignerError) -> Result<Option<usize>, DesignerError> {
        Ok(repairable(failure).and_then(|(t, _)| t))
    }

    fn describe(&self, t: usize) -> String {
        format!("hop {} (node {})", t + 1, self.hops[t].peer)
    }

    fn node_id(&self, t: usize) -> [u8; 32] {
        self.hops[t].node.0
    }

    fn replace(&mut self, t: usize) -> Result<(), DesignerError> {
        self.spares.mark_failed(self.hops[t].node.0);
        let d = self
            .spares
            .choose(&self.hops, &self.listed, t, &mut self.rng)?;
        self.hops[t] = placement::hop(&d, self.hops[t].role, &mut self.rng)?;
        self.spares.set(t, &d);
        Ok(())
    }
}

/// Eight listed nodes on their own ports, one more on node 0's port; the
/// cascade starts on nodes 0, 1, 2. `down` are stopped but still listed.
fn fake(down: &[usize], seed: u64) -> Fake {
    let mut listed: Vec<NodeDescriptor> = (0..8)
        .map(|i| node(i, &format!("/ip4/127.0.0.1/tcp/{}", 5000 + i)))
        .collect();
    listed.push(node(20, "/ip4/127.0.0.1/tcp/5000"));
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let roles = [Role::Layer(0), Role::Dummy, Role::Layer(1)];
    let hops: Vec<Hop> = listed[..3]
        .iter()
        .zip(roles)
        .map(|(d, r)| placement::hop(d, r, &mut rng).unwrap())
        .collect();
    Fake {
        spares: Spares::new(&hops, &listed, 1, Distinct::HostPort),
        hops,
        down: down.iter().map(|&i| listed[i].identity_key).collect(),
        listed,
        rng,
        typed: None,
    }
}

/// Stopped nodes still listed (hop 2's, and spares) are replaced until
/// every hop is up: never by a node of the cascade, a failed one or one on
/// a hop's address; every node dropped is remembered as failed.
#[test]
fn unreachable_nodes_are_replaced_by_listed_spares_until_every_hop_is_up() {
    for seed in 0..64 {
        let mut f = fake(&[1, 4, 5], seed);
        let all: BTreeSet<usize> = (0..3).collect();
        let replaced = bringup::bring_up(&mut f, all, bringup::MAX_REPLACEMENTS)
            .unwrap()
            .len();
        assert!((1..=3).contains(&replaced), "seed {seed}: {replaced}");
        assert_eq!(f.spares.failed().len(), replaced);
        assert_eq!(f.spares.failed()[0], f.listed[1].identity_key);
        let ids: Vec<[u8; 32]> = f.hops.iter().map(|h| h.node.0).collect();
        assert_eq!(ids[0], f.listed[0].identity_key, "hop 1 was up: kept");
        assert_eq!(ids[2], f.listed[2].identity_key, "hop 3 was up: kept");
        assert!(
            !f.down.contains(&ids[1]),
            "seed {seed}: a stopped node took hop 2"
        );
        // Node 8 shares hop 1's address: never chosen.
        assert_ne!(ids[1], f.listed[8].identity_key);
        assert!(
            [3, 6, 7]
                .map(|i| f.listed[i].identity_key)
                .contains(&ids[1])
        );
    }
}

/// A hop that answers with an error is alive: no node is replaced. With
/// every spare stopped, the error names what is missing; past the bound,
/// the error lists every node that could not be reached.
#[test]
fn bring_up_gives_up_clearly_and_only_on_unreachable_nodes() {
    let mut f = fake(&[], 1);
    f.typed = Some(DesignerError::Job(PoolError::NoAnswer { hop: 2 }));
    let e = bringup::bring_up(&mut f, BTreeSet::from([1]), 4).unwrap_err();
    assert!(matches!(
        e,
        DesignerError::Job(PoolError::NoAnswer { hop: 2 })
    ));
    assert!(f.spares.failed().is_empty());

    // Every node outside the cascade is stopped (node 8 shares an address).
    let mut f = fake(&[1, 3, 4, 5, 6, 7], 2);
    let e = bringup::bring_up(&mut f, BTreeSet::from([1]), 16).unwrap_err();
    let said = e.to_string();
    assert!(
        matches!(
            e,
            DesignerError::Job(PoolError::NoSpareNode {
                hop: 2,
                failed: 6,
                ..
            })
        ),
        "{said}"
    );
    assert!(said.contains("1 outside it share an address"), "{said}");
    assert!(said.contains("start another node"), "{said}");

    // The same pool with a bound of 2: the third unreachable node ends it.
    let mut f = fake(&[1, 3, 4, 5, 6, 7], 3);
    let e = bringup::bring_up(&mut f, BTreeSet::from([1]), 2).unwrap_err();
    let said = e.to_string();
    assert!(
        matches!(
            e,
            DesignerError::Job(PoolError::TooManyUnreachable { tried: 3, .. })
        ),
        "{said}"
    );
    assert_eq!(said.matches("connection refused").count(), 3, "{said}");
    assert_eq!(f.spares.failed().len(), 2);
    // The error carries the three nodes, for the job directory.
    let DesignerError::Job(PoolError::TooManyUnreachable { ids, .. }) = e else {
        unreachable!()
    };
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| f.down.contains(id)), "{ids:?}");
    assert_eq!(&ids[..2], f.spares.failed());
}
