//! Crafted IPv4/UDP packets sent from a lab namespace: what a hostile client can put on the wire
//! that a plain UDP socket never sends.
//!
//! The packets are built with [`Udp4Frame`] (every header field under control, checksums computed
//! from scratch) and sent either as IP packets through a raw IP socket ([`RawIpSocket`],
//! `IPPROTO_RAW`, so `IP_HDRINCL`: the kernel routes by the destination address and fills in
//! only the IP header checksum, and the IP ID when it is 0) or as whole Ethernet frames through
//! an `AF_PACKET` socket ([`PacketSocket`], any destination MAC). [`fragment`] cuts an IP packet
//! into IPv4 fragments. Open the sockets inside the namespace they are to send from (e.g. with
//! [`crate::lab::in_ns`]); a socket stays in the namespace it was created in.
//!
//! A raw socket sends alongside an ordinary UDP socket bound to the same address and port: build
//! the packets with that socket's port and the replies reach the UDP socket, so crafted and
//! ordinary datagrams share one 5-tuple.
//!
//! ```no_run
//! use std::net::SocketAddrV4;
//! use turn_bpf_testkit::lab;
//! use turn_bpf_testkit::progtest::{UdpCheck, Udp4Frame};
//! use turn_bpf_testkit::raw::{self, RawIpSocket};
//!
//! let sock = lab::in_ns("tbt-doc-cli", || RawIpSocket::open().unwrap());
//! let src = SocketAddrV4::new(lab::CLIENT_V4, 40000);
//! let dst = SocketAddrV4::new(lab::SERVER_V4, lab::TURN_PORT);
//! let mut f = Udp4Frame::new([0; 6], [0; 6], src, dst, b"hello");
//! f.udp_check = UdpCheck::Raw(0x1234); // a wrong checksum: the receiving kernel drops it
//! sock.send(&raw::ip_packet(&f)).unwrap();
//! ```

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::progtest::{ipv4_checksum, Udp4Frame};

/// Length of an Ethernet header without VLAN tags.
pub const ETH_HLEN: usize = 14;

/// IPv4 options NOP, NOP, NOP, End of Options List: 4 bytes that change nothing (IHL 6).
pub const OPTIONS_NOP_EOL: [u8; 4] = [0x01, 0x01, 0x01, 0x00];

/// IPv4 option Router Alert (RFC 2113, type 148, length 4, value 0): IHL 6.
pub const OPTION_ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];

/// The IP packet of `frame`: the frame as built without its Ethernet header.
///
/// # Panics
/// When the frame has VLAN tags (an IP packet has no place for them).
pub fn ip_packet(frame: &Udp4Frame) -> Vec<u8> {
    assert!(frame.vlans.is_empty(), "an IP packet carries no VLAN tags");
    frame.build()[ETH_HLEN..].to_vec()
}

/// `ip` (an IPv4 packet) cut into two fragments: the first carries the first `first` bytes of
/// the IP payload (rounded down to a multiple of 8, at least 8), the second the rest. Both have
/// the original header (options included), their own total length, fragment offset, MF flag and
/// header checksum; DF is cleared.
///
/// # Panics
/// When `ip` is not a whole IPv4 packet or its payload is too short to be cut there.
pub fn fragment(ip: &[u8], first: usize) -> Vec<Vec<u8>> {
    assert!(ip.len() >= 20 && ip[0] >> 4 == 4, "not an IPv4 packet");
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert!(
        total == ip.len() && ihl >= 20 && ihl <= total,
        "inconsistent IPv4 header"
    );
    let payload = &ip[ihl..];
    let cut = (first / 8 * 8).max(8);
    assert!(
        payload.len() > cut,
        "{} payload bytes cannot be cut at {cut}",
        payload.len()
    );
    let mut out = Vec::new();
    for (off, end) in [(0, cut), (cut, payload.len())] {
        let mut f = ip[..ihl].to_vec();
        f.extend_from_slice(&payload[off..end]);
        let len = u16::try_from(f.len()).expect("a fragment fits in 16 bits");
        f[2..4].copy_from_slice(&len.to_be_bytes());
        let more = end < payload.len();
        let flags = (u16::from(more) << 13) | u16::try_from(off / 8).expect("offset fits");
        f[6..8].copy_from_slice(&flags.to_be_bytes());
        let c = ipv4_checksum(&f[..ihl]);
        f[10..12].copy_from_slice(&c.to_be_bytes());
        out.push(f);
    }
    out
}

/// `aa:bb:cc:dd:ee:ff` (as in `/sys/class/net/*/address`) as bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn last_err<T>(what: &str) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn sent(n: isize, len: usize, what: &str) -> io::Result<()> {
    if n < 0 {
        return last_err(what);
    }
    if n as usize != len {
        return Err(io::Error::other(format!("{what}: sent {n} of {len} bytes")));
    }
    Ok(())
}

