//! Home egress across several uplinks (issue 16, outbound failover): new
//! outbound connections from the egress sources are marked with the active
//! uplink's mark, the mark is saved in the connection (`ct mark`) so every
//! later packet keeps its uplink, and per-uplink routing tables send each
//! mark into its tunnel. Switching uplinks replaces the nft table in one
//! transaction (new connections get the new mark); routes are not flushed,
//! established connections are not moved.
//!
//! Fixed numbers, so a restarted agent finds and replaces what an earlier
//! run left (see [`FailoverEgress::remove_all`]):
//! - uplink slot `i` (0..[`MAX_UPLINKS`]): routing table and rule priority
//!   `7281 + i`, firewall mark `0x6365_0001 + i` (high half "ce", ours);
//! - table [`BASE_TABLE`] (7280) with rules at priority [`BASE_PRIORITY`]
//!   (7297, after the mark rules): `from SOURCE [tcp dport P]` into the
//!   active tunnel, so the first route lookup of a locally bound socket
//!   (made before the mark exists) finds a route; the `type route` output
//!   chain re-routes the marked packet;
//! - the single-uplink [`super::HomeEgress`] priority 7277 is removed too.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{EgressError, System, check_ifname, check_table, delete_table_text, port_set};

/// Most uplinks (slots 0..16).
pub const MAX_UPLINKS: u8 = 16;
/// The routing table of the base rules (before marking).
pub const BASE_TABLE: u32 = 7280;
/// Priority of the base rules: after every uplink's mark rule.
pub const BASE_PRIORITY: u32 = 7297;
/// Our marks: `MARK_BASE + 1 + slot`; the high 16 bits identify ours.
pub const MARK_BASE: u32 = 0x6365_0000;
const MARK_MASK: u32 = 0xffff_0000;
/// Default nftables table of the failover egress.
pub const DEFAULT_UPLINK_NFT_TABLE: &str = "ceres_uplinks";
const MAX_RULES: usize = 4096;

/// One uplink's routing identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkRoute {
    /// Its slot (0..[`MAX_UPLINKS`]): fixes its table, rule priority and mark.
    pub slot: u8,
    /// Its tunnel interface.
    pub ifname: String,
    /// Home's IPv4 tunnel address on it (its VPS masquerades only this).
    pub home: IpAddr,
    /// Home's IPv6 tunnel address on it, if dual-stack.
    pub home6: Option<IpAddr>,
}

impl UplinkRoute {
    /// Routing table and rule priority of this uplink.
    pub fn table(&self) -> u32 {
        slot_table(self.slot)
    }

    /// Its firewall / connection mark.
    pub fn mark(&self) -> u32 {
        MARK_BASE + 1 + u32::from(self.slot)
    }

    fn own(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.home).chain(self.home6)
    }
}

/// Routing table (and rule priority) of slot `slot`.
pub fn slot_table(slot: u8) -> u32 {
    BASE_TABLE + 1 + u32::from(slot)
}

/// The whole failover egress: every uplink and which one new connections take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverEgress {
    /// The uplinks.
    pub uplinks: Vec<UplinkRoute>,
    /// The slot of the uplink new connections take (`None`: no uplink).
    pub active: Option<u8>,
    /// Sources besides the home tunnel addresses (`CERES_EGRESS_FROM`, e.g. a
    /// Docker network); masqueraded to the tunnel address of their uplink.
    pub extra_sources: Vec<IpNet>,
    /// Destination TCP ports routed through the tunnels (empty: all TCP).
    pub tcp_ports: Vec<u16>,
    /// nftables table (family `inet`).
    pub nft_table: String,
}

