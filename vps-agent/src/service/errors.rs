//! The one place where domain errors become gRPC statuses: the modules
//! below the services (tokens, PKI, rotation, tunnel) return typed errors,
//! and the status code a client sees for each is decided here.

use tonic::Status;

use crate::rotation::RotationError;
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

impl From<RotationError> for Status {
    fn from(e: RotationError) -> Self {
        use RotationError as E;
        match e {
            // Retry once home is back.
            E::HomeNotConnected | E::SessionEnded => Status::unavailable(e.to_string()),
            E::KeyLength => Status::invalid_argument(e.to_string()),
            E::Refused { .. } | E::NotInProgress { .. } | E::Failed { .. } => {
                Status::failed_precondition(e.to_string())
            }
            E::Damaged(_) | E::State(_) => Status::internal(e.to_string()),
        }
    }
}

impl From<HomeKeyError> for Status {
    fn from(e: HomeKeyError) -> Self {
        use HomeKeyError as E;
        match e {
            E::Length | E::AllZeros => Status::invalid_argument(e.to_string()),
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
    use crate::rotation::{FailReason, Refusal};

    #[test]
    fn rotation_errors_map_to_the_codes_clients_act_on() {
        let cases = [
            (RotationError::HomeNotConnected, Code::Unavailable),
            (RotationError::SessionEnded, Code::Unavailable),
            (RotationError::KeyLength, Code::InvalidArgument),
            (
                RotationError::Refused {
                    id: 3,
                    why: Refusal::NoSuchRotation,
                },
                Code::FailedPrecondition,
            ),
            (
                RotationError::NotInProgress { id: 3 },
                Code::FailedPrecondition,
            ),
            (
                RotationError::Failed {
                    id: 3,
                    reason: FailReason::TimedOut,
                },
                Code::FailedPrecondition,
            ),
            (RotationError::Damaged("psk"), Code::Internal),
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
            (HomeKeyError::Engine("no".into()), Code::Internal),
        ] {
            assert_eq!(Status::from(error).code(), code);
        }
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
