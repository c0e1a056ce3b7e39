//! End to end with the real coturn, every address family pair: IPv6 client ↔ IPv6 peer, IPv4
//! client ↔ IPv6 peer, IPv6 client ↔ IPv4 peer (coturn's default for an IPv6 client), and dual
//! allocations (ADDITIONAL-ADDRESS-FAMILY) with one peer per family, from either client family.
//! Each way, 1,000 datagrams of 1–1,200 bytes come back byte-exact from an echo peer, all of them
//! relayed in XDP (the agent's counters exactly), and the server's sockets (UDP and UDP6) see no
//! data datagram. A datagram that does not fit the 20 bytes more of IPv6 still arrives, through
//! coturn. And coturn behind 1:1 NAT in both families (`--external-ip PUBLIC/PRIVATE` per family):
//! the public IPv6 address advertised, its traffic relayed in XDP, also across families.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use turn_bpf_testkit::agent::{AgentExit, AgentProc};
use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::turn_client::{RelayFamily, TurnClient};

use common::*;

const N: usize = 1000;
const MAX: usize = 1200;

/// Sizes 1..=1200: the first is 1 byte, the second 1,200, the rest scrambled between.
fn size_of(i: usize) -> usize {
    match i {
        0 => 1,
        1 => MAX,
        _ => 1 + (i * 389) % MAX,
    }
}

/// Datagram `i`'s payload for exchange `salt`.
fn payload(salt: u32, i: usize, len: usize) -> Vec<u8> {
    let seed = (i as u32 ^ salt.rotate_left(16)).wrapping_mul(2_654_435_761);
    (0..len)
        .map(|k| (seed >> (k % 4 * 8)) as u8 ^ k as u8)
        .collect()
}

/// Send one datagram on `channel` and wait for its echo; panics on a changed echo.
fn roundtrip(c: &TurnClient, channel: u16, p: &[u8]) -> bool {
    let mut buf = vec![0u8; 2048];
    c.send_channel_data(channel, p)
        .expect("sending ChannelData");
    match c
        .recv_channel_data(&mut buf, Duration::from_secs(1))
        .expect("receiving")
    {
        Some((ch, len)) => {
            assert_eq!(ch, channel, "channel of the echo");
            assert_eq!(&buf[..len], p, "{} bytes came back changed", p.len());
            true
        }
        None => false,
    }
}

/// N datagrams of 1..=1200 bytes on `channel`, one at a time; how many came back.
fn exchange(c: &TurnClient, channel: u16, salt: u32) -> usize {
    (0..N)
        .filter(|&i| {
            let ok = roundtrip(c, channel, &payload(salt, i, size_of(i)));
            if !ok {
                eprintln!("datagram {i} ({} bytes) was not echoed", size_of(i));
            }
            ok
        })
        .count()
}

/// Resolve the server's neighbours in both families first: a datagram meeting an empty
/// neighbour cache goes to coturn (PASS_NO_NEIGH), and these tests count exactly.
fn warm_neighbours(lab: &Lab) {
    for ip in [
        lab::CLIENT_V4.to_string(),
        lab::PEER_V4.to_string(),
        lab::CLIENT_V6.to_string(),
        lab::PEER_V6.to_string(),
    ] {
        lab.exec(Host::Srv, &["ping", "-c", "1", "-W", "2", &ip])
            .unwrap_or_else(|e| panic!("ping {ip}: {e:#}"));
    }
}

fn start_agent(lab: &Lab, name: &str) -> AgentProc {
    AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path(name),
    )
    .unwrap()
}

/// Datagrams delivered to the server namespace's UDP and UDP6 sockets so far.
fn srv_in(lab: &Lab) -> (u64, u64) {
    let c = lab.udp_counters(Host::Srv).unwrap();
    (c.v4.in_datagrams, c.v6.in_datagrams)
}

/// The counters every case checks: everything relayed in XDP, nothing passed up.
fn assert_all_offloaded(exit: &AgentExit, pairs: u64) {
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    let n = pairs * N as u64;
    assert_eq!(exit.counter("RELAYED_TO_PEER"), n, "{}", exit.output);
    assert_eq!(exit.counter("RELAYED_TO_CLIENT"), n, "{}", exit.output);
    for c in [
        "PASS_NO_NEIGH",
        "PASS_FWD_DISABLED",
        "PASS_NO_CHANNEL",
        "PASS_MTU",
        "ABORTED",
    ] {
        assert_eq!(exit.counter(c), 0, "{c}:\n{}", exit.output);
    }
    assert_eq!(exit.counter("LEARN_CHANNEL"), pairs, "{}", exit.output);
}

