//! Packaging: the systemd units verify cleanly, and `packaging/build-deb`
//! builds the three Debian packages with the right contents and modes, which
//! install into (and purge from) a scratch root.
//!
//! Uses the debug binaries next to this test (`ceres_tests::bin`); build them
//! first with `cargo build -p ceres-vps -p ceres-home -p cerectl`.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use ceres_tests::{bin, require_root, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs `cmd` and returns stdout; fails with stdout and stderr on a non-zero exit.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = run(cmd)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

/// Copies the unit into `dir` with ExecStart pointing at the built binary
/// (verify insists that the executable exists), optionally with `extra`
/// appended to the [Service] section.
fn unit_copy(dir: &Path, agent: &str, extra: &str) -> anyhow::Result<PathBuf> {
    let src = repo().join(format!("deploy/systemd/{agent}.service"));
    let text = std::fs::read_to_string(&src).with_context(|| src.display().to_string())?;
    let exec = format!("ExecStart=/usr/bin/{agent} run");
    ensure!(text.contains(&exec), "{} lacks {exec:?}", src.display());
    let mut text = text.replace(&exec, &format!("ExecStart={} run", bin(agent).display()));
    if !extra.is_empty() {
        text = text.replace("[Service]\n", &format!("[Service]\n{extra}\n"));
    }
    let path = dir.join(format!("{agent}.service"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `systemd-analyze verify` output lines that are about `unit`.
fn verify_complaints(unit: &Path) -> anyhow::Result<Vec<String>> {
    // --man=no: the man pages ship in the packages (checked below), not on
    // the build machine, and Documentation=man:... would fail without them.
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit))
    .context("systemd-analyze (package systemd) is needed")?;
    let name = unit.file_name().expect("file name").to_string_lossy();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.contains(name.as_ref()) || l.contains(&*unit.to_string_lossy()))
        .map(str::to_owned)
        .collect();
    if !out.status.success() && lines.is_empty() {
        lines.push(format!("exit {}: {text}", out.status));
    }
    Ok(lines)
}

#[test]
fn systemd_units_verify_without_warnings() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for agent in ["ceres-vps", "ceres-home"] {
        let unit = unit_copy(dir.path(), agent, "")?;
        let complaints = verify_complaints(&unit)?;
        ensure!(
            complaints.is_empty(),
            "{agent}.service:\n{}",
            complaints.join("\n")
        );
    }
    // The check above must be able to fail: a misspelt directive is reported.
    let broken_dir = dir.path().join("broken");
    std::fs::create_dir(&broken_dir)?;
    let broken = unit_copy(&broken_dir, "ceres-vps", "ProtectSystm=strict")?;
    ensure!(
        !verify_complaints(&broken)?.is_empty(),
        "systemd-analyze verify did not report a misspelt directive: the check is blind"
    );
    Ok(())
}

#[test]
fn units_grant_only_the_needed_capabilities() -> anyhow::Result<()> {
    // The VPS relays ports below 1024; home's forwarders take ports the
    // kernel picks, so home needs no CAP_NET_BIND_SERVICE; it needs
    // CAP_NET_RAW for the uplink probe's raw ICMP socket.
    for (agent, caps) in [
        ("ceres-vps", "CAP_NET_ADMIN CAP_NET_BIND_SERVICE"),
        ("ceres-home", "CAP_NET_ADMIN CAP_NET_RAW"),
    ] {
        let path = repo().join(format!("deploy/systemd/{agent}.service"));
        let text = std::fs::read_to_string(&path)?;
        let directives: BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .collect();
        let ambient = format!("AmbientCapabilities={caps}");
        let bounding = format!("CapabilityBoundingSet={caps}");
        for want in [
            "Type=notify",
            "EnvironmentFile=-/etc/ceres/ceres.env",
            "User=ceres",
            ambient.as_str(),
            bounding.as_str(),
            "StateDirectory=ceres",
            "StateDirectoryMode=0700",
            "RuntimeDirectory=wireguard",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "DeviceAllow=/dev/net/tun rw",
            "RestartPreventExitStatus=78",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        ] {
            ensure!(directives.contains(want), "{agent}.service lacks {want:?}");
        }
    }
    Ok(())
}

