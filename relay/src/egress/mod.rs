//! Outbound mail through the VPS: nftables NAT/filter rules on the VPS ([`VpsEgress`])
//! and policy routing at home ([`HomeEgress`]).
//!
//! Rules are built by pure functions (unit-tested as text/argument lists); applying
//! them goes through the [`System`] trait, whose real implementation [`HostSystem`]
//! runs `nft`, `ip` and `sysctl` (tested as root inside network namespaces).

use std::io::Write;
use std::net::Ipv6Addr;
use std::process::{Command, Stdio};

mod firewall;
mod home;
mod tunnel_filter;
mod uplinks;
mod vps;

pub use firewall::{DropChain, Hook, blocking_chains};
pub use home::{DEFAULT_ROUTE_TABLE, DEFAULT_RULE_PRIORITY, HomeEgress, direct_ipv6};
pub use tunnel_filter::{DEFAULT_FILTER_TABLE, TunnelFilter};
pub use uplinks::{
    BASE_PRIORITY, BASE_TABLE, DEFAULT_UPLINK_NFT_TABLE, FailoverEgress, MARK_BASE, MAX_UPLINKS,
    UplinkRoute, slot_table,
};
pub use vps::{DEFAULT_EGRESS_PORTS, ForwardingState, SysctlNeed, VpsEgress, public_ipv6};

/// Default name of our own nftables table on both sides.
pub const DEFAULT_NFT_TABLE: &str = "ceres";

/// Errors from building or applying egress rules.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// A command could not be started (binary missing, no permission).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed; `stderr` is its own explanation.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status as text.
        status: String,
        /// What the command wrote to stderr, trimmed.
        stderr: String,
    },
    /// A configured name or value cannot be put into a rule safely.
    #[error("invalid egress setting {what}: {value:?}")]
    Invalid {
        /// Which setting.
        what: &'static str,
        /// The offending value.
        value: String,
    },
}

/// Runs the privileged commands; a fake records them in unit tests.
pub trait System {
    /// Runs `program` with `args`, writing `stdin` to it if given. Returns stdout when
    /// the command exits with status 0, else [`EgressError::Command`] with its stderr.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>)
    -> Result<String, EgressError>;
}

/// The real [`System`]: runs commands on this host, or inside a named network
/// namespace (`ip netns exec NS ...`), which is how the tests use it.
#[derive(Debug, Clone, Default)]
pub struct HostSystem {
    /// Network namespace to run in; `None` for the current one.
    pub netns: Option<String>,
}

impl System for HostSystem {
    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, EgressError> {
        let mut argv: Vec<&str> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns.as_str()]);
        }
        argv.push(program);
        argv.extend_from_slice(args);
        let command = argv.join(" ");
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_err = |source| EgressError::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(EgressError::Command {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

/// Interface names go into rules quoted; refuse anything that could break out of the
/// quotes or is not a valid Linux interface name (1–15 bytes, no `/`, no whitespace).
pub(crate) fn check_ifname(what: &'static str, name: &str) -> Result<(), EgressError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':'));
    if ok {
        Ok(())
    } else {
        Err(EgressError::Invalid {
            what,
            value: name.to_owned(),
        })
    }
}

/// Table names: nft identifiers.
pub(crate) fn check_table(name: &str) -> Result<(), EgressError> {
    let ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(EgressError::Invalid {
            what: "nftables table name",
            value: name.to_owned(),
        })
    }
}

/// nft text that deletes `inet TABLE` if present: creating it first makes the delete
/// always succeed, and both run in one transaction.
pub(crate) fn delete_table_text(table: &str) -> String {
    format!("table inet {table}\ndelete table inet {table}\n")
}

/// The usable global IPv6 addresses in `ip -6 -o addr show` output, with their
/// interface: not unique local (fc00::/7, scope "global" to the kernel but not
/// routed on the internet), not failed duplicate address detection.
pub(crate) fn global_ipv6(listing: &str) -> Vec<(String, Ipv6Addr)> {
    listing
        .lines()
        .filter(|l| !l.contains("dadfailed"))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "inet6")?;
            let ifname = words.get(1)?.trim_end_matches(':').to_owned();
            let addr: Ipv6Addr = words.get(at + 1)?.split('/').next()?.parse().ok()?;
            let ula = addr.segments()[0] & 0xfe00 == 0xfc00;
            let usable = !ula && !addr.is_loopback() && addr.segments()[0] & 0xffc0 != 0xfe80;
            usable.then_some((ifname, addr))
        })
        .collect()
}

/// `{ 25, 465, 587 }`
pub(crate) fn port_set(ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("{{ {} }}", list.join(", "))
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// Records commands; answers `sysctl -n` from a map, fails `ip rule del` once
    /// the pretend rules run out, and gives canned output for other commands.
    #[derive(Default)]
    pub(crate) struct FakeSystem {
        pub(crate) log: RefCell<Vec<String>>,
        pub(crate) sysctls: RefCell<HashMap<String, String>>,
        pub(crate) rules_to_delete: RefCell<u32>,
        /// Output by command line (`program args...`).
        pub(crate) outputs: RefCell<HashMap<String, String>>,
    }

    impl FakeSystem {
        /// Makes `command` (as `program args...`) print `output`.
        pub(crate) fn respond(&self, command: &str, output: &str) {
            self.outputs
                .borrow_mut()
                .insert(command.to_owned(), output.to_owned());
        }
    }

    impl System for FakeSystem {
        fn run(
            &self,
            program: &str,
            args: &[&str],
            stdin: Option<&str>,
        ) -> Result<String, EgressError> {
            let line = format!("{program} {}", args.join(" "));
            self.log.borrow_mut().push(match stdin {
                Some(s) => format!("{line} <<{s}"),
                None => line.clone(),
            });
            let fail = || EgressError::Command {
                command: line.clone(),
                status: "exit status: 2".into(),
                stderr: "RTNETLINK answers: No such file or directory".into(),
            };
            match (program, args) {
                ("sysctl", ["-n", key]) => Ok(self
                    .sysctls
                    .borrow()
                    .get(*key)
                    .cloned()
                    .unwrap_or_else(|| "0".into())),
                ("sysctl", ["-w", kv]) => {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    self.sysctls.borrow_mut().insert(k.into(), v.into());
                    Ok(String::new())
                }
                ("ip", [_, "rule", "del", ..]) => {
                    let mut n = self.rules_to_delete.borrow_mut();
                    if *n == 0 {
                        return Err(fail());
                    }
                    *n -= 1;
                    Ok(String::new())
                }
                _ => Ok(self
                    .outputs
                    .borrow()
                    .get(&line)
                    .cloned()
                    .unwrap_or_default()),
            }
        }
    }
}
