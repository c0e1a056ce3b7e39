//! Abuse and bad input, through the real programs (BPF_PROG_TEST_RUN):
//!
//! - `malformed_stun_table`: malformed and odd STUN messages, requests through XDP and responses
//!   through TC egress. Every row: the packet is passed unmodified, the committed maps do not
//!   change, the counters move exactly as listed, and a control step proves the row meant
//!   something (a malformed response leaves the real request pending, so the well-formed
//!   response still commits afterwards; a request that must not be recorded leaves nothing for
//!   the well-formed response to commit).
//! - `fuzz_*`: proptest-generated and mutated packets (bit flips, truncation, length-field
//!   edits, inserted/duplicated/dropped attributes) from real requests, responses, ChannelData
//!   and peer datagrams, checked against an independent oracle of what may be relayed.
//! - `flood_*`: 100,000 requests with random transaction IDs; committed maps shrunk and full.
//!
//! IPv6 (the same strictness, one oracle for both families):
//!
//! - `malformed_stun_table_ipv6`: the table from an IPv6 client (xdp_turn's IPv6 half, tc_snoop's).
//! - `fuzz_xdp_ipv6_mutated_packets`: IPv6 and cross-family frames (ChannelData to IPv6 and IPv4
//!   peers, IPv6 peer datagrams, IPv4 ones to IPv6 clients), mutated the generic way and in the
//!   IPv6 header: extension headers with plausible bodies (hop-by-hop, routing, destination
//!   options, fragment, ESP, AH), next header, payload length, hop limit, traffic class, flow
//!   label, zero checksum, IPv4-mapped and other addresses. Every relayed packet's checksums are
//!   checked independently (IPv4 header, UDP over IPv4 and IPv6 pseudo-headers).
//! - `fuzz_tc_ipv6_mutated_responses`: responses to an IPv6 client through tc_snoop.
//! - `fuzz_ipv6_requests_learn_only_what_was_seen`: real requests with mutated IP/UDP headers,
//!   then the server's real answer: nothing learned from a request not seen whole.
//! - `flood_random_transactions_ipv6`: 100,000 requests from random IPv6 sources.
//!
//! Run: `cargo test --release --test bpf_abuse -- --test-threads=1` (root; skipped otherwise).
//! `TBT_FUZZ_CASES=<n>` scales the fuzz phases (default 500k: IPv4 100k + 300k XDP and 100k TC;
//! IPv6 50k + 300k XDP, 100k TC and 50k requests, scaled alike). About 60 s in all on the 2-core
//! development machine (busy), most of it the two tables' program loads (fresh programs per row).

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Instant;

use anyhow::{anyhow, ensure, Context, Result};
use libbpf_rs::{MapCore, MapFlags};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use turn_bpf::maps;
use turn_bpf_testkit::progtest::*;
use turn_bpf_testkit::turn_client::{
    build_error_response, build_message, build_request, new_txid, Attr, Class, Family, TxId,
    ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMISSION, REFRESH,
};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

const C1: SocketAddrV4 = SocketAddrV4::new(CLIENT, 40000);
const C2: SocketAddrV4 = SocketAddrV4::new(CLIENT, 40001);
const R1: SocketAddrV4 = SocketAddrV4::new(RELAY, 50000);
const R2: SocketAddrV4 = SocketAddrV4::new(RELAY, 50001);
const P1: SocketAddrV4 = SocketAddrV4::new(PEER, 6000);
const P2: SocketAddrV4 = SocketAddrV4::new(PEER, 6001);
const PT: SocketAddrV4 = SocketAddrV4::new(PEER_ON_TURN0, 7000);
const MAGIC: u32 = 0x2112_A442;

/// The endpoints the malformed-STUN table runs with, one family's: two clients, their relayed
/// addresses, two peers.
struct Eps {
    c1: SocketAddr,
    c2: SocketAddr,
    r1: SocketAddr,
    r2: SocketAddr,
    p1: SocketAddr,
    p2: SocketAddr,
}

const V4: Eps = Eps {
    c1: SocketAddr::V4(C1),
    c2: SocketAddr::V4(C2),
    r1: SocketAddr::V4(R1),
    r2: SocketAddr::V4(R2),
    p1: SocketAddr::V4(P1),
    p2: SocketAddr::V4(P2),
};

const V6: Eps = Eps {
    c1: sa6(CLIENT6, 40000),
    c2: sa6(CLIENT6, 40001),
    r1: sa6(RELAY6, 50000),
    r2: sa6(RELAY6, 50001),
    p1: sa6(PEER6, 6000),
    p2: sa6(PEER6, 6001),
};

// ------------------------------------------------------------------------------------------
// Raw STUN: every byte under control.

/// One attribute: type, length, value, zero padding to 4.
fn attr(t: u16, v: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(4 + v.len() + 3);
    a.extend_from_slice(&t.to_be_bytes());
    a.extend_from_slice(&(v.len() as u16).to_be_bytes());
    a.extend_from_slice(v);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
}

/// Header (length = body length) and body.
fn raw_stun(typ: u16, txid: TxId, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + body.len());
    m.extend_from_slice(&typ.to_be_bytes());
    m.extend_from_slice(&(body.len() as u16).to_be_bytes());
    m.extend_from_slice(&MAGIC.to_be_bytes());
    m.extend_from_slice(&txid);
    m.extend_from_slice(body);
    m
}

/// An XOR-PEER-ADDRESS or XOR-RELAYED-ADDRESS value of either family (an IPv6 address is
/// XORed with the magic cookie and the transaction ID).
fn xaddr(t: TxId, a: impl Into<SocketAddr>) -> Vec<u8> {
    let a = a.into();
    let key: Vec<u8> = MAGIC.to_be_bytes().into_iter().chain(t).collect();
    let (family, ip) = match a.ip() {
        IpAddr::V4(ip) => (1, ip.octets().to_vec()),
        IpAddr::V6(ip) => (2, ip.octets().to_vec()),
    };
    let mut v = vec![0, family];
    v.extend_from_slice(&(a.port() ^ 0x2112).to_be_bytes());
    v.extend(ip.iter().zip(&key).map(|(b, k)| b ^ k));
    v
}

/// `v` less its last byte.
fn one_short(mut v: Vec<u8>) -> Vec<u8> {
    v.pop();
    v
}

fn a_chan(c: u16) -> Vec<u8> {
    attr(0x000C, &[(c >> 8) as u8, c as u8, 0, 0])
}
fn a_life(l: u32) -> Vec<u8> {
    attr(0x000D, &l.to_be_bytes())
}
fn a_peer(t: TxId, p: impl Into<SocketAddr>) -> Vec<u8> {
    attr(0x0012, &xaddr(t, p))
}
fn a_relay(t: TxId, r: impl Into<SocketAddr>) -> Vec<u8> {
    attr(0x0016, &xaddr(t, r))
}

fn set_len(m: &mut [u8], len: u16) {
    m[2..4].copy_from_slice(&len.to_be_bytes());
}

/// (offset, type, length) of each attribute of a well-formed message.
fn attrs_of(m: &[u8]) -> Vec<(usize, u16, usize)> {
    let mut out = Vec::new();
    let mut pos = 20;
    while pos + 4 <= m.len() {
        let t = u16::from_be_bytes([m[pos], m[pos + 1]]);
        let l = usize::from(u16::from_be_bytes([m[pos + 2], m[pos + 3]]));
        out.push((pos, t, l));
        pos += 4 + l.div_ceil(4) * 4;
    }
    out
}

/// CRC-32 (IEEE), for FINGERPRINT.
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Insert `extra` attributes into a signed message just before its FINGERPRINT (that is,
/// after MESSAGE-INTEGRITY), fix the length and recompute FINGERPRINT, as a client could.
fn insert_after_integrity(signed: &[u8], extra: &[u8]) -> Vec<u8> {
    let fp = attrs_of(signed)
        .into_iter()
        .find(|(_, t, _)| *t == 0x8028)
        .expect("FINGERPRINT")
        .0;
    let mut m = signed[..fp].to_vec();
    m.extend_from_slice(extra);
    let len = (m.len() + 8 - 20) as u16;
    set_len(&mut m, len);
    let crc = crc32(&m) ^ 0x5354_554e;
    m.extend_from_slice(&attr(0x8028, &crc.to_be_bytes()));
    m
}

/// A message with a valid FINGERPRINT in the middle, followed by `extra` (coturn checks a
/// FINGERPRINT wherever it is: its CRC covers what precedes it).
fn fingerprint_then(typ: u16, txid: TxId, before: &[u8], extra: &[u8]) -> Vec<u8> {
    let total = before.len() + 8 + extra.len();
    let mut m = raw_stun(typ, txid, before);
    set_len(&mut m, total as u16);
    let crc = crc32(&m) ^ 0x5354_554e;
    m.extend_from_slice(&attr(0x8028, &crc.to_be_bytes()));
    m.extend_from_slice(extra);
    m
}

// Real (signed) messages.
fn req(method: u16, txid: TxId, attrs: &[Attr]) -> Vec<u8> {
    build_request(method, txid, attrs, Some(&test_auth()))
}
fn ok(method: u16, txid: TxId, attrs: &[Attr]) -> Vec<u8> {
    build_message(Class::Success, method, txid, attrs, Some(&test_auth()))
}
fn bind_req(t: TxId, chan: u16, peer: impl Into<SocketAddr>) -> Vec<u8> {
    req(
        CHANNEL_BIND,
        t,
        &[Attr::ChannelNumber(chan), Attr::XorPeerAddress(peer.into())],
    )
}
fn alloc_req(t: TxId) -> Vec<u8> {
    req(ALLOCATE, t, &[Attr::RequestedTransport(17)])
}
fn alloc_ok(t: TxId, relay: impl Into<SocketAddr>) -> Vec<u8> {
    let relay = relay.into();
    let mapped = if relay.is_ipv4() { V4.c2 } else { V6.c2 };
    ok(
        ALLOCATE,
        t,
        &[
            Attr::XorRelayedAddress(relay),
            Attr::Lifetime(600),
            Attr::XorMappedAddress(mapped),
        ],
    )
}
fn refresh_req(t: TxId, l: u32) -> Vec<u8> {
    req(REFRESH, t, &[Attr::Lifetime(l)])
}
fn refresh_ok(t: TxId, l: u32) -> Vec<u8> {
    ok(REFRESH, t, &[Attr::Lifetime(l)])
}

// ------------------------------------------------------------------------------------------
// The malformed/odd STUN table.

/// What a request row must lead to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Req {
    /// Malformed: STUN_MALFORMED counted, nothing recorded (the client is stamped blind).
    Malformed,
    /// Longer than the recorder checks: RECORD_BLIND counted, nothing recorded.
    TooLong,
    /// Parsed but not a request we keep (unknown method, missing attributes ...).
    Ignored,
    /// Not parsed at all (not STUN-shaped).
    NotStun,
    /// Odd but legal: recorded.
    Recorded,
}

enum Row {
    /// A client's request (through XDP on turn0), and the server's success response that
    /// follows (through TC) with what that response commits.
    Request {
        name: &'static str,
        client: SocketAddr,
        msg: Vec<u8>,
        want: Req,
        response: Vec<u8>,
        commits: &'static str,
    },
    /// A real request first (recorded), then a malformed "response" through TC (which must
    /// commit nothing and count nothing), then the real response (which must commit).
    Response {
        name: &'static str,
        client: SocketAddr,
        request: Vec<u8>,
        bad: Vec<u8>,
        good: Vec<u8>,
        commits: &'static str,
    },
}

