//! The wire types the designer and the node share, and nothing else.
//!
//! ARCHITECTURE.md requires that the designer never depends on node
//! internals: both sides meet here. A node announces itself with a
//! [`SignedDescriptor`] (its own signature over a canonical CBOR body, so a
//! bootstrap that relays it needs no trust and holds no secrets); a designer
//! reads the directory with [`DirectoryRequest::List`] and checks every entry
//! with [`SignedDescriptor::verify`] before it routes through that node.
//!
//! Everything that decodes bytes from the network checks a size limit first
//! (see the `MAX_*` constants), so a peer cannot make us allocate more than a
//! small multiple of what it actually sent.
//!
//! No I/O and no clock: the crate only parses and builds bytes, so the
//! fuzzer and the property tests drive it directly. Whatever needs the time
//! (descriptor validity) takes `now` from the caller; secret files live in
//! `mixnn-p2p`.

pub mod cbor;
pub mod descriptor;
pub mod directory;
pub mod job;

pub use descriptor::{Capacity, DescriptorError, MixKeyInfo, NodeDescriptor, SignedDescriptor};
pub use directory::{
    DIRECTORY_PROTOCOL, DirectoryRequest, DirectoryResponse, ListCursor, ListError,
    MAX_DIRECTORY_ENTRIES, MAX_DIRECTORY_REQUEST_BYTES, MAX_DIRECTORY_RESPONSE_BYTES,
    MAX_LIST_ENTRIES,
};

/// Kademlia protocol name of the mixnn pool: a DHT of its own, never merged
/// with the public IPFS DHT a node might also reach.
pub const KAD_PROTOCOL: &str = "/mixnn/kad/1.0.0";
/// Identify protocol version string; peers of another network are ignored.
pub const IDENTIFY_PROTOCOL: &str = "/mixnn/id/1.0.0";
/// Long-lived packet streams between neighbours.
pub const PACKET_PROTOCOL: &str = "/mixnn/packet/2.0.0";
/// Registration of a direct data-plane connection (static keys swapped
/// over the authenticated libp2p connection; crates/p2p `direct`).
pub const DIRECT_PROTOCOL: &str = "/mixnn/direct/2.0.0";

/// The software version a node puts in its descriptor.
pub const SOFTWARE_VERSION: &str = concat!("mixnn/", env!("CARGO_PKG_VERSION"));
