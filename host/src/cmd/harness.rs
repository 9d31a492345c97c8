//! The local harness: a bootstrap and N pool nodes as child processes of
//! this binary on 127.0.0.1.
//!
//! `mixnn demo` (and tests) use it to train through the real network path:
//! separate processes, real sockets, Noise and yamux, each node with its own
//! sandbox and its own mix keys, started exactly as an operator would start
//! them (`mixnn bootstrap`, `mixnn node`), rather than tasks sharing one
//! runtime.
//!
//! Every process it starts is stopped on every way out. [`LocalPool`]'s
//! `Drop` sends SIGTERM (the nodes' clean shutdown path), waits a few
//! seconds, then kills what is left; it runs on success, on `?` and while a
//! panic unwinds. [`exit_on_interrupt`] covers Ctrl-C and SIGTERM sent to
//! the harness itself: it stops every live pool and exits (130 / 143).
//!
//! Children write stdout and stderr to files in a temporary directory
//! (removed when the pool stops): stdout is polled for the addresses they
//! print, and the tail of stderr goes into the error when one fails to
//! start. Files rather than pipes, so a chatty child can never block on a
//! full pipe nobody reads.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a stopped child gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often a child's stdout file is re-read while waiting for a line.
const POLL: Duration = Duration::from_millis(50);
/// Loopback only, port chosen by the system.
const LISTEN: &str = "/ip4/127.0.0.1/tcp/0";
/// The nodes' metrics endpoints: loopback, port chosen by each node.
const METRICS: &str = "127.0.0.1:0";

/// What to start.
#[derive(Clone, Debug)]
pub struct LocalPoolOptions {
    /// Pool nodes (one bootstrap is always started besides).
    pub nodes: usize,
    /// `--cover-loop-ms` of every node (0 = no loop cover).
    pub cover_loop_ms: u64,
    /// `--cover-drop-ms` of every node (0 = no drop cover).
    pub cover_drop_ms: u64,
    /// `--cover-bytes-per-sec` of every node (default: the node's).
    pub cover_bytes_per_sec: Option<u64>,
    /// `--slot-ms` and `--slot-class` of every node (slots off if `None`).
    pub slots: Option<(u64, u32)>,
    /// `--cache-dir` of every node (compiled guests); default: theirs.
    pub cache_dir: Option<PathBuf>,
    /// How long the bootstrap and all nodes together may take to come up.
    pub start_timeout: Duration,
    /// Chaos testing (`demo --lie`): nodes start with the hidden flag that
    /// makes them corrupt their layers' outputs on SIGUSR1.
    pub chaos_lie: bool,
}

impl Default for LocalPoolOptions {
    fn default() -> Self {
        LocalPoolOptions {
            nodes: 6,
            cover_loop_ms: 200,
            cover_drop_ms: 200,
            cover_bytes_per_sec: None,
            slots: None,
            cache_dir: None,
            start_timeout: Duration::from_secs(90),
            chaos_lie: false,
        }
    }
}

/// One running node.
#[derive(Clone, Debug)]
pub struct NodeProcess {
    pub peer_id: String,
    pub metrics: SocketAddr,
}

struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// The processes and the directory, shared with the interrupt handler.
struct Inner {
    procs: Vec<Proc>,
    dir: Option<tempfile::TempDir>,
}

