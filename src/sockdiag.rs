//! Socket cookies of this network namespace's UDP sockets, from the kernel's sock_diag netlink
//! interface (NETLINK_SOCK_DIAG): one `SOCK_DIAG_BY_FAMILY` dump request with an
//! `inet_diag_req_v2` per address family, answered by one `inet_diag_msg` per socket, which
//! carries the socket's inode (what `/proc/net/udp` and `/proc/<pid>/fd` name it by) and its
//! cookie (what `bpf_get_socket_cookie()` returns for its packets). No ptrace, no access to the
//! owning process.
//!
//! The messages are encoded and decoded here byte by byte, in the layouts of
//! `linux/netlink.h`, `linux/sock_diag.h` and `linux/inet_diag.h`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

const NLMSG_HDR_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
/// NLM_F_ROOT | NLM_F_MATCH.
const NLM_F_DUMP: u16 = 0x300;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const IPPROTO_UDP: u8 = 17;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then a 48-byte
/// `inet_diag_sockid`.
const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_sockid`: sport, dport, src[4], dst[4], if, cookie[2].
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_msg`: family, state, timer, retrans, id, expires, rqueue, wqueue, uid,
/// inode.
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// Offsets in `inet_diag_msg`.
const MSG_SPORT: usize = 4;
const MSG_SRC: usize = 4 + 4;
const MSG_COOKIE: usize = 4 + 40;
const MSG_UID: usize = 4 + SOCKID_LEN + 12;
const MSG_INODE: usize = 4 + SOCKID_LEN + 16;

/// One UDP socket as sock_diag reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSock {
    pub family: u8,
    pub state: u8,
    /// Local address (an IPv4-mapped IPv6 address is given as IPv4) and port.
    pub ip: IpAddr,
    pub port: u16,
    pub uid: u32,
    pub inode: u64,
    pub cookie: u64,
}

/// The dump request for every UDP socket of `family` (`AF_INET` or `AF_INET6`), in all states:
/// a netlink header and an `inet_diag_req_v2`.
pub fn dump_request(family: u8, seq: u32) -> Vec<u8> {
    // no socket named: a dump
    udp_request(family, NLM_F_REQUEST | NLM_F_DUMP, seq, &[0u8; SOCKID_LEN])
}

/// A request about the UDP sockets of `family` in all states: a netlink header with `flags`
/// and an `inet_diag_req_v2` naming `sockid` (an `inet_diag_sockid`).
fn udp_request(family: u8, flags: u16, seq: u32, sockid: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + REQ_V2_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    m.extend_from_slice(&[family, IPPROTO_UDP, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: all
    m.extend_from_slice(sockid);
    m
}

/// What one read from the netlink socket held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replies {
    pub socks: Vec<DiagSock>,
    /// NLMSG_DONE was among them: the dump is complete.
    pub done: bool,
    /// Some message answered the request (any type).
    pub answered: bool,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// The kernel answered a request with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelAnswered(pub nix::errno::Errno);

impl std::fmt::Display for KernelAnswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sock_diag: the kernel answered {}", self.0)
    }
}

impl std::error::Error for KernelAnswered {}

/// Decode the netlink messages in `buf` (one datagram from the kernel) that answer request
/// `seq`. An `NLMSG_ERROR` with a non-zero code is an error; so is a truncated message.
pub fn parse_replies(buf: &[u8], seq: u32) -> Result<Replies> {
    let mut out = Replies::default();
    let mut off = 0;
    while off + NLMSG_HDR_LEN <= buf.len() {
        let len = u32_at(buf, off) as usize;
        let typ = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < NLMSG_HDR_LEN || off + len > buf.len() {
            bail!("sock_diag: a truncated netlink message ({len} bytes at {off})");
        }
        let body = &buf[off + NLMSG_HDR_LEN..off + len];
        if u32_at(buf, off + 8) == seq {
            out.answered = true;
            match typ {
                NLMSG_DONE => out.done = true,
                NLMSG_ERROR => {
                    let errno = body
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                    if errno != 0 {
                        return Err(KernelAnswered(nix::errno::Errno::from_raw(-errno)).into());
                    }
                }
                SOCK_DIAG_BY_FAMILY if body.len() >= DIAG_MSG_LEN => out.socks.push(DiagSock {
                    family: body[0],
                    state: body[1],
                    ip: local_ip(body[0], &body[MSG_SRC..MSG_SRC + 16]),
                    port: u16::from_be_bytes([body[MSG_SPORT], body[MSG_SPORT + 1]]),
                    uid: u32_at(body, MSG_UID),
                    inode: u64::from(u32_at(body, MSG_INODE)),
                    cookie: u64::from(u32_at(body, MSG_COOKIE))
                        | u64::from(u32_at(body, MSG_COOKIE + 4)) << 32,
                }),
                _ => {}
            }
        }
        off += (len + 3) & !3; // NLMSG_ALIGN
    }
    Ok(out)
}

