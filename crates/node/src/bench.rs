//! The hop's latency budget (`mixnn bench hop`, issue 12): what one hop
//! crossing costs, stage by stage, at several packet classes, against the
//! crypto-only floor measured in the same run.
//!
//! A real hop's work on real sockets: an upstream thread seals and writes
//! a job packet on a direct connection over 127.0.0.1, the hop thread
//! reads it, opens the Noise messages, unwraps the Sphinx header (key ring
//! and replay cache), opens the link payload, decodes the job payload and
//! encodes it again (the layer's arithmetic is left out: `mixnn bench
//! guest` measures it), seals the payload for the next link, seals the
//! Noise messages and writes them to the next connection. Each stage is
//! timed on the hop thread; "receive" runs from the upstream `write` call
//! to the hop having the packet's last byte (the kernel's copy and the
//! hop thread's wake-up); "send" is the hop's `write` call, with the
//! next hop not yet reading (so the call is not cut short by the reader
//! taking its core). The floor is what the issue names as the
//! crypto a crossing cannot avoid: one X25519 and two ChaCha20-Poly1305
//! passes over the payload (link payload and Noise), timed alone; the
//! floor of the ciphers in use (two AES-256-GCM passes, PROTOCOL.md §2)
//! is reported beside it.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use mixnn_p2p::direct::bench::{BenchError, BenchReceiver, BenchSender, loopback};
use mixnn_protocol::job::{JobPayload, TensorData, WireTensor};
use mixnn_sphinx::{
    Exit, Geometry, JobHandle, KeyRing, LinkKey, MixKeyPair, NodeId, Op, PayloadMode, ReplayCache,
    RouteHop, build_packet, open_payload, process, seal_payload,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

/// Median microseconds of each stage of one hop crossing at one class.
#[derive(Clone, Debug, Serialize)]
pub struct HopBudget {
    /// Payload class in bytes.
    pub class: usize,
    /// Packet length on the wire in bytes (header + class).
    pub packet_len: usize,
    /// Upstream `write` call to the hop having the last byte.
    pub receive_us: f64,
    /// Opening the Noise messages.
    pub noise_open_us: f64,
    /// Sphinx header unwrap (two scalar multiplications, MAC, replay).
    pub sphinx_us: f64,
    /// Opening the link payload (AES-256-GCM).
    pub payload_open_us: f64,
    /// Job payload decode and encode (the tensor's bytes).
    pub job_us: f64,
    /// Sealing the payload for the next link.
    pub payload_seal_us: f64,
    /// Sealing the Noise messages.
    pub noise_seal_us: f64,
    /// The hop's `write` call.
    pub send_us: f64,
    /// Sum of the stage medians.
    pub total_us: f64,
    /// Median of the whole crossing, upstream `write` to the hop's
    /// `write` returning.
    pub crossing_us: f64,
    /// One X25519 plus two ChaCha20-Poly1305 passes over the class (the
    /// issue's floor).
    pub floor_us: f64,
    /// `crossing_us / floor_us`.
    pub ratio: f64,
    /// One X25519 plus two passes of the payload AEAD in use
    /// (AES-256-GCM) over the class.
    pub floor_in_use_us: f64,
    /// `crossing_us / floor_in_use_us`.
    pub ratio_in_use: f64,
    /// Crossings timed.
    pub iterations: usize,
}

/// The stage labels and their figures, in crossing order (for tables).
pub fn stages(b: &HopBudget) -> [(&'static str, f64); 8] {
    [
        ("receive", b.receive_us),
        ("noise open", b.noise_open_us),
        ("sphinx unwrap", b.sphinx_us),
        ("payload open", b.payload_open_us),
        ("job payload", b.job_us),
        ("payload seal", b.payload_seal_us),
        ("noise seal", b.noise_seal_us),
        ("send", b.send_us),
    ]
}

fn err(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::new(format!("{what}: {e}"))
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Packets for hop 0 of a 2-hop link-mode route, each a job payload that
/// fills `class`, and hop 0's key ring.
fn packets(g: &Geometry, class: usize, n: usize) -> Result<(Vec<Vec<u8>>, KeyRing), BenchError> {
    let mut rng = ChaCha20Rng::seed_from_u64(class as u64);
    let keys: Vec<MixKeyPair> = (0..2).map(|_| MixKeyPair::generate(1, &mut rng)).collect();
    let links: Vec<LinkKey> = (0..3).map(|_| LinkKey::random(&mut rng)).collect();
    let route: Vec<RouteHop> = (0..2)
        .map(|i| RouteHop {
            node_id: NodeId([i as u8 + 1; 32]),
            mix_key: *keys[i].public(),
            epoch: 1,
            op: Op::Relay,
            job: JobHandle([7; 32]),
            key_in: links[i].clone(),
            key_out: links[i + 1].clone(),
            app_flags: 0,
        })
        .collect();
    // Version, tensor flag, dtype, ndim, one dim, the e2e length: 12 bytes.
    let elements = (class - mixnn_sphinx::PAYLOAD_OVERHEAD - 12) / 4;
    let payload = JobPayload {
        tensor: Some(WireTensor {
            shape: vec![elements as u32],
            data: TensorData::F32((0..elements).map(|i| i as f32 * 0.5).collect()),
        }),
        e2e: Vec::new(),
    }
    .encode();
    let out = (0..n)
        .map(|_| {
            build_packet(
                g,
                &route,
                Exit::Final,
                PayloadMode::Link,
                class,
                &payload,
                &mut rng,
            )
            .map(|(p, _)| p.into_bytes())
            .map_err(|e| err("packet", e))
        })
        .collect::<Result<_, _>>()?;
    let ring = KeyRing::with_key(MixKeyPair::from_secret_bytes(1, *keys[0].secret_bytes()));
    Ok((out, ring))
}

/// The floors at `class`, medians: one X25519 and two ChaCha20-Poly1305
/// passes (the issue's), and one X25519 and two passes of the payload
/// AEAD in use.
fn floor(class: usize, n: usize) -> Result<(f64, f64), BenchError> {
    use ring::aead::{AES_256_GCM, Aad, Algorithm, CHACHA20_POLY1305, LessSafeKey, Nonce};
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rng, &mut bytes);
    let a = x25519_dalek::StaticSecret::from(bytes);
    rand::RngCore::fill_bytes(&mut rng, &mut bytes);
    let b = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(bytes));
    let mut out = vec![1u8; class];
    let mut dh = timed(n, || {
        std::hint::black_box(a.diffie_hellman(&b));
        Ok(())
    })?;
    // One AEAD pass over a class's payload (its body; the tag is apart),
    // the primitive alone, as the link payload and Noise each make one.
    let mut pass = |alg: &'static Algorithm| {
        let key = ring::aead::UnboundKey::new(alg, &bytes)
            .map(LessSafeKey::new)
            .map_err(|_| BenchError::new("aead key".into()))?;
        timed(n, || {
            let nonce = Nonce::assume_unique_for_key([0; 12]);
            let body = &mut out[..class - 16];
            let tag = (key.seal_in_place_separate_tag(nonce, Aad::empty(), body))
                .map_err(|_| BenchError::new("aead seal".into()))?;
            std::hint::black_box(tag.as_ref());
            Ok(())
        })
    };
    let mut chacha = pass(&CHACHA20_POLY1305)?;
    let mut aes = pass(&AES_256_GCM)?;
    let x = median(&mut dh);
    Ok((x + 2.0 * median(&mut chacha), x + 2.0 * median(&mut aes)))
}

