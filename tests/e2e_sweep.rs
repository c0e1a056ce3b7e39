//! End to end: teardown coturn performs without an answer the snooper could see. A restarted
//! coturn, or an allocation that ends inside coturn, must stop being offloaded within about two
//! seconds (the agent reads the kernel's notices of destroyed sockets once a second, and all of
//! coturn's sockets in a full sweep), and what the new coturn grants is learned again.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use turn_bpf_testkit::agent::AgentProc;
use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::turn_client::TurnClient;

use common::*;

const CHANNEL: u16 = 0x4000;
/// How long after coturn's change the agent may take to notice: one sweep interval, its 200 ms
/// polling, and slack for a loaded machine.
const NOTICE_WITHIN: Duration = Duration::from_millis(2500);

/// Wait (bounded) until the agent's log contains `needle`; returns how long it took.
fn wait_for_log(agent: &AgentProc, needle: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    while !agent.output().contains(needle) {
        assert!(
            t0.elapsed() < within,
            "no '{needle}' in the agent's log within {within:?}:\n{}",
            agent.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// Allocate, bind CHANNEL to the echo peer, and check that the exchange is offloaded: all echoed,
/// nothing reached the server's sockets (after a few datagrams that let the server's ARP cache
/// learn the neighbours).
fn bind_and_check_offloaded(lab: &Lab, c: &mut TurnClient, echo: &Echo, from: usize) {
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    assert_eq!(exchange(c, CHANNEL, from, 5), 5, "warm-up");
    let before = lab.nstat_udp_in(Host::Srv);
    assert_eq!(exchange(c, CHANNEL, from + 5, 100), 100);
    assert_eq!(
        lab.nstat_udp_in(Host::Srv) - before,
        0,
        "the exchange must be offloaded"
    );
}

/// Send `n` datagrams on CHANNEL: they must all reach the server's sockets (none relayed in the
/// kernel) and none come back (the server no longer has the binding).
fn check_not_offloaded(lab: &Lab, c: &TurnClient, from: usize, n: usize) {
    let before = lab.nstat_udp_in(Host::Srv);
    for i in from..from + n {
        c.send_channel_data(CHANNEL, &payload(i)).unwrap();
    }
    let mut buf = vec![0u8; 2048];
    let echoed = c
        .recv_channel_data(&mut buf, Duration::from_millis(500))
        .unwrap();
    assert_eq!(echoed, None, "the old binding was still relayed");
    let reached = lab.nstat_udp_in(Host::Srv) - before;
    assert!(
        reached >= n as u64,
        "{reached} of {n} datagrams reached the server's sockets"
    );
}

/// Stop this lab's coturn by its pid (never another lab's) and wait until it is gone.
fn stop_coturn(lab: &Lab) {
    let pid = lab.turnserver_pid().expect("coturn runs in the lab");
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "coturn (pid {pid}) did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The lab's coturn configuration.
fn lab_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/turnserver.conf")
}

/// Start coturn with `conf` the way `scripts/lab.sh up` does (the lab's pid file, log and user
/// database, detached from us), and wait until it listens. `Lab`'s drop stops it.
fn start_coturn(lab: &Lab, conf: &Path) {
    let state = lab.state_dir();
    let script = format!(
        "ip netns exec '{ns}' setsid turnserver -c '{conf}' --pidfile '{st}/turnserver.pid' \
         --log-file '{st}/turnserver.log' --userdb '{st}/turndb' \
         </dev/null >>'{st}/turnserver.log' 2>&1 &",
        ns = lab.ns(Host::Srv),
        conf = conf.display(),
        st = state.display(),
    );
    let st = Command::new("sh").arg("-c").arg(&script).status().unwrap();
    assert!(st.success(), "{script}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ss = lab.exec(Host::Srv, &["ss", "-Huln"]).unwrap_or_default();
        if ss.contains("192.0.2.1:3478") && lab.turnserver_pid().is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "coturn did not come back:\n{ss}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const CLI_PORT: u16 = 5766;
const CLI_PASSWORD: &str = "admin-secret";

/// Restart the lab's coturn with its telnet CLI on (127.0.0.1 in the server namespace): the
/// lab's configuration without `no-cli`, written to the lab's state directory.
fn restart_coturn_with_cli(lab: &Lab) {
    let conf = std::fs::read_to_string(lab_conf()).unwrap();
    let mut conf: String = conf
        .lines()
        .filter(|l| l.trim() != "no-cli")
        .map(|l| format!("{l}\n"))
        .collect();
    conf.push_str(&format!(
        "cli-ip=127.0.0.1\ncli-port={CLI_PORT}\ncli-password={CLI_PASSWORD}\n"
    ));
    let path = lab.state_dir().join("turnserver-cli.conf");
    std::fs::write(&path, conf).unwrap();
    stop_coturn(lab);
    start_coturn(lab, &path);
}

/// Run `commands` on coturn's CLI (after the password); returns everything it printed.
fn coturn_cli(lab: &Lab, commands: &[&str]) -> String {
    let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    lab::in_ns(&lab.ns(Host::Srv), move || {
        let mut s = TcpStream::connect(("127.0.0.1", CLI_PORT)).expect("coturn's CLI");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut out = String::new();
        let mut read = |s: &mut TcpStream| {
            let mut buf = [0u8; 65536];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        };
        read(&mut s);
        for c in std::iter::once(CLI_PASSWORD.to_string()).chain(commands) {
            s.write_all(format!("{c}\r\n").as_bytes()).unwrap();
            read(&mut s);
        }
        out
    })
}

/// The CLI session ID of the allocation of `client` in coturn's `ps` listing.
fn session_id(ps: &str, client: SocketAddr) -> String {
    let at = ps
        .find(&format!("client addr {client},"))
        .unwrap_or_else(|| panic!("no session of {client} in:\n{ps}"));
    let start = ps[..at].rfind("id=").expect("a session id") + 3;
    ps[start..]
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap()
        .to_string()
}

/// Full sweeps a minute apart (the test is over by then): what the agent notices, it notices
/// from the kernel's destroy notices alone.
const NOTICES_ALONE: &[(&str, &str)] = &[("TURN_BPF_FULL_SWEEP_EVERY", "60")];

#[test]
fn a_restarted_server_makes_the_agent_forget_every_binding() {
    restarted_server_forgotten("tbt-swp1", 7200, &[]);
}

#[test]
fn a_restarted_server_is_noticed_from_the_destroy_notices() {
    restarted_server_forgotten("tbt-swp3", 7202, NOTICES_ALONE);
}

fn restarted_server_forgotten(name: &str, echo_port: u16, env: &[(&str, &str)]) {
    skip_unless_lab!();
    let lab = Lab::up(name, &[]).unwrap();
    let echo = Echo::start(&lab, echo_port);
    let agent = AgentProc::start_ready_with(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path(name),
        env,
    )
    .unwrap();
    let mut c = client(&lab);
    bind_and_check_offloaded(&lab, &mut c, &echo, 0);

    stop_coturn(&lab);
    let took = wait_for_log(&agent, "forgetting every binding", NOTICE_WITHIN);
    start_coturn(&lab, &lab_conf());
    let out = agent.output();
    // (the agent watches every port coturn serves TURN on: 3478 and the alternate 3479)
    assert!(
        (out.contains("socket on port 3478 went away")
            || out.contains("socket on port 3478 changed (the server restarted)"))
            && out.contains(
                "forgetting every binding (1 allocations, 1 channels, 1 permissions); new \
                 allocations will be learned again"
            ),
        "noticed after {took:?}:\n{out}"
    );
    // The client's binding is gone at the new coturn: its ChannelData goes there and is dropped.
    check_not_offloaded(&lab, &c, 200, 20);

    // What the new coturn grants is learned and offloaded again.
    bind_and_check_offloaded(&lab, &mut c, &echo, 300);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(exit.counter("LEARN_ALLOC"), 2, "{}", exit.output);
    assert_eq!(exit.counter("ABORTED"), 0);
    assert_clean(&lab);
    echo.stop();
}

#[test]
fn an_allocation_ended_inside_the_server_is_forgotten() {
    ended_inside_forgotten("tbt-swp2", 7201, &[]);
}

#[test]
fn an_allocation_ended_inside_the_server_is_noticed_from_the_destroy_notices() {
    ended_inside_forgotten("tbt-swp4", 7203, NOTICES_ALONE);
}

fn ended_inside_forgotten(name: &str, echo_port: u16, env: &[(&str, &str)]) {
    skip_unless_lab!();
    let lab = Lab::up(name, &[]).unwrap();
    restart_coturn_with_cli(&lab);
    let echo = Echo::start(&lab, echo_port);
    let agent = AgentProc::start_ready_with(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path(name),
        env,
    )
    .unwrap();
    let mut c = client(&lab);
    bind_and_check_offloaded(&lab, &mut c, &echo, 0);
    // A second client whose allocation stays.
    let mut other = client(&lab);
    bind_and_check_offloaded(&lab, &mut other, &echo, 1000);
    let relayed = c.allocation().unwrap().relayed;
    let me = c.local_addr().unwrap();

    // An administrator cancels the first client's session: coturn ends the allocation and
    // closes its relay socket, and sends the client nothing the snooper could see.
    let ps = coturn_cli(&lab, &["ps"]);
    let id = session_id(&ps, me);
    coturn_cli(&lab, &[&format!("cs {id}")]);
    let relay_port = format!("{relayed} ");
    let t0 = Instant::now();
    while lab
        .exec(Host::Srv, &["ss", "-Huln"])
        .unwrap()
        .contains(&relay_port)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "coturn kept the relay socket {relayed} after cs {id}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let line = format!(
        "allocation ended at the server: client {me} relay {relayed} (its relay socket is gone)"
    );
    let took = wait_for_log(&agent, &line, NOTICE_WITHIN);
    check_not_offloaded(&lab, &c, 200, 20);
    // The other client is still offloaded.
    let before = lab.nstat_udp_in(Host::Srv);
    assert_eq!(exchange(&other, CHANNEL, 2000, 50), 50);
    assert_eq!(lab.nstat_udp_in(Host::Srv) - before, 0);

    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    // The snooper learned no deallocation: the sweep did it, within {took:?}.
    assert_eq!(exit.counter("LEARN_DEALLOC"), 0, "{}", exit.output);
    // Its channel goes with the next full sweep (at the latest the last one, on exit); with
    // none before the allocation ended, the channel was never announced, so neither is its end.
    let gone = if env.is_empty() {
        format!("channel gone: client {me} peer {}", echo.addr)
    } else {
        "sweep removed 0 allocations (0 ended at the server), 1 channel entries, 1 permissions"
            .to_string()
    };
    assert!(
        exit.output.contains(&gone),
        "noticed after {took:?}:\n{}",
        exit.output
    );
    assert!(!exit.output.contains("forgetting every binding"));
    assert_clean(&lab);
    echo.stop();
}
