//! Per-binding counters (`--binding-counters`, the `binding_counts` map): bindings learned from
//! real ChannelBind exchanges through the loaded `tc_snoop`, datagrams relayed each way through
//! the loaded `xdp_turn` with BPF_PROG_TEST_RUN on alternating CPUs, then read back the way
//! `turn-bpf status --bindings` reads them (summed over CPUs). Each binding's counters move by
//! exactly its own datagrams and data bytes, each way; another binding's stay at zero; a refresh
//! keeps them; a passed datagram moves nothing; and with the option off nothing is counted and
//! the status says so. Every relay path of the micro-benchmark's case table (eight family pairs
//! and the hairpin) counts in its own binding and direction only.

use std::net::SocketAddrV4;
use std::time::Duration;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use turn_bpf::maps::now_ns;
use turn_bpf::snapshot::Sources;
use turn_bpf::status::{read_bindings, ChanLine, DirLine};
use turn_bpf_testkit::baseline::{binding, Fixture, Kind, CASES};
use turn_bpf_testkit::lab::is_root;
use turn_bpf_testkit::progtest::{Config, FibNet, Programs, CLIENT, PEER, RELAY};

const C1: SocketAddrV4 = SocketAddrV4::new(CLIENT, 40000);
const C2: SocketAddrV4 = SocketAddrV4::new(CLIENT, 40001);
const R1: SocketAddrV4 = SocketAddrV4::new(RELAY, 50000);
const R2: SocketAddrV4 = SocketAddrV4::new(RELAY, 50001);
const P1: SocketAddrV4 = SocketAddrV4::new(PEER, 6000);
const P2: SocketAddrV4 = SocketAddrV4::new(PEER, 6001);

/// Datagrams each way.
const K: usize = 7;

/// The i-th datagram's data: sizes differ, so that the byte count is not packets × a constant.
fn data(i: usize, fill: u8) -> Vec<u8> {
    vec![fill; 10 + 37 * i]
}

/// The CPUs this test may run on (the runs alternate between them).
fn cpus() -> Vec<usize> {
    let set = sched_getaffinity(Pid::from_raw(0)).unwrap();
    (0..CpuSet::count())
        .filter(|c| set.is_set(*c).unwrap_or(false))
        .collect()
}

fn on_cpu(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).unwrap();
    sched_setaffinity(Pid::from_raw(0), &set).unwrap();
}

fn chan_line(p: &Programs, channel: u16) -> ChanLine {
    let sources = Sources::of_skel(&p.skel.maps).unwrap();
    let (_, chans) = read_bindings(&sources, now_ns()).unwrap();
    chans
        .into_iter()
        .find(|c| c.channel == channel)
        .unwrap_or_else(|| panic!("channel {channel:#x} is not listed"))
}

/// The per-CPU values of one binding's entry: how many CPUs counted something.
fn cpus_counted(p: &Programs, id: u64) -> usize {
    use libbpf_rs::{MapCore, MapFlags};
    p.skel
        .maps
        .binding_counts
        .lookup_percpu(&id.to_ne_bytes(), MapFlags::ANY)
        .unwrap()
        .unwrap_or_default()
        .iter()
        .filter(|v| v.iter().any(|b| *b != 0))
        .count()
}

