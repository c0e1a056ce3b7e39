//! The lab and the TURN client against the real, unmodified coturn, without the agent.
//!
//! Needs root and coturn (`scripts/test.sh` installs it); skips with a message otherwise. Each
//! test has its own lab name, so a lab someone left up (`tb`) is never touched.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::turn_client::{echo_peer, RelayFamily, TurnClient, TurnError};

const CHANNEL: u16 = 0x4000;

fn skip() -> bool {
    match lab::skip_reason() {
        Some(why) => {
            eprintln!("SKIPPED: {why}");
            true
        }
        None => false,
    }
}

fn ns_exists(ns: &str) -> bool {
    lab::netns_path(ns).exists()
}

/// A TURN client on a fresh socket in the client namespace.
fn client(lab: &Lab, pass: &str) -> TurnClient {
    let sock = lab::in_ns(&lab.ns(Host::Cli), || {
        UdpSocket::bind((lab::CLIENT_V4, 0)).expect("binding the client socket")
    });
    TurnClient::new(sock, lab::TURN_SERVER_V4, lab::TURN_USER, pass)
}

/// Sizes 1..=1400, all of them over the first 1400 datagrams, in a scrambled order.
fn size_of(i: usize) -> usize {
    1 + (i * 389) % 1400
}

fn payload(i: usize) -> Vec<u8> {
    let seed = (i as u32).wrapping_mul(2_654_435_761);
    (0..size_of(i))
        .map(|k| (seed >> (k % 4 * 8)) as u8 ^ k as u8)
        .collect()
}

#[test]
fn lab_up_status_down_and_up_twice() {
    if skip() {
        return;
    }
    let lab = Lab::up("tbt-lab1", &["--channel-lifetime", "5"]).expect("lab up");
    let status = lab.status().expect("status of a lab that is up");
    assert!(status.contains("lab tbt-lab1 is up"), "{status}");
    assert!(status.contains("--channel-lifetime=5"), "{status}");
    for host in [Host::Cli, Host::Srv, Host::Peer] {
        assert!(ns_exists(&lab.ns(host)), "{} missing", lab.ns(host));
    }
    let pid = lab.turnserver_pid().expect("coturn pid");
    assert!(lab.turnserver_cpu_secs().is_some());

    // The interfaces and addresses the rest of the project relies on.
    let srv = lab.exec(Host::Srv, &["ip", "-br", "addr"]).unwrap();
    assert!(
        srv.contains(lab::IFACE) && srv.contains("192.0.2.1/24"),
        "{srv}"
    );
    assert!(
        srv.contains(lab::RELAY_IFACE) && srv.contains("2001:db8:2::1/64"),
        "{srv}"
    );
    let fwd = lab
        .exec(Host::Srv, &["cat", "/proc/sys/net/ipv4/ip_forward"])
        .unwrap();
    assert_eq!(
        fwd.trim(),
        "0",
        "forwarding must stay off in the server namespace"
    );
    let offload = lab
        .exec(Host::Cli, &["ethtool", "-k", lab::CLIENT_IFACE])
        .unwrap();
    assert!(offload.contains("tx-checksumming: off"), "{offload}");
    assert!(offload.contains("generic-receive-offload: on"), "{offload}");
    assert!(lab.exec(Host::Srv, &["false"]).is_err());

    // The counters read from a thread in the namespace are the namespace's own (nothing sends
    // UDP in an idle lab, so both reads agree).
    let snmp = lab.exec(Host::Cli, &["cat", "/proc/net/snmp"]).unwrap();
    assert_eq!(
        lab::parse_snmp_udp(&snmp).unwrap(),
        lab.udp_counters(Host::Cli).unwrap().v4
    );

    // The same lab again is a no-op: same coturn.
    let again = Lab::up("tbt-lab1", &["--channel-lifetime", "5"]).expect("second up");
    assert_eq!(again.turnserver_pid(), Some(pid));
    std::mem::forget(again); // one owner tears down

    let ns = lab.ns(Host::Srv);
    lab.down().expect("lab down");
    assert!(!ns_exists(&ns), "{ns} still exists after down");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "coturn {pid} survived down"
    );

    // Down again, with nothing there, succeeds; status fails.
    let out = std::process::Command::new("bash")
        .arg(lab::script_path())
        .arg("down")
        .env("LAB", "tbt-lab1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new("bash")
        .arg(lab::script_path())
        .arg("status")
        .env("LAB", "tbt-lab1")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "status of a lab that is down must fail"
    );
}

