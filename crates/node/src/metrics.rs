//! Counters and the Prometheus-text endpoint.
//!
//! Why no metrics crate and no web framework: a handful of atomics and a
//! loop that answers `GET /metrics` on a plain tokio TCP listener are all an
//! operator's scraper (and `mixnn status`) need, and they add nothing to the
//! node's attack surface or build time. The endpoint is meant for loopback
//! or an operator network; it reveals counts, never packet contents.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

pub use mixnn_p2p::{DropReason, LinkMetrics};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One metric family: name, type, help, and `(labels, value)` series.
type Family = (&'static str, &'static str, &'static str, Vec<(String, u64)>);

/// The node's counters; shared by every task through an `Arc`. The link
/// counters (packets, bytes, link drops, streams, peers) live in
/// [`LinkMetrics`], which this derefs to.
pub struct Metrics {
    started: Instant,
    peer_id: String,
    /// The link-layer counters, shared with the p2p layer.
    pub link: Arc<LinkMetrics>,
    /// Drops after the link layer (Sphinx checks, jobs), by reason label.
    processing_drops: Mutex<BTreeMap<&'static str, u64>>,
    /// Descriptor publishes a bootstrap accepted (counted per bootstrap).
    pub publish_ok: AtomicU64,
    /// Descriptor publishes a bootstrap refused or did not answer.
    pub publish_failed: AtomicU64,
    /// The current mix-key epoch (a gauge).
    pub mix_epoch: AtomicU64,
    /// Jobs hosted now (a gauge).
    pub jobs: AtomicU64,
    /// Calls into sandboxed guest layers.
    pub guest_calls: AtomicU64,
    /// Time spent in guest calls, in microseconds.
    pub guest_micros: AtomicU64,
    /// Cover loop packets sent.
    pub cover_loops_sent: AtomicU64,
    /// Cover loop packets that came back to this node.
    pub cover_loops_returned: AtomicU64,
    /// Cover drop packets sent.
    pub cover_drops_sent: AtomicU64,
    /// Loops that did not come back within their timeout (see `cover`).
    pub cover_loops_lost: AtomicU64,
    /// Packets handled after Sphinx processing, by op label.
    ops: Mutex<BTreeMap<&'static str, u64>>,
}

impl std::ops::Deref for Metrics {
    type Target = LinkMetrics;
    fn deref(&self) -> &LinkMetrics {
        &self.link
    }
}

impl Metrics {
    /// All counters zero; `peer_id` labels the node's info metric.
    pub fn new(peer_id: String) -> Self {
        Self {
            started: Instant::now(),
            peer_id,
            link: Arc::new(LinkMetrics::default()),
            processing_drops: Mutex::new(BTreeMap::new()),
            publish_ok: AtomicU64::new(0),
            publish_failed: AtomicU64::new(0),
            mix_epoch: AtomicU64::new(0),
            jobs: AtomicU64::new(0),
            guest_calls: AtomicU64::new(0),
            guest_micros: AtomicU64::new(0),
            cover_loops_sent: AtomicU64::new(0),
            cover_loops_returned: AtomicU64::new(0),
            cover_drops_sent: AtomicU64::new(0),
            cover_loops_lost: AtomicU64::new(0),
            ops: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts a drop after the link layer (a Sphinx check or a job error).
    pub fn drop_processed(&self, reason: &'static str) {
        *lock(&self.processing_drops).entry(reason).or_default() += 1;
    }

    /// Drops after the link layer with `reason` so far.
    pub fn processing_dropped(&self, reason: &str) -> u64 {
        lock(&self.processing_drops)
            .get(reason)
            .copied()
            .unwrap_or(0)
    }

    /// Counts a packet handled as `op`.
    pub fn count_op(&self, op: &'static str) {
        *lock(&self.ops).entry(op).or_default() += 1;
    }

    /// Packets handled as `op` so far.
    pub fn ops(&self, op: &str) -> u64 {
        lock(&self.ops).get(op).copied().unwrap_or(0)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(2048);
        for (name, kind, help, series) in
            self.link_families().into_iter().chain(self.node_families())
        {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in series {
                let _ = writeln!(s, "{name}{labels} {value}");
            }
        }
        s
    }

    /// The node's identity and its link-level families (packets, bytes,
    /// drops, streams, peers).
    fn link_families(&self) -> [Family; 10] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let info = format!(
            "{{peer_id=\"{}\",version=\"{}\"}}",
            self.peer_id,
            mixnn_protocol::SOFTWARE_VERSION
        );
        let mut drops: Vec<(String, u64)> = DropReason::ALL
            .iter()
            .map(|r| (format!("{{reason=\"{}\"}}", r.label()), self.dropped(*r)))
            .collect();
        drops.extend(
            lock(&self.processing_drops)
                .iter()
                .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n)),
        );
        let one = |v: u64| vec![(String::new(), v)];
        [
            (
                "mixnn_node_info",
                "gauge",
                "Identity of this node.",
                vec![(info, 1)],
            ),
            (
                "mixnn_uptime_seconds",
                "gauge",
                "Seconds since the node started.",
                one(self.started.elapsed().as_secs()),
            ),
            (
                "mixnn_packets_in_total",
                "counter",
                "Packets received and queued for the packet handler.",
                one(g(&self.packets_in)),
            ),
            (
                "mixnn_packets_out_total",
                "counter",
                "Packets written to neighbour streams.",
                one(g(&self.packets_out)),
            ),
            (
                "mixnn_direct_packets_out_total",
                "counter",
                "Of the packets written, those on direct connections (not libp2p streams).",
                one(g(&self.direct_out)),
            ),
            (
                "mixnn_packet_bytes_in_total",
                "counter",
                "Bytes of packets received (frame headers excluded).",
                one(g(&self.bytes_in)),
            ),
            (
                "mixnn_packet_bytes_out_total",
                "counter",
                "Bytes of packets sent (frame headers excluded).",
                one(g(&self.bytes_out)),
            ),
            (
                "mixnn_packets_dropped_total",
                "counter",
                "Packets dropped, by reason.",
                drops,
            ),
            (
                "mixnn_packet_streams",
                "gauge",
                "Open packet streams.",
                vec![
                    ("{direction=\"inbound\"}".into(), g(&self.streams_inbound)),
                    ("{direction=\"outbound\"}".into(), g(&self.streams_outbound)),
                ],
            ),
            (
                "mixnn_peers_connected",
                "gauge",
                "Peers with at least one open connection.",
                one(g(&self.peers_connected)),
            ),
        ]
    }

    /// The families of the node's own work: publishing, keys, ops, jobs,
    /// guests, cover traffic.
    fn node_families(&self) -> [Family; 8] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let lengths: Vec<(String, u64)> = self
            .link
            .lengths()
            .into_iter()
            .map(|(len, n)| (format!("{{length=\"{len}\"}}"), n))
            .collect();
        let ops: Vec<(String, u64)> = lock(&self.ops)
            .iter()
            .map(|(op, n)| (format!("{{op=\"{op}\"}}"), *n))
            .collect();
        let one = |v: u64| vec![(String::new(), v)];
        [
            (
                "mixnn_descriptor_publish_total",
                "counter",
                "Descriptor publications to bootstraps, by result.",
                vec![
                    ("{result=\"ok\"}".into(), g(&self.publish_ok)),
                    ("{result=\"failed\"}".into(), g(&self.publish_failed)),
                ],
            ),
            (
                "mixnn_mix_key_epoch",
                "gauge",
                "Epoch of the current mix key.",
                one(g(&self.mix_epoch)),
            ),
            (
                "mixnn_packet_lengths_total",
                "counter",
                "Packets received or sent, by wire length (one length per job is the goal).",
                lengths,
            ),
            (
                "mixnn_packets_handled_total",
                "counter",
                "Packets accepted by the Sphinx processor, by the op they carried.",
                ops,
            ),
            (
                "mixnn_jobs",
                "gauge",
                "Jobs (layers and dummy hops) hosted now.",
                one(g(&self.jobs)),
            ),
            (
                "mixnn_guest_calls_total",
                "counter",
                "Calls into layer guests.",
                one(g(&self.guest_calls)),
            ),
            (
                "mixnn_guest_microseconds_total",
                "counter",
                "Time spent in layer guests, in microseconds.",
                one(g(&self.guest_micros)),
            ),
            (
                "mixnn_cover_packets_total",
                "counter",
                "Cover traffic: loops sent, returned and lost, drop packets sent.",
                vec![
                    ("{kind=\"loop_sent\"}".into(), g(&self.cover_loops_sent)),
                    (
                        "{kind=\"loop_returned\"}".into(),
                        g(&self.cover_loops_returned),
                    ),
                    ("{kind=\"drop_sent\"}".into(), g(&self.cover_drops_sent)),
                    ("{kind=\"loop_lost\"}".into(), g(&self.cover_loops_lost)),
                ],
            ),
        ]
    }
}