fn request_rows(e: &Eps) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut push = |name, msg: Vec<u8>, want, response: Vec<u8>, commits| {
        rows.push(Row::Request {
            name,
            client: e.c1,
            msg,
            want,
            response,
            commits,
        })
    };
    let t = new_txid;
    // A ChannelBind (channel 0x4001 to e.p1) and its success response, the base of most rows.
    let bind = |t: TxId| bind_req(t, 0x4001, e.p1);
    let bind_ok = |t: TxId| ok(CHANNEL_BIND, t, &[]);
    let raw_bind = |t: TxId, body: &[u8]| raw_stun(0x0009, t, body);
    let good_body = |x: TxId| [a_chan(0x4001), a_peer(x, e.p1)].concat();

    let x = t();
    push(
        "truncated header (12 bytes)",
        bind(x)[..12].to_vec(),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "header only, length says 8",
        {
            let mut m = raw_bind(x, &[]);
            set_len(&mut m, 8);
            m
        },
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "truncated attributes (last 8 bytes cut)",
        {
            let m = bind(x);
            m[..m.len() - 8].to_vec()
        },
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "4 bytes after the message",
        {
            let mut m = bind(x);
            m.extend_from_slice(&[0; 4]);
            m
        },
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "attribute length past the end",
        {
            let mut m = raw_bind(x, &good_body(x));
            m[22..24].copy_from_slice(&200u16.to_be_bytes());
            m
        },
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "last attribute 1 byte past the end",
        {
            let mut b = good_body(x);
            b.extend_from_slice(&attr(0x8022, b"abcd"));
            let mut m = raw_bind(x, &b);
            let n = m.len();
            m[n - 6..n - 4].copy_from_slice(&5u16.to_be_bytes());
            m
        },
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "zero-length CHANNEL-NUMBER",
        raw_bind(x, &[attr(0x000C, &[]), a_peer(x, e.p1)].concat()),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "zero-length LIFETIME in a Refresh",
        raw_stun(0x0004, x, &attr(0x000D, &[])),
        Req::Malformed,
        refresh_ok(x, 600),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "zero-length XOR-PEER-ADDRESS",
        raw_bind(x, &[a_chan(0x4001), attr(0x0012, &[])].concat()),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "zero-length unknown attribute (legal)",
        raw_bind(
            x,
            &[a_chan(0x4001), attr(0x8022, &[]), a_peer(x, e.p1)].concat(),
        ),
        Req::Recorded,
        bind_ok(x),
        "LEARN_CHANNEL",
    );
    let x = t();
    push(
        "odd-length unknown attribute, padded (legal)",
        raw_bind(x, &[attr(0x8022, b"odd"), good_body(x)].concat()),
        Req::Recorded,
        bind_ok(x),
        "LEARN_CHANNEL",
    );
    let x = t();
    push(
        "odd-length CHANNEL-NUMBER (3)",
        raw_bind(x, &[attr(0x000C, &[0x40, 1, 0]), a_peer(x, e.p1)].concat()),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "XOR-PEER-ADDRESS one byte short",
        raw_bind(
            x,
            &[a_chan(0x4001), attr(0x0012, &one_short(xaddr(x, e.p1)))].concat(),
        ),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "message length not a multiple of 4",
        {
            let mut m = raw_bind(x, &good_body(x));
            m.extend_from_slice(&[0, 0]);
            let l = (m.len() - 20) as u16;
            set_len(&mut m, l);
            m
        },
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "wrong magic cookie",
        {
            let mut m = bind(x);
            m[4] ^= 0x01;
            m
        },
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "RFC 3489 style (no cookie)",
        {
            let mut m = raw_bind(x, &good_body(x));
            m[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
            m
        },
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "type with the top bits 11 (not STUN)",
        {
            let mut m = bind(x);
            m[0] |= 0xC0;
            m
        },
        Req::NotStun,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "unknown method 0x00A",
        raw_stun(0x000A, x, &good_body(x)),
        Req::Ignored,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "unknown method 0xFFF",
        raw_stun(0x3EEF, x, &good_body(x)),
        Req::Ignored,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "ChannelBind as an indication",
        raw_stun(0x0019, x, &good_body(x)),
        Req::Ignored,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "Binding request",
        build_request(BINDING, x, &[], None),
        Req::Ignored,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "unknown comprehension-required attribute (server says 420)",
        raw_bind(x, &[attr(0x7777, &[1, 2, 3, 4]), good_body(x)].concat()),
        Req::Recorded,
        build_error_response(CHANNEL_BIND, x, 420),
        "LEARN_ERROR",
    );
    let x = t();
    push(
        "unknown comprehension-optional attributes",
        raw_bind(
            x,
            &[attr(0xC001, &[9; 12]), good_body(x), attr(0xFFFF, &[1])].concat(),
        ),
        Req::Recorded,
        bind_ok(x),
        "LEARN_CHANNEL",
    );
    let x = t();
    push(
        "CHANNEL-NUMBER twice (same value)",
        raw_bind(
            x,
            &[a_chan(0x4001), a_chan(0x4001), a_peer(x, e.p1)].concat(),
        ),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "CHANNEL-NUMBER twice (different)",
        raw_bind(
            x,
            &[a_chan(0x4001), a_peer(x, e.p1), a_chan(0x4002)].concat(),
        ),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "LIFETIME twice in a Refresh",
        raw_stun(0x0004, x, &[a_life(600), a_life(0)].concat()),
        Req::Malformed,
        refresh_ok(x, 600),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "XOR-PEER-ADDRESS twice in a ChannelBind",
        raw_bind(
            x,
            &[a_chan(0x4001), a_peer(x, e.p1), a_peer(x, e.p2)].concat(),
        ),
        Req::Ignored,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "ChannelBind without CHANNEL-NUMBER",
        raw_bind(x, &a_peer(x, e.p1)),
        Req::Ignored,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "ChannelBind without XOR-PEER-ADDRESS",
        raw_bind(x, &a_chan(0x4001)),
        Req::Ignored,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "CreatePermission without XOR-PEER-ADDRESS",
        raw_stun(0x0008, x, &attr(0x8022, b"none")),
        Req::Ignored,
        ok(CREATE_PERMISSION, x, &[]),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "XOR-PEER-ADDRESS family 3",
        raw_bind(
            x,
            &[
                a_chan(0x4001),
                attr(0x0012, &{
                    let mut v = xaddr(x, e.p1);
                    v[1] = 3;
                    v
                }),
            ]
            .concat(),
        ),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "XOR-PEER-ADDRESS of the other family's length",
        raw_bind(
            x,
            &[
                a_chan(0x4001),
                attr(0x0012, &{
                    let mut v = xaddr(x, e.p1);
                    v[1] = 3 - v[1];
                    v
                }),
            ]
            .concat(),
        ),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let filler =
        |n: usize| -> Vec<u8> { (0..n).flat_map(|i| attr(0x8022, &[i as u8; 4])).collect() };
    let x = t();
    push(
        "24 attributes (the most we walk)",
        raw_bind(x, &[good_body(x), filler(22)].concat()),
        Req::Recorded,
        bind_ok(x),
        "LEARN_CHANNEL",
    );
    let x = t();
    push(
        "25 attributes (STUN_MAX_ATTRS + 1)",
        raw_bind(x, &[good_body(x), filler(23)].concat()),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "200 attributes (longer than the recorder checks)",
        raw_bind(x, &[good_body(x), filler(198)].concat()),
        Req::TooLong,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    // ADDITIONAL-ADDRESS-FAMILY: coturn 4.6.1 numbers it 0x8032, RFC 8656 0x8000
    let x = t();
    push(
        "Allocate with 0x8032 IPv6 (coturn's ADDITIONAL-ADDRESS-FAMILY)",
        req(
            ALLOCATE,
            x,
            &[
                Attr::RequestedTransport(17),
                Attr::AdditionalAddressFamily(Family::V6),
            ],
        ),
        Req::Recorded,
        alloc_ok(x, e.r2),
        "LEARN_ALLOC",
    );
    let x = t();
    push(
        "Allocate with 0x8000 IPv6 (RFC 8656's, ignored by coturn)",
        req(
            ALLOCATE,
            x,
            &[
                Attr::RequestedTransport(17),
                Attr::Raw {
                    typ: 0x8000,
                    value: vec![2, 0, 0, 0],
                },
            ],
        ),
        Req::Recorded,
        alloc_ok(x, e.r2),
        "LEARN_ALLOC",
    );
    let x = t();
    push(
        "Allocate with 0x8032 of length 0",
        req(
            ALLOCATE,
            x,
            &[
                Attr::RequestedTransport(17),
                Attr::Raw {
                    typ: 0x8032,
                    value: vec![],
                },
            ],
        ),
        Req::Recorded,
        alloc_ok(x, e.r2),
        "LEARN_ALLOC",
    );
    let x = t();
    push(
        "Allocate with 0x8032 family 0x7f, length 7",
        req(
            ALLOCATE,
            x,
            &[
                Attr::RequestedTransport(17),
                Attr::Raw {
                    typ: 0x8032,
                    value: vec![0x7f; 7],
                },
            ],
        ),
        Req::Recorded,
        alloc_ok(x, e.r2),
        "LEARN_ALLOC",
    );
    // Attributes after MESSAGE-INTEGRITY / FINGERPRINT: coturn acts on them (it walks every
    // attribute, and for ChannelBind the last XOR-PEER-ADDRESS wins), so a request carrying
    // state-changing attributes there must not be recorded at all.
    let x = t();
    push(
        "ChannelBind: 2nd XOR-PEER-ADDRESS after MESSAGE-INTEGRITY",
        insert_after_integrity(&bind(x), &a_peer(x, e.p2)),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "ChannelBind: CHANNEL-NUMBER after MESSAGE-INTEGRITY",
        insert_after_integrity(
            &req(CHANNEL_BIND, x, &[Attr::XorPeerAddress(e.p1)]),
            &a_chan(0x4001),
        ),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "ChannelBind: 2nd XOR-PEER-ADDRESS after a mid-message FINGERPRINT",
        fingerprint_then(0x0009, x, &good_body(x), &a_peer(x, e.p2)),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "ChannelBind: peer after MESSAGE-INTEGRITY-SHA256",
        raw_bind(
            x,
            &[a_chan(0x4001), attr(0x001C, &[0; 32]), a_peer(x, e.p1)].concat(),
        ),
        Req::Malformed,
        bind_ok(x),
        "LEARN_NO_PENDING",
    );
    let x = t();
    push(
        "ChannelBind: unknown attribute after MESSAGE-INTEGRITY (legal)",
        insert_after_integrity(&bind(x), &attr(0x8022, b"sw")),
        Req::Recorded,
        bind_ok(x),
        "LEARN_CHANNEL",
    );
    rows
}

fn response_rows(e: &Eps) -> Vec<Row> {
    let mut rows = Vec::new();
    // Allocate for e.c2 (e.c1 already has an allocation): request, a bad response, the good one.
    let mut alloc = |name, bad: fn(&Eps, TxId) -> Vec<u8>| {
        let x = new_txid();
        rows.push(Row::Response {
            name,
            client: e.c2,
            request: alloc_req(x),
            bad: bad(e, x),
            good: alloc_ok(x, e.r2),
            commits: "LEARN_ALLOC",
        })
    };
    alloc("Allocate success truncated (length > payload)", |e, x| {
        let m = alloc_ok(x, e.r2);
        m[..m.len() - 12].to_vec()
    });
    alloc("Allocate success with trailing bytes", |e, x| {
        let mut m = alloc_ok(x, e.r2);
        m.extend_from_slice(&[0; 8]);
        m
    });
    alloc("Allocate success, wrong magic cookie", |e, x| {
        let mut m = alloc_ok(x, e.r2);
        m[7] ^= 0x80;
        m
    });
    alloc("Allocate success, attribute length past the end", |e, x| {
        let mut m = raw_stun(0x0103, x, &[a_relay(x, e.r2), a_life(600)].concat());
        m[22..24].copy_from_slice(&0x0400u16.to_be_bytes());
        m
    });
    alloc("Allocate success, LIFETIME twice", |e, x| {
        raw_stun(
            0x0103,
            x,
            &[a_relay(x, e.r2), a_life(600), a_life(3600)].concat(),
        )
    });
    alloc("Allocate success, zero-length LIFETIME", |e, x| {
        raw_stun(0x0103, x, &[a_relay(x, e.r2), attr(0x000D, &[])].concat())
    });
    alloc("Allocate success, three XOR-RELAYED-ADDRESS", |e, x| {
        raw_stun(
            0x0103,
            x,
            &[
                a_relay(x, e.r2),
                a_relay(x, e.r2),
                a_relay(x, e.r2),
                a_life(600),
            ]
            .concat(),
        )
    });
    alloc(
        "Allocate success, XOR-RELAYED-ADDRESS one byte short",
        |e, x| {
            raw_stun(
                0x0103,
                x,
                &[attr(0x0016, &one_short(xaddr(x, e.r2))), a_life(600)].concat(),
            )
        },
    );
    alloc(
        "Allocate success, relayed address of the other family's length",
        |e, x| {
            let mut v = xaddr(x, e.r2);
            v[1] = 3 - v[1];
            raw_stun(0x0103, x, &[attr(0x0016, &v), a_life(600)].concat())
        },
    );
    alloc("Allocate success, 25 attributes", |e, x| {
        let filler: Vec<u8> = (0..23).flat_map(|i| attr(0x8022, &[i as u8; 4])).collect();
        raw_stun(0x0103, x, &[a_relay(x, e.r2), a_life(600), filler].concat())
    });
    alloc(
        "Allocate success, message length not a multiple of 4",
        |e, x| {
            let mut m = raw_stun(0x0103, x, &[a_relay(x, e.r2), a_life(600)].concat());
            m.extend_from_slice(&[0, 0]);
            let l = (m.len() - 20) as u16;
            set_len(&mut m, l);
            m
        },
    );
    alloc(
        "Allocate success, 2nd LIFETIME after MESSAGE-INTEGRITY",
        |e, x| insert_after_integrity(&alloc_ok(x, e.r2), &a_life(3600)),
    );
    alloc(
        "Allocate success, XOR-RELAYED-ADDRESS after FINGERPRINT",
        |e, x| fingerprint_then(0x0103, x, &a_life(600), &a_relay(x, e.r2)),
    );
    alloc("Allocate 'request' sent by the server", |e, x| {
        raw_stun(0x0003, x, &[a_relay(x, e.r2), a_life(600)].concat())
    });
    alloc("Allocate success as an indication class", |e, x| {
        raw_stun(0x0013, x, &[a_relay(x, e.r2), a_life(600)].concat())
    });
    let x = new_txid();
    rows.push(Row::Response {
        name: "ChannelBind success with trailing garbage",
        client: e.c1,
        request: bind_req(x, 0x4001, e.p1),
        bad: {
            let mut m = ok(CHANNEL_BIND, x, &[]);
            m.push(0x42);
            m
        },
        good: ok(CHANNEL_BIND, x, &[]),
        commits: "LEARN_CHANNEL",
    });
    let x = new_txid();
    rows.push(Row::Response {
        name: "Refresh success, odd-length LIFETIME",
        client: e.c1,
        request: refresh_req(x, 0),
        bad: raw_stun(0x0104, x, &attr(0x000D, &[0, 0, 0])),
        good: refresh_ok(x, 0),
        commits: "LEARN_DEALLOC",
    });
    let x = new_txid();
    rows.push(Row::Response {
        name: "CreatePermission success, wrong cookie",
        client: e.c1,
        request: req(CREATE_PERMISSION, x, &[Attr::XorPeerAddress(e.p1)]),
        bad: {
            let mut m = ok(CREATE_PERMISSION, x, &[]);
            m[4] = 0;
            m
        },
        good: ok(CREATE_PERMISSION, x, &[]),
        commits: "LEARN_PERM",
    });
    rows
}

/// Run one row on fresh programs (e.c1 has an allocation on e.r1). Err explains what went wrong.
fn run_row(net: &FibNet, e: &Eps, row: &Row) -> Result<()> {
    let p = Programs::load_for_families(net, &Config::default())?;
    // The client's allocation, which most rows act on. An Allocate row starts without one: a
    // new transaction granted on a live allocation is one coturn never sends (it answers 437),
    // and the agent gives such an allocation up.
    let allocate_row = matches!(row, Row::Request { msg, .. } if msg[..2] == [0, 3]);
    if !allocate_row {
        p.learn_allocation(net, e.c1, e.r1, 600)?;
    }
    let base = p.map_counts();
    match row {
        Row::Request {
            client,
            msg,
            want,
            response,
            commits,
            ..
        } => {
            let c0 = p.counters();
            let frame = to_server(*client, msg);
            let r = p.xdp(&frame, net.turn0)?;
            ensure!(r.verdict == XDP_PASS, "verdict {}", r.verdict);
            ensure!(
                r.out == frame,
                "request modified:\n{}",
                hex_diff(&frame, &r.out)
            );
            let d = p.counters().since(&c0);
            let counters: &[(&str, u64)] = match want {
                Req::Malformed => &[("PASS_STUN", 1), ("STUN_MALFORMED", 1)],
                Req::TooLong => &[("PASS_STUN", 1), ("RECORD_BLIND", 1)],
                Req::Ignored | Req::NotStun => &[("PASS_STUN", 1)],
                Req::Recorded => &[("PASS_STUN", 1), ("PENDING_ADDED", 1)],
            };
            expect_delta(&d, counters).map_err(|e| anyhow!("request: {e}"))?;
            let m = p.map_counts();
            ensure!(
                m.committed() == base.committed(),
                "committed by a request: {m}"
            );
            let recorded = usize::from(*want == Req::Recorded);
            ensure!(m.pending == base.pending + recorded, "pending: {m}");
            // control: the server's answer commits exactly what the recorded request allows
            let c0 = p.counters();
            p.server_sends(*client, response)?;
            let d = p.counters().since(&c0);
            if *commits == "LEARN_NO_PENDING" && response_is_success(response) {
                // An answer to a request we did not record may only take state away: a grant
                // we cannot mirror leaves the allocation to the server.
                let given_up = d.get("NOT_MIRRORED");
                let dealloc = d.get("LEARN_DEALLOC");
                ensure!(given_up + dealloc <= 1, "response: {}", d.render());
                expect_delta(
                    &d,
                    &[
                        ("LEARN_NO_PENDING", 1),
                        ("NOT_MIRRORED", given_up),
                        ("LEARN_DEALLOC", dealloc),
                    ],
                )
                .map_err(|e| anyhow!("response: {e}"))?;
                let m = p.map_counts();
                ensure!(
                    m.allocs <= base.allocs
                        && m.chans <= base.chans
                        && m.peers <= base.peers
                        && m.perms <= base.perms,
                    "an unmatched answer added state: {m}"
                );
            } else {
                expect_delta(&d, &[(commits, 1)]).map_err(|e| anyhow!("response: {e}"))?;
                if matches!(*commits, "LEARN_NO_PENDING" | "LEARN_ERROR") {
                    ensure!(
                        p.map_counts().committed() == base.committed(),
                        "committed: {}",
                        p.map_counts()
                    );
                }
            }
        }
        Row::Response {
            client,
            request,
            bad,
            good,
            commits,
            ..
        } => {
            p.client_sends(net, *client, request)?;
            let pending = p.map_counts();
            let c0 = p.counters();
            let frame = from_server(*client, bad);
            let r = p.tc(&frame)?;
            ensure!(r.verdict == TC_ACT_UNSPEC, "TC verdict {:#x}", r.verdict);
            ensure!(
                r.out == frame,
                "response modified:\n{}",
                hex_diff(&frame, &r.out)
            );
            let d = p.counters().since(&c0);
            expect_delta(&d, &[]).map_err(|e| anyhow!("bad response: {e}"))?;
            ensure!(
                p.map_counts() == pending,
                "maps changed: {}",
                p.map_counts()
            );
            // control: the request is still pending and the real answer commits
            let c0 = p.counters();
            p.server_sends(*client, good)?;
            let d = p.counters().since(&c0);
            expect_delta(&d, &[(commits, 1)]).map_err(|e| anyhow!("good response: {e}"))?;
        }
    }
    Ok(())
}

/// Is this STUN message a success response (class bits 10)?
fn response_is_success(msg: &[u8]) -> bool {
    msg.len() >= 2 && u16::from_be_bytes([msg[0], msg[1]]) & 0x0110 == 0x0100
}

fn run_stun_table(ns: &str, e: &Eps) {
    let net = FibNet::new(ns).unwrap();
    let _in = net.enter().unwrap();
    let rows: Vec<Row> = request_rows(e)
        .into_iter()
        .chain(response_rows(e))
        .collect();
    let n = rows.len();
    let mut failed = Vec::new();
    for row in &rows {
        let (name, kind) = match row {
            Row::Request { name, want, .. } => (*name, format!("XDP request: {want:?}")),
            Row::Response { name, .. } => (*name, "TC response: ignored".to_string()),
        };
        match run_row(&net, e, row) {
            Ok(()) => println!("ok    {name:<66} {kind}"),
            Err(e) => {
                println!("FAIL  {name}: {e:#}");
                failed.push(name);
            }
        }
    }
    println!(
        "{n} rows, {} passed, {} failed",
        n - failed.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "failed: {failed:#?}");
}

#[test]
fn malformed_stun_table() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    run_stun_table("tbt-abuse-stun", &V4);
}

/// The same table from an IPv6 client: requests through xdp_turn's IPv6 half, responses through
/// tc_snoop's, IPv6 XOR addresses (keyed with the transaction ID) throughout.
#[test]
fn malformed_stun_table_ipv6() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    run_stun_table("tbt-abuse-stun6", &V6);
}

