//! The packet shell on packets built in memory, with a real key store in a
//! data dir and a real (unconnected) packet sender.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use mixnn_p2p::{LinkMetrics, PeerSetup, QueueLimits, Role, SizeClasses, unix_now};
use mixnn_sphinx::{Geometry, MixKeyPair, Op};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::{Pools, Processor, ReplayStore};
use crate::hop::tests::kit::{self, Slot, World};
use crate::jobs::{JobLimits, Jobs};
use crate::metrics::Metrics;
use crate::mixkeys::{MixKeyStore, MixKeys};

/// A processor over the keys in `dir`, and a designer's side that builds
/// packets for its current key.
struct Harness {
    processor: Arc<Processor>,
    jobs: Arc<Jobs>,
    metrics: Arc<Metrics>,
    world: World,
    _stop: watch::Sender<bool>,
}

fn harness(rt: &Runtime, dir: &Path, max_tags: usize) -> Harness {
    let now = unix_now();
    let store = MixKeyStore::open(dir, 3600, 600, now).unwrap();
    let keys = MixKeys(Arc::new(std::sync::RwLock::new(store)));
    let (epoch, _) = keys.current(now).unwrap();
    let secret = keys.secret(epoch, now).unwrap();
    let key = MixKeyPair::from_secret_bytes(u32::try_from(epoch).unwrap(), secret.to_bytes());
    let geometry = Geometry::default();
    let sizes: Vec<u32> = geometry
        .size_classes()
        .iter()
        .map(|c| (geometry.header_len() + c) as u32)
        .collect();
    let (stop_tx, stop) = watch::channel(false);
    let peer = rt
        .block_on(mixnn_p2p::start_pool_peer(PeerSetup {
            keypair: libp2p::identity::Keypair::generate_ed25519(),
            role: Role::Client,
            listen: &[],
            settle: None,
            bootstraps: &[],
            sizes: SizeClasses::new(&sizes),
            inbound: QueueLimits {
                packets: 16,
                bytes: 16 << 20,
            },
            outbound: QueueLimits {
                packets: 1024,
                bytes: 64 << 20,
            },
            metrics: Arc::new(LinkMetrics::default()),
            stop,
        }))
        .unwrap();
    let metrics = Arc::new(Metrics::new("test".into()));
    let limits = JobLimits {
        max_jobs: 8,
        max_shard_bytes: 1 << 20,
        idle: Duration::from_secs(60),
    };
    let jobs = Arc::new(Jobs::new(kit::sandbox(), limits, metrics.clone()));
    let processor = Arc::new(Processor::new(
        geometry,
        keys,
        jobs.clone(),
        peer.sender,
        metrics.clone(),
        ReplayStore {
            data_dir: Some(dir),
            max_per_epoch: max_tags,
        },
    ));
    Harness {
        processor,
        jobs,
        metrics,
        world: World::with_key(key),
        _stop: stop_tx,
    }
}

fn relay_packet(world: &mut World) -> Vec<u8> {
    world.cover_packet(crate::cover::Kind::Drop, true).0
}

/// A packet is relayed, the node's processor restarts from its data dir,
/// and the same packet comes again: it is refused and counted as a replay
/// (on main the cache was in memory, so the restarted node relayed it
/// again, re-sealed under the same keys).
#[test]
fn a_packet_replayed_after_a_restart_is_refused() {
    let rt = Runtime::new().unwrap();
    let _rt = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let from = PeerId::random();
    let packet = {
        let mut h = harness(&rt, dir.path(), 1 << 10);
        let packet = relay_packet(&mut h.world);
        h.processor.handle(from, packet.clone());
        assert_eq!(h.metrics.ops("relay"), 1);
        packet
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for f in std::fs::read_dir(dir.path().join(super::REPLAY_DIR)).unwrap() {
            let mode = f.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "tag files are owner-only");
        }
    }
    let h = harness(&rt, dir.path(), 1 << 10);
    h.processor.handle(from, packet);
    assert_eq!(h.metrics.ops("relay"), 0);
    assert_eq!(h.metrics.processing_dropped("replay"), 1);
}

/// While every packet of a job waits on its guest (the job's lock is held,
/// as during a long guest call), relay packets through the same node keep
/// flowing. On main, relaying and guest calls shared the workers: two
/// waiting job packets stalled every relay behind them.
#[test]
fn relays_flow_while_a_guest_call_runs() {
    let rt = Runtime::new().unwrap();
    let _rt = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(&rt, dir.path(), 1 << 10);
    let pools = Pools::start(h.processor.clone(), 1, 2);
    let from = PeerId::random();
    let job = [5u8; 32];
    let jobs = h.jobs.clone();
    jobs.while_busy(job, || {
        for _ in 0..4 {
            let x = kit::tensor(&[1, 2], vec![1.0, 2.0]);
            let (packet, _) = h.world.packet(Slot::new(Op::Forward, job), Some(x), None);
            assert!(pools.submit(from, packet));
        }
        for _ in 0..20 {
            assert!(pools.submit(from, relay_packet(&mut h.world)));
        }
        let relayed = (0..600).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            h.metrics.ops("relay") == 20
        });
        assert!(
            relayed,
            "relays stalled behind the guest: {}",
            h.metrics.ops("relay")
        );
        assert_eq!(h.metrics.ops("forward"), 0, "the job's packets still wait");
    });
}
