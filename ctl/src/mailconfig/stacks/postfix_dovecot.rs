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
        relays: MailStack::PostfixDovecot.facts().relays,
        mail_server: "127.0.0.1",
        egress_from: Vec::new(),
        trusted_proxy: None,
        files: Vec::new(),
        restart: "cerectl mailserver-config postfix --apply && cerectl mailserver-config dovecot --apply && cerectl mailserver-config nginx --apply",
        notes: vec![
            "The files are the live /etc/postfix, /etc/dovecot and /etc/nginx: `cerectl mailserver-config postfix|dovecot|nginx` prints what CERES needs there, `--apply` changes it (backup, the software's own check, reload), `--check` lists what is unsafe or missing.",
            "Outbound mail leaves from the tunnel address (Postfix's smtp_bind_address, set by `mailserver-config postfix`): CERES_EGRESS_FROM stays unset.",
        ],
        verified: "See the per-target sections: --apply is tested against Debian's packages with postconf, doveconf and nginx -t, and end to end in the namespace lab.",
        citations: Vec::new(),
    }
}
