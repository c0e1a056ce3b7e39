//! What a client can make the agent believe, checked against the real coturn.
//!
//! The agent learns from coturn's success responses, matched to the request XDP recorded by
//! 5-tuple and transaction ID. That is only sound if the request XDP recorded is the request
//! coturn answered, and if every answer coturn sends is mirrored with coturn's own meaning.
//! These tests play a hostile or merely unlucky client against that:
//!
//! - **R1/R2**: R1 = ChannelBind(0x4000 -> a peer coturn denies) that XDP records but the kernel
//!   drops (wrong UDP checksum, or a frame for another MAC), then R2 = ChannelBind(0x4000 -> an
//!   allowed peer) with the same transaction ID, sent so that XDP cannot record it (IP fragments,
//!   IP options, more attributes than the BPF parser walks). coturn grants R2; the agent must not
//!   take that grant for R1's binding and relay to (or from) the denied address. Each attack
//!   runs once against coturn alone, whose outcome is the expectation, then with the agent.
//! - **CreatePermission on a bound peer**: coturn resets the peer's permission to
//!   `--permission-lifetime` and deletes the channel when it runs out; the fast path must stop
//!   no later than coturn does. The same timeline runs against coturn alone and with the agent.
//! - **Duplicated requests**: the same ChannelBind (or Allocate) twice, byte for byte, is
//!   answered twice; the channel (or allocation) must stay offloaded.
//! - **A late duplicated Allocate**: coturn answers a retransmitted Allocate in the allocation's
//!   last second with LIFETIME 600 (its default, for the 0 s left) without extending the
//!   allocation; the fast path must not outlive it. Side by side with coturn alone.
//!
//! "Relayed in XDP" is proven as in the other end-to-end tests: the server namespace's
//! UdpInDatagrams does not grow while a datagram is delivered. Every test has a positive control
//! in the same run (the fast path relays a healthy channel, the receivers are alive), so "nothing
//! was relayed" cannot come from a dead peer or a dead agent.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use turn_bpf_testkit::agent::{AgentExit, AgentProc};
use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::progtest::{Udp4Frame, UdpCheck};
use turn_bpf_testkit::raw::{self, PacketSocket, RawIpSocket};
use turn_bpf_testkit::turn_client::{
    build_request, new_txid, parse_message, Attr, Auth, Class, StunMessage, TurnClient, TxId,
    ALLOCATE, CHANNEL_BIND,
};

use common::*;

const CHANNEL: u16 = 0x4000;
/// The second address of the peer namespace, the one coturn is told to deny.
const DENIED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
/// The allowed peer: the peer namespace's own address.
const ALLOWED_V4: Ipv4Addr = lab::PEER_V4;

// ------------------------------------------------------------------------------------------
// Helpers

fn start_agent(lab: &Lab, log: &str, extra: &[&str]) -> AgentProc {
    let mut args = vec!["--enable-forwarding"];
    args.extend_from_slice(extra);
    args.extend(["turn0", "relay0"]);
    AgentProc::start_ready(&agent_bin(), &lab.ns(Host::Srv), &args, &log_path(log))
        .expect("starting the agent")
}

fn stop_agent(a: AgentProc) -> AgentExit {
    let exit = a.stop(Signal::SIGINT).expect("stopping the agent");
    assert_eq!(
        exit.status.code(),
        Some(0),
        "the agent failed:\n{}",
        exit.output
    );
    assert_eq!(exit.counter("ABORTED"), 0, "{}", exit.output);
    exit
}

/// The counters that tell the story of a run, on one line.
fn story(exit: &AgentExit) -> String {
    [
        "RELAYED_TO_PEER",
        "RELAYED_TO_CLIENT",
        "PENDING_ADDED",
        "PENDING_CONFLICT",
        "PASS_FRAGMENT",
        "PASS_IP_OPTIONS",
        "STUN_MALFORMED",
        "LEARN_ALLOC",
        "LEARN_CHANNEL",
        "LEARN_PERM",
        "LEARN_NO_PENDING",
        "NOT_MIRRORED",
    ]
    .iter()
    .map(|n| format!("{n}={}", exit.counter(n)))
    .collect::<Vec<_>>()
    .join(" ")
}

/// Resolve the server's neighbours now, so the fast path never passes a datagram for want of
/// an ARP entry (which would make "relayed in XDP" depend on timing).
fn warm_neighbours(lab: &Lab, ips: &[Ipv4Addr]) {
    for ip in ips {
        lab.exec(Host::Srv, &["ping", "-c", "1", "-W", "1", &ip.to_string()])
            .unwrap_or_else(|e| panic!("the server cannot reach {ip}: {e:#}"));
    }
}

fn server_saw(lab: &Lab, f: impl FnOnce()) -> u64 {
    let before = lab.nstat_udp_in(Host::Srv);
    f();
    lab.nstat_udp_in(Host::Srv) - before
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("{a} is not IPv4"),
    }
}

/// A UDP socket in the peer namespace that only receives (and can send, to play a peer).
struct Sink {
    sock: UdpSocket,
    addr: SocketAddr,
}

impl Sink {
    fn bind(lab: &Lab, ip: Ipv4Addr, port: u16) -> Sink {
        let sock = lab::in_ns(&lab.ns(Host::Peer), move || {
            UdpSocket::bind((ip, port)).unwrap_or_else(|e| panic!("binding {ip}:{port}: {e}"))
        });
        let addr = sock.local_addr().unwrap();
        Sink { sock, addr }
    }

