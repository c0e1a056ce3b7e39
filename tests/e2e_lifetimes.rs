//! Mirroring the server's state: the fast path relays exactly while coturn would, and never what
//! coturn would refuse. coturn runs with short lifetimes and the agent is given the same values.
//!
//! "Offloaded" is proven by the server namespace's UdpInDatagrams: while the fast path relays,
//! the data never reaches coturn's sockets; once it must not relay, every datagram does.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use turn_bpf_testkit::agent::{AgentExit, AgentProc};
use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::turn_client::TurnClient;

use common::*;

const CHANNEL: u16 = 0x4000;
const LIFETIME: &str = "4";

/// coturn with short channel and permission lifetimes, and optionally a short maximum
/// allocation lifetime (which also caps the default 600 s).
fn lab_with_short_lifetimes(name: &str, max_allocate_lifetime: Option<&str>) -> Lab {
    let mut args = vec![
        "--channel-lifetime",
        LIFETIME,
        "--permission-lifetime",
        LIFETIME,
    ];
    if let Some(max) = max_allocate_lifetime {
        args.extend(["--max-allocate-lifetime", max]);
    }
    Lab::up(name, &args).unwrap()
}

fn agent(lab: &Lab, log: &str) -> AgentProc {
    AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &[
            "--enable-forwarding",
            "--channel-lifetime",
            LIFETIME,
            "--permission-lifetime",
            LIFETIME,
            "turn0",
            "relay0",
        ],
        &log_path(log),
    )
    .unwrap()
}

/// Datagrams the server's sockets received while `f` ran.
fn server_saw(lab: &Lab, f: impl FnOnce()) -> u64 {
    let before = lab.nstat_udp_in(Host::Srv);
    f();
    lab.nstat_udp_in(Host::Srv) - before
}

/// Send one datagram and wait for its echo (true if it came back).
fn ping(c: &TurnClient, i: usize) -> bool {
    exchange(c, CHANNEL, i, 1) == 1
}

/// Send datagrams `from..from+n` in a burst; how many echoes come back within 300 ms.
fn burst(c: &TurnClient, from: usize, n: usize) -> usize {
    for i in from..from + n {
        c.send_channel_data(CHANNEL, &payload(i)).unwrap();
    }
    let mut buf = vec![0u8; 2048];
    let mut got = 0;
    while c
        .recv_channel_data(&mut buf, Duration::from_millis(300))
        .unwrap()
        .is_some()
    {
        got += 1;
    }
    got
}

/// Warm the server's ARP cache for client and peer so every datagram is offloadable.
fn warm_neighbours(lab: &Lab) {
    for ip in [lab::CLIENT_V4.to_string(), lab::PEER_V4.to_string()] {
        lab.exec(Host::Srv, &["ping", "-c", "1", "-W", "1", &ip])
            .unwrap();
    }
}

fn stop(a: AgentProc) -> AgentExit {
    let exit = a.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(exit.counter("ABORTED"), 0);
    exit
}

#[test]
fn a_channel_is_relayed_until_it_expires_and_a_refreshed_one_keeps_going() {
    skip_unless_lab!();
    let lab = lab_with_short_lifetimes("tbt-life1", None);
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7100);
    let a = agent(&lab, "life1");

    // Channel A: bound once, never refreshed.
    let mut ca = client(&lab);
    ca.allocate(None).unwrap();
    ca.channel_bind(CHANNEL, echo.addr).unwrap();
    let bound = Instant::now();
    // Channel B: refreshed every second, kept alive past A's expiry.
    let mut cb = client(&lab);
    cb.allocate(None).unwrap();
    cb.channel_bind(CHANNEL, echo.addr).unwrap();

    // Before expiry: offloaded (coturn's sockets see nothing).
    let saw = server_saw(&lab, || {
        for i in 0..20 {
            assert!(ping(&ca, i), "A before expiry");
        }
    });
    assert_eq!(saw, 0, "A was offloaded before expiry");

    // Keep B refreshed; let A's channel (4 s) run out.
    while bound.elapsed() < Duration::from_millis(5500) {
        cb.channel_bind(CHANNEL, echo.addr).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
    }
    // A: coturn dropped the channel, and the fast path must not relay it either.
    let saw = server_saw(&lab, || {
        assert_eq!(burst(&ca, 100, 10), 0, "an expired channel relays nothing");
    });
    assert_eq!(
        saw, 10,
        "after expiry every datagram of A goes to the server"
    );

    // B: still relayed, still offloaded.
    cb.channel_bind(CHANNEL, echo.addr).unwrap();
    let saw = server_saw(&lab, || {
        for i in 200..220 {
            assert!(ping(&cb, i), "the refreshed channel keeps relaying");
        }
    });
    assert_eq!(saw, 0, "the refreshed channel is still offloaded");

    let exit = stop(a);
    assert!(exit.counter("LEARN_CHANNEL") >= 6, "{}", exit.output);
    assert!(exit.output.contains("channel gone"), "{}", exit.output);
    echo.stop();
}

