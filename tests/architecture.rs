//! The rules of ARCHITECTURE.md, checked: which crate may depend on which
//! (read from `cargo metadata`), which crates may not touch files, the
//! network or the clock (read from their sources), that every declared
//! dependency is used, and that no source file outgrows the limit.
//!
//! Each rule is a table here, next to the map it enforces, so that moving a
//! box on the map means editing one row. A failure names the crate, the edge
//! or the file, and the rule it breaks.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Which workspace crates each workspace crate may use as a normal or build
/// dependency. A crate missing from this table fails the check: a new crate
/// gets its place on the map (ARCHITECTURE.md) and a row here.
const ALLOWED_INTERNAL: &[(&str, &[&str])] = &[
    ("mixnn-types", &[]),
    ("mixnn-onnx", &[]),
    ("mixnn-grad", &["mixnn-onnx"]),
    ("mixnn-layer", &["mixnn-grad", "mixnn-types", "mixnn-onnx"]),
    ("mixnn-shard", &["mixnn-onnx"]),
    (
        "mixnn-audit",
        &["mixnn-layer", "mixnn-grad", "mixnn-shard", "mixnn-onnx"],
    ),
    ("mixnn-data", &[]),
    ("mixnn-plot", &[]),
    ("mixnn-sphinx", &[]),
    ("mixnn-sandbox", &["mixnn-types"]),
    ("mixnn-protocol", &["mixnn-types"]),
    ("mixnn-p2p", &["mixnn-protocol"]),
    (
        "mixnn-node",
        &[
            "mixnn-protocol",
            "mixnn-p2p",
            "mixnn-sphinx",
            "mixnn-sandbox",
            "mixnn-types",
        ],
    ),
    ("mixnn-bootstrap", &["mixnn-protocol", "mixnn-p2p"]),
    (
        "mixnn-designer",
        &[
            "mixnn-shard",
            "mixnn-layer",
            "mixnn-sandbox",
            "mixnn-data",
            "mixnn-grad",
            "mixnn-onnx",
            "mixnn-types",
            "mixnn-p2p",
            "mixnn-protocol",
            "mixnn-sphinx",
        ],
    ),
    (
        "mixnn-benches",
        &["mixnn-sphinx", "mixnn-p2p", "mixnn-protocol"],
    ),
    (
        "mixnn",
        &[
            "mixnn-shard",
            "mixnn-designer",
            "mixnn-sandbox",
            "mixnn-data",
            "mixnn-layer",
            "mixnn-node",
            "mixnn-bootstrap",
            "mixnn-plot",
            "mixnn-sphinx",
            "mixnn-types",
            "mixnn-protocol",
            "mixnn-audit",
        ],
    ),
];

/// Edges that are forbidden in every dependency kind, tests included:
/// designer and node (or bootstrap) meet only through the protocol crate.
const NEVER: &[(&str, &str)] = &[
    ("mixnn-designer", "mixnn-node"),
    ("mixnn-designer", "mixnn-bootstrap"),
    ("mixnn-node", "mixnn-designer"),
    ("mixnn-bootstrap", "mixnn-designer"),
    ("mixnn-bootstrap", "mixnn-node"),
];

/// External packages that must stay out of crates that run inside the guest
/// (grad, layer and what they use), that are pure parsers (sphinx,
/// protocol), or that are pure computation over what the CLI read (audit): no sandbox, no network stack, no async runtime.
const NO_SYSTEM: &[&str] = &[
    "mixnn-types",
    "mixnn-onnx",
    "mixnn-grad",
    "mixnn-layer",
    "mixnn-sphinx",
    "mixnn-protocol",
    "mixnn-audit",
];
const SYSTEM_PACKAGES: &[&str] = &[
    "wasmtime",
    "wasmtime-wasi",
    "libp2p",
    "libp2p-stream",
    "tokio",
    "futures",
    "tracing-subscriber",
];

/// Library crates return `thiserror` errors; only binaries use anyhow.
const BINARIES: &[&str] = &["mixnn", "mixnn-benches"];

/// Source text that means file, network, environment or clock access. The
/// crates in `NO_SYSTEM` contain none of it outside their tests.
const SYSTEM_CALLS: &[&str] = &[
    "std::fs",
    "std::net",
    "std::env",
    "std::process",
    "SystemTime",
    "Instant",
    "File::",
    "tokio::",
];

/// Dependencies used for their features or by generated code, not by name.
const USED_WITHOUT_NAME: &[(&str, &str, &str)] = &[];

/// Longest source file, in lines.
const MAX_FILE_LINES: usize = 600;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// One workspace package as the checks need it.
struct Package {
    name: String,
    dir: PathBuf,
    /// (dependency package name, name used in code, kind: normal/dev/build)
    deps: Vec<(String, String, String)>,
}

fn packages() -> Vec<Package> {
    let meta = metadata();
    let list = meta["packages"].as_array().expect("packages list");
    list.iter()
        .map(|p| {
            let manifest = PathBuf::from(p["manifest_path"].as_str().expect("manifest path"));
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|d| {
                    let name = d["name"].as_str().expect("dep name").to_string();
                    let code = d["rename"]
                        .as_str()
                        .unwrap_or(&name)
                        .replace('-', "_")
                        .to_string();
                    let kind = d["kind"].as_str().unwrap_or("normal").to_string();
                    (name, code, kind)
                })
                .collect();
            Package {
                name: p["name"].as_str().expect("name").to_string(),
                dir: manifest.parent().expect("manifest dir").to_path_buf(),
                deps,
            }
        })
        .collect()
}

