//! The hop without sockets: each op, each way a packet is dropped, and each
//! job failure, on packets built in memory as the designer builds them.

mod drops;
pub(crate) mod kit;
mod ops;
mod relay_view;
mod state;
mod witness;
