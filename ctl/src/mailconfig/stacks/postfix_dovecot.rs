//! Postfix, Dovecot and nginx from the distribution, on the home host: the
//! per-target commands (`cerectl mailserver-config postfix|dovecot|nginx`)
//! print and apply the configuration, because it depends on the VPS's relays
//! and tunnel addresses; this recipe only points at them.

use ceres_relay::stack::MailStack;

use super::Recipe;

/// The recipe.
pub fn recipe() -> Recipe {
    Recipe {
        stack: "postfix-dovecot",
        title: "Postfix, Dovecot and nginx on the same host",
        version: "the distribution's packages (tested with Debian 12: Postfix 3.7, Dovecot 2.3.19, nginx 1.22)",
        relays: MailStack::PostfixDovecot.facts().relays(),
        mail_server: "127.0.0.1",
        egress_from: Vec::new(),
        trusted_proxy: None,
        files: Vec::new(),
        restart: "cerectl mailserver-config postfix --apply && cerectl mailserver-config dovecot --apply && cerectl mailserver-config nginx --apply",
        notes: vec![
            "The files are the live /etc/postfix, /etc/dovecot and /etc/nginx: `cerectl mailserver-config postfix|dovecot|nginx` prints what CERES needs there, `--apply` changes it (backup, the software's own check, reload), `--check` lists what is unsafe or missing.",
            "Outbound mail leaves from the tunnel address (Postfix's smtp_bind_address, set by `mailserver-config postfix`): CERES_EGRESS_FROM stays unset.",
        ],
        bans: "None ships with it. A Fail2Ban or CrowdSec on the host reading the mail log sees the real client address of relayed connections (the PROXY services log it), so it counts the right one; but a firewall ban matches packets by source, and relayed packets reach Postfix and Dovecot from the home agent on 127.0.0.1: it does not stop a relayed client (Postfix's anvil limits and Dovecot's auth penalty, which work on the logged address, do). Never ban 127.0.0.1 or the tunnel address: that blocks every relayed client. To stop one, block it on the VPS: CERES has no ban feed to the VPS.",
        verified: "See the per-target sections: --apply is tested against Debian's packages with postconf, doveconf and nginx -t, and end to end in the namespace lab.",
        citations: Vec::new(),
    }
}
