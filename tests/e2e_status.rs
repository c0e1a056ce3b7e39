//! `turn-bpf status` beside the real coturn, with nothing pinned: the agent runs with one client
//! and one channel, and `status` in the server namespace finds its programs on the interfaces,
//! shows the counters (equal to the agent's own stats map), one allocation and one channel, and
//! with `--bindings` the client, relayed address, peer and channel. With no agent it says so and
//! exits 1. With `--binding-counters` and `--pin-path`, each channel line shows the datagrams
//! and data bytes sent through it each way, exactly, while the agent runs and after it stopped
//! (the pinned programs and maps stay attached).

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
    // the agent runs without --binding-counters: said once, no zeros
    assert!(
        out.contains("  allocations (1):")
            && out.contains("  channels (1; per-binding counters off (see --binding-counters)):"),
        "{out}"
    );
    assert!(!out.contains("datagrams 0 bytes"), "{out}");

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

/// One direction of a channel line: (datagrams, bytes, "last ..." as printed).
type Dir = (u64, u64, String);

/// The counts on the channel line that starts with `prefix`: (to peer, to client).
fn chan_counts(out: &str, prefix: &str) -> (Dir, Dir) {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no '{prefix}…' in\n{out}"));
    let dir = |part: &str| -> Dir {
        // "N datagrams M bytes, last X s ago" / "…, last never"
        let w: Vec<&str> = part.split_whitespace().collect();
        assert!(
            w.len() >= 6 && w[1] == "datagrams" && w[3] == "bytes,",
            "'{part}' in\n{line}"
        );
        (
            w[0].parse().unwrap(),
            w[2].parse().unwrap(),
            w[4..].join(" "),
        )
    };
    let (_, rest) = line
        .split_once("; to peer ")
        .unwrap_or_else(|| panic!("no counts in\n{line}"));
    let (up, down) = rest.split_once("; to client ").unwrap();
    (dir(up), dir(down))
}

#[test]
fn status_bindings_counts_each_way_live_and_pinned() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-ctr1", &[]).unwrap();
    let pins = PinFs::mount("tbt-ctr1-pins");
    let pin = pins.dir.to_str().unwrap().to_string();
    let echo = Echo::start(&lab, 7000);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &[
            "--enable-forwarding",
            "--binding-counters",
            "--pin-path",
            &pin,
            "turn0",
            "relay0",
        ],
        &log_path("tbt-ctr1"),
    )
    .unwrap();
    let live = LiveCounters::of_pid(agent.pid()).unwrap();

    let mut c = client(&lab);
    let alloc = c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    let me = c.local_addr().unwrap();
    let prefix = format!(
        "    client {me} relayed {} peer {} channel 0x4000 (",
        alloc.relayed, echo.addr
    );

    // Learned, nothing through it yet: zeros and "never", counted (not "counters off").
    let (code, out, err) = status(&lab, &["--bindings"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("counters off"), "{out}");
    let none = (0, 0, "last never".to_string());
    assert_eq!(chan_counts(&out, &prefix), (none.clone(), none), "{out}");

    // The first datagrams may go to coturn while the neighbour entries are made
    // (PASS_NO_NEIGH); after these every one is relayed in XDP.
    const WARM: usize = 5;
    assert_eq!(exchange(&c, CHANNEL, 0, WARM), WARM, "the echo answers");
    let (_, before, _) = status(&lab, &["--bindings"]);
    let (up0, down0) = chan_counts(&before, &prefix);
    let r0 = live.read().unwrap();

    assert_eq!(exchange(&c, CHANNEL, WARM, N), N, "the echo answers");
    let sent_bytes: u64 = (WARM..WARM + N).map(|i| payload(i).len() as u64).sum();
    let (code, out, err) = status(&lab, &["--bindings"]);
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("turn-bpf status --bindings (with --binding-counters):\n{out}");
    let r1 = live.read().unwrap().since(&r0);
    // positive control: all of them relayed in XDP, each way
    assert_eq!(r1.get("RELAYED_TO_PEER"), N as u64, "{out}");
    assert_eq!(r1.get("RELAYED_TO_CLIENT"), N as u64, "{out}");
    let (up, down) = chan_counts(&out, &prefix);
    assert_eq!(
        (up.0 - up0.0, up.1 - up0.1),
        (N as u64, sent_bytes),
        "to peer: what the client sent through the channel\n{out}"
    );
    assert_eq!(
        (down.0 - down0.0, down.1 - down0.1),
        (N as u64, sent_bytes),
        "to client: what the echo sent back\n{out}"
    );
    for (what, d) in [("to peer", &up), ("to client", &down)] {
        assert!(
            d.2.starts_with("last ") && d.2.ends_with(" s ago"),
            "{what}: {}\n{out}",
            d.2
        );
    }

    // The agent stops and leaves everything pinned: status reads the same counts from the
    // programs still attached, with no agent.
    let exit = agent.stop(Signal::SIGTERM).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    let (code, out, err) = status(&lab, &["turn0", "relay0", "--bindings"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(
            "turn-bpf on turn0, relay0: held by no process: pinned by an agent that stopped"
        ),
        "{out}"
    );
    let (up_p, down_p) = chan_counts(&out, &prefix);
    assert_eq!((up_p.0, up_p.1), (up.0, up.1), "{out}");
    assert_eq!((down_p.0, down_p.1), (down.0, down.1), "{out}");

    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(Host::Srv)])
        .arg(agent_bin())
        .args(["detach", "--pin-path", &pin, "turn0", "relay0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_clean(&lab);
    echo.stop();
}
