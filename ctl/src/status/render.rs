//! `cerectl status` as text: for a terminal (colour, symbols) or plain.

use std::time::Duration;

use super::Status;
use super::facts::{EgressState, InputFilter, Ipv6Egress, RotationResult};

impl Status {
    /// Human rendering; `fancy` adds colour and symbols (for a terminal).
    ///
    /// Every string is shown with control characters escaped: most come
    /// from home (its name, errors, the mail server's banner), and an
    /// escape sequence in one must not drive the admin's terminal.
    pub fn render(&self, fancy: bool) -> String {
        match self.for_terminal() {
            Some(clean) => clean.render_raw(fancy),
            // Cannot happen (the round trip is of our own types); if it
            // did, plain text escaped as a whole is still safe.
            None => escape_controls(&self.render_raw(false)),
        }
    }

    /// A copy with [`escape_controls`] applied to every string in it.
    fn for_terminal(&self) -> Option<Status> {
        fn walk(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::String(s) => *s = escape_controls(s),
                serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
                serde_json::Value::Object(o) => o.values_mut().for_each(walk),
                _ => {}
            }
        }
        let mut v = serde_json::to_value(self).ok()?;
        walk(&mut v);
        serde_json::from_value(v).ok()
    }

    fn render_raw(&self, fancy: bool) -> String {
        let paint = |ok: bool, text: &str| -> String {
            match (fancy, ok) {
                (false, _) => text.to_owned(),
                (true, true) => format!("\x1b[32m{text}\x1b[0m"),
                (true, false) => format!("\x1b[31;1m{text}\x1b[0m"),
            }
        };
        let mark = |ok: bool| -> String {
            match (fancy, ok) {
                (true, true) => paint(true, "✔"),
                (true, false) => paint(false, "✘"),
                (false, true) => "OK  ".into(),
                (false, false) => "FAIL".into(),
            }
        };
        let v = &self.vps;
        let h = &self.home;
        let mut out = String::new();
        out.push_str(&format!(
            "CERES mail gateway for {} (mail host {})\n\n",
            v.domain, v.mail_host
        ));
        out.push_str(&format!(
            "{} VPS agent   {} · up {} · public {} · control {}\n",
            mark(true),
            v.version,
            human(Duration::from_secs(v.uptime_secs)),
            v.public_ips.join(", "),
            v.control_address
        ));
        let home_line = if let Some(r) = &h.revocation {
            format!(
                "{} home agent  {} · certificate {:?} (serial {}) revoked {}",
                mark(false),
                paint(false, "REVOKED"),
                r.name,
                r.serial,
                r.at.as_deref().unwrap_or("?")
            )
        } else if h.connected {
            format!(
                "{} home agent  {} · connected since {} · from {} · last report {} ago",
                mark(true),
                h.version.as_deref().unwrap_or("?"),
                h.since.as_deref().unwrap_or("?"),
                h.remote_address.as_deref().unwrap_or("?"),
                h.last_report_age_secs
                    .map(|s| human(Duration::from_secs(s)))
                    .unwrap_or_else(|| "?".into()),
            )
        } else if let Some(since) = &h.since {
            format!(
                "{} home agent  {} since {}",
                mark(false),
                paint(false, "NOT CONNECTED"),
                since
            )
        } else {
            format!(
                "{} home agent  {}",
                mark(false),
                paint(false, "NEVER CONNECTED")
            )
        };
        out.push_str(&home_line);
        out.push('\n');
        if let Some(host) = &h.hostname {
            out.push_str(&format!("              host {host}"));
            if let Some(c) = &h.certificate_not_after {
                out.push_str(&format!(" · certificate valid until {c}"));
            }
            out.push('\n');
        }
        let t = &self.tunnel;
        let tline = if t.up {
            format!(
                "{} tunnel      up · last handshake {} ago · home endpoint {} · rx {} tx {}",
                mark(true),
                t.vps
                    .last_handshake_age_secs
                    .map(|s| human(Duration::from_secs(s)))
                    .unwrap_or_else(|| "?".into()),
                t.vps.endpoint.as_deref().unwrap_or("?"),
                bytes(t.vps.rx_bytes),
                bytes(t.vps.tx_bytes),
            )
        } else if !t.vps.running {
            format!(
                "{} tunnel      {}",
                mark(false),
                paint(false, t.vps.error.as_deref().unwrap_or("not running"))
            )
        } else {
            format!(
                "{} tunnel      {}",
                mark(false),
                paint(false, "DOWN (no recent handshake)")
            )
        };
        out.push_str(&tline);
        out.push('\n');
        if t.vps.running {
            out.push_str(&format!(
                "              {} {} · key {} · dropped {}\n",
                t.vps.ifname,
                t.vps.address.as_deref().unwrap_or("?"),
                short_key(t.vps.public_key.as_deref()),
                t.vps.dropped
            ));
            if let Some(h) = &t.home {
                out.push_str(&format!(
                    "              home {} {} · key {}{}\n",
                    h.ifname,
                    h.address.as_deref().unwrap_or("?"),
                    short_key(h.public_key.as_deref()),
                    h.error
                        .as_deref()
                        .map(|e| format!(" · {e}"))
                        .unwrap_or_default()
                ));
            }
        }
        if !self.relays.is_empty() {
            out.push_str(&format!(
                "{} relays      {} ports\n",
                mark(true),
                self.relays.len()
            ));
            // "via": the port of home's forwarder on its tunnel address, as
            // home reported it ("-": none, so the relay answers 421).
            out.push_str("              port → home  via    proxy      active   total      in     out  refused  421/closed\n");
            for r in &self.relays {
                let via = self
                    .forwards
                    .iter()
                    .find(|f| f.target_port == r.target_port)
                    .map_or_else(|| "-".to_owned(), |f| f.port.to_string());
                out.push_str(&format!(
                    "              {:<5}→ {:<5} {:<6} {:<9} {:>7} {:>7} {:>7} {:>7} {:>8} {:>11}{}\n",
                    r.port,
                    r.target_port,
                    via,
                    r.proxy.name().unwrap_or("-"),
                    r.active,
                    r.total,
                    bytes(r.bytes_in),
                    bytes(r.bytes_out),
                    r.refused,
                    r.unavailable,
                    r.last_error
                        .as_deref()
                        .map(|e| format!("  last error: {e}"))
                        .unwrap_or_default()
                ));
                if !r.refused_by.is_empty() {
                    let why: Vec<String> = r
                        .refused_by
                        .iter()
                        .map(|(reason, n)| format!("{reason} {n}"))
                        .collect();
                    out.push_str(&format!(
                        "                     refused by: {}\n",
                        why.join(", ")
                    ));
                }
            }
        }
        let e = &self.egress;
        // Before home's first report only the VPS end is known.
        let blocked = [Some(&e.vps), e.home.as_ref()]
            .into_iter()
            .flatten()
            .any(|end| end.state == Some(EgressState::Blocked));
        let egress_ok = e.vps.enabled && e.home.as_ref().is_none_or(|h| h.enabled) && !blocked;
        let ports = e
            .vps
            .tcp_ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        if e.vps.enabled || e.home.as_ref().is_some_and(|h| h.enabled) {
            out.push_str(&format!(
                "{} egress      outbound mail leaves from the VPS on tcp {ports}{}\n",
                mark(egress_ok),
                e.home
                    .as_ref()
                    .map(|h| format!(" · home sources {}", h.sources.join(", ")))
                    .unwrap_or_default()
            ));
            if blocked {
                out.push_str(
                    "              blocked by another firewall table: see the problems below\n",
                );
            }
            let v6 = match e.vps.ipv6 {
                Some(Ipv6Egress::Available) => Some("IPv6 leaves from the VPS's public IPv6"),
                Some(Ipv6Egress::NoPublicIpv6) => Some("no IPv6: the VPS has no public IPv6"),
                Some(Ipv6Egress::TunnelIpv4Only) => Some("no IPv6: the tunnel is IPv4 only"),
                Some(Ipv6Egress::Off) | None => None,
            };
            if let Some(v6) = v6 {
                out.push_str(&format!("              {v6}\n"));
            }
        }
        if let Some(state) = h.input_filter {
            let (ok, text) = match state {
                InputFilter::Installed => (true, "from the tunnel only the VPS to the forwarders"),
                InputFilter::Off => (true, "off (the tunnel is off)"),
                InputFilter::Failed => (false, "NOT CURRENT: see the problems below"),
            };
            out.push_str(&format!(
                "{} home filter {}\n",
                mark(ok),
                if ok {
                    text.to_owned()
                } else {
                    paint(false, text)
                }
            ));
        }
        if self.tunnel.vps.running {
            let r = &self.rotation;
            let outcome = match r.last_result {
                Some(RotationResult::Ok) => "ok".to_owned(),
                Some(RotationResult::Failed) => {
                    format!("failed: {}", r.last_failure.as_deref().unwrap_or("?"))
                }
                Some(RotationResult::Never) | None => "-".to_owned(),
            };
            out.push_str(&format!(
                "{} keys        age {} · rotations {} · last {} ({outcome}) · next {}{}\n",
                mark(r.last_result != Some(RotationResult::Failed)),
                r.keys_age_secs
                    .map(|s| human(Duration::from_secs(s)))
                    .unwrap_or_else(|| "?".into()),
                r.completed,
                r.last.as_deref().unwrap_or("never"),
                r.next.as_deref().unwrap_or("?"),
                r.pending
                    .map(|p| format!(" · rotation {p} in progress"))
                    .unwrap_or_default(),
            ));
        }
        if !self.mail_server.is_empty() {
            out.push_str("  mail server (home's probes)\n");
            for p in &self.mail_server {
                let state = match (p.reachable, p.expects_proxy) {
                    (false, _) => "not reachable".to_owned(),
                    (true, true) => "expects PROXY".to_owned(),
                    (true, false) => p.banner.clone().unwrap_or_else(|| "reachable".into()),
                };
                out.push_str(&format!(
                    "              {:<5} relay sends {:<8} · {}{}\n",
                    p.port,
                    p.relay_proxy.name().unwrap_or("none"),
                    state,
                    p.error
                        .as_deref()
                        .map(|e| format!(" · {e}"))
                        .unwrap_or_default()
                ));
            }
        }
        if let Some(s) = &self.stack {
            out.push_str(&crate::status_stack::render(s, &mark(s.ok), paint));
        }
        out.push_str(&crate::status_checks::render(
            &self.checks,
            &self.alert_channels,
            fancy,
        ));
        if !self.warnings.is_empty() {
            out.push('\n');
            for w in &self.warnings {
                out.push_str(&format!("{} {w}\n", paint(false, "warning:")));
            }
        }
        if !self.problems.is_empty() {
            out.push('\n');
            for p in &self.problems {
                out.push_str(&format!("{} {p}\n", paint(false, "problem:")));
            }
        }
        out
    }
}

pub use ceres_daemon::terminal::escape_controls;

fn short_key(k: Option<&str>) -> String {
    k.map(|k| format!("{}…", &k[..k.len().min(10)]))
        .unwrap_or_else(|| "?".into())
}

/// `1.5 MiB`, `320 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `3d 4h`, `5m 2s`, `12s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}
