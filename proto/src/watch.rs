//! What a watchdog check's kind means to a status, for every surface that
//! judges one (`cerectl status`, `ceres-vps status`): one rule, so both say
//! the same thing is broken.

use crate::CheckKind;

impl CheckKind {
    /// Whether a failure of this check is a problem of its own in a status:
    /// nothing else there judges what it watches (certificates, blocklists,
    /// DNS). Home, relays, egress, home's firewall and rotation are judged
    /// by `cerectl status` from their own facts, which make their own
    /// problems; counting the check too would say the same thing twice.
    pub fn has_own_verdict(self) -> bool {
        match self {
            CheckKind::Certificates
            | CheckKind::Dnsbl
            | CheckKind::Ptr
            | CheckKind::Spf
            | CheckKind::Mx => true,
            CheckKind::Home
            | CheckKind::Relays
            | CheckKind::Egress
            | CheckKind::HomeFirewall
            | CheckKind::Rotation
            | CheckKind::Unspecified => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checks_of_facts_have_their_own_verdict_and_the_live_ones_not() {
        let own: Vec<CheckKind> = (0..=10)
            .filter_map(|v| CheckKind::try_from(v).ok())
            .filter(|k| k.has_own_verdict())
            .collect();
        assert_eq!(
            own,
            [
                CheckKind::Certificates,
                CheckKind::Dnsbl,
                CheckKind::Ptr,
                CheckKind::Spf,
                CheckKind::Mx
            ]
        );
    }
}
