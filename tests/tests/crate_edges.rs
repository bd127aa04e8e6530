//! The crate edges the architecture promises, checked on the real dependency
//! graph (`cargo tree`, as cargo resolves it for a build of that package):
//!
//! - `cerectl`, the admin tool meant to run anywhere, links no tunnel engine:
//!   no boringtun, no tun-rs, no `ceres-tunnel`, no `ceres-agent`.
//! - the agents use the tunnel library without its `cli` feature, so they do
//!   not pull what only the `ceres-wg` binary needs.
//!
//! A dependency that comes back through any path (a helper moved back into
//! `ceres-control`, a default feature turned on) fails these tests.

use std::path::Path;
use std::process::Command;

/// Runs `cargo tree` for the workspace with `args`; one line per entry.
fn cargo_tree(args: &[&str]) -> Vec<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    // --offline: the lock file and the package cache the build used are all it
    // needs; a test never goes to the network.
    let out = Command::new(cargo)
        .arg("tree")
        .arg("--offline")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(args)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The package names (no versions) in `cerectl`'s normal dependency graph.
fn cerectl_packages() -> Vec<String> {
    cargo_tree(&[
        "-p", "cerectl", "-e", "normal", "--prefix", "none", "--format", "{p}",
    ])
    .iter()
    .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
    .collect()
}

#[test]
fn cerectl_links_no_tunnel_engine() {
    let packages = cerectl_packages();
    // The graph is the real one, not an empty answer: what cerectl does need
    // is in it.
    for needed in ["cerectl", "ceres-control", "ceres-proto", "tonic", "rustls"] {
        assert!(
            packages.iter().any(|p| p == needed),
            "{needed} missing from cerectl's dependencies: {packages:?}"
        );
    }
    let forbidden: Vec<&String> = packages
        .iter()
        .filter(|p| ["boringtun", "tun-rs", "ceres-tunnel", "ceres-agent"].contains(&p.as_str()))
        .collect();
    assert!(
        forbidden.is_empty(),
        "cerectl links the tunnel engine through {forbidden:?}; see \
         `cargo tree -p cerectl -e normal -i {}` for the path and move that code \
         to the agents' side (ceres-agent)",
        forbidden[0]
    );
}

#[test]
fn agents_use_the_tunnel_library_without_the_binary_only_dependencies() {
    // Every feature of ceres-tunnel that a build of both agents turns on.
    let lines = cargo_tree(&[
        "-p",
        "ceres-vps",
        "-p",
        "ceres-home",
        "-e",
        "features",
        "-i",
        "ceres-tunnel",
        "--prefix",
        "none",
    ]);
    assert!(
        lines.iter().any(|l| l.starts_with("ceres-tunnel v")),
        "ceres-tunnel is not in the agents' graph: {lines:#?}"
    );
    let enabled: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.starts_with("ceres-tunnel feature \"cli\"")
                || l.starts_with("ceres-tunnel feature \"default\"")
        })
        .collect();
    assert!(
        enabled.is_empty(),
        "the agents turn on {enabled:?} of ceres-tunnel; its `cli` feature is only \
         for the ceres-wg binary (depend on it with default-features = false)"
    );
}
