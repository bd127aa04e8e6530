//! Several VPSes, one home (issue 16): the uplinks in the state directory
//! (a [`VpsStore`] with [`Role::Home`]), their tunnel interface slots and
//! names, the check that two uplinks' tunnel addresses do not overlap, and
//! what a supervisor does when the store changes.
//!
//! The first VPS lives at the top of the state directory (slot 0, the
//! interface `CERES_TUNNEL_IFNAME`); every further one in `vps/NAME/` with a
//! stable slot number in `uplink.json` (home only; `entry.json` stays the
//! store's).

#![allow(dead_code)] // the multi-uplink runtime calls these (issue 16, in progress)

use std::collections::BTreeMap;
use std::net::IpAddr;

use ceres_control::{StoreError, VpsEntry, VpsStore};
use ceres_pki::Role;
use ceres_state::StateDir;
use serde::{Deserialize, Serialize};

use crate::tunnel::TunnelAddrs;

/// The home-only file in an uplink's directory: its interface slot.
pub const UPLINK_FILE: &str = "uplink.json";
/// Linux's limit on interface names (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
/// Files of an uplink's tunnel and relays that `leave` removes for the first
/// slot (a later join there must not start the old tunnel).
pub const RUNTIME_FILES: &[&str] = &[
    "tunnel.params",
    "relays",
    "rotation.json",
    "wg.next.key",
    UPLINK_FILE,
];

/// `uplink.json`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct UplinkFile {
    /// Interface slot: 0 is the first VPS (`CERES_TUNNEL_IFNAME`).
    pub slot: u16,
}

/// The store of this home's VPSes.
pub fn store(dir: &StateDir) -> VpsStore {
    VpsStore::new(dir.clone(), Role::Home)
}

/// The interface name of `slot` from the base name (`CERES_TUNNEL_IFNAME`):
/// slot 0 is the base; a base ending in digits counts on from them
/// (`ceres0` → `ceres1`), any other gets the slot appended (`wg` → `wg1`).
pub fn ifname_for(base: &str, slot: u16) -> Result<String, String> {
    let name = if slot == 0 {
        base.to_owned()
    } else {
        let stem = base.trim_end_matches(|c: char| c.is_ascii_digit());
        let digits = &base[stem.len()..];
        match digits.parse::<u64>() {
            Ok(n) if !digits.is_empty() => format!("{stem}{}", n + u64::from(slot)),
            _ => format!("{base}{slot}"),
        }
    };
    if name.is_empty() || name.len() > MAX_IFNAME {
        return Err(format!(
            "the tunnel interface name {name:?} for uplink slot {slot} is longer than \
             {MAX_IFNAME} bytes (Linux's limit); set CERES_TUNNEL_IFNAME to a shorter base \
             name (e.g. ceres0)"
        ));
    }
    Ok(name)
}

/// The first slot (≥ 1) not in `taken`.
pub fn first_free_slot(taken: &[u16]) -> u16 {
    (1..=u16::MAX)
        .find(|s| !taken.contains(s))
        .unwrap_or(u16::MAX)
}

/// The slot of every uplink in `entries`: 0 for the first slot, the stored
/// one for others, and for one without a slot yet the first free one, which
/// is written to its `uplink.json` so it keeps it.
pub fn assign_slots(entries: &[VpsEntry]) -> Result<BTreeMap<String, u16>, StoreError> {
    let mut slots = BTreeMap::new();
    let mut pending = Vec::new();
    for e in entries {
        if e.first_slot {
            slots.insert(e.name.clone(), 0);
            continue;
        }
        let dir = e.state_dir()?;
        let stored: Option<UplinkFile> = dir
            .read_optional(UPLINK_FILE)?
            .and_then(|b| serde_json::from_slice(&b).ok());
        match stored {
            Some(f) if f.slot > 0 && !slots.values().any(|s| *s == f.slot) => {
                slots.insert(e.name.clone(), f.slot);
            }
            _ => pending.push(e),
        }
    }
    for e in pending {
        let taken: Vec<u16> = slots.values().copied().collect();
        let slot = first_free_slot(&taken);
        let body = serde_json::to_vec(&UplinkFile { slot }).unwrap_or_default();
        e.state_dir()?.write(UPLINK_FILE, &body)?;
        slots.insert(e.name.clone(), slot);
    }
    Ok(slots)
}

/// Whether `a` and `b` share a tunnel network (IPv4 or IPv6): the two
/// interfaces would route the same addresses. Compares the /24 (IPv4) and
/// /64 (IPv6) of the addresses, the prefixes the VPS hands out.
pub fn overlaps(a: &TunnelAddrs, b: &TunnelAddrs) -> bool {
    let net = |ip: &IpAddr| -> Vec<u8> {
        match ip {
            IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
            IpAddr::V6(v6) => v6.octets()[..8].to_vec(),
        }
    };
    let mine: Vec<Vec<u8>> = [Some(a.home), Some(a.vps), a.home6, a.vps6]
        .iter()
        .flatten()
        .map(net)
        .collect();
    [Some(b.home), Some(b.vps), b.home6, b.vps6]
        .iter()
        .flatten()
        .any(|ip| mine.contains(&net(ip)))
}

