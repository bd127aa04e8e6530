//! The protocol's names for the reasons a relay refuses a connection, and
//! back: the agents report them, `cerectl` shows them.

/// The protocol's name for a relay's refusal reason.
pub fn refusal_reason(r: ceres_relay::Refusal) -> ceres_proto::RefusalReason {
    use ceres_proto::RefusalReason as P;
    use ceres_relay::Refusal as R;
    match r {
        R::PortFull => P::PortFull,
        R::ReservedForKnown => P::ReservedForKnown,
        R::Source => P::Source,
        R::V4Net24 => P::V4Net24,
        R::V6Net56 => P::V6Net56,
        R::V6Net48 => P::V6Net48,
        R::Rate => P::Rate,
        R::Untrusted => P::Untrusted,
    }
}

/// The relay's name for a protocol refusal reason (`None`: unknown, from a
/// newer peer).
pub fn relay_refusal(r: ceres_proto::RefusalReason) -> Option<ceres_relay::Refusal> {
    ceres_relay::Refusal::ALL
        .into_iter()
        .find(|x| refusal_reason(*x) == r)
}