// ------------------------------------------------------------------------------------------
// Fuzzing: mutated packets against an independent oracle.

#[derive(Debug, Clone, Copy)]
enum LenField {
    IpTot,
    Udp,
    /// Bytes 2..4 of the UDP payload: the STUN message length or the ChannelData length.
    Stun,
    /// The length of the n-th attribute.
    Attr(usize),
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit { at: usize, bit: u8 },
    SetByte { at: usize, val: u8 },
    Truncate { keep: usize },
    Append(Vec<u8>),
    SetLen { which: LenField, val: u16 },
    AddLen { which: LenField, delta: i16 },
    InsertAttr { at: usize, typ: u16, value: Vec<u8> },
    DupAttr { idx: usize },
    DropAttr { idx: usize },
}

/// After the mutations: leave the frame as it is, or make IP/UDP lengths (and checksums)
/// consistent again so the deeper checks get exercised.
#[derive(Debug, Clone, Copy)]
enum Fixup {
    None,
    Lengths,
    LengthsAndChecksums,
}

/// Where a frame's IP length field, UDP header and UDP payload are, by its ethertype (IPv6, or
/// else IPv4), for a header without options or extension headers.
#[derive(Clone, Copy)]
struct Layout {
    ip_len: usize,
    udp: usize,
    payload: usize,
}

fn layout(f: &[u8]) -> Layout {
    if f.get(12..14) == Some(&[0x86, 0xdd]) {
        Layout {
            ip_len: 18,
            udp: 54,
            payload: 62,
        }
    } else {
        Layout {
            ip_len: 16,
            udp: 34,
            payload: 42,
        }
    }
}

fn u16_at(f: &[u8], at: usize) -> Option<u16> {
    f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

fn put_u16(f: &mut [u8], at: usize, v: u16) {
    if let Some(b) = f.get_mut(at..at + 2) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

fn len_field_offset(f: &[u8], which: LenField) -> Option<usize> {
    let l = layout(f);
    Some(match which {
        LenField::IpTot => l.ip_len,
        LenField::Udp => l.udp + 4,
        LenField::Stun => l.payload + 2,
        LenField::Attr(n) => {
            let m = f.get(l.payload..)?;
            let a = attrs_of(m);
            if a.is_empty() {
                return None;
            }
            l.payload + a[n % a.len()].0 + 2
        }
    })
}

/// Apply `op` to the STUN message in the UDP payload (if there is one) and fix its length.
fn edit_attrs(f: &mut Vec<u8>, op: impl FnOnce(&mut Vec<u8>, &[(usize, u16, usize)])) {
    let at = layout(f).payload;
    if f.len() < at + 20 {
        return;
    }
    let mut m = f[at..].to_vec();
    let a = attrs_of(&m);
    op(&mut m, &a);
    let l = (m.len() - 20) as u16;
    set_len(&mut m, l);
    f.truncate(at);
    f.extend_from_slice(&m);
}

fn apply(frame: &[u8], muts: &[Mutation], fix: Fixup) -> Vec<u8> {
    let f = mutate(frame, muts);
    fix_up(f, fix)
}

/// The mutations alone (no fixup).
fn mutate(frame: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut f = frame.to_vec();
    for m in muts {
        let n = f.len();
        match m {
            Mutation::FlipBit { at, bit } => f[at % n] ^= 1 << bit,
            Mutation::SetByte { at, val } => f[at % n] = *val,
            // keep at least the Ethernet header: BPF_PROG_TEST_RUN refuses less
            Mutation::Truncate { keep } => f.truncate(14 + keep % (n - 13)),
            Mutation::Append(b) => f.extend_from_slice(b),
            Mutation::SetLen { which, val } => {
                if let Some(o) = len_field_offset(&f, *which) {
                    put_u16(&mut f, o, *val);
                }
            }
            Mutation::AddLen { which, delta } => {
                if let Some(o) = len_field_offset(&f, *which) {
                    if let Some(v) = u16_at(&f, o) {
                        put_u16(&mut f, o, v.wrapping_add_signed(*delta));
                    }
                }
            }
            Mutation::InsertAttr { at, typ, value } => edit_attrs(&mut f, |m, a| {
                let pos = if a.is_empty() {
                    m.len()
                } else {
                    a[at % a.len()].0
                };
                let pos = pos.min(m.len());
                let new = attr(*typ, value);
                m.splice(pos..pos, new);
            }),
            Mutation::DupAttr { idx } => edit_attrs(&mut f, |m, a| {
                if let Some(&(o, _, l)) = a.get(idx % a.len().max(1)) {
                    let end = (o + 4 + l.div_ceil(4) * 4).min(m.len());
                    let copy = m[o..end].to_vec();
                    m.splice(end..end, copy);
                }
            }),
            Mutation::DropAttr { idx } => edit_attrs(&mut f, |m, a| {
                if let Some(&(o, _, l)) = a.get(idx % a.len().max(1)) {
                    let end = (o + 4 + l.div_ceil(4) * 4).min(m.len());
                    m.drain(o..end);
                }
            }),
        }
    }
    f
}

/// Make the lengths (and checksums) consistent again, as `fix` says: IPv4 without options, or
/// IPv6 whose next header is UDP.
fn fix_up(mut f: Vec<u8>, fix: Fixup) -> Vec<u8> {
    // (a non-frags XDP program never sees more in one frame; see XDP_MAX_LINEAR_FRAME)
    f.truncate(XDP_MAX_LINEAR_FRAME);
    if !matches!(fix, Fixup::None) && f.len() >= 62 && f[12..14] == [0x86, 0xdd] && f[20] == 17 {
        let len = (f.len() - 54) as u16;
        put_u16(&mut f, 18, len);
        put_u16(&mut f, 58, len);
        if matches!(fix, Fixup::LengthsAndChecksums) && f[60..62] != [0, 0] {
            let (src, dst) = v6_addrs(&f);
            let c = udp6_checksum(src, dst, &f[54..]);
            put_u16(&mut f, 60, c);
        }
    }
    if !matches!(fix, Fixup::None) && f.len() >= 42 && f[12..14] == [0x08, 0x00] {
        let tot = (f.len() - 14) as u16;
        put_u16(&mut f, 16, tot);
        put_u16(&mut f, 38, tot.wrapping_sub(20));
        if matches!(fix, Fixup::LengthsAndChecksums) && (f[14] & 0x0f) == 5 {
            let c = ipv4_checksum(&f[14..34]);
            put_u16(&mut f, 24, c);
            if f[40..42] != [0, 0] {
                let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
                let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
                let c = udp4_checksum(src, dst, &f[34..]);
                put_u16(&mut f, 40, c);
            }
        }
    }
    f
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let len_field = prop_oneof![
        Just(LenField::IpTot),
        Just(LenField::Udp),
        Just(LenField::Stun),
        any::<usize>().prop_map(LenField::Attr),
    ];
    let attr_type = prop_oneof![
        Just(0x000Cu16),
        Just(0x000D),
        Just(0x0012),
        Just(0x0016),
        Just(0x0017),
        Just(0x8032),
        Just(0x8000),
        Just(0x0008),
        Just(0x001C),
        Just(0x8028),
        any::<u16>(),
    ];
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, val)| Mutation::SetByte { at, val }),
        1 => any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
        1 => vec(any::<u8>(), 1..40).prop_map(Mutation::Append),
        2 => (len_field.clone(), any::<u16>()).prop_map(|(which, val)| Mutation::SetLen { which, val }),
        3 => (len_field, -8i16..=8).prop_map(|(which, delta)| Mutation::AddLen { which, delta }),
        3 => (any::<usize>(), attr_type, vec(any::<u8>(), 0..24))
            .prop_map(|(at, typ, value)| Mutation::InsertAttr { at, typ, value }),
        1 => any::<usize>().prop_map(|idx| Mutation::DupAttr { idx }),
        1 => any::<usize>().prop_map(|idx| Mutation::DropAttr { idx }),
    ]
}

