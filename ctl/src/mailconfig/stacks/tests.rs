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
    let relays = parse_relays(&r.relays).unwrap();
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
    if r.egress_from.is_empty() {
        // A stack on the host: its own SMTP client binds the tunnel address.
        assert!(
            r.files
                .iter()
                .any(|f| f.contents.contains("smtp_bind_address=")),
            "{}: no egress source and no outbound bind",
            r.stack
        );
    } else {
        assert!(
            r.egress_from.iter().any(|n| n.contains('.')),
            "{}: an IPv4 egress source",
            r.stack
        );
    }
    assert!(
        !r.bans.is_empty() && r.bans.contains("real"),
        "{}: a line on what bans see",
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
    for relay in parse_relays(&r.relays).unwrap() {
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

/// The postscreen PROXY service `postscreen` hands clients to `pass`, a
/// copy of the stock `smtpd pass` service with an empty mynetworks and no
/// PROXY setting of its own (postscreen read the header).
fn pass_service_trusts_no_one(services: &str, postscreen: &str, pass: &str) {
    let ps: Vec<&str> = services
        .lines()
        .filter(|l| l.starts_with(&format!("{postscreen} ")))
        .collect();
    assert_eq!(ps.len(), 1, "{services}");
    assert!(
        ps[0].contains(&format!("-o smtpd_service_name={pass}")),
        "{}",
        ps[0]
    );
    let lines: Vec<&str> = services
        .lines()
        .filter(|l| l.starts_with(&format!("{pass} ")))
        .collect();
    assert_eq!(lines.len(), 1, "{pass} once: {services}");
    let cols: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(cols[1], "pass");
    assert_eq!(cols[7], "smtpd");
    assert!(
        lines[0].contains("-o mynetworks= ") || lines[0].ends_with("-o mynetworks="),
        "{}",
        lines[0]
    );
    assert!(!lines[0].contains("proxy_protocol"), "{}", lines[0]);
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
        // 12525's postscreen hands clients to a pass service trusting no one.
        pass_service_trusts_no_one(&services, "12525", dms::PASS_SERVICE);
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
    assert_eq!(r.egress_from, [mailu::NET.subnet4.to_string()]);
    assert!(r.notes.iter().any(|n| n.contains("SUBNET6")));
    // Every mail port Mailu's front publishes is relayed with PROXY, each to
    // a distinct port, none of them a webmail listener of Mailu's own.
    let relays = parse_relays(&r.relays).unwrap();
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
            format!("REAL_IP_FROM={}/32", mailu::NET.gateway()),
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
                assert_eq!(r.relays, f.relays(), "{}", r.stack);
                if let Some(t) = &r.trusted_proxy {
                    assert_eq!(t.address, f.trusted_from().to_string(), "{}", r.stack);
                }
                assert!(
                    text(&r).contains(&format!("\nCERES_MAIL_STACK={}\n", known.name())),
                    "{}",
                    r.stack
                );
                // Every listener the probe checks is one the recipe's files
                // set up (or, on the host, the per-target commands do).
                if !r.files.is_empty() {
                    let files: String = r.files.iter().map(|x| x.contents.as_str()).collect();
                    for l in f.listeners() {
                        assert!(
                            files.contains(&l.port.to_string()),
                            "{}: {} not in the files",
                            r.stack,
                            l.port
                        );
                    }
                }
                // The default network is the table's; another one moves the
                // trusted gateway and the egress sources, never the ports.
                match known.network() {
                    Some(_) => {
                        let net = DockerNet::default_of(known);
                        assert_eq!(r.egress_from, net.egress_from(), "{}", r.stack);
                        let opts = Options {
                            subnet4: Some("10.9.8.0/24".parse().unwrap()),
                            subnet6: Some(Subnet6Arg::Off),
                            ..Options::default()
                        };
                        let moved = stack.recipe_for(&opts).unwrap();
                        assert_eq!(moved.relays, f.relays(), "{}", r.stack);
                        assert_eq!(
                            moved.trusted_proxy.unwrap().address,
                            "10.9.8.1",
                            "{}",
                            r.stack
                        );
                        assert_eq!(moved.egress_from, ["10.9.8.0/24"], "{}", r.stack);
                    }
                    None => assert!(r.egress_from.is_empty(), "{}", r.stack),
                }
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
    for stack in Stack::ALL
        .into_iter()
        .filter(|s| *s != Stack::PostfixDovecot)
    {
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

/// A tiny evaluator for the Stalwart expressions the recipe rewrites:
/// `local_port == N`, `local_port != N`, `is_tls`, `&&`, `||`, parentheses
/// (Stalwart's precedence: `&&` binds tighter than `||`).
fn eval_port_expr(expr: &str, port: u16, tls: bool) -> bool {
    fn tokens(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for c in s.chars() {
            if c == '(' || c == ')' {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_owned());
                }
                cur.clear();
                out.push(c.to_string());
            } else {
                cur.push(c);
            }
        }
        if !cur.trim().is_empty() {
            out.push(cur.trim().to_owned());
        }
        // Split the non-paren chunks on && and ||, keeping the operators.
        let mut split = Vec::new();
        for t in out {
            if t == "(" || t == ")" {
                split.push(t);
                continue;
            }
            let mut rest = t.as_str();
            loop {
                let and = rest.find("&&");
                let or = rest.find("||");
                let next = match (and, or) {
                    (Some(a), Some(o)) => Some(a.min(o)),
                    (a, o) => a.or(o),
                };
                let Some(i) = next else {
                    if !rest.trim().is_empty() {
                        split.push(rest.trim().to_owned());
                    }
                    break;
                };
                if !rest[..i].trim().is_empty() {
                    split.push(rest[..i].trim().to_owned());
                }
                split.push(rest[i..i + 2].to_owned());
                rest = &rest[i + 2..];
            }
        }
        split
    }
    fn atom(t: &str, port: u16, tls: bool) -> bool {
        if t == "is_tls" {
            return tls;
        }
        let (op, n) = if let Some(n) = t.strip_prefix("local_port == ") {
            ("==", n)
        } else if let Some(n) = t.strip_prefix("local_port != ") {
            ("!=", n)
        } else {
            panic!("unexpected atom {t:?}")
        };
        let n: u16 = n.parse().unwrap();
        (op == "==") == (port == n)
    }
    fn or(ts: &[String], i: &mut usize, port: u16, tls: bool) -> bool {
        let mut v = and(ts, i, port, tls);
        while *i < ts.len() && ts[*i] == "||" {
            *i += 1;
            v |= and(ts, i, port, tls);
        }
        v
    }
    fn and(ts: &[String], i: &mut usize, port: u16, tls: bool) -> bool {
        let mut v = primary(ts, i, port, tls);
        while *i < ts.len() && ts[*i] == "&&" {
            *i += 1;
            v &= primary(ts, i, port, tls);
        }
        v
    }
    fn primary(ts: &[String], i: &mut usize, port: u16, tls: bool) -> bool {
        if ts[*i] == "(" {
            *i += 1;
            let v = or(ts, i, port, tls);
            assert_eq!(ts[*i], ")");
            *i += 1;
            v
        } else {
            *i += 1;
            atom(&ts[*i - 1], port, tls)
        }
    }
    let ts = tokens(expr);
    let mut i = 0;
    let v = or(&ts, &mut i, port, tls);
    assert_eq!(i, ts.len(), "{expr}: trailing tokens");
    v
}

/// What an expression yields for a session: the first matching `then`, else `else`.
fn eval_stalwart(expr: &serde_json::Value, port: u16, tls: bool) -> String {
    if let Some(m) = expr.get("match") {
        let m = m.as_object().unwrap();
        for i in 0..m.len() {
            let e = &m[&i.to_string()];
            if eval_port_expr(e["if"].as_str().unwrap(), port, tls) {
                return e["then"].as_str().unwrap().to_owned();
            }
        }
    }
    let otherwise = expr["else"].as_str().unwrap();
    // `else` is a value, or a condition (MtaStageAuth.require).
    if otherwise.contains("local_port") {
        eval_port_expr(otherwise, port, tls).to_string()
    } else {
        otherwise.to_owned()
    }
}

#[test]
fn stalwart_rewritten_rules_treat_10025_as_25_and_nothing_else_changes() {
    for (object, prop, matches, otherwise) in stalwart::PORT25_DEFAULTS {
        let default = {
            let m: serde_json::Map<String, serde_json::Value> = matches
                .iter()
                .enumerate()
                .map(|(i, (c, t))| (i.to_string(), serde_json::json!({"if": c, "then": t})))
                .collect();
            serde_json::json!({"match": m, "else": otherwise})
        };
        let plan = stalwart_plan(&Stack::Stalwart.recipe());
        let ours = plan
            .iter()
            .find(|l| l["@type"] == "update" && l["object"] == object)
            .unwrap_or_else(|| panic!("no update of {object}"))["value"][prop]
            .clone();
        for tls in [false, true] {
            for port in [25u16, 465, 587, 10465, 10587, 2525] {
                assert_eq!(
                    eval_stalwart(&ours, port, tls),
                    eval_stalwart(&default, port, tls),
                    "{object}.{prop} at {port} (tls {tls}) changed"
                );
            }
            assert_eq!(
                eval_stalwart(&ours, stalwart::mx_proxy_port(), tls),
                eval_stalwart(&default, 25, tls),
                "{object}.{prop}: 10025 is not treated as 25"
            );
        }
    }
    // The evaluator itself tells the two ports apart.
    assert!(eval_port_expr("local_port != 25 && is_tls", 587, true));
    assert!(!eval_port_expr("local_port != 25 && is_tls", 25, true));
    assert!(eval_port_expr(
        "local_port == 2 || local_port == 3 && is_tls",
        2,
        false
    ));
    assert!(!eval_port_expr(
        "(local_port == 2 || local_port == 3) && is_tls",
        2,
        false
    ));
}

/// The recipe's stalwart-cli plan, one JSON value per line.
fn stalwart_plan(r: &Recipe) -> Vec<serde_json::Value> {
    let f = r
        .files
        .iter()
        .find(|f| f.path == "ceres-stalwart.ndjson")
        .unwrap();
    assert!(f.contents.ends_with('\n'));
    f.contents
        .lines()
        .map(|l| {
            assert!(!l.trim().is_empty(), "no blank lines");
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))
        })
        .collect()
}

