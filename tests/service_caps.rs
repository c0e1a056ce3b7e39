//! The systemd unit's capability bounding set (`packaging/turn-bpf.service`), shown on the
//! running agent beside a coturn that runs as its own user, as Debian's coturn.service runs it
//! (its `/proc/<pid>/fd` then belongs to that user). With exactly the unit's set the agent
//! starts, learns and relays in XDP; with any one of the capabilities it cannot do without taken
//! away it exits at once with one line naming that capability and leaves nothing behind; without
//! CAP_SYS_ADMIN, the one it can do without, it relays and warns that it cannot check the veths'
//! far ends.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use turn_bpf_testkit::agent::AgentProc;
use turn_bpf_testkit::lab::{Host, Lab};

use common::*;

const CHANNEL: u16 = 0x4000;
const N: usize = 200;

/// The capabilities in the unit's `CapabilityBoundingSet=`, as setpriv names them (`bpf`, …).
fn unit_caps() -> Vec<String> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/turn-bpf.service");
    let text = std::fs::read_to_string(&unit).expect("reading the unit");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=");
    line.split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .expect("CAP_ names")
                .to_ascii_lowercase()
        })
        .collect()
}

/// The agent in the server namespace with only `caps` in its bounding set (and so in its
/// effective set: it runs as root), the way systemd starts it with the unit's
/// `CapabilityBoundingSet=`.
fn agent_with(lab: &Lab, caps: &[String], log: &str) -> AgentProc {
    let set = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let bin = agent_bin();
    let args = [
        "--bounding-set",
        &set,
        "--inh-caps=-all",
        "--",
        bin.to_str().unwrap(),
        "--enable-forwarding",
        "turn0",
        "relay0",
    ];
    AgentProc::start(
        Path::new("setpriv"),
        &lab.ns(Host::Srv),
        &args,
        &log_path(log),
    )
    .unwrap()
}

/// coturn restarted in the lab as the `turnserver` user from the start (what systemd's `User=`
/// does), on the lab's configuration; killed on drop (the lab's teardown would find it too).
struct CoturnAsItsUser {
    child: Child,
}

impl CoturnAsItsUser {
    fn start(lab: &Lab) -> CoturnAsItsUser {
        let pid = lab.turnserver_pid().expect("the lab's coturn");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
        wait_for(
            || !Path::new(&format!("/proc/{pid}")).exists(),
            "coturn to stop",
        );
        let state = lab.state_dir();
        let st = Command::new("chown")
            .args(["-R", "turnserver:turnserver"])
            .arg(&state)
            .status()
            .unwrap();
        assert!(st.success(), "chown of {}", state.display());
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/turnserver.conf");
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(Host::Srv)])
            .args([
                "setpriv",
                "--reuid=turnserver",
                "--regid=turnserver",
                "--init-groups",
                "turnserver",
                "-c",
            ])
            .arg(&conf)
            .arg("--pidfile")
            .arg(state.join("turnserver.pid"))
            .arg("--log-file")
            .arg(state.join("turnserver.log"))
            .arg("--userdb")
            .arg(state.join("turndb"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting coturn as turnserver");
        let listening = || {
            lab.exec(Host::Srv, &["ss", "-Hlun", "sport", "=", ":3478"])
                .is_ok_and(|s| !s.trim().is_empty())
        };
        wait_for(listening, "coturn (as turnserver) to listen");
        CoturnAsItsUser { child }
    }
}

impl Drop for CoturnAsItsUser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "waited 10 s for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh client allocates, binds a channel to `echo` and exchanges N datagrams; the agent is
/// then stopped. Returns its exit, after checking that it learned and relayed all of them.
fn learns_and_relays(lab: &Lab, agent: AgentProc, echo: &Echo) -> String {
    let mut c = client(lab);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    let srv_before = lab.nstat_udp_in(Host::Srv);
    let got = exchange(&c, CHANNEL, 0, N);
    let srv_after = lab.nstat_udp_in(Host::Srv);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(got, N, "all {N} datagrams come back byte-exact");
    assert_eq!(exit.counter("LEARN_ALLOC"), 1, "{}", exit.output);
    assert_eq!(exit.counter("LEARN_CHANNEL"), 1, "{}", exit.output);
    // All relayed in XDP but for the first datagram or two (no ARP entry yet: to coturn).
    let no_neigh = exit.counter("PASS_NO_NEIGH");
    assert!(no_neigh <= 2, "{}", exit.output);
    assert_eq!(
        exit.counter("RELAYED_TO_PEER") + exit.counter("RELAYED_TO_CLIENT") + no_neigh,
        2 * N as u64,
        "{}",
        exit.output
    );
    assert_eq!(
        srv_after - srv_before,
        no_neigh,
        "datagrams reached the server's sockets"
    );
    exit.output
}

