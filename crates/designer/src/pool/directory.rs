//! The directory as the designer trusts it: every bootstrap it was given,
//! asked at once, and only what a quorum of them serve.
//!
//! A bootstrap can hide nodes, serve stale descriptors, repeat one
//! descriptor or list identities it made up (a Sybil's); it cannot forge a
//! node's signature. So the designer reads each bootstrap with every count
//! bounded ([`ListCursor`]), verifies every entry, keeps the newest valid
//! descriptor per identity, and trusts an identity only when `quorum`
//! bootstraps list it. Then no identity and no network address may hold two
//! hops of one cascade ([`pick`]), so one operator cannot see the input,
//! the activations and the labels of a job by appearing at every hop.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mixnn_p2p::SwarmHandle;
use mixnn_protocol::{DirectoryRequest, DirectoryResponse, ListCursor, NodeDescriptor};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

use super::PoolError;

/// How long reading one bootstrap (all its pages) may take.
pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Greedy tries [`pick`] makes before it reports a shortage.
const PICK_TRIES: usize = 16;

/// What makes two nodes "the same address" for a cascade.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Distinct {
    /// One hop per host: an IPv4 address, an IPv6 /64 or a DNS name, any
    /// port. Loopback and unspecified addresses name no host and are
    /// ignored; a node with no other address is not chosen.
    #[default]
    Host,
    /// One hop per host and port, loopback included: for a pool whose nodes
    /// all run on one machine (tests, the demo). Trusts that machine.
    HostPort,
}

/// One bootstrap's listing: the newest valid descriptor per identity.
pub(super) type View = BTreeMap<[u8; 32], NodeDescriptor>;

/// The quorum's directory and how it was reached.
#[derive(Debug, Default)]
pub(super) struct Reading {
    /// Descriptors served by at least `quorum` bootstraps, newest per
    /// identity, in identity order.
    pub nodes: Vec<NodeDescriptor>,
    /// Bootstraps asked.
    pub asked: usize,
    /// Bootstraps that answered a whole listing.
    pub answered: usize,
    /// How many must list a node.
    pub quorum: usize,
    /// One line per bootstrap that did not answer.
    pub failures: Vec<String>,
}

/// The quorum for `bootstraps` bootstraps: `given`, or a majority.
pub(super) fn resolve_quorum(given: Option<usize>, bootstraps: usize) -> Result<usize, PoolError> {
    let q = given.unwrap_or(bootstraps / 2 + 1);
    if q == 0 || q > bootstraps {
        return Err(PoolError::Quorum {
            quorum: q,
            bootstraps,
        });
    }
    Ok(q)
}

/// The progress line of a directory read; warns (also in the log) when
/// one bootstrap is trusted alone.
pub(super) fn reading_note(want: usize, quorum: usize, bootstraps: usize) -> String {
    if quorum == 1 {
        let who = if bootstraps == 1 {
            "the only"
        } else {
            "any one"
        };
        tracing::warn!("{who} bootstrap is trusted: it can choose which nodes the job sees");
        format!(
            "reading the pool directory (need {want} nodes; WARNING: {who} bootstrap is \
             trusted to list honest nodes, give several with --pool)"
        )
    } else {
        format!(
            "reading the pool directory (need {want} nodes listed by {quorum} of {bootstraps} \
             bootstraps)"
        )
    }
}

/// Reads one bootstrap through `fetch` (one request, one answer): bounded
/// pages, every entry verified at `now`, the newest per identity kept.
pub(super) async fn read_bootstrap<F, Fut, E>(mut fetch: F, now: u64) -> Result<View, String>
where
    F: FnMut(DirectoryRequest) -> Fut,
    Fut: Future<Output = Result<DirectoryResponse, E>>,
    E: std::fmt::Display,
{
    let mut view = View::new();
    let mut cursor = ListCursor::new();
    while let Some(req) = cursor.request() {
        let answer = fetch(req).await.map_err(|e| e.to_string())?;
        for e in cursor.accept(answer).map_err(|e| e.to_string())? {
            match e.verify_at(now) {
                Ok(d) => keep_newest(&mut view, d),
                Err(err) => tracing::warn!(error = %err, "directory entry fails verification"),
            }
        }
    }
    Ok(view)
}

fn keep_newest(view: &mut View, d: NodeDescriptor) {
    match view.get(&d.identity_key) {
        Some(old) if old.issued_at >= d.issued_at => {}
        _ => {
            view.insert(d.identity_key, d);
        }
    }
}

/// The identities at least `quorum` views list, each with the newest
/// descriptor any view holds (all are signed by the node itself).
pub(super) fn agree(views: &[View], quorum: usize) -> Vec<NodeDescriptor> {
    let mut count: BTreeMap<[u8; 32], usize> = BTreeMap::new();
    let mut newest = View::new();
    for v in views {
        for (id, d) in v {
            *count.entry(*id).or_insert(0) += 1;
            keep_newest(&mut newest, d.clone());
        }
    }
    newest
        .into_iter()
        .filter(|(id, _)| count.get(id).is_some_and(|&n| n >= quorum))
        .map(|(_, d)| d)
        .collect()
}

