//! Other firewalls on the host. Every table's chains on a hook see each packet,
//! and a drop in any of them is final, so a chain of someone else's table whose
//! default policy is `drop` can undo what our rules allow: Docker's `ip filter
//! FORWARD` drops home's outbound mail on the VPS; ufw's or firewalld's input
//! chain at home drops the VPS's connections to the forwarders. We never change
//! other tables; we find the chains in the tunnel's way and say which rules let
//! it through.

use super::{EgressError, System};

/// The hook a chain sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Packets to this host (home: the VPS connecting to the forwarders).
    Input,
    /// Packets routed through this host (VPS: home's outbound mail).
    Forward,
}

impl Hook {
    fn keyword(self) -> &'static str {
        match self {
            Hook::Input => "hook input",
            Hook::Forward => "hook forward",
        }
    }
}

/// A chain of someone else's table, on `hook`, whose policy is `drop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropChain {
    /// nftables family (`ip`, `ip6`, `inet`).
    pub family: String,
    /// Table name (`filter`).
    pub table: String,
    /// Chain name (`FORWARD`, `INPUT`).
    pub chain: String,
    /// Where it sits.
    pub hook: Hook,
}

impl DropChain {
    /// What it breaks and the rules that fix it, for the log and `cerectl status`.
    pub fn advice(&self, tunnel_if: &str) -> String {
        let DropChain {
            family,
            table,
            chain,
            hook,
        } = self;
        let insert = format!("nft insert rule {family} {table} {chain}");
        match hook {
            Hook::Forward => format!(
                "the firewall chain {chain} of table {family} {table} drops forwarded traffic by default \
                 (Docker sets this), so home's outbound mail is dropped there after CERES accepted it; \
                 allow the tunnel in that table: `{insert} iifname \"{tunnel_if}\" accept` \
                 and `{insert} oifname \"{tunnel_if}\" ct state established,related accept` \
                 (with Docker, put the same in its DOCKER-USER chain: `iptables -I DOCKER-USER -i {tunnel_if} -j ACCEPT`, \
                 `iptables -I DOCKER-USER -o {tunnel_if} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`); \
                 CERES's own table still limits the tunnel to the allowed ports"
            ),
            Hook::Input => format!(
                "the firewall chain {chain} of table {family} {table} drops incoming connections by default, \
                 so the VPS cannot reach the home agent's forwarders on the tunnel address and relayed \
                 connections get 421; allow the tunnel interface: `{insert} iifname \"{tunnel_if}\" accept` \
                 (ufw: `ufw allow in on {tunnel_if}`; firewalld: \
                 `firewall-cmd --permanent --zone=trusted --add-interface={tunnel_if}`)"
            ),
        }
    }
}

/// The chains on `hook` with `policy drop` in `nft list chains` output.
pub(crate) fn parse_drop_chains(listing: &str, hook: Hook) -> Vec<DropChain> {
    let mut found = Vec::new();
    let (mut family, mut table, mut chain) = (String::new(), String::new(), String::new());
    for line in listing.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", fam, name, ..] => {
                family = (*fam).to_owned();
                table = (*name).to_owned();
            }
            ["chain", name, ..] => chain = (*name).to_owned(),
            _ if line.contains(hook.keyword()) && line.contains("policy drop") => {
                found.push(DropChain {
                    family: family.clone(),
                    table: table.clone(),
                    chain: chain.clone(),
                    hook,
                });
            }
            _ => {}
        }
    }
    found
}

/// Whether a table listing has a rule accepting packets on `ifname` in
/// direction `dir` (`iifname` or `oifname`), as nft and iptables-nft write it
/// (`iifname "ceres0" ... accept`).
pub(crate) fn accepts(table: &str, dir: &str, ifname: &str) -> bool {
    let needle = format!("{dir} \"{ifname}\"");
    table
        .lines()
        .any(|l| l.contains(&needle) && l.split_whitespace().any(|w| w == "accept"))
}

/// Whether a table already lets the tunnel through on `hook`: incoming
/// (input), or both ways (forward: out, and the replies back).
pub(crate) fn lets_through(table: &str, hook: Hook, ifname: &str) -> bool {
    accepts(table, "iifname", ifname) && (hook == Hook::Input || accepts(table, "oifname", ifname))
}

