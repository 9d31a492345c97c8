//! `mixnn demo --kill HOP@STEP` and `--lie HOP@STEP`: the harness as a
//! chaos tool.
//!
//! `--lie` sends SIGUSR1 instead: the node (started with the hidden
//! `--chaos-lie-on-signal`) corrupts every output of its layers from then
//! on, and the designer's replicas must find it (`--verify-replicas`).
//!
//! Once the designer has done global training step STEP, the node process
//! that holds hop HOP of the cascade (1-based, as the `cascade:` line
//! prints it; after a repair, whichever node holds the hop then) gets
//! SIGKILL: no clean shutdown, its links die with it, exactly a pulled
//! plug. The rest of the pool keeps running, with spare nodes for the
//! repairs. Each kill fires once, so the steps the job replays after a
//! repair do not kill again.
//!
//! A verified job (`--verify-replicas`, implied by `--lie`) runs two
//! cascades; HOP names replica A's hop unless prefixed `b:` (`--lie
//! b:2@300`), so the liar can sit in either replica.

use std::str::FromStr;

use anyhow::{Result, bail};
use mixnn_designer::TrainObserver;
use serde::Serialize;

use super::super::harness::Killer;

/// Which hop a kill aims at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Hop N of the cascade, from 1.
    Hop(usize),
    /// The first hop that holds a dummy, wherever the job placed it.
    Dummy,
    /// The hop that holds layer K (shard K, from 0).
    Layer(usize),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Hop(n) => write!(f, "{n}"),
            Target::Dummy => write!(f, "dummy"),
            Target::Layer(k) => write!(f, "layer{k}"),
        }
    }
}

/// One `--kill HOP@STEP`: HOP is a hop number from 1, `dummy` (the first
/// dummy hop, wherever it was placed) or `layerK`, optionally prefixed
/// `a:` or `b:` for the replica (A when none is named).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KillAt {
    /// The hop to kill.
    pub target: Target,
    /// In replica B's cascade (a verified job's second one).
    pub replica_b: bool,
    /// Global training step (from 1, counted over the whole job).
    pub step: u64,
}

impl FromStr for KillAt {
    type Err = String;

    fn from_str(s: &str) -> Result<KillAt, String> {
        let bad = || {
            format!(
                "{s:?}: expected [a:|b:]HOP@STEP, e.g. 2@300 or b:2@300 (hop from 1, or dummy, \
                 or layerK, in replica A unless prefixed b:; step from 1)"
            )
        };
        let (hop, step) = s.split_once('@').ok_or_else(bad)?;
        let hop = hop.trim();
        let (replica_b, hop) = match hop.split_once(':') {
            Some(("a" | "A", h)) => (false, h.trim()),
            Some(("b" | "B", h)) => (true, h.trim()),
            Some(_) => return Err(bad()),
            None => (false, hop),
        };
        let target = if hop == "dummy" {
            Target::Dummy
        } else if let Some(k) = hop.strip_prefix("layer") {
            Target::Layer(k.parse().map_err(|_| bad())?)
        } else {
            match hop.parse() {
                Ok(0) | Err(_) => return Err(bad()),
                Ok(n) => Target::Hop(n),
            }
        };
        let step: u64 = step.trim().parse().map_err(|_| bad())?;
        if step == 0 {
            return Err(bad());
        }
        Ok(KillAt {
            target,
            replica_b,
            step,
        })
    }
}

impl std::fmt::Display for KillAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let replica = if self.replica_b { "b:" } else { "" };
        write!(f, "{replica}{}@{}", self.target, self.step)
    }
}

impl KillAt {
    /// The cascade this kill aims into among `cascades` (replica A's
    /// first), if the job has it.
    fn cascade<'c>(&self, cascades: &'c [Cascade]) -> Option<&'c Cascade> {
        cascades.get(usize::from(self.replica_b))
    }

    /// The hop (from 0) this kill aims at in `cascade` (role, peer per hop).
    fn resolve(&self, cascade: &[(String, String)]) -> Option<usize> {
        match &self.target {
            Target::Hop(n) => (*n <= cascade.len()).then(|| n - 1),
            Target::Dummy => cascade.iter().position(|(r, _)| r == "dummy"),
            Target::Layer(k) => (cascade.iter()).position(|(r, _)| *r == format!("layer {k}")),
        }
    }
}