fn fam_of(net: &IpNet) -> (&'static str, &'static str) {
    match net {
        IpNet::V4(_) => ("-4", "ip"),
        IpNet::V6(_) => ("-6", "ip6"),
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

impl FailoverEgress {
    /// No uplinks yet, the default ports and table.
    pub fn new(extra_sources: Vec<IpNet>, tcp_ports: Vec<u16>) -> Self {
        Self {
            uplinks: Vec::new(),
            active: None,
            extra_sources,
            tcp_ports,
            nft_table: DEFAULT_UPLINK_NFT_TABLE.to_owned(),
        }
    }

    fn validate(&self) -> Result<(), EgressError> {
        check_table(&self.nft_table)?;
        for u in &self.uplinks {
            check_ifname("tunnel interface", &u.ifname)?;
            if u.slot >= MAX_UPLINKS {
                return Err(EgressError::Invalid {
                    what: "uplink slot (at most 16 uplinks)",
                    value: u.slot.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Every source routed through the tunnels: the home tunnel addresses of
    /// all uplinks, then the extra sources; no duplicates.
    pub fn sources(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = Vec::new();
        let all = self
            .uplinks
            .iter()
            .flat_map(|u| u.own().map(IpNet::from).collect::<Vec<_>>())
            .chain(self.extra_sources.iter().copied());
        for n in all {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    fn active_uplink(&self) -> Option<&UplinkRoute> {
        let slot = self.active?;
        self.uplinks.iter().find(|u| u.slot == slot)
    }

    /// The nft text replacing our table in one transaction: marking of new
    /// connections (output and prerouting), mark restore for established
    /// ones, and per-uplink masquerading.
    pub fn ruleset(&self) -> Result<String, EgressError> {
        self.validate()?;
        let t = &self.nft_table;
        let sources = self.sources();
        let ports = if self.tcp_ports.is_empty() {
            "meta l4proto tcp".to_owned()
        } else {
            format!("tcp dport {}", port_set(&self.tcp_ports))
        };
        let mut s = delete_table_text(t);
        s.push_str(&format!("table inet {t} {{\n"));
        // Which packets are ours to steer.
        s.push_str("\tchain steer {\n");
        s.push_str(&format!(
            "\t\tct mark and {MARK_MASK:#x} == {MARK_BASE:#x} meta mark set ct mark return\n"
        ));
        if let Some(a) = self.active_uplink() {
            s.push_str(&format!(
                "\t\tct state new ct mark set {m:#x} meta mark set {m:#x}\n",
                m = a.mark()
            ));
        }
        s.push_str("\t}\n");
        for (chain, hook) in [
            ("output", "type route hook output priority mangle"),
            ("prerouting", "type filter hook prerouting priority mangle"),
        ] {
            s.push_str(&format!("\tchain {chain} {{\n\t\t{hook}; policy accept;\n"));
            for net in &sources {
                let (_, fam) = fam_of(net);
                s.push_str(&format!("\t\t{fam} saddr {net} {ports} jump steer\n"));
            }
            s.push_str("\t}\n");
        }
        s.push_str(
            "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
        );
        for u in &self.uplinks {
            let own: Vec<IpNet> = u.own().map(IpNet::from).collect();
            for net in sources.iter().filter(|n| !own.contains(n)) {
                let (_, fam) = fam_of(net);
                // Only to an address family the uplink carries.
                if fam == "ip6" && u.home6.is_none() {
                    continue;
                }
                s.push_str(&format!(
                    "\t\toifname \"{}\" {fam} saddr {net} masquerade\n",
                    u.ifname
                ));
            }
        }
        s.push_str("\t}\n}\n");
        Ok(s)
    }

    /// The `ip` argument lists of one uplink: its table's default route and
    /// its mark rule, per family it carries.
    pub fn uplink_commands(&self, u: &UplinkRoute) -> Vec<Vec<String>> {
        let (table, mark) = (u.table().to_string(), format!("{:#x}", u.mark()));
        let mut fams = vec!["-4"];
        if u.home6.is_some() {
            fams.push("-6");
        }
        let mut cmds = Vec::new();
        for fam in fams {
            cmds.push(args(&[
                fam, "route", "replace", "default", "dev", &u.ifname, "table", &table,
            ]));
            cmds.push(args(&[
                fam, "rule", "add", "pref", &table, "fwmark", &mark, "lookup", &table,
            ]));
        }
        cmds
    }

    /// The base table's route into the active tunnel (`route replace`: no
    /// flush, nothing established depends on it).
    pub fn base_route_commands(&self) -> Vec<Vec<String>> {
        let Some(a) = self.active_uplink() else {
            return Vec::new();
        };
        let table = BASE_TABLE.to_string();
        let mut cmds = vec![args(&[
            "-4", "route", "replace", "default", "dev", &a.ifname, "table", &table,
        ])];
        if a.home6.is_some() {
            cmds.push(args(&[
                "-6", "route", "replace", "default", "dev", &a.ifname, "table", &table,
            ]));
        }
        cmds
    }

    /// The base rules: sources (to the egress ports) look up the base table.
    pub fn base_rule_commands(&self) -> Vec<Vec<String>> {
        let (table, pref) = (BASE_TABLE.to_string(), BASE_PRIORITY.to_string());
        let mut cmds = Vec::new();
        for src in self.sources() {
            let (fam, _) = fam_of(&src);
            let base = args(&[fam, "rule", "add", "pref", &pref, "from", &src.to_string()]);
            let tail = args(&["lookup", &table]);
            if self.tcp_ports.is_empty() {
                cmds.push([base.clone(), tail.clone()].concat());
            }
            for p in &self.tcp_ports {
                let sel = args(&["ipproto", "tcp", "dport", &p.to_string()]);
                cmds.push([base.clone(), sel, tail.clone()].concat());
            }
        }
        cmds
    }

    fn run_all(sys: &dyn System, cmds: Vec<Vec<String>>) -> Result<(), EgressError> {
        for cmd in cmds {
            let a: Vec<&str> = cmd.iter().map(String::as_str).collect();
            sys.run("ip", &a, None)?;
        }
        Ok(())
    }

    /// Installs everything, replacing what an earlier run left.
    pub fn apply(&self, sys: &dyn System) -> Result<(), EgressError> {
        self.validate()?;
        self.remove_all(sys)?;
        for u in &self.uplinks {
            // Replies through a non-active uplink come back on an interface the
            // unmarked reverse lookup does not point to: loose reverse-path
            // filtering (the kernel takes the larger of `all` and the interface).
            sys.run(
                "sysctl",
                &["-w", &format!("net.ipv4.conf.{}.rp_filter=2", u.ifname)],
                None,
            )?;
            Self::run_all(sys, self.uplink_commands(u))?;
        }
        Self::run_all(sys, self.base_route_commands())?;
        Self::run_all(sys, self.base_rule_commands())?;
        sys.run("nft", &["-f", "-"], Some(&self.ruleset()?))?;
        Ok(())
    }

    /// Makes new connections take the (already changed) `active` uplink: one
    /// nft transaction and the base route; nothing is flushed.
    pub fn switch(&self, sys: &dyn System) -> Result<(), EgressError> {
        self.validate()?;
        sys.run("nft", &["-f", "-"], Some(&self.ruleset()?))?;
        Self::run_all(sys, self.base_route_commands())?;
        Ok(())
    }

    /// Adds or replaces one uplink's routing while the others keep theirs
    /// (nothing of an established connection on another uplink changes):
    /// its sysctl, table and mark rule, the base rules, then the nft table.
    /// `self` already lists the uplink.
    pub fn install_uplink(&self, sys: &dyn System, u: &UplinkRoute) -> Result<(), EgressError> {
        self.validate()?;
        Self::remove_slot(sys, u.slot)?;
        sys.run(
            "sysctl",
            &["-w", &format!("net.ipv4.conf.{}.rp_filter=2", u.ifname)],
            None,
        )?;
        Self::run_all(sys, self.uplink_commands(u))?;
        self.refresh_base(sys)
    }

    /// Removes one uplink's routing; `self` no longer lists it.
    pub fn uninstall_uplink(&self, sys: &dyn System, slot: u8) -> Result<(), EgressError> {
        self.validate()?;
        Self::remove_slot(sys, slot)?;
        self.refresh_base(sys)
    }

    /// Rewrites the base rules (the sources changed) and the nft table.
    fn refresh_base(&self, sys: &dyn System) -> Result<(), EgressError> {
        Self::del_rules(sys, BASE_PRIORITY);
        Self::run_all(sys, self.base_rule_commands())?;
        self.switch(sys)
    }

    fn del_rules(sys: &dyn System, pref: u32) {
        let pref = pref.to_string();
        for fam in ["-4", "-6"] {
            for _ in 0..MAX_RULES {
                // Fails once none is left.
                if sys
                    .run("ip", &[fam, "rule", "del", "pref", &pref], None)
                    .is_err()
                {
                    break;
                }
            }
        }
    }

    fn flush_table(sys: &dyn System, table: u32) -> Result<(), EgressError> {
        let table = table.to_string();
        for fam in ["-4", "-6"] {
            match sys.run("ip", &[fam, "route", "flush", "table", &table], None) {
                Ok(_) => {}
                Err(EgressError::Command { stderr, .. })
                    if stderr.contains("does not exist") || stderr.contains("No such") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes one slot's rule and table (call [`FailoverEgress::switch`]
    /// with the uplink gone from `uplinks` for the nft part).
    pub fn remove_slot(sys: &dyn System, slot: u8) -> Result<(), EgressError> {
        Self::del_rules(sys, slot_table(slot));
        Self::flush_table(sys, slot_table(slot))
    }

    /// Removes every rule, route and nft table in our fixed ranges, and the
    /// single-uplink egress's; succeeds when there is nothing to remove.
    pub fn remove_all(&self, sys: &dyn System) -> Result<(), EgressError> {
        check_table(&self.nft_table)?;
        for slot in 0..MAX_UPLINKS {
            Self::remove_slot(sys, slot)?;
        }
        Self::del_rules(sys, BASE_PRIORITY);
        Self::flush_table(sys, BASE_TABLE)?;
        Self::del_rules(sys, super::DEFAULT_RULE_PRIORITY);
        Self::flush_table(sys, super::DEFAULT_ROUTE_TABLE)?;
        sys.run(
            "nft",
            &["-f", "-"],
            Some(&delete_table_text(&self.nft_table)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::fake::FakeSystem;
    use super::*;

    fn two() -> FailoverEgress {
        let mut e = FailoverEgress::new(Vec::new(), vec![25]);
        e.uplinks = vec![
            UplinkRoute {
                slot: 0,
                ifname: "ceres0".into(),
                home: "10.77.77.2".parse().unwrap(),
                home6: None,
            },
            UplinkRoute {
                slot: 1,
                ifname: "ceres1".into(),
                home: "10.77.78.2".parse().unwrap(),
                home6: None,
            },
        ];
        e.active = Some(0);
        e
    }

    #[test]
    fn new_connections_get_the_active_mark_and_established_keep_theirs() {
        let e = two();
        let nft = e.ruleset().unwrap();
        assert!(
            nft.contains("ct mark and 0xffff0000 == 0x63650000 meta mark set ct mark return"),
            "{nft}"
        );
        assert!(
            nft.contains("ct state new ct mark set 0x63650001 meta mark set 0x63650001"),
            "{nft}"
        );
        assert!(
            nft.contains("type route hook output priority mangle"),
            "{nft}"
        );
        assert!(
            nft.contains("ip saddr 10.77.78.2/32 tcp dport { 25 } jump steer"),
            "{nft}"
        );
        // Through B, A's address leaves as B's; B's own is left alone.
        assert!(
            nft.contains("oifname \"ceres1\" ip saddr 10.77.77.2/32 masquerade"),
            "{nft}"
        );
        assert!(
            !nft.contains("oifname \"ceres1\" ip saddr 10.77.78.2/32"),
            "{nft}"
        );
        let mut b = e.clone();
        b.active = Some(1);
        let nft_b = b.ruleset().unwrap();
        assert!(nft_b.contains("ct mark set 0x63650002"), "{nft_b}");
        // One transaction: delete and recreate in the same text.
        assert!(nft_b.starts_with("table inet ceres_uplinks\ndelete table inet ceres_uplinks\n"));
    }

    #[test]
    fn routes_rules_per_uplink_and_base() {
        let e = two();
        let cmds: Vec<String> = e
            .uplink_commands(&e.uplinks[1])
            .iter()
            .chain(e.base_route_commands().iter())
            .chain(e.base_rule_commands().iter())
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "-4 route replace default dev ceres1 table 7282",
                "-4 rule add pref 7282 fwmark 0x63650002 lookup 7282",
                "-4 route replace default dev ceres0 table 7280",
                "-4 rule add pref 7297 from 10.77.77.2/32 ipproto tcp dport 25 lookup 7280",
                "-4 rule add pref 7297 from 10.77.78.2/32 ipproto tcp dport 25 lookup 7280",
            ]
        );
    }

    #[test]
    fn docker_sources_masquerade_on_every_uplink_and_v6_only_where_carried() {
        let mut e = two();
        e.extra_sources = vec![
            "172.18.0.0/16".parse().unwrap(),
            "fd00:d0c::/64".parse().unwrap(),
        ];
        e.uplinks[0].home6 = Some("fd77:77:77::2".parse().unwrap());
        let nft = e.ruleset().unwrap();
        for line in [
            "oifname \"ceres0\" ip saddr 172.18.0.0/16 masquerade",
            "oifname \"ceres1\" ip saddr 172.18.0.0/16 masquerade",
            "oifname \"ceres0\" ip6 saddr fd00:d0c::/64 masquerade",
        ] {
            assert!(nft.contains(line), "{line} missing in {nft}");
        }
        assert!(!nft.contains("oifname \"ceres1\" ip6"), "{nft}");
        let v6: Vec<String> = e
            .uplink_commands(&e.uplinks[0])
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert!(v6.contains(&"-6 rule add pref 7281 fwmark 0x63650001 lookup 7281".to_owned()));
    }

    #[test]
    fn no_active_marks_nothing_new() {
        let mut e = two();
        e.active = None;
        let nft = e.ruleset().unwrap();
        assert!(!nft.contains("ct state new"), "{nft}");
        assert!(e.base_route_commands().is_empty());
    }

    #[test]
    fn apply_clears_every_slot_and_the_single_uplink_rules_first() {
        let sys = FakeSystem::default();
        two().apply(&sys).unwrap();
        let log = sys.log.borrow();
        for pref in ["7277", "7281", "7296", "7297"] {
            assert!(
                log.iter()
                    .any(|l| l == &format!("ip -4 rule del pref {pref}")),
                "{pref}: {log:?}"
            );
        }
        let first_add = log.iter().position(|l| l.contains("rule add")).unwrap();
        let last_del = log.iter().rposition(|l| l.contains("rule del")).unwrap();
        assert!(last_del < first_add);
        assert!(
            log.iter()
                .any(|l| l == "sysctl -w net.ipv4.conf.ceres1.rp_filter=2")
        );
    }

    #[test]
    fn rejects_too_many_uplinks_and_bad_names() {
        let mut e = two();
        e.uplinks[1].slot = 16;
        assert!(e.ruleset().is_err());
        let mut e = two();
        e.uplinks[0].ifname = "a\"b".into();
        assert!(e.apply(&FakeSystem::default()).is_err());
    }
}