/// One allocation of `family` from a client of `client_v6`, one channel per peer address in
/// `peers`; every peer's exchange is relayed in XDP both ways.
fn case(name: &str, client_v6: bool, family: RelayFamily, peers: &[IpAddr]) {
    let t0 = Instant::now();
    let lab = Lab::up(name, &[]).unwrap();
    warm_neighbours(&lab);
    let echoes: Vec<Echo> = peers
        .iter()
        .enumerate()
        .map(|(k, ip)| Echo::start_at(&lab, *ip, 7100 + k as u16))
        .collect();
    let agent = start_agent(&lab, name);
    for line in [
        "enabled IPv6 forwarding on turn0",
        "enabled IPv6 forwarding on relay0",
    ] {
        assert!(agent.output().contains(line), "{}", agent.output());
    }

    let mut c = client_of(&lab, client_v6);
    let alloc = c.allocate_family(None, family).expect("allocate");
    let relayed: Vec<SocketAddr> = [Some(alloc.relayed), alloc.additional_relayed]
        .into_iter()
        .flatten()
        .collect();
    for e in &echoes {
        assert!(
            relayed.iter().any(|r| r.is_ipv6() == e.addr.is_ipv6()),
            "no relayed address of the peer's family: {alloc:?}"
        );
    }
    for (k, e) in echoes.iter().enumerate() {
        c.channel_bind(0x4000 + k as u16, e.addr)
            .expect("channel bind");
    }

    let before = srv_in(&lab);
    for (k, e) in echoes.iter().enumerate() {
        let got = exchange(&c, 0x4000 + k as u16, k as u32 + 1);
        assert_eq!(got, N, "{name}: peer {}: {got} of {N} echoed", e.addr);
    }
    let after = srv_in(&lab);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_all_offloaded(&exit, echoes.len() as u64);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 0),
        "{name}: data datagrams reached the server's UDP/UDP6 sockets:\n{}",
        exit.output
    );
    for e in echoes {
        assert_eq!(e.stop(), N as u64);
    }
    assert_clean(&lab);
    eprintln!("{name}: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn v6_client_to_v6_peer() {
    skip_unless_lab!();
    case("tbt-v6a", true, RelayFamily::V6, &[lab::PEER_V6.into()]);
}

#[test]
fn v4_client_to_v6_peer() {
    skip_unless_lab!();
    case("tbt-v6b", false, RelayFamily::V6, &[lab::PEER_V6.into()]);
}

#[test]
fn v6_client_to_v4_peer_by_default() {
    skip_unless_lab!();
    case(
        "tbt-v6c",
        true,
        RelayFamily::Default,
        &[lab::PEER_V4.into()],
    );
}

#[test]
fn dual_allocation_from_a_v4_client_one_peer_per_family() {
    skip_unless_lab!();
    case(
        "tbt-v6d4",
        false,
        RelayFamily::Dual,
        &[lab::PEER_V4.into(), lab::PEER_V6.into()],
    );
}

#[test]
fn dual_allocation_from_a_v6_client_one_peer_per_family() {
    skip_unless_lab!();
    case(
        "tbt-v6d6",
        true,
        RelayFamily::Dual,
        &[lab::PEER_V4.into(), lab::PEER_V6.into()],
    );
}

