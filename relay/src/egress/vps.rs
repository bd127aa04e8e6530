//! VPS egress: masquerade the home tunnel addresses out of the public interface for the
//! allowed mail ports only, drop everything else the tunnel would have forwarded. What
//! the tunnel may reach on the VPS itself is the [`super::TunnelFilter`]'s job.

use std::net::{IpAddr, Ipv6Addr};

use super::firewall::{DropChain, Hook, blocking_chains};
use super::{EgressError, System, check_ifname, check_table, delete_table_text, port_set};

/// `CERES_EGRESS_PORTS` default: SMTP to other MXes, plus submission ports for a
/// smarthost. Anything else (web, DNS over TCP, ...) would let home traffic borrow the
/// VPS's IP reputation for non-mail purposes.
pub const DEFAULT_EGRESS_PORTS: [u16; 3] = [25, 465, 587];

/// The VPS egress rules. Build with [`VpsEgress::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpsEgress {
    /// Our own nftables table (family `inet`), default `ceres`.
    pub table: String,
    /// The WireGuard TUN device (`ceres0`).
    pub tunnel_if: String,
    /// The interface with the public address, the only way out.
    pub public_if: String,
    /// Home tunnel addresses allowed out (IPv4 and/or IPv6).
    pub home_addrs: Vec<IpAddr>,
    /// Destination TCP ports home may reach on the internet (`CERES_EGRESS_PORTS`).
    pub allowed_tcp_ports: Vec<u16>,
}

/// The sysctls [`VpsEgress::apply`] changed, with their values before, so
/// [`VpsEgress::remove`] can put them back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingState {
    /// `(sysctl key, previous value)` pairs, only of keys that were changed.
    pub saved: Vec<(String, String)>,
}

/// One sysctl egress needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlNeed {
    /// Slash form (`net/ipv4/conf/eth0/forwarding`), so interface names with dots work.
    pub key: String,
    /// The value wanted.
    pub value: &'static str,
    /// Change only from this value (`None`: from any other value).
    pub only_from: Option<&'static str>,
}

impl VpsEgress {
    /// Rules for one home address with the default ports and table.
    pub fn new(
        tunnel_if: impl Into<String>,
        public_if: impl Into<String>,
        home_addr: IpAddr,
    ) -> Self {
        Self {
            table: super::DEFAULT_NFT_TABLE.to_owned(),
            tunnel_if: tunnel_if.into(),
            public_if: public_if.into(),
            home_addrs: vec![home_addr],
            allowed_tcp_ports: DEFAULT_EGRESS_PORTS.to_vec(),
        }
    }

    fn validate(&self) -> Result<(), EgressError> {
        check_table(&self.table)?;
        check_ifname("tunnel interface", &self.tunnel_if)?;
        check_ifname("public interface", &self.public_if)?;
        if self.allowed_tcp_ports.contains(&0) {
            return Err(EgressError::Invalid {
                what: "egress port",
                value: "0".into(),
            });
        }
        Ok(())
    }

