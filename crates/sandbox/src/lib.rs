//! The wasmtime sandbox that runs layer guests.
//!
//! Used by the node and by the designer's local runs, so it depends on
//! neither; its API speaks the shared tensor and training configuration of
//! `mixnn-types` (a leaf crate), converted to the WIT records in `convert`
//! only. One [`Sandbox`] owns the shared [`wasmtime::Engine`] and the
//! compiled guests; each [`GuestLayer`] is one instance in its own `Store`
//! with its own memory cap and a CPU deadline per call, so one misbehaving
//! layer fails only its own calls.
//!
//! Determinism is part of the contract: NaN canonicalisation is on, relaxed
//! SIMD (whose results may differ between machines) is off, and the WASI
//! world the guest sees has frozen clocks and seeded randomness. The one
//! module compiled without canonicalisation is the pure-wasm product kernel,
//! which canonicalises what it stores itself (`wasm_kernel`'s docs say why
//! that is exact).

mod cache;
mod convert;
mod guest;
pub mod kernels;
mod wasi;
mod wasm_kernel;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

pub use guest::GuestLayer;

/// Types of the `mixnn:layer` world, generated from `wit/layer.wit`; only
/// `convert` turns them into the shared types the API speaks.
mod bindings {
    wasmtime::component::bindgen!({ world: "layer", path: "../../wit", additional_derives: [PartialEq] });
}
pub use bindings::mixnn::layer::types::LayerInfo;
/// The API's tensors and training configuration: the shared definitions
/// (`mixnn-types`), the same the layer and the job protocol use.
pub use mixnn_types::{
    LossKind, LossOutput, NamedTensor, OptimizerKind, Tensor, TensorError, TrainConfig,
};

/// The guests built from `guest-layers/` by this crate's build script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestKind {
    /// tract-onnx layer: trains and serves real shards.
    Standard,
    /// Dummy hop: identity or ReLU, no parameters.
    Relay,
}

impl GuestKind {
    /// Its name as a compiled guest (`standard` or `relay`), also the cache
    /// file's name.
    pub fn name(self) -> &'static str {
        match self {
            GuestKind::Standard => "standard",
            GuestKind::Relay => "relay",
        }
    }

    /// The guest's component bytes, embedded at build time.
    pub fn wasm(self) -> &'static [u8] {
        match self {
            GuestKind::Standard => {
                include_bytes!(concat!(env!("OUT_DIR"), "/mixnn_guest_standard.wasm"))
            }
            GuestKind::Relay => include_bytes!(concat!(env!("OUT_DIR"), "/mixnn_guest_relay.wasm")),
        }
    }
}

/// A deliberately malicious guest (loops, hoards memory, traps on request).
/// Only for tests of the sandbox's limits; never deployed: it exists only
/// with the `test-guests` feature, which only this crate's own tests enable
/// (a dev-dependency on itself), so no operator's build can load it.
#[cfg(feature = "test-guests")]
pub fn hostile_guest_wasm() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/mixnn_guest_hostile.wasm"))
}

/// Limits every guest instance runs under.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock CPU bound for one call, enforced by epoch interruption.
    pub call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 1 << 30,
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// Whether guests may borrow the host's matrix kernels (`--guest-kernels`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GuestKernels {
    /// Host-kernel mode where the job asks for it (the default).
    #[default]
    Host,
    /// Pure wasm for every job: the operator lends no arithmetic.
    Wasm,
}

/// How a [`Sandbox`] is set up ([`Sandbox::new`]).
#[derive(Clone, Debug, Default)]
pub struct SandboxOptions {
    /// Memory cap and CPU deadline of every instance.
    pub limits: Limits,
    /// Whether jobs may run their products on host kernels.
    pub kernels: GuestKernels,
    /// Where compiled guests are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl SandboxOptions {
    /// Default cache location: `$MIXNN_CACHE_DIR`, else `$XDG_CACHE_HOME/mixnn`,
    /// else `~/.cache/mixnn`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("MIXNN_CACHE_DIR") {
            return Some(PathBuf::from(d));
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(d).join("mixnn"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mixnn"))
    }
}

