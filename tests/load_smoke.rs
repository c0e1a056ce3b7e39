//! Smoke test of the load generator (`turn_bpf_testkit::load`) through a lab with the real coturn: a few
//! seconds each with the agent attached, with coturn alone, and through the baseline forwarder.
//! It asserts delivery and that the agent relayed the traffic, never speed. The same over IPv6
//! (`turn-load --family 6`), and brief runs of the micro-benchmark and the scale benchmark.
//!
//! Needs root and coturn (`scripts/test.sh` installs it); skips with a message otherwise.

use std::path::PathBuf;
use std::time::Duration;

use turn_bpf_testkit::baseline::{self, AttachedForwarder};
use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::load::{self, LoadConfig, LoadReport, PathMode};

fn config(net: &Lab) -> LoadConfig {
    config_family(net, load::Family::V4)
}

fn config_family(net: &Lab, family: load::Family) -> LoadConfig {
    let mut cfg = LoadConfig::for_lab_family(net, family);
    cfg.allocations = 4;
    cfg.rate = Some(2_000);
    cfg.duration = Duration::from_secs(2);
    cfg
}

/// At least 95% of what was sent came back, nothing foreign, nothing twice, RTTs measured.
fn assert_delivered(what: &str, r: &LoadReport) {
    let rt = &r.round_trip;
    assert!(
        rt.sent > 1000,
        "{what}: sent only {}\n{}",
        rt.sent,
        r.render()
    );
    assert!(
        rt.arrivals.unique * 100 >= rt.sent * 95,
        "{what}: {} of {} came back\n{}",
        rt.arrivals.unique,
        rt.sent,
        r.render()
    );
    assert!(
        r.c2p.arrivals.unique * 100 >= r.c2p.sent * 95,
        "{what}: client->peer {} of {}\n{}",
        r.c2p.arrivals.unique,
        r.c2p.sent,
        r.render()
    );
    assert_eq!(
        rt.arrivals.duplicates,
        0,
        "{what}: duplicates\n{}",
        r.render()
    );
    assert_eq!(r.foreign, 0, "{what}: foreign datagrams\n{}", r.render());
    assert_eq!(
        r.rtt.samples, rt.arrivals.unique,
        "{what}: one RTT per round trip"
    );
    assert!(
        r.rtt.p50_us > 0.0 && r.rtt.p50_us <= r.rtt.p99_us,
        "{what}: RTTs\n{}",
        r.render()
    );
    assert!(
        r.cpu.wall_s > 1.0 && r.cpu.run_s > 0.0,
        "{what}: CPU accounting"
    );
}

#[test]
fn generator_through_offload_coturn_and_forwarder() {
    if let Some(why) = lab::skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let lab = Lab::up("tbb-smoke", &[]).expect("lab up");
    let net = Lab::existing(lab.name()).expect("the lab's namespaces");
    assert!(net.turnserver_pid().is_some(), "coturn pid");

    // With the agent attached: the agent relays (almost) everything in XDP.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_turn-bpf"));
    let agent = load::start_agent(
        &bin,
        &lab.ns(Host::Srv),
        &["--enable-forwarding", lab::IFACE, lab::RELAY_IFACE],
    )
    .expect("starting the agent");
    let mut cfg = config(&net);
    cfg.agent_pid = Some(agent.pid());
    let r = load::run(&cfg);
    let counters = agent.stop_counters().expect("the agent's counters");
    let r = r.expect("load through the offload");
    eprint!("offload:\n{}agent: {counters:?}\n", r.render());
    assert_delivered("offload", &r);
    let get = |n: &str| counters.get(n).copied().unwrap_or(0);
    assert_eq!(get("LEARN_CHANNEL"), cfg.allocations as u64, "{counters:?}");
    assert!(
        get("RELAYED_TO_PEER") * 100 >= r.c2p.sent * 95,
        "RELAYED_TO_PEER {} of {} sent: not offloaded ({counters:?})",
        get("RELAYED_TO_PEER"),
        r.c2p.sent
    );
    assert!(
        get("RELAYED_TO_CLIENT") * 100 >= r.p2c.sent * 95,
        "RELAYED_TO_CLIENT {} of {} echoed: not offloaded ({counters:?})",
        get("RELAYED_TO_CLIENT"),
        r.p2c.sent
    );

    // coturn alone relays it all itself.
    let r = load::run(&config(&net)).expect("load through coturn");
    eprint!("coturn:\n{}", r.render());
    assert_delivered("coturn", &r);
    assert!(
        r.coturn_cpu_pct.unwrap_or(0.0) > 0.0,
        "coturn relayed without CPU?"
    );

    // Plain UDP through the baseline forwarder (the benchmark's floor).
    let fwd = AttachedForwarder::attach(&lab.ns(Host::Srv), &[lab::IFACE, lab::RELAY_IFACE])
        .expect("attaching the baseline forwarder");
    let mut cfg = config(&net);
    cfg.path = PathMode::Plain;
    let r = load::run(&cfg);
    drop(fwd);
    let r = r.expect("load through the forwarder");
    eprint!("forwarder:\n{}", r.render());
    assert_delivered("forwarder", &r);
    let fwd_on = lab
        .exec(
            Host::Srv,
            &["sysctl", "-n", "net.ipv4.conf.turn0.forwarding"],
        )
        .expect("sysctl");
    assert_eq!(
        fwd_on.trim(),
        "0",
        "forwarding restored after the forwarder"
    );
}

