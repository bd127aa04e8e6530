//! A further VPS for a [`Lab`]: its own namespace on the lab's internet
//! router, its own address in the VPS provider's network (a host route on the
//! router, beside the first VPS's link), its own config, state, CA and
//! tunnel interface — for tests of a home behind several VPSes and of
//! `cerectl` enrolled with several.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Daemon, Lab, Netns, addr, bin, sh};

/// A second (third, ...) VPS host in a lab.
#[derive(Debug)]
pub struct ExtraVps {
    /// What it is called in messages and file names (`vps-b`).
    pub label: String,
    /// Its public address.
    pub ip: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its state directory.
    pub state: PathBuf,
    /// Its tunnel interface name (unique: the WireGuard API directory is shared).
    pub tun: String,
    /// The host; deleted on drop, after the lab's daemons stop with the lab.
    pub ns: Netns,
}

impl ExtraVps {
    /// Builds the host `ceres-ID-LABEL` with `ip` (an address in
    /// 203.0.113.0/24 other than the first VPS's) linked to the lab's
    /// router, and `ceres-vps init` for it with domain example.com and the
    /// extra `CERES_*` `lines` in its config (`CERES_MAIL_HOST=...`).
    pub fn init(lab: &Lab, label: &str, ip: &str, lines: &[&str]) -> anyhow::Result<Self> {
        Self::init_dual(lab, label, ip, None, lines)
    }

    /// [`ExtraVps::init`] with a public IPv6 address too (`ip6`, in
    /// 2001:db8:1::/64 other than the first VPS's), reached from the router
    /// over the same link by a host route and a fixed link-local gateway.
    pub fn init_dual(
        lab: &Lab,
        label: &str,
        ip: &str,
        ip6: Option<&str>,
        lines: &[&str],
    ) -> anyhow::Result<Self> {
        // Interface names are at most 15 bytes: the lab id plus one letter.
        let tag = label.chars().last().unwrap_or('x');
        let ns = Netns::new(format!("ceres-{}-{label}", lab.id))?;
        let (own, peer) = (format!("x{tag}{}", lab.id), format!("x{tag}{}i", lab.id));
        sh(Command::new("ip").args([
            "link",
            "add",
            &own,
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &lab.internet.name,
        ]))?;
        lab.internet.ip(&["link", "set", &peer, "up"])?;
        // The router reaches it by a host route; it reaches the router's
        // address on the first VPS's link (any local address answers ARP).
        lab.internet
            .ip(&["route", "add", &format!("{ip}/32"), "dev", &peer])?;
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", &own])?;
        ns.ip(&["link", "set", &own, "up"])?;
        ns.ip(&["route", "add", &format!("{}/32", addr::VPS_GW), "dev", &own])?;
        ns.ip(&["route", "add", "default", "via", addr::VPS_GW, "dev", &own])?;
        if let Some(ip6) = ip6 {
            // The router's side gets a link-local address of our choosing, so
            // the VPS has a gateway to name.
            lab.internet
                .ip(&["-6", "addr", "add", "fe80::1/64", "dev", &peer, "nodad"])?;
            lab.internet
                .ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", &peer])?;
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ip6}/128"),
                "dev",
                &own,
                "nodad",
            ])?;
            ns.ip(&[
                "-6", "route", "add", "default", "via", "fe80::1", "dev", &own,
            ])?;
        }
        let v = Self {
            label: label.to_owned(),
            ip: ip.to_owned(),
            config: lab.path(&format!("{label}.env")),
            state: lab.path(&format!("{label}-state")),
            tun: format!("c{tag}{}", lab.id),
            ns,
        };
        let mut text = format!("CERES_REPORT_INTERVAL=1s\nCERES_TUNNEL_IFNAME={}\n", v.tun);
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&v.config, text)?;
        let public = match ip6 {
            Some(ip6) => format!("{ip},{ip6}"),
            None => ip.to_owned(),
        };
        sh(&mut v.command(&["init", "--public-ip", &public, "--domain", "example.com"]))?;
        Ok(v)
    }

    /// `ceres-vps --config ... --state-dir ... ARGS`, here (not in the namespace).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("ceres-vps"));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args);
        cmd
    }

    /// Starts `ceres-vps run` in its namespace and waits until it is ready.
    pub fn start(&self, lab: &Lab) -> anyhow::Result<Daemon> {
        let mut cmd = self.ns.command(bin("ceres-vps"));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("run")
            .env("RUST_LOG", "info");
        let mut d = Daemon::spawn(&self.label, cmd, lab.dir.path())?;
        d.wait_ready(Duration::from_secs(20))?;
        Ok(d)
    }

    /// A fresh one-time token.
    pub fn token(&self, role: &str) -> anyhow::Result<String> {
        Ok(sh(&mut self.command(&["token", "create", "--role", role]))?
            .trim()
            .to_owned())
    }
}
