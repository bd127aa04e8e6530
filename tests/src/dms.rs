//! docker-mailserver (DMS) emulated on Debian's packages, for the stack lab:
//! what `docker compose up` of DMS's `compose.yaml` plus the user's
//! `compose.override.yaml` would build on the home host, with no Docker.
//!
//! - **The network**: a "container" namespace on a veth to home (Docker's
//!   bridge), with the subnets the override's `networks.default` fixes: the
//!   first address of each is the gateway on home's side, the second the
//!   container's (Docker gives the first container that address). Home
//!   forwards, as Docker turns on.
//! - **NAT**: what the container sends out leaves from the host's address,
//!   as Docker's `MASQUERADE` rule makes it (IPv4).
//! - **Port publishing** (Docker's default, `userland-proxy: true`): a port
//!   published on every host address (DMS's `compose.yaml`: 25, 143, 465,
//!   587, 993) is a DNAT rule, so the container sees the real client; a
//!   port published on `127.0.0.1` (the override's PROXY ports) is served by
//!   `docker-proxy`, which connects to the container **from the gateway** —
//!   emulated with socat bound to the gateway address. That is why the
//!   recipe trusts the gateway (DMS `docs/content/config/advanced/ipv6.md`:
//!   connections are "proxied through the IPv4 or IPv6 gateway address").
//! - **The image**: Debian's stock Postfix and Dovecot ([`Postfix::start_stock`],
//!   [`Dovecot::start_stock`]) with the parts of DMS's image the recipe
//!   copies or relies on ([`DMS_IMAGE_MASTER`], [`image`]), read in
//!   docker-mailserver at commit c9b015d.
//! - **The user's files** in `docker-data/dms/config/` (mounted at
//!   `/tmp/docker-mailserver/`), applied as DMS's start-up scripts apply
//!   them ([`apply_user_config`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::dovecot::Dovecot;
use crate::postfix::{Postfix, StockSite};
use crate::{Daemon, Lab, Netns, run, sh, wait_until};

/// The ports DMS's own `compose.yaml` publishes on every host address
/// (`"25:25"`, `"143:143"`, `"465:465"`, `"587:587"`, `"993:993"`): the
/// stock listeners, for LAN clients.
pub const STOCK_PUBLISHED: [u16; 5] = [25, 143, 465, 587, 993];

/// The services of DMS's `target/postfix/master.cf` that Debian's
/// `master.cf.dist` lacks and the recipe's `user-patches.sh` copies
/// (`postconf -Mf smtp/inet`, `submission/inet`, `submissions/inet`):
/// postscreen on 25 with its `smtpd` pass service, `tlsproxy`, `dnsblog`,
/// and the two submission services with their `-o` lines. Two options are
/// left out because they name DMS files this emulation does not have:
/// `smtpd_sender_restrictions=$mua_sender_restrictions` (a main.cf
/// parameter built on DMS's sender maps) and
/// `cleanup_service_name=sender-cleanup` (a cleanup service with DMS's PCRE
/// header filter). Neither decides where a connection comes from.
pub const DMS_IMAGE_MASTER: &str = "\
# docker-mailserver image (target/postfix/master.cf @ c9b015d), emulated
smtp           inet  n       -       n       -       1       postscreen
smtpd          pass  -       -       n       -       -       smtpd
tlsproxy       unix  -       -       n       -       0       tlsproxy
dnsblog        unix  -       -       n       -       0       dnsblog
submission     inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_sasl_authenticated_header=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_discard_ehlo_keywords=
  -o milter_macro_daemon_name=ORIGINATING
submissions    inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_sasl_authenticated_header=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_discard_ehlo_keywords=
  -o milter_macro_daemon_name=ORIGINATING
";

/// One `ports:` entry of a compose file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The host address (`None`: every address).
    pub host_ip: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
    /// The container port.
    pub container_port: u16,
}

/// What the compose override says, as this emulation uses it.
#[derive(Debug, Clone)]
pub struct Compose {
    /// The `mailserver` service's published ports (override only).
    pub published: Vec<Published>,
    /// `networks.default` IPv4 subnet: (network address, prefix length).
    pub subnet4: (Ipv4Addr, u8),
    /// Its IPv6 subnet, when `enable_ipv6` and one is given.
    pub subnet6: Option<(Ipv6Addr, u8)>,
}

