//! Batched UDP I/O for the data path: `sendmmsg` with UDP GSO (one syscall and
//! one trip through the stack for a run of equal-sized datagrams) and
//! `recvmmsg` with UDP GRO (the kernel hands us coalesced datagrams).
//!
//! Both offloads are optional: when the kernel refuses them we fall back to
//! plain batched calls, which still save a syscall per datagram.

use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use crate::config::canonical;

/// `UDP_SEGMENT` (linux/udp.h): per-message GSO segment size.
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` (linux/udp.h): deliver coalesced datagrams with their segment size.
const UDP_GRO: libc::c_int = 104;
/// The kernel's cap on segments in one GSO send (`UDP_MAX_SEGMENTS` was 64
/// before Linux 6.x raised it; stay at the older, portable limit).
const MAX_GSO_SEGMENTS: usize = 64;
/// Largest UDP payload a GSO send may carry in total.
const MAX_GSO_BYTES: usize = 65_000;
/// Datagrams per `sendmmsg`/`recvmmsg` call.
pub(crate) const BATCH: usize = 128;
/// Messages per `recvmmsg` when GRO is on (each buffer holds up to 64 KiB).
pub(crate) const GRO_MSGS: usize = 16;
/// Messages per `recvmmsg` without GRO.
pub(crate) const PLAIN_MSGS: usize = 64;
/// Upper bound of both, for stack arrays.
const MAX_RECV_MSGS: usize = if GRO_MSGS > PLAIN_MSGS {
    GRO_MSGS
} else {
    PLAIN_MSGS
};
/// Buffer for one GRO-coalesced message.
pub(crate) const GRO_BUF: usize = 65_536;
/// Socket buffer size we ask for: bulk TCP through the tunnel overruns the
/// default 208 KiB in bursts, and each overrun is a loss TCP must recover.
const SOCK_BUF: libc::c_int = 8 << 20;

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: fd is a valid socket for the duration of the call; the option
    // value is a plain int whose size we pass.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Binds the tunnel's UDP socket (non-blocking) and turns on what speeds it up.
/// Returns the socket and whether GRO is enabled.
pub(crate) fn bind(listen: SocketAddr) -> io::Result<(UdpSocket, bool)> {
    let sock = UdpSocket::bind(listen)?;
    sock.set_nonblocking(true)?;
    let fd = sock.as_raw_fd();
    // FORCE variants ignore rmem_max/wmem_max but need CAP_NET_ADMIN, which
    // the engine has anyway for the TUN device; fall back for unprivileged use.
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCK_BUF).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCK_BUF);
        }
    }
    let gro = setsockopt_int(fd, libc::SOL_UDP, UDP_GRO, 1).is_ok();
    Ok((sock, gro))
}

/// A socket address in the form the kernel wants for this socket's family.
pub(crate) fn to_raw(
    addr: SocketAddr,
    v6_socket: bool,
) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let v6 = match (addr, v6_socket) {
        (SocketAddr::V4(a), false) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for
            // sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            return (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t);
        }
        (SocketAddr::V4(a), true) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
        (SocketAddr::V6(a), _) => a,
    };
    let sin6 = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: v6.port().to_be(),
        sin6_flowinfo: v6.flowinfo(),
        sin6_addr: libc::in6_addr {
            s6_addr: v6.ip().octets(),
        },
        sin6_scope_id: v6.scope_id(),
    };
    // SAFETY: as above, for sockaddr_in6.
    unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
    (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
}

/// The inverse of [`to_raw`]; IPv4-mapped addresses come back as IPv4.
pub(crate) fn from_raw(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            Some(canonical(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                u16::from_be(sin6.sin6_port),
            )))
        }
        _ => None,
    }
}

/// Blocks until `fd` is ready for `events` or `stop_fd` is readable.
/// Returns false when stopped.
pub(crate) fn wait(fd: RawFd, events: libc::c_short, stop_fd: RawFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd,
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: stop_fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: fds is a valid array of two pollfd for the call's duration.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        return fds[1].revents == 0;
    }
}

/// Sends runs of datagrams to one destination. Owned by the encrypt thread.
#[derive(Debug)]
pub(crate) struct Sender {
    fd: RawFd,
    v6_socket: bool,
    gso: bool,
}

/// What [`Sender::send`] achieved.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SendOutcome {
    /// Datagrams handed to the kernel.
    pub sent: usize,
    /// Datagrams refused (e.g. no route to the endpoint).
    pub errors: usize,
    /// The stop signal fired while waiting for buffer space.
    pub stopped: bool,
}

impl Sender {
    pub(crate) fn new(sock: &UdpSocket) -> io::Result<Sender> {
        Ok(Sender {
            fd: sock.as_raw_fd(),
            v6_socket: sock.local_addr()?.is_ipv6(),
            gso: true,
        })
    }

    /// Sends datagram `i` = `buf[i*stride .. i*stride + lens[i]]` for all `i`.
    pub(crate) fn send(
        &mut self,
        dst: SocketAddr,
        buf: &[u8],
        stride: usize,
        lens: &[usize],
        stop_fd: RawFd,
    ) -> SendOutcome {
        let (name, name_len) = to_raw(dst, self.v6_socket);
        let mut out = SendOutcome::default();
        let n = lens.len().min(BATCH);
        // SAFETY (for the zeroed arrays below): iovec, mmsghdr and the control
        // buffers are plain old data.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        for i in 0..n {
            iov[i] = libc::iovec {
                iov_base: buf[i * stride..].as_ptr() as *mut libc::c_void,
                iov_len: lens[i],
            };
        }
        // Each message is one run of datagrams: with GSO a run is a sequence
        // of equal sizes, optionally ended by one shorter datagram (what the
        // kernel's segmentation allows); without GSO each run is one datagram.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let mut ctrl: [[u64; 4]; BATCH] = [[0; 4]; BATCH];
        let mut runs: [(usize, usize); BATCH] = [(0, 0); BATCH];
        let mut start = 0;
        let mut first_unsent_run = 0;
        loop {
            let mut nruns = 0;
            let mut i = start;
            while i < n {
                let seg = lens[i];
                let mut j = i + 1;
                let mut bytes = seg;
                if self.gso {
                    while j < n
                        && j - i < MAX_GSO_SEGMENTS
                        && bytes + lens[j] <= MAX_GSO_BYTES
                        && lens[j] <= seg
                    {
                        bytes += lens[j];
                        j += 1;
                        if lens[j - 1] < seg {
                            break;
                        }
                    }
                }
                runs[nruns] = (i, j);
                let m = &mut msgs[nruns].msg_hdr;
                m.msg_name = (&name as *const libc::sockaddr_storage) as *mut libc::c_void;
                m.msg_namelen = name_len;
                m.msg_iov = &mut iov[i];
                m.msg_iovlen = j - i;
                if j - i > 1 {
                    let c = &mut ctrl[nruns];
                    m.msg_control = c.as_mut_ptr().cast();
                    // SAFETY: CMSG_SPACE of a u16 payload fits in 32 bytes.
                    m.msg_controllen =
                        unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
                    // SAFETY: the control buffer is at least controllen bytes,
                    // aligned for cmsghdr (u64 array), and msg_control points at it.
                    unsafe {
                        let cm = libc::CMSG_FIRSTHDR(m);
                        (*cm).cmsg_level = libc::SOL_UDP;
                        (*cm).cmsg_type = UDP_SEGMENT;
                        (*cm).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                        std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), seg as u16);
                    }
                } else {
                    m.msg_control = std::ptr::null_mut();
                    m.msg_controllen = 0;
                }
                nruns += 1;
                i = j;
            }
            if nruns == 0 {
                return out;
            }
            let mut k = first_unsent_run;
            while k < nruns {
                // SAFETY: msgs[k..nruns] are initialised and point into iov,
                // ctrl and name, all alive for the duration of the call.
                let r = unsafe {
                    libc::sendmmsg(
                        self.fd,
                        msgs[k..].as_mut_ptr(),
                        (nruns - k) as u32,
                        libc::MSG_DONTWAIT,
                    )
                };
                if r >= 0 {
                    for &(a, b) in &runs[k..k + r as usize] {
                        out.sent += b - a;
                    }
                    k += r as usize;
                    continue;
                }
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        if !wait(self.fd, libc::POLLOUT, stop_fd) {
                            out.stopped = true;
                            return out;
                        }
                    }
                    Some(libc::EINTR) => {}
                    // The egress device cannot checksum-offload a GSO send:
                    // rebuild the remaining runs without GSO.
                    Some(libc::EIO) | Some(libc::EINVAL)
                        if self.gso && runs[k].1 - runs[k].0 > 1 =>
                    {
                        tracing::info!(error = %err, "UDP GSO refused by the kernel; sending datagrams one by one");
                        self.gso = false;
                        break;
                    }
                    _ => {
                        tracing::debug!(error = %err, %dst, "UDP send failed");
                        out.errors += runs[k].1 - runs[k].0;
                        k += 1;
                    }
                }
            }
            if k >= nruns {
                return out;
            }
            // GSO was just turned off: resend from the first unsent datagram.
            start = runs[k].0;
            first_unsent_run = 0;
        }
    }
}

/// One received message: where it came from, and the segment size when the
/// kernel coalesced several datagrams (GRO) into it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub src: Option<SocketAddr>,
    pub len: usize,
    pub seg: usize,
}

/// Receives batches of datagrams. Owned by the decrypt thread.
#[derive(Debug)]
pub(crate) struct Receiver {
    fd: RawFd,
    /// `msgs * buf_len` bytes; message `i` lands at `i * buf_len`.
    pub bufs: Vec<u8>,
    pub buf_len: usize,
    msgs: usize,
    addrs: Vec<libc::sockaddr_storage>,
    ctrl: Vec<[u64; 4]>,
    pub got: Vec<Received>,
}

impl Receiver {
    pub(crate) fn new(sock: &UdpSocket, gro: bool, max_datagram: usize) -> Receiver {
        let (msgs, buf_len) = if gro {
            (GRO_MSGS, GRO_BUF)
        } else {
            (PLAIN_MSGS, max_datagram)
        };
        Receiver {
            fd: sock.as_raw_fd(),
            bufs: vec![0; msgs * buf_len],
            buf_len,
            msgs,
            // SAFETY: sockaddr_storage is plain old data; zero is valid.
            addrs: vec![unsafe { zeroed() }; msgs],
            ctrl: vec![[0; 4]; msgs],
            got: Vec::with_capacity(msgs),
        }
    }

    /// Receives what is queued, waiting when nothing is. Returns false when
    /// `stop_fd` fired.
    pub(crate) fn recv(&mut self, stop_fd: RawFd) -> bool {
        self.got.clear();
        loop {
            let mut iov: [MaybeUninit<libc::iovec>; MAX_RECV_MSGS] =
                [const { MaybeUninit::uninit() }; MAX_RECV_MSGS];
            // SAFETY: mmsghdr is plain old data.
            let mut hdrs: [libc::mmsghdr; MAX_RECV_MSGS] = unsafe { zeroed() };
            let base = self.bufs.as_mut_ptr();
            for i in 0..self.msgs {
                // SAFETY: i * buf_len + buf_len <= bufs.len().
                let p = unsafe { base.add(i * self.buf_len) };
                iov[i].write(libc::iovec {
                    iov_base: p.cast(),
                    iov_len: self.buf_len,
                });
                let m = &mut hdrs[i].msg_hdr;
                m.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                m.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_iov = iov[i].as_mut_ptr();
                m.msg_iovlen = 1;
                m.msg_control = self.ctrl[i].as_mut_ptr().cast();
                m.msg_controllen = size_of::<[u64; 4]>();
            }
            // SAFETY: hdrs[..msgs] point into buffers owned by self, alive and
            // not otherwise borrowed during the call.
            let r = unsafe {
                libc::recvmmsg(
                    self.fd,
                    hdrs.as_mut_ptr(),
                    self.msgs as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        if !wait(self.fd, libc::POLLIN, stop_fd) {
                            return false;
                        }
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => {
                        // ICMP errors from earlier sends surface here
                        // (ECONNREFUSED and friends); they are not fatal.
                        tracing::trace!(error = %err, "UDP receive error");
                        continue;
                    }
                }
            }
            for (i, h) in hdrs.iter().enumerate().take(r as usize) {
                let len = h.msg_len as usize;
                let mut seg = len;
                let m = &h.msg_hdr;
                // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG
                // macros walk only within them.
                unsafe {
                    let mut cm = libc::CMSG_FIRSTHDR(m);
                    while !cm.is_null() {
                        if (*cm).cmsg_level == libc::SOL_UDP && (*cm).cmsg_type == UDP_GRO {
                            let s =
                                std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast::<libc::c_int>());
                            if s > 0 {
                                seg = s as usize;
                            }
                        }
                        cm = libc::CMSG_NXTHDR(m, cm);
                    }
                }
                self.got.push(Received {
                    src: from_raw(&self.addrs[i]),
                    len,
                    seg,
                });
            }
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_addresses_round_trip() {
        for s in ["192.0.2.1:51820", "[2001:db8::1]:7"] {
            let a: SocketAddr = s.parse().unwrap();
            for v6 in [false, true] {
                if a.is_ipv6() && !v6 {
                    continue;
                }
                let (ss, _) = to_raw(a, v6);
                assert_eq!(from_raw(&ss), Some(a), "{s} v6={v6}");
            }
        }
    }

    fn stop_pipe() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid two-int array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    }

    /// Loopback round trip through the batched calls, with runs that exercise
    /// the GSO grouping (equal sizes, a shorter tail, a larger datagram).
    #[test]
    fn batched_send_and_receive_on_loopback() {
        let (rx_sock, gro) = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (tx_sock, _) = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let dst = rx_sock.local_addr().unwrap();
        let (stop_r, stop_w) = stop_pipe();
        let stride = 1600;
        let lens = [1000, 1000, 1000, 500, 1200, 1200, 64];
        let mut buf = vec![0u8; stride * lens.len()];
        for (i, _) in lens.iter().enumerate() {
            buf[i * stride..(i + 1) * stride].fill(i as u8 + 1);
        }
        let mut s = Sender::new(&tx_sock).unwrap();
        let out = s.send(dst, &buf, stride, &lens, stop_r);
        assert_eq!(out.sent, lens.len());
        assert_eq!(out.errors, 0);

        let mut r = Receiver::new(&rx_sock, gro, 2048);
        let mut seen = Vec::new();
        while seen.len() < lens.len() {
            assert!(r.recv(stop_r));
            for (i, g) in r.got.iter().enumerate() {
                assert_eq!(g.src, Some(tx_sock.local_addr().unwrap()));
                let msg = &r.bufs[i * r.buf_len..i * r.buf_len + g.len];
                for chunk in msg.chunks(g.seg) {
                    seen.push((chunk.len(), chunk[0]));
                }
            }
        }
        let want: Vec<(usize, u8)> = lens
            .iter()
            .enumerate()
            .map(|(i, l)| (*l, i as u8 + 1))
            .collect();
        assert_eq!(seen, want);
        // SAFETY: closing the pipe fds we created.
        unsafe {
            libc::close(stop_r);
            libc::close(stop_w);
        }
    }
}