    /// Every datagram that arrives until none has for `quiet`.
    fn drain(&self, quiet: Duration) -> Vec<Vec<u8>> {
        self.sock.set_read_timeout(Some(quiet)).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    }

    /// Waits up to `timeout` for a datagram holding exactly `want` (others are dropped).
    fn wait_for(&self, want: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) if &buf[..n] == want => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }
}

/// The client's credentials with the REALM and NONCE it has learned.
fn auth_of(c: &TurnClient) -> Auth {
    let (realm, nonce) = c.realm_nonce().expect("the client has been challenged");
    Auth {
        user: lab::TURN_USER.into(),
        pass: lab::TURN_PASS.into(),
        realm: realm.into(),
        nonce: nonce.into(),
    }
}

/// The server's responses to transaction `txid` that arrive within `timeout` (at most `want`).
fn responses(c: &TurnClient, txid: TxId, want: usize, timeout: Duration) -> Vec<StunMessage> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((n, from)) = c.recv_raw(&mut buf, left).expect("receiving") else {
            break;
        };
        if from != c.server() {
            continue;
        }
        if let Ok(m) = parse_message(&buf[..n]) {
            if m.txid == txid && matches!(m.class, Class::Success | Class::Error) {
                got.push(m);
            }
        }
    }
    got
}

fn describe(m: &StunMessage) -> String {
    match m.class {
        Class::Success => format!("success (LIFETIME {:?})", m.lifetime()),
        Class::Error => format!("error {:?}", m.error()),
        c => format!("{c:?}"),
    }
}

/// An unauthenticated Allocate on `c`'s socket, for the 401 that teaches REALM and NONCE (what
/// `TurnClient` does inside `allocate`, done by hand so the signed Allocate can be kept).
fn challenge(c: &TurnClient) -> Auth {
    let txid = new_txid();
    c.send_raw(&build_request(
        ALLOCATE,
        txid,
        &[Attr::RequestedTransport(17)],
        None,
    ))
    .unwrap();
    let r = responses(c, txid, 1, Duration::from_secs(2));
    let m = r
        .first()
        .expect("coturn answered the unauthenticated Allocate");
    assert_eq!(m.error().map(|e| e.0), Some(401), "{}", describe(m));
    Auth {
        user: lab::TURN_USER.into(),
        pass: lab::TURN_PASS.into(),
        realm: m.realm().expect("REALM in the 401"),
        nonce: m.nonce().expect("NONCE in the 401"),
    }
}

/// ChannelData that came back to `c` until none has for `quiet`.
fn channel_data_received(c: &TurnClient, quiet: Duration) -> usize {
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    while c.recv_channel_data(&mut buf, quiet).unwrap().is_some() {
        n += 1;
    }
    n
}

/// A healthy channel on its own client, exchanged through an echo: the positive control that
/// the fast path relays in this run. Returns the client (to repeat the check later).
fn control_channel(lab: &Lab, echo: &Echo) -> TurnClient {
    let mut ctl = client(lab);
    ctl.allocate(None).expect("control: allocate");
    ctl.channel_bind(CHANNEL, echo.addr)
        .expect("control: channel bind");
    check_control(lab, &ctl, 0, "before");
    ctl
}

fn check_control(lab: &Lab, ctl: &TurnClient, from: usize, when: &str) {
    let mut echoed = 0;
    let saw = server_saw(lab, || echoed = exchange(ctl, CHANNEL, from, 20));
    assert_eq!(
        (echoed, saw),
        (20, 0),
        "positive control {when} the attack: a healthy channel must be echoed 20/20 with the \
         server's sockets seeing none of it (relayed in XDP both ways); got {echoed} echoed and \
         {saw} datagrams at the server"
    );
}

// ------------------------------------------------------------------------------------------
// 1. R1/R2: a grant for one request taken as the grant for another.

/// How R1 (recorded by XDP, never seen by coturn) is made to vanish after XDP.
#[derive(Debug, Clone, Copy)]
enum R1 {
    /// A wrong UDP checksum: the kernel drops it (UdpInCsumErrors).
    BadUdpChecksum,
    /// A correct packet in a frame for another MAC: the kernel drops it as PACKET_OTHERHOST.
    WrongDstMac,
}

/// How R2 (answered by coturn) is kept from XDP's parser.
#[derive(Debug, Clone, Copy)]
enum R2 {
    /// Two IPv4 fragments (the kernel reassembles them for coturn).
    Fragments,
    /// IP options NOP, NOP, NOP, EOL (IHL 6).
    NopEolOptions,
    /// IP option Router Alert (IHL 6).
    RouterAlert,
    /// 30 unknown comprehension-optional attributes before MESSAGE-INTEGRITY: more than the
    /// BPF parser walks (24); coturn ignores them.
    TooManyAttributes,
}

/// Attributes coturn 4.6.1 does not know, in the comprehension-optional range.
fn padding_attrs(n: u16) -> Vec<Attr> {
    (0..n)
        .map(|i| Attr::Raw {
            typ: 0xC0A0 + i,
            value: vec![0xA5, i as u8, 0, 0],
        })
        .collect()
}

/// What the client and the two peers saw after one R1/R2 attack.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Datagrams the denied address received (of the client's ChannelData on 0x4000).
    to_denied: usize,
    /// The datagrams the allowed peer received, in order.
    to_allowed: Vec<Vec<u8>>,
    /// ChannelData the client received after the denied address sent to its relayed address.
    from_denied: usize,
}

/// ChannelData datagrams the attacker sends on the channel, and the denied peer sends back.
const ATTACK_N: usize = 10;

