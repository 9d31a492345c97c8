//! Counters and the Prometheus-text endpoint.
//!
//! Why no metrics crate and no web framework: a handful of atomics and a
//! loop that answers `GET /metrics` on a plain tokio TCP listener are all an
//! operator's scraper (and `mixnn status`) need, and they add nothing to the
//! node's attack surface or build time. The endpoint is meant for loopback
//! or an operator network; it reveals counts, never packet contents.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

/// Why a packet was dropped. Every drop is counted under one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A frame whose length is not one of the size classes (skipped; the
    /// stream goes on).
    BadLength,
    /// A frame longer than the largest class: the stream is closed, since
    /// reading it would mean allocating what the peer asks for.
    OversizeFrame,
    /// The handler's queue was full (count or bytes).
    InboundQueueFull,
    /// No handler is attached (the inbox was dropped).
    NoHandler,
    /// The outbound queue of a neighbour was full (count or bytes).
    OutboundQueueFull,
    /// Writing to the neighbour's stream failed.
    StreamError,
    /// No stream could be opened to the neighbour.
    NoRoute,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        Self::BadLength,
        Self::OversizeFrame,
        Self::InboundQueueFull,
        Self::NoHandler,
        Self::OutboundQueueFull,
        Self::StreamError,
        Self::NoRoute,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::BadLength => "bad_length",
            Self::OversizeFrame => "oversize_frame",
            Self::InboundQueueFull => "inbound_queue_full",
            Self::NoHandler => "no_handler",
            Self::OutboundQueueFull => "outbound_queue_full",
            Self::StreamError => "stream_error",
            Self::NoRoute => "no_route",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|&r| r == self).unwrap_or(0)
    }
}

/// One metric family: name, type, help, and `(labels, value)` series.
type Family = (&'static str, &'static str, &'static str, Vec<(String, u64)>);

/// The node's counters; shared by every task through an `Arc`.
pub struct Metrics {
    started: Instant,
    peer_id: String,
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    pub streams_inbound: AtomicU64,
    pub streams_outbound: AtomicU64,
    pub peers_connected: AtomicU64,
    pub publish_ok: AtomicU64,
    pub publish_failed: AtomicU64,
    pub mix_epoch: AtomicU64,
}

impl Metrics {
    pub fn new(peer_id: String) -> Self {
        Self {
            started: Instant::now(),
            peer_id,
            packets_in: AtomicU64::new(0),
            packets_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            drops: Default::default(),
            streams_inbound: AtomicU64::new(0),
            streams_outbound: AtomicU64::new(0),
            peers_connected: AtomicU64::new(0),
            publish_ok: AtomicU64::new(0),
            publish_failed: AtomicU64::new(0),
            mix_epoch: AtomicU64::new(0),
        }
    }

    pub fn drop_packet(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let info = format!(
            "{{peer_id=\"{}\",version=\"{}\"}}",
            self.peer_id,
            mixnn_protocol::SOFTWARE_VERSION
        );
        let drops: Vec<(String, u64)> = DropReason::ALL
            .iter()
            .map(|r| (format!("{{reason=\"{}\"}}", r.label()), self.dropped(*r)))
            .collect();
        let one = |v: u64| vec![(String::new(), v)];
        let families: [Family; 11] = [
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
        ];
        let mut s = String::with_capacity(2048);
        for (name, kind, help, series) in families {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in series {
                let _ = writeln!(s, "{name}{labels} {value}");
            }
        }
        s
    }
}

/// Errors of the metrics endpoint and its client.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics endpoint {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics endpoint {addr} did not answer within {secs} s")]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error("metrics endpoint {addr} answered: {status}")]
    Status { addr: SocketAddr, status: String },
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