/// Errors of the metrics endpoint and its client.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Binding the endpoint, or connecting to, writing to or reading from it,
    /// failed.
    #[error("metrics endpoint {addr}: {source}")]
    Io {
        /// The endpoint's address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A scrape got no full answer in time.
    #[error("metrics endpoint {addr} did not answer within {secs} s")]
    Timeout {
        /// The endpoint's address.
        addr: SocketAddr,
        /// The timeout, in seconds.
        secs: u64,
    },
    /// The endpoint answered with something other than 200 OK.
    #[error("metrics endpoint {addr} answered: {status}")]
    Status {
        /// The endpoint's address.
        addr: SocketAddr,
        /// The HTTP status line it answered with.
        status: String,
    },
}

const MAX_REQUEST_HEAD: usize = 8 * 1024;
const MAX_RESPONSE: usize = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves `GET /metrics` until `stop` changes. Returns the
/// bound address (useful with port 0) once listening.
pub async fn serve(
    addr: SocketAddr,
    metrics: std::sync::Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Io { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Io { addr, source })?;
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((conn, peer)) => {
                        let m = metrics.clone();
                        tokio::spawn(async move {
                            if let Err(e) = answer(conn, &m).await {
                                debug!(%peer, error = %e, "metrics request failed");
                            }
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "metrics listener");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    });
    Ok((bound, task))
}

async fn answer(mut conn: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(IO_TIMEOUT, read_head)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let (status, ctype, body) = if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET / ")
    {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        )
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "try GET /metrics\n".to_string(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(IO_TIMEOUT, conn.write_all(response.as_bytes()))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response"))??;
    conn.shutdown().await
}

/// Fetches the metrics text from a node's endpoint (what `mixnn status`
/// does).
pub async fn scrape(addr: SocketAddr) -> Result<String, MetricsError> {
    let io = |source| MetricsError::Io { addr, source };
    let fetch = async {
        let mut conn = TcpStream::connect(addr).await.map_err(io)?;
        conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .map_err(io)?;
        let mut raw = Vec::new();
        (&mut conn)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        Ok::<_, MetricsError>(raw)
    };
    let raw = tokio::time::timeout(IO_TIMEOUT, fetch)
        .await
        .map_err(|_| MetricsError::Timeout {
            addr,
            secs: IO_TIMEOUT.as_secs(),
        })??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(MetricsError::Status {
            addr,
            status: status.to_string(),
        });
    }
    Ok(body.to_string())
}

/// Parses Prometheus text into `(series, value)` pairs, where `series` is the
/// metric name with its labels as written; comments and bad lines are
/// skipped.
pub fn parse_text(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}
