//! DMARC record parsing (RFC 7489 section 6.3/6.4), strict enough to catch what makes
//! receivers ignore a record: `v=DMARC1` not first, a missing or invalid `p=`.

use serde::Serialize;

/// The requested handling of failing mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcPolicy {
    /// Monitor only.
    None,
    /// Treat as suspicious (spam folder).
    Quarantine,
    /// Reject.
    Reject,
}

impl std::fmt::Display for DmarcPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Quarantine => "quarantine",
            Self::Reject => "reject",
        })
    }
}

/// A parsed DMARC record (the tags a mail admin cares about).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DmarcRecord {
    /// `p=`.
    pub policy: DmarcPolicy,
    /// `sp=`, for subdomains.
    pub subdomain_policy: Option<DmarcPolicy>,
    /// `pct=` (default 100).
    pub pct: u8,
    /// `rua=` aggregate report URIs.
    pub rua: Vec<String>,
    /// `ruf=` failure report URIs.
    pub ruf: Vec<String>,
}

/// Why a DMARC record does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmarcError {
    /// The first tag is not `v=DMARC1`.
    #[error("the record must start with \"v=DMARC1\"")]
    NotFirstVersion,
    /// `p=` is missing.
    #[error("the required policy tag p= is missing")]
    MissingPolicy,
    /// A tag has an invalid value.
    #[error("invalid value {value:?} for {tag}= ({expected})")]
    BadValue {
        /// The tag name.
        tag: String,
        /// The value found.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// A piece that is not `tag=value`.
    #[error("{0:?} is not a tag=value pair")]
    Malformed(String),
    /// A tag given twice.
    #[error("tag {0}= appears more than once")]
    Duplicate(String),
}

/// True for a TXT string that claims to be DMARC, even a malformed one (`v=DMARC1`
/// not first), so it is reported as broken rather than as absent.
pub(crate) fn looks_like_dmarc(txt: &str) -> bool {
    let compact: String = txt
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    compact.starts_with("v=dmarc") || compact.contains(";v=dmarc")
}

impl DmarcRecord {
    /// Parses one DMARC TXT record.
    pub fn parse(text: &str) -> Result<Self, DmarcError> {
        let mut pairs = Vec::new();
        for piece in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (tag, value) = piece
                .split_once('=')
                .ok_or_else(|| DmarcError::Malformed(piece.to_owned()))?;
            let tag = tag.trim().to_ascii_lowercase();
            if pairs.iter().any(|(t, _): &(String, String)| *t == tag) {
                return Err(DmarcError::Duplicate(tag));
            }
            pairs.push((tag, value.trim().to_owned()));
        }
        match pairs.first() {
            Some((t, v)) if t == "v" && v == "DMARC1" => {}
            _ => return Err(DmarcError::NotFirstVersion),
        }
        let bad = |tag: &str, value: &str, expected| DmarcError::BadValue {
            tag: tag.to_owned(),
            value: value.to_owned(),
            expected,
        };
        let policy_of = |tag: &str, v: &str| match v.to_ascii_lowercase().as_str() {
            "none" => Ok(DmarcPolicy::None),
            "quarantine" => Ok(DmarcPolicy::Quarantine),
            "reject" => Ok(DmarcPolicy::Reject),
            _ => Err(bad(tag, v, "none, quarantine or reject")),
        };
        let mut rec = DmarcRecord {
            policy: DmarcPolicy::None,
            subdomain_policy: None,
            pct: 100,
            rua: Vec::new(),
            ruf: Vec::new(),
        };
        let mut have_policy = false;
        for (tag, value) in &pairs[1..] {
            match tag.as_str() {
                "p" => {
                    rec.policy = policy_of("p", value)?;
                    have_policy = true;
                }
                "sp" => rec.subdomain_policy = Some(policy_of("sp", value)?),
                "pct" => {
                    rec.pct = value
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= 100)
                        .ok_or_else(|| bad("pct", value, "a number 0-100"))?;
                }
                "adkim" | "aspf" if !matches!(value.as_str(), "r" | "s") => {
                    return Err(bad(tag, value, "r or s"));
                }
                "rua" | "ruf" => {
                    let uris: Vec<String> = value.split(',').map(|u| u.trim().to_owned()).collect();
                    if uris
                        .iter()
                        .any(|u| !u.to_ascii_lowercase().starts_with("mailto:") || u.len() <= 7)
                    {
                        return Err(bad(tag, value, "comma-separated mailto: addresses"));
                    }
                    if tag == "rua" {
                        rec.rua = uris;
                    } else {
                        rec.ruf = uris;
                    }
                }
                "fo" if value
                    .split(':')
                    .any(|o| !matches!(o.trim(), "0" | "1" | "d" | "s")) =>
                {
                    return Err(bad("fo", value, "0, 1, d, s separated by ':'"));
                }
                "rf" | "ri" => {}
                "v" => return Err(DmarcError::Duplicate("v".into())),
                // Unknown tags are ignored (RFC 7489 6.3).
                _ => {}
            }
        }
        if !have_policy {
            return Err(DmarcError::MissingPolicy);
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recommended_record() {
        let r = DmarcRecord::parse("v=DMARC1; p=none; rua=mailto:dmarc@example.com; fo=1").unwrap();
        assert_eq!(r.policy, DmarcPolicy::None);
        assert_eq!(r.rua, vec!["mailto:dmarc@example.com".to_string()]);
        assert_eq!(r.pct, 100);
        let r = DmarcRecord::parse("v=DMARC1;p=reject;sp=quarantine;pct=50;adkim=s").unwrap();
        assert_eq!(r.policy, DmarcPolicy::Reject);
        assert_eq!(r.subdomain_policy, Some(DmarcPolicy::Quarantine));
        assert_eq!(r.pct, 50);
    }

    #[test]
    fn rejects_malformed_records() {
        assert_eq!(
            DmarcRecord::parse("p=none; v=DMARC1"),
            Err(DmarcError::NotFirstVersion)
        );
        assert_eq!(
            DmarcRecord::parse("v=DMARC1; rua=mailto:d@example.com"),
            Err(DmarcError::MissingPolicy)
        );
        assert!(matches!(
            DmarcRecord::parse("v=DMARC1; p=maybe"),
            Err(DmarcError::BadValue { tag, .. }) if tag == "p"
        ));
        assert!(matches!(
            DmarcRecord::parse("v=DMARC1; p=none; pct=150"),
            Err(DmarcError::BadValue { tag, .. }) if tag == "pct"
        ));
        assert!(matches!(
            DmarcRecord::parse("v=DMARC1; p=none; rua=dmarc@example.com"),
            Err(DmarcError::BadValue { tag, .. }) if tag == "rua"
        ));
        assert!(matches!(
            DmarcRecord::parse("v=DMARC1; p=none; garbage"),
            Err(DmarcError::Malformed(_))
        ));
        assert!(matches!(
            DmarcRecord::parse("v=DMARC1; p=none; p=reject"),
            Err(DmarcError::Duplicate(_))
        ));
        assert!(looks_like_dmarc("v=DMARC1; p=maybe"));
        assert!(looks_like_dmarc("p=none; v = DMARC1"));
        assert!(!looks_like_dmarc("v=spf1 -all"));
    }
}
