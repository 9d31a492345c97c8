//! Per-hop Sphinx processing, mixnn-sphinx against Nym's `sphinx-packet`, and
//! one-core relay throughput. Run: `cargo bench -p mixnn-benches --bench sphinx`.
//!
//! Nym caps routes at 5 hops, so both sides use a 5-hop route and time its
//! first hop. Timed work per hop:
//! - nym: `SphinxPacket::from_bytes` + `process` (header + LIONESS unwrap);
//! - ours/relay: `process` in layered mode (header + one ChaCha20 layer),
//!   with the 16-hop default geometry and with a 5-hop geometry (same header
//!   capacity as Nym's);
//! - ours/link: `process` + `open_payload` (what a compute hop does before
//!   running its layer) and ours/link+seal adding `seal_payload` of a new
//!   output (a dummy hop's full work).
//!
//! After criterion's report, the bench prints a table of medians measured in
//! one interleaved loop and the ratio ours ÷ nym (SPEC §11: ≤ 0.5×), then the
//! relay throughput over distinct packets with one replay cache, and what
//! the curve arithmetic of one hop costs alone (the floor of a hop's
//! header work: decompress α, the shared secret, its encoding, the
//! blinding, the next α).

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use mixnn_benches::Fixture;
use mixnn_sphinx::{Geometry, PayloadMode, ReplayCache, open_payload, process, seal_payload};
use sphinx_packet::SphinxPacket;
use sphinx_packet::constants::{
    DESTINATION_ADDRESS_LENGTH, IDENTIFIER_LENGTH, NODE_ADDRESS_LENGTH,
};
use sphinx_packet::header::delays::Delay;
use sphinx_packet::packet::builder::SphinxPacketBuilder;
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use x25519_dalek::{PublicKey, StaticSecret};

const HOPS: usize = 5;
const SIZES: [usize; 3] = [2 << 10, 32 << 10, 256 << 10];

/// Nym packet bytes of `size` payload bytes for a 5-hop route, and hop 0's key.
fn nym_packet(size: usize) -> (Vec<u8>, StaticSecret) {
    let secrets: Vec<StaticSecret> = (0..HOPS as u8)
        .map(|i| StaticSecret::from([i + 1; 32]))
        .collect();
    let route: Vec<Node> = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Node::new(
                NodeAddressBytes::from_bytes([i as u8; NODE_ADDRESS_LENGTH]),
                PublicKey::from(s),
            )
        })
        .collect();
    let destination = Destination::new(
        DestinationAddressBytes::from_bytes([9; DESTINATION_ADDRESS_LENGTH]),
        [4; IDENTIFIER_LENGTH],
    );
    let delays: Vec<Delay> = (0..HOPS).map(|_| Delay::new_from_nanos(10)).collect();
    let message = vec![0x42u8; size / 2];
    let packet = SphinxPacketBuilder::new()
        .with_payload_size(size)
        .build_packet(&message, &route, &destination, &delays)
        .unwrap_or_else(|e| panic!("nym packet: {e:?}"));
    (packet.to_bytes(), secrets[0].clone())
}

fn nym_hop(bytes: &[u8], secret: &StaticSecret) {
    let p = SphinxPacket::from_bytes(bytes).unwrap_or_else(|e| panic!("nym parse: {e:?}"));
    black_box(
        p.process(secret)
            .unwrap_or_else(|e| panic!("nym process: {e:?}")),
    );
}

/// The contenders at one payload size: a name and a closure timing one hop.
struct Case {
    name: &'static str,
    run: Box<dyn FnMut() -> Duration>,
}

fn cases(size: usize) -> Vec<Case> {
    let mut out = Vec::new();
    let (nym_bytes, nym_secret) = nym_packet(size);
    out.push(Case {
        name: "nym",
        run: Box::new(move || {
            let t = Instant::now();
            nym_hop(&nym_bytes, &nym_secret);
            t.elapsed()
        }),
    });
    let ours =
        |name: &'static str, geometry: Geometry, mode: PayloadMode, open: bool, seal: bool| {
            let mut f = Fixture::new(geometry, HOPS, size as u64);
            let bytes = f.packet(mode, size);
            let g = f.geometry.clone();
            let h = g.header_len();
            let message = vec![7u8; size / 2];
            Case {
                name,
                run: Box::new(move || {
                    let mut b = bytes.clone();
                    let mut replay = ReplayCache::default();
                    let t = Instant::now();
                    let p = process(&g, &f.first_ring, &mut replay, &mut b)
                        .unwrap_or_else(|e| panic!("{e}"));
                    if open {
                        black_box(
                            open_payload(&p.routing.key_in, &p.incoming, &mut b[h..]).is_ok(),
                        );
                    }
                    if let (true, Some(out)) = (seal, p.outgoing) {
                        black_box(
                            seal_payload(&p.routing.key_out, &out, &message, &mut b[h..]).is_ok(),
                        );
                    }
                    let e = t.elapsed();
                    black_box(&b);
                    e
                }),
            }
        };
    let g5 = Geometry::new(HOPS, mixnn_sphinx::DEFAULT_SLOT_LEN, &SIZES).unwrap_or_default();
    let g16 = Geometry::new(16, mixnn_sphinx::DEFAULT_SLOT_LEN, &SIZES).unwrap_or_default();
    out.push(ours(
        "ours/relay g16",
        g16.clone(),
        PayloadMode::Layered,
        false,
        false,
    ));
    out.push(ours(
        "ours/relay g5",
        g5,
        PayloadMode::Layered,
        false,
        false,
    ));
    out.push(ours(
        "ours/link g16",
        g16.clone(),
        PayloadMode::Link,
        true,
        false,
    ));
    out.push(ours(
        "ours/link+seal g16",
        g16,
        PayloadMode::Link,
        true,
        true,
    ));
    out
}

