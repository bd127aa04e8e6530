//! Home egress: policy routing that sends the configured sources' outbound mail into
//! the tunnel (`ip rule from SRC ... lookup TABLE` + `default dev TUN table TABLE`).

use std::net::IpAddr;

use ipnet::IpNet;

use super::{EgressError, System, check_ifname, check_table, delete_table_text};

/// Routing table for tunnelled egress. Arbitrary but fixed, so a restarted agent finds
/// and replaces what an earlier run installed.
pub const DEFAULT_ROUTE_TABLE: u32 = 7277;
/// Priority (`pref`) of our rules: before `main` (32766), and unique to us, because
/// removal deletes every rule with this priority.
pub const DEFAULT_RULE_PRIORITY: u32 = 7277;

/// Upper bound on rules deleted per family on cleanup: rules are deleted one per `ip`
/// call until none is left, and this stops a loop should deletion keep "succeeding".
const MAX_RULES: usize = 4096;

/// The home egress routing. Build with [`HomeEgress::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeEgress {
    /// The WireGuard TUN device (`ceres0`).
    pub tunnel_if: String,
    /// The home tunnel address (the VPS masquerades only this source).
    pub tunnel_addr: IpAddr,
    /// The home IPv6 tunnel address of a dual-stack tunnel (Postfix
    /// `smtp_bind_address6`); the VPS masquerades it to its public IPv6.
    pub tunnel_addr6: Option<IpAddr>,
    /// Sources whose outbound mail goes through the tunnel (`CERES_EGRESS_FROM`):
    /// default the tunnel address (Postfix `smtp_bind_address`); a Docker mail network
    /// such as `172.18.0.0/16` is the other common case.
    pub sources: Vec<IpNet>,
    /// Only traffic to these destination TCP ports is routed into the tunnel, so a
    /// Docker network's DNS and HTTP keep using the home line (the VPS would drop them
    /// anyway). Empty: all traffic from the sources.
    pub tcp_ports: Vec<u16>,
    /// Routing table id.
    pub route_table: u32,
    /// Rule priority.
    pub rule_priority: u32,
    /// nftables table (family `inet`) for masquerading sources other than the tunnel
    /// address to it, so the VPS sees the one source it allows.
    pub nft_table: String,
}

impl HomeEgress {
    /// Routing for the tunnel address itself on the default egress ports.
    pub fn new(tunnel_if: impl Into<String>, tunnel_addr: IpAddr) -> Self {
        Self {
            tunnel_if: tunnel_if.into(),
            tunnel_addr,
            tunnel_addr6: None,
            sources: vec![IpNet::from(tunnel_addr)],
            tcp_ports: super::DEFAULT_EGRESS_PORTS.to_vec(),
            route_table: DEFAULT_ROUTE_TABLE,
            rule_priority: DEFAULT_RULE_PRIORITY,
            nft_table: super::DEFAULT_NFT_TABLE.to_owned(),
        }
    }

    /// Routing for both tunnel addresses of a dual-stack tunnel.
    pub fn dual_stack(
        tunnel_if: impl Into<String>,
        tunnel_addr: IpAddr,
        tunnel_addr6: IpAddr,
    ) -> Self {
        let mut e = Self::new(tunnel_if, tunnel_addr);
        e.tunnel_addr6 = Some(tunnel_addr6);
        e.sources.push(IpNet::from(tunnel_addr6));
        e
    }

    fn validate(&self) -> Result<(), EgressError> {
        check_ifname("tunnel interface", &self.tunnel_if)?;
        check_table(&self.nft_table)?;
        // 253-255 are default/main/local; 0 is unspec.
        if self.route_table == 0 || (253..=255).contains(&self.route_table) {
            return Err(EgressError::Invalid {
                what: "routing table",
                value: self.route_table.to_string(),
            });
        }
        if self.rule_priority == 0 || self.rule_priority >= 32766 {
            return Err(EgressError::Invalid {
                what: "rule priority",
                value: self.rule_priority.to_string(),
            });
        }
        Ok(())
    }

    fn families(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        if self.sources.iter().any(|s| matches!(s, IpNet::V4(_))) {
            f.push("-4");
        }
        if self.sources.iter().any(|s| matches!(s, IpNet::V6(_))) {
            f.push("-6");
        }
        f
    }