/// An IPv4 client's datagram that fills a 1500-byte MTU (a 1472-byte ChannelData frame) cannot
/// take the 20 bytes more of IPv6 towards an IPv6 peer: the fast path passes it (PASS_MTU) and
/// coturn relays it; the echo, fragmented by the peer, comes back through coturn too. One byte
/// less of room than needed is enough: 1,448 bytes of data still go in XDP.
#[test]
fn a_v4_datagram_too_big_for_v6_still_arrives_through_the_server() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-v6m", &[]).unwrap();
    warm_neighbours(&lab);
    let echo = Echo::start_at(&lab, lab::PEER_V6.into(), 7200);
    let agent = start_agent(&lab, "tbt-v6m");
    let mut c = client_of(&lab, false);
    c.allocate_family(None, RelayFamily::V6).expect("allocate");
    c.channel_bind(0x4000, echo.addr).expect("channel bind");

    // 40 + 8 + 1452 = 1500: the largest that fits IPv6 both ways.
    let fits = payload(7, 0, 1452);
    let before = srv_in(&lab);
    assert!(roundtrip(&c, 0x4000, &fits), "1452 bytes echoed");
    let mid = srv_in(&lab);
    // 20 + 8 + 4 + 1468 = 1500 as IPv4; 40 + 8 + 1468 = 1516 as IPv6.
    let big = payload(8, 0, 1468);
    assert!(roundtrip(&c, 0x4000, &big), "1468 bytes echoed");
    let after = srv_in(&lab);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!((mid.0 - before.0, mid.1 - before.1), (0, 0));
    assert_eq!(exit.counter("RELAYED_TO_PEER"), 1, "{}", exit.output);
    assert_eq!(exit.counter("RELAYED_TO_CLIENT"), 1, "{}", exit.output);
    assert_eq!(exit.counter("PASS_MTU"), 1, "{}", exit.output);
    // the big one reached coturn once each way: from the client (UDP) and from the peer (UDP6,
    // reassembled from the fragments the fast path passed)
    assert_eq!(
        (after.0 - mid.0, after.1 - mid.1),
        (1, 1),
        "{}",
        exit.output
    );
    assert!(exit.counter("PASS_FRAGMENT") >= 1, "{}", exit.output);
    echo.stop();
    assert_clean(&lab);
}

/// `n` datagrams from `a` on `chan_a` must reach `b` on `chan_b`, byte-exact; how many did.
fn one_way(a: &TurnClient, chan_a: u16, b: &TurnClient, chan_b: u16, salt: u32, n: usize) -> usize {
    let mut buf = vec![0u8; 2048];
    (0..n)
        .filter(|&i| {
            let p = payload(salt, i, size_of(i));
            a.send_channel_data(chan_a, &p)
                .expect("sending ChannelData");
            match b
                .recv_channel_data(&mut buf, Duration::from_secs(1))
                .expect("receiving")
            {
                Some((ch, len)) => {
                    assert_eq!(ch, chan_b, "channel at the receiver");
                    assert!(
                        buf[..len] == p[..],
                        "datagram {i}: {} bytes sent, {len} arrived, changed",
                        p.len()
                    );
                    true
                }
                None => {
                    eprintln!("datagram {i} ({} bytes) did not arrive", p.len());
                    false
                }
            }
        })
        .count()
}

/// Two clients of this server relaying to each other (a peer that is another allocation's
/// relayed address). First coturn alone relays 20 datagrams each way, through itself twice;
/// then with the agent 1,000 of 1–1,200 bytes each way go client to client in one XDP pass
/// (RELAYED_HAIRPIN), byte-exact, and the server's sockets see none of them.
fn hairpin_case(name: &str, a_v6: bool, a_family: RelayFamily, b_v6: bool, b_family: RelayFamily) {
    let t0 = Instant::now();
    let lab = Lab::up(name, &[]).unwrap();
    warm_neighbours(&lab);
    // two clients bound to each other's relayed address (the agent learns only what it sees,
    // so each phase allocates afresh)
    let pair = || {
        let mut a = client_of(&lab, a_v6);
        let mut b = client_of(&lab, b_v6);
        let ra = a
            .allocate_family(None, a_family)
            .expect("allocate A")
            .relayed;
        let rb = b
            .allocate_family(None, b_family)
            .expect("allocate B")
            .relayed;
        assert_eq!(
            ra.is_ipv6(),
            rb.is_ipv6(),
            "relayed addresses of one family"
        );
        a.channel_bind(0x4001, rb)
            .expect("A binds B's relayed address");
        b.channel_bind(0x4002, ra)
            .expect("B binds A's relayed address");
        (a, b)
    };

    // the server alone relays the hairpin itself, each datagram reaching it twice
    let (a, b) = pair();
    let before = srv_in(&lab);
    assert_eq!(
        one_way(&a, 0x4001, &b, 0x4002, 1, 20),
        20,
        "coturn alone, A to B"
    );
    assert_eq!(
        one_way(&b, 0x4002, &a, 0x4001, 2, 20),
        20,
        "coturn alone, B to A"
    );
    let alone = srv_in(&lab);
    assert!(
        alone.0 + alone.1 - before.0 - before.1 >= 80,
        "coturn alone: each datagram reaches it twice ({before:?} -> {alone:?})"
    );

    let agent = start_agent(&lab, name);
    let (a, b) = pair();
    let before = srv_in(&lab);
    assert_eq!(one_way(&a, 0x4001, &b, 0x4002, 3, N), N, "{name}: A to B");
    assert_eq!(one_way(&b, 0x4002, &a, 0x4001, 4, N), N, "{name}: B to A");
    let after = srv_in(&lab);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(
        exit.counter("RELAYED_HAIRPIN"),
        2 * N as u64,
        "{}",
        exit.output
    );
    assert_eq!(exit.counter("RELAYED_TO_PEER"), 0, "{}", exit.output);
    assert_eq!(exit.counter("RELAYED_TO_CLIENT"), 0, "{}", exit.output);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 0),
        "{name}: data datagrams reached the server's UDP/UDP6 sockets:\n{}",
        exit.output
    );
    assert_clean(&lab);
    eprintln!("{name}: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn hairpin_v4_clients() {
    skip_unless_lab!();
    hairpin_case("tbt-hp4", false, RelayFamily::V4, false, RelayFamily::V4);
}

