//! VPS egress: masquerade the home tunnel address out of the public interface for the
//! allowed mail ports only, drop everything else coming from the tunnel.

use std::net::IpAddr;

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
    /// TCP ports of the VPS itself that home may reach through the tunnel; default
    /// none: the agents talk over the public address and relay replies are covered
    /// by connection tracking.
    pub local_tcp_ports: Vec<u16>,
}

/// Per-interface forwarding sysctls as they were before [`VpsEgress::apply`], so
/// [`VpsEgress::remove`] can put them back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingState {
    /// `(sysctl key, previous value)` pairs.
    pub saved: Vec<(String, String)>,
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
            local_tcp_ports: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), EgressError> {
        check_table(&self.table)?;
        check_ifname("tunnel interface", &self.tunnel_if)?;
        check_ifname("public interface", &self.public_if)?;
        if self.allowed_tcp_ports.contains(&0) || self.local_tcp_ports.contains(&0) {
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
        s.push_str("\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n");
        s.push_str(&format!(
            "\t\tiifname \"{tun}\" ct state established,related accept\n"
        ));
        s.push_str(&format!(
            "\t\tiifname \"{tun}\" icmp type echo-request accept\n"
        ));
        s.push_str(&format!(
            "\t\tiifname \"{tun}\" icmpv6 type echo-request accept\n"
        ));
        if !self.local_tcp_ports.is_empty() {
            s.push_str(&format!(
                "\t\tiifname \"{tun}\" tcp dport {} accept\n",
                port_set(&self.local_tcp_ports)
            ));
        }
        s.push_str(&format!("\t\tiifname \"{tun}\" counter drop\n"));
        s.push_str("\t}\n");
        s.push_str("\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
        for rule in &allow_out {
            s.push_str(&format!("\t\t{rule} masquerade\n"));
        }
        s.push_str("\t}\n}\n");
        Ok(s)
    }

    /// Forwarding sysctls this configuration needs: on the tunnel and public interfaces
    /// only, per family in use (IPv6 forwarding on an interface turns off its router
    /// advertisement handling, so it is only touched when a home IPv6 address is set).
    pub fn forwarding_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (fam, used) in [
            ("ipv4", self.home_addrs.iter().any(IpAddr::is_ipv4)),
            ("ipv6", self.home_addrs.iter().any(IpAddr::is_ipv6)),
        ] {
            if used {
                for ifname in [&self.tunnel_if, &self.public_if] {
                    // Slash form, so interface names with dots (VLANs) work.
                    keys.push(format!("net/{fam}/conf/{ifname}/forwarding"));
                }
            }
        }
        keys
    }

    /// Installs (or replaces) the rules and enables forwarding where needed. Returns
    /// the previous sysctl values for [`remove`](Self::remove).
    pub fn apply(&self, sys: &dyn System) -> Result<ForwardingState, EgressError> {
        let ruleset = self.ruleset()?;
        sys.run("nft", &["-f", "-"], Some(&ruleset))?;
        let mut state = ForwardingState::default();
        for key in self.forwarding_keys() {
            let old = sys.run("sysctl", &["-n", &key], None)?.trim().to_owned();
            if old != "1" {
                sys.run("sysctl", &["-w", &format!("{key}=1")], None)?;
            }
            state.saved.push((key, old));
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
        for (key, old) in &state.saved {
            if old != "1" {
                sys.run("sysctl", &["-w", &format!("{key}={old}")], None)?;
            }
        }
        Ok(())
    }
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
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"ceres0\" ct state established,related accept
\t\tiifname \"ceres0\" icmp type echo-request accept
\t\tiifname \"ceres0\" icmpv6 type echo-request accept
\t\tiifname \"ceres0\" counter drop
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
    fn dual_stack_custom_ports_and_local_services() {
        let mut e = example();
        e.home_addrs.push("fd77::2".parse().unwrap());
        e.allowed_tcp_ports = vec![25];
        e.local_tcp_ports = vec![53];
        let text = e.ruleset().unwrap();
        assert!(
            text.contains("ip6 saddr fd77::2 tcp dport { 25 } masquerade"),
            "{text}"
        );
        assert!(
            text.contains("iifname \"ceres0\" tcp dport { 53 } accept"),
            "{text}"
        );
        assert_eq!(
            e.forwarding_keys(),
            [
                "net/ipv4/conf/ceres0/forwarding",
                "net/ipv4/conf/eth0/forwarding",
                "net/ipv6/conf/ceres0/forwarding",
                "net/ipv6/conf/eth0/forwarding"
            ]
        );
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
