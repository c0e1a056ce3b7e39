//! The XDP fast path, table-driven through BPF_PROG_TEST_RUN.
//!
//! Every row: a name, its state (the standard channels below, plus an optional setup step and
//! an interface with forwarding switched off), an input frame, the expected verdict, the expected
//! output bytes (byte for byte: for a pass, the input itself), and the counter deltas (every
//! counter not named must stay 0). Each row runs on freshly loaded programs. Expected rewrites
//! are built from scratch with `Udp4Frame` (checksums computed here, not incrementally), every
//! rewritten frame's checksums are also verified with etherparse (`verify_udp4`), and a failing
//! row prints a hex diff.
//!
//! Run: `cargo test --release --test bpf_fastpath -- --test-threads=1` (root; skipped otherwise).

use std::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6};

use anyhow::{Context, Result};
use turn_bpf_testkit::progtest::*;
use turn_bpf_testkit::turn_client::{build_request, new_txid, BINDING};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// What a channel's lifetimes look like when a row starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Life {
    Live,
    AllocExpired,
    PermExpired,
    ChanExpired,
}

/// One installed channel binding.
#[derive(Clone, Copy, Debug)]
struct Chan {
    client: SocketAddrV4,
    relay: SocketAddrV4,
    peer: SocketAddrV4,
    chan: u16,
    life: Life,
}

const fn ch(
    client: Ipv4Addr,
    cport: u16,
    rport: u16,
    peer: Ipv4Addr,
    pport: u16,
    chan: u16,
    life: Life,
) -> Chan {
    Chan {
        client: SocketAddrV4::new(client, cport),
        relay: SocketAddrV4::new(RELAY, rport),
        peer: SocketAddrV4::new(peer, pport),
        chan,
        life,
    }
}

/// The main channel: client behind turn0, peer behind relay0.
const A: Chan = ch(CLIENT, 40000, 50000, PEER, 6000, 0x4000, Life::Live);
/// A peer behind turn0 (the client's side): both directions leave where they came in.
const T: Chan = ch(
    CLIENT,
    40001,
    50001,
    PEER_ON_TURN0,
    7000,
    0x4001,
    Life::Live,
);
/// A peer behind other0, an interface the agent is not on.
const U: Chan = ch(
    CLIENT,
    40002,
    50002,
    PEER_UNMANAGED,
    6000,
    0x4002,
    Life::Live,
);
/// A client without a neighbour entry (udp4_to_chan4 NO_NEIGH).
const NC: Chan = ch(
    CLIENT_NO_NEIGH,
    40003,
    50003,
    PEER,
    6003,
    0x4003,
    Life::Live,
);
/// A peer without a neighbour entry (chan4_to_udp4 NO_NEIGH).
const NP: Chan = ch(
    CLIENT,
    40004,
    50004,
    PEER_NO_NEIGH,
    6004,
    0x4004,
    Life::Live,
);
const XA: Chan = ch(CLIENT, 40005, 50005, PEER, 6005, 0x4005, Life::AllocExpired);
const XP: Chan = ch(CLIENT, 40006, 50006, PEER, 6006, 0x4006, Life::PermExpired);
const XC: Chan = ch(CLIENT, 40007, 50007, PEER, 6007, 0x4007, Life::ChanExpired);
/// A peer with no route at all.
const NR: Chan = ch(
    CLIENT,
    40008,
    50008,
    Ipv4Addr::new(10, 99, 0, 1),
    6008,
    0x4008,
    Life::Live,
);
/// A "peer" that is a local address of this host.
const LO: Chan = ch(CLIENT, 40009, 50009, SERVER, 6009, 0x4009, Life::Live);

const STANDARD: [Chan; 10] = [A, T, U, NC, NP, XA, XP, XC, NR, LO];