/// An IPv6 client (IPv4 relay, coturn's default) and an IPv4 client: the head moves.
#[test]
fn hairpin_v6_client_to_v4_client() {
    skip_unless_lab!();
    hairpin_case(
        "tbt-hp64",
        true,
        RelayFamily::Default,
        false,
        RelayFamily::V4,
    );
}

#[test]
fn hairpin_v6_clients_v6_relays() {
    skip_unless_lab!();
    hairpin_case("tbt-hp6", true, RelayFamily::V6, true, RelayFamily::V6);
}

/// B holds only a permission for A's relayed address, no channel: the server sends A's data to
/// B as Data indications, so the fast path must leave it to the server (A's channel to B is
/// live). Positive control: once B binds a channel, the same datagrams go client to client.
#[test]
fn hairpin_without_the_other_channel_goes_through_the_server() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-hpn", &[]).unwrap();
    warm_neighbours(&lab);
    let agent = start_agent(&lab, "tbt-hpn");
    let mut a = client_of(&lab, false);
    let mut b = client_of(&lab, false);
    let ra = a
        .allocate_family(None, RelayFamily::V4)
        .expect("allocate A")
        .relayed;
    let rb = b
        .allocate_family(None, RelayFamily::V4)
        .expect("allocate B")
        .relayed;
    a.channel_bind(0x4001, rb)
        .expect("A binds B's relayed address");
    b.create_permission(&[ra])
        .expect("B permits A's relayed address");

    let mut buf = vec![0u8; 2048];
    let mut indications = 0;
    for i in 0..10 {
        a.send_channel_data(0x4001, &payload(9, i, 64)).unwrap();
        if let Some((n, _)) = b.recv_raw(&mut buf, Duration::from_secs(1)).unwrap() {
            // a STUN Data indication (0x0017), not ChannelData
            if n >= 20 && buf[0..2] == [0x00, 0x17] {
                indications += 1;
            }
        }
    }
    assert_eq!(indications, 10, "Data indications through coturn");
    b.channel_bind(0x4002, ra)
        .expect("B binds A's relayed address");
    assert_eq!(
        one_way(&a, 0x4001, &b, 0x4002, 10, 10),
        10,
        "after B's channel"
    );
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(exit.counter("RELAYED_HAIRPIN"), 10, "{}", exit.output);
    assert!(exit.counter("PASS_FIB_OTHER") >= 10, "{}", exit.output);
    assert_clean(&lab);
}

/// The public addresses of coturn's `--external-ip` mappings in `external_ip_*` (on no interface).
const PUBLIC_V6: &str = "2001:db8:9::9";
const PUBLIC_V4: &str = "203.0.113.9";

