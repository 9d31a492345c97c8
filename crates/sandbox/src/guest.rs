//! One guest instance: a store, its limits, and typed calls into the
//! `mixnn:layer` world.

use std::time::{Duration, Instant};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use mixnn_types::{LossOutput, NamedTensor, Tensor, TensorError, TrainConfig};

use crate::bindings::Layer;
use crate::bindings::mixnn::layer::types as wit;
use crate::wasm_kernel::{KernelInstance, KernelModule};
use crate::{CompiledGuest, LayerInfo, Limits, SandboxError, convert, ticks, wasi};

pub(crate) struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) budget: MemoryBudget,
    /// The operator lends host kernels (see `kernels`).
    pub(crate) lend_native: bool,
    /// This layer's products run natively: the job asked and the operator
    /// lends. Otherwise they run in the pure-wasm product kernel.
    pub(crate) native: bool,
    /// When the running call's CPU time is up; host kernels stop there too.
    pub(crate) deadline: Instant,
    /// The instance's memory cap (also what a host-kernel result may use).
    pub(crate) memory_bytes: usize,
    /// The pure-wasm product kernel: the module, and this layer's instance
    /// of it, made on the first product.
    pub(crate) kernel_module: KernelModule,
    pub(crate) kernel: Option<KernelInstance>,
}

/// Memory the layer holds: the guest's linear memories and its product
/// kernel's, which share the layer's one cap.
pub(crate) struct MemoryBudget {
    /// Per-memory limits (a declared maximum, tables, instance counts).
    limits: StoreLimits,
    /// Bytes held by all of the guest's linear memories together.
    guest_bytes: usize,
    /// Bytes held by the product kernel's memory.
    pub(crate) kernel_bytes: usize,
}

impl MemoryBudget {
    /// What the product kernel may hold, given what the guest holds.
    pub(crate) fn kernel_room(&self, cap: usize) -> usize {
        cap.saturating_sub(self.guest_bytes)
    }
}

/// The text of the trap a guest gets when its memories would pass the cap
/// (matched when the trap is turned into [`SandboxError::OutOfMemory`]).
const OVER_CAP: &str = "memory cap exceeded";

/// The guest's memory growth is checked against the cap for all of its
/// memories together plus its product kernel's. When only the kernel stands
/// in the way, the kernel instance is dropped (its memory given back) and
/// made again, empty, on the next product: a guest never loses room to a
/// product it asked for earlier.
impl ResourceLimiter for GuestState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Per memory: its declared maximum and the cap.
        if !self
            .budget
            .limits
            .memory_growing(current, desired, maximum)?
        {
            return Ok(false);
        }
        let guest = (self.budget.guest_bytes + desired).saturating_sub(current);
        if guest.saturating_add(self.budget.kernel_bytes) > self.memory_bytes {
            self.kernel = None;
            self.budget.kernel_bytes = 0;
        }
        if guest > self.memory_bytes {
            wasmtime::bail!("{OVER_CAP}: the guest's memories would hold {guest} bytes");
        }
        self.budget.guest_bytes = guest;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.budget.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.budget.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.budget.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.budget.limits.instances()
    }

    fn tables(&self) -> usize {
        self.budget.limits.tables()
    }

    fn memories(&self) -> usize {
        self.budget.limits.memories()
    }
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
    /// A deadline shared by the next calls ([`GuestLayer::limit_calls_until`]).
    calls_until: Option<Instant>,
    poisoned: bool,
}

/// Host-side resources (WASI handles, pollables) one instance may hold.
const MAX_RESOURCES: usize = 4096;
/// Tables per instance, and elements per table. Table elements are host
/// memory outside the memory cap (8 bytes or more each): the caps keep
/// them to a few MiB, well above what a compiled guest's function tables
/// hold (the standard guest, tract included, has one table of 14,466
/// elements; the relay guest 19).
const MAX_TABLES: usize = 8;
const MAX_TABLE_ELEMENTS: usize = 1 << 18;