fn install(p: &Programs, c: &Chan) -> Result<()> {
    let mut d = Deadlines::in_secs(600);
    match c.life {
        Life::Live => {}
        Life::AllocExpired => d.alloc_ns = Deadlines::ago(5),
        Life::PermExpired => d.perm_ns = Deadlines::ago(5),
        Life::ChanExpired => d.chan_ns = Deadlines::ago(5),
    }
    p.install_channel_until(c.client, c.relay, c.peer, c.chan, d)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dev {
    Turn0,
    Relay0,
}

impl Dev {
    fn ifindex(self, net: &FibNet) -> u32 {
        match self {
            Dev::Turn0 => net.turn0,
            Dev::Relay0 => net.relay0,
        }
    }
    fn mac(self) -> [u8; 6] {
        match self {
            Dev::Turn0 => TURN0_MAC,
            Dev::Relay0 => RELAY0_MAC,
        }
    }
}

/// Where a peer lives: its MAC and the interface it is behind.
fn peer_side(peer: Ipv4Addr) -> ([u8; 6], Dev) {
    if peer == PEER_ON_TURN0 {
        (PEER_ON_TURN0_MAC, Dev::Turn0)
    } else {
        (PEER_MAC, Dev::Relay0)
    }
}

#[derive(Debug)]
enum Want {
    Pass,
    Redirect(Vec<u8>),
    Tx(Vec<u8>),
}

type Setup = Box<dyn Fn(&Programs) -> Result<()>>;

struct Row {
    name: String,
    input: Vec<u8>,
    dev: Dev,
    want: Want,
    counters: Vec<(&'static str, u64)>,
    setup: Option<Setup>,
    /// Switch forwarding off on this interface for the row.
    fwd_off: Option<&'static str>,
}

impl Row {
    fn pass(name: impl Into<String>, input: Vec<u8>, dev: Dev, counter: &'static str) -> Row {
        Row {
            name: name.into(),
            input,
            dev,
            want: Want::Pass,
            counters: vec![(counter, 1)],
            setup: None,
            fwd_off: None,
        }
    }

    fn with_setup(mut self, f: impl Fn(&Programs) -> Result<()> + 'static) -> Row {
        self.setup = Some(Box::new(f));
        self
    }

    fn fwd_off(mut self, dev: &'static str) -> Row {
        self.fwd_off = Some(dev);
        self
    }
}

// ------------------------------------------------------------------------------------------
// Frame builders for the two directions.

fn data_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// ChannelData from `c.client` to the server (on turn0).
fn cd_frame(c: &Chan, data: &[u8], pad: usize, pad_byte: u8) -> Udp4Frame {
    Udp4Frame::new(
        CLIENT_MAC,
        TURN0_MAC,
        c.client,
        SERVER_EP,
        &channel_data(c.chan, data, pad, pad_byte),
    )
}

/// A datagram from `c.peer` to `c.relay` (on the interface the peer is behind).
fn peer_frame(c: &Chan, data: &[u8]) -> (Udp4Frame, Dev) {
    let (mac, dev) = peer_side(*c.peer.ip());
    (Udp4Frame::new(mac, dev.mac(), c.peer, c.relay, data), dev)
}

/// Copy what a rewrite keeps from the input's IP header, TTL decremented, and the checksum
/// mode (0 stays 0).
fn keep_ip_fields(out: &mut Udp4Frame, inp: &Udp4Frame) {
    out.tos = inp.tos;
    out.id = inp.id;
    out.df = inp.df;
    out.ttl = inp.ttl - 1;
    out.udp_check = if inp.udp_check == UdpCheck::Zero {
        UdpCheck::Zero
    } else {
        UdpCheck::Correct
    };
}

/// A chan4_to_udp4 row: ChannelData on channel `c` (after `tweak` of the input frame) must come out as
/// the bare datagram relay -> peer, from the interface the peer is behind.
fn chan4_to_udp4(
    name: impl Into<String>,
    c: &Chan,
    data: &[u8],
    pad: usize,
    pad_byte: u8,
    tweak: impl FnOnce(&mut Udp4Frame),
) -> Row {
    let mut inp = cd_frame(c, data, pad, pad_byte);
    tweak(&mut inp);
    // the tweak may have changed data bytes (checksum-forcing rows): take them from the frame
    let data = inp.payload[4..4 + data.len()].to_vec();
    let (peer_mac, egress) = peer_side(*c.peer.ip());
    let mut out = Udp4Frame::new(egress.mac(), peer_mac, c.relay, c.peer, &data);
    keep_ip_fields(&mut out, &inp);
    let want = if egress == Dev::Turn0 {
        Want::Tx(out.build())
    } else {
        Want::Redirect(out.build())
    };
    Row {
        name: name.into(),
        input: inp.build(),
        dev: Dev::Turn0,
        want,
        counters: vec![("RELAYED_TO_PEER", 1)],
        setup: None,
        fwd_off: None,
    }
}

/// A udp4_to_chan4 row: a datagram from `c.peer` must come out as unpadded ChannelData server ->
/// client on turn0.
fn udp4_to_chan4(
    name: impl Into<String>,
    c: &Chan,
    data: &[u8],
    tweak: impl FnOnce(&mut Udp4Frame),
) -> Row {
    let (mut inp, dev) = peer_frame(c, data);
    tweak(&mut inp);
    let data = inp.payload[..data.len()].to_vec();
    let mut out = Udp4Frame::new(
        TURN0_MAC,
        CLIENT_MAC,
        SERVER_EP,
        c.client,
        &channel_data(c.chan, &data, 0, 0),
    );
    keep_ip_fields(&mut out, &inp);
    let want = if dev == Dev::Turn0 {
        Want::Tx(out.build())
    } else {
        Want::Redirect(out.build())
    };
    Row {
        name: name.into(),
        input: inp.build(),
        dev,
        want,
        counters: vec![("RELAYED_TO_CLIENT", 1)],
        setup: None,
        fwd_off: None,
    }
}

/// Data for channel `c` whose chan4_to_udp4 output's UDP checksum computes to 0 (sent as 0xFFFF).
fn data_folding_to_zero_chan4_to_udp4(c: &Chan, len: usize) -> Vec<u8> {
    let (peer_mac, egress) = peer_side(*c.peer.ip());
    let mut out = Udp4Frame::new(egress.mac(), peer_mac, c.relay, c.peer, &data_of(len, 5));
    force_udp_sum_zero(&mut out, 0);
    out.payload
}

/// Data whose udp4_to_chan4 output (ChannelData to the client) has a UDP checksum computing to 0.
fn data_folding_to_zero_udp4_to_chan4(c: &Chan, len: usize) -> Vec<u8> {
    let mut out = Udp4Frame::new(
        TURN0_MAC,
        CLIENT_MAC,
        SERVER_EP,
        c.client,
        &channel_data(c.chan, &data_of(len, 9), 0, 0),
    );
    force_udp_sum_zero(&mut out, 4);
    out.payload[4..].to_vec()
}

fn pass_cd(name: &str, c: &Chan, counter: &'static str, tweak: impl FnOnce(&mut Udp4Frame)) -> Row {
    let mut f = cd_frame(c, &data_of(33, 1), 3, 0xa5);
    tweak(&mut f);
    Row::pass(name, f.build(), Dev::Turn0, counter)
}

fn pass_peer(
    name: &str,
    c: &Chan,
    counter: &'static str,
    tweak: impl FnOnce(&mut Udp4Frame),
) -> Row {
    let (mut f, dev) = peer_frame(c, &data_of(33, 2));
    tweak(&mut f);
    Row::pass(name, f.build(), dev, counter)
}

// ------------------------------------------------------------------------------------------
// The tables.

fn relay_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    // chan4_to_udp4: sizes x padding (0..3 bytes, zero and non-zero pad bytes; odd and even lengths)
    for len in [1usize, 2, 3, 4, 5, 7, 8, 64, 101, 512, 1171, 1172] {
        for pad in 0..=3usize {
            for pad_byte in [0u8, 0xff] {
                if pad == 0 && pad_byte != 0 {
                    continue;
                }
                rows.push(chan4_to_udp4(
                    format!("chan4_to_udp4 len {len} pad {pad} x {pad_byte:#04x}"),
                    &A,
                    &data_of(len, len as u8),
                    pad,
                    pad_byte,
                    |_| {},
                ));
            }
        }
    }
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 pad bytes 0xde 0xad 0xbe (odd data)",
        &A,
        &data_of(13, 3),
        3,
        0,
        |f| {
            let n = f.payload.len();
            f.payload[n - 3..].copy_from_slice(&[0xde, 0xad, 0xbe]);
        },
    ));
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 pad bytes 0x01 0x80 (even data)",
        &A,
        &data_of(14, 4),
        2,
        0,
        |f| {
            let n = f.payload.len();
            f.payload[n - 2..].copy_from_slice(&[0x01, 0x80]);
        },
    ));
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 UDP checksum 0 stays 0",
        &A,
        &data_of(100, 7),
        2,
        0x11,
        |f| f.udp_check = UdpCheck::Zero,
    ));
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 UDP checksum 0 stays 0 (odd, padded)",
        &A,
        &data_of(37, 7),
        3,
        0x77,
        |f| f.udp_check = UdpCheck::Zero,
    ));
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 output checksum folds to 0 -> 0xFFFF",
        &A,
        &data_folding_to_zero_chan4_to_udp4(&A, 40),
        0,
        0,
        |_| {},
    ));
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 output checksum folds to 0 -> 0xFFFF (padded input)",
        &A,
        &data_folding_to_zero_chan4_to_udp4(&A, 41),
        3,
        0xc3,
        |_| {},
    ));
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 input checksum 0xFFFF (sum folds to 0)",
        &A,
        &data_of(40, 8),
        1,
        0x5a,
        |f| force_udp_sum_zero(f, 4),
    ));
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 TTL 2 -> 1",
        &A,
        &data_of(10, 0),
        0,
        0,
        |f| f.ttl = 2,
    ));
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 TTL 255, TOS 0xb9, ID 0xbeef, no DF kept",
        &A,
        &data_of(20, 0),
        0,
        0,
        |f| {
            f.ttl = 255;
            f.tos = 0xb9;
            f.id = 0xbeef;
            f.df = false;
        },
    ));
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 ID 0, DF, ECN CE kept",
        &A,
        &data_of(20, 0),
        1,
        9,
        |f| {
            f.id = 0;
            f.tos = 0x03;
        },
    ));
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 1 byte in a 60-byte frame (Ethernet trailer cut)",
        &A,
        &[0x42],
        0,
        0,
        |f| f.trailer = vec![0xee; 60 - 47],
    ));
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 padded, with Ethernet trailer",
        &A,
        &data_of(2, 6),
        2,
        0x99,
        |f| f.trailer = vec![0; 9],
    ));
    const TOP: Chan = Chan {
        chan: 0x7fff,
        client: SocketAddrV4::new(CLIENT, 40010),
        ..A
    };
    rows.push(
        chan4_to_udp4(
            "chan4_to_udp4 channel 0x7FFF",
            &TOP,
            &data_of(9, 0),
            3,
            1,
            |_| {},
        )
        .with_setup(|p| install(p, &TOP)),
    );
    // the peer is behind the interface the ChannelData came in on: redirected back into it, 1400 bytes fit
    for (len, pad) in [(1usize, 3usize), (100, 0), (1400, 0), (1400, 2), (1472, 0)] {
        rows.push(chan4_to_udp4(
            format!("chan4_to_udp4 to a peer behind turn0 (back out of turn0) len {len} pad {pad}"),
            &T,
            &data_of(len, 1),
            pad,
            0x3c,
            |_| {},
        ));
    }
    rows.push(chan4_to_udp4(
        "chan4_to_udp4 back out of turn0, checksum 0",
        &T,
        &data_of(77, 1),
        1,
        0,
        |f| f.udp_check = UdpCheck::Zero,
    ));
    // egress forwarding off does not matter: only the ingress device's setting is checked
    rows.push(
        chan4_to_udp4(
            "chan4_to_udp4 with forwarding off on the egress relay0 still relays",
            &A,
            &data_of(30, 1),
            0,
            0,
            |_| {},
        )
        .fwd_off("relay0"),
    );

    // udp4_to_chan4
    for len in [1usize, 2, 3, 4, 5, 63, 64, 512, 1171, 1172] {
        rows.push(udp4_to_chan4(
            format!("udp4_to_chan4 len {len}"),
            &A,
            &data_of(len, 3),
            |_| {},
        ));
    }
    rows.push(udp4_to_chan4(
        "udp4_to_chan4 UDP checksum 0 stays 0",
        &A,
        &data_of(99, 4),
        |f| f.udp_check = UdpCheck::Zero,
    ));
    rows.push(udp4_to_chan4(
        "udp4_to_chan4 output checksum folds to 0 -> 0xFFFF",
        &A,
        &data_folding_to_zero_udp4_to_chan4(&A, 50),
        |_| {},
    ));
    rows.push(udp4_to_chan4(
        "udp4_to_chan4 input checksum 0xFFFF (sum folds to 0)",
        &A,
        &data_of(51, 4),
        |f| force_udp_sum_zero(f, 0),
    ));
    rows.push(udp4_to_chan4(
        "udp4_to_chan4 TTL 2 -> 1, TOS/ID/no-DF kept",
        &A,
        &data_of(21, 4),
        |f| {
            f.ttl = 2;
            f.tos = 0x2e;
            f.id = 0xfffe;
            f.df = false;
        },
    ));
    rows.push(udp4_to_chan4(
        "udp4_to_chan4 1 byte in a 60-byte frame (Ethernet trailer cut)",
        &A,
        &[0x42],
        |f| f.trailer = vec![0xee; 60 - 43],
    ));
    for len in [1usize, 1400, 1468] {
        rows.push(udp4_to_chan4(
            format!("udp4_to_chan4 from a peer behind turn0 (back out of turn0) len {len}"),
            &T,
            &data_of(len, 8),
            |_| {},
        ));
    }
    rows
}

