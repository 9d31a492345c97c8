//! Whole packets: `header || payload`, built by the designer (or by a node
//! for its cover traffic) and processed one hop at a time.

use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::crypto::{ReplayTag, xor_keystream};
use crate::error::{Result, SphinxError};
use crate::geometry::Geometry;
use crate::header::{Exit, HeaderBinding, RouteHop, build_header, open_header, write_next_header};
use crate::keys::KeyRing;
use crate::payload::seal_payload;
use crate::replay::ReplayCheck;
use crate::routing::RoutingInfo;

/// How the payload travels (see [`crate::payload`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadMode {
    /// Replaced at every hop, sealed per link (`key_in` / `key_out`).
    Link,
    /// Sealed once end to end under the last hop's `key_in`; every hop strips
    /// one ChaCha20 layer.
    Layered,
}

/// A packet on the wire: exactly `geometry.packet_len(class)` bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    bytes: Vec<u8>,
    header_len: usize,
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packet({} bytes)", self.bytes.len())
    }
}

impl Packet {
    /// Wraps received bytes after checking the length names a size class.
    pub fn from_bytes(g: &Geometry, bytes: Vec<u8>) -> Result<Packet> {
        g.class_of_packet_len(bytes.len())?;
        Ok(Packet {
            bytes,
            header_len: g.header_len(),
        })
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The wire bytes, for [`process`] in place.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// The wire bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Wire length.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a packet has at least a header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The header part.
    pub fn header(&self) -> &[u8] {
        &self.bytes[..self.header_len]
    }

    /// The payload part.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.header_len..]
    }

    /// The payload part, mutable (to seal a new payload after processing).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.header_len..]
    }
}

/// What the builder keeps: the header binding and replay tag each hop will
/// see, the reply id for an [`Exit::Endpoint`], and (layered mode) the layer
/// keys. Layer keys are wiped on drop.
pub struct DesignerState {
    pub(crate) bindings: Vec<HeaderBinding>,
    pub(crate) tags: Vec<ReplayTag>,
    pub(crate) exit_alpha: Option<[u8; 32]>,
    pub(crate) layer_keys: Zeroizing<Vec<[u8; 32]>>,
    pub(crate) e2e_keys: Zeroizing<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for DesignerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesignerState")
            .field("hops", &self.bindings.len())
            .finish_non_exhaustive()
    }
}

impl DesignerState {
    /// The header binding hop i receives (for opening or sealing a link payload
    /// of that hop from the designer's side).
    pub fn bindings(&self) -> &[HeaderBinding] {
        &self.bindings
    }

    /// The replay tag hop i will record.
    pub fn replay_tags(&self) -> &[ReplayTag] {
        &self.tags
    }

    /// α of the header the last hop emits towards an endpoint: how the
    /// endpoint recognises the packet (see [`crate::reply_id`]).
    pub fn exit_id(&self) -> Option<[u8; 32]> {
        self.exit_alpha
    }

    /// The end-to-end key of hop `i` (see [`Processed::e2e_key`]).
    pub fn e2e_key(&self, i: usize) -> Option<crate::routing::LinkKey> {
        self.e2e_keys
            .get(i)
            .map(|k| crate::routing::LinkKey::from_bytes(*k))
    }

    /// XORs every hop's payload layer into `payload` (layered mode): turns the
    /// payload an endpoint received back into the end-to-end ciphertext.
    pub fn strip_layers(&self, payload: &mut [u8]) {
        for k in self.layer_keys.iter() {
            xor_keystream(k, payload);
        }
    }
}