impl Inner {
    /// SIGTERM to all first (they shut down in parallel), then wait for
    /// each until the grace period ends, then kill. Idempotent.
    fn stop(&mut self) {
        for p in &mut self.procs {
            terminate(&mut p.child);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for p in &mut self.procs {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                    _ => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                }
            }
        }
        self.procs.clear();
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

/// Live pools, for the interrupt handler (weak: a dropped pool has stopped).
static LIVE: Mutex<Vec<Weak<Mutex<Inner>>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bootstrap and `nodes` node processes on 127.0.0.1; dropping it stops
/// them all and removes their data directories.
pub struct LocalPool {
    inner: Arc<Mutex<Inner>>,
    bootstrap: String,
    nodes: Vec<NodeProcess>,
}

impl LocalPool {
    /// Starts the bootstrap, then all nodes at once, and returns when every
    /// node has printed its banner: `mixnn node` prints it only after the
    /// bootstrap accepted its descriptor, so all nodes are in the directory.
    /// `progress` gets one line per stage.
    pub fn start(opts: &LocalPoolOptions, progress: &mut dyn FnMut(&str)) -> Result<LocalPool> {
        let exe = std::env::current_exe().context("finding this program's path")?;
        let dir = tempfile::Builder::new()
            .prefix("mixnn-harness-")
            .tempdir()
            .context("creating the harness's temporary directory")?;
        let root = dir.path().to_path_buf();
        let inner = Arc::new(Mutex::new(Inner {
            procs: Vec::new(),
            dir: Some(dir),
        }));
        {
            let mut live = lock(&LIVE);
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(&inner));
        }
        // From here on an early return drops `pool`, which stops whatever
        // was started.
        let mut pool = LocalPool {
            inner,
            bootstrap: String::new(),
            nodes: Vec::new(),
        };
        let deadline = Instant::now() + opts.start_timeout;

        progress(&format!(
            "starting the bootstrap (files in {})",
            root.display()
        ));
        let args = flags("bootstrap", vec![("--listen", LISTEN.into())]);
        pool.spawn(&exe, "bootstrap", &args, &root)?;
        pool.bootstrap = pool.wait_for(0, deadline, |lines| {
            lines
                .iter()
                .find(|l| l.starts_with("  /ip4/") && l.contains("/p2p/"))
                .map(|l| l.trim().to_string())
        })?;
        progress(&format!("bootstrap at {}", pool.bootstrap));

        // Metrics endpoints on port 0: each node binds a port of its own
        // and prints it. (Ports picked here and handed over raced with
        // the nodes' own connections, which take ports from the same
        // range: one node in a few 40-node starts failed to bind.)
        for i in 0..opts.nodes {
            let name = format!("node-{}", i + 1);
            let mut pairs: Vec<(&str, OsString)> = vec![
                ("--bootstrap", pool.bootstrap.clone().into()),
                ("--listen", LISTEN.into()),
                ("--data-dir", root.join(&name).into()),
                ("--metrics", METRICS.into()),
                ("--cover-loop-ms", opts.cover_loop_ms.to_string().into()),
                ("--cover-drop-ms", opts.cover_drop_ms.to_string().into()),
            ];
            if let Some(c) = opts.cover_bytes_per_sec {
                pairs.push(("--cover-bytes-per-sec", c.to_string().into()));
            }
            if let Some((ms, class)) = opts.slots {
                pairs.push(("--slot-ms", ms.to_string().into()));
                pairs.push(("--slot-class", class.to_string().into()));
            }
            if let Some(d) = &opts.cache_dir {
                pairs.push(("--cache-dir", d.into()));
            }
            let mut args = flags("node", pairs);
            if opts.chaos_lie {
                args.push("--chaos-lie-on-signal".into());
            }
            progress(&format!("starting {name}"));
            pool.spawn(&exe, &name, &args, &root)?;
        }
        progress(&format!(
            "waiting for {} nodes to publish their descriptors to the directory",
            opts.nodes
        ));
        for i in 0..opts.nodes {
            // The metrics line comes after the banner and the addresses.
            let node = pool.wait_for(i + 1, deadline, |lines| {
                let metrics = lines.iter().find_map(|l| {
                    l.strip_prefix("metrics: http://")?
                        .split_once("/metrics")?
                        .0
                        .parse()
                        .ok()
                })?;
                let peer_id = lines.iter().find_map(|l| {
                    l.strip_prefix("node ")?
                        .strip_suffix(" listening on:")
                        .map(str::to_string)
                })?;
                Some(NodeProcess { peer_id, metrics })
            })?;
            progress(&format!(
                "node-{} up: {} (metrics on {})",
                i + 1,
                node.peer_id,
                node.metrics
            ));
            pool.nodes.push(node);
        }
        Ok(pool)
    }

