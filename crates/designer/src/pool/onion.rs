//! Messages as onions: the designer's side of PROTOCOL.md §12.
//!
//! A message is one Sphinx packet over a list of *slots* (a hop of the
//! cascade and what it must do there), ending at the designer. The designer
//! picks fresh link keys per packet, seals the job payload for the first
//! link, and puts an end-to-end message for one slot under the layers of
//! the slots before it. The answer comes back sealed under the last link
//! key; an end-to-end reply is found under the layers of the slots after
//! the one that wrote it.

use libp2p::PeerId;
use mixnn_protocol::job::{
    self, E2eDirection, FromHop, JobPayload, ToHop, WireTensor, app_flags, witness,
};
use mixnn_sphinx::{
    DesignerState, Exit, Geometry, HeaderBinding, JobHandle, LinkKey, MixPublicKey, NodeId, Op,
    PayloadMode, RouteHop,
};
use rand::{CryptoRng, RngCore};

use crate::DesignerError;

fn err(m: impl std::fmt::Display) -> DesignerError {
    DesignerError::Pool(m.to_string())
}

/// What a cascade hop is to the designer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Serves shard `index` of the model.
    Layer(usize),
    /// A dummy relay hop.
    Dummy,
}

/// One hop of the cascade: a pool node and the job handle it knows the
/// job by.
#[derive(Clone, Debug)]
pub struct Hop {
    pub node: NodeId,
    pub peer: PeerId,
    pub mix_key: MixPublicKey,
    pub epoch: u32,
    pub job: JobHandle,
    pub role: Role,
}

/// A hop of one message's route: which cascade hop, doing what.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub hop: usize,
    pub op: Op,
    pub flags: u8,
}

impl Slot {
    pub fn new(hop: usize, op: Op) -> Slot {
        Slot { hop, op, flags: 0 }
    }
    pub fn target(hop: usize, op: Op, extra: u8) -> Slot {
        Slot {
            hop,
            op,
            flags: app_flags::E2E_TARGET | extra,
        }
    }
}

/// What the designer keeps of a packet in flight.
pub struct Sent {
    state: DesignerState,
    last_link: LinkKey,
    pub slots: Vec<Slot>,
    pub exit_id: [u8; 32],
    /// The random mask over the witness area, when the packet has one
    /// (PROTOCOL.md §12.9).
    pub witness_mask: Option<Vec<u8>>,
}

/// A packet's route and header, built before its payload: the costly part
/// of a message (two scalar multiplications per slot), independent of
/// what the message carries, so it can be built ahead ([`super::prebuild`]).
pub struct Header {
    links: Vec<LinkKey>,
    packet: mixnn_sphinx::Packet,
    state: DesignerState,
}

/// Builds the route and header for `slots` (fresh link keys, fresh relay
/// handles, a fresh ephemeral key).
pub fn header<R: RngCore + CryptoRng>(
    g: &Geometry,
    class: usize,
    hops: &[Hop],
    slots: &[Slot],
    designer: NodeId,
    rng: &mut R,
) -> Result<Header, DesignerError> {
    let links: Vec<LinkKey> = (0..=slots.len()).map(|_| LinkKey::random(rng)).collect();
    let route: Vec<RouteHop> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let h = &hops[s.hop];
            RouteHop {
                node_id: h.node,
                mix_key: h.mix_key,
                epoch: h.epoch,
                op: s.op,
                job: relay_handle(s, h, rng),
                key_in: links[i].clone(),
                key_out: links[i + 1].clone(),
                app_flags: s.flags,
            }
        })
        .collect();
    let (packet, state) = mixnn_sphinx::build_packet(
        g,
        &route,
        Exit::Endpoint(designer),
        PayloadMode::Link,
        class,
        &[],
        rng,
    )
    .map_err(|e| err(format!("building a packet: {e}")))?;
    Ok(Header {
        links,
        packet,
        state,
    })
}