/// Builds a packet for `route` carrying `message` in a payload of `class` bytes.
///
/// Link mode seals the message under `route[0].key_in` (the designer→hop 1
/// link). Layered mode seals it under the last hop's `key_in`, bound to the
/// header the last hop receives, then adds every hop's layer.
pub fn build_packet<R: RngCore + CryptoRng + ?Sized>(
    g: &Geometry,
    route: &[RouteHop],
    exit: Exit,
    mode: PayloadMode,
    class: usize,
    message: &[u8],
    rng: &mut R,
) -> Result<(Packet, DesignerState)> {
    g.check_class(class)?;
    let layered = mode == PayloadMode::Layered;
    let built = build_header(g, route, exit, layered, rng)?;
    let header_len = g.header_len();
    let mut bytes = built.bytes;
    bytes.resize(header_len + class, 0);
    let payload = &mut bytes[header_len..];
    let (seal_hop, seal_material) = if layered {
        (route.last(), built.hops.last())
    } else {
        (route.first(), built.hops.first())
    };
    let (hop, material) = seal_hop
        .zip(seal_material)
        .ok_or(SphinxError::InvalidRoute("empty route"))?;
    seal_payload(&hop.key_in, &material.binding, message, payload)?;
    let layer_keys: Zeroizing<Vec<[u8; 32]>> = if layered {
        Zeroizing::new(built.hops.iter().map(|h| h.keys.pi).collect())
    } else {
        Zeroizing::new(Vec::new())
    };
    for k in layer_keys.iter() {
        xor_keystream(k, payload);
    }
    let state = DesignerState {
        bindings: built.hops.iter().map(|h| h.binding).collect(),
        tags: built.hops.iter().map(|h| ReplayTag(h.keys.tag)).collect(),
        exit_alpha: built.exit_alpha,
        layer_keys,
        e2e_keys: Zeroizing::new(built.hops.iter().map(|h| h.keys.e2e).collect()),
    };
    Ok((Packet { bytes, header_len }, state))
}

/// What a hop learned from a packet it accepted.
#[derive(Clone, Debug)]
pub struct Processed {
    /// Its routing info.
    pub routing: RoutingInfo,
    /// The payload class (payload length in bytes).
    pub class: usize,
    /// Binding of the header the packet arrived with: open the payload with
    /// `open_payload(&routing.key_in, &incoming, ..)`.
    pub incoming: HeaderBinding,
    /// Binding of the next header now in the buffer; seal this hop's output
    /// with `seal_payload(&routing.key_out, &outgoing, ..)`. `None` when the
    /// routing info says [`crate::flags::FINAL`].
    pub outgoing: Option<HeaderBinding>,
    /// The tag recorded in the replay cache.
    pub replay_tag: ReplayTag,
    /// Epoch of the mix key that opened the header.
    pub key_epoch: u32,
    /// A key only this hop and the packet's builder know (derived from the
    /// hop's shared secret): for a message from the builder to this one hop
    /// that travels inside a payload other hops read (PROTOCOL.md §4).
    pub e2e_key: crate::routing::LinkKey,
}

/// Processes one packet in place, as hop: picks the key by the epoch hint,
/// derives the shared secret, checks the MAC (constant time), decrypts its
/// routing info, checks and records the replay tag, and (unless final)
/// overwrites the header with the next one. In layered mode it also strips
/// its payload layer. On any error the buffer is unchanged and the packet
/// must be dropped; the error's [`SphinxError::reason`] is the drop counter.
pub fn process(
    g: &Geometry,
    ring: &KeyRing,
    replay: &mut impl ReplayCheck,
    packet: &mut [u8],
) -> Result<Processed> {
    let class = g.class_of_packet_len(packet.len())?;
    let (header, payload) = packet.split_at_mut(g.header_len());
    let hint = *header.first().ok_or(SphinxError::WrongSize { len: 0 })?;
    let key = ring.by_hint(hint).ok_or(SphinxError::UnknownEpoch)?;
    let opened = open_header(g, key, header)?;
    let replay_tag = ReplayTag(opened.keys.tag);
    replay.check_and_insert(key.epoch(), &replay_tag)?;
    let incoming =
        HeaderBinding::of_header(header).ok_or(SphinxError::Malformed("header too short"))?;
    let outgoing = if opened.routing.is_final() {
        None
    } else {
        Some(
            write_next_header(g, &opened, header)
                .ok_or(SphinxError::Malformed("header too short"))?,
        )
    };
    if opened.routing.is_layered() {
        xor_keystream(&opened.keys.pi, payload);
    }
    Ok(Processed {
        routing: opened.routing,
        class,
        incoming,
        outgoing,
        replay_tag,
        key_epoch: key.epoch(),
        e2e_key: crate::routing::LinkKey::from_bytes(opened.keys.e2e),
    })
}