/// NetworkListener's fields in Stalwart's schema (`crates/registry/src/schema/structs.rs`
/// at d72608f): the plan may use no others.
const STALWART_LISTENER_FIELDS: [&str; 19] = [
    "name",
    "bind",
    "protocol",
    "overrideProxyTrustedNetworks",
    "socketBacklog",
    "socketNoDelay",
    "socketReceiveBufferSize",
    "socketReuseAddress",
    "socketReusePort",
    "socketSendBufferSize",
    "socketTosV4",
    "socketTtl",
    "useTls",
    "tlsDisableCipherSuites",
    "tlsDisableProtocols",
    "tlsIgnoreClientOrder",
    "tlsImplicit",
    "tlsTimeout",
    "maxConnections",
];

fn check_stalwart_plan(r: &Recipe, gateway: &str) {
    let plan = stalwart_plan(r);
    // Listeners first (upsert by name: re-applying converges), then the rules.
    assert_eq!(plan[0]["@type"], "upsert");
    assert_eq!(plan[0]["object"], "NetworkListener");
    assert_eq!(plan[0]["matchOn"], serde_json::json!(["name"]));
    let listeners = plan[0]["value"].as_object().unwrap();
    assert_eq!(listeners.len(), stalwart::listeners().len());
    for (name, protocol, port, implicit, _) in stalwart::listeners() {
        let l = &listeners[name];
        for k in l.as_object().unwrap().keys() {
            assert!(
                STALWART_LISTENER_FIELDS.contains(&k.as_str()),
                "{name}: {k}"
            );
        }
        assert_eq!(l["name"], name);
        assert!(
            ["smtp", "imap", "pop3", "manageSieve", "http"]
                .contains(&l["protocol"].as_str().unwrap())
        );
        assert_eq!(l["protocol"], protocol);
        // Sets are {member: true} objects (Stalwart's object encoding).
        assert_eq!(l["bind"], serde_json::json!({format!("[::]:{port}"): true}));
        assert_eq!(
            l["overrideProxyTrustedNetworks"],
            serde_json::json!({gateway: true}),
            "{name}: PROXY from the gateway only"
        );
        assert_eq!(l["useTls"], true);
        assert_eq!(l["tlsImplicit"], implicit);
        assert!(
            !name.starts_with("smtp") && name.starts_with("ceres-"),
            "a new listener, never a stock one's name"
        );
    }
    let mut touched = Vec::new();
    for line in &plan[1..] {
        assert_eq!(line["@type"], "update", "{line}");
        assert!(line.get("id").is_none(), "singleton update");
        let object = line["object"].as_str().unwrap();
        for (prop, expr) in line["value"].as_object().unwrap() {
            touched.push((object.to_owned(), prop.clone()));
            // Lists are {"0": ...} objects.
            if let Some(m) = expr.get("match") {
                for (i, k) in m.as_object().unwrap().keys().enumerate() {
                    assert_eq!(k, &i.to_string());
                }
            }
        }
    }
    let mut want: Vec<(String, String)> = stalwart::PORT25_DEFAULTS
        .iter()
        .map(|d| (d.0.to_owned(), d.1.to_owned()))
        .collect();
    want.sort();
    touched.sort();
    assert_eq!(touched, want, "exactly the 13 rules that know 25 by number");
    // The global trusted list, and with it the stock listeners, is not touched.
    let text = &r.files[1].contents;
    assert!(!text.contains("SystemSettings") && !text.contains("proxyTrustedNetworks\""));
}

