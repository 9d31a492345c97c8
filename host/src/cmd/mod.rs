//! One module per subcommand, plus what they share.

pub mod audit;
pub mod bench;
pub mod bench_scale;
pub mod bident_table;
pub mod bootstrap;
pub mod cpu;
pub mod demo;
pub mod fork;
pub mod harness;
pub mod infer;
pub mod model;
pub mod node;
pub mod pool;
pub mod progress;
pub mod resume;
pub mod split;
pub mod status;
pub mod train;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use mixnn_sandbox::{GuestKernels, Limits, Sandbox, SandboxOptions};

/// Sandbox limits, shared by every command that runs guests.
#[derive(Args, Clone, Debug)]
pub struct SandboxArgs {
    /// Memory cap per guest instance, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub guest_memory_mib: usize,
    /// CPU time bound per guest call, in seconds.
    #[arg(long, default_value_t = 60)]
    pub guest_call_timeout_s: u64,
    /// Where compiled guests are cached (default: $MIXNN_CACHE_DIR, $XDG_CACHE_HOME/mixnn or ~/.cache/mixnn).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Compile the guests on every start instead of using the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Where guests compute matrix products. `host`: on this machine's
    /// native kernels, reading the operands in place from the guest's
    /// memory (fast; results differ from pure wasm by float rounding).
    /// `wasm`: everything inside the sandbox, bit-identical on every
    /// machine. On a node this is what the operator lends; a designer's
    /// `wasm` demands pure wasm from every node of its job.
    #[arg(long, value_enum, default_value_t = KernelsArg::Host)]
    pub guest_kernels: KernelsArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelsArg {
    Host,
    Wasm,
}

impl SandboxArgs {
    pub fn sandbox(&self) -> Result<Sandbox> {
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(SandboxOptions::default_cache_dir)
        };
        let limits = Limits {
            memory_bytes: self.guest_memory_mib.saturating_mul(1 << 20),
            call_timeout: Duration::from_secs(self.guest_call_timeout_s),
        };
        let kernels = match self.guest_kernels {
            KernelsArg::Host => GuestKernels::Host,
            KernelsArg::Wasm => GuestKernels::Wasm,
        };
        Sandbox::new(SandboxOptions {
            limits,
            kernels,
            cache_dir,
        })
        .context("starting the wasm sandbox")
    }

    /// Whether the layers this process configures ask for host kernels.
    pub fn host_kernels(&self) -> bool {
        self.guest_kernels == KernelsArg::Host
    }
}

/// The bundled MNIST: `$MIXNN_DATA`, else `data/mnist` under the current
/// directory, else the copy in the source tree this binary was built from.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MIXNN_DATA") {
        return PathBuf::from(d);
    }
    let here = PathBuf::from("data/mnist");
    if here.is_dir() {
        return here;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist"))
}

pub fn load_mnist(dir: &Path) -> Result<mixnn_data::Mnist> {
    mixnn_data::load_mnist(dir).with_context(|| format!("loading MNIST from {}", dir.display()))
}

pub fn read_model(path: &Path) -> Result<mixnn_shard::pb::ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    mixnn_shard::decode(&bytes).with_context(|| format!("parsing {}", path.display()))
}

pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let s = serde_json::to_string_pretty(value)?;
    std::fs::write(path, s + "\n").with_context(|| format!("writing {}", path.display()))
}
