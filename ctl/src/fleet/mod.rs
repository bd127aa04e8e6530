//! `cerectl` with several VPSes: which VPS a command is about (`--vps NAME`),
//! `enroll` adding one, `vps list|remove|priority`, and `status` and `dns`
//! across all of them. The credentials store itself is
//! [`ceres_control::VpsStore`] (the home agent will share it).

pub(crate) mod dns;
mod enroll;
pub(crate) mod status;
mod vps_cmd;

use ceres_control::{Selection, StoreError, VpsStore};
use ceres_pki::Role;
use ceres_state::StateDir;

use crate::cli::Cli;

pub use enroll::EnrollArgs;
pub(crate) use enroll::run as enroll;
pub use vps_cmd::VpsArgs;
pub(crate) use vps_cmd::run as vps;

/// A usage error found after the command line parsed (exit 2): a choice the
/// user has to make, with the flag that makes it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub(crate) String);

/// The admin credentials store in `--dir`.
pub(crate) fn store(cli: &Cli) -> anyhow::Result<VpsStore> {
    Ok(VpsStore::new(crate::cli::root_dir(cli)?, Role::Admin))
}

/// A store error, with what to do in cerectl's own words.
pub(crate) fn explain(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::Unknown { .. } => Usage(format!("{e}: `cerectl vps list` shows them")).into(),
        e => e.into(),
    }
}

/// The credentials directory of the VPS a one-VPS command is about: the one
/// named with `--vps`, or the only one. Not enrolled at all: the top
/// directory, where loading then says how to enrol.
pub(crate) fn selected_dir(cli: &Cli) -> anyhow::Result<StateDir> {
    let store = store(cli)?;
    match store.select(cli.vps.as_deref()).map_err(explain)? {
        Selection::Nothing => Ok(store.root().clone()),
        Selection::One(e) => Ok(e.state_dir()?),
        Selection::Several(all) => Err(Usage(format!(
            "cerectl is enrolled with {} VPSes ({}): name the one this command is about with --vps NAME",
            all.len(),
            ceres_control::store::names(&all)
        ))
        .into()),
    }
}