#[test]
fn stalwart_recipe_matches_its_facts_and_the_rules() {
    let r = Stack::Stalwart.recipe();
    let proxy: Vec<u16> = stalwart::listeners().iter().map(|l| l.2).collect();
    common_rules(&r, &proxy);
    egress_both_families(&r);
    // Every relay lands on 10000 + port with PROXY; 80 and 8080 are not relayed.
    let relays = parse_relays(&r.relays).unwrap();
    for relay in &relays {
        assert_ne!(relay.proxy, ProxyMode::None);
        assert_eq!(
            Some(relay.home_port),
            ceres_relay::spec::proxy_home_port(relay.public_port)
        );
    }
    let mut public: Vec<u16> = relays.iter().map(|x| x.public_port).collect();
    public.sort_unstable();
    let mut want: Vec<u16> = stalwart::listeners().iter().map(|l| l.4).collect();
    want.sort_unstable();
    assert_eq!(public, want);
    assert!(!public.contains(&80) && !public.contains(&8080));
    let gateway = r.trusted_proxy.as_ref().unwrap().address.clone();
    assert_eq!(gateway, "172.16.44.1");
    check_stalwart_plan(&r, &gateway);

    let dir = tempfile::tempdir().unwrap();
    assert_eq!(write(&r, dir.path(), false).unwrap().len(), 2);
    let Some(c) = parse_yaml(&dir.path().join("compose.yaml")) else {
        return;
    };
    let svc = &c["services"]["stalwart"];
    assert_eq!(svc["image"], "stalwartlabs/stalwart:v0.16");
    let mut stock = Vec::new();
    let mut loopback = Vec::new();
    for p in svc["ports"].as_array().unwrap() {
        let parts: Vec<&str> = p.as_str().unwrap().split(':').collect();
        match parts.as_slice() {
            [host, cont] => {
                assert_eq!(host, cont);
                stock.push(host.parse::<u16>().unwrap());
            }
            [addr, host, cont] => {
                assert_eq!(*addr, "127.0.0.1", "{p}: PROXY ports on loopback only");
                assert_eq!(host, cont);
                loopback.push(host.parse::<u16>().unwrap());
            }
            _ => panic!("{p}"),
        }
    }
    assert_eq!(
        stock,
        stalwart::STOCK_PUBLISHED,
        "the Docker page's ports, as they were"
    );
    assert_eq!(loopback, proxy, "exactly the PROXY listeners, on loopback");
    assert_eq!(
        svc["volumes"],
        serde_json::json!([
            "stalwart-etc:/etc/stalwart",
            "stalwart-data:/var/lib/stalwart"
        ])
    );
    assert_eq!(c["volumes"]["stalwart-etc"]["name"], "stalwart-etc");
    assert_eq!(c["volumes"]["stalwart-data"]["name"], "stalwart-data");
    let subnets: Vec<&str> = c["networks"]["default"]["ipam"]["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subnet"].as_str().unwrap())
        .collect();
    assert_eq!(subnets, r.egress_from);
    assert_eq!(c["networks"]["default"]["enable_ipv6"], true);
}