/// One attack by a fresh client; `seq` keeps the runs' payloads apart.
fn attack_once(lab: &Lab, r1: R1, r2: R2, allowed: &Sink, denied: &Sink, seq: usize) -> Outcome {
    let mut c = client(lab);
    let alloc = c.allocate(None).expect("allocate");
    let auth = auth_of(&c);
    let me = v4(c.local_addr().unwrap());
    let server = v4(lab::TURN_SERVER_V4);
    let txid = new_txid();

    // R1: ChannelBind 0x4000 -> the DENIED peer, seen by XDP and dropped by the kernel.
    let r1_bytes = build_request(
        CHANNEL_BIND,
        txid,
        &[
            Attr::ChannelNumber(CHANNEL),
            Attr::XorPeerAddress(denied.addr),
        ],
        Some(&auth),
    );
    let mut frame = Udp4Frame::new([0; 6], [0; 6], me, server, &r1_bytes);
    frame.id = 0x5201;
    let before = lab.udp_counters(Host::Srv).unwrap().v4;
    match r1 {
        R1::BadUdpChecksum => {
            let good = frame.udp_bytes();
            let sum = u16::from_be_bytes([good[6], good[7]]);
            frame.udp_check = UdpCheck::Raw(sum ^ 0x5a5a);
            let sock = lab::in_ns(&lab.ns(Host::Cli), || RawIpSocket::open().unwrap());
            sock.send(&raw::ip_packet(&frame)).unwrap();
        }
        R1::WrongDstMac => {
            let mac = |host, dev: &str| {
                let text = lab
                    .exec(host, &["cat", &format!("/sys/class/net/{dev}/address")])
                    .unwrap();
                raw::parse_mac(&text).unwrap_or_else(|| panic!("MAC of {dev}: {text:?}"))
            };
            frame.src_mac = mac(Host::Cli, lab::CLIENT_IFACE);
            frame.dst_mac = mac(Host::Srv, lab::IFACE);
            frame.dst_mac[5] ^= 0x01; // another unicast MAC: PACKET_OTHERHOST at turn0
            let sock = lab::in_ns(&lab.ns(Host::Cli), || {
                PacketSocket::open(lab::CLIENT_IFACE).unwrap()
            });
            sock.send(&frame.build()).unwrap();
        }
    }
    let r1_answers = responses(&c, txid, 1, Duration::from_millis(500));
    let after = lab.udp_counters(Host::Srv).unwrap().v4;
    assert!(
        r1_answers.is_empty(),
        "R1 ({r1:?}) must never reach coturn, yet it answered: {}",
        describe(&r1_answers[0])
    );
    assert_eq!(
        after.in_datagrams, before.in_datagrams,
        "R1 ({r1:?}) must not be delivered to a socket"
    );
    if let R1::BadUdpChecksum = r1 {
        assert_eq!(
            after.in_csum_errors - before.in_csum_errors,
            1,
            "R1 must arrive at the server and be dropped for its checksum"
        );
    }

    // R2: ChannelBind 0x4000 -> the ALLOWED peer, same transaction ID, hidden from XDP.
    let mut attrs = vec![
        Attr::ChannelNumber(CHANNEL),
        Attr::XorPeerAddress(allowed.addr),
    ];
    if let R2::TooManyAttributes = r2 {
        attrs.extend(padding_attrs(30));
    }
    let r2_bytes = build_request(CHANNEL_BIND, txid, &attrs, Some(&auth));
    let mut frame = Udp4Frame::new([0; 6], [0; 6], me, server, &r2_bytes);
    frame.id = 0x5202;
    frame.df = false;
    let sock = lab::in_ns(&lab.ns(Host::Cli), || RawIpSocket::open().unwrap());
    match r2 {
        R2::Fragments => {
            let ip = raw::ip_packet(&frame);
            for f in raw::fragment(&ip, (ip.len() - 20) / 2) {
                sock.send(&f).unwrap();
            }
        }
        R2::NopEolOptions | R2::RouterAlert => {
            frame.options = match r2 {
                R2::RouterAlert => raw::OPTION_ROUTER_ALERT.to_vec(),
                _ => raw::OPTIONS_NOP_EOL.to_vec(),
            };
            sock.send(&raw::ip_packet(&frame)).unwrap();
        }
        R2::TooManyAttributes => c.send_raw(&r2_bytes).unwrap(),
    }
    let r2_answers = responses(&c, txid, 1, Duration::from_secs(2));
    let answer = r2_answers.first().unwrap_or_else(|| {
        panic!("coturn did not answer R2 ({r2:?}): the crafted packet did not reach it")
    });
    assert!(
        answer.class == Class::Success && answer.method == CHANNEL_BIND,
        "coturn must grant R2 (ChannelBind to the allowed peer, sent as {r2:?}): {}",
        describe(answer)
    );

    // ChannelData on 0x4000: coturn relays it to the allowed peer; nobody may relay it to the
    // denied address.
    for i in seq..seq + ATTACK_N {
        c.send_channel_data(CHANNEL, &payload(i)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let to_denied = denied.drain(Duration::from_millis(200)).len();
    let to_allowed = allowed.drain(Duration::from_millis(200));
    // The denied address sends to the relayed address: coturn has no permission for it and
    // drops it; nobody may hand it to the client as ChannelData.
    let _ = channel_data_received(&c, Duration::from_millis(100));
    for i in 0..ATTACK_N {
        denied
            .sock
            .send_to(
                format!("from the denied peer {i}").as_bytes(),
                alloc.relayed,
            )
            .unwrap();
    }
    let from_denied = channel_data_received(&c, Duration::from_millis(500));
    Outcome {
        to_denied,
        to_allowed,
        from_denied,
    }
}

/// What is wrong with an outcome: coturn bound the allowed peer, so only it may get the data,
/// and the denied address may neither receive nor send.
fn outcome_faults(
    o: &Outcome,
    r1: R1,
    r2: R2,
    seq: usize,
    allowed: &Sink,
    denied: &Sink,
) -> Vec<String> {
    let mut wrong = Vec::new();
    if o.to_denied != 0 {
        wrong.push(format!(
            "the DENIED address {} received {} of the {ATTACK_N} ChannelData datagrams the \
             client sent on {CHANNEL:#06x}: the agent took coturn's grant of R2 (-> {}) for the \
             binding recorded from R1 (-> {}, same transaction ID), which the kernel dropped \
             after XDP saw it ({r1:?}); R2 went unrecorded ({r2:?})",
            denied.addr, o.to_denied, allowed.addr, denied.addr
        ));
    }
    let expected: Vec<Vec<u8>> = (seq..seq + ATTACK_N).map(payload).collect();
    if o.to_allowed != expected {
        wrong.push(format!(
            "the allowed peer {} (the one coturn bound) received {} of the {ATTACK_N} \
             datagrams{}",
            allowed.addr,
            o.to_allowed.len(),
            if o.to_allowed.len() == ATTACK_N {
                ", not all intact and in order"
            } else {
                ""
            }
        ));
    }
    if o.from_denied != 0 {
        wrong.push(format!(
            "the client received {} ChannelData datagrams that the DENIED address sent to its \
             relayed address (coturn has no permission for it)",
            o.from_denied
        ));
    }
    wrong
}

/// The attack once against coturn alone (what coturn does: the expectations) and once with
/// the agent, whose outcome must be the same.
fn r1_r2_attack(name: &str, r1: R1, r2: R2) {
    let started = Instant::now();
    let lab = Lab::up(name, &["--denied-peer-ip", &DENIED_V4.to_string()]).unwrap();
    lab.exec(
        Host::Peer,
        &[
            "ip",
            "addr",
            "replace",
            &format!("{DENIED_V4}/24"),
            "dev",
            lab::PEER_IFACE,
        ],
    )
    .unwrap();
    warm_neighbours(&lab, &[lab::CLIENT_V4, ALLOWED_V4, DENIED_V4]);
    let echo = Echo::start(&lab, 7200);
    let allowed = Sink::bind(&lab, ALLOWED_V4, 7202);
    let denied = Sink::bind(&lab, DENIED_V4, 7203);

    // The denied receiver is alive: "it received nothing" must mean something.
    let probe = lab::in_ns(&lab.ns(Host::Srv), || UdpSocket::bind("0.0.0.0:0").unwrap());
    probe.send_to(b"alive?", denied.addr).unwrap();
    assert_eq!(
        denied.drain(Duration::from_millis(300)),
        vec![b"alive?".to_vec()],
        "the denied address's receiver must be reachable from the server"
    );

    let alone = attack_once(&lab, r1, r2, &allowed, &denied, 1000);
    let faults = outcome_faults(&alone, r1, r2, 1000, &allowed, &denied);
    assert!(
        faults.is_empty(),
        "coturn ALONE (no agent) does not behave as this test assumes:\n{}",
        faults.join("\n")
    );

    let agent = start_agent(&lab, name, &[]);
    let ctl = control_channel(&lab, &echo);
    let with_agent = attack_once(&lab, r1, r2, &allowed, &denied, 2000);
    check_control(&lab, &ctl, 100, "after");
    let exit = stop_agent(agent);
    echo.stop();
    eprintln!(
        "{name}: R1 {r1:?}, R2 {r2:?}: coturn alone: denied got {}, allowed got {}, client got \
         {} from the denied address; with the agent: {}, {}, {}; agent {} ({:.1} s)",
        alone.to_denied,
        alone.to_allowed.len(),
        alone.from_denied,
        with_agent.to_denied,
        with_agent.to_allowed.len(),
        with_agent.from_denied,
        story(&exit),
        started.elapsed().as_secs_f64()
    );
    let faults = outcome_faults(&with_agent, r1, r2, 2000, &allowed, &denied);
    assert!(
        faults.is_empty(),
        "with the agent (coturn alone got this right):\n{}\nagent counters: {}",
        faults.join("\n"),
        story(&exit)
    );
}

#[test]
fn r1_dropped_for_its_checksum_then_r2_in_fragments_cannot_bind_a_denied_peer() {
    skip_unless_lab!();
    r1_r2_attack("tbt-atk-r1frag", R1::BadUdpChecksum, R2::Fragments);
}

#[test]
fn r1_dropped_for_its_checksum_then_r2_with_nop_eol_options_cannot_bind_a_denied_peer() {
    skip_unless_lab!();
    r1_r2_attack("tbt-atk-r1nop", R1::BadUdpChecksum, R2::NopEolOptions);
}

#[test]
fn r1_dropped_for_its_checksum_then_r2_with_router_alert_cannot_bind_a_denied_peer() {
    skip_unless_lab!();
    r1_r2_attack("tbt-atk-r1ra", R1::BadUdpChecksum, R2::RouterAlert);
}

#[test]
fn r1_dropped_for_its_checksum_then_r2_with_too_many_attributes_cannot_bind_a_denied_peer() {
    skip_unless_lab!();
    r1_r2_attack("tbt-atk-r1attrs", R1::BadUdpChecksum, R2::TooManyAttributes);
}

#[test]
fn r1_for_another_mac_then_r2_in_fragments_cannot_bind_a_denied_peer() {
    skip_unless_lab!();
    r1_r2_attack("tbt-atk-r1mac", R1::WrongDstMac, R2::Fragments);
}

// ------------------------------------------------------------------------------------------
// Timelines: one datagram at a time, to a sink peer, each classified.

/// One ChannelData datagram sent to a sink peer at `at` seconds into a timeline.
#[derive(Debug, Clone, Copy)]
struct Probe {
    at: f64,
    /// The sink received it.
    delivered: bool,
    /// Datagrams the server's sockets received meanwhile (0: it never went up the stack).
    server_saw: u64,
}

impl Probe {
    /// Delivered without the server's sockets seeing it: relayed in XDP.
    fn in_xdp(&self) -> bool {
        self.delivered && self.server_saw == 0
    }
}

fn sleep_until(t0: Instant, at: f64) {
    let when = t0 + Duration::from_secs_f64(at);
    std::thread::sleep(when.saturating_duration_since(Instant::now()));
}

/// Sends ChannelData datagram `seq` on `c` and classifies it. A datagram that is not delivered
/// gets 200 ms to reach the server's sockets before they are read.
fn probe(lab: &Lab, c: &TurnClient, sink: &Sink, seq: usize, t0: Instant) -> Probe {
    let p = payload(seq);
    let before = lab.nstat_udp_in(Host::Srv);
    let at = t0.elapsed().as_secs_f64();
    c.send_channel_data(CHANNEL, &p).unwrap();
    let delivered = sink.wait_for(&p, Duration::from_millis(200));
    Probe {
        at,
        delivered,
        server_saw: lab.nstat_udp_in(Host::Srv) - before,
    }
}

/// `n` probes from `at` seconds into the timeline on.
fn probes_at(
    lab: &Lab,
    c: &TurnClient,
    sink: &Sink,
    t0: Instant,
    at: f64,
    n: usize,
    seq: &mut usize,
) -> Vec<Probe> {
    sleep_until(t0, at);
    (0..n)
        .map(|_| {
            *seq += 1;
            probe(lab, c, sink, *seq, t0)
        })
        .collect()
}

fn show(probes: &[Probe]) -> String {
    probes
        .iter()
        .map(|p| {
            format!(
                "{:.2}s:{}",
                p.at,
                match (p.delivered, p.server_saw) {
                    (true, 0) => "xdp",
                    (true, _) => "server",
                    (false, 0) => "LOST",
                    (false, _) => "dropped",
                }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// coturn's log lines that hold any of `words`.
fn coturn_log(lab: &Lab, words: &[&str]) -> String {
    std::fs::read_to_string(lab.turnserver_log())
        .unwrap_or_default()
        .lines()
        .filter(|l| words.iter().any(|w| l.contains(w)))
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------------------------------------------
// 2. CreatePermission for the exact address of a bound peer, as coturn does it.

const CP_CHANNEL_LIFETIME: &str = "20";
const CP_PERMISSION_LIFETIME: &str = "8";

/// Probe slots of the CreatePermission timeline: (seconds after the ChannelBind, datagrams).
const CP_SLOTS: [(f64, usize); 4] = [(4.0, 5), (13.0, 3), (14.5, 3), (16.0, 3)];

/// ChannelBind at t=0, CreatePermission for the same peer (address and port) at t=2, then the
/// probes of [`CP_SLOTS`].
fn create_permission_timeline(lab: &Lab, sink: &Sink, mut seq: usize) -> Vec<Vec<Probe>> {
    let mut c = client(lab);
    c.allocate(None).expect("allocate");
    let t0 = Instant::now();
    c.channel_bind(CHANNEL, sink.addr).expect("channel bind");
    sleep_until(t0, 2.0);
    c.create_permission(&[sink.addr])
        .expect("CreatePermission for the bound peer");
    CP_SLOTS
        .iter()
        .map(|&(at, n)| probes_at(lab, &c, sink, t0, at, n, &mut seq))
        .collect()
}

#[test]
fn create_permission_on_a_bound_peer_ends_its_channel_with_the_permission_as_coturn_does() {
    skip_unless_lab!();
    let started = Instant::now();
    let lifetimes = [
        "--channel-lifetime",
        CP_CHANNEL_LIFETIME,
        "--permission-lifetime",
        CP_PERMISSION_LIFETIME,
    ];
    let mut turn_args = lifetimes.to_vec();
    turn_args.push("--verbose");
    let lab = Lab::up("tbt-atk-cperm", &turn_args).unwrap();
    warm_neighbours(&lab, &[lab::CLIENT_V4, lab::PEER_V4]);

    let sink = Sink::bind(&lab, lab::PEER_V4, 7400);
    let alone = create_permission_timeline(&lab, &sink, 0);
    let agent = start_agent(&lab, "tbt-atk-cperm", &lifetimes);
    let with_agent = create_permission_timeline(&lab, &sink, 100);
    let exit = stop_agent(agent);

    eprintln!("CreatePermission on a bound peer (channel {CP_CHANNEL_LIFETIME} s, permission {CP_PERMISSION_LIFETIME} s, CreatePermission at t=2):");
    for (i, (at, _)) in CP_SLOTS.iter().enumerate() {
        eprintln!("  t≈{at:>4}: coturn alone {}", show(&alone[i]));
        eprintln!("          with agent   {}", show(&with_agent[i]));
    }
    eprintln!(
        "  agent {}\n  coturn's log:\n{}\n  ({:.1} s)",
        story(&exit),
        coturn_log(&lab, &["lifetime updated", "deleted", "channel"]),
        started.elapsed().as_secs_f64()
    );

    // What coturn does (the premise): relays at t≈4, has deleted the channel by t≈13.
    assert!(
        alone[0].iter().all(|p| p.delivered),
        "coturn alone must relay at t≈4: {}",
        show(&alone[0])
    );
    for slot in &alone[1..] {
        assert!(
            slot.iter().all(|p| !p.delivered),
            "coturn alone has deleted the channel (its peer's permission, reset to \
             {CP_PERMISSION_LIFETIME} s at t=2, ran out at t≈10): {}",
            show(slot)
        );
    }
    // Positive control: the agent relays the live channel in XDP.
    assert!(
        with_agent[0].iter().all(Probe::in_xdp),
        "at t≈4 the channel is live and must be relayed in XDP: {}",
        show(&with_agent[0])
    );
    // Never delivered where coturn alone did not, and nothing relayed in XDP after coturn's end.
    for (i, (at, _)) in CP_SLOTS.iter().enumerate().skip(1) {
        let xdp = with_agent[i].iter().filter(|p| p.in_xdp()).count();
        let delivered = with_agent[i].iter().filter(|p| p.delivered).count();
        assert!(
            xdp == 0 && delivered == 0,
            "at t≈{at} coturn alone relays nothing (it deleted the channel when the peer's \
             permission, reset to {CP_PERMISSION_LIFETIME} s by the CreatePermission at t=2, \
             expired at t≈10), but with the agent {delivered} of {} datagrams reached the peer, \
             {xdp} of them relayed in XDP: the agent took the CreatePermission as a refresh of \
             the channel ({CP_CHANNEL_LIFETIME} s) instead of shortening the peer's permission \
             to {CP_PERMISSION_LIFETIME} s: {}\nagent counters: {}",
            with_agent[i].len(),
            show(&with_agent[i]),
            story(&exit)
        );
    }
    assert_eq!(
        exit.counter("RELAYED_TO_PEER"),
        with_agent.iter().flatten().filter(|p| p.in_xdp()).count() as u64,
        "the agent's count of datagrams relayed to the peer agrees with what the probes saw"
    );
}

// ------------------------------------------------------------------------------------------
// 3. The same request twice: two answers, one binding.

const DUP_N: usize = 100;

/// Exchanges [`DUP_N`] datagrams with the echo on `c`'s channel: how many came back, and how
/// many datagrams the server's sockets saw meanwhile (0: all relayed in XDP, both ways).
fn offloaded(lab: &Lab, c: &TurnClient, from: usize) -> (usize, u64) {
    let mut echoed = 0;
    let saw = server_saw(lab, || echoed = exchange(c, CHANNEL, from, DUP_N));
    (echoed, saw)
}

/// Sends `req` twice back to back on `c` and returns coturn's two answers (both must succeed).
fn send_twice(c: &TurnClient, req: &[u8], txid: TxId, what: &str) -> Vec<StunMessage> {
    c.send_raw(req).unwrap();
    c.send_raw(req).unwrap();
    let answers = responses(c, txid, 2, Duration::from_secs(2));
    eprintln!(
        "coturn answered the duplicated {what}: {}",
        answers.iter().map(describe).collect::<Vec<_>>().join(", ")
    );
    assert!(
        answers.len() == 2 && answers.iter().all(|m| m.class == Class::Success),
        "coturn must answer both copies of the {what} with a success: {}",
        answers.iter().map(describe).collect::<Vec<_>>().join(", ")
    );
    answers
}

#[test]
fn a_duplicated_channel_bind_keeps_the_channel_offloaded() {
    skip_unless_lab!();
    let started = Instant::now();
    let lab = Lab::up("tbt-atk-dupcb", &[]).unwrap();
    warm_neighbours(&lab, &[lab::CLIENT_V4, lab::PEER_V4]);
    let echo = Echo::start(&lab, 7300);
    let agent = start_agent(&lab, "tbt-atk-dupcb", &[]);
    let _ctl = control_channel(&lab, &echo);

    let mut c = client(&lab);
    c.allocate(None).expect("allocate");
    let txid = new_txid();
    let req = build_request(
        CHANNEL_BIND,
        txid,
        &[
            Attr::ChannelNumber(CHANNEL),
            Attr::XorPeerAddress(echo.addr),
        ],
        Some(&auth_of(&c)),
    );
    send_twice(&c, &req, txid, "ChannelBind");
    let (echoed, saw) = offloaded(&lab, &c, 0);
    let exit = stop_agent(agent);
    echo.stop();
    eprintln!(
        "duplicated ChannelBind: {echoed}/{DUP_N} echoed, {saw} datagrams at the server; \
         agent {} ({:.1} s)",
        story(&exit),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(echoed, DUP_N, "the channel coturn bound relays");
    assert_eq!(
        saw,
        0,
        "after a ChannelBind sent twice (same bytes, same transaction ID) and answered twice, \
         {saw} of the {} datagrams of the exchange reached the server's sockets instead of \
         being relayed in XDP (the cause seen so far: the second answer matches no pending \
         request and the agent gives the allocation up, NOT_MIRRORED={})\nagent counters: {}",
        2 * DUP_N,
        exit.counter("NOT_MIRRORED"),
        story(&exit)
    );
}

#[test]
fn a_duplicated_allocate_keeps_the_allocation_offloaded() {
    skip_unless_lab!();
    let started = Instant::now();
    let lab = Lab::up("tbt-atk-dupal", &[]).unwrap();
    warm_neighbours(&lab, &[lab::CLIENT_V4, lab::PEER_V4]);
    let echo = Echo::start(&lab, 7301);
    let agent = start_agent(&lab, "tbt-atk-dupal", &[]);
    let _ctl = control_channel(&lab, &echo);

    let mut c = client(&lab);
    let auth = challenge(&c);
    let txid = new_txid();
    let req = build_request(ALLOCATE, txid, &[Attr::RequestedTransport(17)], Some(&auth));
    let answers = send_twice(&c, &req, txid, "Allocate");
    assert_eq!(
        answers[0].relayed_addrs(),
        answers[1].relayed_addrs(),
        "both answers name the same relayed address (one allocation)"
    );
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    let (echoed, saw) = offloaded(&lab, &c, 0);
    let exit = stop_agent(agent);
    echo.stop();
    eprintln!(
        "duplicated Allocate: {echoed}/{DUP_N} echoed, {saw} datagrams at the server; agent {} \
         ({:.1} s)",
        story(&exit),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(echoed, DUP_N, "the channel coturn bound relays");
    assert_eq!(
        saw,
        0,
        "after an Allocate sent twice (same bytes, same transaction ID) and answered twice with \
         the same relayed address, {saw} of the {} datagrams of the exchange on a channel bound \
         afterwards reached the server's sockets instead of being relayed in XDP (the cause \
         seen so far: the second answer matches no pending request and the agent gives the \
         allocation up, NOT_MIRRORED={})\nagent counters: {}",
        2 * DUP_N,
        exit.counter("NOT_MIRRORED"),
        story(&exit)
    );
}

// ------------------------------------------------------------------------------------------
// 4. A duplicated Allocate near the end of the allocation's life.

/// coturn's --max-allocate-lifetime here, and the LIFETIME the Allocate asks for.
const LATE_LIFETIME: u32 = 6;

/// How the client repeats its Allocate near the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Late {
    /// The original Allocate bytes once more at t≈5.3.
    ResendOnce,
    /// The original Allocate bytes every 10 ms from t≈5.0 until coturn answers with more than
    /// the time left (its default 600: in the allocation's last second by coturn's clock), then
    /// at once a ChannelBind refreshing the channel, which coturn grants (it still has the
    /// allocation). The client keeps its channel alive, as clients do.
    ResendUntilDefaultThenRefresh,
}

#[derive(Debug)]
struct LateRun {
    /// How many resent Allocates coturn answered, and with which LIFETIMEs.
    answered: Vec<(f64, Option<u32>)>,
    /// When coturn first answered a resent Allocate with more than the time left (600).
    default_at: Option<f64>,
    /// The channel refresh after it: when, and whether coturn granted it.
    refresh: Option<(f64, Result<(), String>)>,
    /// Probes at t≈1 (the allocation is live).
    early: Vec<Probe>,
    /// Probes every 100 ms (200 ms when they go unanswered) from t=6.0, coturn's end of the
    /// allocation, to t≈8.5.
    late: Vec<Probe>,
}

impl LateRun {
    fn answers(&self) -> String {
        let ones = self.answered.iter().filter(|a| a.1 == Some(1)).count();
        let others: Vec<String> = self
            .answered
            .iter()
            .filter(|a| a.1 != Some(1))
            .map(|(at, l)| format!("{l:?} at {at:.2}s"))
            .collect();
        format!(
            "{} answered ({ones} with LIFETIME 1{}{})",
            self.answered.len(),
            if others.is_empty() { "" } else { ", " },
            others.join(", ")
        )
    }
}

/// Allocate (LIFETIME 6) at t=0 keeping the request's bytes, bind a channel to `sink`, probe
/// at t≈1, repeat the Allocate near the end as `mode` says, probe from t=6.0 on.
fn late_duplicate_timeline(lab: &Lab, sink: &Sink, mut seq: usize, mode: Late) -> LateRun {
    let mut c = client(lab);
    let auth = challenge(&c);
    let txid = new_txid();
    let req = build_request(
        ALLOCATE,
        txid,
        &[Attr::RequestedTransport(17), Attr::Lifetime(LATE_LIFETIME)],
        Some(&auth),
    );
    // t0 before the request: coturn's allocation ends no earlier than t0 + 6 s.
    let t0 = Instant::now();
    c.send_raw(&req).unwrap();
    let first = responses(&c, txid, 1, Duration::from_secs(2));
    let granted = first.first().expect("coturn answered the Allocate");
    assert_eq!(
        (granted.class, granted.lifetime()),
        (Class::Success, Some(LATE_LIFETIME)),
        "coturn grants {LATE_LIFETIME} s: {}",
        describe(granted)
    );
    c.channel_bind(CHANNEL, sink.addr).expect("channel bind");
    let early = probes_at(lab, &c, sink, t0, 1.0, 5, &mut seq);

    let mut answered = Vec::new();
    let mut default_at = None;
    let mut refresh = None;
    let (from, until, step) = match mode {
        Late::ResendOnce => (5.3, 5.3, 1.0),
        Late::ResendUntilDefaultThenRefresh => (5.0, 5.97, 0.01),
    };
    let mut at = from;
    while at <= until {
        sleep_until(t0, at);
        let sent = t0.elapsed().as_secs_f64();
        c.send_raw(&req).unwrap();
        let wait = if mode == Late::ResendOnce { 500 } else { 8 };
        if let Some(m) = responses(&c, txid, 1, Duration::from_millis(wait)).first() {
            answered.push((sent, m.lifetime()));
            if m.lifetime().is_some_and(|l| l > LATE_LIFETIME) && default_at.is_none() {
                default_at = Some(sent);
                if mode == Late::ResendUntilDefaultThenRefresh {
                    c.set_retransmit(1, Duration::from_millis(300));
                    let when = t0.elapsed().as_secs_f64();
                    let r = c.channel_bind(CHANNEL, sink.addr);
                    refresh = Some((when, r.map_err(|e| e.to_string())));
                    break;
                }
            }
        }
        at += step;
    }

    let mut late = Vec::new();
    let mut at = 6.0;
    while at < 8.6 {
        sleep_until(t0, at);
        seq += 1;
        late.push(probe(lab, &c, sink, seq, t0));
        at = (at + 0.1).max(t0.elapsed().as_secs_f64());
    }
    LateRun {
        answered,
        default_at,
        refresh,
        early,
        late,
    }
}

/// The timeline, once more if `mode` needs coturn's LIFETIME 600 answer and it never came (its
/// window is the part of the last second after coturn's one-second clock ticks, which can be
/// a few milliseconds).
fn late_run(lab: &Lab, sink: &Sink, seq: usize, mode: Late, who: &str) -> LateRun {
    let run = late_duplicate_timeline(lab, sink, seq, mode);
    if mode == Late::ResendOnce || run.default_at.is_some() {
        return run;
    }
    eprintln!(
        "{who}: coturn never answered 600 ({}); once more",
        run.answers()
    );
    let run = late_duplicate_timeline(lab, sink, seq + 50, mode);
    assert!(
        run.default_at.is_some(),
        "{who}: twice coturn never answered a resent Allocate with LIFETIME 600 in the \
         allocation's last second ({}): this test cannot set its scene",
        run.answers()
    );
    run
}

fn late_duplicate(name: &str, mode: Late) {
    let started = Instant::now();
    let lab = Lab::up(
        name,
        &[
            "--max-allocate-lifetime",
            &LATE_LIFETIME.to_string(),
            "--verbose",
        ],
    )
    .unwrap();
    warm_neighbours(&lab, &[lab::CLIENT_V4, lab::PEER_V4]);
    let sink = Sink::bind(&lab, lab::PEER_V4, 7500);

    let alone = late_run(&lab, &sink, 0, mode, "coturn alone");
    let agent = start_agent(&lab, name, &[]);
    let with_agent = late_run(&lab, &sink, 200, mode, "with the agent");
    let exit = stop_agent(agent);

    eprintln!("{name}: Allocate (LIFETIME {LATE_LIFETIME}) at t=0, {mode:?}:");
    for (what, run) in [("coturn alone", &alone), ("with agent", &with_agent)] {
        eprintln!(
            "  {what}: resent Allocates: {}; channel refresh: {:?}\n    t≈1: {}\n    t≥6: {}",
            run.answers(),
            run.refresh,
            show(&run.early),
            show(&run.late)
        );
    }
    eprintln!(
        "  agent {}\n  coturn's log:\n{}\n  ({:.1} s)",
        story(&exit),
        coturn_log(&lab, &["lifetime updated", "closed", "delete"]),
        started.elapsed().as_secs_f64()
    );

    // The premise: coturn relays while the allocation lives, not once it has ended.
    assert!(
        alone.early.iter().all(|p| p.delivered),
        "coturn alone relays at t≈1: {}",
        show(&alone.early)
    );
    if let Some((_, Err(e))) = &alone.refresh {
        panic!("coturn alone refused the channel refresh in the allocation's last second: {e}");
    }
    let after = |run: &LateRun, t: f64| -> Vec<Probe> {
        run.late.iter().filter(|p| p.at >= t).copied().collect()
    };
    assert!(
        after(&alone, 7.5).iter().all(|p| !p.delivered),
        "coturn alone has ended the allocation by t≈7.5 (granted {LATE_LIFETIME} s at t=0; a \
         resent Allocate does not extend it): {}",
        show(&alone.late)
    );
    // Positive control.
    assert!(
        with_agent.early.iter().all(Probe::in_xdp),
        "at t≈1 the allocation is live and its channel must be relayed in XDP: {}",
        show(&with_agent.early)
    );
    let xdp: Vec<Probe> = with_agent
        .late
        .iter()
        .filter(|p| p.in_xdp())
        .copied()
        .collect();
    assert!(
        xdp.is_empty(),
        "{} datagrams sent after coturn's allocation ended (granted {LATE_LIFETIME} s at t=0, \
         'allocation timeout' at t≈6) were relayed in XDP, at {}: the agent took coturn's answer \
         to the resent Allocate ({}) for a new allocation of that LIFETIME{}\nagent counters: {}",
        xdp.len(),
        show(&xdp),
        with_agent.answers(),
        match &with_agent.refresh {
            Some((at, _)) => format!(", and bound the channel refreshed at t={at:.2}s to it"),
            None => String::new(),
        },
        story(&exit)
    );
    assert!(
        after(&with_agent, 7.5).iter().all(|p| !p.delivered),
        "with the agent nothing is delivered at t≈8 either (coturn alone delivered nothing): {}",
        show(&with_agent.late)
    );
}

#[test]
fn a_late_resent_allocate_does_not_extend_the_allocation() {
    skip_unless_lab!();
    late_duplicate("tbt-atk-late1", Late::ResendOnce);
}

#[test]
fn a_late_resent_allocate_answered_600_does_not_extend_a_refreshed_channel() {
    skip_unless_lab!();
    late_duplicate("tbt-atk-late2", Late::ResendUntilDefaultThenRefresh);
}