fn criterion_benches(c: &mut Criterion) {
    for size in SIZES {
        let mut group = c.benchmark_group(format!("hop_{}KiB", size >> 10));
        group.throughput(Throughput::Elements(1));
        let (nym_bytes, nym_secret) = nym_packet(size);
        group.bench_function("nym", |b| b.iter(|| nym_hop(&nym_bytes, &nym_secret)));
        for (name, mode) in [
            ("ours_relay", PayloadMode::Layered),
            ("ours_link_open", PayloadMode::Link),
        ] {
            let mut f = Fixture::new(Geometry::default(), HOPS, 1);
            let bytes = f.packet(mode, size);
            let g = f.geometry.clone();
            let h = g.header_len();
            group.bench_function(name, |b| {
                b.iter_batched(
                    || (bytes.clone(), ReplayCache::default()),
                    |(mut bytes, mut replay)| {
                        let p = process(&g, &f.first_ring, &mut replay, &mut bytes)
                            .unwrap_or_else(|e| panic!("{e}"));
                        if mode == PayloadMode::Link {
                            black_box(
                                open_payload(&p.routing.key_in, &p.incoming, &mut bytes[h..])
                                    .is_ok(),
                            );
                        }
                        bytes
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Medians over interleaved rounds (so load from other processes hits every
/// contender alike), and the ratio of each of ours to Nym.
fn ratio_table() {
    println!("\nper-hop processing, 5-hop route, medians of interleaved rounds");
    println!(
        "{:>8}  {:<20} {:>10}  {:>8}",
        "payload", "implementation", "µs/hop", "÷ nym"
    );
    for size in SIZES {
        let mut cs = cases(size);
        let rounds = if size >= 256 << 10 { 150 } else { 600 };
        let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); cs.len()];
        for c in cs.iter_mut() {
            (c.run)(); // warm up
        }
        for _ in 0..rounds {
            for (c, t) in cs.iter_mut().zip(times.iter_mut()) {
                t.push((c.run)());
            }
        }
        let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
        let nym = medians[0].as_secs_f64();
        for (c, m) in cs.iter().zip(&medians) {
            println!(
                "{:>6}K  {:<20} {:>10.1}  {:>7.2}×",
                size >> 10,
                c.name,
                m.as_secs_f64() * 1e6,
                m.as_secs_f64() / nym
            );
        }
    }
}

/// Relay throughput at the 2 KiB class on one core: distinct packets (as a
/// real relay sees them) through one replay cache, layered mode, and link
/// mode with open + re-seal (a dummy hop).
fn throughput() {
    const N: usize = 3000;
    println!("\nrelay throughput, 2 KiB class, one core, {N} distinct packets, 16-hop geometry");
    for (name, mode) in [
        ("layered relay", PayloadMode::Layered),
        ("link open+seal", PayloadMode::Link),
    ] {
        let mut f = Fixture::new(Geometry::default(), HOPS, 99);
        let g = f.geometry.clone();
        let h = g.header_len();
        let mut packets: Vec<Vec<u8>> = (0..N).map(|_| f.packet(mode, 2048)).collect();
        let mut replay = ReplayCache::default();
        let message = vec![1u8; 1000];
        let t = Instant::now();
        for b in packets.iter_mut() {
            let p = process(&g, &f.first_ring, &mut replay, b).unwrap_or_else(|e| panic!("{e}"));
            if mode == PayloadMode::Link {
                black_box(open_payload(&p.routing.key_in, &p.incoming, &mut b[h..]).is_ok());
                if let Some(out) = p.outgoing {
                    black_box(
                        seal_payload(&p.routing.key_out, &out, &message, &mut b[h..]).is_ok(),
                    );
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "  {name:<16} {:>8.0} packets/s  ({:.1} µs/packet)",
            N as f64 / secs,
            secs / N as f64 * 1e6
        );
    }
}

/// Median µs of `f` over `n` calls (after a tenth as warm-up).
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    median(&mut v).as_secs_f64() * 1e6
}

/// The curve operations a hop's header costs, each alone, and their sum
/// against the measured per-hop processing: what no change above the curve
/// arithmetic can remove (PROTOCOL.md §10, docs/performance.md).
fn curve_floor() {
    use curve25519_dalek::edwards::EdwardsPoint;
    use curve25519_dalek::scalar::Scalar;
    const N: u32 = 20_000;
    let x = Scalar::from_bytes_mod_order([7; 32]);
    let p = EdwardsPoint::mul_base(&x);
    let c = p.compress();
    let ops = [
        (
            "decompress α",
            per_call(N, || _ = black_box(black_box(c).decompress())),
        ),
        (
            "shared secret (clamped multiplication)",
            per_call(N, || _ = black_box(black_box(p).mul_clamped([9; 32]))),
        ),
        (
            "encode the secret (compress)",
            per_call(N, || _ = black_box(black_box(p).compress())),
        ),
        (
            "blinding (scalar multiplication)",
            per_call(N, || _ = black_box(black_box(p) * black_box(x))),
        ),
        (
            "encode the next α (compress)",
            per_call(N, || _ = black_box(black_box(p).compress())),
        ),
    ];
    println!(
        "\ncurve work of one hop, medians of {N} calls each (the designer's fixed-base multiplication: {:.1} µs)",
        per_call(N, || _ = black_box(EdwardsPoint::mul_base(black_box(&x))))
    );
    for (name, us) in &ops {
        println!("  {name:<40} {us:>6.1} µs");
    }
    println!(
        "  {:<40} {:>6.1} µs",
        "sum",
        ops.iter().map(|(_, us)| us).sum::<f64>()
    );
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();
    ratio_table();
    throughput();
    curve_floor();
}