/// `mode owner path` of each entry of `dpkg-deb -c`, path without "./".
fn contents(deb: &Path) -> anyhow::Result<Vec<(String, String, String)>> {
    let text = output(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6).then(|| {
                (
                    f[0].to_owned(),
                    f[1].to_owned(),
                    f[5].trim_start_matches("./").to_owned(),
                )
            })
        })
        .collect())
}

/// The `[CERES_*]` keys that `BIN run --help` documents.
fn help_keys(agent: &str) -> anyhow::Result<BTreeSet<String>> {
    let help = output(Command::new(bin(agent)).args(["run", "--help"]))?;
    let keys: BTreeSet<String> = help
        .split('[')
        .skip(1)
        .filter_map(|s| s.split_once(']').map(|(k, _)| k.to_owned()))
        .filter(|k| k.starts_with("CERES_"))
        .collect();
    ensure!(keys.len() > 5, "{agent} run --help names only {keys:?}");
    Ok(keys)
}

fn mode_of(path: &Path) -> anyhow::Result<(u32, u32)> {
    let m = std::fs::metadata(path).with_context(|| path.display().to_string())?;
    Ok((m.permissions().mode() & 0o7777, m.uid()))
}

/// A scratch root with just enough of /etc and dpkg's database to install into.
fn scratch_root(root: &Path) -> anyhow::Result<()> {
    for d in [
        "etc",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "usr/sbin",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for (file, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/gshadow", "root:*::\n"),
        ("var/lib/dpkg/status", ""),
        ("var/lib/dpkg/available", ""),
    ] {
        std::fs::write(root.join(file), text)?;
    }
    std::fs::set_permissions(root.join("etc/shadow"), PermissionsExt::from_mode(0o640))?;
    std::fs::set_permissions(root.join("etc/gshadow"), PermissionsExt::from_mode(0o640))?;
    Ok(())
}

fn dpkg(root: &Path, args: &[&str], debs: &[&PathBuf]) -> anyhow::Result<String> {
    let mut cmd = Command::new("dpkg");
    // chrootless: the scratch root has no shell to chroot into; the
    // maintainer scripts honour DPKG_ROOT instead. force-depends: the root
    // has no iproute2/nftables, which is not what is tested here.
    cmd.arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-not-root",
            "--force-depends",
            "--log=/dev/null",
        ])
        .args(args)
        .args(debs);
    output(&mut cmd)
}