#[test]
fn internal_edges_follow_the_map() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED_INTERNAL.iter().copied().collect();
    let mut broken = Vec::new();
    for p in packages() {
        let Some(ok) = allowed.get(p.name.as_str()) else {
            broken.push(format!(
                "{} is not on the map (tests/architecture.rs ALLOWED_INTERNAL)",
                p.name
            ));
            continue;
        };
        for (dep, _, kind) in &p.deps {
            let internal = dep.starts_with("mixnn");
            if internal && kind != "dev" && dep != &p.name && !ok.contains(&dep.as_str()) {
                broken.push(format!(
                    "{} -> {dep} ({kind}) is not an edge ARCHITECTURE.md allows",
                    p.name
                ));
            }
            if NEVER.contains(&(p.name.as_str(), dep.as_str())) {
                broken.push(format!(
                    "{} -> {dep} ({kind}): designer and node meet only through mixnn-protocol",
                    p.name
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "dependency rules broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn pure_crates_pull_in_no_system_packages() {
    let mut broken = Vec::new();
    for p in packages() {
        for (dep, _, kind) in &p.deps {
            if kind == "dev" {
                continue;
            }
            if NO_SYSTEM.contains(&p.name.as_str()) && SYSTEM_PACKAGES.contains(&dep.as_str()) {
                broken.push(format!(
                    "{} -> {dep}: this crate runs in the guest or is a pure parser",
                    p.name
                ));
            }
            if !BINARIES.contains(&p.name.as_str()) && dep == "anyhow" {
                broken.push(format!(
                    "{} -> anyhow: library crates return thiserror errors",
                    p.name
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "dependency rules broken:\n{}",
        broken.join("\n")
    );
}

/// Every `.rs` file below `dir`, skipping build output.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The source of a file with its unit-test module cut off (`#[cfg(test)]`
/// followed by `mod`, at the end of a module by this project's convention).
/// Only a test *module* ends the scan: a lone `#[cfg(test)]` item elsewhere
/// must not hide the code after it.
fn non_test_source(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let test_mod = text.match_indices("#[cfg(test)]").find(|(at, tag)| {
        let next = text[at + tag.len()..].trim_start();
        next.starts_with("mod ") || next.starts_with("pub mod ")
    });
    match test_mod {
        Some((at, _)) => text[..at].to_string(),
        None => text,
    }
}

#[test]
fn pure_crates_touch_no_files_network_or_clock() {
    let mut broken = Vec::new();
    for p in packages() {
        if !NO_SYSTEM.contains(&p.name.as_str()) {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&p.dir.join("src"), &mut files);
        for f in files {
            let src = non_test_source(&f);
            for (n, line) in src.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for call in SYSTEM_CALLS {
                    if code.contains(call) {
                        broken.push(format!("{}:{}: `{call}` in {}", f.display(), n + 1, p.name));
                    }
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "crates that must do no I/O and read no clock do:\n{}",
        broken.join("\n")
    );
}

/// Whether `code_name` appears as a path or `use` in `text`.
fn mentions(text: &str, code_name: &str) -> bool {
    text.match_indices(code_name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = &text[at + code_name.len()..];
        let starts = !matches!(before, Some(c) if c.is_alphanumeric() || c == '_');
        let path = after.starts_with("::") || after.starts_with(';') || after.starts_with(" as ");
        // `#[serde(with = "serde_bytes")]` names a crate in a string.
        let serde_with = before == Some('"') && after.starts_with('"');
        starts && (path || serde_with)
    })
}

#[test]
fn every_dependency_is_used() {
    let mut unused = Vec::new();
    for p in packages() {
        let mut normal = Vec::new();
        for sub in ["src", "benches"] {
            rust_files(&p.dir.join(sub), &mut normal);
        }
        let build = p.dir.join("build.rs");
        let mut dev = normal.clone();
        rust_files(&p.dir.join("tests"), &mut dev);
        if p.name == "mixnn" {
            rust_files(&root().join("tests"), &mut dev);
        }
        let read = |files: &[PathBuf]| -> String {
            files
                .iter()
                .map(|f| std::fs::read_to_string(f).unwrap_or_default())
                .collect()
        };
        let (src, test_src) = (read(&normal), read(&dev));
        let build_src = std::fs::read_to_string(&build).unwrap_or_default();
        for (dep, code, kind) in &p.deps {
            if dep == &p.name
                || USED_WITHOUT_NAME
                    .iter()
                    .any(|(pkg, d, _)| *pkg == p.name && d == dep)
            {
                continue;
            }
            let text = match kind.as_str() {
                "build" => &build_src,
                "dev" => &test_src,
                _ => &src,
            };
            if !mentions(text, code) {
                unused.push(format!(
                    "{} -> {dep} ({kind}) is never named in its code",
                    p.name
                ));
            }
        }
    }
    assert!(
        unused.is_empty(),
        "unused dependencies:\n{}",
        unused.join("\n")
    );
}

#[test]
fn no_source_file_is_too_long() {
    let mut files = Vec::new();
    rust_files(&root(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > MAX_FILE_LINES).then(|| format!("{} has {n} lines", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines (split them along their jobs):\n{}",
        long.join("\n")
    );
}
