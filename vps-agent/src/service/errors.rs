//! The one place where domain errors become gRPC statuses: the modules
//! below the services (tokens, PKI, rotation, tunnel) return typed errors,
//! and the status code a client sees for each is decided here.

use tonic::Status;

use crate::rotation::RotateError;
use crate::tokens::RedeemError;
use crate::tunnel::HomeKeyError;

impl From<RedeemError> for Status {
    fn from(e: RedeemError) -> Self {
        match e {
            RedeemError::Store(_) => Status::internal(e.to_string()),
            _ => Status::permission_denied(e.to_string()),
        }
    }
}

impl From<RotateError> for Status {
    fn from(e: RotateError) -> Self {
        use RotateError as E;
        match e {
            // Retry once home is back (or the agent is).
            E::HomeAway | E::SessionEnded | E::ShuttingDown(_) => {
                Status::unavailable(e.to_string())
            }
            E::KeyLength => Status::invalid_argument(e.to_string()),
            // The rotation does not (or no longer) fit: the current keys stay.
            E::BadHomeKey { .. } | E::Engine { .. } | E::Refused(_) => {
                Status::failed_precondition(e.to_string())
            }
            E::Store(_) => Status::internal(e.to_string()),
        }
    }
}

impl From<HomeKeyError> for Status {
    fn from(e: HomeKeyError) -> Self {
        use HomeKeyError as E;
        match e {
            E::Length | E::AllZeros => Status::invalid_argument(e.to_string()),
            E::ShuttingDown(_) => Status::unavailable(e.to_string()),
            E::Save(_) | E::Encode(_) | E::Engine(_) | E::DamagedPsk => {
                Status::internal(e.to_string())
            }
        }
    }
}

/// A PKI error (both types are foreign, so a function, not `From`): a
/// request that does not parse is the caller's fault, the rest is ours.
pub(super) fn pki_status(e: ceres_pki::PkiError) -> Status {
    match e {
        ceres_pki::PkiError::Parse { .. } => Status::invalid_argument(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// Work handed to the blocking pool that did not run because the agent
/// is stopping (both types are foreign, so a function): retry later.
pub(super) fn shutting_down(e: ceres_daemon::ShuttingDown) -> Status {
    Status::unavailable(e.to_string())
}

/// Refuses a request of a protocol version this agent does not speak.
pub(super) fn check_version(v: u32) -> Result<(), Status> {
    ceres_proto::negotiate(v, v)
        .map(|_| ())
        .map_err(Status::failed_precondition)
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use ceres_state::rotation::{StoreError, TransitionError};

    use crate::rotation::BadHomeKey;

    #[test]
    fn rotation_errors_map_to_the_codes_clients_act_on() {
        let cases = [
            (RotateError::HomeAway, Code::Unavailable),
            (RotateError::SessionEnded, Code::Unavailable),
            (
                RotateError::ShuttingDown(ceres_daemon::ShuttingDown),
                Code::Unavailable,
            ),
            (RotateError::KeyLength, Code::InvalidArgument),
            (
                RotateError::BadHomeKey {
                    id: 3,
                    why: BadHomeKey::UsedBefore,
                },
                Code::FailedPrecondition,
            ),
            (
                RotateError::Engine {
                    id: 3,
                    detail: "no peer".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                RotateError::Refused(TransitionError::NotInProgress { id: 3 }),
                Code::FailedPrecondition,
            ),
            (
                RotateError::Refused(TransitionError::DifferentKeys { id: 3 }),
                Code::FailedPrecondition,
            ),
            (
                RotateError::Store(StoreError::Damaged {
                    path: "rotation.json".into(),
                    detail: "not JSON".into(),
                }),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let text = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{text}");
            // The client reads the same sentence the log has.
            assert_eq!(status.message(), text);
        }
    }

    #[test]
    fn home_key_errors_blame_the_caller_only_for_a_bad_key() {
        for (error, code) in [
            (HomeKeyError::Length, Code::InvalidArgument),
            (HomeKeyError::AllZeros, Code::InvalidArgument),
            (HomeKeyError::DamagedPsk, Code::Internal),
            (
                HomeKeyError::ShuttingDown(ceres_daemon::ShuttingDown),
                Code::Unavailable,
            ),
            (HomeKeyError::Engine("no".into()), Code::Internal),
        ] {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn work_not_done_at_shutdown_is_worth_a_retry() {
        assert_eq!(
            shutting_down(ceres_daemon::ShuttingDown).code(),
            Code::Unavailable
        );
    }

    #[test]
    fn a_version_outside_the_supported_range_is_a_failed_precondition() {
        assert!(check_version(ceres_proto::PROTOCOL_VERSION).is_ok());
        assert_eq!(
            check_version(ceres_proto::PROTOCOL_VERSION + 1)
                .unwrap_err()
                .code(),
            Code::FailedPrecondition
        );
    }
}
