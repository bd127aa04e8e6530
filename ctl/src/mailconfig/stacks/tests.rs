#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Each stack rendered with `write` and checked against its facts and the
//! safety rules; the Postfix, Dovecot and compose parts parsed by the real
//! tools where this host has them (skipped otherwise, failing under CI=true).

use std::path::Path;
use std::process::Command;

use ceres_relay::stack::{MailStack, Software};
use ceres_relay::{ProxyMode, parse_relays};

use super::*;

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var("CI").as_deref() == Ok("true") {
        panic!("{tool} is needed for this test under CI=true");
    }
    found
}

/// The compose file as JSON, by Debian's python3 with its YAML parser
/// (`python3-yaml`, installed by .ci/install-deps). Without it the check is
/// skipped with a reason, and with `CI=true` a skip is a failure.
fn parse_yaml(path: &Path) -> Option<serde_json::Value> {
    let python = "/usr/bin/python3";
    let out = Command::new(python)
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output();
    let missing = |why: String| {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot parse {path:?} as YAML ({why}) and CI=true: refusing to skip (apt-get install python3-yaml)"
        );
        eprintln!("SKIP YAML check of {path:?}: {why} (apt-get install python3-yaml)");
        None
    };
    let out = match out {
        Ok(o) => o,
        Err(e) => return missing(format!("{python}: {e}")),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // No PyYAML here: not a failure of the file.
        assert!(err.contains("No module named"), "{path:?}: {err}");
        return missing("no PyYAML".into());
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// Every published port of every service: "127.0.0.1:P:P" → (host addr, host port, container port).
fn published(compose: &serde_json::Value) -> Vec<(String, String, u16, u16)> {
    let mut v = Vec::new();
    for (svc, def) in compose["services"].as_object().unwrap() {
        for p in def["ports"].as_array().unwrap() {
            let parts: Vec<&str> = p.as_str().unwrap().split(':').collect();
            assert_eq!(parts.len(), 3, "{p}: HOST_IP:HOST_PORT:CONTAINER_PORT");
            v.push((
                svc.clone(),
                parts[0].to_string(),
                parts[1].parse().unwrap(),
                parts[2].parse().unwrap(),
            ));
        }
    }
    v
}

/// The stack's default network has IPv6 too, and both leave through the tunnel.
fn egress_both_families(r: &Recipe) {
    assert!(
        r.egress_from.iter().any(|n| n.contains('.'))
            && r.egress_from.iter().any(|n| n.contains(':')),
        "{}: IPv4 and IPv6 egress sources",
        r.stack
    );
}

/// Rules every stack's recipe keeps, whatever the stack.
fn common_rules(r: &Recipe, proxy_ports: &[u16]) {
    let relays = parse_relays(r.relays).unwrap();
    for relay in &relays {
        if relay.proxy != ProxyMode::None {
            assert!(
                proxy_ports.contains(&relay.home_port),
                "{}: {} relays with PROXY to {}, not one of the stack's PROXY ports {proxy_ports:?}",
                r.stack,
                relay.public_port,
                relay.home_port
            );
        } else {
            assert!(
                ![25, 465, 587].contains(&relay.public_port),
                "{}: SMTP port {} relayed without PROXY",
                r.stack,
                relay.public_port
            );
        }
    }
    assert_eq!(r.mail_server, "127.0.0.1");
    assert!(
        r.egress_from.iter().any(|n| n.contains('.')),
        "{}: an IPv4 egress source",
        r.stack
    );
    let t = r.trusted_proxy.as_ref().unwrap();
    for f in &r.files {
        assert!(!f.contents.contains("0.0.0.0"), "{}", f.path);
        for line in f
            .contents
            .lines()
            .filter(|l| l.starts_with("haproxy_trusted_networks"))
        {
            assert_eq!(line, format!("haproxy_trusted_networks = {}/32", t.address));
        }
    }
    let text = text(r);
    assert!(text.contains(&format!("CERES_RELAYS={}", r.relays)));
    assert!(text.contains(r.version));
    for c in &r.citations {
        assert_eq!(c.commit.len(), 40);
        assert!(text.contains(c.path));
    }
}

fn write_and_check_compose(r: &Recipe, dir: &Path, compose_path: &str, proxy_ports: &[u16]) {
    let c = parse_yaml(&dir.join(compose_path));
    let Some(c) = c else { return };
    let pubs = published(&c);
    let mut ports: Vec<u16> = pubs.iter().map(|p| p.2).collect();
    ports.sort_unstable();
    let mut want = proxy_ports.to_vec();
    want.sort_unstable();
    assert_eq!(
        ports, want,
        "{}: exactly the PROXY ports are published",
        r.stack
    );
    for (svc, addr, host, cont) in pubs {
        assert_eq!(addr, "127.0.0.1", "{svc} {host}: loopback only");
        assert_eq!(host, cont, "{svc}: the home port is the container's");
    }
}

/// A scratch copy of Debian's /etc/dovecot with `extra` as local.conf; doveconf must accept it.
fn doveconf_accepts(extra: &str, expect_ports: &[u16]) {
    if !have("doveconf") || !Path::new("/etc/dovecot/dovecot.conf").exists() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("dovecot");
    let st = Command::new("cp")
        .args(["-a", "/etc/dovecot"])
        .arg(&conf)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(conf.join("local.conf"), extra).unwrap();
    let out = Command::new("doveconf")
        .arg("-c")
        .arg(conf.join("dovecot.conf"))
        .arg("-n")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "doveconf: {stderr}");
    assert!(!stderr.contains("Warning"), "doveconf: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for p in expect_ports {
        assert!(
            stdout.contains(&format!("port = {p}")),
            "doveconf -n lacks port {p}"
        );
    }
}

