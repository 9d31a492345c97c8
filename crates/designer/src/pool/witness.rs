//! The designer's side of witnesses (PROTOCOL.md §12.9): which slot each
//! hop writes, reading the tags back out of an answer, and the two checks
//! they allow. A **chain** check inside one cascade: what hop i says it
//! sent is what hop i+1 says it took, and the ends agree with what the
//! designer itself sent and received. A **replica** check between two
//! cascades of the same job in pure-wasm mode: the same inputs must give
//! the same outputs, hop by hop, bit for bit.

use mixnn_protocol::job::witness::{self, TAG_LEN, WITNESS_SLOTS};
use mixnn_protocol::job::{WireTensor, Witness};
use mixnn_sphinx::Op;
use rand::seq::SliceRandom;

use super::onion::{self, Sent};
use super::placement::JobSecret;

/// The label of the job secret's use for witnesses.
const WITNESS_LABEL: &str = "witness";

/// Where every hop of a verified job writes, and the job's tag key. It
/// derives from the job secret, so both replicas of a job (and a resumed
/// job) share it.
#[derive(Clone)]
pub(super) struct WitnessPlan {
    key: [u8; 32],
    /// `(forward slot, backward slot)` per hop.
    slots: Vec<(u8, u8)>,
}

impl Drop for WitnessPlan {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl WitnessPlan {
    /// The plan of a cascade of `hops` hops. With at most 8 hops (every
    /// turning cascade) all 2·hops slots are distinct, as one turning
    /// packet visits each hop's forward and backward slot; longer
    /// cascades (keep-last, ≤ 16) send forward and backward in separate
    /// packets, so each direction is a permutation of its own.
    pub fn new(secret: &JobSecret, hops: usize) -> WitnessPlan {
        let mut rng = secret.rng(WITNESS_LABEL);
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rng, &mut key);
        let mut perm: Vec<u8> = (0..WITNESS_SLOTS as u8).collect();
        perm.shuffle(&mut rng);
        let slots = if 2 * hops <= WITNESS_SLOTS {
            (0..hops).map(|h| (perm[2 * h], perm[2 * h + 1])).collect()
        } else {
            let mut back = perm.clone();
            back.shuffle(&mut rng);
            (0..hops.min(WITNESS_SLOTS))
                .map(|h| (perm[h], back[h]))
                .collect()
        };
        WitnessPlan { key, slots }
    }

    /// What hop `h` is told at its init.
    pub fn for_hop(&self, h: usize) -> Option<Witness> {
        let (forward, backward) = *self.slots.get(h)?;
        Some(Witness {
            key: self.key.to_vec(),
            forward,
            backward,
        })
    }

    /// The tag of a tensor the designer itself sent or received.
    pub fn tag(&self, t: Option<&WireTensor>) -> Tag {
        witness::tag(&self.key, t)
    }

    /// The tags of every compute slot of `sent`'s route, read from the
    /// answer's `section`, with the tags of what the designer sent and got.
    pub fn read(
        &self,
        sent: &Sent,
        section: &[u8],
        sent_tag: Tag,
        received_tag: Tag,
    ) -> Option<Reading> {
        let area = onion::witness_slots(sent, section)?;
        let mut slots = Vec::with_capacity(sent.slots.len());
        for s in &sent.slots {
            let (fwd, bwd) = *self.slots.get(s.hop)?;
            let at = match s.op {
                Op::Forward | Op::Test => fwd,
                Op::Backward => bwd,
                _ => continue,
            };
            let raw = area.get(usize::from(at))?;
            let mut input = [0u8; TAG_LEN];
            let mut output = [0u8; TAG_LEN];
            input.copy_from_slice(&raw[..TAG_LEN]);
            output.copy_from_slice(&raw[TAG_LEN..]);
            slots.push(Witnessed {
                hop: s.hop,
                backward: s.op == Op::Backward,
                input,
                output,
            });
        }
        Some(Reading {
            slots,
            sent: sent_tag,
            received: received_tag,
        })
    }
}

/// A truncated keyed digest of a tensor.
pub(super) type Tag = [u8; TAG_LEN];

/// What one hop wrote for one slot of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Witnessed {
    /// The cascade position.
    pub hop: usize,
    /// Whether the slot was a backward one (else forward or test).
    pub backward: bool,
    /// The tag of the tensor it says it took.
    pub input: Tag,
    /// The tag of the tensor it says it sent on.
    pub output: Tag,
}

/// The witnesses of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Reading {
    /// In route order.
    pub slots: Vec<Witnessed>,
    /// The tag of the tensor the designer sent.
    pub sent: Tag,
    /// The tag of the tensor the designer received.
    pub received: Tag,
}

/// What the checks found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// In one cascade, what hop `from` says it sent is not what hop `to`
    /// says it took: one of the two lies, the witnesses cannot say which.
    Link {
        /// The sending position.
        from: usize,
        /// The receiving position.
        to: usize,
    },
    /// An end hop's witness disagrees with the tensor the designer itself
    /// exchanged with it over their authenticated link: that hop lies.
    End {
        /// The position.
        hop: usize,
    },
    /// Both cascades' hop at this position took the same input and sent
    /// different outputs (or answered a different loss): one of the two
    /// replicas lies.
    Replicas {
        /// The position.
        hop: usize,
    },
    /// The cascades' witnesses do not line up (a different route or a
    /// missing area): a defect, not a verdict.
    Shape(String),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Link { from, to } => write!(
                f,
                "hop {}'s witness of what it sent differs from hop {}'s of what it took",
                from + 1,
                to + 1
            ),
            Finding::End { hop } => write!(
                f,
                "hop {}'s witness differs from the tensor it exchanged with the designer",
                hop + 1
            ),
            Finding::Replicas { hop } => write!(
                f,
                "the replicas of hop {} took the same input and sent different outputs",
                hop + 1
            ),
            Finding::Shape(s) => write!(f, "witnesses do not line up: {s}"),
        }
    }
}

/// The chain check of one message (see the module doc).
pub(super) fn check_chain(r: &Reading) -> Option<Finding> {
    let first = r.slots.first()?;
    if first.input != r.sent {
        return Some(Finding::End { hop: first.hop });
    }
    for pair in r.slots.windows(2) {
        if pair[0].output != pair[1].input {
            return Some(Finding::Link {
                from: pair[0].hop,
                to: pair[1].hop,
            });
        }
    }
    let last = r.slots.last()?;
    (last.output != r.received).then_some(Finding::End { hop: last.hop })
}

/// The replica check of the same message on two cascades whose chains
/// passed: the first slot where the outputs part.
pub(super) fn compare(a: &Reading, b: &Reading) -> Option<Finding> {
    if a.slots.len() != b.slots.len() {
        return Some(Finding::Shape(format!(
            "{} slots against {}",
            a.slots.len(),
            b.slots.len()
        )));
    }
    for (x, y) in a.slots.iter().zip(&b.slots) {
        if (x.hop, x.backward) != (y.hop, y.backward) {
            return Some(Finding::Shape("the routes differ".into()));
        }
        if x.input != y.input || x.output != y.output {
            return Some(Finding::Replicas { hop: x.hop });
        }
    }
    None
}

#[cfg(test)]
#[path = "witness_tests.rs"]
mod tests;
