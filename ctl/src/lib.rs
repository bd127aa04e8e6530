//! `cerectl`: the administrator's view of a CERES installation — status of
//! both agents from anywhere, and (growing) the DNS/PTR checklist and checks.

mod alerts;
mod cli;
mod dns;
mod doctor;
mod fleet;
mod mailconfig;
mod sendtest;
mod smtp;
mod status;
mod status_checks;
mod status_stack;
mod vps;

pub use cli::main;
