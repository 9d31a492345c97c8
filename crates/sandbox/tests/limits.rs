//! The sandbox's promises, tested with a guest that breaks them on purpose:
//! each misbehaviour becomes a clear error and the sandbox keeps serving.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use mixnn_sandbox::{
    GuestKind, Limits, Sandbox, SandboxError, SandboxOptions, Tensor, TrainConfig,
};

/// The paper's recipe (SGD), host kernels asked for.
fn config() -> TrainConfig {
    TrainConfig::default()
}

fn sandbox(memory_bytes: usize, call_timeout: Duration) -> Sandbox {
    let opts = SandboxOptions {
        limits: Limits {
            memory_bytes,
            call_timeout,
        },
        cache_dir: None,
        ..Default::default()
    };
    Sandbox::new(opts).expect("sandbox starts")
}

/// After any failure, a fresh relay instance on the same sandbox still works.
fn still_serves(sb: &Sandbox) {
    let mut relay = sb
        .instantiate(sb.guest(GuestKind::Relay).unwrap())
        .expect("relay instantiates");
    relay.load(b"relu", &config()).expect("relay loads");
    let out = relay
        .forward(&Tensor {
            shape: vec![1, 3],
            data: vec![-1.0, 0.5, 2.0],
        })
        .expect("relay forward");
    assert_eq!(out.data, vec![0.0, 0.5, 2.0]);
}

#[test]
fn a_guest_that_loops_forever_hits_the_cpu_deadline() {
    let sb = sandbox(256 << 20, Duration::from_millis(300));
    let hostile = sb
        .compile("hostile", mixnn_sandbox::hostile_guest_wasm())
        .expect("compiles");
    let mut g = sb.instantiate(&hostile).expect("instantiates");
    let t = Instant::now();
    let err = g.load(b"loop", &config()).expect_err("must not return");
    assert!(
        matches!(err, SandboxError::Timeout { call: "load", .. }),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "deadline took {:?}",
        t.elapsed()
    );
    assert!(err.to_string().contains("CPU time limit"));
    // The instance is poisoned, the sandbox is not.
    assert!(matches!(
        g.forward(&Tensor {
            shape: vec![1],
            data: vec![1.0]
        }),
        Err(SandboxError::Poisoned { .. })
    ));
    still_serves(&sb);
}

#[test]
fn a_guest_that_allocates_without_bound_hits_the_memory_cap() {
    let sb = sandbox(64 << 20, Duration::from_secs(30));
    let hostile = sb
        .compile("hostile", mixnn_sandbox::hostile_guest_wasm())
        .expect("compiles");
    let mut g = sb.instantiate(&hostile).expect("instantiates");
    let err = g.load(b"alloc", &config()).expect_err("must not succeed");
    assert!(
        matches!(err, SandboxError::OutOfMemory { call: "load", limit } if limit == 64 << 20),
        "expected out-of-memory, got {err}"
    );
    still_serves(&sb);
}

#[test]
fn a_guest_that_traps_fails_the_call_with_a_clear_error() {
    let sb = sandbox(256 << 20, Duration::from_secs(30));
    let hostile = sb
        .compile("hostile", mixnn_sandbox::hostile_guest_wasm())
        .expect("compiles");
    let mut g = sb.instantiate(&hostile).expect("instantiates");
    let err = g.load(b"trap", &config()).expect_err("must trap");
    assert!(
        matches!(err, SandboxError::Trap { call: "load", .. }),
        "{err}"
    );
    // A well-behaved instance of the same guest next to it is unaffected.
    let mut ok = sb.instantiate(&hostile).expect("instantiates");
    ok.load(b"ok", &config()).expect("loads");
    still_serves(&sb);
}

#[test]
fn garbage_is_not_a_guest() {
    let sb = sandbox(64 << 20, Duration::from_secs(5));
    let err = sb
        .compile("garbage", b"\0asm but not really")
        .err()
        .expect("must not compile");
    assert!(matches!(err, SandboxError::Compile { .. }), "{err}");
    still_serves(&sb);
}

