//! The Sphinx header: building it (designer) and peeling one layer (hop).
//!
//! Layout: `hint (1) || α (32) || γ (16) || β (max_hops * slot_len)`.
//! β holds one fixed-size slot per hop, each encrypted under every earlier
//! hop's stream key. A hop decrypts `β || 0^slot_len` with its keystream,
//! reads the first slot, and forwards the remaining `max_hops * slot_len`
//! bytes. The designer precomputes what those appended bytes will decrypt to
//! (the *filler*) so every hop's MAC covers a β it can check, and every
//! header has the same length whatever the route length.

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{
    HopKeys, decode_alpha, encode_compressed_secret, encode_secret, header_mac, mac_eq,
    xor_keystream,
};
use crate::error::{Result, SphinxError};
use crate::geometry::{ALPHA_LEN, Geometry, HEADER_PREFIX_LEN, MAC_LEN};
use crate::keys::{MixKeyPair, MixPublicKey, epoch_hint};
use crate::routing::{JobHandle, LinkKey, NodeId, Op, RoutingInfo, flags};

/// One hop of a route as the designer describes it.
#[derive(Clone, Debug)]
pub struct RouteHop {
    /// The hop's address (what the previous hop sends to).
    pub node_id: NodeId,
    /// Its mix key for `epoch`.
    pub mix_key: MixPublicKey,
    /// Key epoch of `mix_key`.
    pub epoch: u32,
    /// What it should do.
    pub op: Op,
    /// The job handle it knows the job by.
    pub job: JobHandle,
    /// Key of the link into this hop (payload from the previous hop or the designer).
    pub key_in: LinkKey,
    /// Key of the link out of this hop.
    pub key_out: LinkKey,
    /// Application flag bits (the high byte of the routing flags).
    pub app_flags: u8,
}

/// Where the packet goes after its last hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The last hop consumes it ([`flags::FINAL`] set): no next header.
    Final,
    /// The last hop forwards it, with a fresh header of the same length, to
    /// this endpoint (the designer's reply address, for SURBs).
    Endpoint(NodeId),
}

/// Bytes of a [`HeaderBinding`].
pub const BINDING_LEN: usize = HEADER_PREFIX_LEN;

/// The first 49 bytes of a header (hint, α, γ). They identify the header
/// (α is fresh per packet and hop, γ authenticates the rest), so payload keys
/// are bound to them: a payload opens only under the header it was sealed for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HeaderBinding(pub [u8; BINDING_LEN]);

