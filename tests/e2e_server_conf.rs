//! The agent takes its settings from the running coturn, and reads them as coturn does.
//!
//! Each claim is checked against the real server's behaviour: how coturn 4.6.1 reads
//! `--channel-lifetime 5` (spaced: ignored) and `--channel-lifetime=5`, and that the parser says
//! the same; an agent told a longer lifetime than the server's stops relaying in XDP when the
//! server's channel ends; a server with bandwidth limits is refused (from its command line and
//! from its config file); the mirrored peer policy gives coturn's answer for every peer tried.
//!
//! "Relayed in XDP" is proven as in `e2e_lifetimes.rs`: the server namespace's UdpInDatagrams
//! does not grow while datagrams are echoed back.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::Deref;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use turn_bpf::server_conf::{ServerConf, Source};
use turn_bpf_testkit::agent::AgentProc;
use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::turn_client::{RelayFamily, TurnClient, TurnError};

use common::*;

const CHANNEL: u16 = 0x4000;

/// A lab whose coturn gets its extra arguments exactly as given (`LAB_VERBATIM=1`: no
/// `--opt value` → `--opt=value` rewrite); torn down on drop.
struct VerbatimLab(Lab);

impl VerbatimLab {
    fn up(name: &str, coturn_args: &[&str]) -> VerbatimLab {
        let out = Command::new("bash")
            .arg(lab::script_path())
            .env("LAB", name)
            .env("LAB_VERBATIM", "1")
            .args(["up", "--"])
            .args(coturn_args)
            .output()
            .expect("running lab.sh up");
        assert!(
            out.status.success(),
            "LAB_VERBATIM=1 lab.sh up -- {coturn_args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        VerbatimLab(Lab::existing(name).unwrap())
    }
}

impl Deref for VerbatimLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.0
    }
}

impl Drop for VerbatimLab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(lab::script_path())
            .env("LAB", self.0.name())
            .arg("down")
            .output();
    }
}

/// Warm the server's ARP cache for client and peer so every datagram is offloadable.
fn warm_neighbours(lab: &Lab) {
    for ip in [lab::CLIENT_V4.to_string(), lab::PEER_V4.to_string()] {
        lab.exec(Host::Srv, &["ping", "-c", "1", "-W", "1", &ip])
            .unwrap();
    }
}

/// Datagrams the server's sockets received while `f` ran.
fn server_saw(lab: &Lab, f: impl FnOnce()) -> u64 {
    let before = lab.nstat_udp_in(Host::Srv);
    f();
    lab.nstat_udp_in(Host::Srv) - before
}

/// Send `n` datagrams of `size` bytes in a burst; how many echoes come back within 500 ms.
fn burst(c: &TurnClient, n: usize, size: usize) -> usize {
    for i in 0..n {
        c.send_channel_data(CHANNEL, &vec![i as u8; size]).unwrap();
    }
    let mut buf = vec![0u8; 2048];
    let mut got = 0;
    while c
        .recv_channel_data(&mut buf, Duration::from_millis(500))
        .unwrap()
        .is_some()
    {
        got += 1;
    }
    got
}

/// A TURN client with the lab's credentials talking to `server`.
fn client_to(lab: &Lab, server: SocketAddr) -> TurnClient {
    let sock = lab::in_ns(&lab.ns(Host::Cli), || {
        UdpSocket::bind((lab::CLIENT_V4, 0)).expect("binding the client socket")
    });
    TurnClient::new(sock, server, lab::TURN_USER, lab::TURN_PASS)
}

/// With coturn alone (no agent): bind a channel, check that it relays (the positive control),
/// and say whether it still relays `after` the bind.
fn coturn_relays_after(lab: &Lab, echo: &Echo, after: Duration) -> bool {
    let mut c = client(lab);
    c.allocate(None).unwrap();
    c.channel_bind(CHANNEL, echo.addr).unwrap();
    let bound = Instant::now();
    assert_eq!(
        exchange(&c, CHANNEL, 0, 3),
        3,
        "positive control: the fresh channel relays"
    );
    std::thread::sleep(after.saturating_sub(bound.elapsed()));
    exchange(&c, CHANNEL, 100, 3) > 0
}