#[test]
fn relay_guest_is_identity_or_relu_with_matching_backward() {
    let sb = sandbox(64 << 20, Duration::from_secs(5));
    let mut id = sb.instantiate(sb.guest(GuestKind::Relay).unwrap()).unwrap();
    id.load(b"identity", &config()).unwrap();
    let x = Tensor {
        shape: vec![2, 2],
        data: vec![-1.0, 2.0, -3.0, 4.0],
    };
    assert_eq!(id.forward(&x).unwrap(), x);
    let mut relu = sb.instantiate(sb.guest(GuestKind::Relay).unwrap()).unwrap();
    relu.load(b"relu", &config()).unwrap();
    relu.forward(&x).unwrap();
    let g = relu
        .backward(&Tensor {
            shape: vec![2, 2],
            data: vec![1.0; 4],
        })
        .unwrap()
        .unwrap();
    assert_eq!(g.data, vec![0.0, 1.0, 0.0, 1.0]);
    let err = relu.load(b"softmax", &config()).unwrap_err();
    assert!(matches!(err, SandboxError::Guest { .. }), "{err}");
    // A tensor whose data does not fill its shape is refused, not trusted.
    let bad = Tensor {
        shape: vec![4, 4],
        data: vec![1.0],
    };
    assert!(matches!(id.forward(&bad), Err(SandboxError::Guest { .. })));
}

#[test]
fn second_start_loads_the_cached_compiled_guest() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SandboxOptions {
        limits: Limits::default(),
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    };
    let t = Instant::now();
    let sb = Sandbox::new(opts.clone()).unwrap();
    assert!(!sb.guest(GuestKind::Standard).unwrap().from_cache());
    assert!(!sb.guest(GuestKind::Relay).unwrap().from_cache());
    drop(sb);
    let cold = t.elapsed();
    let files: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "one artifact per built-in guest: {files:?}");
    #[cfg(unix)]
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let t = Instant::now();
    let sb = Sandbox::new(opts).unwrap();
    assert!(sb.guest(GuestKind::Standard).unwrap().from_cache());
    assert!(sb.guest(GuestKind::Relay).unwrap().from_cache());
    let warm = t.elapsed();
    eprintln!("cold start {cold:?}, cached start {warm:?}");
    still_serves(&sb);
    // A corrupt artifact is recompiled, not trusted.
    for f in &files {
        std::fs::write(f, b"corrupt").unwrap();
    }
    let opts = SandboxOptions {
        limits: Limits::default(),
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    };
    let sb = Sandbox::new(opts).unwrap();
    assert!(!sb.guest(GuestKind::Relay).unwrap().from_cache());
    still_serves(&sb);
}