/// What a chaos event does to its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Act {
    /// SIGKILL.
    Kill,
    /// SIGUSR1: the node starts lying.
    Lie,
}

/// One cascade as the model reports it: role and peer id per hop.
pub type Cascade = Vec<(String, String)>;

/// A kill (or lie) that was carried out, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct KillReport {
    /// What was done.
    pub act: Act,
    /// Hop of the cascade, from 1.
    pub hop: usize,
    /// The replica whose cascade holds the hop: `A` (the only one of an
    /// unverified job) or `B`.
    pub replica: char,
    /// The step asked for.
    pub step: u64,
    /// The step the designer was at when the node was killed.
    pub at_step: u64,
    /// Peer id of the node killed.
    pub node: String,
    /// The harness's name of its process (`node-N`).
    pub process: String,
}

/// The kills asked for, and those carried out.
pub struct Chaos {
    pending: Vec<(Act, KillAt)>,
    done: Vec<KillReport>,
    killer: Killer,
}

impl Chaos {
    /// Kills `kills` and makes `lies` lie on the pool behind `killer`.
    pub fn new(kills: Vec<KillAt>, lies: Vec<KillAt>, killer: Killer) -> Chaos {
        let mut plan: Vec<(Act, KillAt)> = (kills.into_iter().map(|k| (Act::Kill, k)))
            .chain(lies.into_iter().map(|k| (Act::Lie, k)))
            .collect();
        plan.sort_by_key(|(_, k)| k.step);
        Chaos {
            pending: plan,
            done: Vec::new(),
            killer,
        }
    }

