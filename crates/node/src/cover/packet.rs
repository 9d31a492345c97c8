//! One cover packet, built so that a hop relaying it sees what it sees when
//! it relays a real job packet (SPEC §7: cover is indistinguishable from
//! real traffic to the hop that relays it).
//!
//! A relaying hop of a real job (a hop that is not the target of a control
//! message) gets: op `Relay`, no flag but the link-mode ones, a job handle
//! the designer draws afresh for the packet (it names nothing to the hop),
//! fresh per-link keys, and a link payload that opens to a job payload with
//! no tensor and an end-to-end section it only re-layers. A cover packet is
//! built the same way: link mode, op `Relay` at every hop but the last, a
//! random handle and random link keys per hop, and a job payload with no
//! tensor whose section is random bytes of [`section_len`]. Only its last
//! hop reads `Loop` (the sender itself) or `Drop` (the hop that discards
//! it), and so learns it is cover.

use mixnn_protocol::job::JobPayload;
use mixnn_sphinx::{
    Exit, Geometry, JobHandle, LinkKey, MixPublicKey, NodeId, Op, PayloadMode, ReplayTag, RouteHop,
};
use rand::{CryptoRng, RngCore};

use super::CoverError;

/// A node a cover route names.
#[derive(Clone, Copy, Debug)]
pub struct CoverHop {
    /// How routes name it.
    pub id: NodeId,
    /// Its mix key for `epoch`.
    pub key: MixPublicKey,
    /// The key epoch of `key`.
    pub epoch: u32,
}

/// Which cover packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Back to the sender (the route's last hop is the sender itself).
    Loop,
    /// Discarded by the route's last hop.
    Drop,
}

/// Bytes of a job payload's end-to-end section in a cover packet of a
/// class with `capacity` payload bytes: the section fills the class (the
/// job payload's framing takes 6 bytes), as a padded real section does.
pub fn section_len(capacity: usize) -> usize {
    capacity.saturating_sub(6)
}

/// A cover packet over `route` (the first hop is where it is sent; for a
/// loop the last is the sender), with the replay tag its last hop will see.
pub fn build<R: RngCore + CryptoRng>(
    g: &Geometry,
    route: &[CoverHop],
    kind: Kind,
    class: usize,
    rng: &mut R,
) -> Result<(Vec<u8>, ReplayTag), CoverError> {
    let links: Vec<LinkKey> = (0..=route.len()).map(|_| LinkKey::random(rng)).collect();
    let last = route.len().saturating_sub(1);
    let hops: Vec<RouteHop> = (route.iter().enumerate())
        .map(|(i, h)| {
            let mut job = [0u8; 32];
            rng.fill_bytes(&mut job);
            let op = match (i == last, kind) {
                (false, _) => Op::Relay,
                (true, Kind::Loop) => Op::Loop,
                (true, Kind::Drop) => Op::Drop,
            };
            RouteHop {
                node_id: h.id,
                mix_key: h.key,
                epoch: h.epoch,
                op,
                job: JobHandle(job),
                key_in: links[i].clone(),
                key_out: links[i + 1].clone(),
                app_flags: 0,
            }
        })
        .collect();
    let (packet, state) =
        mixnn_sphinx::build_packet(g, &hops, Exit::Final, PayloadMode::Link, class, &[], rng)?;
    let mut e2e = vec![0u8; section_len(g.capacity(class)?)];
    rng.fill_bytes(&mut e2e);
    let message = JobPayload { tensor: None, e2e }.encode();
    let first = *state.bindings().first().ok_or(CoverError::BadHop)?;
    let tag = *state.replay_tags().last().ok_or(CoverError::BadHop)?;
    let mut bytes = packet.into_bytes();
    let h = g.header_len();
    let payload = bytes.get_mut(h..).ok_or(CoverError::BadHop)?;
    mixnn_sphinx::seal_payload(&links[0], &first, &message, payload)?;
    Ok((bytes, tag))
}