/// A YAML file as JSON, by Debian's python3 with its YAML parser
/// (`python3-yaml`, installed by `.ci/install-deps`).
pub fn yaml_to_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let out = run(Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path))?;
    ensure!(
        out.status.success(),
        "cannot read {} as YAML (apt-get install python3-yaml): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn parse_port(entry: &str) -> anyhow::Result<Published> {
    let parts: Vec<&str> = entry.split(':').collect();
    let port = |s: &str| {
        s.parse::<u16>()
            .with_context(|| format!("port entry {entry:?}"))
    };
    Ok(match parts.as_slice() {
        [h, c] => Published {
            host_ip: None,
            host_port: port(h)?,
            container_port: port(c)?,
        },
        [ip, h, c] => Published {
            host_ip: Some(
                ip.parse()
                    .with_context(|| format!("port entry {entry:?}"))?,
            ),
            host_port: port(h)?,
            container_port: port(c)?,
        },
        _ => {
            bail!("port entry {entry:?}: this emulation reads HOST:CONTAINER or IP:HOST:CONTAINER")
        }
    })
}

fn parse_subnet<T: std::str::FromStr>(s: &str) -> anyhow::Result<(T, u8)> {
    let (addr, len) = s.split_once('/').context("a subnet needs /LEN")?;
    Ok((
        addr.parse()
            .map_err(|_| anyhow::anyhow!("subnet {s:?}: bad address"))?,
        len.parse()?,
    ))
}

