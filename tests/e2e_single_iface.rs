//! Single-interface mode end to end with the real coturn: the agent on the client-facing
//! interface alone (`turn-bpf turn0`), the peer on the clients' side, so every relayed datagram
//! leaves where it came in. First coturn alone relays (the positive control), then the agent
//! relays 1,000 datagrams of 1–1,200 bytes each way in XDP, byte-exact, with coturn's sockets
//! seeing none of them; after Ctrl+C the interface carries on at once (pings and the same
//! channel through coturn), as it must: a run that leaves the clients' veth stalled after the
//! agent exits is a failure.

mod common;

use std::net::IpAddr;
use std::time::Instant;

use nix::sys::signal::Signal;
use turn_bpf_testkit::agent::AgentProc;
use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::turn_client::RelayFamily;

use common::*;

const N: usize = 1000;

/// Datagrams delivered to the server namespace's UDP and UDP6 sockets so far.
fn srv_in(lab: &Lab) -> u64 {
    let c = lab.udp_counters(Host::Srv).unwrap();
    c.v4.in_datagrams + c.v6.in_datagrams
}

/// `ping -c 10` from the client to the server's address: how many came back.
fn pings(lab: &Lab, to: IpAddr) -> usize {
    let out = lab
        .exec(
            Host::Cli,
            &["ping", "-c", "10", "-i", "0.2", "-W", "1", &to.to_string()],
        )
        .unwrap_or_default();
    out.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

fn case(name: &str, v6: bool) {
    skip_unless_lab!();
    let t0 = Instant::now();
    let lab = Lab::up(name, &[]).unwrap();
    let (client_ip, server_ip): (IpAddr, IpAddr) = if v6 {
        (lab::CLIENT_V6.into(), lab::SERVER_V6.into())
    } else {
        (lab::CLIENT_V4.into(), lab::SERVER_V4.into())
    };
    lab.exec(
        Host::Srv,
        &["ping", "-c", "1", "-W", "2", &client_ip.to_string()],
    )
    .unwrap();
    let echo = Echo::start_in(&lab, Host::Cli, client_ip, 7300);
    let family = if v6 { RelayFamily::V6 } else { RelayFamily::V4 };

    // coturn alone relays to a peer on the clients' side
    let mut c = client_of(&lab, v6);
    c.allocate_family(None, family).expect("allocate");
    c.channel_bind(0x4000, echo.addr).expect("channel bind");
    assert_eq!(exchange(&c, 0x4000, 0, 20), 20, "{name}: coturn alone");

    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0"],
        &log_path(name),
    )
    .unwrap();
    let mut c = client_of(&lab, v6);
    c.allocate_family(None, family).expect("allocate");
    c.channel_bind(0x4001, echo.addr).expect("channel bind");
    let before = srv_in(&lab);
    let got = exchange(&c, 0x4001, 100, N);
    let after = srv_in(&lab);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(got, N, "{name}: {got} of {N} echoed:\n{}", exit.output);
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(exit.counter("RELAYED_TO_PEER"), N as u64, "{}", exit.output);
    assert_eq!(
        exit.counter("RELAYED_TO_CLIENT"),
        N as u64,
        "{}",
        exit.output
    );
    assert_eq!(exit.counter("ABORTED"), 0, "{}", exit.output);
    assert_eq!(
        after - before,
        0,
        "{name}: data reached coturn's sockets:\n{}",
        exit.output
    );

    // after Ctrl+C: the interface works at once, and coturn relays the same channel
    assert_eq!(pings(&lab, server_ip), 10, "{name}: pings after the agent");
    let before = srv_in(&lab);
    assert_eq!(exchange(&c, 0x4001, 2000, 20), 20, "{name}: coturn after");
    assert!(srv_in(&lab) - before >= 40, "{name}: through coturn after");
    assert_eq!(echo.stop(), 20 + N as u64 + 20);
    assert_clean(&lab);
    eprintln!("{name}: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn single_interface_ipv4() {
    case("tbt-one4", false);
}

#[test]
fn single_interface_ipv6() {
    case("tbt-one6", true);
}
