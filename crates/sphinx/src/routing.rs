//! What one hop learns from its slot: a fixed-size, versioned struct written
//! by hand (no serde) so that its layout is exactly the one in PROTOCOL.md and
//! parsing cannot allocate or panic.
//!
//! Slot body layout (offsets within the routing info, which follows the
//! 16-byte MAC of the next header in the slot):
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 1 | version (= 1) |
//! | 1 | 1 | op code |
//! | 2 | 2 | flags, u16 little-endian |
//! | 4 | 4 | key epoch of this hop, u32 LE |
//! | 8 | 1 | epoch hint to write into the next header |
//! | 9 | 32 | next hop id |
//! | 41 | 32 | job handle |
//! | 73 | 32 | incoming link key |
//! | 105 | 32 | outgoing link key |
//! | 137 | .. | reserved, zero up to the slot end |

use std::fmt;

use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Result, SphinxError};

/// Version byte of the routing-info layout below.
pub const ROUTING_VERSION: u8 = 1;
/// Bytes of the routing info proper (the rest of a slot is reserved).
pub const ROUTING_LEN: usize = 137;

/// Routing-info flag bits. The low byte belongs to this crate; the high
/// byte is free for the application (set through [`crate::RouteHop::app_flags`]).
pub mod flags {
    /// This hop is the packet's last: no next header is produced.
    pub const FINAL: u16 = 1 << 0;
    /// The payload travels in layered mode: the hop strips one ChaCha20 layer
    /// instead of opening a per-link AEAD.
    pub const LAYERED: u16 = 1 << 1;
    /// Library bits not defined yet; a hop refuses them (forward compatibility
    /// goes through the version byte instead).
    pub const RESERVED: u16 = 0x00fc;
    /// Bits the application may use freely.
    pub const APP_MASK: u16 = 0xff00;
}

/// What a hop does with the packet (SPEC §4/§5). Only the hop reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Phase init: the payload is a shard for this hop.
    Init = 0,
    /// Phase forward: compute this layer's output.
    Forward = 1,
    /// Phase backward: compute gradients, step.
    Backward = 2,
    /// Phase test: forward only.
    Test = 3,
    /// Pass the payload on unchanged in meaning (dummy hop, SURB path, cover).
    Relay = 4,
    /// Hand the packet to `next_hop`, an endpoint (e.g. the designer) that is not a mix.
    Deliver = 5,
    /// A cover loop that has come back to its sender.
    Loop = 6,
    /// Cover traffic to discard.
    Drop = 7,
}

impl Op {
    /// The op code of a byte, if it is one.
    pub fn from_u8(b: u8) -> Option<Op> {
        Some(match b {
            0 => Op::Init,
            1 => Op::Forward,
            2 => Op::Backward,
            3 => Op::Test,
            4 => Op::Relay,
            5 => Op::Deliver,
            6 => Op::Loop,
            7 => Op::Drop,
            _ => return None,
        })
    }
}

/// An opaque, fixed-length peer address: a 32-byte digest of a peer id (or
/// of a designer's reply endpoint). The packet layer never interprets it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; 32]);

/// A pseudonymous job handle: names the job to one hop without naming the designer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct JobHandle(pub [u8; 32]);

fn short_hex(f: &mut fmt::Formatter<'_>, name: &str, b: &[u8]) -> fmt::Result {
    write!(f, "{name}(")?;
    for x in b.iter().take(4) {
        write!(f, "{x:02x}")?;
    }
    write!(f, "…)")
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        short_hex(f, "NodeId", &self.0)
    }
}

impl fmt::Debug for JobHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        short_hex(f, "JobHandle", &self.0)
    }
}

/// A symmetric key shared by two neighbouring hops and the designer; the
/// payload between them is sealed under it. Wiped on drop; `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Default, Zeroize, ZeroizeOnDrop)]
pub struct LinkKey([u8; 32]);

impl LinkKey {
    /// A key from bytes the designer chose.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        LinkKey(bytes)
    }

    /// A fresh random key.
    pub fn random<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        LinkKey(k)
    }

    /// The key bytes (for persistence by the designer).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkKey(<secret>)")
    }
}

/// The decoded routing info of one hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingInfo {
    /// What to do.
    pub op: Op,
    /// [`flags`] bits.
    pub flags: u16,
    /// The key epoch the designer built this slot for; equals the epoch of the
    /// mix key that opened it.
    pub key_epoch: u32,
    /// Where to send the packet next (meaningless when [`flags::FINAL`] is set).
    pub next_hop: NodeId,
    /// Epoch hint byte to put in front of the next header.
    pub next_epoch_hint: u8,
    /// The job this packet belongs to, as this hop knows it.
    pub job: JobHandle,
    /// Key of the link from the previous hop (or the designer) to this hop.
    pub key_in: LinkKey,
    /// Key of the link from this hop to the next.
    pub key_out: LinkKey,
}

