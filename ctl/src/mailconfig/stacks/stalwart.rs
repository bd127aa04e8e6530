//! Stalwart, read at commit d72608f (v0.16.18+6, 2026-08-21), with its
//! documentation (stalwartlabs/website) at commit cf33c5b (2026-08-08).
//!
//! **Where the settings live.** Since v0.16 there are no TOML files
//! (`UPGRADING/v0_16.md`, "No more TOML configuration files"): one small
//! `config.json` names the datastore, everything else — listeners included —
//! is a JMAP object in that datastore, changed in the WebUI or with
//! `stalwart-cli apply --file PLAN`, an NDJSON plan of `upsert` / `update`
//! operations (`src/content/docs/docs/management/cli/apply.md`; sets are
//! `{"member": true}` objects, lists `{"0": ...}`,
//! `src/content/docs/docs/configuration/object-encoding.md`). The recipe's
//! Stalwart part is such a plan.
//!
//! **PROXY.** A listener reads a PROXY header from a connection whose source
//! address is in its `overrideProxyTrustedNetworks`, or, when that is empty,
//! in `SystemSettings.proxyTrustedNetworks` (`crates/common/src/config/server/listener.rs`);
//! from other sources it takes the connection as it is
//! (`crates/common/src/network/listen.rs`). `proxyTrustedNetworks` is empty by
//! default (`crates/registry/src/schema/structs_impl.rs`, `impl Default for
//! SystemSettings`). So the plan adds **new** listeners (`ceres-*`) at the
//! PROXY ports, each trusting only the Docker gateway through its own
//! override, and leaves the global list — and with it every stock listener —
//! alone. An exact IPv4 entry also matches the IPv4-mapped form a dual-stack
//! `[::]` socket reports (`crates/registry/src/types/ipmask.rs`, `matches`).
//!
//! **Stock listeners** (`crates/common/src/manager/defaults.rs`, created when
//! there are none): smtp 25, submissions 465 (implicit TLS), imaps 993, pop3s
//! 995, sieve 4190, https 443, http 8080, all bound to `[::]`, `useTls` on.
//! No 587, 143 or 110 by default; the Docker page still publishes them, and
//! the PROXY listeners here include them so every default relay has a target.
//! A `NetworkListener` defaults to `useTls: true`, `tlsImplicit: false`
//! (`structs_impl.rs`, `impl Default for NetworkListener`); protocols are
//! `smtp`, `imap`, `pop3`, `manageSieve`, `http` (`enums_impl.rs`).
//!
//! **Port 25 is known by number.** Stalwart's default session rules tell
//! inbound MX from submission with `local_port == 25` / `!= 25`, and
//! `local_port` is the listener's own port (`listen.rs`, `build_session`):
//! `MtaStageAuth.require` (`local_port != 25`: authentication required
//! elsewhere) and `saslMechanisms`, the six `MtaStageData.add*Header`
//! expressions, `MtaStageEhlo.rejectNonFqdn`, and `SenderAuth`'s
//! `spfEhloVerify`, `spfFromVerify`, `dmarcVerify`, `reverseIpVerify`
//! (`structs_impl.rs`, the `Default` impls). A listener at 10025 would demand
//! AUTH from every sending server and skip SPF and DMARC, so the plan sets
//! those 13 expressions to the defaults with 10025 counted as 25. Relaying
//! is for authenticated senders only (`MtaStageRcpt.allowRelaying` =
//! `!is_empty(authenticated_as)`): no address is trusted.
//!
//! **Restart.** PROXY settings on listeners take effect on a restart, not a
//! reload (`src/content/docs/docs/migration/guide/configure-source/stalwart-old.md`).
//!
//! **HTTP.** `Http.useXForwarded` is off by default; on, it takes
//! `Forwarded` / `X-Forwarded-For` from any client (`crates/http/src/request.rs`).
//! With PROXY listeners it stays off.
//!
//! **Docker.** The image `stalwartlabs/stalwart` declares the volumes
//! `/etc/stalwart` and `/var/lib/stalwart`; the Docker page runs it with
//! `docker run --name stalwart` on named volumes `stalwart-etc` and
//! `stalwart-data`, publishing 443, 8080, 25, 587, 465, 143, 993, 110, 995,
//! 4190 (`src/content/docs/docs/install/platform/docker.md`, `Dockerfile`).
//! Stalwart ships no compose file, so the recipe's `compose.yaml` is that
//! command as a Compose file plus the PROXY ports on 127.0.0.1 and a fixed
//! network. **The subnet is CERES's choice** (172.16.44.0/24, fd00:44::/64),
//! not a Stalwart fact: nothing in Stalwart's sources names one.
//!
//! **Bans.** The auto-ban (`Security.*BanRate`, `BlockedIp`;
//! `src/content/docs/docs/server/auto-ban.md`) is checked in `build_session`
//! on the address the PROXY header gave (`listen.rs`), so it blocks relayed
//! clients by their real address inside Stalwart. Addresses in
//! `SystemSettings.proxyTrustedNetworks` are never banned
//! (`crates/common/src/network/security.rs`); the per-listener override used
//! here does not add the gateway there.

