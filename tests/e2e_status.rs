//! `turn-bpf status` beside the real coturn, with nothing pinned: the agent runs with one client
//! and one channel, and `status` in the server namespace finds its programs on the interfaces,
//! shows the counters (equal to the agent's own stats map), one allocation and one channel, and
//! with `--bindings` the client, relayed address, peer and channel. With no agent it says so and
//! exits 1.

mod common;

use std::process::Command;

use nix::sys::signal::Signal;
use turn_bpf_testkit::agent::AgentProc;
use turn_bpf_testkit::lab::{Host, Lab};
use turn_bpf_testkit::live_counters::LiveCounters;

use common::*;

const CHANNEL: u16 = 0x4000;
const N: usize = 200;

/// `turn-bpf status ARGS...` in the server namespace: (exit code, stdout, stderr).
fn status(lab: &Lab, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(Host::Srv)])
        .arg(agent_bin())
        .arg("status")
        .args(args)
        .output()
        .expect("running turn-bpf status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value printed after `name` on its counter line (`  NAME  value  meaning`).
fn counter(out: &str, name: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
    })
}

/// (entries, max_entries) of a table line (`    chans  1 / 131072 ...`).
fn table(out: &str, name: &str) -> Option<(u64, u64)> {
    out.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            [n, e, "/", m, ..] if *n == name => Some((e.parse().ok()?, m.parse().ok()?)),
            _ => None,
        }
    })
}

#[test]
fn status_shows_a_running_agent_its_counters_and_bindings() {
    skip_unless_lab!();
    let lab = Lab::up("tbw-st1", &[]).unwrap();

    // Nothing attached yet: one clear line, exit 1.
    let (code, out, err) = status(&lab, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err.trim(),
        "turn-bpf: error: no turn-bpf program is attached to any interface of this network \
         namespace"
    );
    assert!(out.is_empty(), "{out}");

    let echo = Echo::start(&lab, 7000);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("tbw-st1"),
    )
    .unwrap();
    let live = LiveCounters::of_pid(agent.pid()).unwrap();

    let mut c = client(&lab);
    let alloc = c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    assert_eq!(exchange(&c, CHANNEL, 0, N), N, "the echo answers");

    let (code, out, err) = status(&lab, &[]);
    let now = live.read().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let first = out.lines().next().unwrap_or("");
    assert_eq!(
        first,
        format!(
            "turn-bpf on turn0, relay0: process {} (turn-bpf)",
            agent.pid()
        ),
        "{out}"
    );
    let line = |start: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line starting '{start}' in\n{out}"))
            .to_string()
    };
    let turn0 = line("turn0 ");
    assert!(turn0.contains("XDP xdp_turn (native mode)"), "{out}");
    assert!(
        turn0.contains("TC egress tc_snoop (handle 0x7462, priority 0x7462)"),
        "{out}"
    );
    let relay0 = line("relay0 ");
    assert!(relay0.contains("XDP xdp_turn (native mode)"), "{out}");
    assert!(!relay0.contains("TC egress"), "{out}");
    assert!(line("server:").contains("TURN port(s) 3478"), "{out}");
    assert!(
        line("lifetimes:").starts_with("  lifetimes: channel "),
        "{out}"
    );

    // The counters are the agent's own, and the traffic went through the fast path.
    for name in [
        "RELAYED_TO_PEER",
        "RELAYED_TO_CLIENT",
        "LEARN_ALLOC",
        "LEARN_CHANNEL",
    ] {
        assert_eq!(counter(&out, name), Some(now.get(name)), "{name}:\n{out}");
    }
    assert!(now.get("RELAYED_TO_PEER") >= N as u64 - 2, "{out}");
    assert!(now.get("RELAYED_TO_CLIENT") >= N as u64 - 2, "{out}");
    let relayed = now.get("RELAYED_TO_PEER") + now.get("RELAYED_TO_CLIENT");
    assert!(
        line("relayed in XDP:").starts_with(&format!("  relayed in XDP: {relayed} datagrams")),
        "{out}"
    );
    assert!(line("chan4_to_udp4 ").contains(&format!(" {} datagrams", now.get("RELAYED_TO_PEER"))));

    // Fill levels: one allocation, one channel (both sides), its permission.
    assert_eq!(table(&out, "allocs").map(|t| t.0), Some(1), "{out}");
    assert_eq!(table(&out, "chans").map(|t| t.0), Some(1), "{out}");
    assert_eq!(table(&out, "peers").map(|t| t.0), Some(1), "{out}");
    assert_eq!(table(&out, "perms").map(|t| t.0), Some(1), "{out}");
    assert!(table(&out, "allocs").unwrap().1 >= 1024, "{out}");
    assert!(table(&out, "server_socks").unwrap().0 >= 1, "{out}");
    assert!(
        !out.contains("allocations ("),
        "no bindings unless asked:\n{out}"
    );

    // --bindings, the interfaces named.
    let (code, out, err) = status(&lab, &["turn0", "relay0", "--bindings"]);
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("turn-bpf status turn0 relay0 --bindings:\n{out}");
    assert!(
        out.starts_with("turn-bpf on turn0, relay0: process "),
        "{out}"
    );
    let me = c.local_addr().unwrap();
    let alloc_line = format!(
        "    client {me} server 192.0.2.1:3478 relayed {} (",
        alloc.relayed
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&alloc_line) && l.ends_with(" s left)")),
        "no '{alloc_line}…' in\n{out}"
    );
    let chan_line = format!(
        "    client {me} relayed {} peer {} channel 0x4000 (",
        alloc.relayed, echo.addr
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&chan_line) && l.ends_with(" s left)")),
        "no '{chan_line}…' in\n{out}"
    );
    assert!(
        out.contains("  allocations (1):") && out.contains("  channels (1):"),
        "{out}"
    );

    // Interfaces without turn-bpf, and one that does not exist: one line, exit 1.
    let (code, _, err) = status(&lab, &["lo"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "turn-bpf: error: no turn-bpf program is attached to lo"
    );
    let (code, _, err) = status(&lab, &["nosuch0"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "turn-bpf: error: no interface named nosuch0");

    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    let (code, out, err) = status(&lab, &["turn0", "relay0"]);
    assert_eq!(code, 1, "the agent is gone:\n{out}{err}");
    assert!(
        err.contains("no turn-bpf program is attached to turn0, relay0"),
        "{err}"
    );
    assert_clean(&lab);
    echo.stop();
}