/// Builds the packet for `slots` (whose route and header are `header`,
/// built for these slots) carrying `tensor` and, for the slot at
/// `e2e.0`, the end-to-end message `e2e.1`, sealed into a section of
/// `section_len` bytes (random bytes of that length when the packet has no
/// message: every hop sees a section of the same length either way). With
/// `witness` the last [`witness::WITNESS_AREA`] bytes of the section are a
/// witness area (§12.9): a random mask under the layer of every slot that
/// will layer it, so what comes back is the mask over the hops' tags.
#[allow(clippy::too_many_arguments)]
pub fn build<R: RngCore + CryptoRng>(
    g: &Geometry,
    class: usize,
    header: Header,
    slots: Vec<Slot>,
    tensor: Option<WireTensor>,
    e2e: Option<(usize, ToHop)>,
    section_len: usize,
    witness: bool,
    rng: &mut R,
) -> Result<(Vec<u8>, Sent), DesignerError> {
    let Header {
        links,
        packet,
        state,
    } = header;
    let area = if witness { witness::WITNESS_AREA } else { 0 };
    let sealed_len = section_len.saturating_sub(area);
    let target = e2e.as_ref().map(|(t, _)| *t);
    let mut section = vec![0u8; sealed_len];
    rng.fill_bytes(&mut section);
    if let Some((t, msg)) = e2e {
        let key = e2e_key(&state, t)?;
        let body = job::encode_msg("end-to-end message", &msg).map_err(err)?;
        section = job::seal_e2e_padded(key.as_bytes(), E2eDirection::ToHop, &body, sealed_len)
            .map_err(err)?;
        for j in 0..t {
            job::e2e_layer(e2e_key(&state, j)?.as_bytes(), &mut section);
        }
    }
    let witness_mask = if witness {
        let mut mask = vec![0u8; area];
        rng.fill_bytes(&mut mask);
        let mut layers = vec![0u8; section_len];
        for j in (0..slots.len()).filter(|&j| Some(j) != target) {
            job::e2e_layer(e2e_key(&state, j)?.as_bytes(), &mut layers);
        }
        section.extend(layers[sealed_len..].iter().zip(&mask).map(|(l, m)| l ^ m));
        Some(mask)
    } else {
        None
    };
    let message = JobPayload {
        tensor,
        e2e: section,
    }
    .encode();
    let exit_id = state
        .exit_id()
        .ok_or_else(|| err("a route to the designer has an exit id"))?;
    let first = state
        .bindings()
        .first()
        .copied()
        .ok_or_else(|| err("empty route"))?;
    let mut bytes = packet.into_bytes();
    let h = g.header_len();
    mixnn_sphinx::seal_payload(&links[0], &first, &message, &mut bytes[h..]).map_err(|e| {
        err(format!(
            "a message of {} bytes does not fit the job's {class}-byte packets: {e}",
            message.len()
        ))
    })?;
    let last_link = links.last().cloned().ok_or_else(|| err("no links"))?;
    Ok((
        bytes,
        Sent {
            state,
            last_link,
            slots,
            exit_id,
            witness_mask,
        },
    ))
}

/// The witness slots of an answer to `sent` (its area with the mask
/// removed): slot `i` holds the XOR of the tags written there, zero where
/// nobody wrote. `None` when the packet had no area or the section is too
/// short for one.
pub fn witness_slots(sent: &Sent, section: &[u8]) -> Option<Vec<[u8; witness::WITNESS_SLOT_LEN]>> {
    let mask = sent.witness_mask.as_ref()?;
    let area = section.get(section.len().checked_sub(witness::WITNESS_AREA)?..)?;
    let plain: Vec<u8> = area.iter().zip(mask).map(|(a, m)| a ^ m).collect();
    Some(
        plain
            .chunks_exact(witness::WITNESS_SLOT_LEN)
            .map(|c| {
                let mut s = [0u8; witness::WITNESS_SLOT_LEN];
                s.copy_from_slice(c);
                s
            })
            .collect(),
    )
}

