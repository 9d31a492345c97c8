//! Sphinx onion packets for mixnn, with a configurable geometry.
//!
//! Pure library: no I/O, no clocks, randomness only from the caller's RNG.
//! The byte-exact format is in `PROTOCOL.md` at the repository root; this
//! crate is its reference implementation.
//!
//! - The designer (or a node, for cover traffic) describes a route as
//!   [`RouteHop`]s and calls [`build_packet`] (or [`build_surb`] for a reply
//!   block). Up to [`Geometry::max_hops`] hops (16 by default; Nym's
//!   `sphinx-packet` stops at 5).
//! - A hop calls [`process`] on the received bytes with its [`KeyRing`] and
//!   [`ReplayCache`]: it learns only its own [`RoutingInfo`] and gets the next
//!   header written in place. Then, in link mode, it opens the payload with
//!   [`open_payload`] (`key_in`) and seals its own output with
//!   [`seal_payload`] (`key_out`); in layered mode the payload layer has
//!   already been stripped and the bytes are forwarded as they are.
//! - Every packet of a size class has the same length
//!   ([`Geometry::packet_len`]); every failure is a [`SphinxError`] with a
//!   metrics [`reason`](SphinxError::reason), never a panic.
//!
//! ```
//! use mixnn_sphinx::*;
//! use rand::SeedableRng;
//!
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
//! let g = Geometry::default();
//! let keys: Vec<MixKeyPair> = (0..3).map(|_| MixKeyPair::generate(1, &mut rng)).collect();
//! let links: Vec<LinkKey> = (0..4).map(|_| LinkKey::random(&mut rng)).collect();
//! let route: Vec<RouteHop> = (0..3)
//!     .map(|i| RouteHop {
//!         node_id: NodeId([i as u8; 32]),
//!         mix_key: *keys[i].public(),
//!         epoch: 1,
//!         op: Op::Forward,
//!         job: JobHandle([9; 32]),
//!         key_in: links[i].clone(),
//!         key_out: links[i + 1].clone(),
//!         app_flags: 0,
//!     })
//!     .collect();
//! let (packet, _state) =
//!     build_packet(&g, &route, Exit::Final, PayloadMode::Link, 2048, b"x", &mut rng).unwrap();
//! let mut bytes = packet.into_bytes();
//! let ring = KeyRing::with_key(MixKeyPair::from_secret_bytes(1, *keys[0].secret_bytes()));
//! let mut replay = ReplayCache::default();
//! let p = process(&g, &ring, &mut replay, &mut bytes).unwrap();
//! assert_eq!(p.routing.next_hop, NodeId([1; 32]));
//! let header_len = g.header_len();
//! let msg = open_payload(&p.routing.key_in, &p.incoming, &mut bytes[header_len..]).unwrap();
//! assert_eq!(msg, b"x");
//! ```

mod crypto;
mod error;
mod geometry;
mod header;
mod keys;
mod packet;
pub mod payload;
mod replay;
mod routing;
mod surb;

pub use crypto::{REPLAY_TAG_LEN, ReplayTag};
pub use error::{Result, SphinxError};
pub use geometry::{
    ALPHA_LEN, DEFAULT_MAX_HOPS, DEFAULT_SIZE_CLASSES, DEFAULT_SLOT_LEN, Geometry,
    HEADER_PREFIX_LEN, MAC_LEN, MIN_SLOT_LEN, PAYLOAD_OVERHEAD,
};
pub use header::{BINDING_LEN, Exit, HeaderBinding, RouteHop};
pub use keys::{KeyRing, MixKeyPair, MixPublicKey, epoch_hint};
pub use packet::{DesignerState, Packet, PayloadMode, Processed, build_packet, process};
pub use payload::{open_payload, seal_payload, seal_payload_vec};
pub use replay::{DEFAULT_MAX_TAGS_PER_EPOCH, ReplayCache, ReplayCheck};
pub use routing::{
    JobHandle, LinkKey, NodeId, Op, ROUTING_LEN, ROUTING_VERSION, RoutingInfo, flags,
};
pub use surb::{SURB_VERSION, Surb, SurbState, build_surb, reply_id};
