//! The input filter on the tunnel interface, at both ends: from the tunnel only
//! replies, pings from the peer, and new TCP connections from the peer's tunnel
//! addresses to the services we offer there (home: the forwarders; VPS: none by
//! default) get in; everything else from the tunnel is counted and dropped.
//!
//! It lives in a table of its own, not in the egress table: it must stand when
//! egress is off or failed (whoever controls one end must not reach the other
//! end's sshd or control port through the tunnel), it is replaced whenever the
//! forwarders change, and one `nft -f` transaction per table replaces or
//! deletes it without knowing what the egress table holds.
//!
//! No ICMPv6 neighbour discovery rules: the TUN device is point-to-point
//! without a link layer (`IFF_NOARP`), so the kernel sends no neighbour
//! solicitations on it and does no duplicate address detection there. ICMP
//! errors for our own connections (packet too big, unreachable) are `related`
//! and pass, so path MTU discovery works.

use std::net::{IpAddr, SocketAddr};

use super::{EgressError, System, check_ifname, check_table, delete_table_text, port_set};

/// Default table of the tunnel filter, on both ends. Distinct from the egress
/// table ([`super::DEFAULT_NFT_TABLE`]) so each can be replaced or removed alone.
pub const DEFAULT_FILTER_TABLE: &str = "ceres_tunnel";

/// The filter. Build with [`TunnelFilter::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelFilter {
    /// Our own nftables table (family `inet`), default `ceres_tunnel`.
    pub table: String,
    /// The WireGuard TUN device (`ceres0`).
    pub tunnel_if: String,
    /// The other end's tunnel addresses (IPv4 and/or IPv6): the only sources
    /// that may open connections to [`services`](Self::services) or ping.
    pub peer_addrs: Vec<IpAddr>,
    /// What the peer may connect to through the tunnel: our address and TCP
    /// port of each listening socket (home: the forwarders). Each is allowed
    /// from the peer's address of the same family only.
    pub services: Vec<SocketAddr>,
    /// Also drop what arrives from the tunnel to be routed onwards (forward
    /// hook), replies excepted. Home always: nothing may reach its LAN or its
    /// containers through the tunnel. The VPS when its egress table (whose
    /// forward chain allows the mail ports) is not installed.
    pub guard_forward: bool,
}

impl TunnelFilter {
    /// A filter with the default table that lets nothing new in.
    pub fn new(tunnel_if: impl Into<String>, peer_addrs: Vec<IpAddr>) -> Self {
        Self {
            table: DEFAULT_FILTER_TABLE.to_owned(),
            tunnel_if: tunnel_if.into(),
            peer_addrs,
            services: Vec::new(),
            guard_forward: false,
        }
    }

    fn validate(&self) -> Result<(), EgressError> {
        check_table(&self.table)?;
        check_ifname("tunnel interface", &self.tunnel_if)?;
        if self.services.iter().any(|s| s.port() == 0) {
            return Err(EgressError::Invalid {
                what: "tunnel service port",
                value: "0".into(),
            });
        }
        Ok(())
    }

    /// The complete `nft -f -` input: deletes and recreates our table in one
    /// transaction, so applying it twice gives the same state and other tables
    /// are never touched.
    pub fn ruleset(&self) -> Result<String, EgressError> {
        self.validate()?;
        let (t, tun) = (&self.table, &self.tunnel_if);
        let mut s = delete_table_text(t);
        s.push_str(&format!("table inet {t} {{\n"));
        s.push_str("\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n");
        s.push_str(&format!(
            "\t\tiifname \"{tun}\" ct state established,related accept\n"
        ));
        for peer in &self.peer_addrs {
            let (fam, icmp) = family(peer);
            s.push_str(&format!(
                "\t\tiifname \"{tun}\" {fam} saddr {peer} {icmp} type echo-request accept\n"
            ));
        }
        for peer in &self.peer_addrs {
            let mut locals: Vec<IpAddr> = self
                .services
                .iter()
                .map(SocketAddr::ip)
                .filter(|ip| ip.is_ipv4() == peer.is_ipv4())
                .collect();
            locals.sort();
            locals.dedup();
            let (fam, _) = family(peer);
            for local in locals {
                let mut ports: Vec<u16> = self
                    .services
                    .iter()
                    .filter(|s| s.ip() == local)
                    .map(SocketAddr::port)
                    .collect();
                ports.sort_unstable();
                ports.dedup();
                s.push_str(&format!(
                    "\t\tiifname \"{tun}\" {fam} saddr {peer} {fam} daddr {local} tcp dport {} accept\n",
                    port_set(&ports)
                ));
            }
        }
        s.push_str(&format!("\t\tiifname \"{tun}\" counter drop\n"));
        s.push_str("\t}\n");
        if self.guard_forward {
            s.push_str(
                "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n",
            );
            s.push_str(&format!(
                "\t\tiifname \"{tun}\" ct state established,related accept\n"
            ));
            s.push_str(&format!("\t\tiifname \"{tun}\" counter drop\n"));
            s.push_str("\t}\n");
        }
        s.push_str("}\n");
        Ok(s)
    }