use ceres_relay::stack::{MailStack, Opening, Protocol, StackFacts};
use serde_json::{Map, Value, json};

use super::{Citation, DockerNet, Recipe, StackFile, TrustedProxy};

const REPO: &str = "stalwartlabs/stalwart";
const COMMIT: &str = "d72608f3e2d530c6560aaf2c7c290afd72671b82";
const DOCS: &str = "stalwartlabs/website";
const DOCS_COMMIT: &str = "cf33c5b97a39b252f5af597dd9f49eb8b972cea6";

/// Stalwart's PROXY listeners and relays: the table the home agent's stack
/// probe checks too.
fn facts() -> &'static StackFacts {
    MailStack::Stalwart.facts()
}

/// The PROXY listeners the plan adds, from the table:
/// (name, Stalwart protocol, port in the container, implicit TLS, public port).
pub fn listeners() -> Vec<(&'static str, &'static str, u16, bool, u16)> {
    facts()
        .listeners()
        .map(|l| {
            let (name, protocol) = match l.protocol {
                Protocol::Smtp => ("ceres-smtp", "smtp"),
                Protocol::Submissions => ("ceres-submissions", "smtp"),
                Protocol::Submission => ("ceres-submission", "smtp"),
                Protocol::Imaps => ("ceres-imaps", "imap"),
                Protocol::Imap => ("ceres-imap", "imap"),
                Protocol::Pop3s => ("ceres-pop3s", "pop3"),
                Protocol::Pop3 => ("ceres-pop3", "pop3"),
                Protocol::ManageSieve => ("ceres-sieve", "manageSieve"),
                Protocol::Https => ("ceres-https", "http"),
                Protocol::Http => ("ceres-http", "http"),
            };
            let implicit = l.protocol.opening() == Opening::ImplicitTls;
            (name, protocol, l.port, implicit, l.public_port)
        })
        .collect()
}

/// The port the SMTP PROXY listener has in place of 25 (10025).
pub fn mx_proxy_port() -> u16 {
    facts().listener(Protocol::Smtp).map_or(25, |l| l.port)
}

/// The ports the Docker page publishes (stock, left as they are).
pub const STOCK_PUBLISHED: [u16; 10] = [443, 8080, 25, 587, 465, 143, 993, 110, 995, 4190];

/// The network the compose file gives Stalwart (CERES's choice; see above),
/// from the same table.
pub const NET: DockerNet = DockerNet::default_of(MailStack::Stalwart);

/// An expression as Stalwart's default has it: (object, property, matches, else).
pub type DefaultExpr = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

/// Stalwart's default expressions that know port 25 by number, as read in
/// `crates/registry/src/schema/structs_impl.rs` at [`COMMIT`].
pub const PORT25_DEFAULTS: [DefaultExpr; 13] = [
    (
        "MtaStageAuth",
        "saslMechanisms",
        &[
            (
                "local_port != 25 && is_tls",
                "[plain, login, oauthbearer, xoauth2]",
            ),
            ("local_port != 25", "[oauthbearer, xoauth2]"),
        ],
        "false",
    ),
    ("MtaStageAuth", "require", &[], "local_port != 25"),
    (
        "MtaStageData",
        "addAuthResultsHeader",
        &[("local_port == 25", "true")],
        "false",
    ),
    (
        "MtaStageData",
        "addDateHeader",
        &[("local_port == 25", "true")],
        "false",
    ),
    (
        "MtaStageData",
        "addMessageIdHeader",
        &[("local_port == 25", "true")],
        "false",
    ),
    (
        "MtaStageData",
        "addReceivedHeader",
        &[("local_port == 25", "true")],
        "false",
    ),
    (
        "MtaStageData",
        "addReceivedSpfHeader",
        &[("local_port == 25", "true")],
        "false",
    ),
    (
        "MtaStageData",
        "addReturnPathHeader",
        &[("local_port == 25", "true")],
        "false",
    ),
    (
        "MtaStageEhlo",
        "rejectNonFqdn",
        &[("local_port == 25", "true")],
        "false",
    ),
    (
        "SenderAuth",
        "spfEhloVerify",
        &[("local_port == 25", "relaxed")],
        "disable",
    ),
    (
        "SenderAuth",
        "spfFromVerify",
        &[("local_port == 25", "relaxed")],
        "disable",
    ),
    (
        "SenderAuth",
        "dmarcVerify",
        &[("local_port == 25", "relaxed")],
        "disable",
    ),
    (
        "SenderAuth",
        "reverseIpVerify",
        &[("local_port == 25", "relaxed")],
        "disable",
    ),
];