    /// The bootstrap's full multiaddr (`/ip4/127.0.0.1/tcp/…/p2p/…`).
    pub fn bootstrap_addr(&self) -> &str {
        &self.bootstrap
    }

    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    pub fn metrics_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.metrics).collect()
    }

    /// Every node's metrics, each series summed over the nodes (counters
    /// of the whole pool; gauges summed too, which is what a pool total
    /// means for them).
    pub fn metrics_sum(&self) -> Result<BTreeMap<String, f64>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let mut sum = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            // A node the chaos tool killed has no metrics left to read.
            if self.exited(i + 1) {
                continue;
            }
            let text = rt
                .block_on(mixnn_node::metrics::scrape(n.metrics))
                .with_context(|| format!("reading the metrics of node {}", n.peer_id))?;
            for (series, v) in mixnn_node::metrics::parse_text(&text) {
                *sum.entry(series).or_insert(0.0) += v;
            }
        }
        Ok(sum)
    }

    /// Stops every process now (the same as dropping the pool).
    pub fn stop(self) {}

    /// Process ids, the bootstrap's first, then the nodes' in start order;
    /// `None` for one that has exited. `mixnn bench scale` reads each
    /// one's CPU time from /proc and tells a node that died from one that
    /// is slow.
    pub fn pids(&self) -> Vec<Option<u32>> {
        (lock(&self.inner).procs.iter_mut())
            .map(|p| match p.child.try_wait() {
                Ok(None) => Some(p.child.id()),
                _ => None,
            })
            .collect()
    }

    /// Whether process `i` (0 is the bootstrap, node `k` is `k + 1`) has
    /// exited, e.g. killed by `--kill`.
    fn exited(&self, i: usize) -> bool {
        lock(&self.inner)
            .procs
            .get_mut(i)
            .is_some_and(|p| p.child.try_wait().ok().flatten().is_some())
    }

    /// A handle that can SIGKILL this pool's nodes while it runs (the
    /// demo's `--kill`); it does not keep the pool alive.
    pub fn killer(&self) -> Killer {
        Killer {
            inner: Arc::downgrade(&self.inner),
            peers: self.nodes.iter().map(|n| n.peer_id.clone()).collect(),
        }
    }
}

/// SIGKILLs node processes of a [`LocalPool`] by peer id: no clean
/// shutdown, no closing of links, what a pulled plug does. The rest of the
/// pool keeps running.
#[derive(Clone)]
pub struct Killer {
    inner: Weak<Mutex<Inner>>,
    /// Peer id of each node, in start order (node `i` is process `i + 1`).
    peers: Vec<String>,
}

impl Killer {
    /// SIGKILLs the node process that holds `peer_id` and reaps it; returns
    /// its name (`node-N`). Fails if no running node of the pool has it.
    pub fn kill(&self, peer_id: &str) -> Result<String> {
        self.with_running(peer_id, |p| {
            // std's kill is SIGKILL on Unix.
            p.child
                .kill()
                .with_context(|| format!("killing {} ({peer_id})", p.name))?;
            let _ = p.child.wait();
            Ok(())
        })
    }

    /// Sends SIGUSR1 to the node process that holds `peer_id`: started
    /// with `chaos_lie`, it corrupts its layers' outputs from then on.
    /// Returns its name.
    #[cfg(unix)]
    pub fn make_lie(&self, peer_id: &str) -> Result<String> {
        self.with_running(peer_id, |p| {
            let pid = libc::pid_t::try_from(p.child.id()).context("a pid beyond pid_t")?;
            // SAFETY: kill(2) has no memory effects; the child is running
            // and unreaped (checked under the pool's lock), so the pid is
            // still our child's.
            if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
                bail!("signalling {} ({peer_id})", p.name);
            }
            Ok(())
        })
    }

    /// Runs `f` on the running node process that holds `peer_id`; returns
    /// its name.
    fn with_running(
        &self,
        peer_id: &str,
        f: impl FnOnce(&mut Proc) -> Result<()>,
    ) -> Result<String> {
        let i = self
            .peers
            .iter()
            .position(|p| p == peer_id)
            .with_context(|| format!("no node of the local pool is {peer_id}"))?;
        let inner = self.inner.upgrade().context("the local pool has stopped")?;
        let mut inner = lock(&inner);
        let p = inner
            .procs
            .get_mut(i + 1)
            .with_context(|| format!("node {} was not started", i + 1))?;
        if p.child.try_wait().ok().flatten().is_some() {
            bail!("{} ({peer_id}) is not running", p.name);
        }
        f(p)?;
        Ok(p.name.clone())
    }
}