/// `n` timings of `f`.
fn timed(
    n: usize,
    mut f: impl FnMut() -> Result<(), BenchError>,
) -> Result<Vec<Duration>, BenchError> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// The hop's sockets and the channels that pace it.
struct HopEnds {
    into_hop: BenchReceiver,
    out_of_hop: BenchSender,
    t0_rx: mpsc::Receiver<Instant>,
    done_tx: mpsc::Sender<()>,
}

/// The hop thread: `count` crossings, each stage timed; the ninth figure
/// is the whole crossing.
fn hop_loop(
    g: &Geometry,
    ring: &KeyRing,
    ends: HopEnds,
    packet_len: usize,
    count: usize,
) -> Result<Vec<[Duration; 9]>, BenchError> {
    let HopEnds {
        mut into_hop,
        mut out_of_hop,
        t0_rx,
        done_tx,
    } = ends;
    let h = g.header_len();
    let mut replay = ReplayCache::new(1 << 20);
    let mut buf = Vec::new();
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        into_hop.read(packet_len)?;
        let t1 = Instant::now();
        let t0 = t0_rx.recv().map_err(|e| err("upstream", e))?;
        into_hop.open(&mut buf)?;
        let t2 = Instant::now();
        let p = process(g, ring, &mut replay, &mut buf).map_err(|e| err("sphinx", e))?;
        let t3 = Instant::now();
        let msg = open_payload(&p.routing.key_in, &p.incoming, &mut buf[h..])
            .map_err(|e| err("payload", e))?;
        let t4 = Instant::now();
        let encoded = JobPayload::decode(msg).map_err(|e| err("job", e))?.encode();
        let t5 = Instant::now();
        let next = p
            .outgoing
            .ok_or_else(|| BenchError::new("no next hop".into()))?;
        seal_payload(&p.routing.key_out, &next, &encoded, &mut buf[h..])
            .map_err(|e| err("seal", e))?;
        let t6 = Instant::now();
        out_of_hop.seal(&buf)?;
        let t7 = Instant::now();
        out_of_hop.write()?;
        let t8 = Instant::now();
        let at = [t0, t1, t2, t3, t4, t5, t6, t7, t8];
        let mut d = [Duration::ZERO; 9];
        for i in 0..8 {
            d[i] = at[i + 1] - at[i];
        }
        d[8] = t8 - t0;
        times.push(d);
        done_tx.send(()).map_err(|e| err("downstream", e))?;
    }
    Ok(times)
}

