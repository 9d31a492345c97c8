//! [`Node::serve_jobs`]: the packet shell, job expiry and cover traffic
//! attached to a running node, and what it saw of each job.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{Node, NodeError};
use crate::jobs::{JobLimits, Jobs};
use crate::processor::Processor;
use crate::views::JobView;

impl Node {
    /// Starts serving jobs: packets from the inbox go through the Sphinx
    /// processor to layers in `sandbox`, and the node sends cover traffic.
    /// Without this call the inbox is left to the caller (tests, tools).
    pub fn serve_jobs(&mut self, sandbox: Arc<mixnn_sandbox::Sandbox>) -> Result<(), NodeError> {
        self.serve_jobs_with(sandbox, None)
    }

    /// [`Node::serve_jobs`] for chaos tests: the node's layers corrupt
    /// their outputs once `lie` is set (see `Jobs::with_lie_switch`).
    #[doc(hidden)]
    pub fn serve_jobs_with(
        &mut self,
        sandbox: Arc<mixnn_sandbox::Sandbox>,
        lie: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<(), NodeError> {
        let inbox = self
            .inbox
            .take()
            .ok_or_else(|| NodeError::Transport("the packet inbox is taken already".into()))?;
        let cfg = &self.shared.cfg;
        if cfg.jobs > 0 {
            warm_up(sandbox.clone());
        }
        let jobs = Jobs::new(
            sandbox,
            JobLimits {
                max_jobs: cfg.jobs as usize,
                max_shard_bytes: cfg.max_shard_bytes,
                idle: Duration::from_secs(cfg.job_idle_secs),
            },
            self.shared.metrics.clone(),
        );
        let jobs = Arc::new(match lie {
            Some(switch) => jobs.with_lie_switch(switch),
            None => jobs,
        });
        let geometry = mixnn_sphinx::Geometry::default();
        let slots = crate::cover::slot_queue(&geometry, cfg);
        let mut processor = Processor::new(
            geometry.clone(),
            self.shared.mix_keys.clone(),
            jobs.clone(),
            self.sender.clone(),
            self.shared.metrics.clone(),
            crate::processor::ReplayStore {
                data_dir: Some(&cfg.data_dir),
                max_per_epoch: cfg.replay_tags_per_epoch,
            },
        );
        if let Some((q, _)) = &slots {
            processor = processor.with_slots(q.clone());
        }
        let processor = Arc::new(processor);
        let cover = crate::cover::CoverLinks {
            geometry,
            keys: self.shared.mix_keys.clone(),
            sender: self.sender.clone(),
            metrics: self.shared.metrics.clone(),
            self_id: self.node_id(),
            loops: processor.loops(),
            slots,
        };
        self.views = Some(processor.views());
        let stop = self.stop.subscribe();
        self.tasks.push(crate::processor::spawn(
            processor,
            inbox,
            cfg.relay_workers,
            cfg.workers,
            stop,
        ));
        (self.tasks).push(crate::processor::spawn_expiry(jobs, self.stop.subscribe()));
        self.tasks.push(crate::cover::spawn(
            cover,
            self.shared.swarm.clone(),
            self.shared.bootstraps.clone(),
            cfg,
            self.stop.subscribe(),
        ));
        Ok(())
    }

    /// How routing info names this node (its ed25519 identity key).
    pub fn node_id(&self) -> mixnn_sphinx::NodeId {
        crate::hop::node_id_of(&self.shared.signing.verifying_key().to_bytes())
    }

    /// What this node saw of each job it served (empty before
    /// [`serve_jobs`](Self::serve_jobs)).
    pub fn job_views(&self) -> Vec<JobView> {
        self.views.as_ref().map_or_else(Vec::new, |v| v.snapshot())
    }
}

/// Compiles (or loads from the cache) the standard guest off the packet
/// path, so that the first job's init does not stall a worker for the
/// seconds Cranelift needs while packets for other jobs and cover traffic
/// pile up behind it. A job that arrives earlier waits for this same compile.
fn warm_up(sandbox: Arc<mixnn_sandbox::Sandbox>) {
    let spawned = std::thread::Builder::new()
        .name("guest-warm-up".into())
        .spawn(move || {
            let start = std::time::Instant::now();
            match sandbox.guest(mixnn_sandbox::GuestKind::Standard) {
                Ok(g) => info!(
                    ms = start.elapsed().as_millis() as u64,
                    from_cache = g.from_cache(),
                    "layer guest ready"
                ),
                Err(e) => warn!(error = %e, "the layer guest does not compile; jobs will fail"),
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the guest warm-up; the first job compiles it");
    }
}