fn fixup() -> impl Strategy<Value = Fixup> {
    prop_oneof![
        2 => Just(Fixup::None),
        1 => Just(Fixup::Lengths),
        3 => Just(Fixup::LengthsAndChecksums),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dev {
    Turn0,
    Relay0,
}

/// The channels installed for the oracle phase: (client, relay, peer, channel, egress MTU).
const BOUND: [(SocketAddrV4, SocketAddrV4, SocketAddrV4, u16); 2] =
    [(C1, R1, P1, 0x4000), (C2, R2, PT, 0x4001)];

/// What the fast path must do with `f` arriving on `dev`, derived from the frame alone.
#[derive(Debug)]
enum Expect {
    Pass,
    Relay {
        verdict: u32,
        /// The expected frame; its UDP checksum field is checked separately.
        out: Vec<u8>,
    },
}

fn oracle(f: &[u8], _ingress: Dev, bound: bool) -> Expect {
    if !bound || f.len() < 42 || f[12..14] != [0x08, 0x00] {
        return Expect::Pass;
    }
    let ip = &f[14..];
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    if ip[0] != 0x45 || ip[9] != 17 || frag != 0 {
        return Expect::Pass;
    }
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let udp_len = usize::from(u16::from_be_bytes([ip[24], ip[25]]));
    if tot < 28 || 14 + tot > f.len() || udp_len != tot - 20 {
        return Expect::Pass;
    }
    let ttl = ip[8];
    let src = SocketAddrV4::new(
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        u16::from_be_bytes([ip[20], ip[21]]),
    );
    let dst = SocketAddrV4::new(
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        u16::from_be_bytes([ip[22], ip[23]]),
    );
    let payload = &f[42..14 + tot];
    // a checksum field holding just the folded pseudo-header sum is one the kernel left for the
    // device to finish (CHECKSUM_PARTIAL): passed, whatever the rest says
    let mut pseudo: u32 = 17 + udp_len as u32;
    for w in ip[12..20].chunks(2) {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while pseudo > 0xffff {
        pseudo = (pseudo & 0xffff) + (pseudo >> 16);
    }
    // ... unless its complete checksum happens to have that value (1 in 65,535), which the fast
    // path tells by summing the datagram whole when it holds at most 1,280 bytes of data
    let partial = u16::from_be_bytes([ip[26], ip[27]]) == pseudo as u16
        && !(udp_len - 8 <= 1280 && udp_residue_any(f) == 0);
    let build =
        |eth_src: [u8; 6], eth_dst: [u8; 6], from: SocketAddrV4, to: SocketAddrV4, data: &[u8]| {
            let mut o = Udp4Frame::new(eth_src, eth_dst, from, to, data);
            o.tos = ip[1];
            o.id = u16::from_be_bytes([ip[4], ip[5]]);
            o.df = ip[6] & 0x40 != 0;
            o.ttl = ttl.wrapping_sub(1);
            o.udp_check = UdpCheck::Raw(0);
            let mut b = o.build();
            // the flags word is copied whole, reserved bit included (as forwarding does)
            b[20] = (b[20] & 0x1f) | (ip[6] & 0xe0);
            let c = ipv4_checksum(&b[14..34]);
            b[24..26].copy_from_slice(&c.to_be_bytes());
            b
        };
    if dst.port() == TURN_PORT {
        if payload.is_empty() || payload[0] & 0xC0 != 0x40 || payload.len() < 4 {
            return Expect::Pass;
        }
        let chan = u16::from_be_bytes([payload[0], payload[1]]);
        let dlen = usize::from(u16::from_be_bytes([payload[2], payload[3]]));
        if dlen == 0 || dlen > 16384 || 4 + dlen > payload.len() || payload.len() - 4 - dlen > 3 {
            return Expect::Pass;
        }
        let Some(&(_, relay, peer, _)) = BOUND
            .iter()
            .find(|(c, _, _, ch)| *c == src && dst == SERVER_EP && *ch == chan)
        else {
            return Expect::Pass;
        };
        if ttl <= 1 || partial {
            return Expect::Pass;
        }
        let (peer_mac, egress, mtu) = if *peer.ip() == PEER_ON_TURN0 {
            (PEER_ON_TURN0_MAC, Dev::Turn0, TURN0_MTU)
        } else {
            (PEER_MAC, Dev::Relay0, RELAY0_MTU)
        };
        if 28 + dlen > usize::from(mtu) {
            return Expect::Pass;
        }
        let egress_mac = if egress == Dev::Turn0 {
            TURN0_MAC
        } else {
            RELAY0_MAC
        };
        return Expect::Relay {
            verdict: XDP_REDIRECT, // also out of the interface it came in on (fwd.h)
            out: build(egress_mac, peer_mac, relay, peer, &payload[4..4 + dlen]),
        };
    }
    if let Some(&(client, relay, _, chan)) =
        BOUND.iter().find(|(_, r, p, _)| *p == src && *r == dst)
    {
        if payload.is_empty() || ttl <= 1 || partial || 32 + payload.len() > usize::from(TURN0_MTU)
        {
            return Expect::Pass;
        }
        let _ = relay;
        return Expect::Relay {
            verdict: XDP_REDIRECT, // also out of the interface it came in on (fwd.h)
            out: build(
                TURN0_MAC,
                CLIENT_MAC,
                SERVER_EP,
                client,
                &channel_data(chan, payload, 0, 0),
            ),
        };
    }
    Expect::Pass
}

/// The one's complement sum (mod 0xffff, 0xffff as 0) of a frame's IPv4 header, checksum field
/// included: 0 for a valid header, and what an incremental update must preserve.
fn ip_residue(f: &[u8]) -> u16 {
    match ones_sum(&f[14..34]) {
        0xffff => 0,
        s => s,
    }
}

/// The one's complement sum (mod 0xffff, 0xffff as 0) of a frame's pseudo-header and UDP
/// datagram, checksum field included: what an incremental rewrite must preserve.
fn udp_residue(f: &[u8]) -> u16 {
    let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
    let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    match udp4_sum(src, dst, &f[34..14 + tot]) {
        0xffff => 0,
        s => s,
    }
}

struct Seed {
    name: &'static str,
    frame: Vec<u8>,
    dev: Dev,
}

fn client_seeds() -> Vec<Seed> {
    let mut s = Vec::new();
    let cd = |c: SocketAddrV4, chan: u16, len: usize, pad: usize| {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 + 7) as u8).collect();
        to_server(c, &channel_data(chan, &data, pad, 0x5a))
    };
    for (len, pad) in [
        (1, 0),
        (1, 3),
        (7, 1),
        (64, 0),
        (100, 2),
        (1172, 0),
        (1173, 0),
    ] {
        s.push(Seed {
            name: "ChannelData A",
            frame: cd(C1, 0x4000, len, pad),
            dev: Dev::Turn0,
        });
    }
    s.push(Seed {
        name: "ChannelData T",
        frame: cd(C2, 0x4001, 300, 1),
        dev: Dev::Turn0,
    });
    s.push(Seed {
        name: "ChannelData unbound",
        frame: cd(C1, 0x4abc, 40, 0),
        dev: Dev::Turn0,
    });
    s.push(Seed {
        name: "ChannelData A, checksum 0",
        frame: {
            let mut f = Udp4Frame::new(
                CLIENT_MAC,
                TURN0_MAC,
                C1,
                SERVER_EP,
                &channel_data(0x4000, &[1; 33], 3, 0),
            );
            f.udp_check = UdpCheck::Zero;
            f.build()
        },
        dev: Dev::Turn0,
    });
    let t = new_txid;
    for (name, m) in [
        (
            "Allocate",
            req(
                ALLOCATE,
                t(),
                &[Attr::RequestedTransport(17), Attr::Lifetime(600)],
            ),
        ),
        (
            "Allocate dual",
            req(
                ALLOCATE,
                t(),
                &[
                    Attr::RequestedTransport(17),
                    Attr::AdditionalAddressFamily(Family::V6),
                ],
            ),
        ),
        ("ChannelBind", bind_req(t(), 0x4000, P1)),
        (
            "CreatePermission",
            req(
                CREATE_PERMISSION,
                t(),
                &[
                    Attr::XorPeerAddress(P1.into()),
                    Attr::XorPeerAddress(P2.into()),
                ],
            ),
        ),
        ("Refresh", refresh_req(t(), 600)),
        ("Refresh 0", refresh_req(t(), 0)),
        ("Binding", build_request(BINDING, t(), &[], None)),
        ("forged Allocate success", alloc_ok(t(), R1)),
        ("forged ChannelBind success", ok(CHANNEL_BIND, t(), &[])),
        ("raw ChannelBind", {
            let x = t();
            raw_stun(0x0009, x, &[a_chan(0x4000), a_peer(x, P1)].concat())
        }),
    ] {
        s.push(Seed {
            name,
            frame: to_server(C1, &m),
            dev: Dev::Turn0,
        });
    }
    s
}

fn peer_seeds() -> Vec<Seed> {
    let mut s = Vec::new();
    for len in [1usize, 2, 100, 1172] {
        let data: Vec<u8> = (0..len).map(|i| (i * 3) as u8).collect();
        s.push(Seed {
            name: "peer A",
            frame: udp4(PEER_MAC, RELAY0_MAC, P1, R1, 64, &data),
            dev: Dev::Relay0,
        });
    }
    s.push(Seed {
        name: "peer A, checksum 0",
        frame: {
            let mut f = Udp4Frame::new(PEER_MAC, RELAY0_MAC, P1, R1, &[7; 50]);
            f.udp_check = UdpCheck::Zero;
            f.build()
        },
        dev: Dev::Relay0,
    });
    s.push(Seed {
        name: "peer T",
        frame: udp4(PEER_ON_TURN0_MAC, TURN0_MAC, PT, R2, 64, &[9; 1468]),
        dev: Dev::Turn0,
    });
    s.push(Seed {
        name: "unbound peer",
        frame: udp4(PEER_MAC, RELAY0_MAC, P2, R1, 64, &[1; 20]),
        dev: Dev::Relay0,
    });
    s
}

/// Responses (server -> C1) with the requests that make them commit.
fn server_seeds() -> Vec<(Vec<u8>, Vec<u8>)> {
    let t = new_txid;
    let (a, b, c, d, e, f, g) = (t(), t(), t(), t(), t(), t(), t());
    vec![
        (alloc_req(a), alloc_ok(a, R1)),
        (
            req(
                ALLOCATE,
                b,
                &[
                    Attr::RequestedTransport(17),
                    Attr::AdditionalAddressFamily(Family::V6),
                ],
            ),
            ok(
                ALLOCATE,
                b,
                &[
                    Attr::XorRelayedAddress(R1.into()),
                    Attr::XorRelayedAddress("[2001:db8:2::1]:50002".parse().unwrap()),
                    Attr::Lifetime(600),
                ],
            ),
        ),
        (bind_req(c, 0x4000, P1), ok(CHANNEL_BIND, c, &[])),
        (
            req(
                CREATE_PERMISSION,
                d,
                &[
                    Attr::XorPeerAddress(P1.into()),
                    Attr::XorPeerAddress(P2.into()),
                ],
            ),
            ok(CREATE_PERMISSION, d, &[]),
        ),
        (refresh_req(e, 600), refresh_ok(e, 600)),
        (refresh_req(f, 0), refresh_ok(f, 0)),
        (
            bind_req(g, 0x4002, P2),
            build_error_response(CHANNEL_BIND, g, 403),
        ),
    ]
}

fn cases(default: u32) -> u32 {
    let scale: f64 = std::env::var("TBT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(1.0, |n| n / 500_000.0);
    ((f64::from(default) * scale) as u32).max(1)
}

fn pt_config(n: u32) -> PtConfig {
    PtConfig {
        cases: n,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..PtConfig::default()
    }
}

/// XDP only, with nothing installed: every packet is passed unmodified and nothing is ever
/// committed; then the same with two channels installed, every verdict and every relayed byte
/// checked against the oracle, and the committed maps unchanged.
#[test]
fn fuzz_xdp_mutated_packets() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let net = FibNet::new("tbt-abuse-fuzz-xdp").unwrap();
    let _in = net.enter().unwrap();
    let seeds: Vec<Seed> = client_seeds().into_iter().chain(peer_seeds()).collect();
    let strategy = (0..seeds.len(), vec(mutation(), 0..5), fixup());
    let t0 = Instant::now();
    let mut total = 0u64;

    for bound in [false, true] {
        let p = Programs::load_for(&net, &Config::default()).unwrap();
        if bound {
            for (c, r, peer, ch) in BOUND {
                p.install_channel(c, r, peer, ch, 3600).unwrap();
            }
        }
        let before = p.map_counts();
        let c0 = p.counters();
        let tried = Cell::new(0u64);
        let relayed = Cell::new(0u64);
        let bad_ip_csum = Cell::new(0u64);
        let n = cases(if bound { 300_000 } else { 100_000 });
        let mut runner = TestRunner::new(pt_config(n));
        let result = runner.run(&strategy, |(i, muts, fix)| {
            let seed = &seeds[i];
            let frame = apply(&seed.frame, &muts, fix);
            let ifindex = if seed.dev == Dev::Turn0 {
                net.turn0
            } else {
                net.relay0
            };
            let r = p
                .xdp(&frame, ifindex)
                .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            tried.set(tried.get() + 1);
            match oracle(&frame, seed.dev, bound) {
                Expect::Pass => {
                    prop_assert_eq!(r.verdict, XDP_PASS, "seed {}: not passed", seed.name);
                    prop_assert!(
                        r.out == frame,
                        "seed {}: passed frame modified\n{}",
                        seed.name,
                        hex_diff(&frame, &r.out)
                    );
                }
                Expect::Relay { verdict, out } => {
                    relayed.set(relayed.get() + 1);
                    if ipv4_checksum(&frame[14..34]) != u16::from_be_bytes([frame[24], frame[25]]) {
                        // a bad header checksum travels on (checked below): its receiver drops it
                        bad_ip_csum.set(bad_ip_csum.get() + 1);
                    }
                    prop_assert_eq!(r.verdict, verdict, "seed {}: verdict", seed.name);
                    let mut got = r.out.clone();
                    prop_assert_eq!(got.len(), out.len(), "seed {}: length", seed.name);
                    let check = [got[40], got[41]];
                    got[40] = 0;
                    got[41] = 0;
                    // checksums are compared by residue below, not byte for byte
                    got[24] = 0;
                    got[25] = 0;
                    let mut out = out.clone();
                    out[24] = 0;
                    out[25] = 0;
                    prop_assert!(
                        got == out,
                        "seed {}: relayed bytes\n{}",
                        seed.name,
                        hex_diff(&out, &got)
                    );
                    let in_check = [frame[40], frame[41]];
                    if in_check == [0, 0] {
                        prop_assert_eq!(check, [0, 0], "checksum 0 must stay 0");
                    } else {
                        prop_assert!(check != [0, 0], "a computed 0 must be sent as 0xFFFF");
                        prop_assert_eq!(
                            udp_residue(&r.out),
                            udp_residue(&frame),
                            "the UDP checksum must carry the input's residue unchanged"
                        );
                    }
                    // The IP header checksum is updated incrementally: a valid one stays valid,
                    // a wrong one stays wrong by the same amount.
                    prop_assert_eq!(
                        ip_residue(&r.out),
                        ip_residue(&frame),
                        "the IP header checksum must carry the input's residue unchanged"
                    );
                }
            }
            // A request the recorder took whole may take state away when it is recorded (a
            // Refresh with a short LIFETIME, a CreatePermission): the oracle knows only the
            // installed bindings, so put them back after any STUN message to the TURN port.
            let stun_to_turn = frame.len() > 42
                && u16::from_be_bytes([frame[36], frame[37]]) == TURN_PORT
                && frame[42] & 0xC0 == 0;
            if bound && stun_to_turn {
                for (c, r, peer, ch) in BOUND {
                    p.install_channel(c, r, peer, ch, 3600)
                        .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                }
            }
            Ok(())
        });
        let d = p.counters().since(&c0);
        let after = p.map_counts();
        total += tried.get();
        println!(
            "fuzz XDP ({}): {} packets tried, {} relayed ({} of them with a bad IPv4 header \
             checksum, passed on just as bad), maps at end: {after}\n{}",
            if bound {
                "2 channels installed"
            } else {
                "nothing installed"
            },
            tried.get(),
            relayed.get(),
            bad_ip_csum.get(),
            d.render()
        );
        if let Err(e) = result {
            panic!("{e}");
        }
        assert_eq!(
            after.committed(),
            before.committed(),
            "client-side packets committed state"
        );
        for c in [
            "LEARN_ALLOC",
            "LEARN_REFRESH",
            "LEARN_DEALLOC",
            "LEARN_PERM",
            "LEARN_CHANNEL",
            "STATE_FULL",
            "ABORTED",
        ] {
            assert_eq!(d.get(c), 0, "{c} moved with XDP alone");
        }
        if !bound {
            assert_eq!(after.committed(), (0, 0, 0, 0));
            assert_eq!(d.get("RELAYED_TO_PEER") + d.get("RELAYED_TO_CLIENT"), 0);
        }
    }
    println!(
        "fuzz XDP: {total} packets in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Mutated server responses through TC (each after its real request through XDP): TC never
/// changes or drops a packet, and whatever gets committed has a local relayed address.
#[test]
fn fuzz_tc_mutated_responses() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let net = FibNet::new("tbt-abuse-fuzz-tc").unwrap();
    let _in = net.enter().unwrap();
    let p = Programs::load_for(&net, &Config::default()).unwrap();
    let seeds: Vec<(Vec<u8>, Vec<u8>)> = server_seeds()
        .into_iter()
        .map(|(q, r)| (to_server(C1, &q), from_server(C1, &r)))
        .collect();
    let strategy = (
        0..seeds.len(),
        vec(mutation(), 0..5),
        fixup(),
        any::<bool>(),
    );
    let t0 = Instant::now();
    let c0 = p.counters();
    let tried = Cell::new(0u64);
    let mut runner = TestRunner::new(pt_config(cases(100_000)));
    let result = runner.run(&strategy, |(i, muts, fix, relearn)| {
        let (q, resp) = &seeds[i];
        if relearn {
            // keep an allocation around so ChannelBind/CreatePermission can commit
            p.learn_allocation(&net, C1, R1, 600)
                .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            tried.set(tried.get() + 2);
        }
        let r = p
            .xdp(q, net.turn0)
            .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        prop_assert_eq!(r.verdict, XDP_PASS);
        prop_assert!(r.out == *q);
        let frame = apply(resp, &muts, fix);
        // BPF_PROG_TEST_RUN (tc) refuses an IPv4/IPv6 frame without a whole IP header: such an
        // skb never reaches TC egress
        let runt = match frame[12..14] {
            [0x08, 0x00] => frame.len() < 34,
            [0x86, 0xdd] => frame.len() < 54,
            _ => false,
        };
        if runt {
            return Ok(());
        }
        let l0 = learned_total(&p);
        let r = p
            .tc(&frame)
            .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        tried.set(tried.get() + 2);
        // a response tc_snoop cannot read (options, fragment, lengths) commits nothing
        if !response_readable(&frame) {
            prop_assert_eq!(learned_total(&p), l0, "an unreadable response committed");
        }
        prop_assert_eq!(r.verdict, TC_ACT_UNSPEC, "TC verdict");
        prop_assert!(
            r.out == frame,
            "TC modified a packet\n{}",
            hex_diff(&frame, &r.out)
        );
        Ok(())
    });
    let d = p.counters().since(&c0);
    println!(
        "fuzz TC: {} packets tried in {:.1} s, maps at end: {}\n{}",
        tried.get(),
        t0.elapsed().as_secs_f64(),
        p.map_counts(),
        d.render()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(d.get("ABORTED"), 0);
    // every committed allocation's relayed addresses are local (SERVER and RELAY here)
    for k in p.skel.maps.allocs.keys() {
        let v = p
            .skel
            .maps
            .allocs
            .lookup(&k, MapFlags::ANY)
            .unwrap()
            .unwrap();
        let a: turn_bpf::skel::types::tb_alloc = maps::from_bytes(&v);
        for r in &a.relay {
            if let Some(s) = maps::sockaddr(r) {
                let local = [SERVER.into(), RELAY.into()];
                assert!(
                    local.contains(&s.ip()),
                    "non-local relayed address committed: {s}"
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Floods and full maps.

/// 100,000 requests with random transaction IDs through XDP: the pending map stays within its
/// bound, a binding learned before still relays, and learning still works afterwards.
#[test]
fn flood_random_transactions() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let net = FibNet::new("tbt-abuse-flood").unwrap();
    let _in = net.enter().unwrap();
    let p = Programs::load_for(&net, &Config::default()).unwrap();
    let bound = p.skel.maps.pending.max_entries() as usize;
    p.learn_allocation(&net, C1, R1, 600).unwrap();
    p.learn_channel(&net, C1, P1, 0x4001).unwrap();
    p.expect_chan4_to_udp4(&net, C1, 0x4001, R1, P1, b"before")
        .unwrap();
    // a legitimate request in flight when the flood starts
    let early = new_txid();
    p.client_sends(&net, C2, &alloc_req(early)).unwrap();

    let t0 = Instant::now();
    let c0 = p.counters();
    let n = 100_000u32;
    let mut max_pending = 0;
    let mut rng = proptest::test_runner::TestRng::deterministic_rng(
        proptest::test_runner::RngAlgorithm::ChaCha,
    );
    for i in 0..n {
        let mut txid = [0u8; 12];
        rng.fill_bytes(&mut txid);
        let port = 1024 + (rng.next_u32() % 60000) as u16;
        let client = if i % 10 == 0 {
            C1
        } else {
            SocketAddrV4::new(CLIENT, port)
        };
        let msg = match i % 4 {
            0 => alloc_req(txid),
            1 => bind_req(txid, 0x4000 + (i % 0x3fff) as u16, P2),
            2 => raw_stun(0x0008, txid, &[a_peer(txid, P1), a_peer(txid, P2)].concat()),
            _ => raw_stun(0x0004, txid, &a_life(600)),
        };
        let frame = to_server(client, &msg);
        let r = p.xdp(&frame, net.turn0).unwrap();
        assert_eq!(r.verdict, XDP_PASS);
        assert!(r.out == frame, "flood packet {i} modified");
        if i % 10_000 == 9_999 {
            let m = p.map_counts();
            max_pending = max_pending.max(m.pending);
            assert!(m.pending <= bound, "pending {} > bound {bound}", m.pending);
            assert_eq!(
                m.committed(),
                (1, 1, 1, 1),
                "the flood committed state: {m}"
            );
        }
    }
    let elapsed = t0.elapsed();
    let d = p.counters().since(&c0);
    assert_eq!(d.get("PASS_STUN"), u64::from(n));
    assert_eq!(d.get("STUN_MALFORMED"), 0);
    for c in [
        "LEARN_ALLOC",
        "LEARN_CHANNEL",
        "LEARN_PERM",
        "LEARN_REFRESH",
        "STATE_FULL",
    ] {
        assert_eq!(d.get(c), 0, "{c}");
    }
    // the binding learned before still relays both ways
    p.expect_chan4_to_udp4(&net, C1, 0x4001, R1, P1, b"after the flood")
        .unwrap();
    p.expect_udp4_to_chan4(&net, P1, R1, C1, 0x4001, b"after the flood")
        .unwrap();
    // The table is never evicted: once it is full, requests are not recorded and their client
    // is blind. The request in flight before the flood is still there, but its client (the
    // flood's address) went blind after it: its answer commits nothing.
    assert!(d.get("RECORD_FULL") > 0, "the flood filled the table");
    let c1 = p.counters();
    p.server_sends(C2, &alloc_ok(early, R2)).unwrap();
    let e = p.counters().since(&c1);
    assert_eq!(e.get("LEARN_STALE"), 1, "{}", e.render());
    assert_eq!(e.get("LEARN_ALLOC"), 0);
    let early_fate = "kept, answer stale (its client went blind)";
    // Learning goes on once the loader has removed the requests past any answer (twice the
    // pending lifetime) and the blind spot lies a pending lifetime behind.
    std::thread::sleep(PAST_BLIND * 2);
    let removed = p.remove_pending_older_than(PAST_BLIND * 2);
    assert!(removed > 0);
    let c3 = SocketAddrV4::new(CLIENT, 40002);
    let r3 = SocketAddrV4::new(RELAY, 50002);
    p.learn_allocation(&net, c3, r3, 600).unwrap();
    p.learn_channel(&net, c3, P2, 0x4002).unwrap();
    p.expect_chan4_to_udp4(&net, c3, 0x4002, r3, P2, b"new")
        .unwrap();
    let m = p.map_counts();
    println!(
        "flood: {n} requests in {:.2} s ({:.0} k/s); pending bound {bound}, max seen {max_pending}; \
         request in flight before the flood: {early_fate}; maps at end: {m}\n{}",
        elapsed.as_secs_f64(),
        f64::from(n) / elapsed.as_secs_f64() / 1000.0,
        d.render()
    );
    assert!(m.pending <= bound);
}

/// Committed maps shrunk (allocs 4, channels 4, permissions 6) and filled through real
/// exchanges: further grants are counted STATE_FULL and leave no partial state, refreshes of
/// what is there still work, and every existing channel keeps relaying.
#[test]
fn flood_full_state_maps() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let net = FibNet::new("tbt-abuse-full").unwrap();
    let _in = net.enter().unwrap();
    let cfg = Config {
        limits: MapLimits {
            allocs: Some(4),
            chans: Some(4),
            perms: Some(6),
            pending: Some(64),
        },
        ..Config::default()
    };
    let p = Programs::load_for(&net, &cfg).unwrap();
    let run = || -> Result<()> {
        let client = |i: u16| SocketAddrV4::new(CLIENT, 41000 + i);
        let relay = |i: u16| SocketAddrV4::new(RELAY, 51000 + i);
        let peer = |i: u16| SocketAddrV4::new(PEER, 6100 + i);
        for i in 0..4 {
            p.learn_allocation(&net, client(i), relay(i), 600)?;
            p.learn_channel(&net, client(i), peer(i), 0x4000 + i)?;
        }
        let full = p.map_counts();
        ensure!(full.committed() == (4, 4, 4, 4), "filled: {full}");
        let step = |what: &str, want: &[(&str, u64)], f: &dyn Fn() -> Result<()>| -> Result<()> {
            let c0 = p.counters();
            f().with_context(|| what.to_string())?;
            let d = p.counters().since(&c0);
            expect_delta(&d, want).map_err(|e| anyhow!("{what}: {e}"))
        };
        let pass_stun = ("PASS_STUN", 1);
        let added = ("PENDING_ADDED", 1);
        // a 5th allocation does not fit
        let x = new_txid();
        step(
            "5th Allocate",
            &[pass_stun, added, ("STATE_FULL", 1)],
            &|| p.exchange(&net, client(4), &alloc_req(x), &alloc_ok(x, relay(4))),
        )?;
        ensure!(
            p.allocation(client(4), SERVER_EP).is_none(),
            "5th allocation committed"
        );
        ensure!(
            !p.relay_port_marked(relay(4).port()),
            "relay port of a refused allocation marked"
        );
        // a 5th channel does not fit, and leaves nothing behind
        let x = new_txid();
        step(
            "5th ChannelBind",
            &[pass_stun, added, ("STATE_FULL", 1)],
            &|| {
                p.exchange(
                    &net,
                    client(0),
                    &bind_req(x, 0x4100, P2),
                    &ok(CHANNEL_BIND, x, &[]),
                )
            },
        )?;
        ensure!(
            p.channel(client(0), SERVER_EP, 0x4100).is_none(),
            "5th channel (client side)"
        );
        ensure!(
            p.peer_channel(P2, relay(0)).is_none(),
            "5th channel (peer side)"
        );
        ensure!(
            p.permission(relay(0), PEER).is_some(),
            "existing permission gone"
        );
        ensure!(
            p.map_counts().committed() == full.committed(),
            "maps after refused grants: {}",
            p.map_counts()
        );
        // refreshing an existing channel on a full map works
        let x = new_txid();
        step(
            "ChannelBind refresh",
            &[pass_stun, added, ("LEARN_CHANNEL", 1)],
            &|| {
                p.exchange(
                    &net,
                    client(1),
                    &bind_req(x, 0x4001, peer(1)),
                    &ok(CHANNEL_BIND, x, &[]),
                )
            },
        )?;
        // permissions: 4 used of 6, a request for 4 more peers gets 2
        let more: Vec<Attr> = (0..4u8)
            .map(|i| {
                Attr::XorPeerAddress(SocketAddr::from((Ipv4Addr::new(198, 51, 100, 50 + i), 1)))
            })
            .collect();
        let x = new_txid();
        step(
            "CreatePermission x4 with room for 2",
            &[pass_stun, added, ("LEARN_PERM", 2), ("STATE_FULL", 2)],
            &|| {
                p.exchange(
                    &net,
                    client(2),
                    &req(CREATE_PERMISSION, x, &more),
                    &ok(CREATE_PERMISSION, x, &[]),
                )
            },
        )?;
        // refreshing an allocation works
        let x = new_txid();
        step(
            "Refresh",
            &[pass_stun, added, ("LEARN_REFRESH", 1)],
            &|| p.exchange(&net, client(3), &refresh_req(x, 1200), &refresh_ok(x, 1200)),
        )?;
        for i in 0..4 {
            p.expect_chan4_to_udp4(
                &net,
                client(i),
                0x4000 + i,
                relay(i),
                peer(i),
                b"still here",
            )?;
            p.expect_udp4_to_chan4(
                &net,
                peer(i),
                relay(i),
                client(i),
                0x4000 + i,
                b"still here",
            )?;
        }
        // a deallocation makes room
        let x = new_txid();
        step(
            "Refresh 0",
            &[pass_stun, added, ("LEARN_DEALLOC", 1)],
            &|| p.exchange(&net, client(0), &refresh_req(x, 0), &refresh_ok(x, 0)),
        )?;
        // the ended allocation stays (dead) until the server surely holds it no more, so that
        // a retransmitted Allocate is still known; then the loader removes it and makes room
        ensure!(p.allocation(client(0), SERVER_EP).is_none(), "still live");
        {
            use libbpf_rs::MapCore;
            let k = turn_bpf::skel::types::tb_alloc_key {
                client: maps::ep(client(0).into()),
                server: maps::ep(SERVER_EP.into()),
            };
            p.skel.maps.allocs.delete(maps::bytes_of(&k))?;
        }
        let x = new_txid();
        step(
            "5th Allocate after a deallocation",
            &[pass_stun, added, ("LEARN_ALLOC", 1)],
            &|| p.exchange(&net, client(4), &alloc_req(x), &alloc_ok(x, relay(4))),
        )?;
        for i in 1..4 {
            p.expect_chan4_to_udp4(
                &net,
                client(i),
                0x4000 + i,
                relay(i),
                peer(i),
                b"still here",
            )?;
        }
        Ok(())
    };
    let res = run();
    println!(
        "full maps: at end {}\n{}",
        p.map_counts(),
        p.counters().render()
    );
    res.unwrap();
}

// ------------------------------------------------------------------------------------------
// IPv6: the fuzz phases over IPv6 frames and across families, against one oracle for both
// families.

/// The source and destination addresses of an IPv6 frame (no VLAN tag).
fn v6_addrs(f: &[u8]) -> (Ipv6Addr, Ipv6Addr) {
    let a = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&f[at..at + 16]).expect("16 bytes"));
    (a(22), a(38))
}

const fn sa6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
}

const fn sa4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// An installed binding for the cross-family oracle.
#[derive(Clone, Copy, Debug)]
struct Bind {
    client: SocketAddr,
    relay: SocketAddr,
    peer: SocketAddr,
    chan: u16,
}

/// The bindings of the IPv6 phase, one per family pair with an IPv6 side, and an IPv6 peer on
/// the client's side (both directions leave where they came in).
const BOUND6: [Bind; 4] = [
    Bind {
        client: sa6(CLIENT6, 40000),
        relay: sa6(RELAY6, 50000),
        peer: sa6(PEER6, 6000),
        chan: 0x4000,
    },
    Bind {
        client: sa6(CLIENT6, 40001),
        relay: sa4(RELAY, 50001),
        peer: sa4(PEER, 6001),
        chan: 0x4001,
    },
    Bind {
        client: sa4(CLIENT, 40002),
        relay: sa6(RELAY6, 50002),
        peer: sa6(PEER6, 6002),
        chan: 0x4002,
    },
    Bind {
        client: sa6(CLIENT6, 40003),
        relay: sa6(RELAY6, 50003),
        peer: sa6(PEER6_ON_TURN0, 7003),
        chan: 0x4003,
    },
];

/// A UDP packet the fast path may take, as read from a frame: IPv4 without options or
/// fragmentation, or IPv6 whose next header is UDP, with lengths that agree with each other and
/// fit the frame (an Ethernet trailer may follow).
struct Plain<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    /// TTL or hop limit.
    hops: u8,
    /// TOS or traffic class.
    tclass: u8,
    check: u16,
    /// IPv4: the header checksum verifies, ID and the flags byte; None for IPv6.
    v4: Option<(bool, u16, u8)>,
    /// The checksum field holds just the folded pseudo-header sum: one the kernel left for the
    /// device to finish (CHECKSUM_PARTIAL), passed whatever the rest says.
    partial: bool,
    payload: &'a [u8],
}

/// The folded (end-around carry) sum of a UDP pseudo-header: addresses, protocol 17, length.
fn pseudo_sum(src: &[u8], dst: &[u8], udp_len: usize) -> u16 {
    let mut sum = 17 + udp_len as u32;
    for w in src.chunks(2).chain(dst.chunks(2)) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn plain(f: &[u8]) -> Option<Plain<'_>> {
    match f.get(12..14)? {
        [0x08, 0x00] => {
            let ip = f.get(14..42)?;
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
            if ip[0] != 0x45 || ip[9] != 17 || frag != 0 {
                return None;
            }
            let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let udp_len = usize::from(u16::from_be_bytes([ip[24], ip[25]]));
            if tot < 28 || 14 + tot > f.len() || udp_len != tot - 20 {
                return None;
            }
            let at = |o: usize, port: usize| {
                sa4(
                    Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]),
                    u16::from_be_bytes([ip[port], ip[port + 1]]),
                )
            };
            Some(Plain {
                src: at(12, 20),
                dst: at(16, 22),
                hops: ip[8],
                tclass: ip[1],
                check: u16::from_be_bytes([ip[26], ip[27]]),
                v4: Some((
                    ipv4_checksum(&ip[..20]) == u16::from_be_bytes([ip[10], ip[11]]),
                    u16::from_be_bytes([ip[4], ip[5]]),
                    ip[6],
                )),
                partial: u16::from_be_bytes([ip[26], ip[27]])
                    == pseudo_sum(&ip[12..16], &ip[16..20], udp_len)
                    && !(udp_len - 8 <= 1280 && udp_residue_any(f) == 0),
                payload: &f[42..14 + tot],
            })
        }
        [0x86, 0xdd] => {
            let ip = f.get(14..62)?;
            if ip[0] >> 4 != 6 || ip[6] != 17 {
                return None;
            }
            let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let udp_len = usize::from(u16::from_be_bytes([ip[44], ip[45]]));
            if udp_len < 8 || udp_len != payload_len || 54 + udp_len > f.len() {
                return None;
            }
            let (s, d) = v6_addrs(f);
            Some(Plain {
                src: sa6(s, u16::from_be_bytes([ip[40], ip[41]])),
                dst: sa6(d, u16::from_be_bytes([ip[42], ip[43]])),
                hops: ip[7],
                tclass: (ip[0] << 4) | (ip[1] >> 4),
                check: u16::from_be_bytes([ip[46], ip[47]]),
                v4: None,
                partial: u16::from_be_bytes([ip[46], ip[47]])
                    == pseudo_sum(&ip[8..24], &ip[24..40], udp_len)
                    && !(udp_len - 8 <= 1280 && udp_residue_any(f) == 0),
                payload: &f[62..54 + udp_len],
            })
        }
        _ => None,
    }
}