    /// The `ip` argument lists that install the routing, in order.
    pub fn install_commands(&self) -> Result<Vec<Vec<String>>, EgressError> {
        self.validate()?;
        let (table, pref) = (self.route_table.to_string(), self.rule_priority.to_string());
        let mut cmds = Vec::new();
        for fam in self.families() {
            cmds.push(
                [
                    fam,
                    "route",
                    "replace",
                    "default",
                    "dev",
                    &self.tunnel_if,
                    "table",
                    &table,
                ]
                .map(String::from)
                .to_vec(),
            );
        }
        for src in &self.sources {
            let fam = if matches!(src, IpNet::V4(_)) {
                "-4"
            } else {
                "-6"
            };
            let base =
                [fam, "rule", "add", "pref", &pref, "from", &src.to_string()].map(String::from);
            let tail = ["lookup", &table].map(String::from);
            if self.tcp_ports.is_empty() {
                cmds.push(base.iter().chain(tail.iter()).cloned().collect());
            }
            for port in &self.tcp_ports {
                let sel = ["ipproto", "tcp", "dport", &port.to_string()].map(String::from);
                cmds.push(
                    base.iter()
                        .chain(sel.iter())
                        .chain(tail.iter())
                        .cloned()
                        .collect(),
                );
            }
        }
        Ok(cmds)
    }

    /// nft input masquerading the non-tunnel sources to the tunnel address, or `None`
    /// when every source is the tunnel address itself.
    pub fn masquerade_ruleset(&self) -> Result<Option<String>, EgressError> {
        self.validate()?;
        let own: Vec<IpNet> = std::iter::once(self.tunnel_addr)
            .chain(self.tunnel_addr6)
            .map(IpNet::from)
            .collect();
        let others: Vec<&IpNet> = self.sources.iter().filter(|s| !own.contains(s)).collect();
        if others.is_empty() {
            return Ok(None);
        }
        let (t, tun) = (&self.nft_table, &self.tunnel_if);
        let mut s = delete_table_text(t);
        s.push_str(&format!(
            "table inet {t} {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        ));
        for net in others {
            let fam = if matches!(net, IpNet::V4(_)) {
                "ip"
            } else {
                "ip6"
            };
            s.push_str(&format!(
                "\t\toifname \"{tun}\" {fam} saddr {net} masquerade\n"
            ));
        }
        s.push_str("\t}\n}\n");
        Ok(Some(s))
    }

    /// Installs the routing (and masquerading, if needed), replacing whatever an
    /// earlier run left behind.
    pub fn apply(&self, sys: &dyn System) -> Result<(), EgressError> {
        self.validate()?;
        self.remove(sys)?;
        for cmd in self.install_commands()? {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            sys.run("ip", &args, None)?;
        }
        if let Some(ruleset) = self.masquerade_ruleset()? {
            sys.run("nft", &["-f", "-"], Some(&ruleset))?;
        }
        Ok(())
    }

    /// Removes our rules, routes and nft table; succeeds when there is nothing to
    /// remove.
    pub fn remove(&self, sys: &dyn System) -> Result<(), EgressError> {
        self.validate()?;
        let (table, pref) = (self.route_table.to_string(), self.rule_priority.to_string());
        for fam in ["-4", "-6"] {
            for _ in 0..MAX_RULES {
                // Fails with "No such file or directory" once none is left.
                if sys
                    .run("ip", &[fam, "rule", "del", "pref", &pref], None)
                    .is_err()
                {
                    break;
                }
            }
            match sys.run("ip", &[fam, "route", "flush", "table", &table], None) {
                Ok(_) => {}
                // An empty or never-created table is what we want.
                Err(EgressError::Command { stderr, .. })
                    if stderr.contains("does not exist") || stderr.contains("No such") => {}
                Err(e) => return Err(e),
            }
        }
        sys.run(
            "nft",
            &["-f", "-"],
            Some(&delete_table_text(&self.nft_table)),
        )?;
        Ok(())
    }
}

/// Whether this host could send mail over IPv6 without the tunnel: an IPv6
/// default route in the main table and a global (non-ULA) address on an
/// interface other than the tunnel. A mail server here with IPv6 on (Postfix's
/// default `inet_protocols = all`) would then deliver to IPv6 MX hosts from the
/// home line, unless it binds to the tunnel's IPv6 address.
pub fn direct_ipv6(sys: &dyn System, tunnel_if: &str) -> Result<bool, EgressError> {
    let routes = sys.run("ip", &["-6", "route", "show", "default"], None)?;
    if routes.trim().is_empty() {
        return Ok(false);
    }
    let addrs = sys.run("ip", &["-6", "-o", "addr", "show", "scope", "global"], None)?;
    Ok(super::global_ipv6(&addrs)
        .iter()
        .any(|(ifname, _)| ifname != tunnel_if))
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeSystem;
    use super::*;

    #[test]
    fn tunnel_address_rules() {
        let h = HomeEgress::new("ceres0", "10.77.77.2".parse().unwrap());
        let cmds: Vec<String> = h
            .install_commands()
            .unwrap()
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "-4 route replace default dev ceres0 table 7277",
                "-4 rule add pref 7277 from 10.77.77.2/32 ipproto tcp dport 25 lookup 7277",
                "-4 rule add pref 7277 from 10.77.77.2/32 ipproto tcp dport 465 lookup 7277",
                "-4 rule add pref 7277 from 10.77.77.2/32 ipproto tcp dport 587 lookup 7277",
            ]
        );
        assert_eq!(h.masquerade_ruleset().unwrap(), None);
    }