/// A raw IPv4 socket that sends whole IP packets as given (`IPPROTO_RAW`: `IP_HDRINCL`, no
/// receiving). Needs `CAP_NET_RAW`.
#[derive(Debug)]
pub struct RawIpSocket {
    fd: OwnedFd,
}

impl RawIpSocket {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> io::Result<RawIpSocket> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return last_err("socket(AF_INET, SOCK_RAW, IPPROTO_RAW)");
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(RawIpSocket {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends the IPv4 packet `ip`, routed by its destination address. Fragments go out as they
    /// are (the kernel cuts nothing it is handed with `IP_HDRINCL`).
    pub fn send(&self, ip: &[u8]) -> io::Result<()> {
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return Err(io::Error::other("not an IPv4 packet"));
        }
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(dst).to_be();
        // SAFETY: buffer and address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                ip.as_ptr().cast(),
                ip.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        sent(n, ip.len(), "sendto (raw IP)")
    }
}

/// An `AF_PACKET` socket that sends whole Ethernet frames out of one interface, whatever their
/// addresses (it receives nothing). Needs `CAP_NET_RAW`.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    /// Opens the socket for interface `iface` of the calling thread's network namespace.
    pub fn open(iface: &str) -> io::Result<PacketSocket> {
        let name = std::ffi::CString::new(iface).map_err(io::Error::other)?;
        // SAFETY: name is a valid C string; if_nametoindex only reads it.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return last_err(&format!("if_nametoindex({iface})"));
        }
        // Protocol 0: the socket is bound to no protocol, so nothing is queued to it.
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return last_err("socket(AF_PACKET, SOCK_RAW)");
        }
        Ok(PacketSocket {
            // SAFETY: fd is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            ifindex: ifindex as i32,
        })
    }

    /// Sends `frame` (from its Ethernet header on) as it is.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() < ETH_HLEN {
            return Err(io::Error::other("shorter than an Ethernet header"));
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = u16::from_be_bytes([frame[12], frame[13]]).to_be();
        sa.sll_ifindex = self.ifindex;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: buffer and address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        sent(n, frame.len(), "sendto (AF_PACKET)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progtest::{verify_udp4, UdpCheck};
    use std::net::SocketAddrV4;

    fn frame(payload: &[u8]) -> Udp4Frame {
        Udp4Frame::new(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 40000),
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 3478),
            payload,
        )
    }

    #[test]
    fn ip_packet_is_the_frame_without_ethernet() {
        let f = frame(b"abc");
        let ip = ip_packet(&f);
        assert_eq!(ip.len(), 20 + 8 + 3);
        assert_eq!(ip[0], 0x45);
        assert_eq!(&ip[..], &f.build()[ETH_HLEN..]);
    }

    #[test]
    fn fragments_reassemble_to_the_original() {
        let payload: Vec<u8> = (0..100u8).collect();
        let mut f = frame(&payload);
        f.df = false;
        f.options = OPTIONS_NOP_EOL.to_vec();
        let ip = ip_packet(&f);
        let frags = fragment(&ip, 45);
        assert_eq!(frags.len(), 2);
        assert_eq!(
            frags[0].len(),
            24 + 40,
            "45 rounded down to a multiple of 8"
        );
        let mut joined = Vec::new();
        for (i, fr) in frags.iter().enumerate() {
            assert_eq!(fr[0], 0x46, "options kept");
            let len = u16::from_be_bytes([fr[2], fr[3]]);
            assert_eq!(usize::from(len), fr.len());
            let flags = u16::from_be_bytes([fr[6], fr[7]]);
            assert_eq!(flags & 0x1fff, (i * 40 / 8) as u16, "offset");
            assert_eq!(flags & 0x2000 != 0, i == 0, "MF on the first only");
            assert_eq!(flags & 0x4000, 0, "DF cleared");
            assert_eq!(
                ipv4_checksum(&fr[..24]),
                u16::from_be_bytes([fr[10], fr[11]])
            );
            joined.extend_from_slice(&fr[24..]);
        }
        assert_eq!(joined, &ip[24..]);
    }

    #[test]
    fn a_wrong_udp_checksum_is_wrong_and_a_correct_one_verifies() {
        let good = frame(b"payload");
        verify_udp4(&good.build()).unwrap();
        let mut bad = good.clone();
        bad.udp_check = UdpCheck::Raw(0x0bad);
        assert!(verify_udp4(&bad.build()).is_err());
    }

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("02:0a:ff:00:10:01\n"),
            Some([2, 10, 255, 0, 16, 1])
        );
        assert_eq!(parse_mac("02:0a:ff:00:10"), None);
        assert_eq!(parse_mac("02:0a:ff:00:10:01:02"), None);
        assert_eq!(parse_mac("zz:0a:ff:00:10:01"), None);
    }
}
