//! A layer's whole training state as bytes: what a checkpoint holds so that
//! a layer restored from it continues **bit for bit** (issue 11). The one
//! definition of the format; [`crate::Layer::export_state`] writes it and
//! [`crate::Layer::import_state`] reads it.
//!
//! Little-endian throughout:
//!
//! ```text
//! magic      4   "MXLS"
//! version    2   u16 = STATE_VERSION
//! optimizer  1   0 = SGD, 1 = Adam
//! reserved   1   0
//! step       8   u64, optimizer steps taken (SGD's first-step rule and
//!                Adam's bias correction read it)
//! rng seed  32   the dropout mask stream (ChaCha8): seed,
//! rng stream 8   u64 stream,
//! rng pos   16   u128 word position
//! params     4   u32 count, then per parameter, in load order:
//!   name_len 4   u32 (≤ MAX_NAME), name (UTF-8)
//!   rank     4   u32 (≤ MAX_RANK), dims (u64 each)
//!   values   4·n f32, n = product of dims
//!   m        4·n f32 (SGD momentum buffer / Adam first moment)
//!   v        4·n f32, Adam only (second moment)
//! checksum   8   u64 FNV-1a of every byte before it
//! ```
//!
//! Decoding checks the checksum first (a truncated or garbled state fails
//! there), then every name and shape against the loaded layer's, and every
//! length against the bytes present before anything is allocated: a state
//! from the network or a file is refused with [`LayerError::State`], never
//! a panic.

use crate::{LayerError, OptimizerKind};

/// The first bytes of every layer state.
pub const STATE_MAGIC: [u8; 4] = *b"MXLS";
/// Version of the state layout this crate writes and reads.
pub const STATE_VERSION: u16 = 1;
/// Longest parameter name a state may carry, in bytes.
const MAX_NAME: usize = 4096;
/// Most dimensions a parameter may have in a state.
const MAX_RANK: usize = 16;
/// Bytes of the fixed header (magic to rng position, and the count).
const HEADER_LEN: usize = 4 + 2 + 1 + 1 + 8 + 32 + 8 + 16 + 4;
/// Bytes of the trailing checksum.
const CHECKSUM_LEN: usize = 8;

/// Upper bound of the state of a layer with `param_count` values in
/// `tensors` tensors (Adam: values and two moments), for hosts that must
/// bound what they accept before the layer reads it.
pub fn max_state_len(param_count: u64, tensors: u64) -> u64 {
    let per_tensor = (4 + MAX_NAME + 4 + 8 * MAX_RANK) as u64;
    (HEADER_LEN + CHECKSUM_LEN) as u64
        + param_count.saturating_mul(12)
        + tensors.saturating_mul(per_tensor)
}

/// Everything of the state but the parameters.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Header {
    pub optimizer: OptimizerKind,
    pub step: u64,
    pub rng_seed: [u8; 32],
    pub rng_stream: u64,
    pub rng_word_pos: u128,
}

/// One parameter as the layer holds it, for encoding.
pub(crate) struct ParamView<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub value: &'a [f32],
    pub m: &'a [f32],
    pub v: &'a [f32],
}