/// coturn behind 1:1 NAT in both families: `--external-ip PUBLIC/PRIVATE` given once per family
/// (coturn 4.6.1 takes an IPv6 pair as it does an IPv4 one) makes XOR-RELAYED-ADDRESS the public
/// address of the relayed address's family; the packets arrive at the private one. One
/// allocation from a client of `client_v6` asking for `family`, one channel per peer; the agent
/// run with `agent_args` besides the interfaces (none: it takes the mappings from coturn's command
/// line). Every datagram comes back byte-exact, all relayed in XDP, and coturn's sockets see no
/// data datagram.
fn external_ip_case(
    lab: &Lab,
    round: &str,
    client_v6: bool,
    family: RelayFamily,
    peers: &[IpAddr],
    agent_args: &[&str],
) {
    let t0 = Instant::now();
    let echoes: Vec<Echo> = peers
        .iter()
        .enumerate()
        .map(|(k, ip)| Echo::start_at(lab, *ip, 7300 + k as u16))
        .collect();
    let mut args = vec!["--enable-forwarding", "turn0", "relay0"];
    args.extend_from_slice(agent_args);
    let agent =
        AgentProc::start_ready(&agent_bin(), &lab.ns(Host::Srv), &args, &log_path(round)).unwrap();
    let mut c = client_of(lab, client_v6);
    let alloc = c.allocate_family(None, family).expect("allocate");
    let relayed: Vec<SocketAddr> = [Some(alloc.relayed), alloc.additional_relayed]
        .into_iter()
        .flatten()
        .collect();
    for r in &relayed {
        let public = if r.is_ipv6() { PUBLIC_V6 } else { PUBLIC_V4 };
        assert_eq!(
            r.ip().to_string(),
            public,
            "{round}: coturn advertises the public address: {alloc:?}"
        );
    }
    for e in &echoes {
        assert!(
            relayed.iter().any(|r| r.is_ipv6() == e.addr.is_ipv6()),
            "{round}: no relayed address of the peer's family: {alloc:?}"
        );
    }
    for (k, e) in echoes.iter().enumerate() {
        c.channel_bind(0x4000 + k as u16, e.addr)
            .expect("channel bind");
    }
    let before = srv_in(lab);
    for (k, e) in echoes.iter().enumerate() {
        let got = exchange(&c, 0x4000 + k as u16, k as u32 + 11);
        assert_eq!(got, N, "{round}: peer {}: {got} of {N} echoed", e.addr);
    }
    let after = srv_in(lab);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_all_offloaded(&exit, echoes.len() as u64);
    assert_eq!(exit.counter("LEARN_ALLOC"), 1, "{}", exit.output);
    assert_eq!(exit.counter("RELAY_NOT_LOCAL"), 0, "{}", exit.output);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 0),
        "{round}: data datagrams reached the server's UDP/UDP6 sockets:\n{}",
        exit.output
    );
    // the channels were learned on the private addresses the packets arrive at
    for e in &echoes {
        let private = if e.addr.is_ipv6() {
            format!("relay [{}]:", lab::RELAY_V6)
        } else {
            format!("relay {}:", lab::RELAY_V4)
        };
        assert!(exit.output.contains(&private), "{round}: {}", exit.output);
    }
    for e in echoes {
        assert_eq!(e.stop(), N as u64);
    }
    eprintln!("{round}: {:.1} s", t0.elapsed().as_secs_f64());
}

/// The lab of the `external_ip_*` cases: coturn with an IPv6 and an IPv4 mapping.
fn external_ip_lab(name: &str) -> Lab {
    let lab = Lab::up(
        name,
        &[
            "--external-ip",
            &format!("{PUBLIC_V6}/{}", lab::RELAY_V6),
            "--external-ip",
            &format!("{PUBLIC_V4}/{}", lab::RELAY_V4),
        ],
    )
    .unwrap();
    warm_neighbours(&lab);
    lab
}

/// An IPv6 client and an IPv6 peer through the relay's public IPv6 address: once with the
/// mapping taken from coturn's command line, once with `--external-ip PUBLIC=PRIVATE` given as
/// well (the same mapping: no change).
#[test]
fn external_ip_v6_client_to_v6_peer() {
    skip_unless_lab!();
    let lab = external_ip_lab("tbt-xip6");
    let explicit = format!("{PUBLIC_V6}={}", lab::RELAY_V6);
    for (round, args) in [
        ("tbt-xip6-from-coturn", vec![]),
        (
            "tbt-xip6-explicit",
            vec!["--external-ip", explicit.as_str()],
        ),
    ] {
        external_ip_case(
            &lab,
            round,
            true,
            RelayFamily::V6,
            &[lab::PEER_V6.into()],
            &args,
        );
    }
    assert_clean(&lab);
}

/// Mixed families: an IPv6 client gets (coturn's default) an IPv4 relayed address, advertised as
/// the public IPv4 one; an IPv4 client asking for IPv6 gets the public IPv6 one; and a dual
/// allocation from an IPv6 client gets both public addresses, one peer per family.
#[test]
fn external_ip_mixed_families() {
    skip_unless_lab!();
    let lab = external_ip_lab("tbt-xipm");
    external_ip_case(
        &lab,
        "tbt-xipm-v6-to-v4",
        true,
        RelayFamily::Default,
        &[lab::PEER_V4.into()],
        &[],
    );
    external_ip_case(
        &lab,
        "tbt-xipm-v4-to-v6",
        false,
        RelayFamily::V6,
        &[lab::PEER_V6.into()],
        &[],
    );
    external_ip_case(
        &lab,
        "tbt-xipm-dual",
        true,
        RelayFamily::Dual,
        &[lab::PEER_V4.into(), lab::PEER_V6.into()],
        &[],
    );
    assert_clean(&lab);
}