    /// The complete `nft -f -` input: deletes and recreates our table in one
    /// transaction, so applying it twice gives the same state and other tables are
    /// never touched.
    pub fn ruleset(&self) -> Result<String, EgressError> {
        self.validate()?;
        let (t, tun, public) = (&self.table, &self.tunnel_if, &self.public_if);
        let mut allow_out = Vec::new();
        if !self.allowed_tcp_ports.is_empty() {
            let ports = port_set(&self.allowed_tcp_ports);
            for addr in &self.home_addrs {
                let fam = if addr.is_ipv4() { "ip" } else { "ip6" };
                allow_out.push(format!(
                    "iifname \"{tun}\" oifname \"{public}\" {fam} saddr {addr} tcp dport {ports}"
                ));
            }
        }
        let mut s = delete_table_text(t);
        s.push_str(&format!("table inet {t} {{\n"));
        s.push_str(
            "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n",
        );
        for rule in &allow_out {
            s.push_str(&format!("\t\t{rule} accept\n"));
        }
        s.push_str(&format!("\t\tiifname \"{tun}\" counter drop\n"));
        // Only replies may travel towards home: nobody on the internet opens
        // connections into the home network through us.
        s.push_str(&format!(
            "\t\toifname \"{tun}\" ct state established,related accept\n"
        ));
        s.push_str(&format!("\t\toifname \"{tun}\" counter drop\n"));
        s.push_str("\t}\n");
        s.push_str("\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
        for rule in &allow_out {
            s.push_str(&format!("\t\t{rule} masquerade\n"));
        }
        s.push_str("\t}\n}\n");
        Ok(s)
    }

    /// Sysctls this configuration needs. IPv4: forwarding on the tunnel and public
    /// interfaces only. IPv6 has no per-interface forwarding switch (the kernel
    /// forwards IPv6 only with `all/forwarding`), and forwarding makes every interface
    /// ignore router advertisements unless its `accept_ra` is 2: a VPS that learns its
    /// IPv6 default route by SLAAC would lose it, so `accept_ra` 1 on the public
    /// interface becomes 2 for as long as egress is installed.
    pub fn forwarding_keys(&self) -> Vec<SysctlNeed> {
        let mut keys = Vec::new();
        if self.home_addrs.iter().any(IpAddr::is_ipv4) {
            for ifname in [&self.tunnel_if, &self.public_if] {
                keys.push(SysctlNeed {
                    key: format!("net/ipv4/conf/{ifname}/forwarding"),
                    value: "1",
                    only_from: None,
                });
            }
        }
        if self.home_addrs.iter().any(IpAddr::is_ipv6) {
            // Before forwarding goes on, so no advertisement is missed in between.
            keys.push(SysctlNeed {
                key: format!("net/ipv6/conf/{}/accept_ra", self.public_if),
                value: "2",
                only_from: Some("1"),
            });
            keys.push(SysctlNeed {
                key: "net/ipv6/conf/all/forwarding".into(),
                value: "1",
                only_from: None,
            });
        }
        keys
    }

    /// Installs (or replaces) the rules and enables forwarding where needed. Returns
    /// the previous sysctl values for [`remove`](Self::remove).
    pub fn apply(&self, sys: &dyn System) -> Result<ForwardingState, EgressError> {
        let ruleset = self.ruleset()?;
        sys.run("nft", &["-f", "-"], Some(&ruleset))?;
        let mut state = ForwardingState::default();
        for need in self.forwarding_keys() {
            let old = sys
                .run("sysctl", &["-n", &need.key], None)?
                .trim()
                .to_owned();
            let change = match need.only_from {
                Some(from) => old == from,
                None => old != need.value,
            };
            if change {
                sys.run(
                    "sysctl",
                    &["-w", &format!("{}={}", need.key, need.value)],
                    None,
                )?;
                state.saved.push((need.key, old));
            }
        }
        Ok(state)
    }

    /// Forward chains of other tables that drop by default and would drop
    /// home's outbound mail after ours accepted it (see [`DropChain`]). Ours
    /// is not one of them, nor is a table that already lets the tunnel through
    /// both ways (e.g. in Docker's DOCKER-USER chain).
    pub fn foreign_forward_drops(&self, sys: &dyn System) -> Result<Vec<DropChain>, EgressError> {
        blocking_chains(sys, Hook::Forward, &self.tunnel_if, Some(&self.table))
    }

    /// Deletes our table (a no-op if it is not there) and restores the forwarding
    /// sysctls recorded by [`apply`](Self::apply).
    pub fn remove(&self, sys: &dyn System, state: &ForwardingState) -> Result<(), EgressError> {
        check_table(&self.table)?;
        sys.run("nft", &["-f", "-"], Some(&delete_table_text(&self.table)))?;
        // In reverse: IPv6 forwarding goes off before accept_ra goes back.
        for (key, old) in state.saved.iter().rev() {
            sys.run("sysctl", &["-w", &format!("{key}={old}")], None)?;
        }
        Ok(())
    }
}

/// The VPS's public IPv6 for egress: a global address (not a ULA, not failed
/// duplicate address detection) on `public_if`, and an IPv6 default route out of
/// it. `None`: the VPS cannot send home's IPv6 mail anywhere.
pub fn public_ipv6(sys: &dyn System, public_if: &str) -> Result<Option<Ipv6Addr>, EgressError> {
    check_ifname("public interface", public_if)?;
    let routes = sys.run(
        "ip",
        &["-6", "route", "show", "default", "dev", public_if],
        None,
    )?;
    if routes.trim().is_empty() {
        return Ok(None);
    }
    let addrs = sys.run(
        "ip",
        &[
            "-6", "-o", "addr", "show", "dev", public_if, "scope", "global",
        ],
        None,
    )?;
    Ok(super::global_ipv6(&addrs)
        .into_iter()
        .map(|(_, a)| a)
        .next())
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeSystem;
    use super::*;

    fn example() -> VpsEgress {
        VpsEgress::new("ceres0", "eth0", "10.77.77.2".parse().unwrap())
    }

    #[test]
    fn ruleset_text() {
        let text = example().ruleset().unwrap();
        let want = "table inet ceres
delete table inet ceres
table inet ceres {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"ceres0\" oifname \"eth0\" ip saddr 10.77.77.2 tcp dport { 25, 465, 587 } accept
\t\tiifname \"ceres0\" counter drop
\t\toifname \"ceres0\" ct state established,related accept
\t\toifname \"ceres0\" counter drop
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tiifname \"ceres0\" oifname \"eth0\" ip saddr 10.77.77.2 tcp dport { 25, 465, 587 } masquerade
\t}
}
";
        assert_eq!(text, want);
    }