/// The error an uplink shows when its tunnel addresses overlap another's
/// (`mine`, `other`: the tunnel interfaces).
pub fn overlap_advice(mine: &str, other: &str) -> String {
    format!(
        "the tunnel addresses the VPS of {mine} sent overlap those of {other} (another uplink), \
         so {mine} stays down: on the VPS of {mine} set CERES_TUNNEL_HOME_ADDRESS and \
         CERES_TUNNEL_VPS_ADDRESS (and the IPv6 pair CERES_TUNNEL_HOME_ADDRESS6 / \
         CERES_TUNNEL_VPS_ADDRESS6) to another network, e.g. 10.77.78.2/24 and 10.77.78.1/24, \
         and restart ceres-vps there"
    )
}

/// The tunnel addresses each running tunnel interface of this process uses:
/// a second uplink must not come up on the addresses of another.
static CLAIMS: std::sync::Mutex<BTreeMap<String, TunnelAddrs>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Claims `addrs` for the tunnel `ifname`, or says (with the fix) which
/// other tunnel of this agent already uses that network.
pub fn claim(ifname: &str, addrs: &TunnelAddrs) -> Result<(), String> {
    use ceres_sync::Unpoison;
    let mut claims = CLAIMS.locked();
    if let Some((other, _)) = claims
        .iter()
        .find(|(name, theirs)| name.as_str() != ifname && overlaps(addrs, theirs))
    {
        return Err(overlap_advice(ifname, other));
    }
    claims.insert(ifname.to_owned(), *addrs);
    Ok(())
}

/// The tunnel `ifname` is down: its addresses are free.
pub fn release(ifname: &str) {
    use ceres_sync::Unpoison;
    CLAIMS.locked().remove(ifname);
}

/// What the supervisor runs for one uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// Its name.
    pub name: String,
    /// Its priority now.
    pub priority: u16,
    /// Its directory.
    pub dir: std::path::PathBuf,
}

/// What changes when the store is read again.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Entries to start.
    pub start: Vec<VpsEntry>,
    /// Running uplinks to stop (left, or moved to another directory).
    pub stop: Vec<String>,
    /// Running uplinks whose priority changed: (name, new priority).
    pub reprioritise: Vec<(String, u16)>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty() && self.reprioritise.is_empty()
    }
}

/// The difference between what runs and what the store lists. An entry whose
/// directory changed (left and joined again elsewhere) is stopped and started.
pub fn plan(running: &[Running], store: &[VpsEntry]) -> Plan {
    let mut out = Plan::default();
    for r in running {
        match store.iter().find(|e| e.name == r.name) {
            Some(e) if e.dir == r.dir => {
                if e.priority != r.priority {
                    out.reprioritise.push((r.name.clone(), e.priority));
                }
            }
            _ => out.stop.push(r.name.clone()),
        }
    }
    for e in store {
        let same = running.iter().any(|r| r.name == e.name && r.dir == e.dir);
        if !same {
            out.start.push(e.clone());
        }
    }
    out
}

