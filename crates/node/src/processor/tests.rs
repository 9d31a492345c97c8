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
    keys: MixKeys,
    jobs: Arc<Jobs>,
    metrics: Arc<Metrics>,
    world: World,
    _stop: watch::Sender<bool>,
}

fn harness(rt: &Runtime, dir: &Path, max_tags: usize) -> Harness {
    let store = MixKeyStore::open(dir, 3600, 600, unix_now()).unwrap();
    harness_on(
        rt,
        dir,
        max_tags,
        MixKeys(Arc::new(std::sync::RwLock::new(store))),
    )
}

/// The key pair of `keys`' newest epoch, as a designer builds for it.
fn newest_key(keys: &MixKeys) -> MixKeyPair {
    let epoch = *keys.read(|s| s.epochs()).last().unwrap();
    let secret = keys.secret(epoch, unix_now()).unwrap();
    MixKeyPair::from_secret_bytes(u32::try_from(epoch).unwrap(), secret.to_bytes())
}

fn harness_on(rt: &Runtime, dir: &Path, max_tags: usize, keys: MixKeys) -> Harness {
    let key = newest_key(&keys);
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
            direct: false,
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
        keys.clone(),
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
        keys,
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

/// The node rotates its mix key and publishes the new one; a packet built
/// for it arrives a moment later and is relayed. On main the processor
/// rebuilt its key ring at most once a second, so for up to a second after
/// each rotation it refused packets for the key it had just published as of
/// an unknown epoch: the node's own cover loops at once, and a designer's
/// message whenever it refreshed the key right away, which lost the
/// message (deployment failed with "no answer from the cascade").
#[test]
fn a_packet_for_a_key_just_rotated_in_is_relayed() {
    let rt = Runtime::new().unwrap();
    let _rt = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    // The store as it was an epoch ago: the previous epoch's key only
    // (still in its grace), which the processor's ring is built from.
    let store = MixKeyStore::open(dir.path(), 3600, 7200, unix_now() - 3600).unwrap();
    let keys = MixKeys(Arc::new(std::sync::RwLock::new(store)));
    let mut h = harness_on(&rt, dir.path(), 1 << 10, keys);
    let from = PeerId::random();
    let old = relay_packet(&mut h.world);
    h.processor.handle(from, old);
    assert_eq!(h.metrics.ops("relay"), 1, "the previous epoch's key works");
    // The rotation (as the node's refresh does it), then a packet for the
    // new key at once.
    assert!(h.keys.write(|s| s.rotate(unix_now())).unwrap());
    h.world = World::with_key(newest_key(&h.keys));
    h.processor.handle(from, relay_packet(&mut h.world));
    assert_eq!(h.metrics.processing_dropped("unknown_epoch"), 0);
    assert_eq!(h.metrics.ops("relay"), 2, "the new key's packet is relayed");
}
