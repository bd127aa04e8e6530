//! Property-based fuzzing of what a joining host sends the control plane:
//! the CSR (`validate_csr`, `Ca::sign_client`) and the protobuf messages
//! around it. Whatever arrives, the VPS answers with an error, never a
//! panic, and only a well-formed, correctly self-signed CSR gets a
//! certificate.
//!
//! Bounded for CI by a fixed case count and seed; `PROPTEST_CASES` and
//! `PROPTEST_RNG_SEED` override them. Failures are kept in
//! `fuzz_requests.proptest-regressions` beside this file.

use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ceres_pki::{Ca, CertificateInfo, KeyAndCsr, Role, validate_csr};
use ceres_proto::{EnrollRequest, HomeMessage};
use proptest::prelude::*;
use prost::Message;
use x509_parser::prelude::FromDer;

/// Cases per property unless `PROPTEST_CASES` says otherwise. Signing is the
/// slow part (an ECDSA signature per accepted case), so fewer than elsewhere.
const CASES: u32 = 256;
/// Seed unless `PROPTEST_RNG_SEED` says otherwise.
const SEED: u64 = 0xCE7E_5004;

fn config() -> ProptestConfig {
    ceres_testkit::fuzz_config(CASES, SEED)
}

static CA: LazyLock<Ca> =
    LazyLock::new(|| Ca::generate("example.test", Duration::from_secs(3600)).expect("CA"));

/// A few genuine CSRs (key generation per case would dominate the run time).
static CSRS: LazyLock<Vec<KeyAndCsr>> = LazyLock::new(|| {
    ["home", "mail.example.test", "x"]
        .iter()
        .map(|n| KeyAndCsr::generate(n).expect("CSR"))
        .collect()
});

fn csr_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    STANDARD.decode(b64).expect("PEM body")
}

fn csr_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE REQUEST-----\n");
    out
}

/// Whether `der` carries the same signed request, signature algorithm and
/// signature as `original`: then only envelope bytes differ, which the
/// signature does not cover and nothing uses.
fn same_request(der: &[u8], original: &[u8]) -> bool {
    use x509_parser::certification_request::X509CertificationRequest;
    let parts = |d: &[u8]| {
        X509CertificationRequest::from_der(d).ok().map(|(_, r)| {
            (
                r.certification_request_info.raw.to_vec(),
                r.signature_algorithm.algorithm.to_id_string(),
                r.signature_value.data.to_vec(),
            )
        })
    };
    matches!((parts(der), parts(original)), (Some(a), Some(b)) if a == b)
}

/// Runs both entry points on `pem`; they must agree, and a certificate they
/// issue must carry the role asked for.
fn check(pem: &str) -> Result<bool, TestCaseError> {
    let valid = validate_csr(pem).is_ok();
    let signed = CA.sign_client(pem, Role::Home, "fuzz", Duration::from_secs(600));
    prop_assert_eq!(
        valid,
        signed.is_ok(),
        "validate_csr and sign_client disagree"
    );
    if let Ok(cert) = signed {
        let info =
            CertificateInfo::from_pem(&cert).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(info.role, Some(Role::Home));
    }
    Ok(valid)
}

