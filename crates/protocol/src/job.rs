//! The job protocol: what a Sphinx payload carries between the designer and
//! the hops of a cascade (PROTOCOL.md §12).
//!
//! A job payload has two sections. The **tensor** is what the link pair
//! (hop i and hop i+1, and the designer) may read: the activations going
//! forward, the gradient going back. The **end-to-end section** is for one
//! hop only: every hop XORs its own stream (keyed by its Sphinx end-to-end
//! key) over it, so it changes at each hop and only the hop flagged
//! [`app_flags::E2E_TARGET`] finds a message under its layer. That is how
//! labels reach only the loss layer, how a shard reaches only its node
//! through the hops before it, and how the loss and exported weights travel
//! back to the designer past the hops after it.

use mixnn_types::{NamedTensor, Tensor, TensorError, TrainConfig, dims_to_u32};
use serde::{Deserialize, Serialize};

use crate::cbor::{self, CborError};

mod e2e;
pub mod witness;
pub use e2e::{E2eDirection, e2e_layer, open_e2e, seal_e2e, seal_e2e_padded};
pub use witness::Witness;

/// Bits of the application byte of a hop's routing flags.
pub mod app_flags {
    /// The end-to-end section is for this hop.
    pub const E2E_TARGET: u8 = 1;
    /// Backward slot of the last layer: forward, loss with the labels from
    /// the end-to-end section, then backward (the cascade turns here).
    pub const TURN: u8 = 2;
}

/// Version byte of a job payload.
pub const JOB_PAYLOAD_VERSION: u8 = 1;
/// Most dimensions a wire tensor may have.
pub const MAX_DIMS: usize = 8;
/// Largest end-to-end message body a hop decodes.
pub const MAX_E2E_BODY: usize = 1 << 20;
/// Bytes of the MAC in front of an end-to-end body.
pub const E2E_MAC_LEN: usize = 16;
/// Bytes a sealed section adds to its body: the MAC and the body's length
/// (u32 LE); the rest of the section is zero padding, under the MAC.
pub const E2E_OVERHEAD: usize = E2E_MAC_LEN + 4;
/// Longest sealed section a hop opens.
pub const MAX_E2E_SECTION: usize = E2E_OVERHEAD + MAX_E2E_BODY;

/// Errors decoding job payloads and end-to-end sections.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The payload bytes do not follow the layout (truncated, trailing
    /// bytes, bad marker or encoding, too many dimensions, size overflow);
    /// the text names the defect.
    #[error("job payload: {0}")]
    Malformed(&'static str),
    /// The payload's version byte is not [`JOB_PAYLOAD_VERSION`].
    #[error("job payload version {0} is not supported")]
    Version(u8),
    /// A sealed end-to-end section has an impossible length or its MAC does
    /// not match (wrong key, wrong direction, or tampered).
    #[error("end-to-end section fails its MAC")]
    E2eAuth,
    /// An end-to-end message body failed to encode or decode as CBOR.
    #[error(transparent)]
    Cbor(#[from] CborError),
}

/// Tensor element encodings on the wire.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Plain f32 values (4 bytes each, little-endian on the wire).
    F32(Vec<f32>),
    /// Bytes standing for `byte / 255.0` as f32: the same arithmetic the
    /// data loader does, so decoding gives bit-identical floats. The
    /// designer uses it for image inputs (4× smaller packets).
    Unit8(Vec<u8>),
}

/// A tensor as it travels.
#[derive(Clone, Debug, PartialEq)]
pub struct WireTensor {
    /// Dimensions, at most [`MAX_DIMS`] of them.
    pub shape: Vec<u32>,
    /// The elements, row-major; their count should be the product of
    /// `shape` (checked when converted to a [`Tensor`]).
    pub data: TensorData,
}

impl WireTensor {
    /// Encodes `data` as [`TensorData::Unit8`] when every value is, bit for
    /// bit, `k / 255.0` for a byte k (so `-0.0`, which equals `0.0` but is
    /// not its bits, stays f32), else as f32.
    pub fn compact(shape: Vec<u32>, data: Vec<f32>) -> WireTensor {
        let data = match unit8_bytes(&data) {
            Some(b) => TensorData::Unit8(b),
            None => TensorData::F32(data),
        };
        WireTensor { shape, data }
    }

