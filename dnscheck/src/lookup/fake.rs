//! An in-memory DNS for tests: records, NXDOMAIN vs no-data, and injected failures.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use super::{Lookup, LookupError, MxRecord, canonical, reverse_name};

#[derive(Debug, Clone)]
enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx(MxRecord),
    Txt(String),
    Ptr(String),
}

impl Data {
    fn rtype(&self) -> &'static str {
        match self {
            Self::A(_) => "A",
            Self::Aaaa(_) => "AAAA",
            Self::Mx(_) => "MX",
            Self::Txt(_) => "TXT",
            Self::Ptr(_) => "PTR",
        }
    }
}

/// Which failure to inject for a (name, type) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Timeout,
    ServFail,
}

/// A fake zone in memory. A name that has any record (or has records below it) exists;
/// asking it for a type it lacks gives [`LookupError::NoData`], asking an unknown name
/// gives [`LookupError::NxDomain`]. Every query is logged for assertions on lookup counts.
#[derive(Debug, Default)]
pub struct FakeLookup {
    records: HashMap<String, Vec<Data>>,
    failures: HashMap<(String, &'static str), Failure>,
    log: Mutex<Vec<String>>,
}

impl FakeLookup {
    /// An empty DNS: everything is NXDOMAIN.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(mut self, name: &str, data: Data) -> Self {
        self.records.entry(canonical(name)).or_default().push(data);
        self
    }

    /// Adds an A record.
    pub fn with_a(self, name: &str, ip: Ipv4Addr) -> Self {
        self.with(name, Data::A(ip))
    }

    /// Adds an AAAA record.
    pub fn with_aaaa(self, name: &str, ip: Ipv6Addr) -> Self {
        self.with(name, Data::Aaaa(ip))
    }

    /// Adds an MX record.
    pub fn with_mx(self, name: &str, preference: u16, exchange: &str) -> Self {
        let mx = MxRecord {
            preference,
            exchange: canonical(exchange),
        };
        self.with(name, Data::Mx(mx))
    }

    /// Adds a TXT record (already concatenated).
    pub fn with_txt(self, name: &str, text: &str) -> Self {
        self.with(name, Data::Txt(text.to_owned()))
    }

    /// Adds a PTR record for `ip` in its reverse zone.
    pub fn with_ptr(self, ip: IpAddr, target: &str) -> Self {
        self.with(&reverse_name(ip), Data::Ptr(canonical(target)))
    }

    /// Makes queries of `rtype` at `name` time out.
    pub fn with_timeout(mut self, name: &str, rtype: &'static str) -> Self {
        self.failures
            .insert((canonical(name), rtype), Failure::Timeout);
        self
    }

    /// Makes queries of `rtype` at `name` answer SERVFAIL.
    pub fn with_servfail(mut self, name: &str, rtype: &'static str) -> Self {
        self.failures
            .insert((canonical(name), rtype), Failure::ServFail);
        self
    }

    /// Every query so far as `"TYPE name"`, in order.
    pub fn queries(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn answer(&self, name: &str, rtype: &'static str) -> Result<Vec<Data>, LookupError> {
        let name = canonical(name);
        if let Ok(mut log) = self.log.lock() {
            log.push(format!("{rtype} {name}"));
        }
        match self.failures.get(&(name.clone(), rtype)) {
            Some(Failure::Timeout) => return Err(LookupError::Timeout { name, rtype }),
            Some(Failure::ServFail) => {
                return Err(LookupError::ServerFailure {
                    name,
                    rtype,
                    rcode: "SERVFAIL".into(),
                });
            }
            None => {}
        }
        let suffix = format!(".{name}");
        let exists =
            self.records.contains_key(&name) || self.records.keys().any(|k| k.ends_with(&suffix));
        if !exists {
            return Err(LookupError::NxDomain { name });
        }
        let found: Vec<Data> = self
            .records
            .get(&name)
            .map(|v| v.iter().filter(|d| d.rtype() == rtype).cloned().collect())
            .unwrap_or_default();
        if found.is_empty() {
            return Err(LookupError::NoData { name, rtype });
        }
        Ok(found)
    }
}

impl Lookup for FakeLookup {
    async fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, LookupError> {
        Ok(self
            .answer(name, "A")?
            .into_iter()
            .filter_map(|d| match d {
                Data::A(ip) => Some(ip),
                _ => None,
            })
            .collect())
    }

    async fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, LookupError> {
        Ok(self
            .answer(name, "AAAA")?
            .into_iter()
            .filter_map(|d| match d {
                Data::Aaaa(ip) => Some(ip),
                _ => None,
            })
            .collect())
    }

    async fn mx(&self, name: &str) -> Result<Vec<MxRecord>, LookupError> {
        Ok(self
            .answer(name, "MX")?
            .into_iter()
            .filter_map(|d| match d {
                Data::Mx(mx) => Some(mx),
                _ => None,
            })
            .collect())
    }

    async fn txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        Ok(self
            .answer(name, "TXT")?
            .into_iter()
            .filter_map(|d| match d {
                Data::Txt(t) => Some(t),
                _ => None,
            })
            .collect())
    }

    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, LookupError> {
        Ok(self
            .answer(&reverse_name(ip), "PTR")?
            .into_iter()
            .filter_map(|d| match d {
                Data::Ptr(p) => Some(p),
                _ => None,
            })
            .collect())
    }
}
