//! What a node saw of each job it served: for operators' audits and for the
//! tests of the threat model (a node must know only its two neighbours).
//!
//! The packet shell records into [`JobViews`] from what the hop reports
//! ([`crate::hop::Seen`]); the node hands out copies ([`JobViews::snapshot`]).
//! Cover traffic carries no job (an all-zero handle) and is never recorded.
//!
//! The job handle comes from the packet, so the table is bounded: at most
//! [`MAX_VIEWS`] jobs, and a new job at the limit evicts the view touched
//! least recently (a flood of made-up handles pushes out only other
//! made-up handles and idle jobs' views).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use libp2p::PeerId;

/// What a node saw of one job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobView {
    /// Peers that sent this node packets of the job.
    pub from: BTreeSet<PeerId>,
    /// Peers this node sent packets of the job to.
    pub to: BTreeSet<PeerId>,
    /// Ops it performed, with counts.
    pub ops: BTreeMap<String, u64>,
    /// Shapes of the tensors it received in the clear.
    pub input_shapes: BTreeSet<Vec<u32>>,
    /// End-to-end messages it could read, by kind (`init`, `labels`, …).
    pub e2e_read: BTreeMap<String, u64>,
    /// Lengths of the end-to-end sections it received, per op, with counts:
    /// what the size of the section tells a hop (PROTOCOL.md §12.3).
    pub e2e_lens: BTreeMap<(String, usize), u64>,
    /// Distinct entries not recorded because a set of this view was full
    /// ([`MAX_VIEW_ENTRIES`]): the view is then a lower bound.
    pub overflow: u64,
}

/// Distinct entries kept per set of one view (peers, shapes, section
/// lengths). Shapes, section lengths and next hops come from packets, which
/// anyone holding the node's public mix key can build: without a cap, a
/// stream of crafted packets under one job handle (which keeps that view
/// the most recent one) would grow it without end. An honest job gives a
/// hop two neighbours and a handful of shapes and lengths.
pub const MAX_VIEW_ENTRIES: usize = 64;

/// Inserts `v` unless the set is full of other values.
fn insert_capped<T: Ord>(set: &mut BTreeSet<T>, v: T, overflow: &mut u64) {
    if set.len() < MAX_VIEW_ENTRIES || set.contains(&v) {
        set.insert(v);
    } else {
        *overflow += 1;
    }
}

/// Counts `k` unless the map is full of other keys.
fn count_capped<K: Ord>(map: &mut BTreeMap<K, u64>, k: K, overflow: &mut u64) {
    if map.len() < MAX_VIEW_ENTRIES || map.contains_key(&k) {
        *map.entry(k).or_default() += 1;
    } else {
        *overflow += 1;
    }
}

/// Jobs whose views are kept at once.
pub const MAX_VIEWS: usize = 4096;

/// The views and their recency: `order` maps a touch number to the job
/// touched then (each job once, at its last touch).
#[derive(Debug, Default)]
struct Table {
    map: HashMap<[u8; 32], (u64, JobView)>,
    order: BTreeMap<u64, [u8; 32]>,
    next: u64,
}

/// The views of recent jobs, keyed by the job handle this node knows.
#[derive(Debug)]
pub struct JobViews {
    table: Mutex<Table>,
    max: usize,
}

impl Default for JobViews {
    fn default() -> Self {
        Self::with_limit(MAX_VIEWS)
    }
}

impl JobViews {
    /// A packet of `job` came in from `from` for `op`, with a tensor of
    /// `shape` in the clear (if any).
    pub fn received(&self, job: &[u8; 32], from: PeerId, op: &str, shape: Option<&[u32]>) {
        self.note(job, |v| {
            insert_capped(&mut v.from, from, &mut v.overflow);
            count_capped(&mut v.ops, op.into(), &mut v.overflow);
            if let Some(s) = shape {
                insert_capped(&mut v.input_shapes, s.to_vec(), &mut v.overflow);
            }
        });
    }