#[test]
fn debian_packages_build_install_and_purge() -> anyhow::Result<()> {
    if !require_root("debian_packages_build_install_and_purge") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("out");
    let bin_dir = bin("cerectl").parent().expect("bin dir").to_path_buf();
    let built = output(
        Command::new("bash")
            .arg(repo().join("packaging/build-deb"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--out")
            .arg(&out)
            // Uncompressed: xz on ~150 MB debug binaries takes minutes.
            .args(["--version", "0.1.0~test", "--compress", "none"]),
    )?;
    let debs: Vec<PathBuf> = built.lines().map(PathBuf::from).collect();
    let deb = |name: &str| -> anyhow::Result<&PathBuf> {
        debs.iter()
            .find(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}_")))
            })
            .with_context(|| format!("no {name} package in {debs:?}"))
    };
    let (vps, home, ctl) = (deb("ceres-vps")?, deb("ceres-home")?, deb("cerectl")?);

    // Contents and modes, as packed.
    for (pkg, name, agent) in [
        (vps, "ceres-vps", true),
        (home, "ceres-home", true),
        (ctl, "cerectl", false),
    ] {
        let entries = contents(pkg)?;
        let find = |path: &str| entries.iter().find(|(_, _, p)| p == path);
        let mut want = vec![
            (format!("usr/bin/{name}"), "-rwxr-xr-x"),
            (format!("usr/share/man/man1/{name}.1.gz"), "-rw-r--r--"),
            (
                format!("usr/share/bash-completion/completions/{name}"),
                "-rw-r--r--",
            ),
            (
                format!("usr/share/zsh/vendor-completions/_{name}"),
                "-rw-r--r--",
            ),
            (
                format!("usr/share/fish/vendor_completions.d/{name}.fish"),
                "-rw-r--r--",
            ),
            (format!("usr/share/doc/{name}/copyright"), "-rw-r--r--"),
        ];
        if agent {
            want.push((format!("lib/systemd/system/{name}.service"), "-rw-r--r--"));
            want.push((format!("etc/ceres/{name}.env.example"), "-rw-r--r--"));
        }
        for (path, mode) in &want {
            let (m, owner, _) = find(path).with_context(|| format!("{name}: no {path}"))?;
            ensure!(
                m == mode && owner == "root/root",
                "{name}: {path} is {m} {owner}"
            );
        }
        for (m, owner, p) in &entries {
            ensure!(owner == "root/root", "{name}: {p} owned by {owner}");
            // Nothing group- or world-writable, nothing setuid.
            ensure!(
                ["-rw-r--r--", "-rwxr-xr-x", "drwxr-xr-x"].contains(&m.as_str()),
                "{name}: {p} is {m}"
            );
        }
    }
    ensure!(
        contents(ctl)?
            .iter()
            .all(|(_, _, p)| !p.starts_with("lib/systemd")),
        "cerectl ships a unit"
    );

    // Control data.
    let field = |deb: &Path, f: &str| output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(f));
    let vps_deps = field(vps, "Depends")?;
    ensure!(
        vps_deps.contains("iproute2") && vps_deps.contains("nftables"),
        "ceres-vps Depends: {vps_deps}"
    );
    // Home installs nft rules too (the tunnel's input filter, egress from
    // Docker mail networks): without nftables it fails at its first start.
    let home_deps = field(home, "Depends")?;
    ensure!(
        home_deps.contains("iproute2") && home_deps.contains("nftables"),
        "ceres-home Depends: {home_deps}"
    );
    // `wg show ceres0`, as the docs use it, needs wireguard-tools.
    for deb in [vps, home] {
        let recommends = field(deb, "Recommends")?;
        ensure!(
            recommends.contains("wireguard-tools"),
            "{}: Recommends: {recommends}",
            deb.display()
        );
    }
    let info = output(Command::new("dpkg-deb").arg("-I").arg(vps).arg("conffiles"))?;
    ensure!(
        info.trim() == "/etc/ceres/ceres-vps.env.example",
        "conffiles: {info}"
    );
    let info = output(Command::new("dpkg-deb").arg("-I").arg(vps))?;
    for script in ["postinst", "postrm", "prerm"] {
        ensure!(info.contains(script), "ceres-vps has no {script}:\n{info}");
    }

    // Install into a scratch root.
    let root = tmp.path().join("root");
    scratch_root(&root)?;
    dpkg(&root, &["-i"], &[vps, home, ctl])?;
    let status = dpkg(&root, &["-s", "ceres-vps"], &[])?;
    ensure!(status.contains("Status: install ok installed"), "{status}");

    for (path, mode) in [
        ("usr/bin/ceres-vps", 0o755),
        ("usr/bin/ceres-home", 0o755),
        ("usr/bin/cerectl", 0o755),
        ("lib/systemd/system/ceres-vps.service", 0o644),
        ("lib/systemd/system/ceres-home.service", 0o644),
        ("etc/ceres", 0o755),
        ("etc/ceres/ceres-vps.env.example", 0o644),
    ] {
        let (m, uid) = mode_of(&root.join(path))?;
        ensure!((m, uid) == (mode, 0), "{path}: mode {m:o} uid {uid}");
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
    let user = passwd
        .lines()
        .find(|l| l.starts_with("ceres:"))
        .context("postinst created no ceres user")?;
    let f: Vec<&str> = user.split(':').collect();
    ensure!(
        f[5] == "/var/lib/ceres" && f[6] == "/usr/sbin/nologin",
        "ceres user: {user}"
    );
    let ceres_uid: u32 = f[2].parse()?;
    ensure!(
        ceres_uid != 0 && ceres_uid < 1000,
        "ceres is not a system user: {user}"
    );
    let group = std::fs::read_to_string(root.join("etc/group"))?;
    ensure!(
        group.lines().any(|l| l.starts_with("ceres:")),
        "no ceres group"
    );
    let (m, uid) = mode_of(&root.join("var/lib/ceres"))?;
    ensure!(
        (m, uid) == (0o700, ceres_uid),
        "/var/lib/ceres: mode {m:o} uid {uid}"
    );

    // The example config names every key `run --help` documents.
    for agent in ["ceres-vps", "ceres-home"] {
        let example = std::fs::read_to_string(root.join(format!("etc/ceres/{agent}.env.example")))?;
        for key in help_keys(agent)? {
            ensure!(
                example.lines().any(|l| l == format!("#{key}=")),
                "{agent}.env.example lacks {key}"
            );
        }
    }

    // Purge: the state survives while the other agent is installed, and goes
    // with the last one; a second install (upgrade path) keeps the user.
    std::fs::write(
        root.join("etc/ceres/ceres.env"),
        "CERES_DOMAIN=example.com\n",
    )?;
    std::fs::write(root.join("var/lib/ceres/ca.pem"), "state")?;
    dpkg(&root, &["--purge", "ceres-home"], &[])?;
    ensure!(
        root.join("var/lib/ceres/ca.pem").exists(),
        "purging home removed the VPS state"
    );
    ensure!(!root.join("usr/bin/ceres-home").exists());
    dpkg(&root, &["-i"], &[vps])?;
    let again = std::fs::read_to_string(root.join("etc/passwd"))?;
    ensure!(
        again.matches("\nceres:").count() == 1,
        "user duplicated:\n{again}"
    );
    dpkg(&root, &["--purge", "ceres-vps"], &[])?;
    if root.join("var/lib/ceres").exists() || root.join("etc/ceres/ceres.env").exists() {
        bail!("purge left the state or config behind");
    }
    ensure!(
        !root.join("etc/ceres/ceres-vps.env.example").exists(),
        "conffile left after purge"
    );
    Ok(())
}