/// Asks every bootstrap at once (each bounded by [`READ_TIMEOUT`]) and
/// keeps what `quorum` of them serve.
pub(super) async fn read_quorum(
    swarm: &SwarmHandle,
    bootstraps: &[PeerId],
    quorum: usize,
) -> Reading {
    let mut tasks = tokio::task::JoinSet::new();
    for &b in bootstraps {
        let swarm = swarm.clone();
        tasks.spawn(async move {
            let fetch = |req| swarm.directory(b, req);
            let read = read_bootstrap(fetch, mixnn_p2p::unix_now());
            let r = match tokio::time::timeout(READ_TIMEOUT, read).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no whole listing within {} s",
                    READ_TIMEOUT.as_secs()
                )),
            };
            (b, r)
        });
    }
    let mut views = Vec::new();
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((_, Ok(v))) => views.push(v),
            Ok((b, Err(e))) => failures.push(format!("bootstrap {b}: {e}")),
            Err(e) => failures.push(format!("a bootstrap read ended abnormally: {e}")),
        }
    }
    Reading {
        nodes: agree(&views, quorum),
        asked: bootstraps.len(),
        answered: views.len(),
        quorum,
        failures,
    }
}

/// The addresses a node claims, as `rule` compares them.
pub(super) fn address_keys(d: &NodeDescriptor, rule: Distinct) -> BTreeSet<String> {
    d.addrs
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter_map(|a| address_key(&a, rule))
        .collect()
}

fn address_key(a: &Multiaddr, rule: Distinct) -> Option<String> {
    let mut host = None;
    let mut port = None;
    for p in a.iter() {
        match p {
            Protocol::Ip4(ip) if host.is_none() => host = Some(ip4_key(ip, rule)?),
            Protocol::Ip6(ip) if host.is_none() => host = Some(ip6_key(ip, rule)?),
            Protocol::Dns(n) | Protocol::Dns4(n) | Protocol::Dns6(n) if host.is_none() => {
                host = Some(format!("dns:{}", n.to_ascii_lowercase()));
            }
            Protocol::Tcp(p) | Protocol::Udp(p) if port.is_none() => port = Some(p),
            _ => {}
        }
    }
    let host = host?;
    match rule {
        Distinct::Host => Some(host),
        Distinct::HostPort => Some(format!("{host}:{}", port.unwrap_or(0))),
    }
}

fn ip4_key(ip: Ipv4Addr, rule: Distinct) -> Option<String> {
    let anonymous = ip.is_loopback() || ip.is_unspecified();
    (rule == Distinct::HostPort || !anonymous).then(|| format!("ip4:{ip}"))
}

fn ip6_key(ip: Ipv6Addr, rule: Distinct) -> Option<String> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return ip4_key(v4, rule);
    }
    let anonymous = ip.is_loopback() || ip.is_unspecified();
    if rule == Distinct::Host && anonymous {
        return None;
    }
    let s = ip.segments();
    Some(match rule {
        Distinct::Host => format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]),
        Distinct::HostPort => format!("ip6:{ip}"),
    })
}

/// `count` nodes of `pool` in random order, no two with the same identity
/// or a shared address under `rule`; `Err` holds the most such nodes found.
pub(super) fn pick<'a>(
    pool: &'a [NodeDescriptor],
    count: usize,
    rule: Distinct,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<&'a NodeDescriptor>, usize> {
    let keyed: Vec<(&NodeDescriptor, BTreeSet<String>)> = pool
        .iter()
        .map(|d| (d, address_keys(d, rule)))
        .filter(|(_, k)| !k.is_empty())
        .collect();
    let mut best = 0;
    for _ in 0..PICK_TRIES {
        let mut order: Vec<&(&NodeDescriptor, BTreeSet<String>)> = keyed.iter().collect();
        order.shuffle(rng);
        let mut ids = BTreeSet::new();
        let mut used: BTreeSet<&String> = BTreeSet::new();
        let mut chosen = Vec::new();
        for (d, keys) in order {
            if chosen.len() == count {
                break;
            }
            if ids.contains(&d.identity_key) || keys.iter().any(|k| used.contains(k)) {
                continue;
            }
            ids.insert(d.identity_key);
            used.extend(keys);
            chosen.push(*d);
        }
        if chosen.len() == count {
            return Ok(chosen);
        }
        best = best.max(chosen.len());
    }
    Err(best)
}

/// Nodes of `pool` that [`Distinct::Host`] cannot tell apart from any
/// other (only loopback or unspecified addresses): a pool on one machine.
pub(super) fn anonymous(pool: &[NodeDescriptor], rule: Distinct) -> usize {
    pool.iter()
        .filter(|d| address_keys(d, rule).is_empty())
        .count()
}

#[cfg(test)]
#[path = "directory_tests.rs"]
mod tests;
