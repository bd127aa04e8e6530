//! [`Lookup`] over real DNS with hickory-resolver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

use super::{Lookup, LookupError, MxRecord, canonical, reverse_name};

/// Per-query timeout: a check run asks dozens of questions, and a mail admin waiting
/// at a prompt should hear about a dead resolver within seconds, not minutes.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per query (hickory retries over the configured servers, and falls back
/// to TCP on truncation by itself).
const QUERY_ATTEMPTS: usize = 2;

/// Why a resolver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// `--resolver` was not `IP` or `IP:PORT` (`[v6]:PORT` for IPv6 with a port).
    #[error(
        "invalid resolver address {0:?}: expected IP or IP:PORT (e.g. 192.0.2.53, 192.0.2.53:5353, [2001:db8::53]:53)"
    )]
    InvalidServer(String),
    /// The system configuration (/etc/resolv.conf) could not be read.
    #[error("cannot read the system DNS configuration: {0}")]
    SystemConfig(String),
    /// hickory refused the configuration.
    #[error("cannot build the DNS resolver: {0}")]
    Build(String),
}

/// Real DNS through hickory-resolver. Build a fresh one per check run: it caches
/// answers for its own lifetime only, so a run sees the DNS as it is now.
#[derive(Debug, Clone)]
pub struct HickoryLookup {
    resolver: TokioResolver,
}

impl HickoryLookup {
    /// Uses the system's resolvers (/etc/resolv.conf), with short timeouts.
    pub fn from_system() -> Result<Self, ResolverError> {
        let builder = TokioResolver::builder_tokio()
            .map_err(|e| ResolverError::SystemConfig(e.to_string()))?;
        Self::finish(builder)
    }

    /// Uses one given server, as `IP` (port 53) or `IP:PORT`; for `cerectl --resolver`.
    pub fn with_server(spec: &str) -> Result<Self, ResolverError> {
        Self::with_server_addr(parse_server(spec)?)
    }

    /// Uses one given server address (UDP with TCP fallback).
    pub fn with_server_addr(addr: SocketAddr) -> Result<Self, ResolverError> {
        let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
        for conn in &mut ns.connections {
            conn.port = addr.port();
        }
        let config = ResolverConfig::from_name_servers(vec![ns]);
        let builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        Self::finish(builder)
    }

    fn finish(
        mut builder: hickory_resolver::ResolverBuilder<TokioRuntimeProvider>,
    ) -> Result<Self, ResolverError> {
        let opts = builder.options_mut();
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = QUERY_ATTEMPTS;
        // /etc/hosts would answer A/AAAA for names the world cannot see.
        opts.use_hosts_file = ResolveHosts::Never;
        opts.try_tcp_on_error = true;
        let resolver = builder
            .build()
            .map_err(|e| ResolverError::Build(e.to_string()))?;
        Ok(Self { resolver })
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, LookupError> {
        let name = canonical(name);
        let tname = rtype_name(rtype);
        // The trailing dot makes the name absolute: no search domains are tried.
        let fqdn = format!("{name}.");
        let result = self.resolver.lookup(fqdn.as_str(), rtype).await;
        tracing::debug!(%name, rtype = tname, ok = result.is_ok(), "dns query");
        match result {
            Ok(lookup) => {
                let data: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                if data.is_empty() {
                    Err(LookupError::NoData { name, rtype: tname })
                } else {
                    Ok(data)
                }
            }
            Err(e) => Err(map_error(name, tname, e)),
        }
    }
}

fn rtype_name(rtype: RecordType) -> &'static str {
    match rtype {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::MX => "MX",
        RecordType::TXT => "TXT",
        RecordType::PTR => "PTR",
        _ => "other",
    }
}

fn map_error(name: String, rtype: &'static str, e: NetError) -> LookupError {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => {
            if nr.response_code == ResponseCode::NXDomain {
                LookupError::NxDomain { name }
            } else {
                LookupError::NoData { name, rtype }
            }
        }
        NetError::Dns(DnsError::ResponseCode(code)) => LookupError::ServerFailure {
            name,
            rtype,
            rcode: rcode_name(code),
        },
        NetError::Timeout => LookupError::Timeout { name, rtype },
        other => LookupError::Other {
            name,
            rtype,
            reason: other.to_string(),
        },
    }
}

/// The mnemonic admins know from dig (hickory's Display says "Query Refused").
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        other => other.to_string(),
    }
}

/// Parses `IP`, `IP:PORT` or `[IPv6]:PORT`.
fn parse_server(spec: &str) -> Result<SocketAddr, ResolverError> {
    let spec = spec.trim();
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    if let Some(inner) = spec.strip_prefix('[').and_then(|s| s.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<Ipv6Addr>()
    {
        return Ok(SocketAddr::new(IpAddr::V6(ip), 53));
    }
    Err(ResolverError::InvalidServer(spec.to_owned()))
}

impl Lookup for HickoryLookup {
    async fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, LookupError> {
        Ok(self
            .query(name, RecordType::A)
            .await?
            .into_iter()
            .filter_map(|d| match d {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    async fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, LookupError> {
        Ok(self
            .query(name, RecordType::AAAA)
            .await?
            .into_iter()
            .filter_map(|d| match d {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    async fn mx(&self, name: &str) -> Result<Vec<MxRecord>, LookupError> {
        Ok(self
            .query(name, RecordType::MX)
            .await?
            .into_iter()
            .filter_map(|d| match d {
                RData::MX(mx) => Some(MxRecord {
                    preference: mx.preference,
                    exchange: canonical(&mx.exchange.to_ascii()),
                }),
                _ => None,
            })
            .collect())
    }

    async fn txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        Ok(self
            .query(name, RecordType::TXT)
            .await?
            .into_iter()
            .filter_map(|d| match d {
                RData::TXT(txt) => {
                    let bytes: Vec<u8> = txt
                        .txt_data
                        .iter()
                        .flat_map(|s| s.iter().copied())
                        .collect();
                    Some(String::from_utf8_lossy(&bytes).into_owned())
                }
                _ => None,
            })
            .collect())
    }

    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, LookupError> {
        Ok(self
            .query(&reverse_name(ip), RecordType::PTR)
            .await?
            .into_iter()
            .filter_map(|d| match d {
                RData::PTR(p) => Some(canonical(&p.0.to_ascii())),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_specs() {
        assert_eq!(
            parse_server("192.0.2.53").unwrap(),
            "192.0.2.53:53".parse().unwrap()
        );
        assert_eq!(
            parse_server("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_server("2001:db8::53").unwrap(),
            "[2001:db8::53]:53".parse().unwrap()
        );
        assert_eq!(
            parse_server("[2001:db8::53]:5353").unwrap(),
            "[2001:db8::53]:5353".parse().unwrap()
        );
        assert_eq!(
            parse_server("[2001:db8::53]").unwrap(),
            "[2001:db8::53]:53".parse().unwrap()
        );
        assert!(matches!(
            parse_server("dns.example"),
            Err(ResolverError::InvalidServer(_))
        ));
    }
}
