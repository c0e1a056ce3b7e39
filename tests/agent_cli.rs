//! The agent's frame: attach, detach cleanly on SIGINT/SIGTERM, refuse a second agent and bad
//! input with one clear line, and the documented way back after SIGKILL.

mod common;

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use turn_bpf_testkit::agent::AgentProc;
use turn_bpf_testkit::lab::{Host, Lab};

use common::*;

fn run_once(ns: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(agent_bin());
            c
        }
        None => Command::new(agent_bin()),
    };
    let out = cmd.args(args).output().expect("running turn-bpf");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sigint_and_sigterm_detach_everything_and_exit_0() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-cli1", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let agent = AgentProc::start_ready(
            &agent_bin(),
            &ns,
            &["--enable-forwarding", "turn0", "relay0"],
            &log_path("cli1"),
        )
        .unwrap();
        let out = agent.output();
        for line in [
            "attached XDP fast path to turn0",
            "attached XDP fast path to relay0",
            "attached TC egress snooper to turn0",
        ] {
            assert!(out.contains(line), "missing '{line}' in:\n{out}");
        }
        assert!(xdp_attached(&lab, "turn0") && xdp_attached(&lab, "relay0"));
        assert!(tc_filters(&lab, "turn0", "egress").contains("tc_snoop"));
        assert_eq!(forwarding(&lab, "turn0"), "1");
        // IPv6 too, and accept_ra=2 so that the interfaces keep taking Router Advertisements.
        for dev in ["turn0", "relay0"] {
            assert_eq!(forwarding6(&lab, dev), "1", "{dev}");
            assert_eq!(accept_ra(&lab, dev), "2", "{dev}");
            for line in [
                format!("enabled IPv6 forwarding on {dev}"),
                format!("set accept_ra=2 on {dev}"),
            ] {
                assert!(out.contains(&line), "missing '{line}' in:\n{out}");
            }
        }

        let exit = agent.stop(sig).unwrap();
        assert_eq!(exit.status.code(), Some(0), "{sig}: {}", exit.output);
        assert!(
            exit.output.contains("turn-bpf counters:"),
            "{}",
            exit.output
        );
        // The fast path goes first: nothing is relayed once revocations can no longer be seen.
        let xdp = exit.output.find("detached XDP from turn0");
        let tc = exit.output.find("detached TC egress snooper from turn0");
        assert!(
            xdp.is_some() && tc.is_some() && xdp < tc,
            "XDP must be detached before the snooper:\n{}",
            exit.output
        );
        assert_clean(&lab);
    }
}