    /// A packet of `job` for `op` came with an end-to-end section of `len` bytes.
    pub fn section(&self, job: &[u8; 32], op: &str, len: usize) {
        self.note(job, |v| {
            count_capped(&mut v.e2e_lens, (op.into(), len), &mut v.overflow)
        });
    }

    /// This node read an end-to-end message of `kind` for `job`.
    pub fn read_e2e(&self, job: &[u8; 32], kind: &str) {
        self.note(job, |v| {
            count_capped(&mut v.e2e_read, kind.into(), &mut v.overflow)
        });
    }

    /// A packet of `job` went to `to`.
    pub fn sent(&self, job: &[u8; 32], to: PeerId) {
        self.note(job, |v| insert_capped(&mut v.to, to, &mut v.overflow));
    }

    /// A copy of every job's view.
    pub fn snapshot(&self) -> Vec<JobView> {
        self.lock().map.values().map(|(_, v)| v.clone()).collect()
    }

    /// Views held now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no view is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A table keeping at most `max` views (at least one).
    pub fn with_limit(max: usize) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, job: &[u8; 32], f: impl FnOnce(&mut JobView)) {
        if job == &[0u8; 32] {
            return; // cover traffic has no job
        }
        let mut t = self.lock();
        let Table { map, order, next } = &mut *t;
        let touch = *next;
        *next += 1;
        if let Some((at, view)) = map.get_mut(job) {
            order.remove(at);
            *at = touch;
            order.insert(touch, *job);
            f(view);
            return;
        }
        while map.len() >= self.max {
            let Some((_, oldest)) = order.pop_first() else {
                break;
            };
            map.remove(&oldest);
        }
        let mut view = JobView::default();
        f(&mut view);
        map.insert(*job, (touch, view));
        order.insert(touch, *job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packets of made-up job handles, one each: the table stays at its
    /// limit and keeps the job that is still in use.
    #[test]
    fn a_flood_of_job_handles_keeps_the_views_bounded() {
        let views = JobViews::with_limit(64);
        let from = PeerId::random();
        let live = [7u8; 32];
        for i in 0u32..10_000 {
            let mut job = [1u8; 32];
            job[..4].copy_from_slice(&i.to_be_bytes());
            views.received(&job, from, "forward", None);
            views.received(&live, from, "forward", None);
            assert!(views.len() <= 64);
        }
        assert_eq!(views.len(), 64);
        let kept = views.snapshot().into_iter().map(|v| v.ops["forward"]).max();
        assert_eq!(kept, Some(10_000), "the live job's view survives the flood");
    }

    /// Crafted packets under one job handle, each with a new shape, section
    /// length and next hop: the view stops growing at the cap, counts what
    /// it left out, and still records what it already knew.
    #[test]
    fn one_job_flooded_with_distinct_shapes_and_hops_stays_bounded() {
        let views = JobViews::default();
        let job = [9u8; 32];
        let (from, to) = (PeerId::random(), PeerId::random());
        views.received(&job, from, "forward", Some(&[64, 10]));
        views.sent(&job, to);
        for i in 0u32..5_000 {
            views.received(&job, PeerId::random(), "forward", Some(&[0, i]));
            views.section(&job, "forward", i as usize);
            views.sent(&job, PeerId::random());
        }
        views.received(&job, from, "forward", Some(&[64, 10]));
        let v = views.snapshot().pop().expect("the job's view");
        for len in [
            v.from.len(),
            v.to.len(),
            v.input_shapes.len(),
            v.e2e_lens.len(),
        ] {
            assert_eq!(len, MAX_VIEW_ENTRIES);
        }
        assert!(v.from.contains(&from) && v.to.contains(&to));
        assert!(v.input_shapes.contains(&vec![64, 10]));
        assert_eq!(v.ops["forward"], 5_002);
        // Per crafted packet: a peer, a shape, a length and a next hop, less
        // what fitted before the sets filled.
        assert_eq!(v.overflow, 4 * 5_000 - (4 * MAX_VIEW_ENTRIES as u64 - 3));
    }
}
