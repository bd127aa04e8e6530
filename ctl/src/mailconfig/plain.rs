//! What relaying a port without PROXY costs, in words an admin can act on:
//! shown by `cerectl status` and printed by `mailserver-config`.

/// The warning for a port relayed plain (`public_port`), landing on
/// `home_port`: every client of it is the home agent (127.0.0.1) to the mail
/// server, and what that breaks for the software behind that port.
pub fn plain_relay_warning(public_port: u16, home_port: u16) -> String {
    let breaks = match public_port {
        25 | 465 | 587 => {
            "Postfix trusts 127.0.0.1 (mynetworks): an open relay unless the port lands on a service of its own (`cerectl mailserver-config postfix` refuses otherwise); DNSBL and SPF checks see 127.0.0.1"
        }
        143 | 993 | 110 | 995 | 4190 => {
            "Dovecot counts a local client as secured and accepts cleartext passwords without TLS; auth penalties and fail2ban see one address"
        }
        80 | 443 => {
            "web apps' `allow 127.0.0.1` rules let the whole internet in; logs and rate limits see one address"
        }
        _ => "logs, rate limits and address-based rules at home see one address",
    };
    format!(
        "port {public_port} is relayed without PROXY (to home port {home_port}): every client there looks like 127.0.0.1 at home — {breaks}. Relay it with PROXY ({public_port}/proxy-v2 in CERES_RELAYS) and run `cerectl mailserver-config ... --apply`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_breaks_per_service() {
        assert!(plain_relay_warning(143, 143).contains("cleartext passwords"));
        assert!(plain_relay_warning(25, 25).contains("open relay"));
        assert!(plain_relay_warning(80, 80).contains("allow 127.0.0.1"));
        assert!(
            plain_relay_warning(8080, 80)
                .starts_with("port 8080 is relayed without PROXY (to home port 80)")
        );
    }
}