impl GuestLayer {
    pub(crate) fn new(
        engine: &Engine,
        linker: &Linker<GuestState>,
        guest: &CompiledGuest,
        limits: &Limits,
        lend_native: bool,
        kernel_module: &KernelModule,
    ) -> Result<Self, SandboxError> {
        // Host-side entries a guest can create (WASI handles, pollables) are
        // host memory the memory cap does not see; a layer needs a handful.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let state = GuestState {
            wasi: wasi::empty_ctx(),
            table,
            budget: MemoryBudget {
                limits: StoreLimitsBuilder::new()
                    .memory_size(limits.memory_bytes)
                    .instances(64)
                    .memories(16)
                    .tables(MAX_TABLES)
                    .table_elements(MAX_TABLE_ELEMENTS)
                    .trap_on_grow_failure(true)
                    .build(),
                guest_bytes: 0,
                kernel_bytes: 0,
            },
            lend_native,
            native: false,
            deadline: Instant::now() + limits.call_timeout,
            memory_bytes: limits.memory_bytes,
            kernel_module: kernel_module.clone(),
            kernel: None,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| s);
        store.set_epoch_deadline(ticks(limits.call_timeout));
        // What the guest hands back (an output, a state export, a product's
        // operands) may be as large as what its memory cap lets it hold;
        // wasmtime's default of 128 MiB would trap larger layers' results.
        store.set_hostcall_fuel(limits.memory_bytes);
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
            calls_until: None,
            poisoned: false,
        })
    }

    /// Makes every call until `end` share one deadline: each call gets the
    /// time left until `end` (at most the per-call limit). A host that runs
    /// several calls for one request (a node's turn: forward, loss,
    /// backward, step) bounds the request's total this way. `None` lifts it.
    pub fn limit_calls_until(&mut self, end: Option<Instant>) {
        self.calls_until = end;
    }

    /// Name of the compiled guest this instance runs (see [`CompiledGuest::name`]).
    pub fn guest_name(&self) -> &str {
        &self.name
    }

    /// True once a call trapped (timeout, memory cap, guest panic): the
    /// instance's state is then unknown, so every later call is refused with
    /// [`SandboxError::Poisoned`] and the layer must be instantiated again.
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
        let now = Instant::now();
        let limit = self.calls_until.map_or(self.call_timeout, |end| {
            self.call_timeout.min(end.saturating_duration_since(now))
        });
        self.store.set_epoch_deadline(ticks(limit));
        self.store.data_mut().deadline = now + limit;
        match f(&self.bindings, &mut self.store) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(message)) => Err(SandboxError::Guest { call, message }),
            Err(e) => {
                self.poisoned = true;
                Err(match e.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => SandboxError::Timeout { call, limit },
                    Some(Trap::AllocationTooLarge) => SandboxError::OutOfMemory {
                        call,
                        limit: self.store.data().memory_bytes,
                    },
                    _ if format!("{e:#}").contains("forcing trap when growing memory")
                        || format!("{e:#}").contains(OVER_CAP) =>
                    {
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

    /// Loads a shard (the relay guest: an op name) with `config`.
    pub fn load(&mut self, shard: &[u8], config: &TrainConfig) -> Result<LayerInfo, SandboxError> {
        // A job may ask for host kernels; the operator may refuse them all.
        // The guest routes its products to the `kernels` import either way;
        // this decides whether they run natively or in the wasm kernel.
        let state = self.store.data_mut();
        state.native = config.host_kernels && state.lend_native;
        let config = wit::TrainConfig {
            host_kernels: state.native,
            ..wit::TrainConfig::from(config)
        };
        self.call("load", |b, s| b.call_load(s, shard, config))
    }

    /// Training forward pass (remembers the input for `backward`).
    pub fn forward(&mut self, input: &Tensor) -> Result<Tensor, SandboxError> {
        const CALL: &str = "forward";
        let x = convert::tensor_in(input).map_err(bad_input(CALL))?;
        let y = self.call(CALL, |b, s| b.call_forward(s, &x))?;
        convert::tensor_out(y).map_err(bad_output(CALL))
    }

    /// Loss and its gradient on the last layer.
    pub fn loss(&mut self, output: &Tensor, labels: &[i64]) -> Result<LossOutput, SandboxError> {
        const CALL: &str = "loss";
        let z = convert::tensor_in(output).map_err(bad_input(CALL))?;
        let out = self.call(CALL, |b, s| b.call_loss(s, &z, labels))?;
        convert::loss_out(out).map_err(bad_output(CALL))
    }

    /// Backward pass for the last `forward`: the input gradient, if the
    /// layer was loaded with `need_input_grad`.
    pub fn backward(&mut self, grad_output: &Tensor) -> Result<Option<Tensor>, SandboxError> {
        const CALL: &str = "backward";
        let dz = convert::tensor_in(grad_output).map_err(bad_input(CALL))?;
        let dx = self.call(CALL, |b, s| b.call_backward(s, &dz))?;
        dx.map(convert::tensor_out)
            .transpose()
            .map_err(bad_output(CALL))
    }

    /// Applies the optimizer to the stored gradients.
    pub fn step(&mut self) -> Result<(), SandboxError> {
        self.call("step", |b, s| b.call_step(s))
    }

    /// Test-phase forward: no dropout, no state kept.
    pub fn infer(&mut self, input: &Tensor) -> Result<Tensor, SandboxError> {
        const CALL: &str = "infer";
        let x = convert::tensor_in(input).map_err(bad_input(CALL))?;
        let y = self.call(CALL, |b, s| b.call_infer(s, &x))?;
        convert::tensor_out(y).map_err(bad_output(CALL))
    }

    /// The current parameters, in export order.
    pub fn export_params(&mut self) -> Result<Vec<NamedTensor>, SandboxError> {
        const CALL: &str = "export-params";
        let params = self.call(CALL, |b, s| b.call_export_params(s))?;
        params
            .into_iter()
            .map(convert::named_out)
            .collect::<Result<_, _>>()
            .map_err(bad_output(CALL))
    }

    /// Replaces the parameters (checkpoint restore).
    pub fn import_params(&mut self, params: &[NamedTensor]) -> Result<(), SandboxError> {
        const CALL: &str = "import-params";
        let params = params
            .iter()
            .map(convert::named_in)
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad_input(CALL))?;
        self.call(CALL, |b, s| b.call_import_params(s, &params))
    }

    /// The layer's whole training state (`mixnn-layer`'s format; empty for
    /// the relay guest), under the same deadline and memory cap as every
    /// call: what a checkpoint holds.
    pub fn export_state(&mut self) -> Result<Vec<u8>, SandboxError> {
        self.call("export-state", |b, s| b.call_export_state(s))
    }

    /// Puts the layer back to a state [`GuestLayer::export_state`] gave. A
    /// refused state is a [`SandboxError::Guest`] error and leaves the
    /// layer as it was (the instance stays usable).
    pub fn import_state(&mut self, state: &[u8]) -> Result<(), SandboxError> {
        self.call("import-state", |b, s| b.call_import_state(s, state))
    }
}

fn bad_input(call: &'static str) -> impl Fn(TensorError) -> SandboxError {
    move |source| SandboxError::BadInput { call, source }
}

fn bad_output(call: &'static str) -> impl Fn(TensorError) -> SandboxError {
    move |source| SandboxError::BadOutput { call, source }
}