fn pass_rows() -> Vec<Row> {
    // no binding
    let mut rows = vec![pass_cd(
        "no channel: unknown number",
        &A,
        "PASS_NO_CHANNEL",
        |f| f.payload[0..2].copy_from_slice(&0x4fffu16.to_be_bytes()),
    )];
    rows.push(pass_cd(
        "no channel: same channel, other client port",
        &A,
        "PASS_NO_CHANNEL",
        |f| f.src.set_port(40099),
    ));
    rows.push(pass_cd(
        "no channel: same channel, other client IP",
        &A,
        "PASS_NO_CHANNEL",
        |f| f.src.set_ip(Ipv4Addr::new(192, 0, 2, 99)),
    ));
    rows.push(pass_cd(
        "no channel: to another server address",
        &A,
        "PASS_NO_CHANNEL",
        |f| f.dst.set_ip(Ipv4Addr::new(192, 0, 2, 100)),
    ));
    rows.push(pass_peer(
        "no channel: peer from another port",
        &A,
        "PASS_NO_CHANNEL",
        |f| f.src.set_port(6099),
    ));
    rows.push(pass_peer(
        "no channel: another peer IP",
        &A,
        "PASS_NO_CHANNEL",
        |f| f.src.set_ip(Ipv4Addr::new(198, 51, 100, 99)),
    ));
    rows.push(pass_peer(
        "no channel: bound peer to another (marked) relay port",
        &A,
        "PASS_NO_CHANNEL",
        |f| f.dst.set_port(T.relay.port()),
    ));

    // lifetimes
    for (c, what) in [(XA, "allocation"), (XP, "permission"), (XC, "channel")] {
        rows.push(pass_cd(
            &format!("expired {what}: chan4_to_udp4"),
            &c,
            "PASS_EXPIRED",
            |_| {},
        ));
        rows.push(pass_peer(
            &format!("expired {what}: udp4_to_chan4"),
            &c,
            "PASS_EXPIRED",
            |_| {},
        ));
    }
    let replace_alloc = |p: &Programs| {
        // the same 5-tuple allocated again (new id): A's channel belongs to the old one
        p.install_channel(
            A.client,
            SocketAddrV4::new(RELAY, 50100),
            PEER_EP2,
            0x4100,
            600,
        )
    };
    rows.push(
        pass_cd(
            "allocation replaced: chan4_to_udp4",
            &A,
            "PASS_EXPIRED",
            |_| {},
        )
        .with_setup(replace_alloc),
    );
    rows.push(
        pass_peer(
            "allocation replaced: udp4_to_chan4",
            &A,
            "PASS_EXPIRED",
            |_| {},
        )
        .with_setup(replace_alloc),
    );

    // IP layer
    rows.push(pass_cd("fragment: MF set", &A, "PASS_FRAGMENT", |f| {
        f.mf = true
    }));
    rows.push(pass_cd("fragment: offset set", &A, "PASS_FRAGMENT", |f| {
        f.df = false;
        f.frag_offset = 185;
    }));
    rows.push(pass_cd(
        "fragment: MF and offset",
        &A,
        "PASS_FRAGMENT",
        |f| {
            f.mf = true;
            f.frag_offset = 1;
        },
    ));
    rows.push(pass_peer(
        "fragment: udp4_to_chan4 MF set",
        &A,
        "PASS_FRAGMENT",
        |f| f.mf = true,
    ));
    rows.push(pass_cd(
        "IP options (ihl 6): chan4_to_udp4",
        &A,
        "PASS_IP_OPTIONS",
        |f| f.options = vec![0x94, 0x04, 0, 0],
    ));
    rows.push(pass_peer(
        "IP options (ihl 6): udp4_to_chan4",
        &A,
        "PASS_IP_OPTIONS",
        |f| f.options = vec![1, 1, 1, 0],
    ));
    rows.push(pass_cd("VLAN 802.1Q", &A, "PASS_VLAN", |f| {
        f.vlans = vec![(0x8100, 100)]
    }));
    rows.push(pass_cd("VLAN 802.1ad (QinQ)", &A, "PASS_VLAN", |f| {
        f.vlans = vec![(0x88a8, 200), (0x8100, 100)]
    }));
    rows.push(pass_peer(
        "VLAN 802.1Q: udp4_to_chan4",
        &A,
        "PASS_VLAN",
        |f| f.vlans = vec![(0x8100, 7)],
    ));

    // lengths
    rows.push(pass_cd(
        "bad length: ChannelData length > payload",
        &A,
        "PASS_BAD_LENGTH",
        |f| f.payload[2..4].copy_from_slice(&37u16.to_be_bytes()),
    ));
    rows.push(pass_cd(
        "bad length: ChannelData length 0",
        &A,
        "PASS_BAD_LENGTH",
        |f| f.payload[2..4].copy_from_slice(&0u16.to_be_bytes()),
    ));
    rows.push(pass_cd(
        "bad length: 4 bytes of padding",
        &A,
        "PASS_BAD_LENGTH",
        |f| f.payload.push(0),
    ));
    rows.push(pass_cd(
        "bad length: 40 bytes after the data",
        &A,
        "PASS_BAD_LENGTH",
        |f| f.payload.extend_from_slice(&[0; 37]),
    ));
    rows.push(pass_cd(
        "bad length: GSO-like frame with two ChannelData messages",
        &A,
        "PASS_BAD_LENGTH",
        |f| {
            f.payload = channel_data(A.chan, &data_of(40, 1), 0, 0);
            f.payload
                .extend_from_slice(&channel_data(A.chan, &data_of(40, 2), 0, 0));
        },
    ));
    rows.push(pass_cd(
        "bad length: GSO-like frame, 64 short messages",
        &A,
        "PASS_BAD_LENGTH",
        |f| {
            f.payload = (0..64)
                .flat_map(|i| channel_data(A.chan, &data_of(8, i), 0, 0))
                .collect()
        },
    ));
    rows.push(pass_cd(
        "bad length: 3-byte payload",
        &A,
        "PASS_BAD_LENGTH",
        |f| f.payload = vec![0x40, 0x00, 0x00],
    ));
    rows.push(pass_cd(
        "bad length: IP total length > frame",
        &A,
        "PASS_BAD_LENGTH",
        |f| {
            f.ip_len_delta = 1;
            f.udp_len_delta = 1;
        },
    ));
    rows.push(pass_cd(
        "bad length: IP total length < 28",
        &A,
        "PASS_BAD_LENGTH",
        |f| f.ip_len_delta = -(f.payload.len() as i32) - 1,
    ));
    rows.push(pass_cd(
        "bad length: UDP length < IP length",
        &A,
        "PASS_BAD_LENGTH",
        |f| f.udp_len_delta = -1,
    ));
    rows.push(pass_cd(
        "bad length: UDP length > IP length",
        &A,
        "PASS_BAD_LENGTH",
        |f| f.udp_len_delta = 4,
    ));
    rows.push(pass_cd(
        "bad length: IP length < frame, UDP length = rest of frame",
        &A,
        "PASS_BAD_LENGTH",
        |f| f.ip_len_delta = -4,
    ));
    rows.push(pass_peer(
        "bad length: udp4_to_chan4 empty datagram",
        &A,
        "PASS_BAD_LENGTH",
        |f| f.payload.clear(),
    ));
    rows.push(pass_peer(
        "bad length: udp4_to_chan4 IP total length > frame",
        &A,
        "PASS_BAD_LENGTH",
        |f| {
            f.ip_len_delta = 2;
            f.udp_len_delta = 2;
        },
    ));
    rows.push(pass_peer(
        "bad length: udp4_to_chan4 UDP length != IP length",
        &A,
        "PASS_BAD_LENGTH",
        |f| f.udp_len_delta = -2,
    ));

    // TTL
    for ttl in [1u8, 0] {
        rows.push(pass_cd(
            &format!("TTL {ttl}: chan4_to_udp4"),
            &A,
            "PASS_TTL",
            |f| f.ttl = ttl,
        ));
        rows.push(pass_peer(
            &format!("TTL {ttl}: udp4_to_chan4"),
            &A,
            "PASS_TTL",
            |f| f.ttl = ttl,
        ));
    }

    // MTU: relay0 has MTU 1200, turn0 1500. chan4_to_udp4 shrinks the packet but may leave through a
    // smaller MTU; udp4_to_chan4 grows it by 4 bytes.
    for len in [1173usize, 1400] {
        let f = cd_frame(&A, &data_of(len, 0), 0, 0);
        rows.push(Row::pass(
            format!("MTU: chan4_to_udp4 {len} bytes > relay0 MTU"),
            f.build(),
            Dev::Turn0,
            "PASS_MTU",
        ));
    }
    for len in [1469usize, 1472] {
        let (f, dev) = peer_frame(&T, &data_of(len, 0));
        rows.push(Row::pass(
            format!("MTU: udp4_to_chan4 {len} bytes + 4 > turn0 MTU"),
            f.build(),
            dev,
            "PASS_MTU",
        ));
    }

    // next hop
    rows.push(pass_cd(
        "NO_NEIGH: chan4_to_udp4 peer",
        &NP,
        "PASS_NO_NEIGH",
        |_| {},
    ));
    rows.push(pass_peer(
        "NO_NEIGH: udp4_to_chan4 client",
        &NC,
        "PASS_NO_NEIGH",
        |_| {},
    ));
    rows.push(
        pass_cd(
            "FWD_DISABLED: chan4_to_udp4, turn0 off",
            &A,
            "PASS_FWD_DISABLED",
            |_| {},
        )
        .fwd_off("turn0"),
    );
    rows.push(
        pass_peer(
            "FWD_DISABLED: udp4_to_chan4, relay0 off",
            &A,
            "PASS_FWD_DISABLED",
            |_| {},
        )
        .fwd_off("relay0"),
    );
    rows.push(pass_cd(
        "egress unmanaged: peer behind other0",
        &U,
        "PASS_EGRESS_UNMANAGED",
        |_| {},
    ));
    rows.push(pass_cd(
        "FIB: peer without a route",
        &NR,
        "PASS_FIB_OTHER",
        |_| {},
    ));
    rows.push(pass_cd(
        "FIB: peer is a local address",
        &LO,
        "PASS_FIB_OTHER",
        |_| {},
    ));

    // not ours
    let dns = Udp4Frame::new(
        CLIENT_MAC,
        TURN0_MAC,
        A.client,
        SocketAddrV4::new(SERVER, 53),
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01",
    );
    rows.push(Row::pass(
        "unrelated UDP: DNS to port 53",
        dns.build(),
        Dev::Turn0,
        "PASS_NOT_OURS",
    ));
    rows.push(pass_peer(
        "unrelated UDP: to an unmarked relay-range port",
        &A,
        "PASS_NOT_OURS",
        |f| f.dst.set_port(50099),
    ));
    rows.push(Row::pass(
        "non-IP: ARP",
        arp_request(CLIENT_MAC, CLIENT, SERVER),
        Dev::Turn0,
        "PASS_NOT_OURS",
    ));
    rows.push(Row::pass(
        "runt: Ethernet header only",
        {
            let mut f = cd_frame(&A, b"x", 0, 0).build();
            f.truncate(14);
            f
        },
        Dev::Turn0,
        "PASS_NOT_OURS",
    ));
    rows.push(Row::pass(
        "runt: IPv4 header cut short",
        {
            let mut f = cd_frame(&A, b"x", 0, 0).build();
            f.truncate(30);
            f
        },
        Dev::Turn0,
        "PASS_NOT_OURS",
    ));
    rows.push(Row::pass(
        "runt: UDP header cut short",
        {
            let mut f = cd_frame(&A, b"x", 0, 0).build();
            f.truncate(38);
            f
        },
        Dev::Turn0,
        "PASS_NOT_OURS",
    ));
    rows.push(Row::pass(
        "TCP to the TURN port",
        {
            let b = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, TURN0_MAC)
                .ipv4(CLIENT.octets(), SERVER.octets(), 64)
                .tcp(40000, TURN_PORT, 1, 1000);
            let payload = channel_data(A.chan, b"tcp", 1, 0);
            let mut v = Vec::new();
            b.write(&mut v, &payload).unwrap();
            v
        },
        Dev::Turn0,
        "PASS_NOT_OURS",
    ));
    let c6 = "[2001:db8:1::2]:40000".parse::<SocketAddrV6>().unwrap();
    let s6 = "[2001:db8:1::1]:3478".parse::<SocketAddrV6>().unwrap();
    let r6 = "[2001:db8:2::1]:50000".parse::<SocketAddrV6>().unwrap();
    let p6 = "[2001:db8:2::2]:6000".parse::<SocketAddrV6>().unwrap();
    rows.push(Row::pass(
        "IPv6 ChannelData to the TURN port, no binding",
        udp6(
            CLIENT_MAC,
            TURN0_MAC,
            c6,
            s6,
            &channel_data(A.chan, b"v6", 2, 0),
        ),
        Dev::Turn0,
        "PASS_NO_CHANNEL",
    ));
    rows.push(Row::pass(
        "IPv6 UDP to a marked relay port, no binding",
        udp6(PEER_MAC, RELAY0_MAC, p6, r6, b"v6 data"),
        Dev::Relay0,
        "PASS_NO_CHANNEL",
    ));
    rows.push(Row::pass(
        "IPv6 UDP to port 53",
        udp6(
            CLIENT_MAC,
            TURN0_MAC,
            c6,
            SocketAddrV6::new(*s6.ip(), 53, 0, 0),
            b"dns",
        ),
        Dev::Turn0,
        "PASS_NOT_OURS",
    ));
    let binding = build_request(BINDING, new_txid(), &[], None);
    rows.push(Row::pass(
        "STUN Binding request to the TURN port",
        to_server(A.client, &binding),
        Dev::Turn0,
        "PASS_STUN",
    ));
    rows.push(Row::pass(
        "STUN-like (first byte 0x80) to the TURN port",
        to_server(A.client, &[0x80, 0x60, 0, 0, 1, 2, 3, 4]),
        Dev::Turn0,
        "PASS_STUN",
    ));
    rows.push(Row::pass(
        "empty UDP to the TURN port",
        to_server(A.client, &[]),
        Dev::Turn0,
        "PASS_STUN",
    ));
    rows.push(Row::pass(
        "ChannelData-shaped payload from the peer on a TURN port is STUN's",
        Udp4Frame::new(
            PEER_MAC,
            RELAY0_MAC,
            A.peer,
            SocketAddrV4::new(RELAY, TURN_PORT),
            &channel_data(0x4000, b"x", 0, 0),
        )
        .build(),
        Dev::Relay0,
        "PASS_NO_CHANNEL",
    ));
    rows
}

