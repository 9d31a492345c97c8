//! Deployment (init, op 0): the cascade's nodes chosen, its ends
//! connected, the kept shards loaded here and every hop sent its shard.

use std::time::Duration;

use mixnn_grad::pb;
use mixnn_layer::{LossKind, TrainConfig};
use mixnn_protocol::job::{LayerKind, LayerSpec};
use mixnn_sandbox::Sandbox;
use mixnn_sphinx::Geometry;

use super::detect::Detect;
use super::endpoint::Endpoint;
use super::onion::{self, Role};
use super::placement::{self, Layout};
use super::rekey::KeyWatch;
use super::repair::Spares;
use super::witness::WitnessPlan;
use super::{NetworkReport, PoolCascade, PoolError, PoolOptions, describe_role, payload_class};
use super::{bringup, directory};
use super::{mask, prebuild};
use crate::DesignerError;
use crate::backend::{LayerBackend, layer_config, load_layer};
use crate::cascade::loss_for;

/// How long connecting to a cascade end (dial, Noise, stream) may take.
pub(super) const CONNECT_WAIT: Duration = Duration::from_secs(30);

impl PoolCascade {
    /// Chooses nodes, places dummies and deploys every hop (init, op 0).
    pub fn deploy(
        shards: &[pb::ModelProto],
        base: &TrainConfig,
        sandbox: Option<&Sandbox>,
        opts: &PoolOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, DesignerError> {
        let g = Geometry::default();
        let layout = Layout::new(shards.len(), opts, &g)?;
        let ep = Endpoint::start(&opts.bootstrap, &g)?;
        let quorum = directory::resolve_quorum(opts.quorum, ep.bootstraps())?;
        progress(&directory::reading_note(
            layout.count,
            quorum,
            ep.bootstraps(),
        ));
        let pool = ep.directory(
            layout.count,
            quorum,
            opts.distinct,
            opts.wait_for_nodes,
            &opts.exclude,
        )?;
        let mut rng = placement::os_rng()?;
        let secret = placement::JobSecret::new(opts.job_secret)?;
        let hops = placement::choose(&pool, &layout, opts, &secret, &mut rng)?;
        let roles: Vec<Role> = hops.iter().map(|h| h.role).collect();
        let masks = mask::plan(&roles, shards, &mut secret.rng(placement::DUMMY_MASKS))?;
        let shards = &masks.shards[..];
        let class = match opts.class {
            Some(c) => c,
            None => payload_class(&g, shards, layout.lo, layout.hi, &opts.batches)?,
        };
        // A branch computes no loss: it ends in the designer's merge.
        let loss = if opts.branch {
            LossKind::None
        } else {
            loss_for(&shards[layout.shards - 1])
        };
        let local = |i: usize| -> Result<Box<dyn LayerBackend>, DesignerError> {
            let bytes = mixnn_shard::encode(&shards[i]);
            let cfg = layer_config(base, i, layout.shards, loss);
            load_layer(opts.local_engine, i, &bytes, cfg, sandbox)
        };
        let first = opts.keep_first.then(|| local(0)).transpose()?;
        let last = opts
            .keep_last
            .then(|| local(layout.shards - 1))
            .transpose()?;
        let control_section = onion::control_section_len(&g, class)?;
        let mut spares = Spares::new(&hops, &pool, quorum, opts.distinct);
        spares.avoid = opts.exclude.clone();
        let mut me = PoolCascade {
            net: NetworkReport {
                cascade: hops
                    .iter()
                    .map(|h| (describe_role(h.role), h.peer.to_base58()))
                    .collect(),
                payload_class: class,
                packet_len: g.packet_len(class).map_err(PoolError::from)?,
                ..Default::default()
            },
            prebuilt: prebuild::Prebuilder::start(g.clone()),
            ep,
            g,
            class,
            keys: KeyWatch::new(&hops, &pool, quorum),
            spares,
            hops,
            first,
            last,
            shards: layout.shards,
            branch: opts.branch,
            rng,
            control_section,
            compute_section: onion::compute_section_len(&opts.batches)
                + if opts.witness {
                    mixnn_protocol::job::witness::WITNESS_AREA
                } else {
                    0
                },
            pad_hops: layout.pad_hops,
            folds: masks.folds,
            secret,
            detect: Detect::new(opts.timeout),
            witness: None,
            readings: Vec::new(),
            test_window: 1,
        };
        if opts.witness {
            me.witness = Some(WitnessPlan::new(&me.secret, me.hops.len()));
        }
        me.init_all(shards, &masks.ops, base, loss, progress)?;
        Ok(me)
    }

    /// Sends every hop its guest, shard and training settings: a dummy its
    /// relay op with its secret sign mask (`ops`).
    fn init_all(
        &mut self,
        shards: &[pb::ModelProto],
        ops: &[Option<String>],
        base: &TrainConfig,
        loss: LossKind,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), DesignerError> {
        let mut inits = Vec::with_capacity(self.hops.len());
        for (t, (hop, op)) in self.hops.iter().zip(ops).enumerate() {
            let (kind, shard, train) = match hop.role {
                Role::Layer(i) => (
                    LayerKind::Standard,
                    mixnn_shard::encode(&shards[i]),
                    layer_config(base, i, self.shards, loss),
                ),
                Role::Dummy => (
                    LayerKind::Relay(op.clone().unwrap_or_else(|| "identity".into())),
                    Vec::new(),
                    base.clone(),
                ),
            };
            progress(&format!(
                "init: {} on hop {} ({} bytes)",
                describe_role(hop.role),
                t + 1,
                shard.len()
            ));
            let spec = LayerSpec {
                kind,
                train,
                shard_len: shard.len() as u64,
                witness: self.witness.as_ref().and_then(|w| w.for_hop(t)),
            };
            inits.push((spec, shard));
        }
        self.spares.inits = inits;
        let all = (0..self.hops.len()).collect();
        let replaced = bringup::bring_up(self, all, bringup::MAX_REPLACEMENTS)?;
        if !replaced.is_empty() {
            progress(&format!(
                "{} node(s) could not be reached and were replaced: {}",
                replaced.len(),
                replaced.join("; ")
            ));
            self.net.unreachable.extend(replaced);
            self.net.cascade = (self.hops.iter())
                .map(|h| (describe_role(h.role), h.peer.to_base58()))
                .collect();
        }
        Ok(())
    }
}
