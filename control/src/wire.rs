//! The protocol's names for the relay crate's types, and back: PROXY modes
//! and the firewall chains in the tunnel's way. The agents fill the typed
//! fields with them; `cerectl` reads them (and, from an older agent, the
//! wording it sent instead).

/// The protocol's name for a relay's PROXY mode.
pub fn proxy_mode(m: ceres_relay::ProxyMode) -> ceres_proto::ProxyMode {
    use ceres_proto::ProxyMode as P;
    use ceres_relay::ProxyMode as R;
    match m {
        R::None => P::None,
        R::V1 => P::V1,
        R::V2 => P::V2,
    }
}

/// The relay's PROXY mode for a protocol one (`None`: UNSPECIFIED or
/// unknown, from an older or newer peer).
pub fn relay_proxy_mode(m: ceres_proto::ProxyMode) -> Option<ceres_relay::ProxyMode> {
    ceres_relay::ProxyMode::ALL
        .into_iter()
        .find(|x| proxy_mode(*x) == m)
}

/// A relayed port's PROXY mode: `proxy_mode`, or from an older agent its
/// `proxy` name. `None` for one this build does not know.
pub fn port_proxy_mode(p: &ceres_proto::RelayPort) -> Option<ceres_relay::ProxyMode> {
    match ceres_proto::ProxyMode::try_from(p.proxy_mode).unwrap_or_default() {
        ceres_proto::ProxyMode::Unspecified => ceres_relay::ProxyMode::from_option(&p.proxy),
        typed => relay_proxy_mode(typed),
    }
}

/// A firewall chain in the tunnel's way, in the protocol's shape.
pub fn firewall_finding(d: &ceres_relay::egress::DropChain) -> ceres_proto::FirewallFinding {
    use ceres_proto::FirewallFindingKind as K;
    use ceres_relay::egress::Hook;
    ceres_proto::FirewallFinding {
        kind: match d.hook {
            Hook::Forward => K::ForwardDrop,
            Hook::Input => K::InputDrop,
        } as i32,
        family: d.family.clone(),
        table: d.table.clone(),
        chain: d.chain.clone(),
    }
}

/// The chain a protocol finding names (`None`: a kind this build does not
/// know).
pub fn drop_chain(f: &ceres_proto::FirewallFinding) -> Option<ceres_relay::egress::DropChain> {
    use ceres_proto::FirewallFindingKind as K;
    use ceres_relay::egress::Hook;
    let hook = match K::try_from(f.kind).unwrap_or_default() {
        K::ForwardDrop => Hook::Forward,
        K::InputDrop => Hook::Input,
        K::Unspecified => return None,
    };
    Some(ceres_relay::egress::DropChain {
        family: f.family.clone(),
        table: f.table.clone(),
        chain: f.chain.clone(),
        hook,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_modes_convert_both_ways_and_old_names_are_read() {
        for mode in ceres_relay::ProxyMode::ALL {
            assert_eq!(relay_proxy_mode(proxy_mode(mode)), Some(mode));
            let old = ceres_proto::RelayPort {
                proxy: mode.option().unwrap_or_default().into(),
                ..Default::default()
            };
            assert_eq!(port_proxy_mode(&old), Some(mode), "{old:?}");
        }
        assert_eq!(relay_proxy_mode(ceres_proto::ProxyMode::Unspecified), None);
        let typed = ceres_proto::RelayPort {
            proxy: "anything".into(),
            proxy_mode: ceres_proto::ProxyMode::V1.into(),
            ..Default::default()
        };
        assert_eq!(port_proxy_mode(&typed), Some(ceres_relay::ProxyMode::V1));
    }

    #[test]
    fn firewall_findings_convert_both_ways() {
        use ceres_relay::egress::{DropChain, Hook};
        for hook in [Hook::Input, Hook::Forward] {
            let d = DropChain {
                family: "inet".into(),
                table: "filter".into(),
                chain: "input".into(),
                hook,
            };
            assert_eq!(drop_chain(&firewall_finding(&d)), Some(d));
        }
        assert_eq!(drop_chain(&ceres_proto::FirewallFinding::default()), None);
    }
}
