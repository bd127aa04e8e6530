//! PROXY protocol v1/v2 headers: how the home mail server learns the real client
//! address of a connection that reaches it through the tunnel.
//!
//! Encoding follows the HAProxy specification (`proxy-protocol.txt`). IPv4 clients —
//! including IPv4-mapped IPv6 addresses seen on dual-stack sockets — are always sent as
//! `TCP4`/`AF_INET`: Postfix refuses a `TCP6` line that carries IPv4 addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::spec::ProxyMode;

/// The 12-byte signature that starts every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line allowed by the specification, CRLF included.
pub const V1_MAX_LEN: usize = 107;

/// A parsed PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Protocol version the header was written in (1 or 2).
    pub version: u8,
    /// Original client address, or `None` for `UNKNOWN` (v1) / `LOCAL` (v2) headers,
    /// which say "use the real connection addresses".
    pub source: Option<SocketAddr>,
    /// Address the client connected to (the VPS public address and port).
    pub destination: Option<SocketAddr>,
}

/// A byte sequence that is not a valid PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Neither the v1 `PROXY ` prefix nor the v2 signature.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// The v1 line is malformed; the text says which part.
    #[error("malformed PROXY v1 line: {0}")]
    BadV1(&'static str),
    /// The v2 header is malformed; the text says which part.
    #[error("malformed PROXY v2 header: {0}")]
    BadV2(&'static str),
}

/// Turns an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) into the IPv4 address it is.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// Makes both addresses one family, preferring IPv4 whenever the client is IPv4.
///
/// A v4 client with a true v6 destination cannot happen with `IPV6_V6ONLY` listeners;
/// should it, the destination becomes `0.0.0.0` so the client address still goes out
/// as `TCP4` (the client address is what the mail server needs).
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (client, local) = (unmap(client), unmap(local));
    match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V6(l)) => (
            client,
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, l.port())),
        ),
        (SocketAddr::V6(_), SocketAddr::V4(l)) => (
            client,
            SocketAddr::V6(SocketAddrV6::new(l.ip().to_ipv6_mapped(), l.port(), 0, 0)),
        ),
        _ => (client, local),
    }
}

/// Encodes the header for a connection from `client` to our `local` address, or an
/// empty vector for [`ProxyMode::None`].
pub fn encode(mode: ProxyMode, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    match mode {
        ProxyMode::None => Vec::new(),
        ProxyMode::V1 => encode_v1(client, local),
        ProxyMode::V2 => encode_v2(client, local),
    }
}

/// Encodes a v1 text line (`PROXY TCP4 src dst sport dport\r\n`).
pub fn encode_v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(client, local);
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// Encodes a v2 binary header with command `PROXY` over `STREAM`.
pub fn encode_v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(client, local);
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6_octets(src.ip()));
            out.extend_from_slice(&v6_octets(dst.ip()));
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        }
    }
    out
}

/// A v2 header with command `LOCAL`: "no client behind me, use the real
/// connection addresses" — what a proxy sends for its own health checks. The
/// home agent's stack probe sends it to see a PROXY listener answer without
/// claiming any client address.
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x20); // version 2, command LOCAL
    out.push(0x00); // AF_UNSPEC, UNSPEC
    out.extend_from_slice(&0u16.to_be_bytes());
    out
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
    }
}