#[test]
fn a_signal_during_start_up_undoes_everything_and_exits_0() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-cli6", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    // Signalled as soon as it has changed something (forwarding), while the BPF programs load,
    // and while it attaches.
    for (i, (sig, after)) in [
        (Signal::SIGTERM, "enabled IPv4 forwarding on relay0"),
        (Signal::SIGINT, "enabled IPv4 forwarding on relay0"),
        (Signal::SIGTERM, "attached XDP fast path to turn0"),
        (Signal::SIGINT, "attached XDP fast path to relay0"),
    ]
    .into_iter()
    .enumerate()
    {
        let agent = AgentProc::start(
            &agent_bin(),
            &ns,
            &["--enable-forwarding", "turn0", "relay0"],
            &log_path(&format!("cli6-{i}")),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !agent.output().contains(after) {
            assert!(
                std::time::Instant::now() < deadline,
                "no '{after}':\n{}",
                agent.output()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let exit = agent.stop(sig).unwrap();
        assert_eq!(
            exit.status.code(),
            Some(0),
            "{sig} after '{after}':\n{}",
            exit.output
        );
        assert_clean(&lab);
    }
}

#[test]
fn no_turn_server_listening_is_refused_with_one_line() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-cli7", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    // Stop this lab's coturn (by its pid: other labs' servers are not ours to touch).
    let pid = lab.turnserver_pid().expect("coturn runs in the lab");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lab.turnserver_pid().is_some() {
        assert!(std::time::Instant::now() < deadline, "coturn did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out, err) = run_once(Some(&ns), &["--enable-forwarding", "turn0", "relay0"]);
    assert_ne!(code, 0);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines,
        [
            "turn-bpf: error: nothing listens on UDP port 3478 here: start the TURN server \
             first (turn-bpf learns from its responses)"
        ],
        "{err}"
    );
    assert!(out.trim().is_empty(), "{out}");
    assert_clean(&lab);
}

#[test]
fn forwarding_someone_else_enabled_meanwhile_is_left_on() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-cli8", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("cli8"),
    )
    .unwrap();
    // The host starts routing while the agent runs, in both families.
    lab.exec(
        Host::Srv,
        &[
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv6.conf.all.forwarding=1",
        ],
    )
    .unwrap();
    let exit = agent.stop(Signal::SIGTERM).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(forwarding(&lab, "turn0"), "1");
    assert_eq!(forwarding(&lab, "relay0"), "1");
    assert!(
        exit.output.contains(
            "WARN  turn_bpf::attach] leaving IPv4 forwarding on on turn0: someone else enabled \
             forwarding meanwhile"
        ),
        "{}",
        exit.output
    );
    for dev in ["turn0", "relay0"] {
        assert_eq!(forwarding6(&lab, dev), "1", "{dev}");
        // With IPv6 forwarding staying on, accept_ra=1 would stop the Router Advertisements.
        assert_eq!(accept_ra(&lab, dev), "2", "{dev}");
        let line = format!(
            "leaving accept_ra=2 on {dev}: its IPv6 forwarding stays on, and with accept_ra=1"
        );
        assert!(exit.output.contains(&line), "{}", exit.output);
    }
    assert!(
        exit.output
            .contains("leaving IPv6 forwarding on on turn0: someone else enabled forwarding"),
        "{}",
        exit.output
    );
    // Back to how the lab was (all=0 switches every interface off too).
    lab.exec(
        Host::Srv,
        &[
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.forwarding=0",
            "net.ipv6.conf.all.forwarding=0",
            "net.ipv6.conf.turn0.accept_ra=1",
            "net.ipv6.conf.relay0.accept_ra=1",
        ],
    )
    .unwrap();
    assert_clean(&lab);
}

#[test]
fn a_second_agent_is_refused_and_the_first_keeps_running() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-cli2", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let first = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("cli2a"),
    )
    .unwrap();
    let (code, _out, err) = run_once(Some(&ns), &["--enable-forwarding", "turn0", "relay0"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("a turn-bpf agent is already running on turn0"),
        "{err}"
    );
    // The refused agent's error is one line (libbpf/log lines aside, none at warn level here).
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
    // The first is intact: still attached and still running.
    assert!(xdp_attached(&lab, "turn0") && xdp_attached(&lab, "relay0"));
    assert!(tc_filters(&lab, "turn0", "egress").contains("tc_snoop"));
    assert_eq!(forwarding(&lab, "turn0"), "1");
    let exit = first.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_clean(&lab);
}

#[test]
fn bad_input_gives_one_line_a_nonzero_exit_and_attaches_nothing() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-cli3", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let cases: &[(&[&str], &str)] = &[
        (&["nosuch0"], "no interface named nosuch0"),
        (&["turn0", "nosuch1"], "no interface named nosuch1"),
        (&["turn0", "turn0"], "named twice"),
        (&["turn0", "--turn-port", "70000"], "70000"),
        (&["turn0", "--turn-port", "0"], "0"),
        (&["turn0", "--xdp-mode", "fast"], "fast"),
        (&[], "IFACE"),
        // a port the server does not listen on
        (
            &["turn0", "--turn-port", "3478", "--turn-port", "4000"],
            "nothing listens on UDP port 4000 here",
        ),
        // forwarding off and not asked to enable it: explained, nothing attached
        (
            &["turn0", "relay0"],
            "IPv4 forwarding is off on turn0, relay0, and IPv6 forwarding is off on turn0, relay0",
        ),
    ];
    for (args, needle) in cases {
        let (code, out, err) = run_once(Some(&ns), args);
        assert_ne!(code, 0, "{args:?} must fail");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected one line, got:\n{err}");
        assert!(
            lines[0].starts_with("turn-bpf: error: "),
            "{args:?}: {}",
            lines[0]
        );
        assert!(
            lines[0].contains(needle),
            "{args:?}: '{}' lacks '{needle}'",
            lines[0]
        );
        assert!(out.trim().is_empty(), "{args:?} printed to stdout: {out}");
        assert_clean(&lab);
    }

    // Not root: refused before anything is touched (on the host's loopback, which it never
    // gets to touch).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(agent_bin())
        .arg("lo")
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.trim().lines().count() == 1 && err.contains("needs root"),
        "{err}"
    );
}