/// Removes the runtime files of the first slot after `leave`.
pub fn remove_runtime_files(dir: &StateDir) -> Result<(), ceres_state::StateError> {
    for f in RUNTIME_FILES {
        dir.remove(f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn entry(name: &str, priority: u16, dir: &str, first: bool) -> VpsEntry {
        VpsEntry {
            name: name.into(),
            priority,
            control_address: format!("{name}:7443"),
            ca_fingerprint: format!("sha256:{name}"),
            dir: PathBuf::from(dir),
            first_slot: first,
        }
    }

    fn running(name: &str, priority: u16, dir: &str) -> Running {
        Running {
            name: name.into(),
            priority,
            dir: PathBuf::from(dir),
        }
    }

    #[test]
    fn ifnames_count_on_from_the_base() {
        assert_eq!(ifname_for("ceres0", 0).unwrap(), "ceres0");
        assert_eq!(ifname_for("ceres0", 1).unwrap(), "ceres1");
        assert_eq!(ifname_for("ceres0", 2).unwrap(), "ceres2");
        assert_eq!(ifname_for("wg9", 3).unwrap(), "wg12");
        assert_eq!(ifname_for("tun", 1).unwrap(), "tun1");
        assert_eq!(ifname_for("x", 0).unwrap(), "x");
    }

    #[test]
    fn an_ifname_too_long_names_the_setting() {
        assert_eq!(ifname_for("abcdefghijklmn", 1).unwrap(), "abcdefghijklmn1");
        let e = ifname_for("abcdefghijklmno", 1).unwrap_err();
        assert!(e.contains("CERES_TUNNEL_IFNAME") && e.contains("15"), "{e}");
        assert!(ifname_for("abcdefghijklm9", 1).is_ok());
        assert!(ifname_for("abcdefghijklm9", 1).unwrap() == "abcdefghijklm10");
    }

    #[test]
    fn free_slots_fill_gaps() {
        assert_eq!(first_free_slot(&[]), 1);
        assert_eq!(first_free_slot(&[0, 1, 3]), 2);
        assert_eq!(first_free_slot(&[0, 1, 2]), 3);
    }

    #[test]
    fn slots_are_assigned_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = |n: &str| {
            let p = tmp.path().join(n);
            StateDir::open(&p).unwrap();
            p.display().to_string()
        };
        let (a, b, c) = (mk("a"), mk("b"), mk("c"));
        let es = vec![
            entry("a", 10, &a, true),
            entry("b", 20, &b, false),
            entry("c", 30, &c, false),
        ];
        let s = assign_slots(&es).unwrap();
        assert_eq!((s["a"], s["b"], s["c"]), (0, 1, 2));
        // b leaves: c keeps 2, a new d takes the free 1.
        let d = mk("d");
        let es = vec![
            entry("a", 10, &a, true),
            entry("c", 30, &c, false),
            entry("d", 40, &d, false),
        ];
        let s = assign_slots(&es).unwrap();
        assert_eq!((s["a"], s["c"], s["d"]), (0, 2, 1));
    }

    fn addrs(v4: [u8; 3], v6: Option<u16>) -> TunnelAddrs {
        let ip4 = |last| IpAddr::from([v4[0], v4[1], v4[2], last]);
        let ip6 = |n: u16, last| IpAddr::from([0xfd77, n, 0, 0, 0, 0, 0, last]);
        TunnelAddrs {
            home: ip4(2),
            vps: ip4(1),
            home6: v6.map(|n| ip6(n, 2)),
            vps6: v6.map(|n| ip6(n, 1)),
        }
    }

    #[test]
    fn overlapping_tunnel_networks_are_found() {
        let a = addrs([10, 77, 77], Some(1));
        assert!(overlaps(&a, &addrs([10, 77, 77], Some(1))));
        assert!(overlaps(&a, &addrs([10, 77, 77], Some(2))), "IPv4 alone");
        assert!(overlaps(&a, &addrs([10, 77, 78], Some(1))), "IPv6 alone");
        assert!(!overlaps(&a, &addrs([10, 77, 78], Some(2))));
        assert!(!overlaps(&a, &addrs([10, 77, 78], None)));
        let advice = overlap_advice("b", "a");
        assert!(advice.contains("CERES_TUNNEL_HOME_ADDRESS") && advice.contains("10.77.78.2/24"));
    }

    #[test]
    fn a_second_tunnel_on_the_same_network_is_refused_until_the_first_is_gone() {
        let a = addrs([10, 77, 77], Some(1));
        claim("test-ovl0", &a).unwrap();
        // The same interface again (its parameters re-applied): fine.
        claim("test-ovl0", &a).unwrap();
        let e = claim("test-ovl1", &addrs([10, 77, 77], Some(9))).unwrap_err();
        assert!(e.contains("test-ovl1") && e.contains("test-ovl0"), "{e}");
        claim("test-ovl1", &addrs([10, 77, 78], Some(9))).unwrap();
        release("test-ovl0");
        release("test-ovl1");
        claim("test-ovl2", &a).unwrap();
        release("test-ovl2");
    }

    #[test]
    fn the_plan_starts_stops_and_reprioritises() {
        let store = vec![
            entry("a", 10, "/s", true),
            entry("b", 20, "/s/vps/b", false),
        ];
        // Nothing runs: start both.
        let p = plan(&[], &store);
        assert_eq!(p.start, store);
        assert!(p.stop.is_empty() && p.reprioritise.is_empty());
        // Both run: nothing.
        let both = [running("a", 10, "/s"), running("b", 20, "/s/vps/b")];
        assert!(plan(&both, &store).is_empty());
        // b left.
        let p = plan(&both, &store[..1]);
        assert_eq!(p.stop, vec!["b".to_string()]);
        assert!(p.start.is_empty());
        // a's priority changed.
        let store2 = vec![entry("a", 30, "/s", true), store[1].clone()];
        let p = plan(&both, &store2);
        assert_eq!(p.reprioritise, vec![("a".to_string(), 30)]);
        assert!(p.start.is_empty() && p.stop.is_empty());
        // b left and joined again into the top directory: restart it.
        let store3 = vec![entry("b", 20, "/s", true)];
        let p = plan(&both, &store3);
        assert_eq!(p.stop, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(p.start, store3);
    }
}
