//! Smoke test of the load generator (`turn_bpf_testkit::load`) through a lab with the real coturn: a few
//! seconds each with the agent attached, with coturn alone, and through the baseline forwarder.
//! It asserts delivery and that the agent relayed the traffic, never speed.
//!
//! Needs root and coturn (`scripts/test.sh` installs it); skips with a message otherwise.

use std::path::PathBuf;
use std::time::Duration;

use turn_bpf_testkit::baseline::AttachedForwarder;
use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::load::{self, LoadConfig, LoadReport, PathMode};

fn config(net: &Lab) -> LoadConfig {
    let mut cfg = LoadConfig::for_lab(net);
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