/// A second peer for setups.
const PEER_EP2: SocketAddrV4 = SocketAddrV4::new(PEER, 6999);

// ------------------------------------------------------------------------------------------
// The runner.

/// Run one step (frame in, verdict/bytes/counters out); Err describes every mismatch.
fn check_step(
    p: &Programs,
    net: &FibNet,
    input: &[u8],
    dev: Dev,
    want: &Want,
    counters: &[(&str, u64)],
) -> std::result::Result<u32, String> {
    let c0 = p.counters();
    let r = p
        .xdp(input, dev.ifindex(net))
        .map_err(|e| format!("{e:#}"))?;
    let delta = p.counters().since(&c0);
    let mut errs = Vec::new();
    let (verdict, out): (u32, &[u8]) = match want {
        Want::Pass => (XDP_PASS, input),
        Want::Redirect(o) => (XDP_REDIRECT, o),
        // leaving where it came in is a redirect into that interface too (fwd.h)
        Want::Tx(o) => (XDP_REDIRECT, o),
    };
    if r.verdict != verdict {
        errs.push(format!("verdict {} want {verdict}", r.verdict));
    }
    if r.out != out {
        errs.push(format!("output bytes differ:\n{}", hex_diff(out, &r.out)));
    }
    if verdict != XDP_PASS {
        if let Err(e) = verify_udp4(&r.out) {
            errs.push(format!(
                "output fails the independent checksum check: {e:#}"
            ));
        }
    }
    if let Err(e) = expect_delta(&delta, counters) {
        errs.push(format!("{e}\n  all deltas:\n{}", delta.render()));
    }
    if errs.is_empty() {
        Ok(r.verdict)
    } else {
        Err(errs.join("\n"))
    }
}