/// The one's complement sum (mod 0xffff, 0xffff as 0) of a plain frame's pseudo-header and UDP
/// datagram, checksum field included, either family: 0 for a valid checksum, and what an
/// incremental rewrite (across families too) must carry unchanged.
fn udp_residue_any(f: &[u8]) -> u16 {
    let s = if f[12..14] == [0x86, 0xdd] {
        let (src, dst) = v6_addrs(f);
        let udp_len = usize::from(u16::from_be_bytes([f[58], f[59]]));
        udp6_sum(src, dst, &f[54..54 + udp_len])
    } else {
        return udp_residue(f);
    };
    match s {
        0xffff => 0,
        s => s,
    }
}

/// The MTU a datagram of `out`'s family meets leaving through `egress`.
fn mtu(egress: Dev, out: SocketAddr) -> usize {
    usize::from(match (egress, out.is_ipv4()) {
        (Dev::Turn0, _) => TURN0_MTU,
        (Dev::Relay0, true) => RELAY0_MTU,
        (Dev::Relay0, false) => RELAY0_MTU6,
    })
}

/// The interface a peer is behind, its MAC and that interface's.
fn peer_way(peer: SocketAddr) -> (Dev, [u8; 6], [u8; 6]) {
    if peer.ip() == IpAddr::V4(PEER_ON_TURN0) || peer.ip() == IpAddr::V6(PEER6_ON_TURN0) {
        (Dev::Turn0, PEER_ON_TURN0_MAC, TURN0_MAC)
    } else {
        (Dev::Relay0, PEER_MAC, RELAY0_MAC)
    }
}

