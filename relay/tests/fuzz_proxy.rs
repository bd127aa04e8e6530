//! Property-based fuzzing of the PROXY protocol code: what the VPS writes the
//! home side reads back exactly (v1 and v2, IPv4 clients always as TCP4),
//! and the parser answers every byte string with a header, "need more" or an
//! error — never a panic, and never a wrong header for an incomplete one.
//!
//! Bounded for CI by a fixed case count and seed; `PROPTEST_CASES` and
//! `PROPTEST_RNG_SEED` override them. Failures are kept in
//! `fuzz_proxy.proptest-regressions` beside this file.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ceres_relay::ProxyMode;
use ceres_relay::proxy::{self, ProxyError, ProxyHeader, V1_MAX_LEN, V2_SIGNATURE};
use proptest::prelude::*;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 2048;
/// Seed unless `PROPTEST_RNG_SEED` says otherwise.
const SEED: u64 = 0xCE7E_5003;

fn config() -> ProptestConfig {
    ceres_testkit::fuzz_config(CASES, SEED)
}

/// IPv4, IPv6, IPv4-mapped IPv6, and the special ones (unspecified,
/// loopback, `::`), any port.
fn addr() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
        Just(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Just(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        // IPv4-compatible (deprecated) `::a.b.c.d`: must stay IPv6.
        any::<u32>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a as u128))),
    ];
    (ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn mode() -> impl Strategy<Value = ProxyMode> {
    prop_oneof![Just(ProxyMode::V1), Just(ProxyMode::V2)]
}

/// Bytes that start like a PROXY header more often than chance would.
fn header_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|tail| {
            let mut v = V2_SIGNATURE.to_vec();
            v.extend(tail);
            v
        }),
        "PROXY (TCP4|TCP6|UNKNOWN|TCP5)?[ 0-9a-fA-F.:+-]{0,90}(\r\n)?".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..120).prop_map(|tail| {
            let mut v = b"PROXY ".to_vec();
            v.extend(tail);
            v
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// encode → parse gives the client address back (unmapped), consumes
    /// exactly the header, and an IPv4 client is never sent as TCP6.
    #[test]
    fn round_trip(client in addr(), local in addr(), mode in mode(), payload in prop::collection::vec(any::<u8>(), 0..32)) {
        let header = proxy::encode(mode, client, local);
        let mut bytes = header.clone();
        bytes.extend_from_slice(&payload);
        let (h, n) = proxy::parse(&bytes)
            .map_err(|e| TestCaseError::fail(format!("{e}: {bytes:?}")))?
            .ok_or_else(|| TestCaseError::fail("whole header reported incomplete"))?;
        prop_assert_eq!(n, header.len());
        let want_version = if mode == ProxyMode::V1 { 1 } else { 2 };
        prop_assert_eq!(h.version, want_version);
        let client_v4 = proxy::unmap(client).is_ipv4();
        prop_assert_eq!(h.source, Some(proxy::unmap(client)));
        let dst = h.destination.ok_or_else(|| TestCaseError::fail("no destination"))?;
        prop_assert_eq!(dst.port(), local.port());
        prop_assert_eq!(dst.is_ipv4(), client_v4);
        if proxy::unmap(local).is_ipv4() == client_v4 {
            prop_assert_eq!(dst, proxy::unmap(local));
        }
        match mode {
            ProxyMode::V1 => {
                prop_assert!(header.len() <= V1_MAX_LEN);
                let family = if client_v4 { &b"PROXY TCP4 "[..] } else { &b"PROXY TCP6 "[..] };
                prop_assert!(header.starts_with(family));
            }
            _ => prop_assert_eq!(header[13], if client_v4 { 0x11 } else { 0x21 }),
        }
    }

    /// Every proper prefix of a valid header is "need more", never an error
    /// and never a (wrong) header.
    #[test]
    fn prefixes_need_more(client in addr(), local in addr(), mode in mode()) {
        let header = proxy::encode(mode, client, local);
        for cut in 0..header.len() {
            prop_assert_eq!(proxy::parse(&header[..cut]), Ok(None), "cut at {}", cut);
        }
    }

    /// Arbitrary bytes: an answer, never a panic; a header found is
    /// self-consistent and its length is within the input.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in header_like()) {
        match proxy::parse(&bytes) {
            Ok(Some((h, n))) => check_header(&bytes, h, n)?,
            Ok(None) => {
                // "Need more" only for something that could still become a header.
                prop_assert!(
                    b"PROXY ".starts_with(&bytes[..bytes.len().min(6)])
                        || V2_SIGNATURE.starts_with(&bytes[..bytes.len().min(12)]),
                    "need more for {:?}", bytes
                );
                if bytes.starts_with(b"PROXY") {
                    prop_assert!(bytes.len() < V1_MAX_LEN);
                }
            }
            Err(ProxyError::NotProxy) => prop_assert!(
                !bytes.is_empty()
                    && !b"PROXY ".starts_with(&bytes[..bytes.len().min(6)])
                    && !V2_SIGNATURE.starts_with(&bytes[..bytes.len().min(12)])
            ),
            Err(_) => {}
        }
    }

    /// A valid header with bytes changed: never a panic; and whatever it
    /// parses to, the parser agrees with itself on a longer buffer.
    #[test]
    fn damaged_headers_never_panic(
        client in addr(),
        local in addr(),
        mode in mode(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut bytes = proxy::encode(mode, client, local);
        for (i, b) in &edits {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        let short = proxy::parse(&bytes);
        if let Ok(Some((h, n))) = short {
            check_header(&bytes, h, n)?;
            // More bytes after a complete header do not change it.
            let mut longer = bytes.clone();
            longer.extend_from_slice(&tail);
            prop_assert_eq!(proxy::parse(&longer), Ok(Some((h, n))));
        }
    }
}

/// What must hold for any header `parse` returns from `bytes`.
fn check_header(bytes: &[u8], h: ProxyHeader, n: usize) -> Result<(), TestCaseError> {
    prop_assert!(n <= bytes.len());
    prop_assert_eq!(h.source.is_some(), h.destination.is_some());
    match h.version {
        1 => {
            prop_assert!(n <= V1_MAX_LEN);
            prop_assert_eq!(&bytes[n - 2..n], b"\r\n");
            if let (Some(s), Some(d)) = (h.source, h.destination) {
                prop_assert_eq!(s.is_ipv4(), d.is_ipv4());
                let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                let line = std::str::from_utf8(&bytes[..n - 2])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                // The header is what the line says, field by field.
                let want = format!(
                    "PROXY {family} {} {} {} {}",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                );
                let fields: Vec<&str> = line.split(' ').collect();
                prop_assert_eq!(fields.len(), 6);
                let parsed: Vec<&str> = want.split(' ').collect();
                prop_assert_eq!(fields[..2].to_vec(), parsed[..2].to_vec());
                prop_assert_eq!(fields[4..].to_vec(), parsed[4..].to_vec());
            }
        }
        2 => {
            prop_assert!(n >= 16);
            prop_assert_eq!(&bytes[..12], &V2_SIGNATURE[..]);
            prop_assert_eq!(n, 16 + u16::from_be_bytes([bytes[14], bytes[15]]) as usize);
        }
        v => prop_assert!(false, "version {}", v),
    }
    Ok(())
}