/// The local address in `idiag_src` of a socket of `family` (AF_INET: the first 4 bytes).
fn local_ip(family: u8, src: &[u8]) -> IpAddr {
    if family == libc_af(AddressFamily::Inet) {
        return IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]));
    }
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(src).expect("16 bytes"));
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// Every UDP socket (IPv4 and IPv6) of the network namespace of the calling thread.
pub fn udp_sockets() -> Result<Vec<DiagSock>> {
    let fd = diag_socket(SockFlag::SOCK_CLOEXEC)?;
    let mut all = Vec::new();
    for (seq, family) in [
        (1, libc_af(AddressFamily::Inet)),
        (2, libc_af(AddressFamily::Inet6)),
    ] {
        all.extend(dump(&fd, family, seq)?);
    }
    Ok(all)
}

/// A NETLINK_SOCK_DIAG socket.
fn diag_socket(flags: SockFlag) -> Result<OwnedFd> {
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        flags,
        SockProtocol::NetlinkSockDiag,
    )
    .context("opening a NETLINK_SOCK_DIAG socket")
}

fn libc_af(f: AddressFamily) -> u8 {
    f as i32 as u8
}

fn dump(fd: &OwnedFd, family: u8, seq: u32) -> Result<Vec<DiagSock>> {
    sendto(
        fd.as_raw_fd(),
        &dump_request(family, seq),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .context("sending a sock_diag request")?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut socks = Vec::new();
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
            .context("reading sock_diag replies")?;
        if n == 0 {
            bail!("sock_diag: the dump ended without NLMSG_DONE");
        }
        let r = parse_replies(&buf[..n], seq)?;
        socks.extend(r.socks);
        if r.done {
            return Ok(socks);
        }
    }
}

/// The cookies of the UDP sockets with these inodes (a socket closed meanwhile is missing).
pub fn udp_cookies(inodes: &std::collections::BTreeSet<u64>) -> Result<BTreeMap<u64, u64>> {
    if inodes.is_empty() {
        return Ok(BTreeMap::new());
    }
    Ok(udp_sockets()?
        .into_iter()
        .filter(|s| inodes.contains(&s.inode))
        .map(|s| (s.inode, s.cookie))
        .collect())
}

/// The request for the UDP socket that would receive a datagram sent to `to` (the sender left
/// zero): sock_diag's exact lookup, which runs the kernel's socket lookup for delivery with that
/// (a socket bound to a wildcard address or to `::` counts). The kernel takes `idiag_dst`/`idiag_dport` as the
/// destination of that datagram ("src and dst are swapped for historical reasons").
pub fn receiver_request(to: std::net::SocketAddr, seq: u32) -> Vec<u8> {
    // inet_diag_sockid: sport and src (the sender's: any) stay zero
    let mut id = [0u8; SOCKID_LEN];
    id[2..4].copy_from_slice(&to.port().to_be_bytes()); // idiag_dport
    let family = match to.ip() {
        IpAddr::V4(ip) => {
            id[20..24].copy_from_slice(&ip.octets()); // idiag_dst
            libc_af(AddressFamily::Inet)
        }
        IpAddr::V6(ip) => {
            id[20..36].copy_from_slice(&ip.octets());
            libc_af(AddressFamily::Inet6)
        }
    };
    // idiag_if (36..40) zero: any; idiag_cookie INET_DIAG_NOCOOKIE
    id[40..48].copy_from_slice(&[0xff; 8]);
    udp_request(family, NLM_F_REQUEST, seq, &id)
}

/// Asks the kernel which UDP socket of this network namespace receives what is sent to an
/// address now.
pub struct ReceiverLookup {
    fd: OwnedFd,
    seq: u32,
}