/// What the parser makes of the running coturn of `lab`.
fn parsed(lab: &Lab) -> ServerConf {
    let pid = lab.turnserver_pid().expect("coturn runs in the lab");
    ServerConf::of_process(pid, None).unwrap()
}

/// The agent's start-up lines (it is stopped again).
fn agent_start_up(lab: &Lab, log: &str, args: &[&str]) -> String {
    let mut all = vec!["--enable-forwarding", "turn0", "relay0"];
    all.extend_from_slice(args);
    let a = AgentProc::start_ready(&agent_bin(), &lab.ns(Host::Srv), &all, &log_path(log)).unwrap();
    let out = a.output();
    let exit = a.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    out
}

fn warnings(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.contains(" WARN ")).collect()
}

#[test]
fn coturn_ignores_a_spaced_channel_lifetime_and_the_parser_agrees() {
    skip_unless_lab!();
    let lab = VerbatimLab::up("tbt-conf1", &["--channel-lifetime", "5"]);
    let log = std::fs::read_to_string(lab.turnserver_log()).unwrap();
    assert!(
        log.contains("CONFIGURATION ALERT: Unknown argument: 5"),
        "coturn took '5' for a stray word:\n{log}"
    );
    let status = lab.status().unwrap();
    assert!(status.contains(" --channel-lifetime 5 "), "{status}");
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7300);

    // coturn's behaviour: the channel outlives 5 s (it runs with its default 600 s).
    assert!(
        coturn_relays_after(&lab, &echo, Duration::from_secs(7)),
        "coturn still relays the channel 7 s after binding it"
    );

    // The parser agrees, and says why.
    let c = parsed(&lab);
    assert_eq!(c.channel_lifetime.value, 600);
    assert_eq!(c.channel_lifetime.from, Source::CommandLine);
    assert!(
        c.notes.iter().any(|n| n
            == "coturn ignores \"5\" after --channel-lifetime on its command line: it takes \
                that option's value only as --channel-lifetime=5"),
        "{:?}",
        c.notes
    );
    // So does the agent.
    let out = agent_start_up(&lab, "conf1", &[]);
    assert!(
        out.contains("channel-lifetime 600 s (server: 600 s, coturn's command line)"),
        "{out}"
    );
    assert_eq!(warnings(&out).len(), 1, "{out}");
    echo.stop();
}

#[test]
fn coturn_takes_channel_lifetime_with_equals_and_the_parser_agrees() {
    skip_unless_lab!();
    let lab = VerbatimLab::up("tbt-conf2", &["--channel-lifetime=5"]);
    let log = std::fs::read_to_string(lab.turnserver_log()).unwrap();
    assert!(!log.contains("Unknown argument"), "{log}");
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7301);

    // coturn's behaviour: the channel (and the permission ChannelBind set) is gone after 5 s.
    assert!(
        !coturn_relays_after(&lab, &echo, Duration::from_secs(7)),
        "coturn no longer relays the channel 7 s after binding it"
    );

    let c = parsed(&lab);
    assert_eq!(c.channel_lifetime.value, 5);
    assert!(c.notes.is_empty(), "{:?}", c.notes);
    let out = agent_start_up(&lab, "conf2", &[]);
    assert!(
        out.contains("channel-lifetime 5 s (server: 5 s, coturn's command line)"),
        "{out}"
    );
    assert!(warnings(&out).is_empty(), "{out}");
    echo.stop();
}

