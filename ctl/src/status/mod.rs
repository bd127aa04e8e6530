//! `cerectl status`: the report, its stable JSON form, and its rendering.
//!
//! The JSON schema is documented in `docs/status-json.md`; fields are only
//! ever added, and `schema` changes if one ever has to change meaning.
//!
//! The way through: [`build`] reads the VPS's answer into the parts of
//! [`schema`], every fact typed ([`facts`]); [`diagnose`] decides from
//! those what is broken ([`problem`]); [`render`] writes the text.

mod build;
#[cfg(test)]
mod compat_tests;
mod diagnose;
mod facts;
mod problem;
mod render;
mod schema;
#[cfg(test)]
mod tests;

use ceres_proto::StatusResponse;

use build::HANDSHAKE_STALE_SECS;
pub use facts::EgressUplink;
pub use render::escape_controls;
pub use schema::*;

impl Status {
    /// Builds the status from the VPS's answer, with its diagnosis.
    pub fn from_response(resp: StatusResponse) -> Self {
        let mut status = build::parts(resp);
        let (problems, warnings) = diagnose::diagnose(&status);
        status.ok = problems.is_empty();
        status.problems = problems.iter().map(|p| p.text.clone()).collect();
        status.warnings = warnings.iter().map(|w| w.text.clone()).collect();
        status.diagnosis = Diagnosis { problems, warnings };
        status
    }
}
