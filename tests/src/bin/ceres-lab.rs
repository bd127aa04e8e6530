//! `ceres-lab`: the one-machine demo. Builds three network namespaces
//! (internet, vps, home), runs both agents with real keys and certificates,
//! joins them, enrols cerectl and shows `cerectl status`; then tears it all
//! down. Needs root (network namespaces).
//!
//! Usage: `ceres-lab demo [--keep]` — with `--keep` it stays up until Enter.

use std::io::BufRead;
use std::time::Duration;

use anyhow::Context;
use ceres_tests::{Ceres, Lab, addr};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("demo") {
        eprintln!(
            "usage: ceres-lab demo [--keep]\n\nBuilds the one-machine lab (namespaces internet, vps, home), runs both agents,\njoins them, shows `cerectl status`, and cleans up. Needs root."
        );
        std::process::exit(2);
    }
    let keep = args.iter().any(|a| a == "--keep");
    anyhow::ensure!(
        ceres_tests::require_root("ceres-lab"),
        "ceres-lab needs root"
    );
    let lab = Lab::new().context("building the namespaces")?;
    step(&format!(
        "lab {}: internet router + client {}, vps {}, home {} (behind the router)",
        lab.id,
        addr::CLIENT,
        addr::VPS,
        addr::HOME
    ));
    let ceres = Ceres::init(&lab, &[], &[])?;
    step("ceres-vps init: CA, server certificate, config");
    let _vps = ceres.start_vps()?;
    step("ceres-vps run: control plane up (mutual TLS gRPC on 203.0.113.10:7443)");
    ceres.join_home()?;
    step(
        "ceres-home join: enrolled with a one-time home token (key generated at home, CSR signed by the VPS)",
    );
    let _home = ceres.start_home()?;
    step("ceres-home run: session to the VPS");
    ceres.enroll_ctl()?;
    step("cerectl enroll (from the internet namespace): admin certificate");
    ceres.wait_home_connected(true, Duration::from_secs(20))?;
    step("cerectl status:");
    let (code, out, _) = ceres.ctl(&["status"])?;
    print!("{out}");
    println!("(exit code {code})");
    if keep {
        println!(
            "\nlab is up: try `ip netns exec {} {} --dir {} status`; press Enter to tear down",
            lab.internet.name,
            ceres_tests::bin("cerectl").display(),
            ceres.ctl_dir.display()
        );
        let _ = std::io::stdin().lock().lines().next();
    }
    step("tearing down");
    Ok(())
}

fn step(msg: &str) {
    println!("==> {msg}");
}
