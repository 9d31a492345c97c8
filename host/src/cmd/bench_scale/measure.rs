//! What `bench scale` reads from a running pool, and the loads it derives.
//!
//! A [`Sample`] is one instant: every node's Prometheus counters (its own
//! endpoint, so the figures are per node, not the pool's sum) and the CPU
//! time of every process of the pool and of this one (the designer). A
//! [`Window`] is the difference of two samples over the wall time between
//! them: rates, not totals, so windows of different lengths compare.
//!
//! CPU time comes from `/proc/PID/stat` (user + system ticks), the only
//! place the kernel keeps it for another process without tracing it; on
//! systems without `/proc` the CPU columns are absent, not zero.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cmd::harness::LocalPool;

/// Counters of one node at one instant (series name → value).
type Counters = BTreeMap<String, f64>;

/// The pool at one instant.
pub struct Sample {
    at: Instant,
    /// Per node, in start order: its counters, `None` if it did not answer.
    counters: Vec<Option<Counters>>,
    /// CPU seconds of the bootstrap, then of each node (`None`: exited, or
    /// no `/proc`).
    cpu: Vec<Option<f64>>,
    /// CPU seconds of this process (the designer and the bench itself).
    own_cpu: Option<f64>,
    /// Resident memory of each node, MiB (`None`: exited, or no `/proc`).
    rss: Vec<Option<f64>>,
}

/// Reads every node's counters and every process's CPU time.
pub fn sample(pool: &LocalPool, rt: &tokio::runtime::Runtime) -> Sample {
    let pids = pool.pids();
    let cpu = pids.iter().map(|p| p.and_then(cpu_seconds)).collect();
    let rss = pids.iter().skip(1).map(|p| p.and_then(rss_mib)).collect();
    let counters = (pool.nodes().iter())
        .map(|n| {
            let text = rt.block_on(mixnn_node::metrics::scrape(n.metrics)).ok()?;
            Some(mixnn_node::metrics::parse_text(&text).into_iter().collect())
        })
        .collect();
    Sample {
        at: Instant::now(),
        counters,
        cpu,
        own_cpu: own_cpu_seconds(),
        rss,
    }
}

/// Rates of one node (or their mean or maximum over the nodes).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Load {
    pub packets_out_per_s: f64,
    pub packets_in_per_s: f64,
    pub bytes_out_per_s: f64,
    pub bytes_in_per_s: f64,
    /// Cover packets this node originated (loops + drops) per second.
    pub cover_sent_per_s: f64,
    /// CPU time over wall time (1.0 = one core busy).
    pub cpu_share: Option<f64>,
    /// Resident memory at the window's end, MiB.
    pub rss_mib: Option<f64>,
}

/// One node over a window.
#[derive(Clone, Debug, Serialize)]
pub struct NodeWindow {
    /// `node-K`, in start order.
    pub name: String,
    pub peer_id: String,
    #[serde(flatten)]
    pub load: Load,
}

/// Cover packets of all nodes over a window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CoverCounts {
    pub loops_sent: u64,
    pub loops_returned: u64,
    pub loops_lost: u64,
    pub drops_sent: u64,
}

/// The pool over a window between two samples.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Window {
    pub seconds: f64,
    /// Nodes that answered both samples (the rest are not in the figures).
    pub nodes_measured: usize,
    /// Mean over the measured nodes.
    pub mean: Load,
    /// Maximum over the measured nodes, column by column.
    pub max: Load,
    /// CPU of all node processes together, in cores.
    pub pool_cpu_cores: Option<f64>,
    /// CPU share of the bootstrap process.
    pub bootstrap_cpu_share: Option<f64>,
    /// CPU share of this process: the designer (and the bench's sampling).
    pub designer_cpu_share: Option<f64>,
    /// Packets the nodes dropped in the window, by reason, all nodes.
    pub drops: BTreeMap<String, u64>,
    pub cover: CoverCounts,
    pub nodes: Vec<NodeWindow>,
}

/// The loads between `a` and `b` (taken in that order on the same pool).
pub fn window(pool: &LocalPool, a: &Sample, b: &Sample) -> Window {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let share = |x: Option<f64>, y: Option<f64>| Some((y? - x?).max(0.0) / secs);
    let mut w = Window {
        seconds: secs,
        bootstrap_cpu_share: share(
            a.cpu.first().copied().flatten(),
            b.cpu.first().copied().flatten(),
        ),
        designer_cpu_share: share(a.own_cpu, b.own_cpu),
        ..Window::default()
    };
    for (i, node) in pool.nodes().iter().enumerate() {
        let (Some(Some(x)), Some(Some(y))) = (a.counters.get(i), b.counters.get(i)) else {
            continue;
        };
        let d = |series: &str| {
            (y.get(series).copied().unwrap_or(0.0) - x.get(series).copied().unwrap_or(0.0)).max(0.0)
        };
        let cover = |kind: &str| d(&format!("mixnn_cover_packets_total{{kind=\"{kind}\"}}"));
        let cpu = |s: &Sample| s.cpu.get(i + 1).copied().flatten();
        let load = Load {
            packets_out_per_s: d("mixnn_packets_out_total") / secs,
            packets_in_per_s: d("mixnn_packets_in_total") / secs,
            bytes_out_per_s: d("mixnn_packet_bytes_out_total") / secs,
            bytes_in_per_s: d("mixnn_packet_bytes_in_total") / secs,
            cover_sent_per_s: (cover("loop_sent") + cover("drop_sent")) / secs,
            cpu_share: share(cpu(a), cpu(b)),
            rss_mib: b.rss.get(i).copied().flatten(),
        };
        w.cover.loops_sent += cover("loop_sent") as u64;
        w.cover.loops_returned += cover("loop_returned") as u64;
        w.cover.loops_lost += cover("loop_lost") as u64;
        w.cover.drops_sent += cover("drop_sent") as u64;
        for series in y.keys() {
            if let Some(reason) = (series.strip_prefix("mixnn_packets_dropped_total{reason=\""))
                .and_then(|r| r.strip_suffix("\"}"))
            {
                let n = d(series) as u64;
                if n > 0 {
                    *w.drops.entry(reason.to_string()).or_insert(0) += n;
                }
            }
        }
        w.nodes.push(NodeWindow {
            name: format!("node-{}", i + 1),
            peer_id: node.peer_id.clone(),
            load,
        });
    }
    w.nodes_measured = w.nodes.len();
    (w.mean, w.max) = summarise(&w.nodes);
    w.pool_cpu_cores = (w.nodes.iter())
        .map(|n| n.load.cpu_share)
        .sum::<Option<f64>>();
    w
}

