//! The node's descriptor: signed with its identity, published to every
//! bootstrap, re-signed and re-published as the mix keys rotate.
//!
//! Start-up returns only once a bootstrap has accepted the descriptor
//! ([`join`]), so "started" means "listed in the pool"; afterwards
//! [`refresh_loop`] keeps it fresh and retries sooner after a failed round.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use mixnn_p2p::{SwarmHandle, unix_now};
use mixnn_protocol::{
    Capacity, DirectoryRequest, DirectoryResponse, MixKeyInfo, NodeDescriptor, SOFTWARE_VERSION,
    SignedDescriptor,
};
use tokio::sync::watch;
use tracing::warn;

use super::{NodeError, lock};
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::mixkeys::MixKeys;

/// What the node's background tasks share.
pub(super) struct Shared {
    pub cfg: NodeConfig,
    pub signing: SigningKey,
    pub peer_id: PeerId,
    pub addrs: Vec<String>,
    pub bootstraps: Vec<PeerId>,
    pub mix_keys: MixKeys,
    pub descriptor: Mutex<SignedDescriptor>,
    pub swarm: SwarmHandle,
    pub metrics: Arc<Metrics>,
}

/// Publishes until one bootstrap accepts, retried every second until the
/// configured timeout (a bootstrap that is still starting gets a second
/// chance). `Err` carries the last round's failures.
pub(super) async fn join(shared: &Shared) -> Result<(), Vec<String>> {
    let secs = shared.cfg.bootstrap_timeout_secs;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let failures = shared.publish().await;
        if failures.len() < shared.bootstraps.len() {
            for f in &failures {
                warn!("{f}");
            }
            return Ok(());
        }
        if tokio::time::Instant::now() + Duration::from_secs(1) >= deadline {
            for f in &failures {
                warn!("{f}");
            }
            return Err(failures);
        }
        warn!(failures = ?failures, "no bootstrap reachable yet; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(super) fn sign_descriptor(
    cfg: &NodeConfig,
    signing: &SigningKey,
    peer_id: PeerId,
    addrs: &[String],
    mix_keys: &MixKeys,
    now: u64,
) -> Result<SignedDescriptor, NodeError> {
    let (epoch, public) = mix_keys
        .current(now)
        .ok_or_else(|| NodeError::Transport("no mix key for the current epoch".into()))?;
    let desc = NodeDescriptor {
        format: mixnn_protocol::descriptor::DESCRIPTOR_FORMAT,
        peer_id: peer_id.to_base58(),
        identity_key: signing.verifying_key().to_bytes(),
        addrs: addrs.to_vec(),
        mix_key: MixKeyInfo {
            epoch,
            epoch_secs: cfg.epoch_secs,
            public: public.to_bytes(),
        },
        capacity: Capacity {
            jobs: cfg.jobs,
            memory_mib: cfg.guest_memory_mib,
        },
        software: SOFTWARE_VERSION.to_string(),
        issued_at: now,
        expires_at: now + cfg.descriptor_ttl_secs,
    };
    Ok(SignedDescriptor::sign(&desc, signing)?)
}

impl Shared {
    /// Rotates the mix keys if the epoch changed and re-signs the descriptor.
    pub(super) fn refresh_descriptor(&self) -> Result<(), NodeError> {
        let now = unix_now();
        self.mix_keys.write(|s| s.rotate(now))?;
        let d = sign_descriptor(
            &self.cfg,
            &self.signing,
            self.peer_id,
            &self.addrs,
            &self.mix_keys,
            now,
        )?;
        if let Some((epoch, _)) = self.mix_keys.current(now) {
            self.metrics.mix_epoch.store(epoch, Ordering::Relaxed);
        }
        *lock(&self.descriptor) = d;
        Ok(())
    }

    /// Publishes the current descriptor to every bootstrap at once; returns
    /// a line per failure.
    pub(super) async fn publish(&self) -> Vec<String> {
        let signed = lock(&self.descriptor).clone();
        let attempts = self.bootstraps.iter().map(|&b| {
            let req = DirectoryRequest::Publish(signed.clone());
            async move { (b, self.swarm.directory(b, req).await) }
        });
        let mut failures = Vec::new();
        for (b, r) in futures::future::join_all(attempts).await {
            match r {
                Ok(DirectoryResponse::Published) => {
                    self.metrics.publish_ok.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(bootstrap = %b, "descriptor published");
                }
                Ok(DirectoryResponse::Rejected { reason }) => {
                    self.metrics.publish_failed.fetch_add(1, Ordering::Relaxed);
                    failures.push(format!("bootstrap {b} rejected the descriptor: {reason}"));
                }
                Ok(_) => {
                    self.metrics.publish_failed.fetch_add(1, Ordering::Relaxed);
                    failures.push(format!("bootstrap {b} gave an unexpected answer"));
                }
                Err(e) => {
                    self.metrics.publish_failed.fetch_add(1, Ordering::Relaxed);
                    failures.push(format!("bootstrap {b} unreachable: {e}"));
                }
            }
        }
        failures
    }
}

/// Time from now until unix second `at` (a millisecond at least). Why not
/// whole seconds: a wait counted from the truncated current second woke up
/// to a second after the epoch changed, a second in which the node had no
/// key for the current epoch (its cover loops failed) and published none.
fn until(at: u64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(at)
        .saturating_sub(now)
        .max(Duration::from_millis(1))
}

/// Re-signs and re-publishes every `refresh_secs` and at each epoch change;
/// after a failed round it retries sooner (every 10 s), logging each failure.
pub(super) async fn refresh_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut failed = false;
    loop {
        let now = unix_now();
        let next_epoch = shared.mix_keys.read(|s| s.next_rotation(now));
        let mut wait = Duration::from_secs(shared.cfg.refresh_secs).min(until(next_epoch));
        if failed {
            wait = wait.min(Duration::from_secs(10));
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if let Err(e) = shared.refresh_descriptor() {
            warn!(error = %e, "re-signing the descriptor");
            failed = true;
            continue;
        }
        let failures = shared.publish().await;
        for f in &failures {
            warn!("{f}");
        }
        failed = failures.len() == shared.bootstraps.len();
    }
}
