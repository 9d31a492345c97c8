//! Node configuration: a TOML file (`--config`), overridden by flags.
//!
//! Every field has a default so an empty file is a valid configuration;
//! unknown keys are an error, because a misspelt limit silently ignored is
//! worse than a refusal to start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything [`crate::Node::start`] needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Identity key, mix keys: everything that must survive a restart.
    pub data_dir: PathBuf,
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs to advertise instead of the bound listen addresses (for a
    /// node behind a port forward). Empty: advertise what was bound.
    pub external_addrs: Vec<String>,
    /// Bootstrap multiaddrs, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<String>,
    /// Where to serve Prometheus metrics (plain HTTP); none if unset.
    pub metrics: Option<SocketAddr>,
    /// Length of one mix-key epoch in seconds.
    pub epoch_secs: u64,
    /// How long a previous epoch's mix key is still accepted after the
    /// epoch ended, so packets built just before a rotation still decrypt.
    pub key_grace_secs: u64,
    /// Lifetime of a published descriptor (at most 24 h).
    pub descriptor_ttl_secs: u64,
    /// How often the descriptor is re-signed and re-published (also at
    /// every epoch change).
    pub refresh_secs: u64,
    /// How long start-up waits for the first bootstrap to accept the
    /// descriptor before giving up with an error.
    pub bootstrap_timeout_secs: u64,
    /// Jobs this node hosts at once (advertised).
    pub jobs: u32,
    /// Memory per guest in MiB (advertised).
    pub guest_memory_mib: u64,
    /// The packet lengths accepted on the wire (the public size classes);
    /// a frame of any other length is a counted drop.
    pub packet_sizes: Vec<u32>,
    /// Packets waiting for the packet handler; beyond this they are dropped
    /// (counted) rather than buffered without bound.
    pub inbound_queue: usize,
    /// Bytes waiting for the packet handler (the same bound in bytes, since
    /// packets of the large classes are up to 1 MiB each).
    pub inbound_queue_bytes: usize,
    /// Packets waiting per outbound neighbour stream.
    pub outbound_queue: usize,
    /// Bytes waiting in all outbound streams together.
    pub outbound_queue_bytes: usize,
    /// Threads that run guest work (the layer calls of job packets), each
    /// job's packets queued in order; relaying never waits for them.
    pub workers: usize,
    /// Threads that open packets (Sphinx) and relay those that need no
    /// guest; a slow guest cannot stall them.
    pub relay_workers: usize,
    /// Most neighbour links (outbound packet streams) held at once; a link
    /// to a new neighbour at the limit evicts the least recently used idle
    /// one. Next hops are chosen by packet builders, so this is a bound on
    /// what a stranger can make the node hold.
    pub max_links: usize,
    /// Replay tags kept per mix-key epoch (persisted in the data dir). When
    /// the current epoch's set nears this, the node rotates to a fresh mix
    /// key early instead of refusing packets.
    pub replay_tags_per_epoch: usize,
    /// CPU time bound of one guest call, in seconds.
    pub guest_call_secs: u64,
    /// Lend this machine's native matrix kernels to the guests of jobs that
    /// ask for them; `false` runs every job in pure wasm.
    pub host_kernels: bool,
    /// A job nobody used for this long is forgotten.
    pub job_idle_secs: u64,
    /// Largest shard a job may deploy, in bytes.
    pub max_shard_bytes: u64,
    /// Mean interval between loop cover packets, in milliseconds (Poisson);
    /// 0 turns loops off. Stretched to fit `cover_bytes_per_sec`.
    pub cover_loop_ms: u64,
    /// Mean interval between drop cover packets, in milliseconds (Poisson);
    /// 0 turns them off. Stretched to fit `cover_bytes_per_sec`.
    pub cover_drop_ms: u64,
    /// Bandwidth budget of cover traffic in bytes per second (0: no
    /// cover). Cover goes out in every public class (`packet_sizes`), each
    /// class the same share of these bytes.
    pub cover_bytes_per_sec: u64,
    /// Send slots (mixing against an observer of every link): every
    /// `slot_ms` one packet goes to each pool neighbour, a real one if one
    /// waits, else cover; 0 = off (real packets go out at once). Stretched
    /// to fit `cover_bytes_per_sec`.
    pub slot_ms: u64,
    /// Payload class of send slots (bytes; 0: the smallest public class).
    /// Real packets of other classes go out at once.
    pub slot_class: u32,
    /// Carry packets over direct Noise connections to neighbours (one TCP
    /// connection each, next to the libp2p one; crates/p2p `direct`),
    /// falling back to libp2p streams where there is none. Off: every
    /// packet takes its libp2p stream (slower; for a firewall that admits
    /// one port only).
    pub direct_links: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("mixnn-node"),
            listen: vec!["/ip4/0.0.0.0/tcp/0".into()],
            external_addrs: Vec::new(),
            bootstrap: Vec::new(),
            metrics: None,
            epoch_secs: 3600,
            key_grace_secs: 600,
            descriptor_ttl_secs: 3600,
            refresh_secs: 600,
            bootstrap_timeout_secs: 15,
            jobs: 4,
            guest_memory_mib: 1024,
            packet_sizes: DEFAULT_PACKET_SIZES.to_vec(),
            inbound_queue: 4096,
            inbound_queue_bytes: 256 << 20,
            outbound_queue: 1024,
            outbound_queue_bytes: 256 << 20,
            workers: 2,
            relay_workers: 1,
            max_links: mixnn_p2p::DEFAULT_MAX_LINKS,
            replay_tags_per_epoch: mixnn_sphinx::DEFAULT_MAX_TAGS_PER_EPOCH,
            guest_call_secs: 60,
            host_kernels: true,
            job_idle_secs: 900,
            max_shard_bytes: 256 << 20,
            cover_loop_ms: 1000,
            cover_drop_ms: 1000,
            cover_bytes_per_sec: 64 << 10,
            slot_ms: 0,
            slot_class: 0,
            direct_links: true,
        }
    }
}