/// A job's window seen in two parts: the cascade's nodes, which carry the
/// job's packets, and the others, which carry only cover (their own and
/// what they relay).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Split {
    pub cascade_nodes: usize,
    pub cascade: Load,
    pub cascade_max: Load,
    pub others: Load,
    pub others_max: Load,
}

/// Splits `w` by the cascade's peer ids.
pub fn split(w: &Window, cascade: &[String]) -> Split {
    let (hops, rest): (Vec<NodeWindow>, Vec<NodeWindow>) =
        (w.nodes.iter().cloned()).partition(|n| cascade.contains(&n.peer_id));
    let ((cascade, cascade_max), (others, others_max)) = (summarise(&hops), summarise(&rest));
    Split {
        cascade_nodes: hops.len(),
        cascade,
        cascade_max,
        others,
        others_max,
    }
}

/// Mean and maximum of every column over the nodes.
fn summarise(nodes: &[NodeWindow]) -> (Load, Load) {
    let n = nodes.len().max(1) as f64;
    let col = |f: fn(&Load) -> f64| {
        let v = nodes.iter().map(|x| f(&x.load));
        (v.clone().sum::<f64>() / n, v.fold(0.0, f64::max))
    };
    let (po, po_max) = col(|l| l.packets_out_per_s);
    let (pi, pi_max) = col(|l| l.packets_in_per_s);
    let (bo, bo_max) = col(|l| l.bytes_out_per_s);
    let (bi, bi_max) = col(|l| l.bytes_in_per_s);
    let (cs, cs_max) = col(|l| l.cover_sent_per_s);
    let some = |f: fn(&Load) -> Option<f64>| {
        let v: Option<Vec<f64>> = nodes.iter().map(|x| f(&x.load)).collect();
        v.filter(|c| !c.is_empty())
    };
    let (cpus, rss) = (some(|l| l.cpu_share), some(|l| l.rss_mib));
    let mean = Load {
        packets_out_per_s: po,
        packets_in_per_s: pi,
        bytes_out_per_s: bo,
        bytes_in_per_s: bi,
        cover_sent_per_s: cs,
        cpu_share: cpus.as_ref().map(|c| c.iter().sum::<f64>() / n),
        rss_mib: rss.as_ref().map(|c| c.iter().sum::<f64>() / n),
    };
    let max = Load {
        packets_out_per_s: po_max,
        packets_in_per_s: pi_max,
        bytes_out_per_s: bo_max,
        bytes_in_per_s: bi_max,
        cover_sent_per_s: cs_max,
        cpu_share: cpus.map(|c| c.into_iter().fold(0.0, f64::max)),
        rss_mib: rss.map(|c| c.into_iter().fold(0.0, f64::max)),
    };
    (mean, max)
}

/// User + system CPU seconds of process `pid` (Linux `/proc`).
fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Resident set of process `pid` in MiB (`statm`'s second field, pages).
fn rss_mib(pid: u32) -> Option<f64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages as f64 * page_size()? / (1 << 20) as f64)
}

fn own_cpu_seconds() -> Option<f64> {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// utime + stime (fields 14 and 15 of `stat`, counted after the command
/// name, which may itself hold spaces and parentheses) in seconds.
fn stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second()?)
}

/// The kernel's clock ticks per second, the unit of `/proc/PID/stat`.
fn ticks_per_second() -> Option<f64> {
    sysconf(Unit::Ticks)
}

/// Bytes per memory page, the unit of `/proc/PID/statm`.
fn page_size() -> Option<f64> {
    sysconf(Unit::Page)
}

enum Unit {
    Ticks,
    Page,
}

#[cfg(unix)]
fn sysconf(unit: Unit) -> Option<f64> {
    let name = match unit {
        Unit::Ticks => libc::_SC_CLK_TCK,
        Unit::Page => libc::_SC_PAGESIZE,
    };
    // SAFETY: sysconf reads a constant of the system; no memory is shared.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as f64)
}

#[cfg(not(unix))]
fn sysconf(_unit: Unit) -> Option<f64> {
    None
}

/// A runtime for scraping the nodes' metrics endpoints.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[cfg(test)]
mod tests {
    use super::stat_cpu;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as `comm` allows.
        let line = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        let ticks = super::ticks_per_second().unwrap_or(100.0);
        assert_eq!(stat_cpu(line), Some(300.0 / ticks));
        assert_eq!(stat_cpu("garbage"), None);
    }
}