/// The host-kernel interface under abuse, in both modes (native products,
/// and the pure-wasm product kernel): every bad argument is an error or a
/// trap of that one instance, never a host crash or an out-of-bounds read,
/// and the sandbox goes on serving. (An output overlapping an operand cannot
/// be asked for: the host returns a fresh list the guest's allocator places.)
#[test]
fn hostile_arguments_to_host_kernels_are_refused() {
    let sb = sandbox(256 << 20, Duration::from_secs(10));
    let hostile = sb
        .compile("hostile", mixnn_sandbox::hostile_guest_wasm())
        .expect("compiles");
    let msg = |e: SandboxError| e.to_string();
    for native in [true, false] {
        let answer = |mode: &[u8]| {
            let mut g = sb.instantiate(&hostile).expect("instantiates");
            let cfg = TrainConfig {
                host_kernels: native,
                ..config()
            };
            g.load(mode, &cfg).expect_err("the hostile guest reports")
        };

        let ok = msg(answer(b"kernel-ok"));
        assert!(
            ok.contains("product [19.0, 22.0, 43.0, 50.0]"),
            "{native}: {ok}"
        );

        let dims = msg(answer(b"kernel-dims"));
        assert!(
            dims.contains("refused: operand A holds 6 values, the dimensions need 8"),
            "{native}: {dims}"
        );

        let huge = msg(answer(b"kernel-huge"));
        assert!(
            huge.contains("refused:") && huge.contains("exceed the host's limit"),
            "{native}: {huge}"
        );

        // Operands outside linear memory: wasmtime refuses to lift the list,
        // so the host function never runs; the instance traps and is
        // poisoned.
        match answer(b"kernel-outside") {
            SandboxError::Trap { message, .. } => {
                assert!(message.contains("out of bounds"), "{message}")
            }
            other => panic!("expected a trap, got {other}"),
        }
        still_serves(&sb);
    }

    // Pure-wasm mode: the product kernel's memory counts against the layer's
    // cap together with the guest's own, so a guest holding most of its cap
    // cannot double it through the kernel.
    let mut g = sb.instantiate(&hostile).expect("instantiates");
    let cfg = TrainConfig {
        host_kernels: false,
        ..config()
    };
    let crowded = msg(g.load(b"kernel-crowded", &cfg).expect_err("reports"));
    assert!(
        crowded.contains("refused: the product kernel needs")
            && crowded.contains("more than the layer's memory cap leaves"),
        "{crowded}"
    );
    still_serves(&sb);

    // And the other way round: memory the kernel holds after a product goes
    // back to the guest when the guest needs it.
    let mut g = sb.instantiate(&hostile).expect("instantiates");
    let regrow = msg(g.load(b"kernel-then-grow", &cfg).expect_err("reports"));
    assert!(regrow.contains("product [0.0, 0.0, 0.0, 0.0]"), "{regrow}");
    still_serves(&sb);

    // An operator who lends no native kernels: the job's products still run,
    // in the pure-wasm kernel.
    let off = Sandbox::new(SandboxOptions {
        kernels: mixnn_sandbox::GuestKernels::Wasm,
        ..Default::default()
    })
    .expect("sandbox");
    let hostile = off
        .compile("hostile", mixnn_sandbox::hostile_guest_wasm())
        .expect("compiles");
    let mut g = off.instantiate(&hostile).expect("instantiates");
    let e = msg(g.load(b"kernel-ok", &config()).expect_err("reports"));
    assert!(e.contains("product [19.0, 22.0, 43.0, 50.0]"), "{e}");
}

/// Calls that share one deadline (a node's turn packet makes four) stop at
/// it together, though each call alone could run for ten minutes.
#[test]
fn calls_sharing_a_deadline_stop_at_it() {
    let sb = sandbox(256 << 20, Duration::from_secs(600));
    let hostile = sb
        .compile("hostile", mixnn_sandbox::hostile_guest_wasm())
        .expect("compiles");
    let mut g = sb.instantiate(&hostile).expect("instantiates");
    g.limit_calls_until(Some(Instant::now() + Duration::from_millis(300)));
    let err = g.load(b"loop", &config()).expect_err("must not return");
    assert!(
        matches!(err, SandboxError::Timeout { call: "load", limit } if limit <= Duration::from_millis(300)),
        "{err}"
    );
}

/// A tensor of more than wasmtime's default 128 MiB of "hostcall fuel"
/// (here 160 MiB, 40M floats) through an identity relay: what a guest
/// returns is bounded by the instance's memory cap, not by that default,
/// so a large layer's output or state export does not trap.
#[test]
fn a_result_larger_than_wasmtimes_default_transfer_limit_comes_back() {
    let sb = sandbox(1 << 30, Duration::from_secs(60));
    let mut relay = sb
        .instantiate(sb.guest(GuestKind::Relay).unwrap())
        .expect("relay instantiates");
    relay.load(b"identity", &config()).expect("relay loads");
    let n = 40 << 20;
    let input = Tensor {
        shape: vec![n / 1024, 1024],
        data: vec![0.5; n],
    };
    let out = relay.forward(&input).expect("a 160 MiB result comes back");
    assert_eq!(out.data.len(), n);
    assert!(out.data.iter().all(|&v| v == 0.5));
}