/// The default-drop chains on `hook` that stand in the way of traffic on
/// `tunnel_if`: not our own table (`inet <own_table>`), and not a table that
/// already lets the tunnel through.
pub fn blocking_chains(
    sys: &dyn System,
    hook: Hook,
    tunnel_if: &str,
    own_table: Option<&str>,
) -> Result<Vec<DropChain>, EgressError> {
    let listing = sys.run("nft", &["list", "chains"], None)?;
    let mut found = Vec::new();
    for c in parse_drop_chains(&listing, hook) {
        if c.family == "inet" && Some(c.table.as_str()) == own_table {
            continue;
        }
        let table = sys.run("nft", &["list", "table", &c.family, &c.table], None)?;
        if !lets_through(&table, hook, tunnel_if) {
            found.push(c);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "table ip filter {
\tchain DOCKER-USER {
\t}
\tchain FORWARD {
\t\ttype filter hook forward priority filter; policy drop;
\t}
\tchain INPUT {
\t\ttype filter hook input priority filter; policy drop;
\t}
}
table inet ceres {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t}
}
table inet strict {
\tchain fwd {
\t\ttype filter hook forward priority 10; policy drop;
\t}
}
";

    fn names(found: &[DropChain]) -> Vec<String> {
        found
            .iter()
            .map(|d| format!("{} {} {}", d.family, d.table, d.chain))
            .collect()
    }

    #[test]
    fn default_drop_chains_are_found_per_hook() {
        let fwd = parse_drop_chains(LISTING, Hook::Forward);
        assert_eq!(names(&fwd), ["ip filter FORWARD", "inet strict fwd"]);
        let input = parse_drop_chains(LISTING, Hook::Input);
        assert_eq!(names(&input), ["ip filter INPUT"]);
        // An accepting ruleset: nothing.
        assert!(
            parse_drop_chains(
                "table inet ceres {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t}\n}\n",
                Hook::Forward
            )
            .is_empty()
        );
    }

    #[test]
    fn advice_names_the_chain_and_the_rules() {
        let fwd = &parse_drop_chains(LISTING, Hook::Forward)[0];
        let advice = fwd.advice("ceres0");
        assert!(
            advice.contains("`nft insert rule ip filter FORWARD iifname \"ceres0\" accept`"),
            "{advice}"
        );
        assert!(advice.contains("DOCKER-USER"), "{advice}");
        let input = &parse_drop_chains(LISTING, Hook::Input)[0];
        let advice = input.advice("ceres0");
        assert!(
            advice.contains("`nft insert rule ip filter INPUT iifname \"ceres0\" accept`")
                && advice.contains("ufw allow in on ceres0"),
            "{advice}"
        );
    }

    #[test]
    fn a_table_that_already_lets_the_tunnel_through_is_not_in_the_way() {
        // iptables-nft style, as Docker's DOCKER-USER or ufw write it.
        let docker = "table ip filter {
\tchain DOCKER-USER {
\t\toifname \"ceres0\" ct state related,established counter packets 2 bytes 120 accept
\t\tiifname \"ceres0\" counter packets 3 bytes 180 accept
\t}
}";
        assert!(lets_through(docker, Hook::Forward, "ceres0"));
        assert!(!lets_through(docker, Hook::Forward, "ceres1"));
        // Forward needs both directions (replies would be dropped); input
        // needs only incoming.
        let one_way = "\t\tiifname \"ceres0\" accept";
        assert!(!lets_through(one_way, Hook::Forward, "ceres0"));
        assert!(lets_through(one_way, Hook::Input, "ceres0"));
        // A drop is not an accept.
        assert!(!lets_through(
            "\t\tiifname \"ceres0\" counter drop",
            Hook::Input,
            "ceres0"
        ));
    }

    #[test]
    fn our_own_table_is_never_in_the_way() {
        use super::super::fake::FakeSystem;
        let sys = FakeSystem::default();
        sys.respond("nft list chains", LISTING);
        sys.respond("nft list table ip filter", "table ip filter {\n}\n");
        sys.respond("nft list table inet strict", "table inet strict {\n}\n");
        let found = blocking_chains(&sys, Hook::Forward, "ceres0", Some("strict")).unwrap();
        assert_eq!(names(&found), ["ip filter FORWARD"]);
    }
}
