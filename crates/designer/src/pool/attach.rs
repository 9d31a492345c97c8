//! A cascade left deployed after training (`train --pool --keep-deployed`)
//! and attached to again by a later designer process (`mixnn infer`).
//!
//! Nothing in the job protocol ties a job to the designer process that
//! deployed it: a hop knows the job by its job handle, every packet's
//! route is built afresh by the designer (fresh link keys per packet), and
//! the exit of a route is whatever identity the designer names, reached
//! over the connection it opens to the cascade's ends. So a new process
//! that knows each hop's node, role and job handle can build the same
//! packets as the one that deployed them. Those handles are the job's
//! capability on each node, so the record is written 0600 in the job
//! directory like the job secret; the hops' mix keys are not in it (they
//! rotate): they are read from the directory at attach time.
//!
//! The dummies' sign masks are rebuilt from the job secret, as a resume
//! rebuilds them (`placement::DUMMY_MASKS`); a shard the designer keeps
//! (`keep_first`/`keep_last`) is loaded here with its state from the
//! checkpoint the deployed hops hold (the last one training wrote).
//!
//! A node forgets a job that stays idle longer than its `job_idle_secs`
//! (900 s by default), and a node that stopped loses it: then the attach
//! (or its first answer) fails with an error that says so, and the job's
//! latest checkpoint can be deployed again instead.

use mixnn_grad::pb;
use mixnn_layer::{LossKind, TrainConfig};
use mixnn_sandbox::Sandbox;
use mixnn_sphinx::{Geometry, JobHandle, NodeId};
use serde::{Deserialize, Serialize};

use super::deploy::CONNECT_WAIT;
use super::detect::Detect;
use super::endpoint::Endpoint;
use super::onion::{self, Hop, Role};
use super::placement::{self, JobSecret};
use super::rekey::KeyWatch;
use super::repair::Spares;
use super::{NetworkReport, PoolCascade, PoolError, PoolOptions, describe_role, directory, mask};
use crate::DesignerError;
use crate::backend::{LayerBackend, layer_config, load_layer};
use crate::cascade::loss_for;

/// Format version of [`Deployment`].
pub const DEPLOYMENT_VERSION: u32 = 1;

/// What a later process needs to use a deployed cascade again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Deployment {
    /// [`DEPLOYMENT_VERSION`].
    pub version: u32,
    /// The hops in cascade order.
    pub hops: Vec<DeployedHop>,
    /// Payload class of the job's packets.
    pub class: usize,
    /// Control packets per round.
    pub pad_hops: usize,
    /// End-to-end section of packets with a tensor (the job's largest
    /// batch decides it: a test batch must not exceed it).
    pub compute_section: usize,
    /// Shards of the model.
    pub shards: usize,
    /// The designer runs the first shard.
    pub keep_first: bool,
    /// The designer runs the last shard.
    pub keep_last: bool,
    /// Step of the checkpoint whose state the hops hold.
    pub step: u64,
}

/// One hop of a [`Deployment`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeployedHop {
    /// The node's ed25519 identity key, hex.
    pub node: String,
    /// Its peer id.
    pub peer: String,
    /// The shard it serves; `None`: a dummy.
    pub layer: Option<usize>,
    /// The job handle it knows the job by, hex (a capability: 0600).
    pub job: String,
}

fn bad(reason: impl std::fmt::Display) -> DesignerError {
    DesignerError::Pool(format!("the deployment record: {reason}"))
}

/// The record's sizes against the geometry, before any is used to size a
/// buffer or a batch: the record is a file (owner-only, but it can be
/// damaged or edited), and a huge section or pad count would otherwise
/// abort the process on allocation.
fn check_sizes(dep: &Deployment, g: &Geometry) -> Result<(), DesignerError> {
    let control = onion::control_section_len(g, dep.class)?;
    if dep.compute_section == 0 || dep.compute_section > control {
        return Err(bad(format!(
            "a compute section of {} bytes, the class's packets hold at most {control}",
            dep.compute_section
        )));
    }
    if dep.pad_hops == 0 || dep.pad_hops > g.max_hops() {
        return Err(bad(format!(
            "{} hops per control round, the geometry has 1 to {}",
            dep.pad_hops,
            g.max_hops()
        )));
    }
    Ok(())
}

fn unhex(what: &str, h: &str) -> Result<[u8; 32], DesignerError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out).map_err(|e| bad(format!("{what} {h:?}: {e}")))?;
    Ok(out)
}