#[test]
fn an_agent_told_a_longer_lifetime_stops_relaying_in_xdp_when_the_server_does() {
    skip_unless_lab!();
    let lab = Lab::up(
        "tbt-conf3",
        &["--channel-lifetime", "6", "--permission-lifetime", "6"],
    )
    .unwrap();
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7302);
    let a = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &[
            "--enable-forwarding",
            "--channel-lifetime",
            "60",
            "turn0",
            "relay0",
        ],
        &log_path("conf3"),
    )
    .unwrap();
    let out = a.output();
    let w = warnings(&out);
    assert_eq!(w.len(), 1, "one warning for one disagreement:\n{out}");
    assert!(
        w[0].ends_with(
            "--channel-lifetime 60 disagrees with the server's channel-lifetime of 6 s \
             (coturn's command line): using 6 s, so the fast path never relays longer than the \
             server"
        ),
        "{out}"
    );
    // Every port the server listens on: 3478 and, with two listening addresses, 3479.
    assert!(
        out.contains("offloading TURN port(s) [3478, 3479]"),
        "{out}"
    );

    let mut c = client(&lab);
    c.allocate(None).unwrap();
    c.channel_bind(CHANNEL, echo.addr).unwrap();
    let bound = Instant::now();
    let saw = server_saw(&lab, || {
        assert_eq!(exchange(&c, CHANNEL, 0, 10), 10);
    });
    assert_eq!(saw, 0, "relayed in XDP while the server's channel lives");

    // The alternate port, which the agent took from the server, is offloaded too.
    let mut alt = client_to(&lab, SocketAddr::new(lab::SERVER_V4.into(), 3479));
    alt.allocate(None).unwrap();
    alt.channel_bind(CHANNEL, echo.addr).unwrap();
    let saw = server_saw(&lab, || {
        assert_eq!(exchange(&alt, CHANNEL, 20, 10), 10);
    });
    assert_eq!(saw, 0, "a channel on the alternate port is relayed in XDP");

    // Past the server's 6 s (not the 60 the agent was told): nothing relayed in XDP, and
    // nothing relayed at all, since coturn dropped the channel too.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(bound.elapsed()));
    let saw = server_saw(&lab, || {
        assert_eq!(burst(&c, 10, 100), 0, "the expired channel relays nothing");
    });
    assert!(
        saw >= 10,
        "after the server's lifetime every datagram reached the server ({saw})"
    );

    let exit = a.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(exit.counter("RELAYED_TO_PEER"), 20, "{}", exit.output);
    assert_eq!(exit.counter("RELAYED_TO_CLIENT"), 20, "{}", exit.output);
    echo.stop();
}

/// The agent run once in `lab`'s server namespace: exit code and the non-empty stderr lines.
fn run_agent(lab: &Lab) -> (Option<i32>, Vec<String>) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(Host::Srv)])
        .arg(agent_bin())
        .args(["--enable-forwarding", "turn0", "relay0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect(),
    )
}

/// Echoes of a 60-datagram burst of 1000 bytes: at most about two one-second windows' worth
/// of a `max_bps` limit come through coturn.
fn limited_burst(lab: &Lab, echo: &Echo, max_bps: usize) -> usize {
    let mut c = client(lab);
    c.allocate(None).unwrap();
    c.channel_bind(CHANNEL, echo.addr).unwrap();
    let got = burst(&c, 60, 1000);
    assert!(got > 0, "positive control: the path works");
    assert!(
        got <= 2 * max_bps / 1000 + 1,
        "coturn's limit of {max_bps} B/s holds: {got} of 60 echoed"
    );
    got
}

#[test]
fn a_server_with_max_bps_is_refused_and_nothing_is_attached() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-conf4", &["--max-bps", "20000"]).unwrap();
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7303);
    let log = std::fs::read_to_string(lab.turnserver_log()).unwrap();
    assert!(
        log.contains("20000 bytes per second allowed per session"),
        "{log}"
    );
    // coturn alone enforces its limit.
    let alone = limited_burst(&lab, &echo, 20000);

    let (code, err) = run_agent(&lab);
    assert_eq!(code, Some(1), "{err:?}");
    assert_eq!(
        err,
        [
            "turn-bpf: error: the TURN server limits bandwidth (max-bps=20000 (coturn's command \
          line)): coturn's bandwidth limits cannot be enforced in the fast path, so turn-bpf \
          declines to bypass them and offloads nothing"
        ]
    );
    assert_clean(&lab);

    // With the agent (refused) a client gets no more through than without.
    let with_agent = limited_burst(&lab, &echo, 20000);
    eprintln!("echoed of 60 over a 20000 B/s limit: {alone} alone, {with_agent} with the agent");
    echo.stop();
}