#[test]
fn stalwart_follows_a_network_of_the_users() {
    let opts = Options {
        subnet4: Some("10.9.0.0/16".parse().unwrap()),
        subnet6: Some(Subnet6Arg::Off),
        ..Options::default()
    };
    let r = Stack::Stalwart.recipe_for(&opts).unwrap();
    assert_eq!(r.egress_from, ["10.9.0.0/16"]);
    check_stalwart_plan(&r, "10.9.0.1");
    let dir = tempfile::tempdir().unwrap();
    write(&r, dir.path(), false).unwrap();
    if let Some(c) = parse_yaml(&dir.path().join("compose.yaml")) {
        assert_eq!(c["networks"]["default"]["enable_ipv6"], false);
        assert_eq!(
            c["networks"]["default"]["ipam"]["config"],
            serde_json::json!([{"subnet": "10.9.0.0/16"}])
        );
    }
}

/// iRedMail's services from its samples/postfix/master.cf (commit e0fe4fc)
/// with the values its conf/ files give the placeholders (SMTP_SERVER and
/// LOCAL_ADDRESS 127.0.0.1, AMAVISD_ORIGINATING_PORT 10026,
/// POSTFIX_MAIL_REINJECT_PORT 10025, AMAVISD_MYNETWORKS 127.0.0.0/8), chroot
/// `n` as postfix_config_basic leaves it; the re-injection service cut to
/// the lines that matter here.
const IREDMAIL_MASTER: &str = "\
submission inet n       -       n       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o content_filter=smtp-amavis:[127.0.0.1]:10026
465 inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o content_filter=smtp-amavis:[127.0.0.1]:10026
smtp-amavis unix -  -   n   -   4  smtp
    -o syslog_name=postfix/amavis
    -o smtp_data_done_timeout=1200
    -o smtp_send_xforward_command=yes
    -o smtp_dns_support_level=disabled
    -o max_use=20