#[test]
fn refresh_zero_stops_the_fast_path_at_once() {
    skip_unless_lab!();
    let lab = lab_with_short_lifetimes("tbt-life2", None);
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7101);
    let a = agent(&lab, "life2");
    let mut c = client(&lab);
    c.allocate(None).unwrap();
    c.channel_bind(CHANNEL, echo.addr).unwrap();
    let saw = server_saw(&lab, || {
        for i in 0..20 {
            assert!(ping(&c, i));
        }
    });
    assert_eq!(saw, 0, "offloaded before the deallocation");

    assert_eq!(c.refresh(0).unwrap(), 0, "coturn grants Refresh 0");
    // Whatever coturn still does in its last second, the fast path relays nothing more.
    let saw = server_saw(&lab, || {
        for i in 0..10 {
            c.send_channel_data(CHANNEL, &payload(i)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
    });
    assert!(
        saw >= 10,
        "every datagram after Refresh 0 reached the server ({saw})"
    );
    let exit = stop(a);
    assert_eq!(exit.counter("LEARN_DEALLOC"), 1, "{}", exit.output);
    assert_eq!(exit.counter("RELAYED_TO_PEER"), 20, "{}", exit.output);
    echo.stop();
}

#[test]
fn an_allocation_is_relayed_until_its_lifetime_ends() {
    skip_unless_lab!();
    let lab = lab_with_short_lifetimes("tbt-life3", Some("6"));
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7102);
    let a = agent(&lab, "life3");
    let mut c = client(&lab);
    let alloc = c.allocate(Some(6)).unwrap();
    eprintln!(
        "coturn granted an allocation lifetime of {} s",
        alloc.lifetime
    );
    let started = Instant::now();
    let granted = Duration::from_secs(u64::from(alloc.lifetime));
    // Keep the channel and permission fresh so only the allocation can end it.
    c.channel_bind(CHANNEL, echo.addr).unwrap();
    let saw = server_saw(&lab, || {
        for i in 0..10 {
            assert!(ping(&c, i));
        }
    });
    assert_eq!(saw, 0, "offloaded while the allocation lives");
    while started.elapsed() < granted + Duration::from_millis(1500) {
        let _ = c.channel_bind(CHANNEL, echo.addr);
        std::thread::sleep(Duration::from_millis(1000));
    }
    let saw = server_saw(&lab, || {
        assert_eq!(burst(&c, 100, 5), 0, "an expired allocation relays nothing");
    });
    assert!(
        saw >= 5,
        "after the allocation expired every datagram went to the server ({saw})"
    );
    let exit = stop(a);
    assert!(
        exit.counter("PASS_EXPIRED") + exit.counter("PASS_NO_CHANNEL") >= 5,
        "{}",
        exit.output
    );
    echo.stop();
}