/// The handle a slot names the job by: a hop that only relays (not the
/// target of the end-to-end message) does no work for the job, so it gets a
/// handle drawn afresh, as cover packets carry (SPEC §7: a relaying hop
/// cannot tell cover from a job's packet).
fn relay_handle<R: RngCore + CryptoRng>(s: &Slot, h: &Hop, rng: &mut R) -> JobHandle {
    if s.op == Op::Relay && s.flags == 0 {
        let mut job = [0u8; 32];
        rng.fill_bytes(&mut job);
        JobHandle(job)
    } else {
        h.job
    }
}

fn e2e_key(state: &DesignerState, i: usize) -> Result<LinkKey, DesignerError> {
    state
        .e2e_key(i)
        .ok_or_else(|| err(format!("no end-to-end key for slot {i}")))
}

/// Bytes of the end-to-end section of every packet that carries a tensor
/// (training and test): room for the labels of the largest batch or a
/// hop's failure, whichever is larger. It depends on the batch sizes only,
/// which every hop sees in its tensors anyway, never on a hop or a layer.
pub fn compute_section_len(batches: &[usize]) -> usize {
    let labels = 16 + 9 * batches.iter().copied().max().unwrap_or(1);
    job::E2E_OVERHEAD + labels.max(job::MAX_FAILURE_MESSAGE + 128)
}

/// Bytes of the end-to-end section of control packets (no tensor): all of
/// the payload after the framing (version, no-tensor marker, length).
pub fn control_section_len(g: &Geometry, class: usize) -> Result<usize, DesignerError> {
    let cap = g
        .capacity(class)
        .map_err(|e| err(format!("packet class: {e}")))?;
    Ok(cap.saturating_sub(6))
}

/// Opens the answer to `sent`.
pub fn open(g: &Geometry, sent: &Sent, mut bytes: Vec<u8>) -> Result<JobPayload, DesignerError> {
    let h = g.header_len();
    let binding = HeaderBinding::of_header(&bytes[..h.min(bytes.len())])
        .ok_or_else(|| err("answer too short"))?;
    let msg = mixnn_sphinx::open_payload(&sent.last_link, &binding, &mut bytes[h..])
        .map_err(|e| err(format!("the answer does not open: {e}")))?;
    JobPayload::decode(msg).map_err(err)
}

/// The end-to-end reply written by slot `target` (or an error any slot
/// wrote instead), as `Ok(message)`; `Err` names the failing slot. Without
/// a target the section is the designer's random filler unless a hop
/// failed and wrote its error there.
pub fn reply(
    sent: &Sent,
    section: &[u8],
    target: Option<usize>,
    describe: impl Fn(&Slot) -> String,
) -> Result<Option<FromHop>, DesignerError> {
    let n = sent.slots.len();
    let try_open = |k: usize| -> Option<FromHop> {
        let mut d = section.to_vec();
        for j in k + 1..n {
            job::e2e_layer(sent.state.e2e_key(j)?.as_bytes(), &mut d);
        }
        let body =
            job::open_e2e(sent.state.e2e_key(k)?.as_bytes(), E2eDirection::FromHop, &d).ok()?;
        job::decode_msg("reply", &body).ok()
    };
    if let Some(t) = target
        && let Some(m) = try_open(t)
    {
        return match m {
            FromHop::Error(e) => Err(err(format!("{}: {e}", describe(&sent.slots[t])))),
            m => Ok(Some(m)),
        };
    }
    for k in (0..n).rev() {
        if let Some(FromHop::Error(e)) = try_open(k) {
            return Err(err(format!("{}: {e}", describe(&sent.slots[k]))));
        }
    }
    match target {
        None => Ok(None),
        Some(_) => Err(err(
            "the answer carries an end-to-end section nobody sealed",
        )),
    }
}