127.0.0.1:10025 inet n  -   n   -   -  smtpd
    -o syslog_name=postfix/10025
    -o content_filter=
    -o mynetworks_style=host
    -o mynetworks=127.0.0.0/8
    -o smtpd_client_restrictions=permit_mynetworks,reject
    -o smtpd_recipient_restrictions=permit_mynetworks,reject
";

/// A scratch Postfix config laid out as iRedMail leaves Debian's: its
/// postscreen changes (postfix_config_postscreen) to master.cf.dist, its
/// services appended, chroot `n` everywhere, `mynetworks = 127.0.0.1`.
fn scratch_iredmail_postfix() -> Option<tempfile::TempDir> {
    let main = Path::new("/usr/share/postfix/main.cf.debian");
    let master = Path::new("/usr/share/postfix/master.cf.dist");
    if !have("postconf") || !main.exists() || !master.exists() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let main = std::fs::read_to_string(main).unwrap() + "mynetworks = 127.0.0.1\n";
    std::fs::write(dir.path().join("main.cf"), main).unwrap();
    let master: String = std::fs::read_to_string(master)
        .unwrap()
        .lines()
        .map(|l| {
            let uncomment = [
                "#smtp      inet",
                "#smtpd     pass",
                "#dnsblog",
                "#tlsproxy",
            ];
            if l.starts_with("smtp      inet") && l.ends_with("smtpd") {
                format!("#{l}\n")
            } else if uncomment.iter().any(|u| l.starts_with(u)) {
                format!("{}\n", &l[1..])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.path().join("master.cf"), master + IREDMAIL_MASTER).unwrap();
    postconf(dir.path(), &["-F", "*/*/chroot=n"]);
    let (services, _) = postconf(dir.path(), &["-M", "smtp/inet", "smtpd/pass"]);
    assert!(
        services.contains("postscreen") && services.contains("pass"),
        "{services}"
    );
    Some(dir)
}

fn run_script(script: &str, pf: &Path) {
    let f = pf.join("ceres-proxy.sh");
    std::fs::write(&f, script).unwrap();
    let out = Command::new("bash")
        .arg(&f)
        .env("MAIL_CONFIG", pf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("warning"), "{err}");
}

/// `postconf -M` lines starting with `name `.
fn service_lines<'a>(services: &'a str, name: &str) -> Vec<&'a str> {
    services
        .lines()
        .filter(|l| l.starts_with(&format!("{name} ")))
        .collect()
}