impl PoolCascade {
    /// The record of this cascade as deployed now, its hops holding the
    /// state of checkpoint `step`.
    pub fn deployment(&self, step: u64) -> Deployment {
        Deployment {
            version: DEPLOYMENT_VERSION,
            hops: (self.hops.iter())
                .map(|h| DeployedHop {
                    node: hex::encode(h.node.0),
                    peer: h.peer.to_base58(),
                    layer: match h.role {
                        Role::Layer(i) => Some(i),
                        Role::Dummy => None,
                    },
                    job: hex::encode(h.job.0),
                })
                .collect(),
            class: self.class,
            pad_hops: self.pad_hops,
            compute_section: self.compute_section,
            shards: self.shards,
            keep_first: self.first.is_some(),
            keep_last: self.last.is_some(),
            step,
        }
    }

    /// Attaches to the cascade `dep` records (see the module doc): reads
    /// the directory for the hops' current keys and addresses, links to
    /// the ends, and loads the kept shards here with their `states` (one
    /// per shard, the checkpoint of `dep.step`; only the kept ones are
    /// read). Nothing is sent to the hops: they hold the job already.
    pub fn attach(
        dep: &Deployment,
        shards: &[pb::ModelProto],
        base: &TrainConfig,
        sandbox: Option<&Sandbox>,
        opts: &PoolOptions,
        states: &[Vec<u8>],
    ) -> Result<Self, DesignerError> {
        if dep.version != DEPLOYMENT_VERSION {
            return Err(bad(format!(
                "version {}, this build reads {DEPLOYMENT_VERSION}",
                dep.version
            )));
        }
        if dep.shards != shards.len() || dep.hops.is_empty() || states.len() != shards.len() {
            return Err(bad(format!(
                "{} shards and {} hops recorded, the model has {} shards and the checkpoint {} states",
                dep.shards,
                dep.hops.len(),
                shards.len(),
                states.len()
            )));
        }
        let g = Geometry::default();
        check_sizes(dep, &g)?;
        let ep = Endpoint::start(&opts.bootstrap, &g)?;
        let quorum = directory::resolve_quorum(opts.quorum, ep.bootstraps())?;
        // One node listed is enough to read: each hop is then looked up
        // by identity, and a missing one is named (not waited for).
        let pool = ep.directory(1, quorum, opts.distinct, opts.wait_for_nodes, &[])?;
        let hops = attached_hops(dep, &pool)?;
        let roles: Vec<Role> = hops.iter().map(|h| h.role).collect();
        let secret = JobSecret::new(opts.job_secret)?;
        let masks = mask::plan(&roles, shards, &mut secret.rng(placement::DUMMY_MASKS))?;
        let loss = loss_for(&masks.shards[dep.shards - 1]);
        let local = |i: usize| -> Result<Box<dyn LayerBackend>, DesignerError> {
            let bytes = mixnn_shard::encode(&masks.shards[i]);
            let cfg = layer_config(base, i, dep.shards, loss);
            let mut l = load_layer(opts.local_engine, i, &bytes, cfg, sandbox)?;
            l.import_state(&states[i])?;
            Ok(l)
        };
        let first = dep.keep_first.then(|| local(0)).transpose()?;
        let last = dep.keep_last.then(|| local(dep.shards - 1)).transpose()?;
        let me = PoolCascade {
            net: NetworkReport {
                cascade: (hops.iter())
                    .map(|h| (describe_role(h.role), h.peer.to_base58()))
                    .collect(),
                payload_class: dep.class,
                packet_len: g.packet_len(dep.class).map_err(PoolError::from)?,
                ..Default::default()
            },
            control_section: onion::control_section_len(&g, dep.class)?,
            prebuilt: super::prebuild::Prebuilder::start(g.clone()),
            ep,
            g,
            class: dep.class,
            keys: KeyWatch::new(&hops, &pool, quorum),
            spares: Spares::new(&hops, &pool, quorum, opts.distinct),
            hops,
            first,
            last,
            shards: dep.shards,
            branch: false,
            rng: placement::os_rng()?,
            compute_section: dep.compute_section,
            pad_hops: dep.pad_hops,
            folds: masks.folds,
            secret,
            detect: Detect::new(opts.timeout),
            witness: None,
            readings: Vec::new(),
            test_window: 1,
        };
        me.link_ends()?;
        Ok(me)
    }