/// The packages are labelled with this machine's architecture and
/// build-deb runs the binaries: binaries for another CPU (an arm64 build
/// copied to an amd64 workstation) are refused by name, before anything is
/// built, rather than packed into a `.deb` that says amd64. `--help` says
/// how to build for arm64.
#[test]
fn build_deb_refuses_binaries_of_another_architecture() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // Tiny stand-ins: this machine's ELF header, one of them relabelled
    // (e_machine, offset 18) for the other common architecture.
    let host = output(Command::new("dpkg").arg("--print-architecture"))?;
    let (other, machine): (&str, u16) = if host.trim() == "arm64" {
        ("amd64", 62)
    } else {
        ("arm64", 183)
    };
    for name in ["ceres-vps", "ceres-home", "cerectl"] {
        let path = tmp.path().join(name);
        std::fs::copy("/bin/true", &path)?;
        if name == "ceres-home" {
            let mut bytes = std::fs::read(&path)?;
            bytes[18..20].copy_from_slice(&machine.to_le_bytes());
            std::fs::write(&path, bytes)?;
        }
    }
    let out = run(Command::new("bash")
        .arg(repo().join("packaging/build-deb"))
        .arg("--bin-dir")
        .arg(tmp.path())
        .arg("--out")
        .arg(tmp.path().join("out")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "build-deb accepted {other} binaries");
    ensure!(
        stderr.contains("ceres-home is built for")
            && stderr.contains(other)
            && stderr.contains(host.trim()),
        "{stderr}"
    );
    ensure!(
        !tmp.path().join("out").exists()
            || std::fs::read_dir(tmp.path().join("out"))?.next().is_none(),
        "a package was written"
    );
    let help = output(
        Command::new("bash")
            .arg(repo().join("packaging/build-deb"))
            .arg("--help"),
    )?;
    ensure!(
        help.contains("arm64") && help.contains("aarch64-unknown-linux-gnu"),
        "{help}"
    );
    Ok(())
}