    /// [`ChaosObserver`] calls this after each training step with the
    /// global step just done and the cascades as they are now
    /// (`Model::networks()`, replica A first). Kills every pending node
    /// whose step has come.
    pub fn step(&mut self, step: u64, cascades: &[Cascade]) -> Result<()> {
        while let Some((act, k)) = self.pending.first().cloned() {
            if k.step > step {
                break;
            }
            self.pending.remove(0);
            let Some(cascade) = k.cascade(cascades) else {
                bail!("{k}: the job has no replica B (it needs --verify-replicas or --lie)");
            };
            let Some(t) = k.resolve(cascade) else {
                bail!(
                    "{k}: no such hop in the cascade ({})",
                    (cascade.iter().map(|(r, _)| r.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            let (role, peer) = &cascade[t];
            let (process, signal) = match act {
                Act::Kill => (self.killer.kill(peer)?, "SIGKILL"),
                Act::Lie => (self.killer.make_lie(peer)?, "SIGUSR1 (lie from now on)"),
            };
            let replica = if k.replica_b { 'B' } else { 'A' };
            let of = if cascades.len() > 1 {
                format!(" of replica {replica}")
            } else {
                String::new()
            };
            println!(
                "  chaos: step {step}: {signal} to {process} ({role} on hop {}{of}, node {peer})",
                t + 1
            );
            self.done.push(KillReport {
                act,
                hop: t + 1,
                replica,
                step: k.step,
                at_step: step,
                node: peer.clone(),
                process,
            });
        }
        Ok(())
    }

    /// Whether a kill or lie is due once step `step` is done.
    pub fn due(&self, step: u64) -> bool {
        self.pending.first().is_some_and(|(_, k)| k.step <= step)
    }

    /// Kills and lies not carried out (the job ended before their step).
    pub fn pending(&self) -> Vec<KillAt> {
        self.pending.iter().map(|(_, k)| k.clone()).collect()
    }

    /// Kills carried out, in order.
    pub fn report(&self) -> Vec<KillReport> {
        self.done.clone()
    }
}

/// The training loop's observer during a chaos run: prints as `train`
/// does and carries out the kills after the step they name. A kill that
/// fails (no such hop, the process gone) is kept and returned by
/// [`ChaosObserver::finish`], since an observer cannot stop the loop.
pub struct ChaosObserver<'a> {
    /// The kills to carry out.
    pub chaos: &'a mut Chaos,
    error: Option<anyhow::Error>,
    printer: super::super::progress::Printer,
}

impl<'a> ChaosObserver<'a> {
    /// Watches the training loop for `chaos`.
    pub fn new(chaos: &'a mut Chaos) -> Self {
        ChaosObserver {
            chaos,
            error: None,
            printer: super::super::progress::Printer::new(),
        }
    }

    /// The first kill that failed, if any.
    pub fn finish(self) -> Result<()> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl TrainObserver for ChaosObserver<'_> {
    fn epoch(&mut self, report: &mixnn_designer::EpochReport) {
        self.printer.epoch(report);
    }

    fn step(&mut self, step: u64, model: &mut dyn mixnn_designer::Model) {
        if self.error.is_some() {
            return;
        }
        // The cascades are copies of the model's reports: taken only when
        // a kill or lie is due, not after every step.
        if self.chaos.due(step) {
            let cascades: Vec<Cascade> =
                (model.networks().into_iter()).map(|n| n.cascade).collect();
            if let Err(e) = self.chaos.step(step, &cascades) {
                self.error = Some(e);
            }
        }
        self.printer.step(step, model);
    }

    fn progress(&mut self, p: &mixnn_designer::StepProgress) {
        self.printer.progress(p);
    }

    fn event(&mut self, event: &mixnn_designer::TrainEvent) {
        self.printer.event(event);
    }
}

/// One repair, as the demo reports it.
#[derive(Clone, Debug, Serialize)]
pub struct DemoRepair {
    /// The failed hop, from 1 (as `--kill` names hops).
    pub hop: usize,
    /// The training step whose exchange failed.
    pub step: u64,
    /// From the send of the failed exchange to the failure being noticed.
    pub detected_after_ms: u64,
    /// From the failure being noticed to the cascade being whole again.
    pub repaired_after_ms: u64,
    /// Steps replayed from the checkpoint.
    pub steps_replayed: u64,
}

impl From<&mixnn_designer::Repair> for DemoRepair {
    fn from(r: &mixnn_designer::Repair) -> Self {
        DemoRepair {
            hop: r.hop + 1,
            step: r.step,
            detected_after_ms: r.detected_after_ms,
            repaired_after_ms: r.repaired_after_ms,
            steps_replayed: r.steps_replayed,
        }
    }
}

/// One lie found, as the demo reports it.
#[derive(Clone, Debug, Serialize)]
pub struct DemoDetection {
    /// The training step at which it showed.
    pub step: u64,
    /// The hop, from 1 (as `--lie` names hops), when one was named.
    pub hop: Option<usize>,
    /// Peer id of the node found lying.
    pub node: Option<String>,
    /// How it was decided.
    pub how: String,
}

impl From<&mixnn_designer::Detection> for DemoDetection {
    fn from(d: &mixnn_designer::Detection) -> Self {
        DemoDetection {
            step: d.step,
            hop: d.hop.map(|h| h + 1),
            node: d.node.clone(),
            how: d.how.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_flags_parse_and_resolve() {
        let k = |s: &str| s.parse::<KillAt>();
        assert_eq!(
            k("2@300"),
            Ok(KillAt {
                target: Target::Hop(2),
                replica_b: false,
                step: 300
            })
        );
        let b = k("b:layer1@7").expect("replica B");
        assert!(b.replica_b && b.target == Target::Layer(1));
        assert_eq!(b.to_string(), "b:layer1@7");
        assert!(!k("a:2@3").expect("replica A").replica_b);
        for bad in [
            "2", "0@3", "2@0", "a@3", "2@-1", "layer@3", "", "c:2@3", "b:@3",
        ] {
            assert!(k(bad).is_err(), "{bad}");
        }
        let cascade: Vec<(String, String)> = ["layer 0", "dummy", "layer 1", "layer 2"]
            .iter()
            .map(|r| (r.to_string(), String::new()))
            .collect();
        let at = |s: &str| k(s).expect("parses").resolve(&cascade);
        assert_eq!(at("2@1"), Some(1));
        assert_eq!(at("dummy@1"), Some(1));
        assert_eq!(at("layer2@1"), Some(3));
        assert_eq!(at("5@1"), None);
        assert_eq!(at("layer3@1"), None);
        let b = k("b:2@1").expect("parses");
        assert!(b.cascade(std::slice::from_ref(&cascade)).is_none());
        let two = [cascade.clone(), cascade[..2].to_vec()];
        assert_eq!(b.cascade(&two).map(Vec::len), Some(2), "replica B's");
    }
}