/// Why the sandbox could not set up, compile, instantiate or run a guest.
/// `Timeout`, `OutOfMemory` and `Trap` poison the instance (its later calls
/// get `Poisoned`); the other call errors leave it usable.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The engine, linker, product kernel or epoch ticker could not be set up.
    #[error("wasmtime setup: {0}")]
    Setup(String),
    /// The bytes are not a valid component or Cranelift failed on them (an
    /// unusable cache artifact is recompiled, not reported).
    #[error("compiling guest `{name}`: {message}")]
    Compile {
        /// The guest's name.
        name: String,
        /// wasmtime's error.
        message: String,
    },
    /// The component could not be instantiated against the `mixnn:layer`
    /// world (missing exports, wrong types, or a failing start).
    #[error("guest `{name}` does not implement the mixnn:layer world: {message}")]
    Instantiate {
        /// The guest's name.
        name: String,
        /// wasmtime's error.
        message: String,
    },
    /// The call ran past its CPU deadline ([`Limits::call_timeout`]).
    #[error("guest call `{call}` exceeded its CPU time limit of {limit:?}")]
    Timeout {
        /// The export that was called (`load`, `forward`, …).
        call: &'static str,
        /// The per-call time limit it exceeded.
        limit: Duration,
    },
    /// The guest's memories (with its product kernel's) would have passed
    /// the memory cap ([`Limits::memory_bytes`]).
    #[error("guest call `{call}` exceeded the memory limit of {limit} bytes")]
    OutOfMemory {
        /// The export that was called.
        call: &'static str,
        /// The cap, in bytes.
        limit: usize,
    },
    /// The guest trapped for another reason (e.g. a panic in the guest).
    #[error("guest call `{call}` trapped: {message}")]
    Trap {
        /// The export that was called.
        call: &'static str,
        /// wasmtime's description of the trap.
        message: String,
    },
    /// The guest returned an error of its own; the instance stays usable.
    #[error("guest call `{call}` failed: {message}")]
    Guest {
        /// The export that was called.
        call: &'static str,
        /// The guest's error message.
        message: String,
    },
    /// Refused without running: this instance trapped on an earlier call.
    #[error("guest call `{call}` refused: this instance trapped earlier and must be reloaded")]
    Poisoned {
        /// The export that was refused.
        call: &'static str,
    },
    /// A tensor the host was to pass has a dimension that does not fit the
    /// WIT record's `u32`.
    #[error("guest call `{call}`: cannot pass the tensor: {source}")]
    BadInput {
        /// The export that was to be called.
        call: &'static str,
        /// What is wrong with the tensor.
        source: TensorError,
    },
    /// The guest returned a tensor that is not well formed (e.g. its data
    /// length does not match its shape).
    #[error("guest call `{call}` returned a malformed tensor: {source}")]
    BadOutput {
        /// The export that was called.
        call: &'static str,
        /// What is wrong with the tensor.
        source: TensorError,
    },
}

/// A compiled guest, ready to be instantiated many times.
#[derive(Clone)]
pub struct CompiledGuest {
    name: String,
    component: Component,
    from_cache: bool,
}

impl CompiledGuest {
    /// The name it was compiled under (`standard`, `relay`, or the name
    /// given to [`Sandbox::compile`]); used in errors and cache file names.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when this start skipped Cranelift by loading a cached artifact.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }
}

/// Shared engine, linker and compiled guests; cheap to share behind an `Arc`.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<guest::GuestState>,
    limits: Limits,
    kernels: GuestKernels,
    cache_dir: Option<PathBuf>,
    /// Built-in guests, compiled (or loaded from the cache) on first use: a
    /// relay-only node never pays for the 19 MB standard guest.
    standard: OnceLock<CompiledGuest>,
    relay: OnceLock<CompiledGuest>,
    /// Held while a built-in guest compiles, so that callers racing for the
    /// same guest wait for one compile instead of each running Cranelift
    /// (on a loaded 2-core node, five parallel compiles of the standard
    /// guest took 100 s where one takes 7).
    compiling: Mutex<()>,
    /// Pure-wasm mode's product kernel (compiled by its own engine).
    kernel_module: wasm_kernel::KernelModule,
    stop_ticker: Arc<AtomicBool>,
}

/// Epoch tick: the granularity of the per-call CPU deadline.
const TICK: Duration = Duration::from_millis(5);