#[test]
fn spoofed_channel_data_and_strange_peer_ports_are_not_relayed_by_the_fast_path() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-life4", &[]).unwrap();
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7103);
    let a = agent(&lab, "life4");
    let mut c = client(&lab);
    let alloc = c.allocate(None).unwrap();
    c.channel_bind(CHANNEL, echo.addr).unwrap();
    assert!(ping(&c, 0));

    // ChannelData for the same channel from another socket of the same client host.
    let spoof = lab::in_ns(&lab.ns(Host::Cli), || {
        UdpSocket::bind((lab::CLIENT_V4, 0)).unwrap()
    });
    let before = lab.nstat_udp_in(Host::Peer);
    let saw = server_saw(&lab, || {
        for i in 0..10 {
            let frame = turn_bpf_testkit::turn_client::channel_data(CHANNEL, &payload(i), false);
            spoof.send_to(&frame, lab::TURN_SERVER_V4).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
    });
    assert_eq!(saw, 10, "the spoofed ChannelData all went to coturn");
    assert_eq!(
        lab.nstat_udp_in(Host::Peer),
        before,
        "nothing reached the peer"
    );

    // A datagram to the relayed address from the bound peer's host but another port: never
    // turned into ChannelData by the fast path (coturn sends a Data indication instead).
    let other = lab::in_ns(&lab.ns(Host::Peer), || {
        UdpSocket::bind((lab::PEER_V4, 7999)).unwrap()
    });
    let saw = server_saw(&lab, || {
        other
            .send_to(b"not from the bound port", alloc.relayed)
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    assert_eq!(saw, 1, "coturn's relay socket got it");
    let mut buf = [0u8; 2048];
    assert_eq!(
        c.recv_channel_data(&mut buf, Duration::from_millis(500))
            .unwrap(),
        None,
        "no ChannelData for a peer port that is not bound"
    );
    let exit = stop(a);
    assert!(exit.counter("PASS_NO_CHANNEL") >= 11, "{}", exit.output);
    echo.stop();
}

/// What coturn refuses leaves nothing behind: a wrong password, and a peer coturn denies with
/// --denied-peer-ip. The denied peer's traffic is never relayed, by anyone.
#[test]
fn requests_the_server_refuses_leave_nothing_behind() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-life5", &["--denied-peer-ip", "198.51.100.2"]).unwrap();
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7104);
    let a = agent(&lab, "life5");

    // Wrong credentials: 401, nothing allocated.
    let sock = lab::in_ns(&lab.ns(Host::Cli), || {
        UdpSocket::bind((lab::CLIENT_V4, 0)).unwrap()
    });
    let mut bad = TurnClient::new(sock, lab::TURN_SERVER_V4, lab::TURN_USER, "wrong-secret");
    let err = bad.allocate(None).expect_err("a wrong password is refused");
    assert_eq!(err.code(), Some(401), "{err:?}");

    // A denied peer: ChannelBind and CreatePermission are refused with 403.
    let mut c = client(&lab);
    c.allocate(None).unwrap();
    let err = c
        .channel_bind(CHANNEL, echo.addr)
        .expect_err("a denied peer is refused");
    assert_eq!(err.code(), Some(403), "{err:?}");
    let err = c
        .create_permission(&[echo.addr])
        .expect_err("a denied peer is refused");
    assert_eq!(err.code(), Some(403), "{err:?}");
    // ChannelData on the refused channel: nobody relays it.
    let saw = server_saw(&lab, || {
        assert_eq!(burst(&c, 0, 10), 0, "nothing relayed to a denied peer");
    });
    assert_eq!(saw, 10, "all of it went to coturn, which dropped it");

    let exit = stop(a);
    assert_eq!(
        exit.counter("LEARN_ALLOC"),
        1,
        "only the good allocation: {}",
        exit.output
    );
    assert_eq!(exit.counter("LEARN_CHANNEL"), 0, "{}", exit.output);
    assert_eq!(exit.counter("LEARN_PERM"), 0, "{}", exit.output);
    assert!(
        exit.counter("LEARN_ERROR") >= 4,
        "401s and 403s discarded: {}",
        exit.output
    );
    assert_eq!(exit.counter("RELAYED_TO_PEER"), 0, "{}", exit.output);
    assert!(!exit.output.contains("channel learned"), "{}", exit.output);
    assert_eq!(echo.stop(), 0, "the denied peer received nothing");
}

/// One timeline: channel 0x4000 bound to peer A until it expires at the server, then the same
/// number bound to peer B with a permission for A. A's datagrams must reach the client as Data
/// indications (never as ChannelData on the number that now means B) and B's channel relays.
/// Returns (Data indications from A, ChannelData from A, B's echoes).
fn rebind_timeline(lab: &Lab, a: &Echo, b: &Echo, from: usize) -> (usize, usize, usize) {
    let mut c = client(lab);
    let relayed = c.allocate(None).unwrap().relayed;
    c.channel_bind(CHANNEL, a.addr).unwrap();
    assert_eq!(exchange(&c, CHANNEL, from, 5), 5, "A's channel relays");
    std::thread::sleep(Duration::from_millis(5500)); // channel and permission: 4 s
    c.create_permission(&[a.addr]).unwrap();
    c.channel_bind(CHANNEL, b.addr).unwrap();
    for i in 0..5 {
        a.sock.send_to(&payload(from + 10 + i), relayed).unwrap();
    }
    let (ind, cd) = arrivals(&c, CHANNEL, Duration::from_millis(300));
    (ind, cd, exchange(&c, CHANNEL, from + 20, 5))
}

/// A channel number re-pointed to another peer (after the first binding expired at the server):
/// the first peer's datagrams arrive as Data indications through coturn, never as ChannelData on
/// the number that now means the second peer. The same timeline against coturn alone and with
/// the agent, side by side.
#[test]
fn a_rebound_channel_number_never_delivers_the_old_peers_data() {
    skip_unless_lab!();
    let lab = lab_with_short_lifetimes("tbt-life6", None);
    warm_neighbours(&lab);
    let pa = Echo::start(&lab, 7100);
    let pb = Echo::start(&lab, 7101);
    let alone = rebind_timeline(&lab, &pa, &pb, 0);
    assert_eq!(
        alone,
        (5, 0, 5),
        "coturn alone: (indications, ChannelData, B's echoes)"
    );

    let ag = agent(&lab, "life6");
    let mut with = (0, 0, 0);
    let saw = server_saw(&lab, || with = rebind_timeline(&lab, &pa, &pb, 100));
    let exit = stop(ag);
    assert_eq!(
        with, alone,
        "with the agent, as coturn alone:\n{}",
        exit.output
    );
    // B's exchange (5 out, 5 back) and A's first exchange went in XDP; A's datagrams after the
    // rebind went to coturn
    assert!(exit.counter("RELAYED_TO_CLIENT") >= 10, "{}", exit.output);
    assert!(saw >= 5, "A's datagrams reached coturn ({saw})");
    pa.stop();
    pb.stop();
}