fn run_table(ns: &str, rows: Vec<Row>) -> Result<()> {
    let net = FibNet::new(ns)?;
    let _in = net.enter()?;
    let n = rows.len();
    let mut failed = Vec::new();
    for row in rows {
        let p = Programs::load_for(&net, &Config::default())?;
        for c in STANDARD {
            install(&p, &c).with_context(|| format!("installing {c:?}"))?;
        }
        if let Some(s) = &row.setup {
            s(&p).with_context(|| format!("setting up {}", row.name))?;
        }
        if let Some(dev) = row.fwd_off {
            net.set_forwarding(dev, false)?;
        }
        let res = check_step(&p, &net, &row.input, row.dev, &row.want, &row.counters);
        if let Some(dev) = row.fwd_off {
            net.set_forwarding(dev, true)?;
        }
        match res {
            Ok(v) => println!("ok    {:<68} verdict {v}", row.name),
            Err(e) => {
                println!("FAIL  {}\n{e}", row.name);
                failed.push(row.name);
            }
        }
    }
    println!(
        "{} rows, {} passed, {} failed",
        n,
        n - failed.len(),
        failed.len()
    );
    anyhow::ensure!(failed.is_empty(), "failed rows: {failed:#?}");
    Ok(())
}

#[test]
fn relayed_packets() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    run_table("tbt-fastpath-relay", relay_rows()).unwrap();
}