/// Parses a PROXY header (v1 or v2) at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` is a valid but incomplete prefix (read more and call
/// again), `Ok(Some((header, length)))` when a whole header of `length` bytes is there.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let v1_prefix = b"PROXY ";
    let n = buf.len().min(v1_prefix.len());
    if buf[..n] == v1_prefix[..n] {
        return parse_v1(buf);
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return parse_v2(buf);
    }
    Err(ProxyError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::BadV1("no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..cr]).map_err(|_| ProxyError::BadV1("not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY"
    let family = fields.next().ok_or(ProxyError::BadV1("no family"))?;
    let header = match family {
        "UNKNOWN" => ProxyHeader {
            version: 1,
            source: None,
            destination: None,
        },
        "TCP4" | "TCP6" => {
            let rest: Vec<&str> = fields.collect();
            let [src, dst, sport, dport] = rest[..] else {
                return Err(ProxyError::BadV1("expected 4 address fields"));
            };
            let (src, dst): (IpAddr, IpAddr) = if family == "TCP4" {
                (
                    IpAddr::V4(
                        src.parse()
                            .map_err(|_| ProxyError::BadV1("bad IPv4 source"))?,
                    ),
                    IpAddr::V4(
                        dst.parse()
                            .map_err(|_| ProxyError::BadV1("bad IPv4 destination"))?,
                    ),
                )
            } else {
                let s: Ipv6Addr = src
                    .parse()
                    .map_err(|_| ProxyError::BadV1("bad IPv6 source"))?;
                let d: Ipv6Addr = dst
                    .parse()
                    .map_err(|_| ProxyError::BadV1("bad IPv6 destination"))?;
                (IpAddr::V6(s), IpAddr::V6(d))
            };
            let port = |p: &str| {
                // The spec forbids leading zeros and signs; u16's parser would take "+25".
                if p.is_empty()
                    || (p.len() > 1 && p.starts_with('0'))
                    || !p.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(ProxyError::BadV1("bad port"));
                }
                p.parse::<u16>().map_err(|_| ProxyError::BadV1("bad port"))
            };
            ProxyHeader {
                version: 1,
                source: Some(SocketAddr::new(src, port(sport)?)),
                destination: Some(SocketAddr::new(dst, port(dport)?)),
            }
        }
        _ => return Err(ProxyError::BadV1("unknown family")),
    };
    Ok(Some((header, cr + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadV2("version is not 2"));
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let total = 16 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total];
    let local = ProxyHeader {
        version: 2,
        source: None,
        destination: None,
    };
    match ver_cmd & 0x0f {
        0x0 => return Ok(Some((local, total))),
        0x1 => {}
        _ => return Err(ProxyError::BadV2("unknown command")),
    }
    let header = match buf[13] {
        0x11 | 0x12 => {
            if body.len() < 12 {
                return Err(ProxyError::BadV2("IPv4 address block too short"));
            }
            let ip = |o: usize| Ipv4Addr::new(body[o], body[o + 1], body[o + 2], body[o + 3]);
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            ProxyHeader {
                version: 2,
                source: Some(SocketAddr::new(IpAddr::V4(ip(0)), port(8))),
                destination: Some(SocketAddr::new(IpAddr::V4(ip(4)), port(10))),
            }
        }
        0x21 | 0x22 => {
            if body.len() < 36 {
                return Err(ProxyError::BadV2("IPv6 address block too short"));
            }
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[o..o + 16]);
                Ipv6Addr::from(a)
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            ProxyHeader {
                version: 2,
                source: Some(SocketAddr::new(IpAddr::V6(ip(0)), port(32))),
                destination: Some(SocketAddr::new(IpAddr::V6(ip(16)), port(34))),
            }
        }
        // UNSPEC or UNIX: the receiver must use the real connection addresses.
        _ => local,
    };
    Ok(Some((header, total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_exact_lines() {
        assert_eq!(
            encode_v1(sa("198.51.100.7:40000"), sa("203.0.113.1:25")),
            b"PROXY TCP4 198.51.100.7 203.0.113.1 40000 25\r\n"
        );
        assert_eq!(
            encode_v1(sa("[2001:db8::7]:40000"), sa("[2001:db8::1]:25")),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n"
        );
    }

    #[test]
    fn mapped_ipv4_goes_out_as_tcp4() {
        let line = encode_v1(
            sa("[::ffff:198.51.100.7]:1234"),
            sa("[::ffff:203.0.113.1]:25"),
        );
        assert_eq!(line, b"PROXY TCP4 198.51.100.7 203.0.113.1 1234 25\r\n");
        let v2 = encode_v2(sa("[::ffff:198.51.100.7]:1234"), sa("[2001:db8::1]:25"));
        assert_eq!(v2[13], 0x11, "AF_INET even with a v6 destination");
        let (h, _) = parse(&v2).unwrap().unwrap();
        assert_eq!(h.source, Some(sa("198.51.100.7:1234")));
        assert_eq!(h.destination, Some(sa("0.0.0.0:25")));
    }

    #[test]
    fn v2_exact_bytes_ipv4() {
        let got = encode_v2(sa("198.51.100.7:40000"), sa("203.0.113.1:25"));
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 51, 100, 7, 203, 0, 113, 1]);
        want.extend_from_slice(&40000u16.to_be_bytes());
        want.extend_from_slice(&25u16.to_be_bytes());
        assert_eq!(got, want);
    }

    #[test]
    fn incomplete_prefixes_ask_for_more() {
        for h in [
            encode_v1(sa("198.51.100.7:1"), sa("203.0.113.1:25")),
            encode_v2(sa("[2001:db8::7]:1"), sa("[2001:db8::1]:25")),
        ] {
            for cut in 0..h.len() {
                assert_eq!(parse(&h[..cut]), Ok(None), "cut at {cut}");
            }
            assert_eq!(parse(&h).unwrap().unwrap().1, h.len());
        }
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse(b"EHLO x\r\n"), Err(ProxyError::NotProxy));
        assert!(parse(b"PROXY TCP5 1 2 3 4\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 25\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 25\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n").is_err());
        assert!(parse(b"PROXY TCP4 2001:db8::1 5.6.7.8 1 25\r\n").is_err());
        assert!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(20)).is_err());
        let mut bad_version = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        bad_version[12] = 0x11;
        assert!(parse(&bad_version).is_err());
    }

    #[test]
    fn unknown_and_local_headers() {
        let (h, n) = parse(b"PROXY UNKNOWN\r\nEHLO").unwrap().unwrap();
        assert_eq!((h.source, n), (None, 15));
        let local = encode_v2_local();
        assert_eq!(local[12..], [0x20, 0x00, 0, 0]);
        let (h, n) = parse(&local).unwrap().unwrap();
        assert_eq!((h.version, h.source, n), (2, None, 16));
    }

    #[test]
    fn v2_skips_tlvs_in_length() {
        let mut h = encode_v2(sa("198.51.100.7:1"), sa("203.0.113.1:25"));
        // Append a 4-byte TLV (type 0x04 NOOP) and fix the length.
        h.extend_from_slice(&[0x04, 0, 1, 0]);
        h[14..16].copy_from_slice(&16u16.to_be_bytes());
        h.extend_from_slice(b"EHLO");
        let (hdr, n) = parse(&h).unwrap().unwrap();
        assert_eq!(n, h.len() - 4);
        assert_eq!(hdr.source, Some(sa("198.51.100.7:1")));
    }

    fn random_addr(rng: &mut impl Rng) -> SocketAddr {
        let port = rng.random::<u16>();
        match rng.random_range(0..3) {
            0 => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(rng.random::<u32>())), port),
            1 => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(rng.random::<u128>())), port),
            _ => SocketAddr::new(
                IpAddr::V6(Ipv4Addr::from(rng.random::<u32>()).to_ipv6_mapped()),
                port,
            ),
        }
    }

    /// Property: for any pair of addresses, encode → parse gives back the client address
    /// (unmapped), the whole header is consumed, and an IPv4 client is never TCP6.
    #[test]
    fn round_trip_random_addresses() {
        let mut rng = rand::rng();
        for _ in 0..20_000 {
            let client = random_addr(&mut rng);
            let local = random_addr(&mut rng);
            for mode in [ProxyMode::V1, ProxyMode::V2] {
                let mut bytes = encode(mode, client, local);
                let len = bytes.len();
                bytes.extend_from_slice(b"220 payload follows\r\n");
                let (h, n) = parse(&bytes).unwrap().unwrap();
                assert_eq!(n, len);
                assert_eq!(h.source, Some(unmap(client)), "{mode:?} {client} {local}");
                let dst = h.destination.unwrap();
                assert_eq!(dst.port(), local.port());
                assert_eq!(dst.is_ipv4(), unmap(client).is_ipv4());
                if unmap(local).is_ipv4() == unmap(client).is_ipv4() {
                    assert_eq!(dst, unmap(local));
                }
                if mode == ProxyMode::V1 {
                    assert!(len <= V1_MAX_LEN);
                }
            }
        }
    }

    #[test]
    fn none_mode_is_empty() {
        assert!(encode(ProxyMode::None, sa("1.2.3.4:1"), sa("5.6.7.8:2")).is_empty());
    }
}