    /// The values as f32.
    pub fn into_f32(self) -> Vec<f32> {
        match self.data {
            TensorData::F32(v) => v,
            TensorData::Unit8(b) => b.into_iter().map(|p| f32::from(p) / 255.0).collect(),
        }
    }

    fn elements(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::Unit8(b) => b.len(),
        }
    }
}

/// Values per block of [`unit8_bytes`]: long enough for the compiler to
/// vectorise the block, short enough that an activation (which fails on an
/// early value) is given up after a few hundred values, not the whole tensor.
const UNIT8_BLOCK: usize = 256;

/// The bytes k with `k / 255.0 == v` bit for bit for every value, or `None`.
/// Every value of a block is checked without branching (no libm call, no
/// early exit inside the block), so the designer's image batches, the one
/// tensor that compacts in full on every step, cost a vectorised pass.
fn unit8_bytes(data: &[f32]) -> Option<Vec<u8>> {
    // Filled block by block, so an activation (refused in its first block)
    // costs no tensor-sized zeroed buffer.
    let mut out = Vec::with_capacity(data.len());
    let mut block = [0u8; UNIT8_BLOCK];
    for values in data.chunks(UNIT8_BLOCK) {
        let bytes = &mut block[..values.len()];
        let mut exact = true;
        for (b, &v) in bytes.iter_mut().zip(values) {
            // The candidate byte: a saturating cast, so NaN, negatives and
            // values past 1 give a byte the check below refuses (or, for
            // `+0.0` and `1.0`, the right one). For v = k/255 the product is
            // within an ulp of k, so adding a half and truncating gives k.
            let k = (v * 255.0 + 0.5) as u8;
            exact &= (f32::from(k) / 255.0).to_bits() == v.to_bits();
            *b = k;
        }
        if !exact {
            return None;
        }
        out.extend_from_slice(bytes);
    }
    Some(out)
}

/// A layer's tensor as it travels: compact ([`WireTensor::compact`]), so an
/// image input stays in bytes. Fails on a dimension a `u32` cannot hold.
impl TryFrom<Tensor> for WireTensor {
    type Error = TensorError;
    fn try_from(t: Tensor) -> Result<WireTensor, TensorError> {
        Ok(WireTensor::compact(dims_to_u32(&t.shape)?, t.data))
    }
}

/// A wire tensor as a layer takes it: the values as f32, the shape checked
/// against them and against [`mixnn_types::MAX_ELEMENTS`].
impl TryFrom<WireTensor> for Tensor {
    type Error = TensorError;
    fn try_from(mut t: WireTensor) -> Result<Tensor, TensorError> {
        let shape = std::mem::take(&mut t.shape);
        Tensor::from_u32_dims(&shape, t.into_f32())
    }
}

/// The plaintext of a job payload (inside the link AEAD).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobPayload {
    /// The activations (forward) or gradient (backward) the link pair may
    /// read; `None` when the packet carries only an end-to-end message.
    pub tensor: Option<WireTensor>,
    /// The end-to-end section, as this hop has it (layers included).
    pub e2e: Vec<u8>,
}

impl JobPayload {
    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> usize {
        let t = self.tensor.as_ref().map_or(0, |t| {
            let width = match t.data {
                TensorData::F32(_) => 4,
                TensorData::Unit8(_) => 1,
            };
            2 + 4 * t.shape.len() + width * t.elements()
        });
        2 + t + 4 + self.e2e.len()
    }

    /// `version, has_tensor, [dtype, ndim, dims (u32 LE)…, data], e2e_len (u32 LE), e2e`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(JOB_PAYLOAD_VERSION);
        match &self.tensor {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                out.push(match t.data {
                    TensorData::F32(_) => 0,
                    TensorData::Unit8(_) => 1,
                });
                out.push(t.shape.len() as u8);
                for d in &t.shape {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                match &t.data {
                    TensorData::F32(v) => f32s_to_le(v, &mut out),
                    TensorData::Unit8(b) => out.extend_from_slice(b),
                }
            }
        }
        out.extend_from_slice(&(self.e2e.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.e2e);
        out
    }