impl Sandbox {
    /// Sets up the shared engine and linker (WASI and host kernels), the
    /// pure-wasm product kernel, and the epoch ticker thread that enforces
    /// call deadlines. Guests are compiled later, on first use.
    pub fn new(opts: SandboxOptions) -> Result<Self, SandboxError> {
        let engine =
            Engine::new(&engine_config(true)).map_err(|e| SandboxError::Setup(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| SandboxError::Setup(format!("{e:#}")))?;
        wasi::link_no_sleep(&mut linker).map_err(|e| SandboxError::Setup(format!("{e:#}")))?;
        kernels::add_to_linker(&mut linker).map_err(|e| SandboxError::Setup(format!("{e:#}")))?;

        let kernel_module = wasm_kernel::KernelModule::new()?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_ticker(
            vec![engine.clone(), kernel_module.engine().clone()],
            stop_ticker.clone(),
        )?;

        Ok(Sandbox {
            engine,
            linker,
            limits: opts.limits,
            kernels: opts.kernels,
            cache_dir: opts.cache_dir,
            standard: OnceLock::new(),
            relay: OnceLock::new(),
            compiling: Mutex::new(()),
            kernel_module,
            stop_ticker,
        })
    }

    /// The limits every instance of this sandbox runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether this sandbox lends host kernels.
    pub fn kernels(&self) -> GuestKernels {
        self.kernels
    }

    /// Compiles (or loads from the cache) any component, e.g. another guest
    /// version. It must still export the `mixnn:layer` world to be used.
    pub fn compile(&self, name: &str, wasm: &[u8]) -> Result<CompiledGuest, SandboxError> {
        cache::compile(&self.engine, self.cache_dir.as_deref(), name, wasm)
    }

    /// A built-in guest, compiled on first use.
    pub fn guest(&self, kind: GuestKind) -> Result<&CompiledGuest, SandboxError> {
        let cell = match kind {
            GuestKind::Standard => &self.standard,
            GuestKind::Relay => &self.relay,
        };
        if let Some(g) = cell.get() {
            return Ok(g);
        }
        // A panic while compiling poisons nothing we rely on: the cell is
        // still empty and the next caller compiles again.
        let _one_at_a_time = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = cell.get() {
            return Ok(g);
        }
        let compiled = self.compile(kind.name(), kind.wasm())?;
        Ok(cell.get_or_init(|| compiled))
    }

    /// A fresh instance with its own store, memory cap and CPU deadline.
    pub fn instantiate(&self, guest: &CompiledGuest) -> Result<GuestLayer, SandboxError> {
        GuestLayer::new(
            &self.engine,
            &self.linker,
            guest,
            &self.limits,
            self.kernels == GuestKernels::Host,
            &self.kernel_module,
        )
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// The wasmtime configuration of every engine: simd128 without relaxed SIMD
/// (whose results may differ between machines), epoch interruption for the
/// per-call CPU deadline, and NaN canonicalisation as asked (on for guests;
/// off only for the product kernel, see `wasm_kernel`).
pub(crate) fn engine_config(nan_canonicalisation: bool) -> Config {
    let mut cfg = Config::new();
    cfg.cranelift_nan_canonicalization(nan_canonicalisation)
        .wasm_relaxed_simd(false)
        .wasm_simd(true)
        .epoch_interruption(true);
    // Profiling aid: `MIXNN_WASM_PERFMAP=1` writes /tmp/perf-<pid>.map so
    // `perf record` can name guest functions (docs/performance.md). It
    // changes no generated code and no limit.
    if std::env::var_os("MIXNN_WASM_PERFMAP").is_some_and(|v| v == "1") {
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    cfg
}

/// Advances the engines' epochs every [`TICK`] so call deadlines fire.
fn spawn_ticker(engines: Vec<Engine>, stop: Arc<AtomicBool>) -> Result<(), SandboxError> {
    std::thread::Builder::new()
        .name("mixnn-epoch".into())
        .spawn(move || {
            let start = Instant::now();
            let mut n: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                n = n.wrapping_add(1);
                // Sleep to the next absolute tick so drift does not stretch deadlines.
                let next = start + TICK * n;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                engines.iter().for_each(Engine::increment_epoch);
            }
        })
        .map(|_| ())
        .map_err(|e| SandboxError::Setup(format!("epoch ticker thread: {e}")))
}

pub(crate) fn ticks(limit: Duration) -> u64 {
    (limit.as_micros() / TICK.as_micros()).max(1) as u64 + 1
}