#[test]
fn channel_data_round_trips_through_coturn() {
    if skip() {
        return;
    }
    let lab = Lab::up("tbt-lab2", &[]).expect("lab up");

    // The echo peer in the peer namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let peer_sock = lab::in_ns(&lab.ns(Host::Peer), || {
        UdpSocket::bind((lab::PEER_V4, 0)).expect("binding the peer socket")
    });
    let peer: SocketAddr = peer_sock.local_addr().unwrap();
    let echo = echo_peer(peer_sock, stop.clone());

    let mut c = client(&lab, lab::TURN_PASS);
    let alloc = c.allocate(Some(600)).expect("allocate");
    assert_eq!(alloc.relayed.ip(), lab::RELAY_V4);
    assert!(alloc.relayed.port() >= lab::RELAY_PORT_MIN);
    assert!(alloc.lifetime > 0 && alloc.lifetime <= 600);
    assert_eq!(alloc.mapped, Some(c.local_addr().unwrap()));
    c.channel_bind(CHANNEL, peer).expect("channel bind");

    let udp_in_before = lab.nstat_udp_in(Host::Cli);
    let t0 = Instant::now();
    let mut buf = vec![0u8; 2048];
    let n = 1000;
    for i in 0..n {
        let sent = payload(i);
        c.send_channel_data(CHANNEL, &sent).unwrap();
        let got = c
            .recv_channel_data(&mut buf, Duration::from_secs(2))
            .unwrap()
            .unwrap_or_else(|| panic!("datagram {i} ({} bytes) lost", sent.len()));
        assert_eq!(got, (CHANNEL, sent.len()), "datagram {i}");
        assert_eq!(&buf[..got.1], &sent[..], "datagram {i} changed on the way");
    }
    let elapsed = t0.elapsed();
    eprintln!("{n} round trips through coturn in {elapsed:?}");

    // Every echo arrived as a datagram in the client namespace; nothing more is pending.
    assert!(lab.nstat_udp_in(Host::Cli) - udp_in_before >= n as u64);
    assert_eq!(
        c.recv_channel_data(&mut buf, Duration::from_millis(100))
            .unwrap(),
        None
    );

    // Refresh works and LIFETIME 0 deletes the allocation.
    assert!(c.refresh(300).unwrap() > 0);
    assert_eq!(c.refresh(0).unwrap(), 0);

    stop.store(true, Ordering::Relaxed);
    assert_eq!(echo.join().unwrap(), n as u64);
    assert!(lab.turnserver_cpu_secs().unwrap() > 0.0);
}

#[test]
fn wrong_password_is_rejected_with_401() {
    if skip() {
        return;
    }
    let lab = Lab::up("tbt-lab3", &[]).expect("lab up");
    let mut c = client(&lab, "not-the-password");
    match c.allocate(None) {
        Err(TurnError::Rejected { code: 401, .. }) => {}
        other => panic!("expected 401 for a wrong password, got {other:?}"),
    }
    assert_eq!(c.allocation(), None);
    // The challenge was answered: the server told us its realm.
    assert_eq!(c.realm_nonce().map(|(r, _)| r), Some(lab::REALM));

    // Nothing was allocated: with the right password on the same 5-tuple, Allocate succeeds
    // (a leftover allocation would answer 437 Allocation Mismatch).
    let sock = c.socket().try_clone().unwrap();
    let mut good = TurnClient::new(sock, lab::TURN_SERVER_V4, lab::TURN_USER, lab::TURN_PASS);
    good.allocate(None)
        .expect("allocate with the right password");
}

