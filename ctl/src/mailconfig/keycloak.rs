//! Keycloak: a realm's SMTP settings, for applications that send their mail
//! (password resets, verification) through the home server via the VPS.

use std::fmt::Write as _;

use super::{MailConfigError, MailSetup};

/// Keycloak choices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeycloakOptions {
    /// 587 or 465; `None`: 587 when relayed, else 465.
    pub port: Option<u16>,
    /// Sender; default `noreply@DOMAIN`.
    pub from: Option<String>,
    /// Login; default the sender.
    pub user: Option<String>,
}

/// Keycloak: a realm's SMTP settings, as key/value lines and as the realm
/// JSON's `smtpServer` fragment.
pub fn keycloak(s: &MailSetup, k: &KeycloakOptions) -> Result<String, MailConfigError> {
    let submission: Vec<u16> = [587u16, 465]
        .into_iter()
        .filter(|p| s.relay(*p).is_some())
        .collect();
    let port = match k.port {
        Some(p) if submission.contains(&p) => p,
        Some(p) => {
            let list = submission
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(MailConfigError::BadPort(
                p,
                if list.is_empty() { "none".into() } else { list },
            ));
        }
        None => *submission
            .first()
            .ok_or(MailConfigError::NoSubmissionPort)?,
    };
    let starttls = port == 587;
    let from = k
        .from
        .clone()
        .unwrap_or_else(|| format!("noreply@{}", s.domain));
    let user = k.user.clone().unwrap_or_else(|| from.clone());
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Keycloak realm SMTP for CERES: Realm settings -> Email in the admin\n\
         # console (or the realm JSON's \"smtpServer\", below). Mail goes to {}\n\
         # (the VPS), which relays port {port} to the home mail server.\n\
         # The password is the mailbox password of {user} on the home mail\n\
         # server: enter it in Keycloak; it is not printed here.\n",
        s.mail_host
    );
    let _ = writeln!(o, "host = {}", s.mail_host);
    let _ = writeln!(o, "port = {port}");
    let _ = writeln!(
        o,
        "encryption = {}",
        if starttls {
            "STARTTLS (starttls = true, ssl = false)"
        } else {
            "SSL/TLS (ssl = true, starttls = false)"
        }
    );
    let _ = writeln!(o, "from = {from}");
    let _ = writeln!(o, "fromDisplayName = {}", s.domain);
    let _ = writeln!(o, "auth = true");
    let _ = writeln!(o, "user = {user}");
    let _ = writeln!(o, "password = (the mailbox password; set it in Keycloak)");
    let json = serde_json::json!({
        "smtpServer": {
            "host": s.mail_host,
            "port": port.to_string(),
            "from": from,
            "fromDisplayName": s.domain,
            "starttls": starttls.to_string(),
            "ssl": (!starttls).to_string(),
            "auth": "true",
            "user": user,
            "password": "CHANGE-ME",
        }
    });
    let pretty = serde_json::to_string_pretty(&json).unwrap_or_default();
    // The fragment, without the outer braces, to paste into a realm export.
    let inner: Vec<&str> = pretty.lines().collect();
    let _ = writeln!(o, "\n# Realm JSON fragment (replace CHANGE-ME):");
    if inner.len() >= 2 {
        for l in &inner[1..inner.len() - 1] {
            let _ = writeln!(o, "{}", l.strip_prefix("  ").unwrap_or(l));
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::setup;
    use super::*;
    use ceres_relay::DEFAULT_RELAYS;

    #[test]
    fn keycloak_port_choice_and_json() {
        let t = keycloak(&setup(DEFAULT_RELAYS), &KeycloakOptions::default()).unwrap();
        assert!(t.starts_with("# Keycloak realm SMTP"));
        assert!(
            t.contains("host = mail.example.com\nport = 587\nencryption = STARTTLS"),
            "{t}"
        );
        assert!(t.contains("from = noreply@example.com"));
        assert!(t.contains("user = noreply@example.com"));
        let start = t.find("\"smtpServer\": {").unwrap();
        let frag = format!("{{{}}}", &t[start..]);
        let v: serde_json::Value = serde_json::from_str(&frag).unwrap();
        assert_eq!(v["smtpServer"]["port"], "587");
        assert_eq!(v["smtpServer"]["starttls"], "true");
        assert_eq!(v["smtpServer"]["ssl"], "false");
        assert_eq!(v["smtpServer"]["auth"], "true");

        let t = keycloak(
            &setup("25/proxy-v2,465/proxy-v2"),
            &KeycloakOptions {
                from: Some("id@example.com".into()),
                user: Some("keycloak".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(t.contains("port = 465\nencryption = SSL/TLS"), "{t}");
        assert!(t.contains("\"ssl\": \"true\""), "{t}");
        assert!(t.contains("user = keycloak") && t.contains("from = id@example.com"));
        assert_eq!(
            keycloak(&setup("25"), &KeycloakOptions::default()),
            Err(MailConfigError::NoSubmissionPort)
        );
        assert!(matches!(
            keycloak(
                &setup("587"),
                &KeycloakOptions {
                    port: Some(465),
                    ..Default::default()
                }
            ),
            Err(MailConfigError::BadPort(465, _))
        ));
    }
}