/// One change to a DER CSR.
#[derive(Debug, Clone)]
enum DerEdit {
    Set(prop::sample::Index, u8),
    FlipBit(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Append(Vec<u8>),
}

fn der_edit() -> impl Strategy<Value = DerEdit> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| DerEdit::Set(i, b)),
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| DerEdit::FlipBit(i, b)),
        any::<prop::sample::Index>().prop_map(DerEdit::Truncate),
        prop::collection::vec(any::<u8>(), 1..8).prop_map(DerEdit::Append),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any text: refused, never a panic.
    #[test]
    fn arbitrary_text_is_refused(s in any::<String>()) {
        prop_assert!(!check(&s)?);
        let framed = format!("-----BEGIN CERTIFICATE REQUEST-----\n{s}\n-----END CERTIFICATE REQUEST-----\n");
        prop_assert!(!check(&framed)?);
    }

    /// Any bytes in a correct PEM frame: reach the DER parser, refused.
    #[test]
    fn arbitrary_der_is_refused(der in prop::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(!check(&csr_pem(&der))?);
    }

    /// A genuine CSR with its DER changed is refused unless the signed
    /// request, the algorithm and the signature are all unchanged: what the
    /// parser lets through is envelope the signature does not cover and the
    /// CA does not use (see `envelope_leniency_is_harmless`).
    #[test]
    fn damaged_csrs_are_refused(
        which in 0usize..3,
        edits in prop::collection::vec(der_edit(), 1..4),
    ) {
        let original = csr_der(CSRS[which].csr_pem());
        let mut der = original.clone();
        for e in &edits {
            match e {
                DerEdit::Set(i, b) => {
                    if !der.is_empty() {
                        let at = i.index(der.len());
                        der[at] = *b;
                    }
                }
                DerEdit::FlipBit(i, bit) => {
                    if !der.is_empty() {
                        let at = i.index(der.len());
                        der[at] ^= 1 << bit;
                    }
                }
                DerEdit::Truncate(i) => der.truncate(i.index(der.len() + 1)),
                DerEdit::Append(extra) => der.extend_from_slice(extra),
            }
        }
        let accepted = check(&csr_pem(&der))?;
        if der.starts_with(&original) {
            prop_assert!(accepted, "intact CSR refused: {:?}", edits);
        }
        if accepted {
            prop_assert!(
                same_request(&der, &original),
                "changed CSR accepted: {:?}",
                edits
            );
        }
    }

    /// A genuine CSR's PEM text with characters changed: never a panic, and
    /// accepted only when the DER inside is still the original.
    #[test]
    fn damaged_pem_text_never_panics(
        which in 0usize..3,
        at in any::<prop::sample::Index>(),
        c in any::<char>(),
    ) {
        let pem = CSRS[which].csr_pem();
        let mut chars: Vec<char> = pem.chars().collect();
        let i = at.index(chars.len());
        chars[i] = c;
        let text: String = chars.into_iter().collect();
        if check(&text)? {
            // The PEM decoder skips some noise (whitespace); the request must be the same.
            // The body: after the BEGIN marker (whatever its label), up to END.
            let body = text
                .split_once("-----BEGIN")
                .and_then(|(_, r)| r.split_once("-----"))
                .and_then(|(_, r)| r.split_once("-----END"))
                .map(|(b, _)| b)
                .unwrap_or_default();
            let der = STANDARD
                .decode(body.chars().filter(|c| !c.is_whitespace()).collect::<String>())
                .unwrap_or_default();
            prop_assert!(same_request(&der, &csr_der(pem)), "{}", text);
        }
    }

    /// Protobuf requests from arbitrary bytes: decoded or refused, never a panic.
    #[test]
    fn arbitrary_protobuf_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = EnrollRequest::decode(bytes.as_slice());
        let _ = HomeMessage::decode(bytes.as_slice());
        let _ = EnrollRequest::decode_length_delimited(bytes.as_slice());
        let _ = HomeMessage::decode_length_delimited(bytes.as_slice());
    }

    /// An enrol request survives the wire, and damaging its encoding gives
    /// an error or some request, never a panic.
    #[test]
    fn enroll_request_round_trips_and_damage_is_harmless(
        version in any::<u32>(),
        secret in prop::collection::vec(any::<u8>(), 0..64),
        which in 0usize..3,
        name in any::<String>(),
        agent in "[ -~]{0,32}",
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let req = EnrollRequest {
            protocol_version: version,
            token_secret: secret,
            csr_pem: CSRS[which].csr_pem().to_owned(),
            name,
            agent_version: agent,
        };
        let mut wire = req.encode_to_vec();
        prop_assert_eq!(EnrollRequest::decode(wire.as_slice()), Ok(req.clone()));
        for (i, b) in &flips {
            let at = i.index(wire.len());
            wire[at] = *b;
        }
        if let Ok(got) = EnrollRequest::decode(wire.as_slice()) {
            // Whatever survived goes through the same CSR checks.
            let _ = check(&got.csr_pem)?;
        }
    }
}

/// The genuine CSRs pass, so the refusals above are not a CA that refuses
/// everything.
#[test]
fn genuine_csrs_are_accepted() {
    for k in CSRS.iter() {
        assert!(check(k.csr_pem()).expect("consistent"));
    }
}

/// rcgen (through x509-parser) ignores what follows the CSR's DER and does
/// not check the tag bytes of the unsigned envelope: the outer SEQUENCE, the
/// signature algorithm's SEQUENCE and OID, the signature BIT STRING (found
/// by `damaged_csrs_are_refused`: e.g. the outer 0x30 changed to 0x10, 0x50
/// or 0xb0 was accepted). Harmless: none of it is covered by the signature
/// or used, the signed request and its key are unchanged, and the CA takes
/// nothing from a CSR but its key. Recorded so a change is noticed.
#[test]
fn envelope_leniency_is_harmless() {
    let original = csr_der(CSRS[0].csr_pem());
    let key = |pem: &str| {
        let der = csr_der(pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
        cert.public_key().raw.to_vec()
    };
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&original)
            .expect("CSR");
    let want_key = req.certification_request_info.subject_pki.raw.to_vec();
    let mut trailing = original.clone();
    trailing.extend_from_slice(&[0, 1, 2]);
    let mut primitive_tag = original.clone();
    primitive_tag[0] = 0x10;
    let mut application_tag = original.clone();
    application_tag[0] = 0x50;
    for der in [trailing, primitive_tag, application_tag] {
        assert!(same_request(&der, &original));
        let pem = csr_pem(&der);
        assert!(check(&pem).expect("consistent"));
        let cert = CA
            .sign_client(&pem, Role::Admin, "x", Duration::from_secs(60))
            .expect("signed");
        assert_eq!(key(&cert), want_key, "the certificate is for the CSR's key");
    }
}