/// Errors loading or checking a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or does not fit the schema.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The TOML error, with its position.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of bounds or inconsistent with another; the message
    /// names it.
    #[error("config: {0}")]
    Invalid(String),
}

/// Largest accepted packet class: a bound on what one frame may allocate.
pub const MAX_PACKET_SIZE: u32 = 16 << 20;

/// Packet lengths of the default Sphinx geometry (crates/sphinx: a 2609-byte
/// header for 16 hops, payload classes 2 KiB, 32 KiB, 64 KiB, 256 KiB,
/// 1 MiB); a test checks they match.
pub const DEFAULT_PACKET_SIZES: [u32; 5] = [
    2609 + 2048,
    2609 + 32 * 1024,
    2609 + 64 * 1024,
    2609 + 256 * 1024,
    2609 + 1024 * 1024,
];

impl NodeConfig {
    /// Reads a TOML file (at most 1 MiB).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > 1 << 20 {
            return Err(ConfigError::Invalid(format!(
                "{} is {} bytes; a config file is at most 1 MiB",
                path.display(),
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            source,
        })
    }

    /// Checks the values that would otherwise fail later, deep in start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.is_empty() {
            return bad("no listen address".into());
        }
        if self.epoch_secs < 10 {
            return bad(format!("epoch_secs = {}: at least 10", self.epoch_secs));
        }
        if self.descriptor_ttl_secs < 10
            || self.descriptor_ttl_secs > mixnn_protocol::descriptor::MAX_LIFETIME_SECS
        {
            return bad(format!(
                "descriptor_ttl_secs = {}: between 10 and {}",
                self.descriptor_ttl_secs,
                mixnn_protocol::descriptor::MAX_LIFETIME_SECS
            ));
        }
        if self.refresh_secs == 0 || self.refresh_secs >= self.descriptor_ttl_secs {
            return bad(format!(
                "refresh_secs = {} must be positive and shorter than descriptor_ttl_secs = {} \
                 (or the descriptor expires before it is refreshed)",
                self.refresh_secs, self.descriptor_ttl_secs
            ));
        }
        if self.packet_sizes.is_empty() {
            return bad("packet_sizes is empty".into());
        }
        if let Some(s) = self
            .packet_sizes
            .iter()
            .find(|&&s| s == 0 || s > MAX_PACKET_SIZE)
        {
            return bad(format!(
                "packet size {s}: between 1 and {MAX_PACKET_SIZE} bytes"
            ));
        }
        let largest = self.packet_sizes.iter().copied().max().unwrap_or(0) as usize;
        if self.inbound_queue_bytes < largest || self.outbound_queue_bytes < largest {
            return bad(format!(
                "queue byte budgets must hold at least one packet of the largest class ({largest} bytes)"
            ));
        }
        if self.inbound_queue == 0 || self.outbound_queue == 0 {
            return bad("queue lengths must be positive".into());
        }
        if self.workers == 0 || self.workers > 64 {
            return bad(format!("workers = {}: between 1 and 64", self.workers));
        }
        if self.relay_workers == 0 || self.relay_workers > 64 {
            return bad(format!(
                "relay_workers = {}: between 1 and 64",
                self.relay_workers
            ));
        }
        if self.max_links == 0 || self.replay_tags_per_epoch < 16 {
            return bad("max_links must be positive, replay_tags_per_epoch at least 16".into());
        }
        if self.jobs == 0 || self.guest_call_secs == 0 {
            return bad("jobs and guest_call_secs must be positive".into());
        }
        Ok(())
    }
}