/// Send `payload` from the peer namespace as an IPv6 datagram from `src` (whatever it is) to
/// `dst`, straight onto the wire to the server's relay0 (an AF_PACKET socket).
fn send_raw6(lab: &Lab, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
    use turn_bpf_testkit::progtest::Udp6Frame;
    let mac = |host, dev: &str| {
        let s = lab
            .exec(host, &["cat", &format!("/sys/class/net/{dev}/address")])
            .unwrap();
        turn_bpf_testkit::raw::parse_mac(s.trim()).expect("a MAC address")
    };
    let (SocketAddr::V6(s), SocketAddr::V6(d)) = (src, dst) else {
        panic!("IPv6 only")
    };
    let frame = Udp6Frame::new(
        mac(Host::Peer, "eth0"),
        mac(Host::Srv, "relay0"),
        s,
        d,
        payload,
    )
    .build();
    lab::in_ns(&lab.ns(Host::Peer), move || {
        turn_bpf_testkit::raw::PacketSocket::open("eth0")
            .and_then(|sock| sock.send(&frame))
            .expect("sending a raw frame")
    });
}

/// The channels an IPv6 client binds on an IPv6 allocation: 0x4000 to the IPv4-mapped form of the
/// IPv4 peer (coturn 4.6.1 grants it), 0x4001 to the IPv6 peer. Then datagrams are sent onto the
/// wire from the peer's side to the relayed address, one from each peer address. Returns what
/// reached the client, by channel.
fn mapped_peer_round(lab: &Lab) -> Vec<(u16, Vec<u8>)> {
    let mut c = client_of(lab, true);
    let alloc = c.allocate_family(None, RelayFamily::V6).expect("allocate");
    let mapped = SocketAddr::new(lab::PEER_V4.to_ipv6_mapped().into(), 7300);
    let real = SocketAddr::new(lab::PEER_V6.into(), 7300);
    c.channel_bind(0x4000, mapped)
        .expect("coturn grants a channel to an IPv4-mapped peer");
    c.channel_bind(0x4001, real).expect("channel bind");
    send_raw6(lab, mapped, alloc.relayed, b"from the IPv4-mapped source");
    send_raw6(lab, real, alloc.relayed, b"from the IPv6 peer");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Some((ch, len)) = c
        .recv_channel_data(&mut buf, Duration::from_millis(500))
        .expect("receiving")
    {
        got.push((ch, buf[..len].to_vec()));
    }
    got
}

/// Differential, IPv4-mapped addresses: coturn 4.6.1 grants a channel to the IPv4-mapped form of
/// a peer on an IPv6 allocation, and this kernel delivers an IPv6 datagram from that mapped
/// source to its relay socket, so coturn alone relays it to the client. With the agent the
/// client gets exactly the same: the agent leaves the mapped peer to coturn (its mirror of the
/// server's static peer policy refuses `::ffff:0:0/96`: PEER_REFUSED), so that datagram goes up
/// to coturn (PASS_NO_CHANNEL) while the IPv6 peer's is relayed in XDP, the positive control.
#[test]
fn a_v4_mapped_peer_gets_what_coturn_alone_gives() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-map", &[]).unwrap();
    warm_neighbours(&lab);
    let alone = mapped_peer_round(&lab);
    assert_eq!(
        alone,
        vec![
            (0x4000, b"from the IPv4-mapped source".to_vec()),
            (0x4001, b"from the IPv6 peer".to_vec())
        ],
        "coturn alone"
    );
    let agent = start_agent(&lab, "tbt-map");
    let before = srv_in(&lab);
    let with = mapped_peer_round(&lab);
    let after = srv_in(&lab);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(with, alone, "with the agent:\n{}", exit.output);
    for (c, n) in [
        ("LEARN_CHANNEL", 1),
        ("PEER_REFUSED", 1),
        ("RELAYED_TO_CLIENT", 1),
        ("PASS_NO_CHANNEL", 1),
    ] {
        assert_eq!(exit.counter(c), n, "{c}:\n{}", exit.output);
    }
    eprintln!(
        "UDP/UDP6 datagrams at the server's sockets with the agent (control traffic and the \
         mapped peer's datagram): {:?}",
        (after.0 - before.0, after.1 - before.1)
    );
    assert_clean(&lab);
}