/// One parameter as decoded (its name and shape were checked).
pub(crate) struct ParamState {
    pub value: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// What the loaded layer expects of a state.
pub(crate) struct Expect<'a> {
    pub optimizer: OptimizerKind,
    pub rng_seed: [u8; 32],
    /// Name and shape of each parameter, in load order.
    pub params: Vec<(&'a str, &'a [usize])>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn push_f32s(out: &mut Vec<u8>, xs: &[f32]) {
    for x in xs {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// The bytes of a state.
pub(crate) fn encode(h: &Header, params: &[ParamView<'_>]) -> Vec<u8> {
    let values: usize = params
        .iter()
        .map(|p| 4 * (p.value.len() + p.m.len() + p.v.len()) + 8 + p.name.len() + 8 * p.shape.len())
        .sum();
    let mut out = Vec::with_capacity(HEADER_LEN + CHECKSUM_LEN + values);
    out.extend_from_slice(&STATE_MAGIC);
    out.extend_from_slice(&STATE_VERSION.to_le_bytes());
    out.push(optimizer_byte(h.optimizer));
    out.push(0);
    out.extend_from_slice(&h.step.to_le_bytes());
    out.extend_from_slice(&h.rng_seed);
    out.extend_from_slice(&h.rng_stream.to_le_bytes());
    out.extend_from_slice(&h.rng_word_pos.to_le_bytes());
    out.extend_from_slice(&(params.len() as u32).to_le_bytes());
    for p in params {
        out.extend_from_slice(&(p.name.len() as u32).to_le_bytes());
        out.extend_from_slice(p.name.as_bytes());
        out.extend_from_slice(&(p.shape.len() as u32).to_le_bytes());
        for &d in p.shape {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        push_f32s(&mut out, p.value);
        push_f32s(&mut out, p.m);
        push_f32s(&mut out, p.v);
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn optimizer_byte(k: OptimizerKind) -> u8 {
    match k {
        OptimizerKind::Sgd => 0,
        OptimizerKind::Adam => 1,
    }
}

fn bad(msg: impl Into<String>) -> LayerError {
    LayerError::State(msg.into())
}

/// A bounded reader: every take checks the bytes left first.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LayerError> {
        if n > self.0.len() {
            return Err(bad("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], LayerError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, LayerError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, LayerError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, LayerError> {
        let len = n.checked_mul(4).ok_or_else(|| bad("size overflows"))?;
        let raw = self.take(len)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// Decodes a state for the layer `expect` describes.
pub(crate) fn decode(
    bytes: &[u8],
    expect: &Expect<'_>,
) -> Result<(Header, Vec<ParamState>), LayerError> {
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(bad(format!(
            "{} bytes, shorter than any layer state",
            bytes.len()
        )));
    }
    if bytes[..4] != STATE_MAGIC {
        return Err(bad("not a layer state (bad magic)"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    let mut r = Reader(body);
    r.take(4)?;
    let version = u16::from_le_bytes(r.array()?);
    if version != STATE_VERSION {
        return Err(bad(format!(
            "version {version}; this layer reads version {STATE_VERSION}"
        )));
    }
    let mut want = [0u8; CHECKSUM_LEN];
    want.copy_from_slice(sum);
    if fnv1a(body) != u64::from_le_bytes(want) {
        return Err(bad("checksum mismatch (truncated or corrupted)"));
    }
    let [opt, reserved] = r.array()?;
    let optimizer = match opt {
        0 => OptimizerKind::Sgd,
        1 => OptimizerKind::Adam,
        k => return Err(bad(format!("unknown optimizer {k}"))),
    };
    if optimizer != expect.optimizer || reserved != 0 {
        return Err(bad(format!(
            "state of a {} layer, this one is {}",
            optimizer.as_str(),
            expect.optimizer.as_str()
        )));
    }
    let step = r.u64()?;
    let rng_seed: [u8; 32] = r.array()?;
    if rng_seed != expect.rng_seed {
        return Err(bad(
            "the state's dropout stream has another seed than this layer's",
        ));
    }
    let rng_stream = r.u64()?;
    let rng_word_pos = u128::from_le_bytes(r.array()?);
    let count = r.u32()? as usize;
    if count != expect.params.len() {
        return Err(bad(format!(
            "{count} parameters for a layer of {}",
            expect.params.len()
        )));
    }
    let mut params = Vec::with_capacity(count);
    for &(name, shape) in &expect.params {
        params.push(decode_param(&mut r, name, shape, optimizer)?);
    }
    if !r.0.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let header = Header {
        optimizer,
        step,
        rng_seed,
        rng_stream,
        rng_word_pos,
    };
    Ok((header, params))
}

/// One parameter, its name and shape compared with the layer's before its
/// values are read.
fn decode_param(
    r: &mut Reader<'_>,
    name: &str,
    shape: &[usize],
    optimizer: OptimizerKind,
) -> Result<ParamState, LayerError> {
    let name_len = r.u32()? as usize;
    if name_len > MAX_NAME {
        return Err(bad(format!("parameter name of {name_len} bytes")));
    }
    let got = r.take(name_len)?;
    if got != name.as_bytes() {
        return Err(bad(format!(
            "parameter `{}` where the layer has `{name}`",
            String::from_utf8_lossy(got)
        )));
    }
    let rank = r.u32()? as usize;
    if rank > MAX_RANK || rank != shape.len() {
        return Err(bad(format!(
            "`{name}` has rank {rank}, the layer's {shape:?}"
        )));
    }
    for &d in shape {
        let got = r.u64()?;
        if got != d as u64 {
            return Err(bad(format!(
                "`{name}` has dimension {got} where the layer's shape is {shape:?}"
            )));
        }
    }
    let n: usize = shape.iter().product();
    let value = r.f32s(n)?;
    let m = r.f32s(n)?;
    let v = match optimizer {
        OptimizerKind::Sgd => Vec::new(),
        OptimizerKind::Adam => r.f32s(n)?,
    };
    Ok(ParamState { value, m, v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let h = Header {
            optimizer: OptimizerKind::Adam,
            step: 3,
            rng_seed: [5; 32],
            rng_stream: 0,
            rng_word_pos: 77,
        };
        let p = ParamView {
            name: "w",
            shape: &[2],
            value: &[1.0, 2.0],
            m: &[0.5, 0.25],
            v: &[0.1, 0.2],
        };
        encode(&h, &[p])
    }

    fn expect() -> Expect<'static> {
        Expect {
            optimizer: OptimizerKind::Adam,
            rng_seed: [5; 32],
            params: vec![("w", &[2])],
        }
    }

    #[test]
    fn round_trips() {
        let (h, p) = decode(&sample(), &expect()).expect("decodes");
        assert_eq!((h.step, h.rng_word_pos), (3, 77));
        assert_eq!(p[0].value, vec![1.0, 2.0]);
        assert_eq!(p[0].v, vec![0.1, 0.2]);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let s = sample();
        for n in 0..s.len() {
            assert!(decode(&s[..n], &expect()).is_err(), "prefix of {n}");
        }
        for i in 0..s.len() {
            let mut g = s.clone();
            g[i] ^= 0x10;
            assert!(decode(&g, &expect()).is_err(), "byte {i} flipped");
        }
    }

    #[test]
    fn a_huge_declared_length_is_refused_without_allocating() {
        // A valid checksum over a body that claims a 4 GiB name.
        let mut s = sample();
        s.truncate(s.len() - CHECKSUM_LEN);
        s.truncate(HEADER_LEN);
        s.extend_from_slice(&u32::MAX.to_le_bytes());
        let sum = fnv1a(&s);
        s.extend_from_slice(&sum.to_le_bytes());
        assert!(matches!(decode(&s, &expect()), Err(LayerError::State(_))));
    }
}