impl std::fmt::Debug for HeaderBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeaderBinding(")?;
        for b in &self.0[1..5] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl HeaderBinding {
    /// The binding of a header (its first 49 bytes), if the slice is long enough.
    pub fn of_header(header: &[u8]) -> Option<HeaderBinding> {
        header
            .get(..BINDING_LEN)
            .and_then(|b| b.try_into().ok())
            .map(HeaderBinding)
    }

    /// The group element α of the header.
    pub fn alpha(&self) -> [u8; 32] {
        let mut a = [0u8; 32];
        a.copy_from_slice(&self.0[1..1 + ALPHA_LEN]);
        a
    }
}

/// Per-hop secrets the designer keeps from building a header.
pub(crate) struct HopMaterial {
    pub keys: HopKeys,
    pub binding: HeaderBinding,
}

/// A header as built by the designer.
pub(crate) struct BuiltHeader {
    pub bytes: Vec<u8>,
    pub hops: Vec<HopMaterial>,
    /// α of the header the last hop emits towards an [`Exit::Endpoint`].
    pub exit_alpha: Option<[u8; 32]>,
}

fn keystream(key: &[u8; 32], len: usize) -> Zeroizing<Vec<u8>> {
    let mut ks = Zeroizing::new(vec![0u8; len]);
    xor_keystream(key, &mut ks);
    ks
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Builds the header for `route` (1..=max_hops hops).
pub(crate) fn build_header<R: RngCore + CryptoRng + ?Sized>(
    g: &Geometry,
    route: &[RouteHop],
    exit: Exit,
    layered: bool,
    rng: &mut R,
) -> Result<BuiltHeader> {
    let n = route.len();
    if n == 0 {
        return Err(SphinxError::InvalidRoute("empty route"));
    }
    if n > g.max_hops() {
        return Err(SphinxError::InvalidRoute(
            "route longer than the geometry's max_hops",
        ));
    }
    let (r, l) = (g.max_hops(), g.slot_len());
    let beta_len = g.beta_len();

    // Group elements and shared secrets. The designer's running scalar
    // c_i = x·b_0·…·b_{i-1} gives α_i = c_i·B and s_i = c_i·X_i, which is what
    // hop i computes as x_i·α_i.
    let mut wide = Zeroizing::new([0u8; 64]);
    rng.fill_bytes(wide.as_mut());
    let mut c = Scalar::from_bytes_mod_order_wide(&wide);
    let mut alphas = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for hop in route {
        // α and the secret compressed together: one field inversion for both.
        let [alpha, secret] =
            EdwardsPoint::compress_batch(&[EdwardsPoint::mul_base(&c), hop.mix_key.edwards() * c]);
        let alpha = alpha.to_bytes();
        let s = encode_compressed_secret(secret)?;
        let k = HopKeys::derive(&s, &alpha);
        c *= k.blind;
        alphas.push(alpha);
        keys.push(k);
    }
    let exit_alpha = match exit {
        Exit::Endpoint(_) => Some(EdwardsPoint::mul_base(&c).compress().to_bytes()),
        Exit::Final => None,
    };
    c.zeroize();

    let streams: Vec<_> = keys
        .iter()
        .map(|k| keystream(&k.rho, beta_len + l))
        .collect();

    // Filler: what hops 0..n-2 append and decrypt, as seen at the last hop.
    let mut filler = Vec::with_capacity((n - 1) * l);
    for (i, ks) in streams.iter().enumerate().take(n - 1) {
        filler.resize((i + 1) * l, 0);
        xor_into(&mut filler, &ks[(r - i) * l..]);
    }

    let routing = |i: usize| -> RoutingInfo {
        let hop = &route[i];
        let last = i + 1 == n;
        let mut f = u16::from(hop.app_flags) << 8;
        if layered {
            f |= flags::LAYERED;
        }
        if last && exit == Exit::Final {
            f |= flags::FINAL;
        }
        let (next_hop, next_epoch_hint) = match (route.get(i + 1), exit) {
            (Some(next), _) => (next.node_id, epoch_hint(next.epoch)),
            (None, Exit::Endpoint(id)) => (id, 0),
            (None, Exit::Final) => (NodeId::default(), 0),
        };
        RoutingInfo {
            op: hop.op,
            flags: f,
            key_epoch: hop.epoch,
            next_hop,
            next_epoch_hint,
            job: hop.job,
            key_in: hop.key_in.clone(),
            key_out: hop.key_out.clone(),
        }
    };
    let hint = |i: usize| epoch_hint(route[i].epoch);

    // Last hop: its slot, random padding (so it cannot count unused slots),
    // encrypted under its own stream, then the filler.
    let mut beta = vec![0u8; beta_len];
    let head = (r - n + 1) * l;
    rng.fill_bytes(&mut beta[..MAC_LEN]);
    routing(n - 1).encode_into(&mut beta[MAC_LEN..l]);
    rng.fill_bytes(&mut beta[l..head]);
    xor_into(&mut beta[..head], &streams[n - 1][..head]);
    beta[head..].copy_from_slice(&filler);
    let mut gamma = header_mac(&keys[n - 1].mu, hint(n - 1), &alphas[n - 1], &beta);
    let mut bindings = vec![HeaderBinding([0; BINDING_LEN]); n];
    bindings[n - 1] = binding(hint(n - 1), &alphas[n - 1], &gamma);

    for i in (0..n - 1).rev() {
        let mut prev = vec![0u8; beta_len];
        prev[..MAC_LEN].copy_from_slice(&gamma);
        routing(i).encode_into(&mut prev[MAC_LEN..l]);
        prev[l..].copy_from_slice(&beta[..beta_len - l]);
        xor_into(&mut prev, &streams[i][..beta_len]);
        beta.zeroize();
        beta = prev;
        gamma = header_mac(&keys[i].mu, hint(i), &alphas[i], &beta);
        bindings[i] = binding(hint(i), &alphas[i], &gamma);
    }

    let mut bytes = Vec::with_capacity(g.header_len());
    bytes.extend_from_slice(&bindings[0].0);
    bytes.extend_from_slice(&beta);
    let hops = keys
        .into_iter()
        .zip(bindings)
        .map(|(keys, binding)| HopMaterial { keys, binding })
        .collect();
    Ok(BuiltHeader {
        bytes,
        hops,
        exit_alpha,
    })
}

fn binding(hint: u8, alpha: &[u8; 32], gamma: &[u8; MAC_LEN]) -> HeaderBinding {
    let mut b = [0u8; BINDING_LEN];
    b[0] = hint;
    b[1..1 + ALPHA_LEN].copy_from_slice(alpha);
    b[1 + ALPHA_LEN..].copy_from_slice(gamma);
    HeaderBinding(b)
}

/// A header after one hop's key checked and decrypted it.
pub(crate) struct OpenedHeader {
    pub keys: HopKeys,
    pub routing: RoutingInfo,
    pub alpha: EdwardsPoint,
    /// Decrypted `β || 0^l`: slot 0 is this hop's, the rest is the next β.
    pub plain: Zeroizing<Vec<u8>>,
}

/// Checks and decrypts a header (exactly `g.header_len()` bytes) with `key`.
/// Nothing is written; the caller decides (replay check) before forwarding.
pub(crate) fn open_header(g: &Geometry, key: &MixKeyPair, header: &[u8]) -> Result<OpenedHeader> {
    let l = g.slot_len();
    let (prefix, beta) = header
        .split_at_checked(HEADER_PREFIX_LEN)
        .filter(|(_, b)| b.len() == g.beta_len())
        .ok_or(SphinxError::WrongSize { len: header.len() })?;
    let hint = prefix[0];
    let alpha_bytes: [u8; 32] = prefix[1..1 + ALPHA_LEN]
        .try_into()
        .map_err(|_| SphinxError::Malformed("group element"))?;
    let gamma = &prefix[1 + ALPHA_LEN..];

    let alpha = decode_alpha(&alpha_bytes)?;
    let secret = Zeroizing::new(key.secret().to_bytes());
    let s = encode_secret(&alpha.mul_clamped(*secret))?;
    let keys = HopKeys::derive(&s, &alpha_bytes);

    if !mac_eq(&header_mac(&keys.mu, hint, &alpha_bytes, beta), gamma) {
        return Err(SphinxError::BadMac);
    }
    let mut plain = Zeroizing::new(vec![0u8; beta.len() + l]);
    plain[..beta.len()].copy_from_slice(beta);
    xor_keystream(&keys.rho, &mut plain);
    let routing = RoutingInfo::decode(&plain[MAC_LEN..l])?;
    if routing.key_epoch != key.epoch() {
        return Err(SphinxError::UnknownEpoch);
    }
    Ok(OpenedHeader {
        keys,
        routing,
        alpha,
        plain,
    })
}

/// Blinds α and writes the next header over `header` in place; returns its binding.
pub(crate) fn write_next_header(
    g: &Geometry,
    opened: &OpenedHeader,
    header: &mut [u8],
) -> Option<HeaderBinding> {
    let l = g.slot_len();
    let next_alpha = (opened.alpha * opened.keys.blind).compress().to_bytes();
    let out = header.get_mut(..g.header_len())?;
    out[0] = opened.routing.next_epoch_hint;
    out[1..1 + ALPHA_LEN].copy_from_slice(&next_alpha);
    out[1 + ALPHA_LEN..HEADER_PREFIX_LEN].copy_from_slice(opened.plain.get(..MAC_LEN)?);
    out[HEADER_PREFIX_LEN..].copy_from_slice(opened.plain.get(l..)?);
    HeaderBinding::of_header(out)
}