/// `turn-load --family 6`: the same load over the lab's IPv6 addresses (IPv6 client, IPv6
/// allocation, IPv6 peer: chan6_to_udp6 / udp6_to_chan6), with the agent attached and through
/// the baseline forwarder. The echo's UDP6 counter proves the datagrams travelled over IPv6; the
/// agent's counters that they were relayed in XDP.
#[test]
fn generator_over_ipv6_through_offload_and_forwarder() {
    if let Some(why) = lab::skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let lab = Lab::up("tbm-load6", &[]).expect("lab up");
    let net = Lab::existing(lab.name()).expect("the lab's namespaces");
    let config6 = || {
        let cfg = config_family(&net, load::Family::V6);
        assert!(
            cfg.server.is_ipv6() && cfg.client_ip.is_ipv6() && cfg.peer_ip.is_ipv6(),
            "IPv6 addresses: {cfg:?}"
        );
        cfg
    };
    let udp = |host| lab.udp_counters(host).expect("UDP counters");

    // With the agent attached: relayed in XDP, over IPv6 end to end.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_turn-bpf"));
    let agent = load::start_agent(
        &bin,
        &lab.ns(Host::Srv),
        &["--enable-forwarding", lab::IFACE, lab::RELAY_IFACE],
    )
    .expect("starting the agent");
    let mut cfg = config6();
    cfg.agent_pid = Some(agent.pid());
    let peer0 = udp(Host::Peer);
    let r = load::run(&cfg);
    let peer1 = udp(Host::Peer);
    let counters = agent.stop_counters().expect("the agent's counters");
    let r = r.expect("IPv6 load through the offload");
    eprint!("offload, IPv6:\n{}agent: {counters:?}\n", r.render());
    assert_delivered("offload IPv6", &r);
    let v6_in = peer1.v6.in_datagrams - peer0.v6.in_datagrams;
    let v4_in = peer1.v4.in_datagrams - peer0.v4.in_datagrams;
    // (UDP GRO: one receive may carry many datagrams, so the counters count receives.)
    assert!(
        v6_in >= 100 && v4_in < 10,
        "the echo's receives: {v6_in} over UDP6, {v4_in} over UDP, for {} datagrams delivered",
        r.c2p.arrivals.unique
    );
    let get = |n: &str| counters.get(n).copied().unwrap_or(0);
    assert_eq!(get("LEARN_CHANNEL"), cfg.allocations as u64, "{counters:?}");
    assert!(
        get("RELAYED_TO_PEER") * 100 >= r.c2p.sent * 95,
        "RELAYED_TO_PEER {} of {} sent: not offloaded ({counters:?})",
        get("RELAYED_TO_PEER"),
        r.c2p.sent
    );
    assert!(
        get("RELAYED_TO_CLIENT") * 100 >= r.p2c.sent * 95,
        "RELAYED_TO_CLIENT {} of {} echoed: not offloaded ({counters:?})",
        get("RELAYED_TO_CLIENT"),
        r.p2c.sent
    );

    // Plain UDP over IPv6 through the baseline forwarder's IPv6 path.
    let fwd = AttachedForwarder::attach_families(
        &lab.ns(Host::Srv),
        &[lab::IFACE, lab::RELAY_IFACE],
        true,
    )
    .expect("attaching the baseline forwarder");
    let mut cfg = config6();
    cfg.path = PathMode::Plain;
    let peer0 = udp(Host::Peer);
    let r = load::run(&cfg);
    let peer1 = udp(Host::Peer);
    drop(fwd);
    let r = r.expect("IPv6 load through the forwarder");
    eprint!("forwarder, IPv6:\n{}", r.render());
    assert_delivered("forwarder IPv6", &r);
    assert!(
        peer1.v6.in_datagrams - peer0.v6.in_datagrams >= 100,
        "the echo's UDP6 counter did not move with the deliveries"
    );
    for key in [
        "net.ipv6.conf.all.forwarding",
        "net.ipv6.conf.turn0.forwarding",
        "net.ipv4.conf.turn0.forwarding",
    ] {
        let v = lab.exec(Host::Srv, &["sysctl", "-n", key]).expect("sysctl");
        assert_eq!(v.trim(), "0", "{key} restored after the forwarder");
    }
}