#[test]
fn each_binding_counts_its_own_datagrams_and_bytes_each_way() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let all_cpus = cpus();
    let net = FibNet::new("tbt-ctr-pt").unwrap();
    let _in = net.enter().unwrap();
    let cfg = Config {
        binding_counters: true,
        ..Config::default()
    };
    let p = Programs::load_for(&net, &cfg).unwrap();
    p.learn_allocation(&net, C1, R1, 600).unwrap();
    p.learn_channel(&net, C1, P1, 0x4001).unwrap();
    p.learn_allocation(&net, C2, R2, 600).unwrap();
    p.learn_channel(&net, C2, P2, 0x4002).unwrap();

    // learned, nothing relayed yet: zeros and "never", not "counters off"
    let fresh = chan_line(&p, 0x4001);
    let never = DirLine {
        packets: 0,
        bytes: 0,
        last_ago_ms: None,
    };
    assert_eq!(fresh.counts, Some((never, never)));

    let started = now_ns();
    let (mut to_peer_bytes, mut to_client_bytes) = (0u64, 0u64);
    for i in 0..K {
        on_cpu(all_cpus[i % all_cpus.len()]);
        let up = data(i, 0xa5);
        p.expect_chan4_to_udp4(&net, C1, 0x4001, R1, P1, &up)
            .unwrap();
        to_peer_bytes += up.len() as u64;
        let down = data(K - i, 0x5a);
        p.expect_udp4_to_chan4(&net, P1, R1, C1, 0x4001, &down)
            .unwrap();
        to_client_bytes += down.len() as u64;
    }
    // a datagram passed to the server (an unbound channel number) counts nowhere
    let c0 = p.counters();
    let stray = turn_bpf_testkit::progtest::Udp4Frame::new(
        turn_bpf_testkit::progtest::CLIENT_MAC,
        turn_bpf_testkit::progtest::TURN0_MAC,
        C1,
        turn_bpf_testkit::progtest::SERVER_EP,
        &turn_bpf_testkit::progtest::channel_data(0x4003, b"unbound", 0, 0),
    );
    p.expect_pass(&stray.build(), net.turn0, "PASS_NO_CHANNEL")
        .unwrap();
    assert_eq!(p.counters().since(&c0).get("PASS_NO_CHANNEL"), 1);

    let a = chan_line(&p, 0x4001);
    let (up, down) = a.counts.expect("counters are on");
    assert_eq!(
        (up.packets, up.bytes),
        (K as u64, to_peer_bytes),
        "to peer: every datagram and its data bytes"
    );
    assert_eq!(
        (down.packets, down.bytes),
        (K as u64, to_client_bytes),
        "to client: every datagram and its data bytes"
    );
    // the relayed map counts the same data bytes
    let snap = Sources::of_skel(&p.skel.maps).unwrap().snapshot().unwrap();
    assert_eq!(
        snap.relayed_total(),
        (2 * K as u64, to_peer_bytes + to_client_bytes)
    );
    // last packet: set, within this test's run (the coarse clock may be a tick behind)
    let elapsed_ms = (now_ns() - started) / 1_000_000;
    for (what, d) in [("to peer", up), ("to client", down)] {
        let ago = d
            .last_ago_ms
            .unwrap_or_else(|| panic!("{what}: last packet not set"));
        assert!(
            ago <= elapsed_ms + 20,
            "{what}: last packet {ago} ms ago, the test began {elapsed_ms} ms ago"
        );
    }
    if all_cpus.len() > 1 {
        let id = p
            .channel(C1, turn_bpf_testkit::progtest::SERVER_EP, 0x4001)
            .unwrap()
            .id;
        assert!(
            cpus_counted(&p, id) > 1,
            "the runs alternated CPUs: more than one CPU's slot should hold counts"
        );
    }

    // the other binding: untouched
    let b = chan_line(&p, 0x4002);
    assert_eq!(b.counts, Some((never, never)), "binding 0x4002 moved");

    // a refresh (the same ChannelBind again) keeps the binding's id and so its counters
    let id_before = p
        .channel(C1, turn_bpf_testkit::progtest::SERVER_EP, 0x4001)
        .unwrap()
        .id;
    p.learn_channel(&net, C1, P1, 0x4001).unwrap();
    let id_after = p
        .channel(C1, turn_bpf_testkit::progtest::SERVER_EP, 0x4001)
        .unwrap()
        .id;
    assert_ne!(id_before, 0);
    assert_eq!(id_before, id_after, "a refresh is the same binding");
    p.expect_chan4_to_udp4(&net, C1, 0x4001, R1, P1, b"after the refresh")
        .unwrap();
    let (up2, down2) = chan_line(&p, 0x4001).counts.unwrap();
    assert_eq!(up2.packets, K as u64 + 1);
    assert_eq!(up2.bytes, to_peer_bytes + b"after the refresh".len() as u64);
    assert_eq!((down2.packets, down2.bytes), (down.packets, down.bytes));
    // both halves of one binding carry the same id (the peer side counts to-client)
    let peer_side = p.peer_channel(P1, R1).unwrap();
    assert_eq!(peer_side.id, id_after);
    assert_ne!(
        p.channel(C2, turn_bpf_testkit::progtest::SERVER_EP, 0x4002)
            .unwrap()
            .id,
        id_after,
        "two bindings, two ids"
    );
    std::thread::sleep(Duration::from_millis(1));
}