#[test]
fn passed_packets() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    run_table("tbt-fastpath-pass", pass_rows()).unwrap();
}

/// spill_every=3: exactly every 3rd datagram of a channel goes to the server (unmodified), per
/// direction; packets passed for other reasons do not count.
#[test]
fn spill_every_third() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let net = FibNet::new("tbt-fastpath-spill").unwrap();
    let _in = net.enter().unwrap();
    let cfg = Config {
        spill_every: 3,
        ..Config::default()
    };
    let p = Programs::load_for(&net, &cfg).unwrap();
    install(&p, &A).unwrap();
    let mut failed = Vec::new();
    let mut pattern = String::new();
    for i in 1..=12usize {
        // a TTL-1 packet in between is passed for its own reason and does not move the count
        let ttl1 = cd_frame(&A, &data_of(5, 0), 0, 0);
        let mut ttl1 = ttl1;
        ttl1.ttl = 1;
        if let Err(e) = check_step(
            &p,
            &net,
            &ttl1.build(),
            Dev::Turn0,
            &Want::Pass,
            &[("PASS_TTL", 1)],
        ) {
            failed.push(format!("ttl-1 before #{i}: {e}"));
        }
        let row = chan4_to_udp4("spill", &A, &data_of(i * 10, i as u8), i % 4, 0x55, |_| {});
        let (want, counters) = if i % 3 == 0 {
            (Want::Pass, vec![("PASS_SPILL", 1)])
        } else {
            (row.want, row.counters)
        };
        match check_step(&p, &net, &row.input, Dev::Turn0, &want, &counters) {
            Ok(v) => pattern.push(if v == XDP_PASS { 'P' } else { 'R' }),
            Err(e) => failed.push(format!("chan4_to_udp4 #{i}: {e}")),
        }
    }
    pattern.push(' ');
    for i in 1..=12usize {
        let row = udp4_to_chan4("spill", &A, &data_of(i * 7, i as u8), |_| {});
        let (want, counters) = if i % 3 == 0 {
            (Want::Pass, vec![("PASS_SPILL", 1)])
        } else {
            (row.want, row.counters)
        };
        match check_step(&p, &net, &row.input, row.dev, &want, &counters) {
            Ok(v) => pattern.push(if v == XDP_PASS { 'P' } else { 'R' }),
            Err(e) => failed.push(format!("udp4_to_chan4 #{i}: {e}")),
        }
    }
    println!("spill pattern (chan4_to_udp4 udp4_to_chan4): {pattern}");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(pattern, "RRPRRPRRPRRP RRPRRPRRPRRP");
}