/// The micro-benchmark, briefly: every row of the case table that is not pending reports a time,
/// every relay path a ratio to its output family's baseline, under the keys bench.sh prints.
/// (run_micro itself fails when a run leaves its path: the verdict of every run and the path's
/// counter are checked.)
#[test]
fn micro_benchmark_reports_every_path() {
    if !lab::is_root() {
        eprintln!("SKIPPED: needs root (BPF)");
        return;
    }
    let m = baseline::run_micro("tbm-micro-smoke", 200, 3, false).expect("micro-benchmark");
    for row in baseline::CASES {
        let ns = m.get(&format!("{}_ns", row.key));
        match row.pending {
            Some(_) => {
                assert!(ns.is_nan(), "{}: pending, yet a figure", row.key);
                assert!(m.pending.iter().any(|p| p.name == row.key));
            }
            None => assert!(ns.is_finite() && ns > 0.0, "{}: {ns} ns", row.key),
        }
    }
    for (path, vs) in [
        ("chan4_to_udp4", "baseline4"),
        ("udp4_to_chan4", "baseline4"),
        ("chan6_to_udp6", "baseline6"),
        ("udp6_to_chan6", "baseline6"),
        ("chan4_to_udp6", "baseline6"),
        ("udp6_to_chan4", "baseline4"),
        ("chan6_to_udp4", "baseline4"),
        ("udp4_to_chan6", "baseline6"),
    ] {
        let c = m.cases.iter().find(|c| c.name == path).expect(path);
        assert_eq!(
            c.vs.as_deref(),
            Some(vs),
            "{path}: its output family's baseline"
        );
        assert_eq!(c.trial_ns.len(), 3);
        let (r, lo, hi) = (
            m.get(&format!("{path}_ratio")),
            m.get(&format!("{path}_ratio_p10")),
            m.get(&format!("{path}_ratio_p90")),
        );
        assert!(r.is_finite() && lo <= r && r <= hi, "{path}: {lo} {r} {hi}");
        assert!(m.get(&format!("{path}_net_ratio")).is_finite());
    }
    assert_eq!(m.get("cli2rem_ns"), m.get("chan4_to_udp4_ns"));
    assert_eq!(m.get("rem2cli_ns"), m.get("udp4_to_chan4_ns"));
    assert_eq!(m.get("baseline_ns"), m.get("baseline4_ns"));
    // The kernel times the relay paths above the empty program's floor.
    assert!(m.get("chan4_to_udp4_ns") > m.get("stats_floor_ns"));
    eprintln!(
        "tail-called programs' time accounted to them on this kernel: {}",
        m.tail_call_accounted
    );
}

/// The scale benchmark, briefly: two levels and the churn, every figure reported, and both
/// lookup floors beside the fast path. (run_scale itself fails when a run leaves its path: every
/// run must redirect, the fast path's `RELAYED_TO_PEER` move once per run, each floor's output
/// be the relayed frame with its checksums right, and every churn grant commit.)
#[test]
fn scale_benchmark_reports_every_level_and_both_floors() {
    if !lab::is_root() {
        eprintln!("SKIPPED: needs root (BPF)");
        return;
    }
    use turn_bpf_testkit::scale;
    let r = scale::run_scale("tbm-scale-smoke", &[1, 300], 600, 2, true, false)
        .expect("scale benchmark");
    for level in ["1", "300"] {
        let ns = r.ns_per_pkt[level];
        assert!(ns.is_finite() && ns > 0.0, "{level}: {ns} ns");
        for name in ["hash", "slots"] {
            let f = &r.floors[name];
            let fl = f.ns_per_pkt[level];
            assert!(
                fl.is_finite() && fl > 0.0,
                "{name} floor at {level}: {fl} ns"
            );
            assert!(f.ratio_to_1[level].is_finite());
            assert!(f.fast_path_above_ns[level].is_finite());
        }
    }
    assert_eq!(r.floors["hash"].ratio_to_1["1"], 1.0);
    assert!(r.churn_ns_per_pkt.is_finite() && r.churn_ns_per_pkt > 0.0);
    assert_eq!(r.goals.len(), 2, "{:?}", r.goals);
    assert!(r.map_memory_bytes > 0);
}