/// The frame a relay of `u` must be, UDP checksum 0 (checked apart), from the spec's field rules:
/// IPv4 -> IPv4 copies TOS, ID and the flags byte and takes one off the TTL (the header checksum
/// is checked apart, by residue); IPv6 -> IPv4 writes TOS = traffic class, ID 0, DF, TTL = hop
/// limit - 1 and a fresh header checksum; to IPv6: traffic class = TOS or traffic class, flow
/// label 0, hop limit - 1.
fn relayed(
    u: &Plain,
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    from: SocketAddr,
    to: SocketAddr,
    data: &[u8],
) -> Vec<u8> {
    match (from, to) {
        (SocketAddr::V4(from), SocketAddr::V4(to)) => {
            let mut o = Udp4Frame::new(eth_src, eth_dst, from, to, data);
            o.tos = u.tclass;
            o.ttl = u.hops - 1;
            o.udp_check = UdpCheck::Raw(0);
            match u.v4 {
                Some((_, id, flags)) => {
                    o.id = id;
                    o.df = flags & 0x40 != 0;
                    let mut b = o.build();
                    // the flags word is copied whole, reserved bit included
                    b[20] = (b[20] & 0x1f) | (flags & 0xe0);
                    let c = ipv4_checksum(&b[14..34]);
                    b[24..26].copy_from_slice(&c.to_be_bytes());
                    b
                }
                None => {
                    o.id = 0;
                    o.df = true;
                    o.build()
                }
            }
        }
        (SocketAddr::V6(from), SocketAddr::V6(to)) => {
            let mut o = Udp6Frame::new(eth_src, eth_dst, from, to, data);
            o.traffic_class = u.tclass;
            o.flow_label = 0;
            o.hop_limit = u.hops - 1;
            o.udp_check = UdpCheck::Raw(0);
            o.build()
        }
        _ => unreachable!("a relay's two ends are of one family"),
    }
}

/// What the fast path must do with `f` given the bindings in `bound` (wherever it arrives),
/// derived from the frame alone, for either input family and any family pair.
fn oracle_x(f: &[u8], bound: &[Bind]) -> Expect {
    let Some(u) = plain(f) else {
        return Expect::Pass;
    };
    // IPv6 UDP without a checksum is invalid (and an IPv4 one cannot leave as IPv6)
    if (u.check == 0 && u.v4.is_none()) || u.partial {
        return Expect::Pass;
    }
    // an IPv4 input leaving as IPv6 needs a verifying header checksum and a UDP checksum
    let crossing_ok = |out: SocketAddr| match u.v4 {
        Some((ip_ok, _, _)) if out.is_ipv6() => ip_ok && u.check != 0,
        _ => true,
    };
    let l3 = |a: SocketAddr| if a.is_ipv4() { 20 } else { 40 };
    if u.dst.port() == TURN_PORT {
        let p = u.payload;
        if p.len() < 4 || p[0] & 0xC0 != 0x40 {
            return Expect::Pass;
        }
        let chan = u16::from_be_bytes([p[0], p[1]]);
        let dlen = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if dlen == 0 || dlen > 16384 || 4 + dlen > p.len() || p.len() - 4 - dlen > 3 {
            return Expect::Pass;
        }
        let Some(b) = bound
            .iter()
            .find(|b| b.client == u.src && server_for(b.client) == u.dst && b.chan == chan)
        else {
            return Expect::Pass;
        };
        let (egress, peer_mac, egress_mac) = peer_way(b.peer);
        if u.hops <= 1 || !crossing_ok(b.peer) || l3(b.peer) + 8 + dlen > mtu(egress, b.peer) {
            return Expect::Pass;
        }
        return Expect::Relay {
            // a redirect, also out of the interface it came in on (fwd.h)
            verdict: XDP_REDIRECT,
            out: relayed(&u, egress_mac, peer_mac, b.relay, b.peer, &p[4..4 + dlen]),
        };
    }
    if let Some(b) = bound.iter().find(|b| b.peer == u.src && b.relay == u.dst) {
        let n = u.payload.len();
        if n == 0
            || u.hops <= 1
            || !crossing_ok(b.client)
            || l3(b.client) + 12 + n > mtu(Dev::Turn0, b.client)
        {
            return Expect::Pass;
        }
        return Expect::Relay {
            verdict: XDP_REDIRECT,
            out: relayed(
                &u,
                TURN0_MAC,
                CLIENT_MAC,
                server_for(b.client),
                b.client,
                &channel_data(b.chan, u.payload, 0, 0),
            ),
        };
    }
    Expect::Pass
}

/// Check a relayed frame against the oracle's: every byte but the checksums exactly; the UDP
/// checksum by residue (0 stays 0 over IPv4 to IPv4; otherwise never 0, and the input's residue
/// carried unchanged, so a valid checksum stays valid and a wrong one stays wrong by as much);
/// the IPv4 header checksum carried by residue from an IPv4 header, fresh and valid from an
/// IPv6 one; and a frame whose input was valid verified from scratch by `verify_udp`.
fn check_relayed(input: &[u8], got: &[u8], want: &[u8]) -> std::result::Result<(), String> {
    let u = plain(input).expect("the oracle relays only plain frames");
    if got.len() != want.len() {
        return Err(format!("length {} want {}", got.len(), want.len()));
    }
    let out6 = want[12..14] == [0x86, 0xdd];
    let uc = if out6 { 60 } else { 40 };
    let (mut g, mut w) = (got.to_vec(), want.to_vec());
    g[uc..uc + 2].fill(0);
    w[uc..uc + 2].fill(0);
    let carried_ip = !out6 && u.v4.is_some();
    if carried_ip {
        g[24..26].fill(0);
        w[24..26].fill(0);
    }
    if g != w {
        return Err(format!("relayed bytes\n{}", hex_diff(&w, &g)));
    }
    if carried_ip && ip_residue(got) != ip_residue(input) {
        return Err("the IPv4 header checksum must carry the input's residue".into());
    }
    let check = u16::from_be_bytes([got[uc], got[uc + 1]]);
    if u.check == 0 {
        if check != 0 {
            return Err(format!("checksum 0 became {check:#06x}"));
        }
        return Ok(());
    }
    if check == 0 {
        return Err("a computed 0 must be sent as 0xFFFF".into());
    }
    if udp_residue_any(got) != udp_residue_any(input) {
        return Err(format!(
            "UDP residue {:#06x}, the input's {:#06x}",
            udp_residue_any(got),
            udp_residue_any(input)
        ));
    }
    let input_valid = udp_residue_any(input) == 0 && u.v4.is_none_or(|(ip_ok, _, _)| ip_ok);
    if input_valid {
        verify_udp(got).map_err(|e| format!("independent check: {e:#}"))?;
    }
    Ok(())
}

/// An extension header (or IPsec header) with a plausible body.
#[derive(Debug, Clone, Copy)]
enum ExtKind {
    HopByHop,
    DestOpts,
    /// Type 0 (deprecated) with one address left to visit.
    Routing0,
    /// Segment routing with no segments left.
    RoutingDone,
    /// Offset 0, M clear: an atomic fragment (RFC 6946).
    FragAtomic,
    /// Offset 0, M set: the first fragment.
    FragFirst,
    /// A later fragment: what follows is data, not a UDP header.
    FragLater,
    Esp,
    Ah,
}

/// A change to an IPv6 frame's header.
#[derive(Debug, Clone)]
enum Mut6 {
    /// Insert an extension header right after the fixed header (payload length kept right).
    Ext(ExtKind),
    /// Only the next-header field changed, no body.
    NextHeader(u8),
    HopLimit(u8),
    TrafficClass(u8),
    FlowLabel(u32),
    ZeroCheck,
    /// The source (or destination) address replaced by the IPv4-mapped form of `v4`.
    Mapped {
        src: bool,
        v4: Ipv4Addr,
    },
    /// The source (or destination) address replaced by another test address.
    Addr {
        src: bool,
        ip: Ipv6Addr,
    },
}

fn ext_bytes(kind: ExtKind, next: u8) -> (u8, Vec<u8>) {
    let frag = |offset, more| Ipv6Ext::Fragment {
        offset,
        more,
        id: 0x7462_0001,
    };
    let ext = match kind {
        ExtKind::HopByHop => Ipv6Ext::router_alert(),
        ExtKind::DestOpts => Ipv6Ext::dest_opts_padding(),
        ExtKind::Routing0 => Ipv6Ext::Routing {
            typ: 0,
            segments_left: 1,
            data: [vec![0; 4], PEER6.octets().to_vec()].concat(),
        },
        ExtKind::RoutingDone => Ipv6Ext::routing_done(),
        ExtKind::FragAtomic => frag(0, false),
        ExtKind::FragFirst => frag(0, true),
        ExtKind::FragLater => frag(185, false),
        // SPI and sequence number; what follows is ciphertext (its next header is inside)
        ExtKind::Esp => return (50, vec![0, 0, 0x74, 0x62, 0, 0, 0, 1]),
        // next header, length (4-byte units - 2), reserved, SPI, sequence, 96-bit ICV
        ExtKind::Ah => {
            let mut h = vec![next, 4, 0, 0, 0, 0, 0x74, 0x62, 0, 0, 0, 1];
            h.extend_from_slice(&[0xa5; 12]);
            return (51, h);
        }
    };
    (ext.number(), ext.bytes(next))
}

fn apply6(f: &mut Vec<u8>, m: &Mut6) {
    if f.len() < 54 || f[12..14] != [0x86, 0xdd] {
        return;
    }
    match m {
        Mut6::Ext(kind) => {
            let (number, bytes) = ext_bytes(*kind, f[20]);
            f[20] = number;
            let len = u16::from_be_bytes([f[18], f[19]]).wrapping_add(bytes.len() as u16);
            put_u16(f, 18, len);
            f.splice(54..54, bytes);
        }
        Mut6::NextHeader(n) => f[20] = *n,
        Mut6::HopLimit(h) => f[21] = *h,
        Mut6::TrafficClass(t) => {
            f[14] = (f[14] & 0xf0) | (t >> 4);
            f[15] = (f[15] & 0x0f) | (t << 4);
        }
        Mut6::FlowLabel(l) => {
            f[15] = (f[15] & 0xf0) | ((l >> 16) & 0x0f) as u8;
            f[16] = (l >> 8) as u8;
            f[17] = *l as u8;
        }
        Mut6::ZeroCheck => put_u16(f, 60, 0),
        Mut6::Mapped { src, v4 } => {
            let at = if *src { 22 } else { 38 };
            f[at..at + 16].copy_from_slice(&v4.to_ipv6_mapped().octets());
        }
        Mut6::Addr { src, ip } => {
            let at = if *src { 22 } else { 38 };
            f[at..at + 16].copy_from_slice(&ip.octets());
        }
    }
}

fn mut6() -> impl Strategy<Value = Mut6> {
    let ext = prop_oneof![
        Just(ExtKind::HopByHop),
        Just(ExtKind::DestOpts),
        Just(ExtKind::Routing0),
        Just(ExtKind::RoutingDone),
        Just(ExtKind::FragAtomic),
        Just(ExtKind::FragFirst),
        Just(ExtKind::FragLater),
        Just(ExtKind::Esp),
        Just(ExtKind::Ah),
    ];
    let next = prop_oneof![
        Just(0u8),
        Just(43),
        Just(44),
        Just(50),
        Just(51),
        Just(59),
        Just(60),
        Just(135),
        Just(6),
        Just(58),
        any::<u8>(),
    ];
    let v4 = prop_oneof![Just(CLIENT), Just(PEER), Just(SERVER), Just(RELAY)];
    let v6 = prop_oneof![
        Just(CLIENT6),
        Just(PEER6),
        Just(SERVER6),
        Just(RELAY6),
        Just(PEER6_ON_TURN0)
    ];
    prop_oneof![
        4 => ext.prop_map(Mut6::Ext),
        2 => next.prop_map(Mut6::NextHeader),
        3 => prop_oneof![Just(0u8), Just(1), Just(2), Just(255), any::<u8>()].prop_map(Mut6::HopLimit),
        1 => any::<u8>().prop_map(Mut6::TrafficClass),
        1 => (0u32..1 << 20).prop_map(Mut6::FlowLabel),
        1 => Just(Mut6::ZeroCheck),
        1 => (any::<bool>(), v4).prop_map(|(src, v4)| Mut6::Mapped { src, v4 }),
        1 => (any::<bool>(), v6).prop_map(|(src, ip)| Mut6::Addr { src, ip }),
    ]
}

/// A frame mutated the generic way, then its IPv6 header, then fixed up as `fix` says.
fn apply_x(frame: &[u8], muts: &[Mutation], m6: &[Mut6], fix: Fixup) -> Vec<u8> {
    let mut f = mutate(frame, muts);
    for m in m6 {
        apply6(&mut f, m);
    }
    fix_up(f, fix)
}

fn frame_x(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            Udp4Frame::new(src_mac, dst_mac, s, d, payload).build()
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            Udp6Frame::new(src_mac, dst_mac, s, d, payload).build()
        }
        _ => unreachable!("{src} -> {dst}"),
    }
}

fn data_of(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + seed) as u8).collect()
}