#[test]
fn a_limit_in_the_config_file_named_by_the_last_dash_c_is_refused() {
    skip_unless_lab!();
    // The lab's configuration plus a limit, in the file's spaced format, as a second -c:
    // coturn reads the last one.
    let lab_conf =
        std::fs::read_to_string(lab::project_dir().join("scripts/turnserver.conf")).unwrap();
    let conf = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("conf5-turnserver.conf");
    std::fs::write(&conf, format!("{lab_conf}\nmax-bps 30000\n")).unwrap();
    let lab = VerbatimLab::up("tbt-conf5", &["-c", conf.to_str().unwrap()]);
    let log = std::fs::read_to_string(lab.turnserver_log()).unwrap();
    assert!(
        log.contains("30000 bytes per second allowed per session"),
        "coturn read the second -c:\n{log}"
    );

    let (code, err) = run_agent(&lab);
    assert_eq!(code, Some(1), "{err:?}");
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].contains("(max-bps=30000 (coturn's config file))"),
        "{err:?}"
    );
    assert!(err[0].ends_with("declines to bypass them and offloads nothing"));
    assert_clean(&lab);
}

#[test]
fn the_mirrored_peer_policy_gives_coturns_answer_for_every_peer() {
    skip_unless_lab!();
    let lab = Lab::up(
        "tbt-conf6",
        &[
            "--allowed-peer-ip",
            "198.51.100.2",
            "--allowed-peer-ip",
            "127.0.0.5",
            "--denied-peer-ip",
            "198.51.100.0-198.51.100.127",
            "--denied-peer-ip",
            "203.0.113.0/24",
            "--denied-peer-ip",
            "2001:db8:2::-2001:db8:3::5",
        ],
    )
    .unwrap();
    let mirror = parsed(&lab).peers;
    assert_eq!(mirror.dropped, ["203.0.113.0/24"], "{mirror}");
    let log = std::fs::read_to_string(lab.turnserver_log()).unwrap();
    assert!(
        log.contains("Wrong address format: 203.0.113.0/24"),
        "{log}"
    );

    // One allocation per family; one CreatePermission per peer; 403 is coturn's refusal.
    let mut v4 = client(&lab);
    v4.allocate(None).unwrap();
    let mut v6 = client(&lab);
    v6.allocate_family(None, RelayFamily::V6).unwrap();
    let peers = [
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.200",
        "203.0.113.7",
        "127.0.0.5",
        "127.0.0.1",
        "0.1.2.3",
        "224.0.0.1",
        "255.255.255.255",
        "10.9.9.9",
        "2001:db8:2::2",
        "2001:db8:2::5",
        "2001:db8:2::9",
        "2001:db8:2::1:0",
        "2001:db8:4::1",
        "::1",
        "::",
        "ff02::1",
        "::ffff:127.0.0.1",
    ];
    let mut table = Vec::new();
    for p in peers {
        let ip: IpAddr = p.parse().unwrap();
        let c = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
        let coturn = match c.create_permission(&[SocketAddr::new(ip, 9)]) {
            Ok(()) => true,
            Err(TurnError::Rejected { code: 403, .. }) => false,
            Err(e) => panic!("CreatePermission for {p}: {e}"),
        };
        table.push(format!(
            "{p:>20}  coturn: {coturn:5}  mirror: {}",
            mirror.peer_allowed(ip)
        ));
        assert_eq!(
            mirror.peer_allowed(ip),
            coturn,
            "{p}: coturn says {coturn}\n{}",
            table.join("\n")
        );
    }
    eprintln!("{}", table.join("\n"));
}
