//! The layers a node hosts, one per job handle, each in its own sandboxed
//! guest.
//!
//! A job arrives as init chunks (end-to-end encrypted to this node, so the
//! hops before it never see the shard); once the last chunk is in, the
//! guest is built and the job answers forward, backward, test and export
//! calls. Jobs are capped in number and size, and forgotten after an idle
//! period, so a designer that vanishes does not pin memory forever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mixnn_protocol::job::{
    FailureKind, FromHop, HopFailure, LayerKind, LayerSpec, ParamTensor, TensorData, ToHop,
    WireTensor, Witness,
};
use mixnn_sandbox::{GuestKind, GuestLayer, Sandbox, SandboxError, Tensor};

use crate::metrics::Metrics;

mod state;

pub use mixnn_protocol::job::EXPORT_PART_BYTES;

/// Why a hop could not do a job's work. Each becomes a [`HopFailure`]
/// sealed to the designer ([`JobError::to_failure`]), so the designer learns
/// which hop failed and why; none of them carries packet bytes.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No job with this handle is hosted here (never set up, closed, or
    /// expired after `idle`).
    #[error("unknown job")]
    UnknownJob,
    /// A non-first init chunk came for a job this node does not host.
    #[error("init chunk for an unknown job")]
    InitForUnknownJob,
    /// An init chunk's index or count is out of bounds (count zero, more
    /// chunks than the shard limit allows, or index past the count).
    #[error("bad init chunk {index} of {total}")]
    BadChunk {
        /// The chunk's index (from 0).
        index: u32,
        /// The chunk count it announces.
        total: u32,
    },
    /// A new job would exceed `max_jobs` (the number given).
    #[error("this node hosts {0} jobs already (its limit)")]
    TooManyJobs(usize),
    /// An init chunk came for a job whose shard is already loaded.
    #[error("the job is already initialised")]
    AlreadyInitialised,
    /// Work came for a job whose init chunks are not all in yet.
    #[error("the job is not initialised yet")]
    NotInitialised,
    /// An init chunk announces a different count than the job's first one.
    #[error("init chunk count changed")]
    ChunkCountChanged,
    /// Init chunk 0 carries no layer spec.
    #[error("the first init chunk carries no layer spec")]
    NoSpec,
    /// The spec's witness has a key of the wrong length or a slot past
    /// the witness area.
    #[error("the layer spec's witness is malformed")]
    BadWitness,
    /// The init chunks add up to more than `max_shard_bytes` (the number
    /// given).
    #[error("shard larger than this node's limit of {0} bytes")]
    ShardTooLarge(u64),
    /// The assembled shard's length differs from the spec's `shard_len`.
    #[error("shard is {got} bytes, the spec says {want}")]
    ShardLength {
        /// Bytes received.
        got: usize,
        /// Bytes the spec announces.
        want: u64,
    },
    /// A tensor that does not fit its shape, or is too large.
    #[error("tensor: {0}")]
    Tensor(#[from] mixnn_types::TensorError),
    /// Labels came without the turn they belong to.
    #[error("labels come with a turn, not alone")]
    LabelsAlone,
    /// The turning (last) layer got a turn without labels.
    #[error("the turning layer got no labels")]
    NoLabels,
    /// An export part past the end of the exported parameters was asked for.
    #[error("export part {part} of {total}")]
    ExportPart {
        /// The part asked for (from 0).
        part: u32,
        /// Number of parts of the export.
        total: u32,
    },
    /// A state part past the end of the snapshot was asked for.
    #[error("state part {part} of {total}")]
    StatePart {
        /// The part asked for (from 0).
        part: u32,
        /// Number of parts of the snapshot.
        total: u32,
    },
    /// A state chunk out of order: a duplicate, a gap, another count than
    /// the load's first chunk, a count of 0 or past the limit, or a next
    /// chunk with no load under way. The load is dropped.
    #[error("state chunk {index} of {total} refused: {why}")]
    StateChunk {
        /// The chunk's index (from 0).
        index: u32,
        /// The chunk count it announces.
        total: u32,
        /// What is wrong with it (e.g. `expected chunk 2`).
        why: String,
    },
    /// The state's chunks add up to more than the layer's bound
    /// ([`mixnn_protocol::job::max_state_bytes`] of its parameter count).
    #[error("state larger than this layer's limit of {0} bytes")]
    StateTooLarge(u64),
    /// Encoding the exported parameters as CBOR failed.
    #[error("encoding the parameters: {0}")]
    Encode(#[from] mixnn_protocol::cbor::CborError),
    /// The guest refused the call or hit a sandbox limit.
    #[error(transparent)]
    Guest(#[from] SandboxError),
    /// The end-to-end section addressed to this hop did not open or decode.
    #[error("end-to-end section: {0}")]
    EndToEnd(#[from] mixnn_protocol::job::JobError),
}

impl JobError {
    /// The failure kind the designer receives.
    pub fn kind(&self) -> FailureKind {
        match self {
            JobError::UnknownJob | JobError::InitForUnknownJob => FailureKind::UnknownJob,
            JobError::AlreadyInitialised | JobError::NotInitialised => FailureKind::JobState,
            JobError::BadChunk { .. }
            | JobError::ChunkCountChanged
            | JobError::NoSpec
            | JobError::BadWitness
            | JobError::ShardLength { .. } => FailureKind::BadInit,
            JobError::TooManyJobs(_) | JobError::ShardTooLarge(_) | JobError::StateTooLarge(_) => {
                FailureKind::Capacity
            }
            JobError::LabelsAlone
            | JobError::NoLabels
            | JobError::ExportPart { .. }
            | JobError::StatePart { .. }
            | JobError::StateChunk { .. }
            | JobError::Tensor(_) => FailureKind::BadRequest,
            JobError::Encode(_) => FailureKind::Encoding,
            JobError::Guest(_) => FailureKind::Guest,
            JobError::EndToEnd(_) => FailureKind::EndToEnd,
        }
    }

    /// The failure as it travels to the designer.
    pub fn to_failure(&self) -> HopFailure {
        HopFailure::new(self.kind(), self.to_string())
    }
}

/// Limits of the job table.
#[derive(Clone, Debug)]
pub struct JobLimits {
    /// Most jobs hosted at once; a new job beyond it is refused.
    pub max_jobs: usize,
    /// Largest parameter shard one job may upload, in bytes.
    pub max_shard_bytes: u64,
    /// A job unused for this long is forgotten by [`Jobs::expire`].
    pub idle: Duration,
}

enum State {
    Receiving {
        spec: Option<LayerSpec>,
        chunks: Vec<Option<Vec<u8>>>,
        bytes: u64,
    },
    Ready {
        guest: Box<GuestLayer>,
        /// The CBOR parameter list of an export in progress.
        export: Option<Vec<u8>>,
        /// The layer's parameter count (bounds a state to load).
        params: u64,
        /// A state snapshot being sent, or a state being received.
        transfer: state::Transfer,
        /// The witness it writes of what it computes (§12.9), if verified.
        witness: Option<Witness>,
    },
}

struct Job {
    state: State,
    last_used: Instant,
}

/// The job table; shared by the packet workers.
pub struct Jobs {
    map: Mutex<HashMap<[u8; 32], Arc<Mutex<Job>>>>,
    sandbox: Arc<Sandbox>,
    limits: JobLimits,
    metrics: Arc<Metrics>,
    /// Chaos testing only (`mixnn demo --lie`): once set, every tensor a
    /// layer computes is corrupted. `None` in an operator's node.
    lie: Option<Arc<AtomicBool>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Jobs {
    /// An empty job table running guests in `sandbox`.
    pub fn new(sandbox: Arc<Sandbox>, limits: JobLimits, metrics: Arc<Metrics>) -> Self {
        Jobs {
            map: Mutex::new(HashMap::new()),
            sandbox,
            limits,
            metrics,
            lie: None,
        }
    }

    /// Chaos testing only: a node that corrupts its layers' outputs once
    /// `switch` is set (the demo's `--lie`, through a hidden node flag).
    /// The witness it writes is of what it sends, so only a replica shows
    /// the lie (PROTOCOL.md §12.9).
    #[doc(hidden)]
    pub fn with_lie_switch(mut self, switch: Arc<AtomicBool>) -> Self {
        self.lie = Some(switch);
        self
    }

    /// Corrupts `t` when the lie switch is set: halves every value and adds
    /// 0.01, a change small enough to keep training going.
    pub(crate) fn lie_if_switched(&self, t: &mut WireTensor) {
        if !self.lie.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            return;
        }
        let data = std::mem::replace(&mut t.data, TensorData::F32(Vec::new()));
        let values = match data {
            TensorData::F32(v) => v,
            TensorData::Unit8(b) => b.into_iter().map(|p| f32::from(p) / 255.0).collect(),
        };
        t.data = TensorData::F32(values.into_iter().map(|v| v * 0.5 + 0.01).collect());
    }

    /// The witness job `handle` writes, if it is a verified job.
    pub fn witness(&self, handle: &[u8; 32]) -> Option<Witness> {
        let job = self.get(handle).ok()?;
        let job = lock(&job);
        match &job.state {
            State::Ready { witness, .. } => witness.clone(),
            State::Receiving { .. } => None,
        }
    }

    fn get(&self, handle: &[u8; 32]) -> Result<Arc<Mutex<Job>>, JobError> {
        lock(&self.map)
            .get(handle)
            .cloned()
            .ok_or(JobError::UnknownJob)
    }

    /// Forgets jobs idle for longer than the limit; returns how many. A job
    /// whose lock is held is in use, hence not idle: it is skipped rather
    /// than waited for, so expiry never holds the table while a guest runs.
    pub fn expire(&self) -> usize {
        let idle = self.limits.idle;
        let mut map = lock(&self.map);
        let before = map.len();
        map.retain(|_, j| match j.try_lock() {
            Ok(job) => job.last_used.elapsed() < idle,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().last_used.elapsed() < idle,
            Err(std::sync::TryLockError::WouldBlock) => true,
        });
        self.metrics.jobs.store(map.len() as u64, Ordering::Relaxed);
        before - map.len()
    }

    /// Runs `f` while job `handle` (set up as receiving, replacing any job
    /// of that handle) is locked, as during a long guest call: a test hook.
    #[cfg(test)]
    pub(crate) fn while_busy<R>(&self, handle: [u8; 32], f: impl FnOnce() -> R) -> R {
        let job = Arc::new(Mutex::new(Job {
            state: State::Receiving {
                spec: None,
                chunks: Vec::new(),
                bytes: 0,
            },
            last_used: Instant::now(),
        }));
        lock(&self.map).insert(handle, job.clone());
        let _busy = lock(&job);
        f()
    }

    /// Answers an end-to-end control message (init, export, state, close).
    /// `section_len` is the length of the end-to-end section it came in,
    /// which the reply must fit (state parts are cut to it).
    pub fn control(
        &self,
        handle: &[u8; 32],
        msg: ToHop,
        section_len: usize,
    ) -> Result<FromHop, JobError> {
        match msg {
            ToHop::Init {
                index,
                total,
                spec,
                bytes,
            } => self.init(handle, index, total, spec, bytes),
            ToHop::Export { part } => self.export(handle, part),
            ToHop::SaveState { part } => self.save_state(handle, part, section_len),
            ToHop::LoadState {
                index,
                total,
                bytes,
            } => self.load_state(handle, index, total, bytes),
            ToHop::Close => {
                let mut map = lock(&self.map);
                map.remove(handle);
                self.metrics.jobs.store(map.len() as u64, Ordering::Relaxed);
                Ok(FromHop::Closed)
            }
            ToHop::Labels(_) => Err(JobError::LabelsAlone),
        }
    }

    fn init(
        &self,
        handle: &[u8; 32],
        index: u32,
        total: u32,
        spec: Option<LayerSpec>,
        bytes: Vec<u8>,
    ) -> Result<FromHop, JobError> {
        let max_chunks = self.limits.max_shard_bytes / 1024 + 1;
        if total == 0 || u64::from(total) > max_chunks || index >= total {
            return Err(JobError::BadChunk { index, total });
        }
        let job = {
            let mut map = lock(&self.map);
            if index == 0 {
                if map.len() >= self.limits.max_jobs && !map.contains_key(handle) {
                    return Err(JobError::TooManyJobs(self.limits.max_jobs));
                }
                let job = Arc::new(Mutex::new(Job {
                    state: State::Receiving {
                        spec: None,
                        chunks: vec![None; total as usize],
                        bytes: 0,
                    },
                    last_used: Instant::now(),
                }));
                map.insert(*handle, job.clone());
                self.metrics.jobs.store(map.len() as u64, Ordering::Relaxed);
                job
            } else {
                map.get(handle)
                    .cloned()
                    .ok_or(JobError::InitForUnknownJob)?
            }
        };
        let mut job = lock(&job);
        job.last_used = Instant::now();
        let State::Receiving {
            spec: have_spec,
            chunks,
            bytes: received,
        } = &mut job.state
        else {
            return Err(JobError::AlreadyInitialised);
        };
        if chunks.len() != total as usize {
            return Err(JobError::ChunkCountChanged);
        }
        if index == 0 {
            *have_spec = Some(spec.ok_or(JobError::NoSpec)?);
        }
        *received += bytes.len() as u64;
        if *received > self.limits.max_shard_bytes {
            return Err(JobError::ShardTooLarge(self.limits.max_shard_bytes));
        }
        chunks[index as usize] = Some(bytes);
        if chunks.iter().any(Option::is_none) {
            return Ok(FromHop::Received { index });
        }
        let spec = have_spec.take().ok_or(JobError::NoSpec)?;
        let shard: Vec<u8> = chunks
            .iter_mut()
            .filter_map(Option::take)
            .flatten()
            .collect();
        if shard.len() as u64 != spec.shard_len {
            return Err(JobError::ShardLength {
                got: shard.len(),
                want: spec.shard_len,
            });
        }
        if spec.witness.as_ref().is_some_and(|w| !w.is_valid()) {
            return Err(JobError::BadWitness);
        }
        let (guest, params) = self.build(&spec, &shard)?;
        job.state = State::Ready {
            guest: Box::new(guest),
            export: None,
            params,
            transfer: state::Transfer::default(),
            witness: spec.witness.clone(),
        };
        Ok(FromHop::Ready { params })
    }

    fn build(&self, spec: &LayerSpec, shard: &[u8]) -> Result<(GuestLayer, u64), JobError> {
        let (kind, bytes) = match &spec.kind {
            LayerKind::Standard => (GuestKind::Standard, shard),
            LayerKind::Relay(op) => (GuestKind::Relay, op.as_bytes()),
        };
        let compiled = self.sandbox.guest(kind)?;
        let mut guest = self.sandbox.instantiate(compiled)?;
        let info = self.timed(|| guest.load(bytes, &spec.train))?;
        Ok((guest, info.param_count))
    }

    fn timed<R>(
        &self,
        f: impl FnOnce() -> Result<R, mixnn_sandbox::SandboxError>,
    ) -> Result<R, JobError> {
        let t = Instant::now();
        let r = f();
        self.metrics.guest_calls.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .guest_micros
            .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(r?)
    }

    /// Runs `f` on the job's guest. All the guest calls `f` makes share
    /// one CPU deadline (the sandbox's per-call limit): one packet costs at
    /// most that much guest time, whatever number of calls its op makes.
    fn with_guest<R>(
        &self,
        handle: &[u8; 32],
        f: impl FnOnce(&Self, &mut GuestLayer) -> Result<R, JobError>,
    ) -> Result<R, JobError> {
        let job = self.get(handle)?;
        let mut job = lock(&job);
        job.last_used = Instant::now();
        match &mut job.state {
            State::Ready { guest, .. } => {
                let per_packet = self.sandbox.limits().call_timeout;
                guest.limit_calls_until(Some(Instant::now() + per_packet));
                let r = f(self, guest);
                guest.limit_calls_until(None);
                r
            }
            State::Receiving { .. } => Err(JobError::NotInitialised),
        }
    }

    /// Training forward (saves what backward needs).
    pub fn forward(&self, handle: &[u8; 32], x: WireTensor) -> Result<WireTensor, JobError> {
        let x = to_guest(x)?;
        self.with_guest(handle, |s, g| {
            s.timed(|| g.forward(&x)).and_then(from_guest)
        })
    }

    /// Backward and optimizer step; the input gradient if the layer has one.
    pub fn backward(
        &self,
        handle: &[u8; 32],
        dz: WireTensor,
    ) -> Result<Option<WireTensor>, JobError> {
        let dz = to_guest(dz)?;
        self.with_guest(handle, |s, g| {
            let dx = s.timed(|| g.backward(&dz))?;
            s.timed(|| g.step())?;
            dx.map(from_guest).transpose()
        })
    }

    /// The last layer's turn: forward, loss against `labels`, backward, step.
    pub fn turn(
        &self,
        handle: &[u8; 32],
        x: WireTensor,
        labels: &[i64],
    ) -> Result<(f32, Option<WireTensor>), JobError> {
        let x = to_guest(x)?;
        self.with_guest(handle, |s, g| {
            let z = s.timed(|| g.forward(&x))?;
            let out = s.timed(|| g.loss(&z, labels))?;
            let dx = s.timed(|| g.backward(&out.grad))?;
            s.timed(|| g.step())?;
            Ok((out.loss, dx.map(from_guest).transpose()?))
        })
    }

    /// Test-phase forward.
    pub fn infer(&self, handle: &[u8; 32], x: WireTensor) -> Result<WireTensor, JobError> {
        let x = to_guest(x)?;
        self.with_guest(handle, |s, g| s.timed(|| g.infer(&x)).and_then(from_guest))
    }

    fn export(&self, handle: &[u8; 32], part: u32) -> Result<FromHop, JobError> {
        let job = self.get(handle)?;
        let mut job = lock(&job);
        job.last_used = Instant::now();
        let State::Ready { guest, export, .. } = &mut job.state else {
            return Err(JobError::NotInitialised);
        };
        if part == 0 || export.is_none() {
            let params = self.timed(|| guest.export_params())?;
            let list = params
                .into_iter()
                .map(ParamTensor::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            *export = Some(mixnn_protocol::cbor::encode(
                "parameters",
                &list,
                usize::MAX,
            )?);
        }
        let bytes: &[u8] = export.as_deref().unwrap_or_default();
        let total = bytes.len().div_ceil(EXPORT_PART_BYTES).max(1) as u32;
        if part >= total {
            return Err(JobError::ExportPart { part, total });
        }
        let start = part as usize * EXPORT_PART_BYTES;
        let end = (start + EXPORT_PART_BYTES).min(bytes.len());
        Ok(FromHop::ExportPart {
            part,
            total,
            bytes: bytes[start..end].to_vec(),
        })
    }
}

fn to_guest(t: WireTensor) -> Result<Tensor, JobError> {
    Ok(Tensor::try_from(t)?)
}

/// A dummy hop right after the designer passes image input on: keep it
/// in bytes, so its packets stay in the job's class.
fn from_guest(t: Tensor) -> Result<WireTensor, JobError> {
    Ok(WireTensor::try_from(t)?)
}
