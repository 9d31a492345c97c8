//! The node's default accepted packet lengths must be exactly the packet
//! lengths of the default Sphinx geometry, or real packets would be dropped
//! as `bad_length` at the first hop.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_node::config::DEFAULT_PACKET_SIZES;
use mixnn_sphinx::Geometry;

#[test]
fn default_packet_sizes_match_the_default_sphinx_geometry() {
    let g = Geometry::default();
    let from_geometry: Vec<u32> = g
        .size_classes()
        .iter()
        .map(|&c| g.packet_len(c).expect("a class of this geometry") as u32)
        .collect();
    assert_eq!(from_geometry, DEFAULT_PACKET_SIZES.to_vec());
}