    #[test]
    fn dual_stack_routes_the_ipv6_tunnel_source_too() {
        let h = HomeEgress::dual_stack(
            "ceres0",
            "10.77.77.2".parse().unwrap(),
            "fd77:77:77::2".parse().unwrap(),
        );
        let cmds: Vec<String> = h
            .install_commands()
            .unwrap()
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert!(
            cmds.contains(&"-6 route replace default dev ceres0 table 7277".to_owned()),
            "{cmds:?}"
        );
        assert!(
            cmds.contains(
                &"-6 rule add pref 7277 from fd77:77:77::2/128 ipproto tcp dport 25 lookup 7277"
                    .to_owned()
            ),
            "{cmds:?}"
        );
        // Both are the tunnel's own addresses: nothing to masquerade.
        assert_eq!(h.masquerade_ruleset().unwrap(), None);
    }

    #[test]
    fn direct_ipv6_needs_a_default_route_and_a_global_address_off_the_tunnel() {
        let sys = FakeSystem::default();
        sys.respond(
            "ip -6 -o addr show scope global",
            "3: ceres0    inet6 fd77:77:77::2/64 scope global \\       valid_lft forever\n\
             4: ceres9    inet6 2001:db8:9::2/64 scope global \\       valid_lft forever\n",
        );
        assert!(!direct_ipv6(&sys, "ceres0").unwrap(), "no default route");
        sys.respond("ip -6 route show default", "default via fe80::1 dev eth0\n");
        assert!(direct_ipv6(&sys, "ceres0").unwrap());
        assert!(
            !direct_ipv6(&sys, "ceres9").unwrap(),
            "the only global address is on the tunnel"
        );
    }

    #[test]
    fn docker_network_all_ports() {
        let mut h = HomeEgress::new("ceres0", "10.77.77.2".parse().unwrap());
        h.sources = vec![
            "172.18.0.0/16".parse().unwrap(),
            "fd00:d0c::/64".parse().unwrap(),
        ];
        h.tcp_ports.clear();
        let cmds: Vec<String> = h
            .install_commands()
            .unwrap()
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "-4 route replace default dev ceres0 table 7277",
                "-6 route replace default dev ceres0 table 7277",
                "-4 rule add pref 7277 from 172.18.0.0/16 lookup 7277",
                "-6 rule add pref 7277 from fd00:d0c::/64 lookup 7277",
            ]
        );
        let nft = h.masquerade_ruleset().unwrap().unwrap();
        assert!(
            nft.contains("oifname \"ceres0\" ip saddr 172.18.0.0/16 masquerade"),
            "{nft}"
        );
        assert!(
            nft.contains("oifname \"ceres0\" ip6 saddr fd00:d0c::/64 masquerade"),
            "{nft}"
        );
    }

    #[test]
    fn apply_removes_leftovers_first() {
        let sys = FakeSystem::default();
        *sys.rules_to_delete.borrow_mut() = 2;
        let h = HomeEgress::new("ceres0", "10.77.77.2".parse().unwrap());
        h.apply(&sys).unwrap();
        let log = sys.log.borrow();
        let dels = log
            .iter()
            .filter(|l| l.contains("rule del pref 7277"))
            .count();
        // Two leftovers deleted, then one failing probe per family.
        assert_eq!(dels, 4);
        let first_add = log.iter().position(|l| l.contains("rule add")).unwrap();
        let last_del = log.iter().rposition(|l| l.contains("rule del")).unwrap();
        assert!(last_del < first_add);
    }

    #[test]
    fn rejects_reserved_tables() {
        let mut h = HomeEgress::new("ceres0", "10.77.77.2".parse().unwrap());
        h.route_table = 254;
        assert!(matches!(
            h.apply(&FakeSystem::default()),
            Err(EgressError::Invalid { .. })
        ));
        h.route_table = 100;
        h.rule_priority = 32766;
        assert!(h.install_commands().is_err());
    }
}
