use super::*;

fn tag(b: u8) -> Tag {
    [b; TAG_LEN]
}

/// A turning route over `n` hops whose tensors are 1, 2, 3, …: slot i
/// takes tensor i and sends tensor i+1.
fn honest(n: usize) -> Reading {
    let mut hops: Vec<(usize, bool)> = (0..n - 1).map(|h| (h, false)).collect();
    hops.push((n - 1, true));
    hops.extend((0..n - 1).rev().map(|h| (h, true)));
    let slots: Vec<Witnessed> = hops
        .iter()
        .enumerate()
        .map(|(i, &(hop, backward))| Witnessed {
            hop,
            backward,
            input: tag(i as u8 + 1),
            output: tag(i as u8 + 2),
        })
        .collect();
    let received = tag(slots.len() as u8 + 1);
    Reading {
        slots,
        sent: tag(1),
        received,
    }
}

#[test]
fn an_honest_chain_passes_and_equal_replicas_agree() {
    let r = honest(4);
    assert_eq!(check_chain(&r), None);
    assert_eq!(compare(&r, &r.clone()), None);
}

#[test]
fn a_consistent_liar_is_found_by_its_replica_only() {
    // Hop 2 (position 1) sends something else and witnesses what it sent:
    // every tag after it changes, its chain still holds.
    let a = honest(4);
    let mut b = a.clone();
    for (i, s) in b.slots.iter_mut().enumerate() {
        if i >= 1 {
            s.output[0] ^= 0x80;
        }
        if i >= 2 {
            s.input[0] ^= 0x80;
        }
    }
    b.received[0] ^= 0x80;
    assert_eq!(check_chain(&b), None);
    assert_eq!(compare(&a, &b), Some(Finding::Replicas { hop: 1 }));
}

#[test]
fn a_liar_about_its_own_output_breaks_the_chain() {
    let mut r = honest(3);
    // Hop 1 witnesses the honest output but sent another tensor.
    r.slots[2].input[0] ^= 1;
    assert_eq!(check_chain(&r), Some(Finding::Link { from: 1, to: 2 }));
    let mut r = honest(3);
    r.slots[0].input[0] ^= 1;
    assert_eq!(check_chain(&r), Some(Finding::End { hop: 0 }));
    let mut r = honest(3);
    r.received[0] ^= 1;
    assert_eq!(check_chain(&r), Some(Finding::End { hop: 0 }));
}

#[test]
fn routes_that_do_not_line_up_are_a_defect() {
    let a = honest(3);
    let b = honest(4);
    assert!(matches!(compare(&a, &b), Some(Finding::Shape(_))));
}

#[test]
fn plans_use_distinct_slots_and_follow_the_secret() {
    let secret = JobSecret::new(Some([3u8; 32])).expect("given secret");
    for hops in 1..=16 {
        let plan = WitnessPlan::new(&secret, hops);
        let w: Vec<Witness> = (0..hops).filter_map(|h| plan.for_hop(h)).collect();
        assert_eq!(w.len(), hops);
        let forward: std::collections::BTreeSet<u8> = w.iter().map(|w| w.forward).collect();
        let backward: std::collections::BTreeSet<u8> = w.iter().map(|w| w.backward).collect();
        assert_eq!(forward.len(), hops);
        assert_eq!(backward.len(), hops);
        if 2 * hops <= WITNESS_SLOTS {
            assert!(forward.is_disjoint(&backward), "{hops} hops");
        }
        assert!(w.iter().all(Witness::is_valid));
    }
    let again = WitnessPlan::new(&secret, 4);
    assert_eq!(again.for_hop(2), WitnessPlan::new(&secret, 4).for_hop(2));
    let other = JobSecret::new(Some([4u8; 32])).expect("given secret");
    assert_ne!(
        WitnessPlan::new(&other, 4)
            .for_hop(0)
            .map(|w| w.key.clone()),
        again.for_hop(0).map(|w| w.key.clone())
    );
}
