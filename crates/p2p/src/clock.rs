//! The wall clock, read on the I/O side of the pool.
//!
//! `mixnn-protocol` does no I/O and reads no clock (ARCHITECTURE.md): the
//! functions that need the time (descriptor validity, mix-key epochs) take
//! `now` as a parameter. The peers (node, bootstrap, designer) all depend on
//! this crate, so they read the clock here and pass it down.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