#[test]
fn off_by_default_counts_nothing_and_says_so() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let net = FibNet::new("tbt-ctr-off").unwrap();
    let _in = net.enter().unwrap();
    let p = Programs::load_for(&net, &Config::default()).unwrap();
    p.learn_allocation(&net, C1, R1, 600).unwrap();
    p.learn_channel(&net, C1, P1, 0x4001).unwrap();
    for i in 0..K {
        p.expect_chan4_to_udp4(&net, C1, 0x4001, R1, P1, &data(i, 1))
            .unwrap();
        p.expect_udp4_to_chan4(&net, P1, R1, C1, 0x4001, &data(i, 2))
            .unwrap();
    }
    // positive control: the datagrams were relayed and counted per path
    let snap = Sources::of_skel(&p.skel.maps).unwrap().snapshot().unwrap();
    assert_eq!(snap.relayed_total().0, 2 * K as u64);
    // nothing per binding: the map is empty, and the status line has no counts
    assert_eq!(
        libbpf_rs::MapCore::keys(&p.skel.maps.binding_counts).count(),
        0
    );
    assert_eq!(chan_line(&p, 0x4001).counts, None);
}

/// One channel's counts: (channel, to peer (packets, bytes), to client (packets, bytes)).
type ChanCounts = (u16, (u64, u64), (u64, u64));

/// Every channel's counts.
fn all_counts(sources: &Sources) -> Vec<ChanCounts> {
    let (_, chans) = read_bindings(sources, now_ns()).unwrap();
    chans
        .iter()
        .map(|c| {
            let (up, down) = c.counts.expect("counters are on");
            (
                c.channel,
                (up.packets, up.bytes),
                (down.packets, down.bytes),
            )
        })
        .collect()
}

#[test]
fn every_path_counts_in_its_own_binding_and_direction() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    const RUNS: u64 = 3;
    let fx = Fixture::with_counters("tbt-ctr-paths", true).unwrap();
    let _in = fx.net.enter().unwrap();
    let prog = &fx.turn.skel.progs.xdp_turn;
    let bytes = fx.data.len() as u64;
    let mut paths = 0;
    for row in CASES.iter().filter(|r| r.pending.is_none()) {
        // (channel, direction 0 = to peer / 1 = to client) that must move
        let moves: Vec<(u16, usize)> = match row.kind {
            Kind::ToPeer(c, p) => vec![(binding(c, p).chan, 0)],
            Kind::ToClient(p, c) => vec![(binding(c, p).chan, 1)],
            // client A (0x4200) to client B (0x4300) through their relayed addresses: A's
            // to-peer half and B's to-client half
            Kind::Custom(_) if row.key == "hairpin" => vec![(0x4200, 0), (0x4300, 1)],
            _ => continue,
        };
        let inp = fx.input(row.kind).unwrap();
        let sources = Sources::of_skel(&fx.turn.skel.maps).unwrap();
        let before = all_counts(&sources);
        for _ in 0..RUNS {
            let (r, _) =
                turn_bpf_testkit::progtest::xdp_test_run(prog, &inp.frame, inp.ingress, 1).unwrap();
            assert_eq!(
                r.verdict,
                turn_bpf_testkit::progtest::XDP_REDIRECT,
                "{}",
                row.key
            );
        }
        let after = all_counts(&sources);
        for (chan, up, down) in &after {
            let (_, up0, down0) =
                before
                    .iter()
                    .find(|b| b.0 == *chan)
                    .copied()
                    .unwrap_or((*chan, (0, 0), (0, 0)));
            for (dir, now, was) in [(0, up, up0), (1, down, down0)] {
                let d = (now.0 - was.0, now.1 - was.1);
                if moves.contains(&(*chan, dir)) {
                    assert_eq!(d, (RUNS, RUNS * bytes), "{}: {chan:#x} dir {dir}", row.key);
                } else {
                    assert_eq!(d, (0, 0), "{}: {chan:#x} dir {dir} moved", row.key);
                }
            }
        }
        for (chan, _) in &moves {
            assert!(
                after.iter().any(|a| a.0 == *chan),
                "{}: {chan:#x} listed",
                row.key
            );
        }
        paths += 1;
    }
    assert_eq!(paths, 9, "eight family pairs and the hairpin");
}