#[test]
fn mailcow_recipe_matches_its_facts_and_the_rules() {
    let r = Stack::Mailcow.recipe();
    let proxy: Vec<u16> = mailcow::proxy_ports(Software::Postfix)
        .into_iter()
        .chain(mailcow::proxy_ports(Software::Dovecot))
        .collect();
    common_rules(&r, &proxy);
    egress_both_families(&r);
    // The default relays land on mailcow's own ports: no mapping.
    for relay in parse_relays(r.relays).unwrap() {
        if relay.proxy != ProxyMode::None {
            assert_eq!(
                Some(relay.home_port),
                ceres_relay::spec::proxy_home_port(relay.public_port)
            );
        }
    }
    assert_eq!(r.egress_from, ["172.22.1.0/24", "fd4d:6169:6c63:6f77::/64"]);
    let dir = tempfile::tempdir().unwrap();
    let paths = write(&r, dir.path(), false).unwrap();
    assert_eq!(paths.len(), 2);
    write_and_check_compose(&r, dir.path(), "docker-compose.override.yml", &proxy);
    let extra = std::fs::read_to_string(dir.path().join("data/conf/dovecot/extra.conf")).unwrap();
    doveconf_accepts(&extra, &[]);
    // A second write refuses, --force replaces.
    assert!(matches!(
        write(&r, dir.path(), false),
        Err(render::WriteError::Exists(_))
    ));
    write(&r, dir.path(), true).unwrap();
}

/// DMS's stock services from its target/postfix/master.cf (commit c9b015d),
/// the ones user-patches.sh copies.
const DMS_STOCK_MASTER: &str = "\
smtp           inet  n       -       n       -       1       postscreen
smtpd          pass  -       -       n       -       -       smtpd
submission     inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
submissions    inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
";