/// `expr` with the PROXY listener's port counted as 25.
pub fn count_proxy_port_as_25(expr: &str) -> String {
    let p = mx_proxy_port();
    expr.replace(
        "local_port == 25",
        &format!("(local_port == 25 || local_port == {p})"),
    )
    .replace(
        "local_port != 25",
        &format!("local_port != 25 && local_port != {p}"),
    )
}

/// A Stalwart expression as a JMAP value (`match` is a list: `{"0": ...}`).
fn expression(matches: &[(&str, &str)], otherwise: &str) -> Value {
    let mut m = Map::new();
    if !matches.is_empty() {
        let list: Map<String, Value> = matches
            .iter()
            .enumerate()
            .map(|(i, (cond, then))| {
                (
                    i.to_string(),
                    json!({"if": count_proxy_port_as_25(cond), "then": then}),
                )
            })
            .collect();
        m.insert("match".into(), Value::Object(list));
    }
    m.insert("else".into(), json!(count_proxy_port_as_25(otherwise)));
    Value::Object(m)
}

/// The `stalwart-cli apply` plan: one JSON operation per line.
fn plan(net: DockerNet) -> String {
    let gateway = net.gateway().to_string();
    let listeners: Map<String, Value> = listeners()
        .into_iter()
        .map(|(name, protocol, port, implicit, _)| {
            (
                name.to_owned(),
                json!({
                    "name": name,
                    "protocol": protocol,
                    // Every address in the container: Docker's publishing cannot
                    // reach its loopback. Published on the host's 127.0.0.1 only.
                    "bind": {format!("[::]:{port}"): true},
                    "overrideProxyTrustedNetworks": {gateway.clone(): true},
                    // TLS (STARTTLS or implicit) on all but a plain HTTP listener.
                    "useTls": protocol != "http" || implicit,
                    "tlsImplicit": implicit,
                }),
            )
        })
        .collect();
    let mut lines = vec![json!({
        "@type": "upsert",
        "object": "NetworkListener",
        "matchOn": ["name"],
        "value": listeners,
    })];
    let mut objects: Vec<&str> = PORT25_DEFAULTS.iter().map(|d| d.0).collect();
    objects.dedup();
    for object in objects {
        let value: Map<String, Value> = PORT25_DEFAULTS
            .iter()
            .filter(|d| d.0 == object)
            .map(|(_, prop, matches, otherwise)| {
                ((*prop).to_owned(), expression(matches, otherwise))
            })
            .collect();
        lines.push(json!({"@type": "update", "object": object, "value": value}));
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn compose(net: DockerNet) -> String {
    let stock: String = STOCK_PUBLISHED
        .iter()
        .map(|p| format!("      - \"{p}:{p}\"\n"))
        .collect();
    let proxy: String = listeners()
        .iter()
        .map(|l| format!("      - \"127.0.0.1:{0}:{0}\"\n", l.2))
        .collect();
    let subnets: String = net
        .egress_from()
        .iter()
        .map(|s| format!("        - subnet: \"{s}\"\n"))
        .collect();
    format!(
        "# CERES: Stalwart's `docker run` from its Docker page as a Compose file, plus its\n\
         # PROXY listeners (ceres-stalwart.ndjson) published on the host's loopback only,\n\
         # where the home agent connects (CERES_MAIL_SERVER=127.0.0.1), and a network with\n\
         # fixed subnets: home's CERES_EGRESS_FROM and the listeners' trusted proxy (the\n\
         # gateway, {}) are then known. The volumes are the page's named volumes.\n\
         services:\n  stalwart:\n    image: stalwartlabs/stalwart:v0.16\n    container_name: stalwart\n\
         \x20   restart: unless-stopped\n    ports:\n{stock}\
         \x20     # CERES: the PROXY listeners, loopback only.\n{proxy}\
         \x20   volumes:\n      - stalwart-etc:/etc/stalwart\n      - stalwart-data:/var/lib/stalwart\n\
         \nvolumes:\n  stalwart-etc:\n    name: stalwart-etc\n  stalwart-data:\n    name: stalwart-data\n\
         \nnetworks:\n  default:\n    enable_ipv6: {}\n    ipam:\n      config:\n{subnets}",
        net.gateway(),
        net.subnet6.is_some(),
    )
}

/// The recipe for Stalwart on `net`.
pub fn recipe(net: DockerNet) -> Recipe {
    let cite = |path, fact| Citation {
        repo: REPO,
        path,
        commit: COMMIT,
        fact,
    };
    let doc = |path, fact| Citation {
        repo: DOCS,
        path,
        commit: DOCS_COMMIT,
        fact,
    };
    Recipe {
        stack: "stalwart",
        title: "Stalwart (v0.16, Docker)",
        version: "Stalwart v0.16.18+6 (commit d72608f, 2026-08-21; image stalwartlabs/stalwart:v0.16), docs at stalwartlabs/website cf33c5b (2026-08-08)",
        relays: facts().relays(),
        mail_server: "127.0.0.1",
        egress_from: net.egress_from(),
        trusted_proxy: Some(TrustedProxy {
            address: net.gateway().to_string(),
            source: super::DOCKER_GATEWAY,
            find_with: "docker network inspect $(docker inspect stalwart --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}') --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}'",
        }),
        files: vec![
            StackFile {
                path: "compose.yaml",
                purpose: "runs Stalwart as its Docker page does, with the PROXY listeners published on 127.0.0.1 only and a network with fixed subnets; it replaces the page's `docker run` container (see the notes); if you run Stalwart with Compose already, add the 127.0.0.1 ports and the network to yours",
                contents: compose(net),
                executable: false,
            },
            StackFile {
                path: "ceres-stalwart.ndjson",
                purpose: "the stalwart-cli apply plan: adds the ceres-* PROXY listeners (each trusting PROXY headers from the Docker gateway only) and counts 10025 as port 25 in Stalwart's 13 default rules that know 25 by number; re-applying it changes nothing more",
                contents: plan(net),
                executable: false,
            },
        ],
        restart: "docker compose up -d && stalwart-cli --url http://127.0.0.1:8080 --user ADMIN apply --file ceres-stalwart.ndjson && docker compose restart stalwart   # the password is asked for",
        notes: vec![
            "Stalwart v0.16 keeps its settings in its database, not in files: the plan is applied with stalwart-cli (a separate program, from github.com/stalwartlabs/cli) against the running server as an administrator, or entered by hand in the WebUI (Settings › Network › Listeners, and the MTA session stages). Listener PROXY settings take effect on the restart after it.",
            "Moving from the Docker page's `docker run`: `docker stop stalwart && docker rm stalwart` first (the data stays in the named volumes stalwart-etc and stalwart-data, which compose.yaml reuses), then the commands above.",
            "The stock listeners (smtp 25, submissions 465, imaps 993, pop3s 995, sieve 4190, https 443, http 8080) keep working for LAN clients: SystemSettings.proxyTrustedNetworks stays empty, and only the ceres-* listeners trust the gateway. Do not put the gateway there: every stock listener would then demand a header from connections that Docker's publishing makes from it.",
            "Stalwart's default rules know port 25 by number (local_port == 25: no AUTH required, SPF, DMARC and iprev checked, Received and Authentication-Results added). The plan sets those 13 rules to Stalwart's v0.16.18 defaults with 10025 counted as 25. If you changed any of them, do not apply those update lines: add `|| local_port == 10025` where your rule says local_port == 25, and `&& local_port != 10025` where it says local_port != 25.",
            "80 and 8080 are not relayed: Stalwart listens on no port 80 by default, and 8080 is its plain-HTTP administration listener. Certificates: Stalwart's ACME uses TLS-ALPN-01 on 443, which reaches it through the ceres-https listener, or DNS-01.",
            "Keep Http.useXForwarded off (Stalwart's default): on, Stalwart takes a client's address from any client's Forwarded or X-Forwarded-For header.",
            "Another network (a subnet of your own, or no IPv6): give --docker-subnet4 and --docker-subnet6 (or off), and compose.yaml, the plan's trusted gateway and CERES_EGRESS_FROM follow.",
            "Inside the container the ceres-* listeners bind every address (Docker's publishing cannot reach its loopback): other containers on the network reach them, but only connections from the gateway are read as PROXY; keep the network to Stalwart.",
        ],
        bans: "Stalwart's own auto-ban (Security: authBanRate, abuseBanRate, loiterBanRate, scanBanRate; bans stored as BlockedIp) is checked when a session starts, on the address the PROXY header gave: relayed clients are counted and blocked by their real address inside Stalwart, so its bans work for them. No Fail2Ban ships. Addresses in SystemSettings.proxyTrustedNetworks (like AllowedIp entries) are never banned; the recipe leaves that list empty, so not even the Docker gateway (the host's own address on the network) is exempt.",
        verified: "Facts read in stalwartlabs/stalwart at commit d72608f and its docs at stalwartlabs/website cf33c5b. Tested here (cargo nextest run -p cerectl stacks): compose.yaml parsed as YAML (the page's stock ports as they were, every PROXY port on 127.0.0.1 and no other address); the plan parsed line by line as JSON and checked against Stalwart's schema as read (object and property names, set and list encoding, protocols, the 13 rules each counting 10025 as 25 and nothing else changed). Stalwart itself is not run here: the plan has not been applied to a live server.",
        citations: vec![
            cite(
                "UPGRADING/v0_16.md",
                "no TOML configuration: config.json names the datastore, everything else is a JMAP object applied with stalwart-cli apply",
            ),
            cite(
                "crates/common/src/config/server/listener.rs",
                "proxy networks of a listener: overrideProxyTrustedNetworks, else SystemSettings.proxyTrustedNetworks",
            ),
            cite(
                "crates/common/src/network/listen.rs",
                "PROXY header read only from trusted sources; build_session: local_port = the listener's port, is_ip_blocked on the header's address",
            ),
            cite(
                "crates/common/src/manager/defaults.rs",
                "stock listeners smtp 25, submissions 465, imaps 993, pop3s 995, sieve 4190, https 443, http 8080 on [::], useTls",
            ),
            cite(
                "crates/registry/src/schema/structs.rs",
                "NetworkListener fields name, bind, protocol, overrideProxyTrustedNetworks, useTls, tlsImplicit; SystemSettings.proxyTrustedNetworks; Expression match/else, ExpressionMatch if/then",
            ),
            cite(
                "crates/registry/src/schema/structs_impl.rs",
                "defaults: NetworkListener useTls true, tlsImplicit false; proxyTrustedNetworks empty; the 13 local_port == 25 / != 25 expressions; allowRelaying = !is_empty(authenticated_as); useXForwarded false",
            ),
            cite(
                "crates/registry/src/schema/enums_impl.rs",
                "listener protocols smtp, lmtp, http, imap, pop3, manageSieve",
            ),
            cite(
                "crates/registry/src/types/ipmask.rs",
                "an exact IPv4 entry matches the IPv4-mapped address too",
            ),
            cite(
                "crates/common/src/network/security.rs",
                "SystemSettings.proxyTrustedNetworks are added to the allowed (never banned) addresses",
            ),
            cite(
                "crates/http/src/request.rs",
                "useXForwarded takes Forwarded / X-Forwarded-For from the request",
            ),
            cite(
                "Dockerfile",
                "image volumes /etc/stalwart and /var/lib/stalwart; EXPOSE 443 25 110 587 465 143 993 995 4190 8080",
            ),
            doc(
                "src/content/docs/docs/install/platform/docker.md",
                "docker run --name stalwart, volumes stalwart-etc and stalwart-data, published ports, tag v0.16",
            ),
            doc(
                "src/content/docs/docs/management/cli/apply.md",
                "NDJSON plan: upsert with matchOn, singleton update",
            ),
            doc(
                "src/content/docs/docs/management/cli/index.md",
                "--url, --user; the password is prompted for when absent on a terminal",
            ),
            doc(
                "src/content/docs/docs/configuration/object-encoding.md",
                "sets are {\"member\": true} objects, lists {\"0\": ...}",
            ),
            doc(
                "src/content/docs/docs/server/reverse-proxy/proxy-protocol.md",
                "proxyTrustedNetworks on SystemSettings, overrideProxyTrustedNetworks per NetworkListener replaces it",
            ),
            doc(
                "src/content/docs/docs/migration/guide/configure-source/stalwart-old.md",
                "PROXY settings on listeners take effect only on restart",
            ),
            doc(
                "src/content/docs/docs/server/auto-ban.md",
                "auto-ban rates on the Security singleton, bans as BlockedIp",
            ),
        ],
    }
}
