//! `cerectl`: the administrator's view of a CERES installation — status of
//! both agents from anywhere, and (growing) the DNS/PTR checklist and checks.

pub mod alerts;
pub mod cli;
pub mod dns;
pub mod doctor;
pub mod mailconfig;
pub mod sendtest;
pub mod smtp;
pub mod status;
pub mod status_checks;
mod vps;