    /// Decodes a payload; every length is checked against the bytes present
    /// before anything is allocated.
    pub fn decode(bytes: &[u8]) -> Result<JobPayload, JobError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != JOB_PAYLOAD_VERSION {
            return Err(JobError::Version(version));
        }
        let tensor = match r.u8()? {
            0 => None,
            1 => {
                let dtype = r.u8()?;
                let ndim = r.u8()? as usize;
                if ndim > MAX_DIMS {
                    return Err(JobError::Malformed("too many dimensions"));
                }
                let shape = (0..ndim).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
                let count = shape
                    .iter()
                    .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
                    .ok_or(JobError::Malformed("tensor size overflows"))?;
                let data = match dtype {
                    0 => {
                        let raw = r.take(
                            count
                                .checked_mul(4)
                                .ok_or(JobError::Malformed("tensor size overflows"))?,
                        )?;
                        TensorData::F32(f32s_from_le(raw))
                    }
                    1 => TensorData::Unit8(r.take(count)?.to_vec()),
                    _ => return Err(JobError::Malformed("unknown tensor encoding")),
                };
                Some(WireTensor { shape, data })
            }
            _ => return Err(JobError::Malformed("bad tensor marker")),
        };
        let e2e_len = r.u32()? as usize;
        let e2e = r.take(e2e_len)?.to_vec();
        if !r.0.is_empty() {
            return Err(JobError::Malformed("trailing bytes"));
        }
        Ok(JobPayload { tensor, e2e })
    }
}

/// Appends `v` as little-endian f32s. Into a buffer sized once, 4 bytes
/// per element through fixed-size chunks, which the compiler turns into a
/// plain copy on a little-endian machine (a per-element
/// `extend_from_slice` did not vectorise: a 64 KiB tensor took several
/// times a memcpy, on every hop, both ways).
fn f32s_to_le(v: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + 4 * v.len(), 0);
    for (dst, x) in out[start..].chunks_exact_mut(4).zip(v) {
        dst.copy_from_slice(&x.to_le_bytes());
    }
}