/// A scratch Postfix config: Debian's main.cf and master.cf without their
/// smtp/submission lines, plus DMS's stock services.
fn scratch_postfix() -> Option<tempfile::TempDir> {
    let main = Path::new("/usr/share/postfix/main.cf.debian");
    let master = Path::new("/usr/share/postfix/master.cf.dist");
    if !have("postconf") || !main.exists() || !master.exists() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(main, dir.path().join("main.cf")).unwrap();
    let master: String = std::fs::read_to_string(master)
        .unwrap()
        .lines()
        .filter(|l| {
            !l.starts_with("smtp ") && !l.starts_with("smtpd ") && !l.starts_with("submission")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.path().join("master.cf"), master + DMS_STOCK_MASTER).unwrap();
    Some(dir)
}

fn postconf(dir: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new("postconf")
        .arg("-c")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn docker_mailserver_recipe_matches_its_facts_and_the_rules() {
    let r = Stack::DockerMailserver.recipe();
    let proxy: Vec<u16> = dms::postfix_services()
        .iter()
        .map(|p| p.0)
        .chain(dms::dovecot_listeners().iter().map(|d| d.2))
        .collect();
    common_rules(&r, &proxy);
    egress_both_families(&r);
    // 10025 is DMS's Amavis: nothing of ours may use it.
    assert!(!proxy.contains(&10025));
    assert!(!r.relays.contains("10025"));
    let dir = tempfile::tempdir().unwrap();
    write(&r, dir.path(), false).unwrap();
    write_and_check_compose(&r, dir.path(), "compose.override.yaml", &proxy);
    if let Some(c) = parse_yaml(&dir.path().join("compose.override.yaml")) {
        let subnets: Vec<&str> = c["networks"]["default"]["ipam"]["config"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["subnet"].as_str().unwrap())
            .collect();
        assert_eq!(subnets, r.egress_from);
        assert_eq!(c["networks"]["default"]["enable_ipv6"], true);
    }
    let dovecot =
        std::fs::read_to_string(dir.path().join("docker-data/dms/config/dovecot.cf")).unwrap();
    let ports: Vec<u16> = dms::dovecot_listeners().iter().map(|d| d.2).collect();
    doveconf_accepts(&dovecot, &ports);

    let script = dir.path().join("docker-data/dms/config/user-patches.sh");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&script).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
    let Some(pf) = scratch_postfix() else { return };
    // The script edits /etc/postfix/master.cf by name: run it on a copy that names the scratch dir.
    let body = std::fs::read_to_string(&script).unwrap().replace(
        "/etc/postfix/master.cf",
        &pf.path().join("master.cf").display().to_string(),
    );
    let local = pf.path().join("user-patches.sh");
    std::fs::write(&local, body).unwrap();
    for run in 0..2 {
        let out = Command::new("bash")
            .arg(&local)
            .env("MAIL_CONFIG", pf.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "run {run}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (services, warn) = postconf(pf.path(), &["-M"]);
        assert!(!warn.contains("warning"), "run {run}: {warn}");
        let (_, warn) = postconf(pf.path(), &["-n"]);
        assert!(!warn.contains("warning"), "run {run}: {warn}");
        for (port, stock) in dms::postfix_services() {
            let lines: Vec<&str> = services
                .lines()
                .filter(|l| l.starts_with(&format!("{port} ")))
                .collect();
            assert_eq!(lines.len(), 1, "run {run}: {port} once: {services}");
            let l = lines[0];
            assert!(l.contains("_upstream_proxy_protocol=haproxy"), "{l}");
            assert!(
                l.contains("-o mynetworks= ") || l.ends_with("-o mynetworks="),
                "{l}"
            );
            // The copy keeps the stock service's own options.
            if stock != "smtp" {
                assert!(l.contains("smtpd_sasl_auth_enable=yes"), "{l}");
            } else {
                assert!(l.contains("postscreen"), "{l}");
            }
        }
        // The stock services are untouched: no PROXY on them.
        for l in services
            .lines()
            .filter(|l| l.starts_with("smtp ") || l.starts_with("submission"))
        {
            assert!(!l.contains("proxy_protocol"), "stock service changed: {l}");
        }
        let (main, _) = postconf(
            pf.path(),
            &[
                "-h",
                "postscreen_cache_map",
                "postscreen_upstream_proxy_protocol",
                "smtpd_upstream_proxy_protocol",
            ],
        );
        let main: Vec<&str> = main.lines().collect();
        assert_eq!(main[0], "proxy:btree:$data_directory/postscreen_cache");
        assert_eq!(main[1..], ["", ""], "no global PROXY setting");
    }
}

#[test]
fn mailu_recipe_matches_its_facts_and_the_rules() {
    let r = Stack::Mailu.recipe();
    let proxy: Vec<u16> = std::iter::once(mailu::smtp_port())
        .chain(mailu::dovecot_listeners().iter().map(|d| d.2))
        .collect();
    common_rules(&r, &proxy);
    // Mailu's default network is IPv4 only; the IPv6 case is a note naming SUBNET6.
    assert_eq!(r.egress_from, [mailu::SUBNET4]);
    assert!(r.notes.iter().any(|n| n.contains("SUBNET6")));
    // Every mail port Mailu's front publishes is relayed with PROXY, each to
    // a distinct port, none of them a webmail listener of Mailu's own.
    let relays = parse_relays(r.relays).unwrap();
    let mut public: Vec<u16> = relays.iter().map(|x| x.public_port).collect();
    public.sort_unstable();
    assert_eq!(public, [25, 110, 143, 465, 587, 993, 995, 4190]);
    for relay in &relays {
        assert_ne!(relay.proxy, ProxyMode::None);
        assert!(!mailu::WEBMAIL_PORTS.contains(&relay.home_port));
    }
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(write(&r, dir.path(), false).unwrap().len(), 3);
    write_and_check_compose(&r, dir.path(), "docker-compose.override.yml", &proxy);
    if let Some(c) = parse_yaml(&dir.path().join("docker-compose.override.yml")) {
        let services: Vec<&String> = c["services"].as_object().unwrap().keys().collect();
        assert_eq!(services, ["front"]);
    }
    let dovecot =
        std::fs::read_to_string(dir.path().join("overrides/nginx/dovecot/proxy.conf")).unwrap();
    let ports: Vec<u16> = mailu::dovecot_listeners().iter().map(|d| d.2).collect();
    doveconf_accepts(&dovecot, &ports);
    // mailu.env keys: PROXY on 25 only, headers from the gateway only, no header trust.
    let env = std::fs::read_to_string(dir.path().join("mailu.env.ceres")).unwrap();
    let keys: Vec<&str> = env.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        keys,
        [
            "PROXY_PROTOCOL=25".to_string(),
            format!("REAL_IP_FROM={}/32", mailu::gateway()),
            "REAL_IP_HEADER=".to_string(),
        ]
    );
    assert!(
        !dir.path().join("mailu.env").exists(),
        "never the user's mailu.env"
    );
    // 80 and 443 are not relayed (see the note).
    assert!(!public.contains(&80) && !public.contains(&443));
}

#[test]
fn mail_in_a_box_is_a_statement_not_a_recipe() {
    let r = Stack::MailInABox.recipe();
    assert!(r.relays.is_empty() && r.files.is_empty() && r.trusted_proxy.is_none());
    let t = text(&r);
    assert!(!t.contains("CERES_RELAYS="), "{t}");
    assert!(t.contains("Not supported behind CERES"));
    assert!(t.contains("open relay") && t.contains("on the VPS itself"));
    for c in &r.citations {
        assert_eq!(c.commit.len(), 40);
        assert!(t.contains(c.path));
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(write(&r, dir.path(), false).unwrap().is_empty());
    // The open-relay statement rests on Postfix's default mynetworks_style at
    // a compatibility level >= 2 (Mail-in-a-Box sets no mynetworks): check it.
    if !have("postconf") || !Path::new("/usr/share/postfix/main.cf.debian").exists() {
        return;
    }
    let pf = tempfile::tempdir().unwrap();
    std::fs::copy(
        "/usr/share/postfix/main.cf.debian",
        pf.path().join("main.cf"),
    )
    .unwrap();
    std::fs::write(pf.path().join("master.cf"), "").unwrap();
    let (out, _) = postconf(
        pf.path(),
        &["-x", "-h", "mynetworks_style", "compatibility_level"],
    );
    let out: Vec<&str> = out.lines().collect();
    assert_eq!(out[0], "host", "{out:?}");
    assert_ne!(out[1], "0");
}

#[test]
fn postfix_dovecot_points_at_the_targets() {
    let r = Stack::PostfixDovecot.recipe();
    assert!(r.files.is_empty());
    assert_eq!(r.relays, ceres_relay::DEFAULT_RELAYS);
    let t = text(&r);
    assert!(t.contains("mailserver-config postfix"));
    let dir = tempfile::tempdir().unwrap();
    assert!(write(&r, dir.path(), false).unwrap().is_empty());
}

/// Every recipe of a stack the home agent knows (`CERES_MAIL_STACK`) relays
/// exactly what the shared port table says, trusts the table's address,
/// and tells home which stack it is; the probe then checks the same ports
/// the recipe sets up.
#[test]
fn recipes_and_the_home_agents_port_table_agree() {
    for stack in Stack::ALL {
        let r = stack.recipe();
        match stack.name().parse::<MailStack>() {
            Ok(known) => {
                let f = known.facts();
                assert_eq!(r.relays, f.relays, "{}", r.stack);
                if let Some(t) = &r.trusted_proxy {
                    assert_eq!(t.address, f.trusted_from, "{}", r.stack);
                }
                assert!(
                    text(&r).contains(&format!("\nCERES_MAIL_STACK={}\n", known.name())),
                    "{}",
                    r.stack
                );
            }
            Err(_) => {
                assert!(
                    r.relays.is_empty(),
                    "{}: a recipe without a port table",
                    r.stack
                );
                assert!(!text(&r).contains("CERES_MAIL_STACK"), "{}", r.stack);
            }
        }
    }
}

/// docs/mail-servers.md holds each stack's Markdown between markers, exactly.
#[test]
fn docs_page_is_the_rendered_recipes() {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/mail-servers.md"
    ))
    .unwrap();
    for stack in [
        Stack::Mailcow,
        Stack::DockerMailserver,
        Stack::Mailu,
        Stack::MailInABox,
    ] {
        let begin = format!(
            "<!-- BEGIN generated: cerectl mailserver-config --stack {} --markdown -->\n",
            stack.name()
        );
        let end = format!("<!-- END generated: {} -->", stack.name());
        let start = page
            .find(&begin)
            .unwrap_or_else(|| panic!("docs lack {begin}"))
            + begin.len();
        let stop = start + page[start..].find(&end).unwrap();
        assert_eq!(
            &page[start..stop],
            markdown(&stack.recipe()),
            "docs/mail-servers.md's {} section drifted: regenerate it with `cerectl mailserver-config --stack {} --markdown`",
            stack.name(),
            stack.name()
        );
    }
}