#[test]
fn the_units_capabilities_are_enough_and_each_one_is_needed() {
    skip_unless_lab!();
    let caps = unit_caps();
    for c in [
        "bpf",
        "perfmon",
        "net_admin",
        "sys_ptrace",
        "dac_read_search",
        "sys_admin",
    ] {
        assert!(caps.iter().any(|x| x == c), "the unit lacks CAP_{c}");
    }
    let lab = Lab::up("tbt-caps", &[]).unwrap();
    let coturn = CoturnAsItsUser::start(&lab);
    // The case that needs CAP_DAC_READ_SEARCH: the server's fd directory is its user's, 0500.
    let pid = coturn.child.id(); // `ip netns exec` execs setpriv, which execs coturn
    let fd_dir = std::fs::metadata(format!("/proc/{pid}/fd")).unwrap();
    let uid = nix::unistd::User::from_name("turnserver")
        .unwrap()
        .expect("the turnserver user (package coturn)")
        .uid
        .as_raw();
    assert_eq!(fd_dir.uid(), uid, "coturn's /proc/<pid>/fd owner");
    let echo = Echo::start(&lab, 7000);

    // Exactly the unit's set: starts, learns, relays, checks the veths' far ends.
    let mut agent = agent_with(&lab, &caps, "caps-unit");
    agent.wait_ready(Duration::from_secs(20)).unwrap();
    let out = learns_and_relays(&lab, agent, &echo);
    assert!(!out.contains("cannot reach"), "{out}");
    assert!(
        !out.contains("WARN"),
        "no warning with the unit's set:\n{out}"
    );
    assert_clean(&lab);

    // One fewer of those it cannot do without: one line naming it, a non-zero exit, nothing
    // attached.
    for needed in [
        "bpf",
        "perfmon",
        "net_admin",
        "sys_ptrace",
        "dac_read_search",
    ] {
        let mut fewer: Vec<String> = caps.iter().filter(|c| *c != needed).cloned().collect();
        if needed == "bpf" || needed == "perfmon" {
            // CAP_SYS_ADMIN stands in for both (as in the kernel): take it away as well.
            fewer.retain(|c| c != "sys_admin");
        }
        let exit = agent_with(&lab, &fewer, &format!("caps-no-{needed}"))
            .wait_exit(Duration::from_secs(10))
            .unwrap();
        assert_ne!(exit.status.code(), Some(0), "{}", exit.output);
        let lines: Vec<&str> = exit.output.trim().lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one line without CAP_{needed}:\n{}",
            exit.output
        );
        let name = format!("CAP_{}", needed.to_ascii_uppercase());
        assert!(
            lines[0].starts_with(&format!(
                "turn-bpf: error: turn-bpf runs as root but lacks {name} ("
            )),
            "{}",
            lines[0]
        );
        assert_clean(&lab);
    }

    // Without CAP_SYS_ADMIN: it relays, and says for each veth that it cannot check the far end.
    let fewer: Vec<String> = caps.iter().filter(|c| *c != "sys_admin").cloned().collect();
    let mut agent = agent_with(&lab, &fewer, "caps-no-sys_admin");
    agent.wait_ready(Duration::from_secs(20)).unwrap();
    let out = learns_and_relays(&lab, agent, &echo);
    for dev in ["turn0", "relay0"] {
        assert!(
            out.lines().any(|l| l.contains(&format!(
                "{dev} is a veth whose far end is in a network namespace this agent cannot reach"
            )) && l.contains("EPERM")),
            "no far-end warning for {dev}:\n{out}"
        );
    }
    assert_clean(&lab);
    echo.stop();
    drop(coturn);
}