/// No live agent (its alive stamp older than TB_AGENT_STALE_NS): both directions of a live
/// channel go to the server unmodified, counted as PASS_NO_AGENT; a fresh stamp relays them
/// again (the positive control, on the same programs and channel).
#[test]
fn no_live_agent_passes_everything() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let net = FibNet::new("tbt-fastpath-noagent").unwrap();
    let _in = net.enter().unwrap();
    let p = Programs::load_for(&net, &Config::default()).unwrap();
    install(&p, &A).unwrap();
    let stale = turn_bpf::consts::TB_AGENT_STALE_NS;
    let mut failed = Vec::new();
    for (what, alive, relays) in [
        ("fresh stamp", turn_bpf::maps::now_ns(), true),
        (
            "stamp just stale",
            turn_bpf::maps::now_ns() - stale - 50_000_000,
            false,
        ),
        ("never stamped", 0, false),
        ("stamped again", turn_bpf::maps::now_ns(), true),
    ] {
        p.set_alive_ns(alive).unwrap();
        let to_peer = chan4_to_udp4(what, &A, &data_of(64, 3), 0, 0, |_| {});
        let to_client = udp4_to_chan4(what, &A, &data_of(65, 4), |_| {});
        for row in [to_peer, to_client] {
            let (want, counters) = if relays {
                (row.want, row.counters)
            } else {
                (Want::Pass, vec![("PASS_NO_AGENT", 1)])
            };
            if let Err(e) = check_step(&p, &net, &row.input, row.dev, &want, &counters) {
                failed.push(format!("{what}: {e}"));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