/// Times `n` crossings at `class`.
pub fn hop_budget(class: usize, n: usize) -> Result<HopBudget, BenchError> {
    let g = Geometry::default();
    g.packet_len(class).map_err(|e| err("class", e))?;
    let (packets, ring) = packets(&g, class, n + 10)?;
    let packet_len = packets.first().map_or(0, Vec::len);
    let (mut up, into_hop) = loopback()?;
    let (out_of_hop, mut down) = loopback()?;
    let (t0_tx, t0_rx) = mpsc::channel::<Instant>();
    // The downstream end reads only once the hop's write returned, so the
    // write wakes nobody who could take the hop's core mid-call (in a
    // pool the next hop runs in another process, often on the other core).
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let ends = HopEnds {
        into_hop,
        out_of_hop,
        t0_rx,
        done_tx,
    };
    let hop = std::thread::spawn(move || hop_loop(&g, &ring, ends, packet_len, n + 10));
    let mut sink = Vec::new();
    for p in &packets {
        up.seal(p)?;
        t0_tx.send(Instant::now()).map_err(|e| err("hop", e))?;
        up.write()?;
        done_rx.recv().map_err(|e| err("hop", e))?;
        down.read(packet_len)?;
        down.open(&mut sink)?;
    }
    let times = hop
        .join()
        .map_err(|_| BenchError::new("hop thread panicked".into()))??;
    // The first ten warm the caches and the connection.
    let times = &times[10..];
    let m = |i: usize| median(&mut times.iter().map(|d| d[i]).collect::<Vec<_>>());
    let stage: Vec<f64> = (0..8).map(m).collect();
    let crossing = m(8);
    let (floor, in_use) = floor(class, n.max(100))?;
    Ok(HopBudget {
        class,
        packet_len,
        receive_us: stage[0],
        noise_open_us: stage[1],
        sphinx_us: stage[2],
        payload_open_us: stage[3],
        job_us: stage[4],
        payload_seal_us: stage[5],
        noise_seal_us: stage[6],
        send_us: stage[7],
        total_us: stage.iter().sum(),
        crossing_us: crossing,
        floor_us: floor,
        ratio: crossing / floor.max(f64::MIN_POSITIVE),
        floor_in_use_us: in_use,
        ratio_in_use: crossing / in_use.max(f64::MIN_POSITIVE),
        iterations: times.len(),
    })
}
