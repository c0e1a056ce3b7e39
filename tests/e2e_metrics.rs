//! `--prometheus` with a real Prometheus (Debian's) scraping the agent every second in the
//! server namespace: after N datagrams each way through a channel, Prometheus's own HTTP API
//! gives the agent's counters (read from its stats map) and the bytes sent. The page passes
//! `promtool check metrics`; other paths are 404; a taken port is refused before anything is
//! attached.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use turn_bpf_testkit::agent::AgentProc;
use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::live_counters::LiveCounters;
use turn_bpf_testkit::prometheus::{self, http_get, Prometheus};

use common::*;

const CHANNEL: u16 = 0x4000;
const WARM_UP: usize = 4;
const N: usize = 500;
const METRICS: &str = "127.0.0.1:9642";
const PROM_API: &str = "127.0.0.1:9090";
const SCRAPED: Duration = Duration::from_secs(20);

/// `promtool check metrics` on `page`: (success, what it said).
fn promtool(page: &str) -> (bool, String) {
    let Some(bin) = lab::find_tool("promtool") else {
        return (false, "promtool is not installed".into());
    };
    let mut child = Command::new(bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

#[test]
fn prometheus_scrapes_the_agents_counters_and_bytes() {
    skip_unless_lab!();
    if prometheus::binary().is_none() {
        eprintln!("skipped: prometheus is not installed");
        return;
    }
    let lab = Lab::up("tbw-pm1", &[]).unwrap();
    let srv = lab.ns(Host::Srv);

    // A taken port: refused with one line before anything is attached.
    let taken = lab::in_ns(&srv, || {
        std::net::TcpListener::bind("127.0.0.1:9643").unwrap()
    });
    let refused = AgentProc::start(
        &agent_bin(),
        &srv,
        &[
            "--enable-forwarding",
            "--prometheus",
            "127.0.0.1:9643",
            "turn0",
            "relay0",
        ],
        &log_path("tbw-pm1-taken"),
    )
    .unwrap()
    .wait_exit(Duration::from_secs(20))
    .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", refused.output);
    assert!(
        refused
            .output
            .contains("turn-bpf: error: listening for Prometheus on 127.0.0.1:9643"),
        "{}",
        refused.output
    );
    assert_clean(&lab);
    drop(taken);

    let echo = Echo::start(&lab, 7000);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &srv,
        &[
            "--enable-forwarding",
            "--prometheus",
            METRICS,
            "turn0",
            "relay0",
        ],
        &log_path("tbw-pm1"),
    )
    .unwrap();
    assert!(agent.output().contains(&format!(
        "serving Prometheus metrics on http://{METRICS}/metrics"
    )));
    let live = LiveCounters::of_pid(agent.pid()).unwrap();

    // The page itself: the text format as promtool reads it, and 404 elsewhere.
    let (code, page) = http_get(&srv, METRICS.parse().unwrap(), "/metrics").unwrap();
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains(&format!(
            "turnbpf_build_info{{version=\"{}\",server=\"coturn\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{page}"
    );
    let (ok, said) = promtool(&page);
    assert!(ok, "promtool check metrics:\n{said}\n{page}");
    let (code, _) = http_get(&srv, METRICS.parse().unwrap(), "/").unwrap();
    assert_eq!(code, 404);

    let prom = Prometheus::start(
        &srv,
        METRICS.parse().unwrap(),
        PROM_API.parse().unwrap(),
        Duration::from_secs(180),
    )
    .unwrap();

    let mut c = client(&lab);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    // The first datagram or two may go to coturn while the neighbours are resolved.
    assert_eq!(exchange(&c, CHANNEL, 0, WARM_UP), WARM_UP);
    let before = live.read().unwrap();
    let q_packets =
        |dir: &str| format!("sum(turnbpf_relayed_packets_total{{direction=\"{dir}\"}})");
    let q_bytes = |dir: &str| format!("sum(turnbpf_relayed_bytes_total{{direction=\"{dir}\"}})");
    let scraped = |q: &str, want: u64| {
        let got = prom.wait_for(q, want as f64, SCRAPED).unwrap();
        assert_eq!(
            got,
            Some(want as f64),
            "{q}\nprometheus log:\n{}",
            prom.log()
        );
    };
    scraped(&q_packets("to_peer"), before.get("RELAYED_TO_PEER"));
    scraped(&q_packets("to_client"), before.get("RELAYED_TO_CLIENT"));
    let bytes0 = |dir: &str| prom.query(&q_bytes(dir)).unwrap().unwrap() as u64;
    let (peer0, client0) = (bytes0("to_peer"), bytes0("to_client"));

    assert_eq!(exchange(&c, CHANNEL, WARM_UP, N), N);
    let after = live.read().unwrap();
    let sent: u64 = (WARM_UP..WARM_UP + N).map(|i| size_of(i) as u64).sum();
    // Every datagram after the warm-up went through the fast path, both ways.
    assert_eq!(
        after.get("RELAYED_TO_PEER") - before.get("RELAYED_TO_PEER"),
        N as u64
    );
    assert_eq!(
        after.get("RELAYED_TO_CLIENT") - before.get("RELAYED_TO_CLIENT"),
        N as u64
    );

    // Prometheus has what the stats map has, and the bytes that were sent.
    scraped(&q_packets("to_peer"), after.get("RELAYED_TO_PEER"));
    scraped(&q_packets("to_client"), after.get("RELAYED_TO_CLIENT"));
    scraped(
        "sum(turnbpf_relayed_packets_total)",
        after.get("RELAYED_TO_PEER") + after.get("RELAYED_TO_CLIENT"),
    );
    scraped(
        "turnbpf_relayed_packets_total{direction=\"to_peer\",in_family=\"ipv4\",out_family=\"ipv4\"}",
        after.get("RELAYED_TO_PEER"),
    );
    scraped(&q_bytes("to_peer"), peer0 + sent);
    scraped(&q_bytes("to_client"), client0 + sent);
    scraped(
        "turnbpf_events_total{counter=\"RELAYED_TO_PEER\"}",
        after.get("RELAYED_TO_PEER"),
    );
    scraped("turnbpf_bindings_learned_total{kind=\"channel\"}", 1);
    scraped("turnbpf_bindings_learned_total{kind=\"allocation\"}", 1);
    scraped("turnbpf_table_entries{table=\"allocs\"}", 1);
    scraped("turnbpf_table_entries{table=\"chans\"}", 1);
    scraped("turnbpf_redirect_dropped_total", after.get("XMIT_DROPPED"));
    scraped(
        "turnbpf_passed_packets_total{reason=\"stun\"}",
        after.get("PASS_STUN"),
    );
    assert!(
        prom.query("turnbpf_start_time_seconds").unwrap().unwrap() > 1.6e9,
        "a Unix time"
    );

    drop(prom);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_clean(&lab);
    echo.stop();
}