#[test]
fn iredmail_recipe_matches_its_facts_and_the_rules() {
    let r = Stack::Iredmail.recipe();
    let proxy: Vec<u16> = [12525u16, 10465, 10587]
        .into_iter()
        .chain(iredmail::dovecot_proxy().iter().map(|d| d.2))
        .chain([10080, 10443])
        .collect();
    common_rules(&r, &proxy);
    // 10025 is iRedMail's Amavis re-injection: nothing of ours may use it.
    assert!(!proxy.contains(&iredmail::AMAVIS_REINJECT));
    let relays = parse_relays(&r.relays).unwrap();
    assert!(
        relays
            .iter()
            .all(|x| x.home_port != iredmail::AMAVIS_REINJECT)
    );
    assert_eq!(relays[0].public_port, 25);
    assert_eq!(relays[0].home_port, 12525);
    // ManageSieve is loopback-only in iRedMail: not relayed.
    assert!(relays.iter().all(|x| x.public_port != 4190));
    assert!(
        r.egress_from.is_empty(),
        "Postfix on the host binds the tunnel"
    );
    assert_eq!(r.trusted_proxy.as_ref().unwrap().address, "127.0.0.1");

    let dir = tempfile::tempdir().unwrap();
    assert_eq!(write(&r, dir.path(), false).unwrap().len(), 3);
    let script_path = dir.path().join("etc/postfix/ceres-proxy.sh");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&script_path)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
    }
    let dovecot =
        std::fs::read_to_string(dir.path().join("etc/dovecot/iredmail/ceres-proxy.conf")).unwrap();
    // Every PROXY listener on loopback, under a new name.
    assert_eq!(
        dovecot.matches("address = 127.0.0.1").count(),
        iredmail::dovecot_proxy().len()
    );
    for stock in ["imap", "imaps", "pop3", "pop3s"] {
        assert!(!dovecot.contains(&format!("inet_listener {stock} ")));
    }
    let ports: Vec<u16> = iredmail::dovecot_proxy().iter().map(|d| d.2).collect();
    assert_eq!(ports, [10143, 10993, 10110, 10995]);
    doveconf_accepts(&dovecot, &ports);
    nginx_accepts(
        &std::fs::read_to_string(dir.path().join("etc/nginx/sites-enabled/ceres-proxy.conf"))
            .unwrap(),
    );

    let Some(pf) = scratch_iredmail_postfix() else {
        return;
    };
    let (stock_before, _) = postconf(pf.path(), &["-M"]);
    let (main_before, _) = postconf(pf.path(), &["-n"]);
    let script = std::fs::read_to_string(&script_path).unwrap();
    for run in 0..2 {
        run_script(&script, pf.path());
        let (services, warn) = postconf(pf.path(), &["-M"]);
        assert!(!warn.contains("warning"), "run {run}: {warn}");
        for (svc, stock) in iredmail::postfix_proxy() {
            let lines = service_lines(&services, &svc);
            assert_eq!(lines.len(), 1, "run {run}: {svc} once: {services}");
            let l = lines[0];
            assert!(
                l.contains("-o mynetworks= ") || l.ends_with("-o mynetworks="),
                "{l}"
            );
            let stock_line = service_lines(&stock_before, stock)[0];
            // Every option of the stock service is kept (the copy's own come after).
            for opt in stock_line.split(" -o ").skip(1) {
                let opt = opt.trim();
                if opt.starts_with("syslog_name=") {
                    continue;
                }
                assert!(l.contains(&format!("-o {opt}")), "{svc} lost -o {opt}: {l}");
            }
            if stock == "smtp" {
                assert!(l.contains(" postscreen "), "{l}");
                assert!(
                    l.contains("-o postscreen_upstream_proxy_protocol=haproxy"),
                    "{l}"
                );
                assert!(l.contains("_proxyprotocol"), "own postscreen cache: {l}");
            } else {
                assert!(
                    l.contains("-o smtpd_upstream_proxy_protocol=haproxy"),
                    "{l}"
                );
                assert!(
                    l.contains("-o content_filter=smtp-amavis:[127.0.0.1]:10026"),
                    "DKIM signing by Amavis kept: {l}"
                );
            }
        }
        pass_service_trusts_no_one(&services, "127.0.0.1:12525", iredmail::PASS_SERVICE);
        // The stock services are exactly as they were.
        for name in [
            "smtp",
            "smtpd",
            "submission",
            "465",
            "127.0.0.1:10025",
            "smtp-amavis",
        ] {
            let before = service_lines(&stock_before, name);
            let after = service_lines(&services, name);
            let (before, after): (Vec<_>, Vec<_>) = if name == "smtp" {
                // smtp/unix gets the outbound bind; smtp/inet stays.
                (
                    before
                        .into_iter()
                        .filter(|l| l.contains(" inet "))
                        .collect(),
                    after.into_iter().filter(|l| l.contains(" inet ")).collect(),
                )
            } else {
                (before, after)
            };
            assert_eq!(before, after, "run {run}: stock {name} changed");
        }
        // main.cf: nothing PROXY, mynetworks as iRedMail has it.
        let (main, _) = postconf(pf.path(), &["-n"]);
        assert_eq!(main, main_before, "run {run}: main.cf changed");
        // Outbound: the Internet-facing clients bind the tunnel, IPv4 only.
        for client in ["smtp", "relay"] {
            let l = service_lines(&services, client)
                .into_iter()
                .find(|l| l.contains(" unix "))
                .unwrap();
            assert!(l.contains("-o smtp_bind_address=10.77.77.2"), "{l}");
            assert!(l.contains("-o inet_protocols=ipv4"), "{l}");
        }
        let amavis = service_lines(&services, "smtp-amavis")[0];
        assert!(!amavis.contains("smtp_bind_address"), "{amavis}");
    }
    // With an IPv6 tunnel address the clients bind it and speak both families.
    let opts = Options {
        home_tunnel4: Some("10.77.77.6".parse().unwrap()),
        home_tunnel6: Some(Some("fd00:77::6".parse().unwrap())),
        ..Options::default()
    };
    let r6 = Stack::Iredmail.recipe_for(&opts).unwrap();
    run_script(&r6.files[0].contents, pf.path());
    let (services, _) = postconf(pf.path(), &["-M"]);
    for client in ["smtp", "relay"] {
        let l = service_lines(&services, client)
            .into_iter()
            .find(|l| l.contains(" unix "))
            .unwrap();
        assert!(l.contains("-o smtp_bind_address=10.77.77.6"), "{l}");
        assert!(l.contains("-o smtp_bind_address6=fd00:77::6"), "{l}");
        assert!(!l.contains("inet_protocols"), "{l}");
    }
    for (svc, _) in iredmail::postfix_proxy() {
        assert_eq!(service_lines(&services, &svc).len(), 1);
    }
}