/// Seeds of the IPv6 phase: ChannelData from every bound client (the largest that fits the way
/// out and one byte more), peer datagrams to every binding likewise, IPv6 header variants, and
/// STUN requests from IPv6 clients.
fn seeds6() -> Vec<Seed> {
    let mut s = Vec::new();
    let [b66, b64, b46, t66] = BOUND6;
    let cd = |b: &Bind, len: usize, pad: usize| {
        to_server(b.client, &channel_data(b.chan, &data_of(len, 7), pad, 0x5a))
    };
    for (name, b, lens) in [
        ("ChannelData 6->6", &b66, &[1usize, 7, 100, 1232, 1233][..]),
        ("ChannelData 6->4", &b64, &[1, 300, 1172, 1173]),
        ("ChannelData 4->6", &b46, &[1, 50, 1232, 1233]),
        ("ChannelData 6->6 on turn0", &t66, &[1, 200, 1452, 1453]),
    ] {
        for (k, len) in lens.iter().enumerate() {
            s.push(Seed {
                name,
                frame: cd(b, *len, k % 4),
                dev: Dev::Turn0,
            });
        }
    }
    let v6_frame = |b: &Bind, tweak: &dyn Fn(&mut Udp6Frame)| {
        let SocketAddr::V6(c) = b.client else {
            unreachable!()
        };
        let mut f = Udp6Frame::new(
            CLIENT_MAC,
            TURN0_MAC,
            c,
            SERVER6_EP,
            &channel_data(b.chan, &data_of(33, 1), 3, 0),
        );
        tweak(&mut f);
        f.build()
    };
    type Tweak<'a> = &'a dyn Fn(&mut Udp6Frame);
    let variants: [(&'static str, Tweak); 9] = [
        ("ChannelData 6->6, traffic class and flow label", &|f| {
            f.traffic_class = 0xb9;
            f.flow_label = 0xabcde;
        }),
        ("ChannelData 6->6, hop limit 2", &|f| f.hop_limit = 2),
        ("ChannelData 6->6, hop limit 1", &|f| f.hop_limit = 1),
        ("ChannelData 6->6, hop limit 0", &|f| f.hop_limit = 0),
        ("ChannelData 6->6, checksum 0", &|f| {
            f.udp_check = UdpCheck::Zero
        }),
        ("ChannelData 6->6, sum folding to 0", &|f| {
            force_udp6_sum_zero(f, 4)
        }),
        ("ChannelData 6->6 behind a hop-by-hop header", &|f| {
            f.ext = vec![Ipv6Ext::router_alert()]
        }),
        ("ChannelData 6->6, Ethernet trailer", &|f| {
            f.trailer = vec![0xee; 6]
        }),
        (
            "ChannelData 6->6, partial checksum (CHECKSUM_PARTIAL)",
            &|f| {
                let sum = pseudo_sum(
                    &f.src.ip().octets(),
                    &f.dst.ip().octets(),
                    8 + f.payload.len(),
                );
                f.udp_check = UdpCheck::Raw(sum);
            },
        ),
    ];
    for (name, tweak) in variants {
        s.push(Seed {
            name,
            frame: v6_frame(&b66, tweak),
            dev: Dev::Turn0,
        });
    }
    s.push(Seed {
        name: "ChannelData 6->4, traffic class 0xff",
        frame: {
            let mut f = Udp6Frame::new(
                CLIENT_MAC,
                TURN0_MAC,
                SocketAddrV6::new(CLIENT6, 40001, 0, 0),
                SERVER6_EP,
                &channel_data(0x4001, &data_of(64, 3), 0, 0),
            );
            f.traffic_class = 0xff;
            f.build()
        },
        dev: Dev::Turn0,
    });
    s.push(Seed {
        name: "ChannelData 4->6, checksum 0",
        frame: {
            let mut f = Udp4Frame::new(
                CLIENT_MAC,
                TURN0_MAC,
                SocketAddrV4::new(CLIENT, 40002),
                SERVER_EP,
                &channel_data(0x4002, &[3; 40], 0, 0),
            );
            f.udp_check = UdpCheck::Zero;
            f.build()
        },
        dev: Dev::Turn0,
    });
    s.push(Seed {
        name: "ChannelData 6, unbound channel",
        frame: to_server(b66.client, &channel_data(0x4abc, &[1; 40], 0, 0)),
        dev: Dev::Turn0,
    });
    s.push(Seed {
        name: "ChannelData from the IPv4-mapped form of a bound IPv4 client",
        frame: Udp6Frame::new(
            CLIENT_MAC,
            TURN0_MAC,
            SocketAddrV6::new(CLIENT.to_ipv6_mapped(), 40002, 0, 0),
            SERVER6_EP,
            &channel_data(0x4002, &[2; 40], 0, 0),
        )
        .build(),
        dev: Dev::Turn0,
    });
    // peers
    for (name, b, lens) in [
        ("peer 6->6", &b66, &[1usize, 2, 100, 1448, 1449][..]),
        ("peer 4->6", &b64, &[1, 100, 1448, 1449]),
        ("peer 6->4", &b46, &[1, 500, 1468, 1469]),
        ("peer 6->6 on turn0", &t66, &[1, 300, 1448]),
    ] {
        let (dev, peer_mac, dev_mac) = peer_way(b.peer);
        for len in lens {
            s.push(Seed {
                name,
                frame: frame_x(peer_mac, dev_mac, b.peer, b.relay, &data_of(*len, 3)),
                dev,
            });
        }
    }
    s.push(Seed {
        name: "peer 4->6, checksum 0",
        frame: {
            let mut f = Udp4Frame::new(
                PEER_MAC,
                RELAY0_MAC,
                SocketAddrV4::new(PEER, 6001),
                SocketAddrV4::new(RELAY, 50001),
                &[7; 50],
            );
            f.udp_check = UdpCheck::Zero;
            f.build()
        },
        dev: Dev::Relay0,
    });
    s.push(Seed {
        name: "peer 6->6, hop limit 2, flow label",
        frame: {
            let mut f = Udp6Frame::new(
                PEER_MAC,
                RELAY0_MAC,
                SocketAddrV6::new(PEER6, 6000, 0, 0),
                SocketAddrV6::new(RELAY6, 50000, 0, 0),
                &[5; 77],
            );
            f.hop_limit = 2;
            f.flow_label = 0x12345;
            f.traffic_class = 0x2e;
            f.build()
        },
        dev: Dev::Relay0,
    });
    s.push(Seed {
        name: "peer 6->6, partial checksum (CHECKSUM_PARTIAL)",
        frame: {
            let (src, dst) = (
                SocketAddrV6::new(PEER6, 6000, 0, 0),
                SocketAddrV6::new(RELAY6, 50000, 0, 0),
            );
            let mut f = Udp6Frame::new(PEER_MAC, RELAY0_MAC, src, dst, &[4; 60]);
            f.udp_check = UdpCheck::Raw(pseudo_sum(&src.ip().octets(), &dst.ip().octets(), 68));
            f.build()
        },
        dev: Dev::Relay0,
    });
    s.push(Seed {
        name: "unbound peer 6",
        frame: frame_x(PEER_MAC, RELAY0_MAC, sa6(PEER6, 6999), b66.relay, &[1; 20]),
        dev: Dev::Relay0,
    });
    s.push(Seed {
        name: "peer 6 from the IPv4-mapped form of a bound IPv4 peer",
        frame: frame_x(
            PEER_MAC,
            RELAY0_MAC,
            sa6(PEER.to_ipv6_mapped(), 6001),
            b66.relay,
            &[1; 20],
        ),
        dev: Dev::Relay0,
    });
    // requests from IPv6 clients
    let t = new_txid;
    let c6 = b66.client;
    for (name, m) in [
        (
            "Allocate 6",
            req(
                ALLOCATE,
                t(),
                &[
                    Attr::RequestedTransport(17),
                    Attr::RequestedAddressFamily(Family::V6),
                ],
            ),
        ),
        (
            "ChannelBind 6",
            req(
                CHANNEL_BIND,
                t(),
                &[Attr::ChannelNumber(0x4000), Attr::XorPeerAddress(b66.peer)],
            ),
        ),
        (
            "CreatePermission 6",
            req(CREATE_PERMISSION, t(), &[Attr::XorPeerAddress(b66.peer)]),
        ),
        ("Refresh 6", refresh_req(t(), 600)),
        ("Refresh 0 6", refresh_req(t(), 0)),
        ("Binding 6", build_request(BINDING, t(), &[], None)),
    ] {
        s.push(Seed {
            name,
            frame: to_server(c6, &m),
            dev: Dev::Turn0,
        });
    }
    s
}

fn install_all(p: &Programs, bound: &[Bind]) -> Result<()> {
    for b in bound {
        p.install_channel(b.client, b.relay, b.peer, b.chan, 3600)?;
    }
    Ok(())
}

/// Could the recorder have taken `f` for a STUN message to a TURN port (either family)? Such a
/// request may take state away, so the bindings are put back after it.
fn stun_to_turn_any(f: &[u8]) -> bool {
    [(36, 42), (56, 62)].iter().any(|&(port, payload)| {
        u16_at(f, port) == Some(TURN_PORT) && f.get(payload).is_some_and(|b| b & 0xC0 == 0)
    })
}

/// IPv6 and cross-family frames, mutated the generic way and in their IPv6 header (extension
/// headers with plausible bodies, next header, payload length, hop limit, traffic class, flow
/// label, zero checksum, IPv4-mapped and other addresses), through XDP: first with nothing
/// installed (everything passed unmodified), then with one binding per family pair, every
/// verdict and byte checked against the oracle, every relayed checksum checked independently.
/// Positive control: a fair share relayed, and each of the eight paths at least once.
#[test]
fn fuzz_xdp_ipv6_mutated_packets() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let net = FibNet::new("tbt-abuse-fuzz-xdp6").unwrap();
    let _in = net.enter().unwrap();
    let seeds = seeds6();
    let strategy = (
        0..seeds.len(),
        vec(mutation(), 0..4),
        vec(mut6(), 0..3),
        fixup(),
    );
    let t0 = Instant::now();
    for bound in [false, true] {
        let p = Programs::load_for_families(&net, &Config::default()).unwrap();
        let set: &[Bind] = if bound { &BOUND6 } else { &[] };
        install_all(&p, set).unwrap();
        let before = p.map_counts();
        let c0 = p.counters();
        let tried = Cell::new(0u64);
        let relayed = Cell::new(0u64);
        // relays per (binding, to peer?)
        let paths = std::cell::RefCell::new(std::collections::BTreeMap::<String, u64>::new());
        let n = cases(if bound { 300_000 } else { 50_000 });
        let mut runner = TestRunner::new(pt_config(n));
        let result = runner.run(&strategy, |(i, muts, m6, fix)| {
            let seed = &seeds[i];
            let frame = apply_x(&seed.frame, &muts, &m6, fix);
            let ifindex = if seed.dev == Dev::Turn0 {
                net.turn0
            } else {
                net.relay0
            };
            let r = p
                .xdp(&frame, ifindex)
                .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            tried.set(tried.get() + 1);
            match oracle_x(&frame, set) {
                Expect::Pass => {
                    prop_assert_eq!(r.verdict, XDP_PASS, "seed {}: not passed", seed.name);
                    prop_assert!(
                        r.out == frame,
                        "seed {}: passed frame modified\n{}",
                        seed.name,
                        hex_diff(&frame, &r.out)
                    );
                }
                Expect::Relay { verdict, out } => {
                    relayed.set(relayed.get() + 1);
                    prop_assert_eq!(r.verdict, verdict, "seed {}: verdict", seed.name);
                    if let Err(e) = check_relayed(&frame, &r.out, &out) {
                        return Err(TestCaseError::fail(format!("seed {}: {e}", seed.name)));
                    }
                    let u = plain(&frame).expect("relayed");
                    let fam = |a: SocketAddr| if a.is_ipv4() { 4 } else { 6 };
                    let (to, from) = (if out[12..14] == [0x86, 0xdd] { 6 } else { 4 }, fam(u.src));
                    let path = if u.dst.port() == TURN_PORT {
                        format!(
                            "chan{from}_to_udp{to} via {:?}",
                            peer_way(plain(&out).map_or(u.dst, |o| o.dst)).0
                        )
                    } else {
                        format!("udp{from}_to_chan{to} from {:?}", seed.dev)
                    };
                    *paths.borrow_mut().entry(path).or_default() += 1;
                }
            }
            if bound && stun_to_turn_any(&frame) {
                install_all(&p, set).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            }
            Ok(())
        });
        let d = p.counters().since(&c0);
        let after = p.map_counts();
        println!(
            "fuzz XDP IPv6 ({}): {} packets tried, {} relayed, maps at end: {after}\n  paths: {:?}\n{}",
            if bound { "4 bindings installed" } else { "nothing installed" },
            tried.get(),
            relayed.get(),
            paths.borrow(),
            d.render()
        );
        if let Err(e) = result {
            panic!("{e}");
        }
        assert_eq!(d.get("ABORTED"), 0);
        assert_eq!(after.committed(), before.committed(), "XDP committed state");
        for c in [
            "LEARN_ALLOC",
            "LEARN_REFRESH",
            "LEARN_DEALLOC",
            "LEARN_PERM",
            "LEARN_CHANNEL",
            "STATE_FULL",
        ] {
            assert_eq!(d.get(c), 0, "{c} moved with XDP alone");
        }
        if bound {
            // positive control: the paths work under fuzzing, each of them
            assert!(
                relayed.get() * 20 >= tried.get(),
                "only {} of {} relayed",
                relayed.get(),
                tried.get()
            );
            assert_eq!(
                paths.borrow().len(),
                8,
                "paths relayed: {:?}",
                paths.borrow()
            );
            assert_eq!(
                d.get("RELAYED_TO_PEER") + d.get("RELAYED_TO_CLIENT"),
                relayed.get()
            );
        } else {
            assert_eq!(relayed.get(), 0);
            assert_eq!(d.get("RELAYED_TO_PEER") + d.get("RELAYED_TO_CLIENT"), 0);
        }
    }
    println!("fuzz XDP IPv6: {:.1} s", t0.elapsed().as_secs_f64());
}

const C6: SocketAddr = sa6(CLIENT6, 40000);
const R6: SocketAddr = sa6(RELAY6, 50000);

/// How many [`server_seed6`]s there are.
const SERVER_SEEDS6: usize = 8;

/// Response `i` (server -> an IPv6 client) with the request that makes it commit, on a fresh
/// transaction ID.
fn server_seed6(i: usize) -> (Vec<u8>, Vec<u8>) {
    let x = new_txid();
    let alloc = |attrs: &[Attr]| {
        req(
            ALLOCATE,
            x,
            &[[Attr::RequestedTransport(17)].as_slice(), attrs].concat(),
        )
    };
    let granted = |relays: &[SocketAddr]| {
        let mut attrs: Vec<Attr> = relays.iter().map(|r| Attr::XorRelayedAddress(*r)).collect();
        attrs.push(Attr::Lifetime(600));
        attrs.push(Attr::XorMappedAddress(C6));
        ok(ALLOCATE, x, &attrs)
    };
    let bind6 = |chan, peer: SocketAddr| {
        req(
            CHANNEL_BIND,
            x,
            &[Attr::ChannelNumber(chan), Attr::XorPeerAddress(peer)],
        )
    };
    match i {
        0 => (
            alloc(&[Attr::RequestedAddressFamily(Family::V6)]),
            granted(&[R6]),
        ),
        // coturn's default for an IPv6 client: an IPv4 relayed address
        1 => (alloc(&[]), granted(&[sa4(RELAY, 50010)])),
        2 => (
            alloc(&[
                Attr::RequestedAddressFamily(Family::V6),
                Attr::AdditionalAddressFamily(Family::V4),
            ]),
            granted(&[R6, sa4(RELAY, 50011)]),
        ),
        3 => (bind6(0x4000, sa6(PEER6, 6000)), ok(CHANNEL_BIND, x, &[])),
        4 => (
            req(
                CREATE_PERMISSION,
                x,
                &[
                    Attr::XorPeerAddress(sa6(PEER6, 6000)),
                    Attr::XorPeerAddress(sa6(PEER6_ON_TURN0, 1)),
                ],
            ),
            ok(CREATE_PERMISSION, x, &[]),
        ),
        5 => (refresh_req(x, 600), refresh_ok(x, 600)),
        6 => (refresh_req(x, 0), refresh_ok(x, 0)),
        _ => (
            bind6(0x4002, sa6(PEER6, 6001)),
            build_error_response(CHANNEL_BIND, x, 403),
        ),
    }
}

/// Could tc_snoop have read `f` as a response from a TURN port at all (a plain UDP packet, IPv6
/// next header UDP, consistent lengths, room for a STUN header)?
fn response_readable(f: &[u8]) -> bool {
    plain(f).is_some_and(|u| u.src.port() == TURN_PORT && u.payload.len() >= 20)
}

const LEARNED: [&str; 5] = [
    "LEARN_ALLOC",
    "LEARN_REFRESH",
    "LEARN_DEALLOC",
    "LEARN_PERM",
    "LEARN_CHANNEL",
];

/// One counter, summed over the CPUs (one lookup: cheaper per case than reading them all).
fn counter(p: &Programs, name: &str) -> u64 {
    let key = (turn_bpf::stats::code(name) as u32).to_ne_bytes();
    p.skel
        .maps
        .stats
        .lookup_percpu(&key, MapFlags::ANY)
        .expect("counters are readable")
        .unwrap_or_default()
        .iter()
        .map(|v| u64::from_ne_bytes(v[..8].try_into().expect("8-byte counters")))
        .sum()
}

/// The LEARNED counters summed.
fn learned_total(p: &Programs) -> u64 {
    LEARNED.iter().map(|c| counter(p, c)).sum()
}

