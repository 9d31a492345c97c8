//! Headers built ahead, on a thread of their own.
//!
//! Why: a message's Sphinx header costs two scalar multiplications per
//! slot (a training step's route has about ten), and it does not depend on
//! what the message carries. Built on the designer's critical path it adds
//! that to every step; built while the previous message is in flight it
//! costs a core that is otherwise waiting. Training repeats the same route
//! patterns step after step, so after each message the header for the same
//! pattern is built ahead for the next one.
//!
//! A header is used at most once and only for the exact route it was built
//! for (the slots and every hop's node, key epoch, mix key and job handle,
//! hashed): after a repair or a key refresh the old ones are simply never
//! taken. The thread draws its randomness from the OS, like the designer's
//! own packets do; nothing here touches the training's seeded randomness.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use mixnn_sphinx::{Geometry, NodeId};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::onion::{self, Header, Hop, Slot};

/// Headers kept ready at once (one per route pattern in use).
const MAX_READY: usize = 8;
/// Requests waiting for the thread.
const MAX_WAITING: usize = 4;

/// A route pattern: the hash of the slots and their hops.
pub(super) type Key = [u8; 32];

/// The pattern of `slots` over `hops`.
pub(super) fn key(slots: &[Slot], hops: &[Hop]) -> Key {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for s in slots {
        h.update((s.hop as u64).to_le_bytes());
        h.update([s.op as u8, s.flags]);
        if let Some(hop) = hops.get(s.hop) {
            h.update(hop.node.0);
            h.update(hop.epoch.to_le_bytes());
            h.update(hop.mix_key.to_bytes());
            h.update(hop.job.0);
        }
    }
    h.finalize().into()
}

struct Request {
    key: Key,
    class: usize,
    hops: Vec<Hop>,
    slots: Vec<Slot>,
    designer: NodeId,
}

/// The ahead-of-time header builder of one cascade.
pub(super) struct Prebuilder {
    tx: SyncSender<Request>,
    ready: Arc<Mutex<HashMap<Key, Header>>>,
}

impl Prebuilder {
    /// Starts the thread for packets of `g`; it ends with the builder.
    pub(super) fn start(g: Geometry) -> Option<Self> {
        let (tx, rx) = sync_channel::<Request>(MAX_WAITING);
        let ready = Arc::new(Mutex::new(HashMap::new()));
        let r = ready.clone();
        std::thread::Builder::new()
            .name("mixnn-headers".into())
            .spawn(move || run(&g, &rx, &r))
            .ok()?;
        Some(Self { tx, ready })
    }

    /// The header built ahead for `key`, if there is one.
    pub(super) fn take(&self, key: &Key) -> Option<Header> {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
    }

    /// Asks for a header for `slots` over `hops` to be built ahead (a
    /// full queue skips the request: the message then builds its own).
    pub(super) fn request(
        &self,
        key: Key,
        class: usize,
        hops: &[Hop],
        slots: &[Slot],
        designer: NodeId,
    ) {
        let req = Request {
            key,
            class,
            hops: hops.to_vec(),
            slots: slots.to_vec(),
            designer,
        };
        if let Err(TrySendError::Disconnected(_)) = self.tx.try_send(req) {
            tracing::debug!("the header thread has stopped");
        }
    }
}

fn run(g: &Geometry, rx: &Receiver<Request>, ready: &Mutex<HashMap<Key, Header>>) {
    let mut rng = ChaCha20Rng::from_entropy();
    while let Ok(r) = rx.recv() {
        let built = onion::header(g, r.class, &r.hops, &r.slots, r.designer, &mut rng);
        let Ok(h) = built else { continue };
        let mut m = ready.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_READY && !m.contains_key(&r.key) {
            m.clear();
        }
        m.insert(r.key, h);
    }
}
