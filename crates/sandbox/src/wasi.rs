//! The WASI world a guest sees: nothing. No preopened directories, no
//! network, no environment, no arguments, stdio discarded; clocks frozen at
//! zero and randomness from a fixed seed, so that nothing outside the layer's
//! own inputs can change its results (replicas must agree bit for bit).
//!
//! Sleeping is not offered: WASI's `subscribe-duration` and
//! `subscribe-instant` would make the host wait in its own code, where the
//! epoch deadline that bounds a guest call cannot interrupt it. They are
//! shadowed by a pollable that is ready at once (the clock is frozen
//! anyway, so no sleep can observe time passing).

use std::convert::Infallible;
use std::time::Duration;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::{DynPollable, Pollable};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiView};

use crate::guest::GuestState;

struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// SplitMix64: tiny, and its output is fixed by its seed. Guests get no
/// secrets from it; it only keeps e.g. hash-map seeds reproducible.
struct FixedRng(u64);

impl rand_core::TryRng for FixedRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        self.try_next_u64().map(|v| (v >> 32) as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

pub(crate) fn empty_ctx() -> WasiCtx {
    WasiCtxBuilder::new()
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .secure_random(FixedRng(1))
        .insecure_random(FixedRng(2))
        .insecure_random_seed(3)
        .build()
}

/// The monotonic clock's interface as the linker names it.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A pollable that is always ready: what a guest's sleep waits on.
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

fn ready(mut cx: StoreContextMut<'_, GuestState>) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let table = cx.data_mut().ctx().table;
    let r = table.push(Ready)?;
    Ok((wasmtime_wasi::p2::subscribe(table, r)?,))
}

/// Replaces the clock's subscriptions (see the module doc) in `linker`.
pub(crate) fn link_no_sleep(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |cx, (_,): (u64,)| ready(cx))?;
    clock.func_wrap("subscribe-instant", |cx, (_,): (u64,)| ready(cx))?;
    linker.allow_shadowing(false);
    Ok(())
}