impl ReceiverLookup {
    pub fn open() -> Result<ReceiverLookup> {
        let fd = diag_socket(SockFlag::SOCK_CLOEXEC)?;
        // a lookup the kernel never answered must not hold the caller (it answers at once)
        nix::sys::socket::setsockopt(
            &fd,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 200_000),
        )
        .context("SO_RCVTIMEO on the sock_diag socket")?;
        Ok(ReceiverLookup { fd, seq: 0 })
    }

    /// The socket a datagram sent to `to` from an unconnected peer would be delivered to now
    /// (None: none would take it). A socket bound to a device is not found (the lookup names
    /// none), nor a connected one.
    pub fn receiver(&mut self, to: std::net::SocketAddr) -> Result<Option<DiagSock>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        sendto(
            self.fd.as_raw_fd(),
            &receiver_request(to, seq),
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .context("sending a sock_diag lookup")?;
        let mut buf = vec![0u8; 8 * 1024];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .context("reading the sock_diag lookup's answer")?;
            match parse_replies(&buf[..n], seq) {
                Ok(r) if !r.socks.is_empty() => return Ok(r.socks.first().copied()),
                Ok(r) if r.answered => bail!("sock_diag: the lookup was answered with no socket"),
                Ok(_) => continue, // an answer to an earlier request
                Err(e)
                    if e.downcast_ref::<KernelAnswered>()
                        == Some(&KernelAnswered(nix::errno::Errno::ENOENT)) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// `SKNLGRP_INET_UDP_DESTROY` and `SKNLGRP_INET6_UDP_DESTROY` (`linux/sock_diag.h`), as the
/// bits of a netlink bind's group mask.
const UDP_DESTROY_GROUPS: u32 = 1 << (2 - 1) | 1 << (4 - 1);
/// The receive buffer asked for the destroy notices: about 25 000 of them between two reads.
const DESTROY_RCVBUF: usize = 8 << 20;

/// What one read of the destroy notices found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Destroyed {
    /// The UDP sockets destroyed since the last read (inode 0: the socket is gone).
    pub socks: Vec<DiagSock>,
    /// Notices were dropped (the receive buffer ran over): some destroyed sockets are not in
    /// `socks`, and only a full dump tells which.
    pub lost: bool,
}

/// The kernel's notices of destroyed UDP sockets in this network namespace (sock_diag's destroy
/// broadcast, Linux 4.9 and later): one `inet_diag_msg` per socket as it is freed, with its
/// local address, port and cookie. Reading them costs what changed, where a dump costs every
/// socket there is.
pub struct DestroyWatch {
    fd: OwnedFd,
}

impl DestroyWatch {
    /// Subscribe (non-blocking); notices are queued from now on.
    pub fn open() -> Result<DestroyWatch> {
        let fd = diag_socket(SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)?;
        // As large as root may make it; the default (about 200 KiB) holds a few hundred.
        let _ = nix::sys::socket::setsockopt(
            &fd,
            nix::sys::socket::sockopt::RcvBufForce,
            &DESTROY_RCVBUF,
        );
        nix::sys::socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, UDP_DESTROY_GROUPS))
            .context("subscribing to sock_diag's UDP destroy notices")?;
        Ok(DestroyWatch { fd })
    }

    /// The notices queued since the last call, at most [`DRAIN_MAX`]: past that the rest count
    /// as lost (notices arriving as fast as they are read must not keep the caller here).
    pub fn drain(&self) -> Result<Destroyed> {
        let mut out = Destroyed::default();
        let mut buf = vec![0u8; 64 * 1024];
        while out.socks.len() < DRAIN_MAX {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Ok(out),
                Ok(n) => out.socks.extend(parse_replies(&buf[..n], 0)?.socks),
                Err(nix::errno::Errno::EAGAIN) => return Ok(out),
                Err(nix::errno::Errno::ENOBUFS) => out.lost = true,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("reading sock_diag destroy notices"),
            }
        }
        out.lost = true;
        Ok(out)
    }

    /// A UDP socket opened and closed at once: its notice must come in the next drain, or
    /// notices are not coming (the kernel drops a notice it cannot build, for example without
    /// `udp_diag`, and says nothing). Returns the socket's cookie.
    pub fn canary() -> Result<u64> {
        let sock = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .context("opening a UDP socket")?;
        socket_cookie(sock.as_raw_fd()).context("SO_COOKIE")
    }
}