impl Compose {
    /// Reads the user's `compose.override.yaml`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let c = yaml_to_json(path)?;
        let published = c["services"]["mailserver"]["ports"]
            .as_array()
            .context("services.mailserver.ports")?
            .iter()
            .map(|p| parse_port(p.as_str().unwrap_or_default()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let net = &c["networks"]["default"];
        let mut subnet4 = None;
        let mut subnet6 = None;
        for s in net["ipam"]["config"].as_array().into_iter().flatten() {
            let s = s["subnet"].as_str().context("ipam subnet")?;
            if s.contains(':') {
                subnet6 = Some(parse_subnet::<Ipv6Addr>(s)?);
            } else {
                subnet4 = Some(parse_subnet::<Ipv4Addr>(s)?);
            }
        }
        if net["enable_ipv6"] != true {
            subnet6 = None;
        }
        Ok(Self {
            published,
            subnet4: subnet4.context("networks.default needs an IPv4 subnet (the lab reads it)")?,
            subnet6,
        })
    }

    /// (gateway, container) in the IPv4 subnet.
    pub fn addresses4(&self) -> (Ipv4Addr, Ipv4Addr) {
        let n = u32::from(self.subnet4.0);
        (Ipv4Addr::from(n + 1), Ipv4Addr::from(n + 2))
    }

    /// (gateway, container) in the IPv6 subnet.
    pub fn addresses6(&self) -> Option<(Ipv6Addr, Ipv6Addr)> {
        self.subnet6.map(|(a, _)| {
            let n = u128::from(a);
            (Ipv6Addr::from(n + 1), Ipv6Addr::from(n + 2))
        })
    }
}

/// The "container": its namespace, the mail servers in it, the proxies
/// publishing its loopback ports. Dropped in field order: proxies, mail
/// servers, then the namespace.
#[derive(Debug)]
pub struct DmsContainer {
    /// docker-proxy stand-ins, by host port.
    proxies: Vec<(u16, Daemon)>,
    /// Postfix in the container.
    pub postfix: Postfix,
    /// Dovecot in the container.
    pub dovecot: Dovecot,
    /// The compose facts it was built from.
    pub compose: Compose,
    /// Home's end of the container network (Docker's bridge).
    pub bridge: String,
    /// The container's own `/etc/resolv.conf`.
    _resolv: NetnsEtc,
    /// The container's namespace.
    pub ns: Netns,
}

/// `/etc/netns/NAME/`: files `ip netns exec NAME` bind-mounts over their
/// `/etc` namesakes for what it runs (ip-netns(8)); removed on drop.
#[derive(Debug)]
struct NetnsEtc(PathBuf);

impl NetnsEtc {
    /// The container's resolver: Docker's embedded DNS address (a compose
    /// network's containers get `nameserver 127.0.0.11`). Nothing answers
    /// there in the lab, and a query to a closed port on loopback is
    /// refused at once, as a quick NXDOMAIN would be. Without it the
    /// machine's resolver is unreachable from the lab and every reverse
    /// lookup (Postfix's smtpd does one per client) waits for its timeout.
    fn docker_dns(ns: &str) -> anyhow::Result<Self> {
        let dir = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.11\n")?;
        Ok(Self(dir))
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl DmsContainer {
    /// Builds the container next to `lab.home` from the project directory
    /// `project` (where `compose.override.yaml` and `docker-data/` are),
    /// with the mailbox users `users`, and publishes its ports.
    pub fn start(lab: &Lab, project: &Path, users: &[(&str, &str)]) -> anyhow::Result<Self> {
        let compose = Compose::read(&project.join("compose.override.yaml"))?;
        let ns = Netns::new(format!("ceres-{}-dms", lab.id))?;
        let bridge = format!("d{}", lab.id);
        let eth = format!("d{}c", lab.id);
        sh(Command::new("ip").args([
            "link",
            "add",
            &bridge,
            "netns",
            &lab.home.name,
            "type",
            "veth",
            "peer",
            "name",
            &eth,
            "netns",
            &ns.name,
        ]))?;
        let (gw4, c4) = compose.addresses4();
        let len4 = compose.subnet4.1;
        lab.home
            .ip(&["addr", "add", &format!("{gw4}/{len4}"), "dev", &bridge])?;
        ns.ip(&["addr", "add", &format!("{c4}/{len4}"), "dev", &eth])?;
        if let (Some((gw6, c6)), Some((_, len6))) = (compose.addresses6(), compose.subnet6) {
            lab.home.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{gw6}/{len6}"),
                "dev",
                &bridge,
                "nodad",
            ])?;
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{c6}/{len6}"),
                "dev",
                &eth,
                "nodad",
            ])?;
        }
        lab.home.ip(&["link", "set", &bridge, "up"])?;
        ns.ip(&["link", "set", &eth, "up"])?;
        ns.ip(&["route", "add", "default", "via", &gw4.to_string()])?;
        if let Some((gw6, _)) = compose.addresses6() {
            ns.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()])?;
        }
        // Docker turns forwarding on for its networks.
        lab.home.sysctl("net.ipv4.ip_forward", "1")?;
        lab.home.sysctl("net.ipv6.conf.all.forwarding", "1")?;

        let resolv = NetnsEtc::docker_dns(&ns.name)?;
        let postfix = Postfix::start_stock(&ns, StockSite::default())?;
        let dovecot = Dovecot::start_stock(&ns, users)?;
        image(&postfix, &dovecot)?;
        apply_user_config(&project.join("docker-data/dms/config"), &postfix, &dovecot)?;
        postfix.reload()?;
        dovecot.reload()?;

        let mut c = Self {
            proxies: Vec::new(),
            postfix,
            dovecot,
            compose,
            bridge,
            _resolv: resolv,
            ns,
        };
        c.publish(lab)?;
        Ok(c)
    }

    /// The container's IPv4 address.
    pub fn address4(&self) -> Ipv4Addr {
        self.compose.addresses4().1
    }

    /// Publishes the ports: DNAT for every-address ports (DMS's
    /// `compose.yaml`), a docker-proxy stand-in for loopback ones (the
    /// override's).
    fn publish(&mut self, lab: &Lab) -> anyhow::Result<()> {
        let (gw4, c4) = self.compose.addresses4();
        let (net4, len4) = self.compose.subnet4;
        let stock: Vec<String> = STOCK_PUBLISHED.iter().map(u16::to_string).collect();
        // Docker's NAT: packets to any local address on a published port go
        // to the container, the client's address kept (DNAT); what the
        // container sends out through any other interface leaves from the
        // host's address (MASQUERADE, `-s SUBNET ! -o BRIDGE`). Without the
        // second, the container's DNS queries would wait for answers that
        // cannot route back (and Postfix's reverse lookups with them).
        let rules = format!(
            "table ip ceres_lab_docker {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tfib daddr type local tcp dport {{ {} }} dnat to {c4}\n\
             \t}}\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {net4}/{len4} oifname != \"{}\" masquerade\n\
             \t}}\n}}\n",
            stock.join(", "),
            self.bridge
        );
        let mut nft = lab
            .home
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        {
            use std::io::Write;
            nft.stdin
                .take()
                .context("nft stdin")?
                .write_all(rules.as_bytes())?;
        }
        let out = nft.wait_with_output()?;
        ensure!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for p in self.compose.published.clone() {
            let Some(host_ip) = p.host_ip else {
                bail!(
                    "the override publishes {} on every address: this lab expects PROXY ports on 127.0.0.1 only",
                    p.host_port
                );
            };
            let mut cmd = lab.home.command("socat");
            cmd.arg(format!(
                "TCP-LISTEN:{},bind={host_ip},reuseaddr,fork",
                p.host_port
            ))
            .arg(format!("TCP:{c4}:{},bind={gw4}", p.container_port));
            let daemon = Daemon::spawn(
                &format!("docker-proxy-{}", p.host_port),
                cmd,
                lab.dir.path(),
            )?;
            self.proxies.push((p.host_port, daemon));
            let listening = format!("{host_ip}:{}", p.host_port);
            wait_until(
                &format!("docker-proxy on {listening}"),
                Duration::from_secs(10),
                || {
                    let out = sh(lab
                        .home
                        .command("ss")
                        .args(["-Hltn", &format!("sport = :{}", p.host_port)]))?;
                    Ok(out.contains(&listening))
                },
            )?;
        }
        Ok(())
    }

    /// Stops publishing `port` (as if the override did not list it).
    pub fn unpublish(&mut self, port: u16) -> anyhow::Result<()> {
        let i = self
            .proxies
            .iter()
            .position(|(p, _)| *p == port)
            .with_context(|| format!("{port} is not published"))?;
        let (_, mut d) = self.proxies.remove(i);
        d.terminate(Duration::from_secs(5))?;
        Ok(())
    }
}