#[test]
fn ipv6_dual_allocations_permissions_and_bad_channels() {
    if skip() {
        return;
    }
    let lab = Lab::up("tbt-lab4", &[]).expect("lab up");

    // IPv6 control path: client -> [2001:db8:1::1]:3478, relayed address on relay0's IPv6.
    let sock = lab::in_ns(&lab.ns(Host::Cli), || {
        UdpSocket::bind((lab::CLIENT_V6, 0)).expect("binding an IPv6 client socket")
    });
    let mut c6 = TurnClient::new(sock, lab::TURN_SERVER_V6, lab::TURN_USER, lab::TURN_PASS);
    // Without REQUESTED-ADDRESS-FAMILY even an IPv6 client gets an IPv4 relayed address.
    let alloc = c6
        .allocate_family(None, RelayFamily::V6)
        .expect("IPv6 allocate");
    assert_eq!(alloc.relayed.ip(), lab::RELAY_V6);
    assert_eq!(alloc.additional_relayed, None);

    // Peer permissions: a CreatePermission for the peer's IPv6 address succeeds.
    let peer6 = SocketAddr::new(lab::PEER_V6.into(), 40000);
    c6.create_permission(&[peer6]).expect("create permission");

    // A channel number outside 0x4000..=0x7FFF is refused with 400.
    let err = c6.channel_bind(0x3FFF, peer6).unwrap_err();
    assert_eq!(err.code(), Some(400), "{err}");

    // Default family from an IPv4 client: IPv4. Dual (coturn's 0x8032): one of each.
    let mut c4 = client(&lab, lab::TURN_PASS);
    let alloc = c4.allocate(None).expect("default allocate");
    assert_eq!(alloc.relayed.ip(), lab::RELAY_V4);
    let mut dual = client(&lab, lab::TURN_PASS);
    let alloc = dual
        .allocate_family(None, RelayFamily::Dual)
        .expect("dual allocate");
    assert_eq!(alloc.relayed.ip(), lab::RELAY_V4);
    assert_eq!(
        alloc.additional_relayed.map(|a| a.ip()),
        Some(lab::RELAY_V6.into())
    );
}

#[test]
fn coturn_args_from_lab_up_take_effect() {
    if skip() {
        return;
    }
    // lab.sh passes `--channel-lifetime 3` on as `--channel-lifetime=3`: coturn 4.6.1 ignores the
    // spaced form. With 3 s, a channel that is not refreshed stops relaying after about 3 s.
    let lab = Lab::up(
        "tbt-lab5",
        &["--channel-lifetime", "3", "--permission-lifetime", "3"],
    )
    .expect("lab up");
    let stop = Arc::new(AtomicBool::new(false));
    let peer_sock = lab::in_ns(&lab.ns(Host::Peer), || {
        UdpSocket::bind((lab::PEER_V4, 0)).expect("binding the peer socket")
    });
    let peer = peer_sock.local_addr().unwrap();
    let echo = echo_peer(peer_sock, stop.clone());

    let mut c = client(&lab, lab::TURN_PASS);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, peer).expect("channel bind");
    let mut buf = vec![0u8; 2048];
    c.send_channel_data(CHANNEL, b"before").unwrap();
    assert_eq!(
        c.recv_channel_data(&mut buf, Duration::from_secs(2))
            .unwrap(),
        Some((CHANNEL, 6))
    );

    std::thread::sleep(Duration::from_secs(5));
    c.send_channel_data(CHANNEL, b"after").unwrap();
    assert_eq!(
        c.recv_channel_data(&mut buf, Duration::from_secs(1))
            .unwrap(),
        None,
        "the channel outlived --channel-lifetime=3"
    );
    // Binding again brings it back.
    c.channel_bind(CHANNEL, peer).expect("channel bind again");
    c.send_channel_data(CHANNEL, b"again").unwrap();
    assert_eq!(
        c.recv_channel_data(&mut buf, Duration::from_secs(2))
            .unwrap(),
        Some((CHANNEL, 5))
    );
    stop.store(true, Ordering::Relaxed);
    assert_eq!(echo.join().unwrap(), 2);
}