    #[test]
    fn dual_stack_and_custom_ports() {
        let mut e = example();
        e.home_addrs.push("fd77::2".parse().unwrap());
        e.allowed_tcp_ports = vec![25];
        let text = e.ruleset().unwrap();
        assert!(
            text.contains(
                "iifname \"ceres0\" oifname \"eth0\" ip6 saddr fd77::2 tcp dport { 25 } accept"
            ),
            "{text}"
        );
        assert!(
            text.contains("ip6 saddr fd77::2 tcp dport { 25 } masquerade"),
            "{text}"
        );
        // The tunnel's input filter is a table of its own.
        assert!(!text.contains("chain input"), "{text}");
        let keys: Vec<String> = e.forwarding_keys().into_iter().map(|n| n.key).collect();
        assert_eq!(
            keys,
            [
                "net/ipv4/conf/ceres0/forwarding",
                "net/ipv4/conf/eth0/forwarding",
                "net/ipv6/conf/eth0/accept_ra",
                "net/ipv6/conf/all/forwarding",
            ]
        );
    }

    #[test]
    fn ipv6_forwarding_keeps_router_advertisements_and_is_restored() {
        let sys = FakeSystem::default();
        sys.sysctls
            .borrow_mut()
            .insert("net/ipv6/conf/eth0/accept_ra".into(), "1".into());
        let mut e = example();
        e.home_addrs = vec!["fd77::2".parse().unwrap()];
        let state = e.apply(&sys).unwrap();
        let get = |k: &str| sys.sysctls.borrow().get(k).cloned();
        assert_eq!(get("net/ipv6/conf/all/forwarding").as_deref(), Some("1"));
        assert_eq!(get("net/ipv6/conf/eth0/accept_ra").as_deref(), Some("2"));
        e.remove(&sys, &state).unwrap();
        assert_eq!(get("net/ipv6/conf/all/forwarding").as_deref(), Some("0"));
        assert_eq!(get("net/ipv6/conf/eth0/accept_ra").as_deref(), Some("1"));
        // accept_ra 0 (static configuration) is left alone.
        let sys = FakeSystem::default();
        let state = e.apply(&sys).unwrap();
        assert_eq!(state.saved.len(), 1, "{state:?}");
    }

    #[test]
    fn public_ipv6_needs_a_global_address_and_a_default_route() {
        let sys = FakeSystem::default();
        let addrs = "2: eth0    inet6 fd00::5/64 scope global \\       valid_lft forever preferred_lft forever
2: eth0    inet6 2001:db8:1::10/64 scope global \\       valid_lft forever preferred_lft forever
";
        sys.respond("ip -6 -o addr show dev eth0 scope global", addrs);
        // No default route: no IPv6 egress, whatever the addresses.
        assert_eq!(public_ipv6(&sys, "eth0").unwrap(), None);
        sys.respond(
            "ip -6 route show default dev eth0",
            "default via 2001:db8:1::1 metric 1024 pref medium\n",
        );
        assert_eq!(
            public_ipv6(&sys, "eth0").unwrap(),
            Some("2001:db8:1::10".parse().unwrap())
        );
        // Only a ULA: none.
        sys.respond(
            "ip -6 -o addr show dev eth0 scope global",
            "2: eth0    inet6 fd00::5/64 scope global \\       valid_lft forever preferred_lft forever\n",
        );
        assert_eq!(public_ipv6(&sys, "eth0").unwrap(), None);
    }

    #[test]
    fn no_ports_means_nothing_leaves() {
        let mut e = example();
        e.allowed_tcp_ports.clear();
        let text = e.ruleset().unwrap();
        assert!(!text.contains("masquerade"));
        assert!(!text.contains("saddr"));
        assert!(text.contains("iifname \"ceres0\" counter drop"));
    }

    #[test]
    fn rejects_unsafe_names() {
        let mut e = example();
        e.public_if = "eth0\" accept #".into();
        assert!(matches!(e.ruleset(), Err(EgressError::Invalid { .. })));
        let mut e = example();
        e.table = "ceres; flush ruleset".into();
        assert!(matches!(e.ruleset(), Err(EgressError::Invalid { .. })));
    }

    #[test]
    fn apply_and_remove_restore_sysctls() {
        let sys = FakeSystem::default();
        sys.sysctls
            .borrow_mut()
            .insert("net/ipv4/conf/eth0/forwarding".into(), "1".into());
        let e = example();
        let state = e.apply(&sys).unwrap();
        assert_eq!(
            sys.sysctls
                .borrow()
                .get("net/ipv4/conf/ceres0/forwarding")
                .map(String::as_str),
            Some("1")
        );
        e.remove(&sys, &state).unwrap();
        let log = sys.log.borrow();
        assert_eq!(
            state.saved,
            [("net/ipv4/conf/ceres0/forwarding".to_owned(), "0".to_owned())]
        );
        assert!(log[0].starts_with("nft -f - <<table inet ceres\ndelete table inet ceres\n"));
        assert!(log.contains(&"sysctl -w net/ipv4/conf/ceres0/forwarding=1".to_string()));
        assert!(log.contains(&"sysctl -w net/ipv4/conf/ceres0/forwarding=0".to_string()));
        // eth0 was already forwarding: left alone both ways.
        assert!(
            !log.iter()
                .any(|l| l.starts_with("sysctl -w net/ipv4/conf/eth0"))
        );
        assert_eq!(
            log.last().map(String::as_str),
            Some("sysctl -w net/ipv4/conf/ceres0/forwarding=0")
        );
    }
}