/// `site` in a scratch nginx with stand-ins for iRedMail's templates (ssl.tmpl
/// with a throwaway certificate); `nginx -t` must accept it.
fn nginx_accepts(site: &str) {
    if !have("nginx") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let tmpl = d.join("templates");
    std::fs::create_dir_all(&tmpl).unwrap();
    std::fs::create_dir_all(d.join("sites")).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["mail.example.test".to_owned()]).unwrap();
    std::fs::write(d.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(d.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    for t in iredmail::NGINX_TEMPLATES {
        let body = if t == "ssl" {
            format!(
                "ssl_certificate {};\nssl_certificate_key {};\n",
                d.join("cert.pem").display(),
                d.join("key.pem").display()
            )
        } else {
            String::new()
        };
        std::fs::write(tmpl.join(format!("{t}.tmpl")), body).unwrap();
    }
    let site = site.replace("/etc/nginx/templates/", &format!("{}/", tmpl.display()));
    assert!(!site.contains("/etc/nginx"), "every include rewritten");
    std::fs::write(d.join("sites/ceres-proxy.conf"), site).unwrap();
    let conf = d.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "pid {0}/nginx.pid;\nerror_log {0}/error.log;\nevents {{}}\nhttp {{\n  include {0}/sites/*.conf;\n}}\n",
            d.display()
        ),
    )
    .unwrap();
    let out = Command::new("nginx")
        .arg("-t")
        .arg("-p")
        .arg(d)
        .arg("-e")
        .arg(d.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn options_fit_the_stack_or_say_why() {
    let sub4 = |s: &str| Options {
        subnet4: Some(s.parse().unwrap()),
        ..Options::default()
    };
    // mailcow's network is IPV4_NETWORK.0/24.
    let e = Stack::Mailcow
        .recipe_for(&sub4("172.30.0.0/16"))
        .unwrap_err();
    assert!(matches!(e, OptionsError::MailcowPrefix(_)), "{e}");
    assert!(e.to_string().contains("/24"), "{e}");
    // Docker flags for host stacks, tunnel flags for Docker stacks.
    for stack in [Stack::Iredmail, Stack::PostfixDovecot, Stack::MailInABox] {
        let e = stack.recipe_for(&sub4("172.30.1.0/24")).unwrap_err();
        assert!(matches!(e, OptionsError::NotDocker { .. }), "{e}");
        assert!(e.to_string().contains("--docker-subnet4"), "{e}");
    }
    let tunnel = Options {
        home_tunnel4: Some("10.77.77.2".parse().unwrap()),
        ..Options::default()
    };
    for stack in [
        Stack::Mailcow,
        Stack::DockerMailserver,
        Stack::Mailu,
        Stack::Stalwart,
        Stack::PostfixDovecot,
    ] {
        let e = stack.recipe_for(&tunnel).unwrap_err();
        assert!(matches!(e, OptionsError::NotHost { .. }), "{stack:?}: {e}");
    }
    // No options: the default recipe, for every stack.
    for stack in Stack::ALL {
        assert_eq!(
            stack.recipe_for(&Options::default()).unwrap(),
            stack.recipe()
        );
    }
}

#[test]
fn docker_stacks_follow_a_network_of_the_users() {
    let opts = Options {
        subnet4: Some("172.30.7.0/24".parse().unwrap()),
        subnet6: Some(Subnet6Arg::On("fd00:7::/64".parse().unwrap())),
        ..Options::default()
    };
    for stack in [
        Stack::Mailcow,
        Stack::DockerMailserver,
        Stack::Mailu,
        Stack::Stalwart,
    ] {
        let r = stack.recipe_for(&opts).unwrap();
        assert_eq!(r.egress_from, ["172.30.7.0/24", "fd00:7::/64"], "{stack:?}");
        assert_eq!(r.trusted_proxy.as_ref().unwrap().address, "172.30.7.1");
        let all: String = r.files.iter().map(|f| f.contents.as_str()).collect();
        let default = stack.recipe().trusted_proxy.unwrap().address;
        assert!(
            !all.contains(&default),
            "{stack:?}: the default gateway {default} left"
        );
        for f in &r.files {
            for line in f
                .contents
                .lines()
                .filter(|l| l.starts_with("haproxy_trusted_networks"))
            {
                assert_eq!(line, "haproxy_trusted_networks = 172.30.7.1/32");
            }
        }
        if stack == Stack::Mailu {
            assert!(all.contains("REAL_IP_FROM=172.30.7.1/32"));
        }
        let dir = tempfile::tempdir().unwrap();
        write(&r, dir.path(), false).unwrap();
        if stack == Stack::DockerMailserver {
            if let Some(c) = parse_yaml(&dir.path().join("compose.override.yaml")) {
                assert_eq!(
                    c["networks"]["default"]["ipam"]["config"],
                    serde_json::json!([{"subnet": "172.30.7.0/24"}, {"subnet": "fd00:7::/64"}])
                );
            }
        }
    }
    // mailcow without IPv6 (ENABLE_IPV6=false).
    let off = Options {
        subnet6: Some(Subnet6Arg::Off),
        ..Options::default()
    };
    assert_eq!(
        Stack::Mailcow.recipe_for(&off).unwrap().egress_from,
        ["172.22.1.0/24"]
    );
}

#[test]
fn iredmail_script_refuses_a_postfix_without_iredmails_services() {
    let main = Path::new("/usr/share/postfix/main.cf.debian");
    let master = Path::new("/usr/share/postfix/master.cf.dist");
    if !have("postconf") || !main.exists() || !master.exists() {
        return;
    }
    // Debian's stock layout: plain smtpd on 25, no postscreen, no 465.
    let pf = tempfile::tempdir().unwrap();
    std::fs::copy(main, pf.path().join("main.cf")).unwrap();
    std::fs::copy(master, pf.path().join("master.cf")).unwrap();
    let before = std::fs::read_to_string(pf.path().join("master.cf")).unwrap();
    let r = Stack::Iredmail.recipe();
    let f = pf.path().join("ceres-proxy.sh");
    std::fs::write(&f, &r.files[0].contents).unwrap();
    let out = Command::new("bash")
        .arg(&f)
        .env("MAIL_CONFIG", pf.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has 0 smtpd/pass services, not one") && err.contains("iRedMail's layout"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(pf.path().join("master.cf")).unwrap(),
        before,
        "nothing changed"
    );
    // iRedMail's layout with a second smtp/inet entry (Postfix uses the last
    // one): which to copy is not clear, so nothing is copied.
    let Some(irm) = scratch_iredmail_postfix() else {
        return;
    };
    let master = irm.path().join("master.cf");
    let doubled = std::fs::read_to_string(&master).unwrap()
        + "smtp      inet  n       -       n       -       -       smtpd\n";
    std::fs::write(&master, &doubled).unwrap();
    let f = irm.path().join("ceres-proxy.sh");
    std::fs::write(&f, &r.files[0].contents).unwrap();
    let out = Command::new("bash")
        .arg(&f)
        .env("MAIL_CONFIG", irm.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has 2 smtp/inet services, not one"), "{err}");
    assert_eq!(std::fs::read_to_string(&master).unwrap(), doubled);
}
