//! The shape of every packet: how many hops a header can carry, how big a
//! hop's slot is, and which payload lengths exist. A packet's length depends
//! on nothing else, which is what makes all packets of a class look alike on
//! the wire. Fields are private so a [`Geometry`] is always valid and the
//! packet code can slice without re-checking.

use crate::error::{Result, SphinxError};
use crate::routing::ROUTING_LEN;

/// Bytes of a header MAC (γ): 128-bit security, as in the Sphinx paper's κ.
pub const MAC_LEN: usize = 16;
/// Bytes of the group element (α): a compressed Edwards-Y point of Curve25519.
pub const ALPHA_LEN: usize = 32;
/// Bytes before the routing block: epoch hint (1) + α (32) + γ (16).
pub const HEADER_PREFIX_LEN: usize = 1 + ALPHA_LEN + MAC_LEN;
/// Smallest slot: the next hop's MAC plus the routing info.
pub const MIN_SLOT_LEN: usize = MAC_LEN + ROUTING_LEN;
/// The slot length of [`Geometry::default`]: 7 reserved bytes for later fields.
pub const DEFAULT_SLOT_LEN: usize = 160;
/// The route length of [`Geometry::default`] (SPEC: at least 16).
pub const DEFAULT_MAX_HOPS: usize = 16;
/// Payload bytes taken by framing: Poly1305 tag (16) + length field (4).
pub const PAYLOAD_OVERHEAD: usize = 16 + 4;
/// The public size classes of [`Geometry::default`]: 2 KiB, 32 KiB, 256 KiB, 1 MiB.
pub const DEFAULT_SIZE_CLASSES: [usize; 5] = [2 << 10, 32 << 10, 64 << 10, 256 << 10, 1 << 20];

/// Upper bounds that keep every length computation far from overflow.
const MAX_HOPS_LIMIT: usize = 255;
const MAX_SLOT_LEN: usize = 4096;
const MIN_CLASS: usize = 64;
const MAX_CLASS: usize = 64 << 20;
const MAX_CLASSES: usize = 16;

/// Header and payload dimensions shared by every node and designer of a deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    max_hops: usize,
    slot_len: usize,
    size_classes: Vec<usize>,
}

impl Default for Geometry {
    /// 16 hops, 160-byte slots (2609-byte header), classes 2 KiB .. 1 MiB.
    fn default() -> Self {
        Geometry {
            max_hops: DEFAULT_MAX_HOPS,
            slot_len: DEFAULT_SLOT_LEN,
            size_classes: DEFAULT_SIZE_CLASSES.to_vec(),
        }
    }
}

impl Geometry {
    /// A geometry; `size_classes` are payload lengths in bytes (tag and padding
    /// included), stored sorted. Each class must be distinct so that the packet
    /// length alone names the class.
    pub fn new(max_hops: usize, slot_len: usize, size_classes: &[usize]) -> Result<Self> {
        if max_hops == 0 || max_hops > MAX_HOPS_LIMIT {
            return Err(SphinxError::InvalidGeometry("max_hops must be in 1..=255"));
        }
        if !(MIN_SLOT_LEN..=MAX_SLOT_LEN).contains(&slot_len) {
            return Err(SphinxError::InvalidGeometry(
                "slot_len must be in 153..=4096",
            ));
        }
        if size_classes.is_empty() || size_classes.len() > MAX_CLASSES {
            return Err(SphinxError::InvalidGeometry(
                "between 1 and 16 size classes",
            ));
        }
        let mut classes = size_classes.to_vec();
        classes.sort_unstable();
        classes.dedup();
        if classes.len() != size_classes.len() {
            return Err(SphinxError::InvalidGeometry(
                "size classes must be distinct",
            ));
        }
        if classes
            .iter()
            .any(|&c| !(MIN_CLASS..=MAX_CLASS).contains(&c))
        {
            return Err(SphinxError::InvalidGeometry(
                "size class must be in 64 B..=64 MiB",
            ));
        }
        Ok(Geometry {
            max_hops,
            slot_len,
            size_classes: classes,
        })
    }

    /// Longest route a header can carry (r in the Sphinx paper).
    pub fn max_hops(&self) -> usize {
        self.max_hops
    }

    /// Bytes per hop in the routing block.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Payload lengths, ascending.
    pub fn size_classes(&self) -> &[usize] {
        &self.size_classes
    }

    /// Length of the encrypted routing block β: `max_hops * slot_len`.
    pub fn beta_len(&self) -> usize {
        self.max_hops * self.slot_len
    }

    /// Header length: `49 + max_hops * slot_len`.
    pub fn header_len(&self) -> usize {
        HEADER_PREFIX_LEN + self.beta_len()
    }

    /// Wire length of a packet of the given class.
    pub fn packet_len(&self, class: usize) -> Result<usize> {
        self.check_class(class)?;
        Ok(self.header_len() + class)
    }

    /// The class of a packet of `packet_len` bytes, or `WrongSize`.
    pub fn class_of_packet_len(&self, packet_len: usize) -> Result<usize> {
        packet_len
            .checked_sub(self.header_len())
            .filter(|c| self.size_classes.contains(c))
            .ok_or(SphinxError::WrongSize { len: packet_len })
    }

    /// Message bytes a payload of this class can carry (class − 20).
    pub fn capacity(&self, class: usize) -> Result<usize> {
        self.check_class(class)?;
        Ok(class - PAYLOAD_OVERHEAD)
    }

    /// The smallest class whose capacity holds `message_len` bytes.
    pub fn class_for(&self, message_len: usize) -> Result<usize> {
        self.size_classes
            .iter()
            .copied()
            .find(|&c| c - PAYLOAD_OVERHEAD >= message_len)
            .ok_or(SphinxError::PayloadTooLarge {
                len: message_len,
                capacity: self.size_classes.last().map_or(0, |c| c - PAYLOAD_OVERHEAD),
            })
    }

    pub(crate) fn check_class(&self, class: usize) -> Result<()> {
        if self.size_classes.contains(&class) {
            Ok(())
        } else {
            Err(SphinxError::WrongSize { len: class })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lengths() {
        let g = Geometry::default();
        assert_eq!(g.header_len(), 49 + 16 * 160);
        assert_eq!(g.packet_len(2048).unwrap(), 2609 + 2048);
        assert_eq!(g.class_of_packet_len(2609 + 32768).unwrap(), 32768);
        assert!(g.class_of_packet_len(2609 + 1000).is_err());
        assert!(g.class_of_packet_len(3).is_err());
        assert_eq!(g.class_for(2028).unwrap(), 2048);
        assert_eq!(g.class_for(2029).unwrap(), 32768);
        assert!(g.class_for(1 << 20).is_err());
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(Geometry::new(0, 160, &[2048]).is_err());
        assert!(Geometry::new(16, 100, &[2048]).is_err());
        assert!(Geometry::new(16, 160, &[]).is_err());
        assert!(Geometry::new(16, 160, &[2048, 2048]).is_err());
        assert!(Geometry::new(16, 160, &[10]).is_err());
        assert!(Geometry::new(32, 153, &[4096, 1024]).is_ok());
    }
}