#[test]
fn after_sigkill_detach_removes_the_leftover_filter() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-cli4", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("cli4"),
    )
    .unwrap();
    let exit = agent.stop(Signal::SIGKILL).unwrap();
    assert!(exit.status.code().is_none(), "killed by a signal");
    // XDP links vanish with the process.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!xdp_attached(&lab, "turn0") && !xdp_attached(&lab, "relay0"));
    // The clsact filter stays until --detach removes it.
    assert!(tc_filters(&lab, "turn0", "egress").contains("tc_snoop"));
    let (code, out, err) = run_once(Some(&ns), &["--detach", "turn0", "relay0"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("turn0: removed the TC egress snooper"),
        "{out}"
    );
    assert!(out.contains("relay0: no turn-bpf TC filter"), "{out}");
    assert_eq!(tc_filters(&lab, "turn0", "egress").trim(), "");
    assert!(!has_clsact(&lab, "turn0"));
    // Forwarding (and accept_ra) the killed agent switched on is restored from its record
    // under /run/turn-bpf.
    assert!(
        out.contains("turn0: restored the forwarding settings"),
        "{out}"
    );
    assert_clean(&lab);
    // Nothing to do a second time (the subcommand spelling).
    let (code, out, _) = run_once(Some(&ns), &["detach", "turn0"]);
    assert_eq!(code, 0);
    assert!(out.contains("no turn-bpf TC filter"), "{out}");
}

#[test]
fn a_clsact_qdisc_and_filters_of_others_are_left_alone() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-cli5", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    lab.exec(Host::Srv, &["tc", "qdisc", "add", "dev", "turn0", "clsact"])
        .unwrap();
    // A filter of someone else's at a higher priority than the snooper's would run first (and
    // could hide the server's answers): the agent refuses, in one line, and leaves it alone.
    lab.exec(
        Host::Srv,
        &[
            "tc", "filter", "add", "dev", "turn0", "egress", "prio", "1", "u32", "match", "u32",
            "0", "0",
        ],
    )
    .unwrap();
    let (code, _, err) = run_once(Some(&ns), &["--enable-forwarding", "turn0", "relay0"]);
    assert_ne!(code, 0);
    assert!(
        err.trim().lines().count() == 1
            && err.contains("u32 filter at preference 1 run(s) on the egress of turn0"),
        "{err}"
    );
    assert!(!xdp_attached(&lab, "turn0") && !xdp_attached(&lab, "relay0"));
    let f = tc_filters(&lab, "turn0", "egress");
    assert!(f.contains("u32") && !f.contains("tc_snoop"), "{f}");
    // One behind it (a higher preference number) is no obstacle: the agent runs, and leaves
    // both the filter and the qdisc it did not create in place.
    lab.exec(
        Host::Srv,
        &["tc", "filter", "del", "dev", "turn0", "egress", "prio", "1"],
    )
    .unwrap();
    lab.exec(
        Host::Srv,
        &[
            "tc", "filter", "add", "dev", "turn0", "egress", "prio", "40000", "u32", "match",
            "u32", "0", "0",
        ],
    )
    .unwrap();
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("cli5"),
    )
    .unwrap();
    let exit = agent.stop(Signal::SIGTERM).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert!(
        has_clsact(&lab, "turn0"),
        "the qdisc we did not create stays"
    );
    let f = tc_filters(&lab, "turn0", "egress");
    assert!(f.contains("u32") && !f.contains("tc_snoop"), "{f}");
}