/// Mutated server responses to an IPv6 client through TC (each after its real request through
/// XDP), the IPv6 header mutated too: TC never changes or drops a packet, a response it cannot
/// read commits nothing, and whatever gets committed has a local relayed address. Positive
/// control: a fair share of the cases commits.
#[test]
fn fuzz_tc_ipv6_mutated_responses() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let net = FibNet::new("tbt-abuse-fuzz-tc6").unwrap();
    let _in = net.enter().unwrap();
    let p = Programs::load_for_families(&net, &Config::default()).unwrap();
    let strategy = (
        0..SERVER_SEEDS6,
        vec(mutation(), 0..4),
        vec(mut6(), 0..2),
        fixup(),
        any::<bool>(),
    );
    let t0 = Instant::now();
    let c0 = p.counters();
    let tried = Cell::new(0u64);
    let unreadable = Cell::new(0u64);
    let committed = Cell::new(0u64);
    let mut runner = TestRunner::new(pt_config(cases(100_000)));
    let result = runner.run(&strategy, |(i, muts, m6, fix, relearn)| {
        // fresh transaction IDs every case: a reused one is a retransmission
        let (q, resp) = server_seed6(i);
        let (q, resp) = (&to_server(C6, &q), &from_server(C6, &resp));
        let fail = |e: anyhow::Error| TestCaseError::fail(format!("{e:#}"));
        if tried.get() % 1000 == 999 {
            // as the loader's sweep does (the table would fill: every client blind)
            p.remove_pending_older_than(std::time::Duration::ZERO);
        }
        if relearn {
            p.learn_allocation(&net, C6, R6, 600).map_err(fail)?;
        }
        let r = p.xdp(q, net.turn0).map_err(fail)?;
        prop_assert_eq!(r.verdict, XDP_PASS);
        prop_assert!(r.out == *q);
        let frame = apply_x(resp, &muts, &m6, fix);
        // BPF_PROG_TEST_RUN (tc) refuses a frame without a whole IP header of its ethertype
        let runt = match frame[12..14] {
            [0x08, 0x00] => frame.len() < 34,
            [0x86, 0xdd] => frame.len() < 54,
            _ => false,
        };
        if runt {
            return Ok(());
        }
        let l0 = learned_total(&p);
        let r = p.tc(&frame).map_err(fail)?;
        tried.set(tried.get() + 1);
        prop_assert_eq!(r.verdict, TC_ACT_UNSPEC, "TC verdict");
        prop_assert!(
            r.out == frame,
            "TC modified a packet\n{}",
            hex_diff(&frame, &r.out)
        );
        let learned = learned_total(&p) - l0;
        if !response_readable(&frame) {
            unreadable.set(unreadable.get() + 1);
            prop_assert_eq!(learned, 0, "an unreadable response committed");
        } else if learned > 0 {
            committed.set(committed.get() + 1);
        }
        Ok(())
    });
    let d = p.counters().since(&c0);
    println!(
        "fuzz TC IPv6: {} responses tried ({} unreadable), {} committed, in {:.1} s, maps at \
         end: {}\n{}",
        tried.get(),
        unreadable.get(),
        committed.get(),
        t0.elapsed().as_secs_f64(),
        p.map_counts(),
        d.render()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(d.get("ABORTED"), 0);
    assert!(
        committed.get() * 20 >= tried.get(),
        "positive control: only {} of {} responses committed",
        committed.get(),
        tried.get()
    );
    let local: [IpAddr; 4] = [SERVER.into(), RELAY.into(), SERVER6.into(), RELAY6.into()];
    for k in p.skel.maps.allocs.keys() {
        let v = p
            .skel
            .maps
            .allocs
            .lookup(&k, MapFlags::ANY)
            .unwrap()
            .unwrap();
        let a: turn_bpf::skel::types::tb_alloc = maps::from_bytes(&v);
        for r in &a.relay {
            if let Some(s) = maps::sockaddr(r) {
                assert!(
                    local.contains(&s.ip()),
                    "non-local relayed address committed: {s}"
                );
            }
        }
    }
}

/// A change to a request's IP or UDP header (never to its STUN message).
fn header_mutation() -> impl Strategy<Value = Mutation> {
    let len_field = prop_oneof![Just(LenField::IpTot), Just(LenField::Udp)];
    prop_oneof![
        2 => (0usize..48, 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at: 14 + at, bit }),
        1 => (len_field.clone(), any::<u16>()).prop_map(|(which, val)| Mutation::SetLen { which, val }),
        2 => (len_field, -8i16..=8).prop_map(|(which, delta)| Mutation::AddLen { which, delta }),
        1 => vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
    ]
}

/// Did the recorder see `f` whole, as the request `orig` it was made from: plain IPv6 UDP with
/// consistent lengths, a verifying non-zero checksum, and the same addresses, ports and STUN
/// message (an Ethernet trailer may follow)?
fn request_seen(f: &[u8], orig: &[u8]) -> bool {
    let (Some(u), Some(o)) = (plain(f), plain(orig)) else {
        return false;
    };
    u.v4.is_none()
        && u.check != 0
        && udp_residue_any(f) == 0
        && (u.src, u.dst) == (o.src, o.dst)
        && u.payload == o.payload
}

/// A peer with no permission installed (a permission installed directly has epoch 0, which
/// a ChannelBind cannot take over: see `Programs::install_channel`).
const PEER6_OTHER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 9);

/// A fresh IPv6 client for case `i`: its interface identifier scrambled, so that a bit flipped
/// in one case's address does not name a client of the cases around it (whose blind spot that
/// would be).
fn client6(i: u32) -> SocketAddr {
    let iid = u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let ip = (u128::from(0x2001_0db8_0001_0000u64) << 64) | u128::from(iid);
    sa6(Ipv6Addr::from(ip), 40000 + (i % 1000) as u16)
}

/// Requests from IPv6 clients whose IP/UDP header is mutated (extension headers with plausible
/// bodies, payload and UDP length edits, hop limit, traffic class, flow label, zero and wrong
/// checksums, IPv4-mapped and other addresses, trailers), each passed unmodified by XDP and
/// followed by the server's real success response: nothing is learned from a request the
/// recorder could not see whole. Positive control: the requests it did see commit.
#[test]
fn fuzz_ipv6_requests_learn_only_what_was_seen() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let net = FibNet::new("tbt-abuse-learn6").unwrap();
    let _in = net.enter().unwrap();
    // A short pending lifetime (how far a blind spot reaches): the cases run fast, and every
    // blind spot of another case within it that lands in this client's slot (the slot table is
    // a hash) makes a request seen whole go unlearned, which the positive control counts.
    let cfg = Config {
        pending_lifetime_ms: 20,
        ..Config::default()
    };
    let load = || Programs::load_for_families(&net, &cfg).unwrap();
    let programs = std::cell::RefCell::new(load());
    let strategy = (
        0..4usize,
        vec(header_mutation(), 0..3),
        vec(mut6(), 0..3),
        fixup(),
    );
    let t0 = Instant::now();
    let case = Cell::new(0u32);
    let (seen, learned_seen, unseen) = (Cell::new(0u64), Cell::new(0u64), Cell::new(0u64));
    let n = cases(50_000);
    let mut runner = TestRunner::new(pt_config(n));
    let result = runner.run(&strategy, |(kind, muts, m6, fix)| {
        let fail = |e: anyhow::Error| TestCaseError::fail(format!("{e:#}"));
        let i = case.get();
        case.set(i + 1);
        // fresh programs now and then, before the state maps fill up
        if i % 40_000 == 39_999 {
            *programs.borrow_mut() = load();
        }
        let p = programs.borrow();
        if i % 1000 == 999 {
            p.remove_pending_older_than(std::time::Duration::ZERO);
        }
        // a fresh client and relayed port each case: no state or blind spot carried over
        let client = client6(i);
        let relay = sa6(RELAY6, 1024 + (i % 60000) as u16);
        let x = new_txid();
        let (request, response, commits) = match kind {
            0 => (
                req(
                    ALLOCATE,
                    x,
                    &[
                        Attr::RequestedTransport(17),
                        Attr::RequestedAddressFamily(Family::V6),
                    ],
                ),
                ok(
                    ALLOCATE,
                    x,
                    &[Attr::XorRelayedAddress(relay), Attr::Lifetime(600)],
                ),
                "LEARN_ALLOC",
            ),
            1 => (
                req(
                    CHANNEL_BIND,
                    x,
                    &[
                        Attr::ChannelNumber(0x4001),
                        Attr::XorPeerAddress(sa6(PEER6_OTHER, 6001)),
                    ],
                ),
                ok(CHANNEL_BIND, x, &[]),
                "LEARN_CHANNEL",
            ),
            2 => (
                req(
                    CREATE_PERMISSION,
                    x,
                    &[Attr::XorPeerAddress(sa6(PEER6_ON_TURN0, 1))],
                ),
                ok(CREATE_PERMISSION, x, &[]),
                "LEARN_PERM",
            ),
            _ => (refresh_req(x, 1200), refresh_ok(x, 1200), "LEARN_REFRESH"),
        };
        if kind != 0 {
            p.install_channel(client, relay, sa6(PEER6, 6000), 0x4000, 600)
                .map_err(fail)?;
        }
        let orig = to_server(client, &request);
        let frame = {
            let mut f = mutate(&orig, &muts);
            for m in &m6 {
                apply6(&mut f, m);
            }
            fix_up(f, fix)
        };
        let r = p.xdp(&frame, net.turn0).map_err(fail)?;
        prop_assert_eq!(r.verdict, XDP_PASS, "a request was not passed");
        prop_assert!(r.out == frame, "a request was modified");
        let (l0, c0) = (learned_total(&p), counter(&p, commits));
        p.server_sends(client, &response).map_err(fail)?;
        let learned = learned_total(&p) - l0;
        if request_seen(&frame, &orig) {
            seen.set(seen.get() + 1);
            if counter(&p, commits) - c0 == 1 {
                learned_seen.set(learned_seen.get() + 1);
            }
        } else {
            unseen.set(unseen.get() + 1);
            prop_assert_eq!(
                learned,
                0,
                "learned from a request not seen whole:\n{}",
                hex_diff(&orig, &frame)
            );
            if kind == 0 {
                prop_assert!(p.allocation(client, SERVER6_EP).is_none());
            }
        }
        Ok(())
    });
    println!(
        "fuzz IPv6 requests: {} cases in {:.1} s: {} seen whole ({} of them committed), {} not \
         seen whole (none committed); maps at end: {}",
        case.get(),
        t0.elapsed().as_secs_f64(),
        seen.get(),
        learned_seen.get(),
        unseen.get(),
        programs.borrow().map_counts()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    // positive control: requests seen whole are learned (a few may meet another client's blind
    // spot in the shared slot table)
    assert!(
        seen.get() * 10 >= u64::from(case.get()),
        "too few seen whole"
    );
    assert!(
        learned_seen.get() * 100 >= seen.get() * 95,
        "only {} of {} requests seen whole were learned",
        learned_seen.get(),
        seen.get()
    );
}

/// The raw XOR addresses the tables build agree with the test client's encoding, both families.
#[test]
fn raw_xor_addresses_agree_with_the_client() {
    for peer in [V4.p1, V6.p1, sa6(PEER.to_ipv6_mapped(), 1)] {
        let x = new_txid();
        let m = build_request(CHANNEL_BIND, x, &[Attr::XorPeerAddress(peer)], None);
        let (o, t, l) = attrs_of(&m)[0];
        assert_eq!(t, 0x0012);
        assert_eq!(m[o + 4..o + 4 + l], xaddr(x, peer), "{peer}");
    }
}

/// `frame` arriving on `dev` must be relayed as the oracle says for the bindings in `bound`.
fn expect_relay_x(
    p: &Programs,
    net: &FibNet,
    bound: &[Bind],
    frame: &[u8],
    dev: Dev,
) -> Result<()> {
    let Expect::Relay { verdict, out } = oracle_x(frame, bound) else {
        return Err(anyhow!("the oracle does not relay this frame"));
    };
    let ifindex = if dev == Dev::Turn0 {
        net.turn0
    } else {
        net.relay0
    };
    let r = p.xdp(frame, ifindex)?;
    ensure!(r.verdict == verdict, "verdict {} want {verdict}", r.verdict);
    check_relayed(frame, &r.out, &out).map_err(|e| anyhow!(e))
}

/// Both directions of `b` relay (ChannelData from its client, a datagram from its peer).
fn both_ways(p: &Programs, net: &FibNet, b: &Bind, data: &[u8]) -> Result<()> {
    let cd = to_server(b.client, &channel_data(b.chan, data, 0, 0));
    expect_relay_x(p, net, &[*b], &cd, Dev::Turn0).context("to peer")?;
    let (dev, peer_mac, dev_mac) = peer_way(b.peer);
    let dg = frame_x(peer_mac, dev_mac, b.peer, b.relay, data);
    expect_relay_x(p, net, &[*b], &dg, dev).context("to client")
}

/// 100,000 requests with random transaction IDs from random IPv6 sources (random interface
/// identifiers and ports in the clients' prefix) through XDP: every one passed unmodified, the
/// pending map stays within its bound, nothing is committed, an IPv6 binding learned before still
/// relays both ways, and learning goes on afterwards.
#[test]
fn flood_random_transactions_ipv6() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let net = FibNet::new("tbt-abuse-flood6").unwrap();
    let _in = net.enter().unwrap();
    let p = Programs::load_for_families(&net, &Config::default()).unwrap();
    let bound = p.skel.maps.pending.max_entries() as usize;
    let before = Bind {
        client: C6,
        relay: R6,
        peer: sa6(PEER6, 6000),
        chan: 0x4001,
    };
    p.learn_allocation(&net, before.client, before.relay, 600)
        .unwrap();
    p.learn_channel(&net, before.client, before.peer, before.chan)
        .unwrap();
    both_ways(&p, &net, &before, b"before").unwrap();

    let t0 = Instant::now();
    let c0 = p.counters();
    let n = 100_000u32;
    let mut max_pending = 0;
    let mut rng = proptest::test_runner::TestRng::deterministic_rng(
        proptest::test_runner::RngAlgorithm::ChaCha,
    );
    for i in 0..n {
        let mut txid = [0u8; 12];
        rng.fill_bytes(&mut txid);
        let iid = rng.next_u64();
        let ip = Ipv6Addr::from((u128::from(0x2001_0db8_0001_0000u64) << 64) | u128::from(iid));
        let client = sa6(ip, 1024 + (rng.next_u32() % 60000) as u16);
        let msg = match i % 4 {
            0 => alloc_req(txid),
            1 => bind_req(txid, 0x4000 + (i % 0x3fff) as u16, sa6(PEER6, 6001)),
            2 => raw_stun(
                0x0008,
                txid,
                &[a_peer(txid, sa6(PEER6, 1)), a_peer(txid, sa4(PEER, 1))].concat(),
            ),
            _ => raw_stun(0x0004, txid, &a_life(600)),
        };
        let frame = to_server(client, &msg);
        let r = p.xdp(&frame, net.turn0).unwrap();
        assert_eq!(r.verdict, XDP_PASS);
        assert!(r.out == frame, "flood packet {i} modified");
        if i % 10_000 == 9_999 {
            let m = p.map_counts();
            max_pending = max_pending.max(m.pending);
            assert!(m.pending <= bound, "pending {} > bound {bound}", m.pending);
            assert_eq!(
                m.committed(),
                (1, 1, 1, 1),
                "the flood committed state: {m}"
            );
        }
    }
    let elapsed = t0.elapsed();
    let d = p.counters().since(&c0);
    assert_eq!(d.get("PASS_STUN"), u64::from(n));
    assert_eq!(d.get("STUN_MALFORMED"), 0);
    for c in LEARNED.iter().chain(&["STATE_FULL"]) {
        assert_eq!(d.get(c), 0, "{c}");
    }
    assert!(d.get("RECORD_FULL") > 0, "the flood filled the table");
    both_ways(&p, &net, &before, b"after the flood").unwrap();
    // learning goes on once the loader has removed the requests past any answer
    std::thread::sleep(PAST_BLIND * 2);
    assert!(p.remove_pending_older_than(PAST_BLIND * 2) > 0);
    let after = Bind {
        client: sa6(CLIENT6, 40002),
        relay: sa4(RELAY, 50002),
        peer: sa4(PEER, 6002),
        chan: 0x4002,
    };
    let x = new_txid();
    p.exchange(
        &net,
        after.client,
        &req(ALLOCATE, x, &[Attr::RequestedTransport(17)]),
        &alloc_ok(x, after.relay),
    )
    .unwrap();
    p.learn_channel(&net, after.client, after.peer, after.chan)
        .unwrap();
    both_ways(&p, &net, &after, b"new").unwrap();
    let m = p.map_counts();
    println!(
        "flood IPv6: {n} requests in {:.2} s ({:.0} k/s); pending bound {bound}, max seen \
         {max_pending}; maps at end: {m}\n{}",
        elapsed.as_secs_f64(),
        f64::from(n) / elapsed.as_secs_f64() / 1000.0,
        d.render()
    );
    assert!(m.pending <= bound);
}