impl LocalPool {
    fn spawn(&mut self, exe: &Path, name: &str, args: &[OsString], root: &Path) -> Result<()> {
        let stdout = root.join(format!("{name}.out"));
        let stderr = root.join(format!("{name}.log"));
        let create =
            |p: &Path| File::create(p).with_context(|| format!("creating {}", p.display()));
        // A child's error must be the end of its log (the harness quotes
        // the tail): no anyhow backtrace after it, even when this process
        // runs with RUST_BACKTRACE set (panics still get theirs).
        let child = Command::new(exe)
            .args(args)
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(create(&stdout)?)
            .stderr(create(&stderr)?)
            .spawn()
            .with_context(|| format!("starting {name} ({} {args:?})", exe.display()))?;
        lock(&self.inner).procs.push(Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        });
        Ok(())
    }

    /// Polls process `index`'s stdout until `find` recognises what it
    /// waits for; fails if the process exits or the deadline passes.
    fn wait_for<T>(
        &self,
        index: usize,
        deadline: Instant,
        find: impl Fn(&[&str]) -> Option<T>,
    ) -> Result<T> {
        loop {
            let mut inner = lock(&self.inner);
            let p = inner
                .procs
                .get_mut(index)
                .context("the pool was stopped while starting")?;
            let raw = std::fs::read(&p.stdout).unwrap_or_default();
            let text = String::from_utf8_lossy(&raw);
            // Only complete lines: the child may be mid-write.
            let done = text.rfind('\n').map_or("", |end| &text[..end]);
            let lines: Vec<&str> = done.lines().collect();
            if let Some(found) = find(&lines) {
                return Ok(found);
            }
            let exited = p.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                let why = match exited {
                    Some(status) => format!("{} exited ({status})", p.name),
                    None => format!("{} did not come up in time", p.name),
                };
                bail!(
                    "{why}; the end of its log ({}):\n{}",
                    p.stderr.display(),
                    tail(&p.stderr, 15)
                );
            }
            drop(inner);
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for LocalPool {
    fn drop(&mut self) {
        lock(&self.inner).stop();
    }
}

/// Installs (once per process) a handler for Ctrl-C and SIGTERM that stops
/// every live [`LocalPool`] and exits with 130 (Ctrl-C) or 143 (SIGTERM).
/// It stays for the whole run, so an interrupt after the pool has stopped
/// still ends the program (tokio's handler replaces the default action).
pub fn exit_on_interrupt() -> Result<()> {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    // Registered here, not in the thread, so no signal slips through
    // between this call and the thread's start.
    #[cfg(unix)]
    let (mut int, mut term) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _guard = rt.enter();
        (
            signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?,
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        )
    };
    std::thread::Builder::new()
        .name("mixnn-interrupt".into())
        .spawn(move || {
            #[cfg(unix)]
            let code = rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                }
            });
            #[cfg(not(unix))]
            let code = {
                let _ = rt.block_on(tokio::signal::ctrl_c());
                130
            };
            eprintln!("\ninterrupted: stopping the local pool's processes");
            let live: Vec<_> = lock(&LIVE).drain(..).collect();
            for inner in live.iter().filter_map(Weak::upgrade) {
                lock(&inner).stop();
            }
            std::process::exit(code);
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Asks a child to stop (SIGTERM: the node and bootstrap shut down
/// cleanly on it); a child that already exited is left alone.
#[cfg(unix)]
fn terminate(child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory effects. The pid is our own child's,
        // which has not been reaped (try_wait just said it is running, and
        // only we wait on it), so it cannot name another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

#[cfg(not(unix))]
fn terminate(child: &mut Child) {
    let _ = child.kill();
}

/// `command --flag value …` as arguments (paths stay `OsString`s).
fn flags(command: &str, pairs: Vec<(&str, OsString)>) -> Vec<OsString> {
    let mut args = vec![OsString::from(command)];
    for (flag, value) in pairs {
        args.push(flag.into());
        args.push(value);
    }
    args
}

/// The last `n` lines of a log file (empty if unreadable).
fn tail(path: &Path, n: usize) -> String {
    let raw = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
