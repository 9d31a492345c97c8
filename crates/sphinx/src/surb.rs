//! Single-use reply blocks (SURBs): how a node sends something back to the
//! designer (a loss, a test output, trained weights) without learning where
//! the designer is or who else is on the way.
//!
//! The designer builds a header for a return route whose last hop delivers to
//! the designer's endpoint, in layered mode, and hands out a [`Surb`]: the
//! first hop's id, the header, and a fresh reply key. The replier seals its
//! message under the reply key (bound to that header) and sends
//! `header || payload` to the first hop. Each hop strips one layer; the
//! designer, who keeps the [`SurbState`], recognises the reply by the group
//! element of the header it receives, removes all layers and opens the AEAD.
//! A SURB works once: a second use repeats the first hop's replay tag.
//!
//! Encoding (carried inside some payload):
//! `version (1) = 1 || class (u32 LE) || first hop id (32) || reply key (32) || header`.

use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::error::{Result, SphinxError};
use crate::geometry::Geometry;
use crate::header::{Exit, HeaderBinding, RouteHop, build_header};
use crate::packet::Packet;
use crate::payload::{open_payload, seal_payload};
use crate::routing::{LinkKey, NodeId};

/// Version byte of the SURB encoding.
pub const SURB_VERSION: u8 = 1;
const SURB_PREFIX_LEN: usize = 1 + 4 + 32 + 32;

/// What a replier holds. It reveals the first hop only; the reply key is
/// wiped on drop.
#[derive(Clone)]
pub struct Surb {
    first_hop: NodeId,
    reply_key: LinkKey,
    class: usize,
    header: Vec<u8>,
}

impl std::fmt::Debug for Surb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Surb")
            .field("first_hop", &self.first_hop)
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl Surb {
    /// Encoded length under geometry `g`.
    pub fn encoded_len(g: &Geometry) -> usize {
        SURB_PREFIX_LEN + g.header_len()
    }

    /// Where the replier sends the reply packet.
    pub fn first_hop(&self) -> &NodeId {
        &self.first_hop
    }

    /// Size class of the reply payload.
    pub fn class(&self) -> usize {
        self.class
    }

    /// The encoding, to carry in a payload. It contains the reply key.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(SURB_PREFIX_LEN + self.header.len()));
        out.push(SURB_VERSION);
        out.extend_from_slice(&(self.class as u32).to_le_bytes());
        out.extend_from_slice(&self.first_hop.0);
        out.extend_from_slice(self.reply_key.as_bytes());
        out.extend_from_slice(&self.header);
        out
    }

    /// Parses a SURB received in a payload.
    pub fn from_bytes(g: &Geometry, bytes: &[u8]) -> Result<Surb> {
        if bytes.len() != Self::encoded_len(g) {
            return Err(SphinxError::WrongSize { len: bytes.len() });
        }
        let (prefix, header) = bytes.split_at(SURB_PREFIX_LEN);
        if prefix[0] != SURB_VERSION {
            return Err(SphinxError::UnsupportedVersion(prefix[0]));
        }
        let class = u32::from_le_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        g.check_class(class)?;
        let mut first_hop = [0u8; 32];
        first_hop.copy_from_slice(&prefix[5..37]);
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&prefix[37..69]);
        Ok(Surb {
            first_hop: NodeId(first_hop),
            reply_key: LinkKey::from_bytes(*key),
            class,
            header: header.to_vec(),
        })
    }

    /// The reply packet carrying `message`, to send to [`Self::first_hop`].
    pub fn reply(&self, g: &Geometry, message: &[u8]) -> Result<Packet> {
        let binding = HeaderBinding::of_header(&self.header)
            .ok_or(SphinxError::Malformed("SURB header too short"))?;
        let header_len = self.header.len();
        let mut bytes = self.header.clone();
        bytes.resize(header_len + self.class, 0);
        seal_payload(&self.reply_key, &binding, message, &mut bytes[header_len..])?;
        Packet::from_bytes(g, bytes)
    }
}

/// What the designer keeps to read the reply. Secrets are wiped on drop.
pub struct SurbState {
    id: [u8; 32],
    binding: HeaderBinding,
    reply_key: LinkKey,
    class: usize,
    layer_keys: Zeroizing<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for SurbState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SurbState")
            .field("hops", &self.layer_keys.len())
            .finish_non_exhaustive()
    }
}

impl SurbState {
    /// The reply's id: the group element of the header the designer will
    /// receive. Look replies up by [`reply_id`] of the arriving packet.
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    /// Opens a reply packet (consumes its bytes in place) and returns the message.
    pub fn open_reply(&self, g: &Geometry, packet: &mut [u8]) -> Result<Vec<u8>> {
        let class = g.class_of_packet_len(packet.len())?;
        if class != self.class || reply_id(g, packet)? != self.id {
            return Err(SphinxError::Malformed("not a reply to this SURB"));
        }
        let payload = &mut packet[g.header_len()..];
        for k in self.layer_keys.iter() {
            crate::crypto::xor_keystream(k, payload);
        }
        open_payload(&self.reply_key, &self.binding, payload).map(<[u8]>::to_vec)
    }
}

/// The id of a packet arriving at an endpoint: its header's group element.
pub fn reply_id(g: &Geometry, packet: &[u8]) -> Result<[u8; 32]> {
    g.class_of_packet_len(packet.len())?;
    HeaderBinding::of_header(packet)
        .map(|b| b.alpha())
        .ok_or(SphinxError::WrongSize { len: packet.len() })
}

/// Builds a SURB for `route` (the hops' ops are kept as given, typically
/// `Relay` then `Deliver` for the last) ending at `designer`, for a reply of
/// `class` bytes. The route is always encoded in layered mode.
pub fn build_surb<R: RngCore + CryptoRng + ?Sized>(
    g: &Geometry,
    route: &[RouteHop],
    designer: NodeId,
    class: usize,
    rng: &mut R,
) -> Result<(Surb, SurbState)> {
    g.check_class(class)?;
    let first_hop = route
        .first()
        .map(|h| h.node_id)
        .ok_or(SphinxError::InvalidRoute("empty route"))?;
    let built = build_header(g, route, Exit::Endpoint(designer), true, rng)?;
    let binding = built
        .hops
        .first()
        .map(|h| h.binding)
        .ok_or(SphinxError::InvalidRoute("empty route"))?;
    let id = built
        .exit_alpha
        .ok_or(SphinxError::InvalidRoute("SURB needs an endpoint"))?;
    let reply_key = LinkKey::random(rng);
    let layer_keys = Zeroizing::new(built.hops.iter().map(|h| h.keys.pi).collect());
    Ok((
        Surb {
            first_hop,
            reply_key: reply_key.clone(),
            class,
            header: built.bytes,
        },
        SurbState {
            id,
            binding,
            reply_key,
            class,
            layer_keys,
        },
    ))
}
