//! The uplink health probe: one ICMP echo from home's tunnel address,
//! bound to the uplink's interface, to its VPS's tunnel address.
//!
//! Why ICMP echo: the VPS's tunnel input filter (relay/src/egress/
//! tunnel_filter.rs) accepts from home only replies, echo requests, and TCP
//! to the services it offers there (none on a VPS by default), and drops the
//! rest without a reset — so a TCP connect to the VPS would get no answer at
//! all, while an echo request is accepted and answered by the VPS kernel.
//! The answer proves the whole path: the tunnel interface, WireGuard's
//! session, the VPS host. It does not prove the VPS's public side.
//!
//! The socket is a ping socket (`SOCK_DGRAM`/`IPPROTO_ICMP`, allowed when the
//! agent's group is in `net.ipv4.ping_group_range`); where that is closed, a
//! raw socket (needs CAP_NET_RAW). Blocking: call it off the async workers.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn open(ifname: &str, src: IpAddr) -> io::Result<(Socket, bool)> {
    let (sock, raw) = match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
        Ok(s) => (s, false),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).map_err(|r| {
                io::Error::new(
                    r.kind(),
                    format!(
                        "no ping socket ({e}: add the agent's group to net.ipv4.ping_group_range) \
                         and no raw socket ({r}: needs CAP_NET_RAW)"
                    ),
                )
            })?;
            (s, true)
        }
        Err(e) => return Err(e),
    };
    sock.bind_device(Some(ifname.as_bytes()))?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    Ok((sock, raw))
}

/// One echo from `src` on `ifname` to `dst`, waiting at most `wait`; the
/// round trip on success, else why not in words.
pub fn echo(
    ifname: &str,
    src: IpAddr,
    dst: IpAddr,
    seq: u16,
    wait: Duration,
) -> Result<Duration, String> {
    if !dst.is_ipv4() || !src.is_ipv4() {
        return Err(format!(
            "probe {dst} from {src}: IPv4 tunnel addresses only"
        ));
    }
    let (sock, raw) = open(ifname, src).map_err(|e| format!("probe socket on {ifname}: {e}"))?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut pkt = vec![ECHO_REQUEST, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"ceres-uplink");
    let sum = checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    let start = Instant::now();
    sock.send_to(&pkt, &SocketAddr::new(dst, 0).into())
        .map_err(|e| format!("echo to {dst} via {ifname}: {e}"))?;
    let deadline = start + wait;
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no echo reply from {dst} via {ifname} within {wait:?}"
            ));
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| format!("probe socket: {e}"))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(format!("echo from {dst} via {ifname}: {e}")),
        };
        // SAFETY: recv_from initialised the first `n` bytes.
        let got: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let icmp = if raw {
            let ihl = usize::from(got.first().copied().unwrap_or(0) & 0x0f) * 4;
            got.get(ihl..).unwrap_or(&[])
        } else {
            &got[..]
        };
        let from_dst = from.as_socket().is_some_and(|a| a.ip() == dst);
        // A ping socket's id is the kernel's; a raw socket sees every echo
        // reply on the host, so match id and sequence there.
        let ours = icmp.len() >= 8
            && icmp[0] == ECHO_REPLY
            && icmp[6..8] == seq.to_be_bytes()
            && (!raw || icmp[4..6] == id.to_be_bytes());
        if from_dst && ours {
            return Ok(start.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_an_echo_request_verifies() {
        let mut pkt = vec![ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 1, b'x'];
        let sum = checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&pkt), 0);
    }

    #[test]
    fn loopback_answers_and_a_silent_address_does_not() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (ping or raw socket bound to a device)");
            return;
        }
        let lo: IpAddr = [127, 0, 0, 1].into();
        let rtt = echo("lo", lo, lo, 7, Duration::from_secs(2));
        assert!(rtt.is_ok(), "{rtt:?}");
        // Nothing answers for a documentation address routed nowhere.
        let e = echo(
            "lo",
            lo,
            [192, 0, 2, 99].into(),
            8,
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(e.contains("192.0.2.99"), "{e}");
    }

    #[test]
    fn ipv6_is_refused_with_a_reason() {
        let e = echo(
            "lo",
            "::1".parse().unwrap_or(IpAddr::from([0u8; 16])),
            "::1".parse().unwrap_or(IpAddr::from([0u8; 16])),
            1,
            Duration::from_millis(10),
        )
        .unwrap_err();
        assert!(e.contains("IPv4"), "{e}");
    }
}