/// `SO_COOKIE` of the socket `fd`: what sock_diag and `bpf_get_socket_cookie()` name it by.
pub fn socket_cookie(fd: std::os::fd::RawFd) -> std::io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as nix::libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a live u64.
    let rc = unsafe {
        nix::libc::getsockopt(
            fd,
            nix::libc::SOL_SOCKET,
            nix::libc::SO_COOKIE,
            std::ptr::addr_of_mut!(cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Most notices one drain reads (about 70 ms of handling).
pub const DRAIN_MAX: usize = 65_536;

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message of `typ` with `body`, as the kernel writes it.
    fn nlmsg(typ: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR_LEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&typ.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&4242u32.to_ne_bytes());
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    /// An `inet_diag_msg` for 192.0.2.1:3478, laid out field by field.
    fn diag_msg(inode: u32, cookie: u64, uid: u32) -> Vec<u8> {
        let mut b = vec![2u8, 7, 0, 0]; // AF_INET, TCP_CLOSE (unconnected), timer, retrans
        b.extend_from_slice(&3478u16.to_be_bytes()); // sport
        b.extend_from_slice(&0u16.to_be_bytes()); // dport
        b.extend_from_slice(&[192, 0, 2, 1]);
        b.extend_from_slice(&[0; 12]); // rest of src
        b.extend_from_slice(&[0; 16]); // dst
        b.extend_from_slice(&0u32.to_ne_bytes()); // if
        b.extend_from_slice(&(cookie as u32).to_ne_bytes());
        b.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        b.extend_from_slice(&[0; 12]); // expires, rqueue, wqueue
        b.extend_from_slice(&uid.to_ne_bytes());
        b.extend_from_slice(&inode.to_ne_bytes());
        assert_eq!(b.len(), DIAG_MSG_LEN);
        b
    }

    #[test]
    fn encodes_the_dump_request() {
        let m = dump_request(10, 7);
        assert_eq!(m.len(), 72, "nlmsghdr 16 + inet_diag_req_v2 56");
        assert_eq!(u32_at(&m, 0), 72, "nlmsg_len");
        assert_eq!(&m[4..6], &20u16.to_ne_bytes(), "SOCK_DIAG_BY_FAMILY");
        assert_eq!(
            &m[6..8],
            &0x301u16.to_ne_bytes(),
            "NLM_F_REQUEST | NLM_F_DUMP"
        );
        assert_eq!(u32_at(&m, 8), 7, "seq");
        assert_eq!(u32_at(&m, 12), 0, "pid");
        assert_eq!(&m[16..20], &[10, 17, 0, 0], "AF_INET6, IPPROTO_UDP, no ext");
        assert_eq!(u32_at(&m, 20), u32::MAX, "every state");
        assert!(m[24..].iter().all(|b| *b == 0), "no socket id");
    }

    #[test]
    fn decodes_replies_cookies_and_the_end() {
        let cookie = 0x0000_0001_0000_2a2b_u64;
        let mut buf = nlmsg(20, 1, &diag_msg(197916, cookie, 0));
        buf.extend(nlmsg(20, 1, &diag_msg(197917, 5, 65534)));
        buf.extend(nlmsg(20, 9, &diag_msg(1, 1, 1))); // another request's
        let r = parse_replies(&buf, 1).unwrap();
        assert!(!r.done);
        assert_eq!(
            r.socks,
            [
                DiagSock {
                    family: 2,
                    state: 7,
                    ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                    port: 3478,
                    uid: 0,
                    inode: 197916,
                    cookie,
                },
                DiagSock {
                    family: 2,
                    state: 7,
                    ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                    port: 3478,
                    uid: 65534,
                    inode: 197917,
                    cookie: 5,
                },
            ]
        );
        let done = parse_replies(&nlmsg(3, 1, &0i32.to_ne_bytes()), 1).unwrap();
        assert!(done.done && done.socks.is_empty());
        // an error answer, and a message cut short
        let e = parse_replies(&nlmsg(2, 1, &(-22i32).to_ne_bytes()), 1).unwrap_err();
        assert!(e.to_string().contains("EINVAL"), "{e}");
        let ack = parse_replies(&nlmsg(2, 1, &0i32.to_ne_bytes()), 1).unwrap();
        assert_eq!(
            ack,
            Replies {
                answered: true,
                ..Replies::default()
            }
        );
        // another request's answer
        let other = parse_replies(&nlmsg(2, 2, &0i32.to_ne_bytes()), 1).unwrap();
        assert_eq!(other, Replies::default());
        let cut = nlmsg(20, 1, &diag_msg(1, 1, 1));
        assert!(parse_replies(&cut[..40], 1).is_err());
        // a body too short for an inet_diag_msg is skipped
        assert!(parse_replies(&nlmsg(20, 1, &[0; 8]), 1)
            .unwrap()
            .socks
            .is_empty());
    }

    /// SO_COOKIE of `sock`: what bpf_get_socket_cookie() sees for its packets.
    fn so_cookie(sock: &std::net::UdpSocket) -> u64 {
        socket_cookie(sock.as_raw_fd()).expect("SO_COOKIE")
    }

    #[test]
    fn the_kernel_tells_when_a_socket_is_destroyed() {
        let w = DestroyWatch::open().unwrap();
        let before = w.drain().unwrap();
        assert!(!before.lost);
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let kept = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (port, cookie) = (sock.local_addr().unwrap().port(), so_cookie(&sock));
        drop(sock);
        // the notice is sent from a work queue: it may take a moment
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen.extend(w.drain().unwrap().socks);
            if seen.iter().any(|s| s.cookie == cookie) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let d: Vec<&DiagSock> = seen.iter().filter(|s| s.cookie == cookie).collect();
        assert_eq!(d.len(), 1, "{seen:?}");
        assert_eq!(
            (d[0].ip, d[0].port),
            (IpAddr::V4(Ipv4Addr::LOCALHOST), port)
        );
        let kept_cookie = so_cookie(&kept);
        assert!(
            !seen.iter().any(|s| s.cookie == kept_cookie),
            "a live socket is not reported"
        );
        // the canary: a socket never bound is reported too (port 0)
        let c = DestroyWatch::canary().unwrap();
        let mut found = false;
        for _ in 0..100 {
            found |= w
                .drain()
                .unwrap()
                .socks
                .iter()
                .any(|s| s.cookie == c && s.port == 0);
            if found {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(found, "the canary's notice");
    }

    #[test]
    fn the_kernel_names_the_socket_that_receives_at_an_address() {
        let mut l = ReceiverLookup::open().unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = sock.local_addr().unwrap();
        let got = l.receiver(at).unwrap().expect("bound here");
        assert_eq!((got.cookie, got.port), (so_cookie(&sock), at.port()));
        // a wildcard socket takes what is sent to any local address on its port
        let any = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = any.local_addr().unwrap().port();
        let to = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert_eq!(
            l.receiver(to).unwrap().map(|s| s.cookie),
            Some(so_cookie(&any))
        );
        // and `::` (not IPv6-only) what is sent to IPv4 addresses too
        let dual = std::net::UdpSocket::bind("[::]:0").unwrap();
        let port6 = dual.local_addr().unwrap().port();
        let to4 = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port6));
        let to6 = std::net::SocketAddr::from((Ipv6Addr::LOCALHOST, port6));
        let v6only =
            std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|v| v.trim() == "1");
        if !v6only {
            assert_eq!(
                l.receiver(to4).unwrap().map(|s| s.cookie),
                Some(so_cookie(&dual))
            );
        }
        assert_eq!(
            l.receiver(to6).unwrap().map(|s| s.cookie),
            Some(so_cookie(&dual))
        );
        // another local address on the same port: not that socket's
        let other = std::net::SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), at.port()));
        assert_eq!(l.receiver(other).unwrap(), None);
        // closed: nothing receives there
        drop(sock);
        assert_eq!(l.receiver(at).unwrap(), None);
    }

    #[test]
    fn the_kernel_reports_a_sockets_inode_and_cookie() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", sock.as_raw_fd())).unwrap();
        let inode = crate::owners::socket_inode(link.as_os_str()).unwrap();
        let cookie = so_cookie(&sock);
        let found: Vec<DiagSock> = udp_sockets()
            .unwrap()
            .into_iter()
            .filter(|s| s.inode == inode)
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].port, found[0].cookie), (port, cookie));
        assert_eq!(found[0].ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(found[0].family, 2);
        let map = udp_cookies(&[inode, 1].into()).unwrap();
        assert_eq!(map, BTreeMap::from([(inode, cookie)]));
    }
}
