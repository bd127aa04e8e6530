//! A stand-alone driver for the library, for demos and timing until `cerectl dns` wires
//! it in:
//!
//! ```text
//! cargo run -p ceres-dnscheck --example dnscheck -- DOMAIN IP [IP...] [--selector S]
//!     [--format text|zone|json] [--check] [--resolver IP[:PORT]] [--dnsbl ZONE,ZONE]
//!     [--repeat N]
//! ```
//!
//! `--repeat N` runs the check N times with a fresh resolver each time and prints
//! min/median/max wall time to stderr. Exit code 1 when a check fails.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ceres_dnscheck::{Checklist, HickoryLookup, MailIdentity, dnsbl_check, verify};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let domain = args
        .next()
        .context("usage: dnscheck DOMAIN IP [IP...] [options]")?;
    let mut builder = MailIdentity::builder(&domain);
    let (mut format, mut check, mut resolver, mut dnsbl, mut repeat) =
        ("text".to_owned(), false, None, Vec::new(), 1usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--selector" => builder = builder.dkim_selector(&args.next().context("--selector S")?),
            "--mail-host" => builder = builder.mail_host(&args.next().context("--mail-host H")?),
            "--format" => format = args.next().context("--format F")?,
            "--check" => check = true,
            "--resolver" => resolver = Some(args.next().context("--resolver IP[:PORT]")?),
            "--dnsbl" => {
                dnsbl = args
                    .next()
                    .context("--dnsbl ZONES")?
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            }
            "--repeat" => repeat = args.next().context("--repeat N")?.parse()?,
            ip => {
                builder = builder.address(
                    ip.parse::<IpAddr>()
                        .with_context(|| format!("not an IP: {ip}"))?,
                )
            }
        }
    }
    let id = builder.build()?;
    if !check && dnsbl.is_empty() {
        let list = Checklist::for_identity(&id);
        match format.as_str() {
            "text" => print!("{}", list.render_text()),
            "zone" => print!("{}", list.render_zone()),
            "json" => println!("{}", list.render_json()),
            other => bail!("unknown format {other}"),
        }
        return Ok(());
    }
    let new_lookup = || match &resolver {
        Some(r) => HickoryLookup::with_server(r),
        None => HickoryLookup::from_system(),
    };
    let mut ok = true;
    if check {
        let mut times = Vec::new();
        let mut report = None;
        for _ in 0..repeat.max(1) {
            let lookup = new_lookup()?;
            let start = Instant::now();
            report = Some(verify(&id, &lookup).await);
            times.push(start.elapsed());
        }
        let report = report.context("no run")?;
        match format.as_str() {
            "json" => println!("{}", report.render_json()),
            _ => print!("{}", report.render_text(false)),
        }
        ok &= report.is_ok();
        if repeat > 1 {
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            eprintln!(
                "verify x{}: min {:.2} ms, median {:.2} ms, max {:.2} ms ({} checks)",
                times.len(),
                ms(times[0]),
                ms(times[times.len() / 2]),
                ms(times[times.len() - 1]),
                report.checks.len()
            );
        }
    }
    if !dnsbl.is_empty() {
        let lookup = new_lookup()?;
        for ip in id.addresses() {
            let results = dnsbl_check(ip, &dnsbl, &lookup).await;
            print!("{}", ceres_dnscheck::render_dnsbl_text(&results));
            ok &= results
                .iter()
                .all(|r| r.to_check().status != ceres_dnscheck::Status::Fail);
        }
    }
    std::process::exit(if ok { 0 } else { 1 });
}
