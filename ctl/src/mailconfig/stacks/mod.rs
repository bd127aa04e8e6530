//! `cerectl mailserver-config --stack NAME`: the whole recipe for a packaged
//! mail stack — the VPS's `CERES_RELAYS`, home's `CERES_MAIL_SERVER` and
//! `CERES_EGRESS_FROM`, and every file to drop in at the stack's own override
//! path — built from facts read in the stack's own repository, each cited.
//!
//! The safety rules are the hand-built ones (see the parent module): a PROXY
//! header is read only by listeners published on the host's 127.0.0.1; the
//! stack's stock listeners stay as they are; nothing relayed is trusted by
//! address; Dovecot trusts PROXY headers only from the Docker gateway address
//! the published port connects from.

mod dms;
mod mail_in_a_box;
mod mailcow;
mod mailu;
mod postfix_dovecot;
mod render;

use clap::ValueEnum;
use serde::Serialize;

pub use render::{markdown, text, write};

/// A packaged mail stack with a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stack {
    /// Postfix, Dovecot and nginx from the distribution on the home host.
    PostfixDovecot,
    /// mailcow-dockerized.
    Mailcow,
    /// docker-mailserver (DMS).
    DockerMailserver,
    /// Mailu.
    Mailu,
    /// Mail-in-a-Box: a statement of why it is not relayed, no recipe.
    MailInABox,
}

impl Stack {
    /// The name `--stack` takes (clap derives its own from the variant;
    /// the tests name the docs' generated blocks with this).
    #[cfg(test)]
    pub fn name(self) -> &'static str {
        match self {
            Stack::PostfixDovecot => "postfix-dovecot",
            Stack::Mailcow => "mailcow",
            Stack::DockerMailserver => "docker-mailserver",
            Stack::Mailu => "mailu",
            Stack::MailInABox => "mail-in-a-box",
        }
    }

    /// The stack's recipe.
    pub fn recipe(self) -> Recipe {
        match self {
            Stack::PostfixDovecot => postfix_dovecot::recipe(),
            Stack::Mailcow => mailcow::recipe(),
            Stack::DockerMailserver => dms::recipe(),
            Stack::Mailu => mailu::recipe(),
            Stack::MailInABox => mail_in_a_box::recipe(),
        }
    }
}

/// Where a fact was read: a file of a repository at a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Citation {
    /// `owner/name` on GitHub.
    pub repo: &'static str,
    /// The file inside the repository.
    pub path: &'static str,
    /// The commit read.
    pub commit: &'static str,
    /// What the file says that the recipe uses.
    pub fact: &'static str,
}

/// A file of the recipe, whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackFile {
    /// Path relative to the stack's directory (where its compose file is).
    pub path: &'static str,
    /// Why the file is there and what to do if one already exists.
    pub purpose: &'static str,
    /// The whole file.
    pub contents: String,
    /// Whether the file must be executable (DMS's `user-patches.sh`).
    pub executable: bool,
}

/// Everything a stack needs, at both ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipe {
    /// `--stack` name.
    pub stack: &'static str,
    /// The human name of the stack.
    pub title: &'static str,
    /// The stack version the facts were read at.
    pub version: &'static str,
    /// `CERES_RELAYS` for the VPS's ceres.env; empty for a stack CERES
    /// cannot front (the notes say why and what to do instead).
    pub relays: &'static str,
    /// `CERES_MAIL_SERVER` for home's ceres.env.
    pub mail_server: &'static str,
    /// `CERES_EGRESS_FROM` for home's ceres.env: the stack's Docker networks
    /// (empty: Postfix on the host binds the tunnel address itself).
    pub egress_from: Vec<&'static str>,
    /// The address the stack's PROXY listeners must accept headers from (the
    /// Docker network's gateway), and how to confirm it.
    pub trusted_proxy: Option<TrustedProxy>,
    /// Files to create at the stack's override paths.
    pub files: Vec<StackFile>,
    /// The command that makes the stack read them.
    pub restart: &'static str,
    /// Facts the admin must know: what is not relayed with PROXY and why,
    /// what the stock listeners keep doing.
    pub notes: Vec<&'static str>,
    /// How the recipe was checked here.
    pub verified: &'static str,
    /// Where every number and path came from.
    pub citations: Vec<Citation>,
}

/// Who may send PROXY headers to the stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrustedProxy {
    /// The address (the stack's Docker network gateway with its default subnet).
    pub address: &'static str,
    /// The command that shows the gateway of the running network.
    pub find_with: &'static str,
}

#[cfg(test)]
mod tests;