/// DMS's image on Debian's packages: its stock Postfix services
/// ([`DMS_IMAGE_MASTER`] in place of Debian's plain `smtp inet`), and
/// Postfix's SASL through Dovecot as DMS wires it — `smtpd_sasl_type =
/// dovecot`, `smtpd_sasl_path` at a Dovecot `service auth` listener
/// (`target/postfix/main.cf`: `/dev/shm/sasl-auth.sock`;
/// `target/dovecot/10-master.conf`: that listener, owned by postfix). The
/// socket lives in the instance's run directory: `/dev/shm` is shared by
/// every lab.
pub fn image(postfix: &Postfix, dovecot: &Dovecot) -> anyhow::Result<()> {
    postfix.postconf(&["-MX", "smtp/inet"])?;
    let master = postfix.config_dir().join("master.cf");
    let mut text = std::fs::read_to_string(&master)?;
    text.push_str(DMS_IMAGE_MASTER);
    std::fs::write(&master, text)?;
    let socket = dovecot.base_dir().join("sasl-auth.sock");
    postfix.postconf(&[
        "-e",
        "smtpd_sasl_type=dovecot",
        &format!("smtpd_sasl_path={}", socket.display()),
        "smtpd_sasl_auth_enable=no",
    ])?;
    std::fs::write(
        dovecot.config_dir().join("conf.d/10-dms-image.conf"),
        format!(
            "# docker-mailserver image (target/dovecot/10-master.conf @ c9b015d), emulated:\n\
             # Postfix's SASL socket.\n\
             service auth {{\n  unix_listener {} {{\n    mode = 0660\n    user = postfix\n    group = postfix\n  }}\n}}\n",
            socket.display()
        ),
    )?;
    Ok(())
}

/// The user's `docker-data/dms/config/` (DMS mounts it at
/// `/tmp/docker-mailserver/`), applied as DMS's start-up applies it, in its
/// order (`target/scripts/start-mailserver.sh` registers the Dovecot and
/// Postfix setup first and `_setup_run_user_patches` last):
/// - `dovecot.cf` is copied to Dovecot's `local.conf`
///   (`target/scripts/startup/setup.d/dovecot.sh`), which Debian's
///   `dovecot.conf` includes last (`!include_try local.conf`);
/// - `postfix-master.cf`: every line starting with a letter or digit goes
///   to `postconf -P` (`setup.d/postfix.sh`, `__postfix__setup_override_configuration`);
/// - `postfix-main.cf` is appended to main.cf, which is then rewritten by
///   `postconf -n` (same function, after the master.cf lines);
/// - `user-patches.sh` is run with `/bin/bash` (`setup-stack.sh`,
///   `_setup_run_user_patches`) — unchanged, in a mount namespace of its own
///   where `/etc/postfix` is this instance's config directory, because the
///   script names that path.
pub fn apply_user_config(dir: &Path, postfix: &Postfix, dovecot: &Dovecot) -> anyhow::Result<()> {
    let dovecot_cf = dir.join("dovecot.cf");
    if dovecot_cf.exists() {
        std::fs::copy(&dovecot_cf, dovecot.config_dir().join("local.conf"))?;
    }
    let master = dir.join("postfix-master.cf");
    if master.exists() {
        for line in std::fs::read_to_string(&master)?.lines() {
            let line = line.trim();
            if line.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
                postfix.postconf(&["-P", line])?;
            }
        }
    }
    let main = dir.join("postfix-main.cf");
    if main.exists() {
        let path = postfix.config_dir().join("main.cf");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&std::fs::read_to_string(&main)?);
        std::fs::write(&path, text)?;
        let rewritten = postfix.postconf(&["-n"])?;
        std::fs::write(&path, rewritten)?;
    }
    let patches = dir.join("user-patches.sh");
    if patches.exists() {
        run_with_etc_postfix(&postfix.config_dir(), &patches)?;
    }
    Ok(())
}

/// Runs `script` with bash where `/etc/postfix` is `conf`: a private mount
/// namespace (`unshare --mount`, propagation private) with a bind mount, so
/// nothing outside sees it.
fn run_with_etc_postfix(conf: &Path, script: &Path) -> anyhow::Result<()> {
    let out = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount --bind \"$1\" /etc/postfix && exec /bin/bash \"$2\"")
        .arg("sh")
        .arg(conf)
        .arg(script))?;
    ensure!(
        out.status.success(),
        "{} failed ({}):\n{}{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