#[test]
fn detach_refuses_the_snooper_of_a_running_agent() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-cli6", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("cli6"),
    )
    .unwrap();
    let (code, out, err) = run_once(Some(&ns), &["--detach", "turn0"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.trim().lines().count() == 1 && err.contains("belongs to running turn-bpf process"),
        "{err}"
    );
    // untouched: the running agent keeps its snooper and its fast path
    assert!(tc_filters(&lab, "turn0", "egress").contains("tc_snoop"));
    assert!(xdp_attached(&lab, "turn0"));
    let exit = agent.stop(Signal::SIGTERM).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_clean(&lab);
}

#[test]
fn a_snooper_deleted_under_a_running_agent_detaches_the_fast_path() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-cli7", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("cli7"),
    )
    .unwrap();
    // someone deletes the clsact qdisc (and with it the snooper)
    lab.exec(Host::Srv, &["tc", "qdisc", "del", "dev", "turn0", "clsact"])
        .unwrap();
    let exit = agent
        .wait_exit(Duration::from_secs(5))
        .expect("the agent must stop by itself within a few sweeps");
    assert_ne!(exit.status.code(), Some(0), "{}", exit.output);
    assert!(
        exit.output
            .contains("the TC egress snooper on turn0 is gone"),
        "{}",
        exit.output
    );
    assert!(!xdp_attached(&lab, "turn0") && !xdp_attached(&lab, "relay0"));
    assert_clean(&lab);
}

/// IPv6 disabled on an interface: no IPv6 forwarding check there (a debug line says why), while
/// the interfaces that have IPv6 are still checked and named.
#[test]
fn an_interface_without_ipv6_is_not_checked_for_ipv6_forwarding() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-v6cli", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    lab.exec(
        Host::Srv,
        &[
            "sysctl",
            "-qw",
            "net.ipv6.conf.relay0.disable_ipv6=1",
            "net.ipv4.conf.turn0.forwarding=1",
            "net.ipv4.conf.relay0.forwarding=1",
        ],
    )
    .unwrap();
    let (code, out, err) = run_once(Some(&ns), &["-vv", "turn0", "relay0"]);
    assert_ne!(code, 0);
    assert!(out.trim().is_empty(), "{out}");
    assert!(
        err.contains("no IPv6 forwarding check on relay0: IPv6 is disabled on relay0"),
        "{err}"
    );
    let refusal = err
        .lines()
        .find(|l| l.starts_with("turn-bpf: error: "))
        .unwrap_or_else(|| panic!("no refusal in:\n{err}"));
    assert!(
        refusal.starts_with(
            "turn-bpf: error: IPv6 forwarding is off on turn0: the fast path's FIB lookups need \
             it (net.ipv6.conf.<if>.forwarding=1)."
        ),
        "{refusal}"
    );
    lab.exec(
        Host::Srv,
        &[
            "sysctl",
            "-qw",
            "net.ipv4.conf.turn0.forwarding=0",
            "net.ipv4.conf.relay0.forwarding=0",
        ],
    )
    .unwrap();
    assert_clean(&lab);
}

/// Under a seccomp filter that refuses bpf() with EPERM (as a container runtime's default
/// profile does), the agent says in one line that it could not ask the kernel, not that the
/// kernel lacks XDP and should be replaced, and leaves nothing attached.
#[test]
fn a_refused_bpf_call_is_named_not_taken_for_an_old_kernel() {
    skip_unless_lab!();
    use std::os::unix::process::CommandExt;
    let lab = Lab::up("tbt-cli9", &[]).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.ns(Host::Srv)])
        .arg(agent_bin())
        .args(["--enable-forwarding", "turn0", "relay0"]);
    // SAFETY: only prctl between fork and exec, with a filter that lives on this stack.
    unsafe {
        cmd.pre_exec(|| {
            use nix::libc;
            const SYS_BPF: u32 = libc::SYS_bpf as u32;
            let filter = [
                // A = seccomp_data.nr
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                // if A == bpf: EPERM, else allow
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: SYS_BPF,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("turn-bpf: error: could not ask the kernel what it offers")
            && lines[0].contains("EPERM")
            && !lines[0].contains("lacks"),
        "{err}"
    );
    assert_clean(&lab);
}
