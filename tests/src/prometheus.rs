//! Scraping an agent's Prometheus page inside a lab namespace.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::Netns;

/// `GET /metrics` on 127.0.0.1:`port` inside `ns`: the whole response
/// (status line, headers, page); an error unless the status is 200.
pub fn scrape(ns: &Netns, port: u16) -> anyhow::Result<String> {
    let addr = format!("127.0.0.1:{port}").parse()?;
    let mut s = crate::postfix::smtp::connect(ns, addr, Duration::from_secs(5))
        .with_context(|| format!("metrics at {addr} in {}", ns.name))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    ensure!(out.starts_with("HTTP/1.1 200"), "metrics at {addr}: {out}");
    Ok(out)
}
