//! The guests' whole-state calls: the relay guest is stateless, and a
//! guest that answers with an absurd state is stopped by the memory cap
//! like any other call.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use mixnn_sandbox::{GuestKind, Limits, Sandbox, SandboxError, SandboxOptions, TrainConfig};

fn sandbox(memory_bytes: usize) -> Sandbox {
    Sandbox::new(SandboxOptions {
        limits: Limits {
            memory_bytes,
            call_timeout: Duration::from_secs(30),
        },
        cache_dir: None,
        ..Default::default()
    })
    .expect("sandbox starts")
}

#[test]
fn the_relay_guest_has_an_empty_state_and_takes_only_one() {
    let sb = sandbox(64 << 20);
    let mut relay = sb.instantiate(sb.guest(GuestKind::Relay).unwrap()).unwrap();
    let before = relay.export_state().expect_err("nothing loaded yet");
    assert!(
        matches!(
            before,
            SandboxError::Guest {
                call: "export-state",
                ..
            }
        ),
        "{before}"
    );
    relay.load(b"sign:01", &TrainConfig::default()).unwrap();
    assert_eq!(relay.export_state().unwrap(), Vec::<u8>::new());
    relay.import_state(&[]).unwrap();
    let err = relay.import_state(b"MXLS junk").unwrap_err();
    assert!(
        matches!(
            err,
            SandboxError::Guest {
                call: "import-state",
                ..
            }
        ),
        "{err}"
    );
    assert!(!relay.is_poisoned(), "a refused state is no trap");
}

#[test]
fn an_absurd_state_hits_the_memory_cap() {
    let sb = sandbox(32 << 20);
    let hostile = sb
        .compile("hostile", mixnn_sandbox::hostile_guest_wasm())
        .expect("compiles");
    let mut g = sb.instantiate(&hostile).expect("instantiates");
    g.load(b"ok", &TrainConfig::default()).expect("loads");
    let err = g.export_state().expect_err("64 MiB under a 32 MiB cap");
    assert!(
        matches!(
            err,
            SandboxError::OutOfMemory {
                call: "export-state",
                ..
            }
        ),
        "{err}"
    );
}
