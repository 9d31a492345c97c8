//! One guest instance: a store, its limits, and typed calls into the
//! `mixnn:layer` world.

use std::time::{Duration, Instant};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::Layer;
use crate::{
    CompiledGuest, LayerInfo, Limits, LossOutput, NamedTensor, SandboxError, Tensor, TrainConfig,
    ticks, wasi,
};

pub(crate) struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    /// The operator lends host kernels (see `kernels`).
    pub(crate) host_kernels: bool,
    /// When the running call's CPU time is up; host kernels stop there too.
    pub(crate) deadline: Instant,
    /// The instance's memory cap (also what a host-kernel result may use).
    pub(crate) memory_bytes: usize,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// One layer in its own store. After a trap the instance is poisoned: its
/// memory may hold a half-updated layer, so every later call is refused and
/// the owner reloads a fresh instance (from a checkpoint, in the network).
pub struct GuestLayer {
    store: Store<GuestState>,
    bindings: Layer,
    name: String,
    call_timeout: Duration,
    poisoned: bool,
}

impl GuestLayer {
    pub(crate) fn new(
        engine: &Engine,
        linker: &Linker<GuestState>,
        guest: &CompiledGuest,
        limits: &Limits,
        host_kernels: bool,
    ) -> Result<Self, SandboxError> {
        let state = GuestState {
            wasi: wasi::empty_ctx(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(64)
                .memories(16)
                .tables(64)
                .table_elements(1 << 20)
                .trap_on_grow_failure(true)
                .build(),
            host_kernels,
            deadline: Instant::now() + limits.call_timeout,
            memory_bytes: limits.memory_bytes,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(ticks(limits.call_timeout));
        let bindings = Layer::instantiate(&mut store, &guest.component, linker).map_err(|e| {
            SandboxError::Instantiate {
                name: guest.name.clone(),
                message: format!("{e:#}"),
            }
        })?;
        Ok(GuestLayer {
            store,
            bindings,
            name: guest.name.clone(),
            call_timeout: limits.call_timeout,
            poisoned: false,
        })
    }

    pub fn guest_name(&self) -> &str {
        &self.name
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Runs one export under the CPU deadline, mapping traps to errors.
    fn call<R>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&Layer, &mut Store<GuestState>) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, SandboxError> {
        if self.poisoned {
            return Err(SandboxError::Poisoned { call });
        }
        self.store.set_epoch_deadline(ticks(self.call_timeout));
        self.store.data_mut().deadline = Instant::now() + self.call_timeout;
        match f(&self.bindings, &mut self.store) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(message)) => Err(SandboxError::Guest { call, message }),
            Err(e) => {
                self.poisoned = true;
                Err(match e.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => SandboxError::Timeout {
                        call,
                        limit: self.call_timeout,
                    },
                    Some(Trap::AllocationTooLarge) => SandboxError::OutOfMemory {
                        call,
                        limit: self.store.data().memory_bytes,
                    },
                    _ if format!("{e:#}").contains("forcing trap when growing memory") => {
                        SandboxError::OutOfMemory {
                            call,
                            limit: self.store.data().memory_bytes,
                        }
                    }
                    _ => SandboxError::Trap {
                        call,
                        message: format!("{e:#}"),
                    },
                })
            }
        }
    }

    pub fn load(&mut self, shard: &[u8], config: &TrainConfig) -> Result<LayerInfo, SandboxError> {
        // A job may ask for host kernels; the operator may refuse them all.
        let config = TrainConfig {
            host_kernels: config.host_kernels && self.store.data().host_kernels,
            ..*config
        };
        self.call("load", |b, s| b.call_load(s, shard, config))
    }

    pub fn forward(&mut self, input: &Tensor) -> Result<Tensor, SandboxError> {
        self.call("forward", |b, s| b.call_forward(s, input))
    }

    pub fn loss(&mut self, output: &Tensor, labels: &[i64]) -> Result<LossOutput, SandboxError> {
        self.call("loss", |b, s| b.call_loss(s, output, labels))
    }

    pub fn backward(&mut self, grad_output: &Tensor) -> Result<Option<Tensor>, SandboxError> {
        self.call("backward", |b, s| b.call_backward(s, grad_output))
    }

    pub fn step(&mut self) -> Result<(), SandboxError> {
        self.call("step", |b, s| b.call_step(s))
    }

    pub fn infer(&mut self, input: &Tensor) -> Result<Tensor, SandboxError> {
        self.call("infer", |b, s| b.call_infer(s, input))
    }

    pub fn export_params(&mut self) -> Result<Vec<NamedTensor>, SandboxError> {
        self.call("export-params", |b, s| b.call_export_params(s))
    }

    pub fn import_params(&mut self, params: &[NamedTensor]) -> Result<(), SandboxError> {
        self.call("import-params", |b, s| b.call_import_params(s, params))
    }
}