/// The f32s of `raw` (little-endian, a multiple of 4 bytes), the same way
/// round as [`f32s_to_le`]: a buffer allocated once, filled chunk by chunk.
fn f32s_from_le(raw: &[u8]) -> Vec<f32> {
    let mut v = vec![0f32; raw.len() / 4];
    for (x, c) in v.iter_mut().zip(raw.chunks_exact(4)) {
        *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    v
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], JobError> {
        if n > self.0.len() {
            return Err(JobError::Malformed("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, JobError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, JobError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Which guest serves a hop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LayerKind {
    /// The standard guest with a shard (ONNX bytes).
    Standard,
    /// A dummy hop: the relay guest with this op (`identity`).
    Relay(String),
}

/// What a hop is asked to serve: the guest, how the layer trains (the same
/// [`TrainConfig`] the designer's local layers and the guest use, so no
/// boundary converts it field by field) and the shard's size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// Which guest runs the layer.
    pub kind: LayerKind,
    /// The layer's training settings. `host_kernels` asks for host-kernel
    /// mode (products on the node's native kernels); false demands pure
    /// wasm. A node whose operator turned host kernels off runs pure wasm
    /// either way.
    pub train: TrainConfig,
    /// Total bytes of the shard that the init chunks carry.
    pub shard_len: u64,
    /// With `--verify-replicas`: the hop writes a witness of every tensor
    /// it takes and sends (PROTOCOL.md §12.9); its packets' sections carry
    /// a witness area.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<Witness>,
}

/// End-to-end messages from the designer to one hop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToHop {
    /// Part of a job's deployment; `spec` comes with the first chunk.
    Init {
        /// This chunk's position, `0..total`.
        index: u32,
        /// Number of chunks the shard is split into (at least 1; an empty
        /// shard is sent as one empty chunk).
        total: u32,
        /// The layer to build; required on chunk 0, ignored on the others.
        spec: Option<LayerSpec>,
        /// This chunk of the shard bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The labels of the batch, for the loss layer only.
    Labels(Vec<i64>),
    /// Send part `part` of the trained parameters.
    Export {
        /// Zero-based part index; part 0 makes the hop take a fresh snapshot
        /// of the parameters.
        part: u32,
    },
    /// Forget the job.
    Close,
    /// Send part `part` of the layer's whole training state (parameters,
    /// optimizer state, step count, dropout stream position), for a
    /// checkpoint. Part 0 makes the hop take a fresh snapshot, like
    /// [`ToHop::Export`]; the parts together are the layer's state bytes
    /// (`mixnn-layer`'s format, opaque here; empty for a dummy).
    SaveState {
        /// Zero-based part index.
        part: u32,
    },
    /// Chunk `index` of a state to load (rolling back to a checkpoint),
    /// sent in order: chunk 0 starts a load (dropping any unfinished one),
    /// each next chunk must be the next index of the same count; after the
    /// last the hop imports the whole state and answers
    /// [`FromHop::StateLoaded`]. The total is bounded by
    /// [`max_state_bytes`] of the layer's parameter count.
    LoadState {
        /// This chunk's position, `0..total`.
        index: u32,
        /// Number of chunks (at least 1; an empty state is one empty chunk).
        total: u32,
        /// This chunk of the state bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
}

/// End-to-end messages from one hop back to the designer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromHop {
    /// Init chunk `index` stored.
    Received {
        /// The [`ToHop::Init`] chunk index that was stored.
        index: u32,
    },
    /// The layer is built and ready; its parameter count.
    Ready {
        /// Parameter count the guest reports for the built layer.
        params: u64,
    },
    /// The loss of the step (f32 bits, so it round-trips exactly).
    Loss {
        /// `f32::to_bits` of the loss.
        bits: u32,
    },
    /// Part of the CBOR-encoded parameter list.
    ExportPart {
        /// Index of this part, as asked in [`ToHop::Export`].
        part: u32,
        /// Number of parts the encoded list spans (at least 1).
        total: u32,
        /// This part's slice of the CBOR encoding of a `Vec<ParamTensor>`;
        /// concatenate all parts in order before decoding.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The job is forgotten (answer to [`ToHop::Close`]).
    Closed,
    /// Part of the layer's training state (answer to [`ToHop::SaveState`]).
    StatePart {
        /// Index of this part, as asked.
        part: u32,
        /// Number of parts of the snapshot (at least 1).
        total: u32,
        /// This part's slice of the state; concatenate all parts in order.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The state of the last [`ToHop::LoadState`] chunk is imported: the
    /// layer continues from it. (Earlier chunks answer
    /// [`FromHop::Received`].)
    StateLoaded,
    /// The hop could not do what the packet asked; it dropped the tensor.
    Error(HopFailure),
}

/// Hard cap on a layer state a hop accepts or sends, whatever its
/// parameter count (1 GiB).
pub const MAX_STATE_BYTES: u64 = 1 << 30;
/// Room a state takes beyond its values: header, names, shapes, checksum.
pub const STATE_OVERHEAD_BYTES: u64 = 1 << 20;

/// The largest state a layer of `param_count` trainable values may have:
/// the values and two moment sets (Adam) of 4 bytes each, plus
/// [`STATE_OVERHEAD_BYTES`], never more than [`MAX_STATE_BYTES`]. A hop
/// refuses a [`ToHop::LoadState`] that would pass it before storing more.
pub fn max_state_bytes(param_count: u64) -> u64 {
    param_count
        .saturating_mul(12)
        .saturating_add(STATE_OVERHEAD_BYTES)
        .min(MAX_STATE_BYTES)
}

/// Most chunks a [`ToHop::LoadState`] of a layer of `param_count` values
/// may announce: one per KiB of [`max_state_bytes`], and one more.
pub fn max_state_chunks(param_count: u64) -> u32 {
    u32::try_from(max_state_bytes(param_count) / 1024 + 1).unwrap_or(u32::MAX)
}

/// Bytes of parameters per [`FromHop::ExportPart`] (fits the 64 KiB class
/// with room for the framing); every part but the last is this long.
pub const EXPORT_PART_BYTES: usize = 48 * 1024;

/// Most parts an export may announce: a hop's parameters are part of its
/// state, so they never pass [`MAX_STATE_BYTES`]. The designer refuses a
/// larger count before it asks for a single further part (a lying hop
/// cannot make it queue billions of requests).
pub const MAX_EXPORT_PARTS: u64 = MAX_STATE_BYTES.div_ceil(EXPORT_PART_BYTES as u64);

/// Most state bytes in one [`FromHop::StatePart`] (fits the 64 KiB class).
pub const STATE_PART_BYTES: usize = 48 * 1024;
/// What a [`FromHop::StatePart`] adds to its bytes in CBOR (variant and
/// field names, two integers, the byte string's header), with room to spare.
const STATE_PART_FRAMING: usize = 64;

/// State bytes per [`FromHop::StatePart`] when the request came in a
/// section of `section_len` bytes: what the reply, sealed at that length,
/// can carry, at most [`STATE_PART_BYTES`] (and at least 1). The hop cuts
/// its snapshot so; the designer bounds the part count with it.
pub fn state_part_len(section_len: usize) -> usize {
    section_len
        .saturating_sub(E2E_OVERHEAD + STATE_PART_FRAMING)
        .clamp(1, STATE_PART_BYTES)
}

/// Longest failure message a hop writes (bytes); longer ones are cut, so a
/// guest's error text cannot fill a reply.
pub const MAX_FAILURE_MESSAGE: usize = 1024;

/// What kind of failure a hop reports: the designer can act on the kind
/// (e.g. pick another node for `Capacity`) without parsing the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The hop holds no job under the packet's handle (never had it, expired or closed).
    UnknownJob,
    /// The job exists but is not in the state the message needs (not
    /// initialised yet, or initialised already).
    JobState,
    /// An init chunk or its layer spec is malformed or inconsistent.
    BadInit,
    /// The hop's limits refuse the job (job count, shard size).
    Capacity,
    /// The guest refused the call or hit a sandbox limit.
    Guest,
    /// The message asked for something the op does not take (labels
    /// without a turn, a turn without labels, an export part out of range).
    BadRequest,
    /// The end-to-end section did not open or decode.
    EndToEnd,
    /// The hop could not encode its answer.
    Encoding,
}

/// A hop's failure as the designer receives it: a kind and a message of at
/// most [`MAX_FAILURE_MESSAGE`] bytes (the whole reply is bounded by
/// [`MAX_E2E_BODY`] on decode). Displays as its message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopFailure {
    /// Category the designer can act on.
    pub kind: FailureKind,
    /// Human-readable detail, at most [`MAX_FAILURE_MESSAGE`] bytes when
    /// built with [`HopFailure::new`].
    pub message: String,
}

impl HopFailure {
    /// A failure of `kind`, its message cut to [`MAX_FAILURE_MESSAGE`] bytes
    /// at a character boundary.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> HopFailure {
        let mut message = message.into();
        if message.len() > MAX_FAILURE_MESSAGE {
            let mut end = MAX_FAILURE_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        HopFailure { kind, message }
    }
}

impl std::fmt::Display for HopFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A named parameter tensor, as export parts carry it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamTensor {
    /// The parameter's name in the layer.
    pub name: String,
    /// Dimensions of the parameter.
    pub shape: Vec<u32>,
    /// The values; their count should be the product of `shape` (checked
    /// when converted to a [`NamedTensor`]).
    pub data: Vec<f32>,
}

/// A layer's parameter for an export part. Fails on a dimension a `u32`
/// cannot hold.
impl TryFrom<NamedTensor> for ParamTensor {
    type Error = TensorError;
    fn try_from(p: NamedTensor) -> Result<ParamTensor, TensorError> {
        Ok(ParamTensor {
            name: p.name,
            shape: dims_to_u32(&p.tensor.shape)?,
            data: p.tensor.data,
        })
    }
}

/// An exported parameter as a layer takes it, its shape checked against
/// its values.
impl TryFrom<ParamTensor> for NamedTensor {
    type Error = TensorError;
    fn try_from(p: ParamTensor) -> Result<NamedTensor, TensorError> {
        Ok(NamedTensor {
            name: p.name,
            tensor: Tensor::from_u32_dims(&p.shape, p.data)?,
        })
    }
}

/// Encodes an end-to-end message body.
pub fn encode_msg<T: Serialize>(what: &'static str, msg: &T) -> Result<Vec<u8>, JobError> {
    Ok(cbor::encode(what, msg, MAX_E2E_BODY)?)
}

/// Decodes an end-to-end message body (bounded).
pub fn decode_msg<T: serde::de::DeserializeOwned>(
    what: &'static str,
    body: &[u8],
) -> Result<T, JobError> {
    Ok(cbor::decode(what, body, MAX_E2E_BODY)?)
}
