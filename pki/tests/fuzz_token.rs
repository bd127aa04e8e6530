//! Property-based fuzzing of join tokens: whatever a user pastes, `decode`
//! answers with a token or a [`TokenError`], never a panic, and every token
//! survives its own text form unchanged.
//!
//! Bounded for CI: a fixed case count and a fixed seed, so a run is
//! reproducible. For a longer hunt, set `PROPTEST_CASES` and
//! `PROPTEST_RNG_SEED`; failures are kept in `fuzz_token.proptest-regressions`
//! beside this file and replayed first on every run.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ceres_pki::{Fingerprint, JoinToken, Role, Secret, TokenError};
use proptest::prelude::*;

const PREFIX: &str = "ceres1_";

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 512;
/// Seed unless `PROPTEST_RNG_SEED` says otherwise: CI runs the same cases.
const SEED: u64 = 0xCE7E_5001;

fn config() -> ProptestConfig {
    ceres_testkit::fuzz_config(CASES, SEED)
}

/// Control addresses of at most 255 bytes (what the format can hold): mostly
/// realistic `host:port` text, sometimes any Unicode.
fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.:\\[\\]-]{0,64}",
        "[ -~]{0,255}",
        prop::collection::vec(any::<char>(), 0..128).prop_map(|chars| {
            let mut s = String::new();
            for c in chars {
                if s.len() + c.len_utf8() > 255 {
                    break;
                }
                s.push(c);
            }
            s
        }),
    ]
}

fn token() -> impl Strategy<Value = JoinToken> {
    (
        prop_oneof![Just(Role::Home), Just(Role::Admin)],
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<u64>(),
        address(),
    )
        .prop_map(|(role, fp, secret, expires, addr)| JoinToken {
            role,
            ca_fingerprint: Fingerprint(fp),
            secret: Secret(secret),
            expires_at_unix: expires,
            control_address: addr,
        })
}

/// One edit of a token's text.
#[derive(Debug, Clone)]
enum Edit {
    Truncate(prop::sample::Index),
    Replace(prop::sample::Index, char),
    Insert(prop::sample::Index, char),
    Delete(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Mostly base64url characters, which get past the alphabet check and so
    // reach the length and checksum checks.
    let ch = prop_oneof![
        4 => prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                .chars()
                .collect::<Vec<_>>()
        ),
        1 => any::<char>(),
    ];
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
        (any::<prop::sample::Index>(), ch.clone()).prop_map(|(i, c)| Edit::Replace(i, c)),
        (any::<prop::sample::Index>(), ch).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<prop::sample::Index>().prop_map(Edit::Delete),
    ]
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        // Earlier edits ate everything; only an insertion has anything to do.
        if let Edit::Insert(_, c) = edit {
            return c.to_string();
        }
        return String::new();
    }
    match edit {
        Edit::Truncate(i) => chars.truncate(i.index(chars.len())),
        Edit::Replace(i, c) => {
            let at = i.index(chars.len());
            chars[at] = *c;
        }
        Edit::Insert(i, c) => {
            let at = i.index(chars.len() + 1);
            chars.insert(at, *c);
        }
        Edit::Delete(i) => {
            let at = i.index(chars.len());
            chars.remove(at);
        }
    }
    chars.into_iter().collect()
}

/// The binary body of a token's text, and back, with the checksum fixed up:
/// lets mutations get past the checksum and reach the field parsing.
fn body_of(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(text.strip_prefix(PREFIX).expect("prefix"))
        .expect("base64")
}

fn text_with_checksum(mut body: Vec<u8>) -> String {
    let check = Fingerprint::of(&body);
    body.extend_from_slice(&check.0[..4]);
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(body))
}

proptest! {
    #![proptest_config(config())]

    /// Every token comes back from its text form as it was.
    #[test]
    fn encode_decode_round_trips(t in token()) {
        let text = t.encode();
        prop_assert!(text.starts_with(PREFIX));
        prop_assert_eq!(JoinToken::decode(&text), Ok(t.clone()));
        // Pasted with the surrounding whitespace a terminal adds.
        prop_assert_eq!(JoinToken::decode(&format!(" \t{text}\r\n")), Ok(t));
    }

    /// Any text at all: an answer, never a panic.
    #[test]
    fn arbitrary_text_never_panics(s in any::<String>()) {
        let _ = JoinToken::decode(&s);
        // With the prefix it goes further into the parser.
        let _ = JoinToken::decode(&format!("{PREFIX}{s}"));
    }

    /// Any bytes behind the prefix, base64url-encoded: gets past the alphabet
    /// check into the length, version and checksum checks.
    #[test]
    fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&body));
        let _ = JoinToken::decode(&text);
        // And with a correct checksum, so the field parsing runs too.
        if let Ok(t) = JoinToken::decode(&text_with_checksum(body)) {
            prop_assert_eq!(JoinToken::decode(&t.encode()), Ok(t));
        }
    }

    /// Mistyped or truncated tokens are refused (a change to the last
    /// character may only touch base64 padding bits and decode to the same
    /// token, and whitespace at the ends is ignored), and never panic.
    #[test]
    fn edited_tokens_are_refused(t in token(), edits in prop::collection::vec(edit(), 1..4)) {
        let original = t.encode();
        let mut text = original.clone();
        for e in &edits {
            text = apply(&text, e);
        }
        match JoinToken::decode(&text) {
            Ok(got) => prop_assert_eq!(got, t, "edited token {:?} accepted", text),
            Err(TokenError::NotAToken | TokenError::Damaged(_)) => {}
            Err(e) => prop_assert!(false, "edited token {:?}: unexpected {:?}", text, e),
        }
    }

    /// Byte-level damage behind a valid checksum (a bad role, address length
    /// or UTF-8, a future version): refused or decoded to something that
    /// re-encodes to exactly that text, never a panic.
    #[test]
    fn damaged_fields_behind_a_valid_checksum(
        t in token(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut body = body_of(&t.encode());
        body.truncate(body.len() - 4);
        for (i, b) in &flips {
            let at = i.index(body.len());
            body[at] = *b;
        }
        if let Some(c) = cut {
            body.truncate(c.index(body.len() + 1));
        }
        let text = text_with_checksum(body.clone());
        match JoinToken::decode(&text) {
            Ok(got) => prop_assert_eq!(got.encode(), text),
            Err(TokenError::UnsupportedVersion(v)) => prop_assert_eq!(Some(&v), body.first()),
            Err(_) => {}
        }
    }
}

/// Addresses longer than the format holds are cut to at most 255 bytes by
/// `encode`, on a character boundary, so the token still decodes (found by
/// this file: a cut inside a multi-byte character made an undecodable token).
#[test]
fn overlong_addresses_are_cut_on_a_character_boundary() {
    for addr in [
        "a".repeat(300),
        "é".repeat(200),
        format!("x{}", "€".repeat(100)),
    ] {
        let t = JoinToken {
            role: Role::Home,
            ca_fingerprint: Fingerprint([7; 32]),
            secret: Secret([9; 32]),
            expires_at_unix: 1,
            control_address: addr.clone(),
        };
        let got = JoinToken::decode(&t.encode()).expect("an overlong address still decodes");
        assert!(addr.starts_with(&got.control_address));
        assert!(got.control_address.len() <= 255 && got.control_address.len() >= 253);
    }
}
