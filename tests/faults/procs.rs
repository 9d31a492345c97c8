//! A pool of real processes for the fault tests: `mixnn bootstrap` and
//! `mixnn node` children of the test on 127.0.0.1, so a test can SIGKILL
//! one (the demo's harness lives in the binary; this is its small twin).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bootstrap and nodes; every child is killed when dropped.
pub struct Procs {
    pub bootstrap: String,
    /// Each node's process and peer id.
    pub nodes: Vec<(Child, String)>,
    boot: Child,
    _dir: tempfile::TempDir,
}

fn spawn(args: &[String], out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mixnn"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).expect("stdout file"))
        .stderr(std::fs::File::create(out.with_extension("log")).expect("log file"))
        .spawn()
        .expect("mixnn starts")
}

/// Waits until `find` sees what it wants in the complete lines of `out`.
fn wait_for(out: &Path, child: &mut Child, find: impl Fn(&str) -> Option<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        let done = text.rfind('\n').map_or("", |e| &text[..e]);
        if let Some(v) = done.lines().find_map(&find) {
            return v;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
            panic!("{} exited ({status}):\n{log}", out.display());
        }
        assert!(
            Instant::now() < deadline,
            "{} did not come up",
            out.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Procs {
    /// A bootstrap and `n` nodes without cover traffic, all listed.
    pub fn start(n: usize) -> Procs {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |name: &str| -> PathBuf { dir.path().join(name) };
        let listen = "/ip4/127.0.0.1/tcp/0".to_string();
        let out = p("bootstrap.out");
        let mut boot = spawn(
            &["bootstrap".into(), "--listen".into(), listen.clone()],
            &out,
        );
        let bootstrap = wait_for(&out, &mut boot, |l| {
            let l = l.trim();
            (l.starts_with("/ip4/") && l.contains("/p2p/")).then(|| l.to_string())
        });
        let mut nodes = Vec::new();
        for i in 0..n {
            let data_dir = p(&format!("node-{i}")).to_string_lossy().into_owned();
            let args: Vec<String> = [
                "node",
                "--bootstrap",
                bootstrap.as_str(),
                "--listen",
                listen.as_str(),
                "--data-dir",
                data_dir.as_str(),
                "--cover-loop-ms",
                "0",
                "--cover-drop-ms",
                "0",
            ]
            .iter()
            .map(ToString::to_string)
            .collect();
            nodes.push(spawn(&args, &p(&format!("node-{i}.out"))));
        }
        let nodes = nodes
            .into_iter()
            .enumerate()
            .map(|(i, mut child)| {
                let out = p(&format!("node-{i}.out"));
                // The banner's last line comes once the bootstrap accepted
                // the descriptor.
                wait_for(&out, &mut child, |l| {
                    l.starts_with("(Ctrl-C").then(String::new)
                });
                let peer = wait_for(&out, &mut child, |l| {
                    l.strip_prefix("node ")?
                        .strip_suffix(" listening on:")
                        .map(str::to_string)
                });
                (child, peer)
            })
            .collect();
        Procs {
            bootstrap,
            nodes,
            boot,
            _dir: dir,
        }
    }

    /// SIGKILLs the node holding `peer` and reaps it.
    pub fn kill(&mut self, peer: &str) {
        let (child, _) = self
            .nodes
            .iter_mut()
            .find(|(_, p)| p == peer)
            .expect("a node of the pool");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (c, _) in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.boot.kill();
        let _ = self.boot.wait();
    }
}