    /// Installs (or replaces) the filter.
    pub fn apply(&self, sys: &dyn System) -> Result<(), EgressError> {
        sys.run("nft", &["-f", "-"], Some(&self.ruleset()?))?;
        Ok(())
    }

    /// Deletes our table; a no-op when it is not there.
    pub fn remove(&self, sys: &dyn System) -> Result<(), EgressError> {
        check_table(&self.table)?;
        sys.run("nft", &["-f", "-"], Some(&delete_table_text(&self.table)))?;
        Ok(())
    }
}

fn family(ip: &IpAddr) -> (&'static str, &'static str) {
    if ip.is_ipv4() {
        ("ip", "icmp")
    } else {
        ("ip6", "icmpv6")
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeSystem;
    use super::*;

    fn home() -> TunnelFilter {
        let mut f = TunnelFilter::new(
            "ceres0",
            vec![
                "10.77.77.1".parse().unwrap(),
                "fd77:77:77::1".parse().unwrap(),
            ],
        );
        f.services = [
            "10.77.77.2:40001",
            "10.77.77.2:40002",
            "[fd77:77:77::2]:40003",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        f.guard_forward = true;
        f
    }

    #[test]
    fn home_ruleset_text() {
        let want = "table inet ceres_tunnel
delete table inet ceres_tunnel
table inet ceres_tunnel {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"ceres0\" ct state established,related accept
\t\tiifname \"ceres0\" ip saddr 10.77.77.1 icmp type echo-request accept
\t\tiifname \"ceres0\" ip6 saddr fd77:77:77::1 icmpv6 type echo-request accept
\t\tiifname \"ceres0\" ip saddr 10.77.77.1 ip daddr 10.77.77.2 tcp dport { 40001, 40002 } accept
\t\tiifname \"ceres0\" ip6 saddr fd77:77:77::1 ip6 daddr fd77:77:77::2 tcp dport { 40003 } accept
\t\tiifname \"ceres0\" counter drop
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"ceres0\" ct state established,related accept
\t\tiifname \"ceres0\" counter drop
\t}
}
";
        assert_eq!(home().ruleset().unwrap(), want);
    }

    #[test]
    fn without_services_nothing_new_gets_in_and_forward_is_left_to_egress() {
        let f = TunnelFilter::new("ceres0", vec!["10.77.77.2".parse().unwrap()]);
        let text = f.ruleset().unwrap();
        assert!(!text.contains("tcp dport"), "{text}");
        assert!(!text.contains("chain forward"), "{text}");
        assert!(text.contains("iifname \"ceres0\" counter drop"), "{text}");
        // Default-drop chains are what the firewall advice looks for: ours
        // must never look like one (it drops the tunnel only).
        assert!(!text.contains("policy drop"), "{text}");
    }

    #[test]
    fn rejects_unsafe_names_and_port_zero() {
        let mut f = home();
        f.tunnel_if = "ceres0\" accept #".into();
        assert!(matches!(f.ruleset(), Err(EgressError::Invalid { .. })));
        let mut f = home();
        f.services.push("10.77.77.2:0".parse().unwrap());
        assert!(matches!(f.ruleset(), Err(EgressError::Invalid { .. })));
    }

    #[test]
    fn apply_and_remove_run_one_transaction_each() {
        let sys = FakeSystem::default();
        let f = home();
        f.apply(&sys).unwrap();
        f.remove(&sys).unwrap();
        let log = sys.log.borrow();
        assert_eq!(log.len(), 2);
        assert!(log[0].starts_with("nft -f - <<table inet ceres_tunnel\ndelete table"));
        assert_eq!(
            log[1],
            "nft -f - <<table inet ceres_tunnel\ndelete table inet ceres_tunnel\n"
        );
    }
}