impl RoutingInfo {
    /// No next header: this hop is the packet's end.
    pub fn is_final(&self) -> bool {
        self.flags & flags::FINAL != 0
    }

    /// Layered (unchanged-payload) mode.
    pub fn is_layered(&self) -> bool {
        self.flags & flags::LAYERED != 0
    }

    /// Writes the routing info into `out` (at least [`ROUTING_LEN`] bytes);
    /// bytes after it are zeroed (reserved).
    pub(crate) fn encode_into(&self, out: &mut [u8]) {
        out.fill(0);
        if out.len() < ROUTING_LEN {
            return; // unreachable with a valid Geometry; never panic anyway
        }
        out[0] = ROUTING_VERSION;
        out[1] = self.op as u8;
        out[2..4].copy_from_slice(&self.flags.to_le_bytes());
        out[4..8].copy_from_slice(&self.key_epoch.to_le_bytes());
        out[8] = self.next_epoch_hint;
        out[9..41].copy_from_slice(&self.next_hop.0);
        out[41..73].copy_from_slice(&self.job.0);
        out[73..105].copy_from_slice(&self.key_in.0);
        out[105..137].copy_from_slice(&self.key_out.0);
    }

    /// Parses a routing info from the body of a slot (everything after the
    /// next-MAC field). Reserved flag bits and reserved bytes must be zero.
    pub fn decode(body: &[u8]) -> Result<RoutingInfo> {
        let fixed: &[u8; ROUTING_LEN] = body
            .get(..ROUTING_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(SphinxError::Malformed("routing info too short"))?;
        if fixed[0] != ROUTING_VERSION {
            return Err(SphinxError::UnsupportedVersion(fixed[0]));
        }
        let op = Op::from_u8(fixed[1]).ok_or(SphinxError::Malformed("unknown op code"))?;
        let flags = u16::from_le_bytes([fixed[2], fixed[3]]);
        if flags & flags::RESERVED != 0 {
            return Err(SphinxError::Malformed("reserved flag bits set"));
        }
        if body[ROUTING_LEN..].iter().any(|&b| b != 0) {
            return Err(SphinxError::Malformed("reserved slot bytes not zero"));
        }
        let key_epoch = u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        Ok(RoutingInfo {
            op,
            flags,
            key_epoch,
            next_epoch_hint: fixed[8],
            next_hop: NodeId(arr32(&fixed[9..41])),
            job: JobHandle(arr32(&fixed[41..73])),
            key_in: LinkKey(arr32(&fixed[73..105])),
            key_out: LinkKey(arr32(&fixed[105..137])),
        })
    }
}

/// Copies a 32-byte slice; callers pass constant 32-byte ranges of a fixed array.
fn arr32(s: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    if s.len() == 32 {
        a.copy_from_slice(s);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RoutingInfo {
        RoutingInfo {
            op: Op::Backward,
            flags: flags::LAYERED | 0x1200,
            key_epoch: 0xdead_beef,
            next_hop: NodeId([1; 32]),
            next_epoch_hint: 0xef,
            job: JobHandle([2; 32]),
            key_in: LinkKey([3; 32]),
            key_out: LinkKey([4; 32]),
        }
    }

    #[test]
    fn roundtrip_and_layout() {
        let mut body = [0xffu8; 144];
        sample().encode_into(&mut body);
        assert_eq!(body[0], 1);
        assert_eq!(body[1], 2);
        assert_eq!(&body[2..4], &[0x02, 0x12]);
        assert_eq!(&body[4..8], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(body[8], 0xef);
        assert_eq!(body[9], 1);
        assert_eq!(body[136], 4);
        assert!(body[137..].iter().all(|&b| b == 0));
        assert_eq!(RoutingInfo::decode(&body).unwrap(), sample());
    }

    #[test]
    fn rejects_bad_fields() {
        let mut body = [0u8; 144];
        sample().encode_into(&mut body);
        let mut b = body;
        b[0] = 2;
        assert_eq!(
            RoutingInfo::decode(&b),
            Err(SphinxError::UnsupportedVersion(2))
        );
        let mut b = body;
        b[1] = 8;
        assert!(RoutingInfo::decode(&b).is_err());
        let mut b = body;
        b[2] |= 0x04;
        assert!(RoutingInfo::decode(&b).is_err());
        let mut b = body;
        b[140] = 1;
        assert!(RoutingInfo::decode(&b).is_err());
        assert!(RoutingInfo::decode(&body[..100]).is_err());
    }
}