    /// Opens the packet links to the cascade's two ends.
    fn link_ends(&self) -> Result<(), DesignerError> {
        for (t, _) in self.end_links() {
            let h = &self.hops[t];
            let addrs = self.spares.dial.get(t).map_or(&[][..], Vec::as_slice);
            self.ep
                .connect(h.peer, addrs, CONNECT_WAIT)
                .map_err(|e| PoolError::CascadeGone {
                    hop: t + 1,
                    role: describe_role(h.role),
                    peer: h.peer.to_base58(),
                    reason: format!("it cannot be reached: {e}"),
                })?;
        }
        Ok(())
    }
}

/// The recorded hops with the keys the directory lists for them now.
fn attached_hops(
    dep: &Deployment,
    pool: &[mixnn_protocol::NodeDescriptor],
) -> Result<Vec<Hop>, DesignerError> {
    let mut hops = Vec::with_capacity(dep.hops.len());
    for (t, d) in dep.hops.iter().enumerate() {
        let node = unhex("node", &d.node)?;
        let role = match d.layer {
            Some(i) if i < dep.shards => Role::Layer(i),
            Some(i) => return Err(bad(format!("hop {} serves shard {i}", t + 1))),
            None => Role::Dummy,
        };
        let listed = pool
            .iter()
            .find(|p| p.identity_key == node)
            .ok_or_else(|| PoolError::CascadeGone {
                hop: t + 1,
                role: describe_role(role),
                peer: d.peer.clone(),
                reason: "its node is no longer in the directory (stopped?)".into(),
            })?;
        // The directory's entry gives the current key; the recorded
        // handle is what the node knows the job by.
        let mut hop = placement::hop(listed, role, &mut placement::os_rng()?)?;
        if hop.peer.to_base58() != d.peer {
            return Err(bad(format!(
                "hop {}: peer {} does not match its identity",
                t + 1,
                d.peer
            )));
        }
        hop.node = NodeId(node);
        hop.job = JobHandle(unhex("job handle", &d.job)?);
        hops.push(hop);
    }
    Ok(hops)
}

impl PoolCascade {
    /// The model's shards with the trained parameters of `states` (one
    /// per shard, of this masked cascade, as a checkpoint holds them), the
    /// dummies' masks taken out: what the same model trained in one process
    /// would hold, for the single-process comparison of `mixnn infer`.
    /// Each state is read by a native layer of its own shard (the masks
    /// change no shape), exported, and un-folded as the export phase does.
    pub fn plain_shards(
        &self,
        shards: &[pb::ModelProto],
        base: &TrainConfig,
        states: &[Vec<u8>],
    ) -> Result<Vec<pb::ModelProto>, DesignerError> {
        let loss = match shards.last() {
            Some(l) => loss_for(l),
            None => LossKind::None,
        };
        let mut out = Vec::with_capacity(shards.len());
        for (i, (shard, state)) in shards.iter().zip(states).enumerate() {
            let bytes = mixnn_shard::encode(shard);
            let cfg = layer_config(base, i, shards.len(), loss);
            let mut l = load_layer(crate::EngineKind::Native, i, &bytes, cfg, None)?;
            l.import_state(state)?;
            let mut params = l.export_params()?;
            for (j, fold, m) in &self.folds {
                if *j == i {
                    fold.apply_to_params(&mut params, m);
                }
            }
            out.push(crate::cascade::with_params(shard, &params)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_with_impossible_sizes_is_refused_before_use() {
        let g = Geometry::default();
        let class = 64 << 10;
        let ok = Deployment {
            version: DEPLOYMENT_VERSION,
            hops: Vec::new(),
            class,
            pad_hops: g.max_hops(),
            compute_section: onion::compute_section_len(&[64]),
            shards: 1,
            keep_first: false,
            keep_last: false,
            step: 0,
        };
        assert!(check_sizes(&ok, &g).is_ok());
        for (section, pad) in [
            (usize::MAX, g.max_hops()),
            (0, 1),
            (100, 0),
            (100, usize::MAX),
        ] {
            let dep = Deployment {
                compute_section: section,
                pad_hops: pad,
                ..ok.clone()
            };
            let e = check_sizes(&dep, &g).expect_err("refused").to_string();
            assert!(e.contains("the deployment record"), "{e}");
        }
        let odd_class = Deployment { class: 12345, ..ok };
        assert!(check_sizes(&odd_class, &g).is_err());
    }
}
