//! The `relayed` map (packets and data bytes per relay path, read by `status` and `/metrics`)
//! moves exactly with the traffic: every relay path of the micro-benchmark's case table (the
//! eight family pairs and the hairpin) runs through the loaded `xdp_turn` with
//! BPF_PROG_TEST_RUN, and only its own slot moves, by the datagrams and their data bytes, in step
//! with its counter in `stats`. A passed datagram moves no slot.

use turn_bpf::snapshot::{Direction, PathCount, Snapshot, Sources};
use turn_bpf_testkit::baseline::{Fam, Fixture, Kind, CASES};
use turn_bpf_testkit::lab;
use turn_bpf_testkit::progtest;

const RUNS: u64 = 3;

/// The slot a case must move: (direction, input is IPv6, output is IPv6).
fn slot(key: &str, kind: Kind) -> Option<(Direction, bool, bool)> {
    let v6 = |f: Fam| f == Fam::V6;
    match kind {
        Kind::ToPeer(c, p) => Some((Direction::ToPeer, v6(c), v6(p))),
        Kind::ToClient(p, c) => Some((Direction::ToClient, v6(p), v6(c))),
        // the hairpin row: IPv4 clients through IPv4 relayed addresses
        Kind::Custom(_) if key == "hairpin" => Some((Direction::Hairpin, false, false)),
        _ => None,
    }
}

fn find(s: &Snapshot, d: Direction, in_v6: bool, out_v6: bool) -> PathCount {
    *s.relayed
        .iter()
        .find(|p| p.direction == d && p.in_v6 == in_v6 && p.out_v6 == out_v6)
        .expect("every path has a slot")
}

#[test]
fn every_path_moves_its_own_slot_by_packets_and_bytes() {
    if !lab::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let fx = Fixture::new("tbw-relayed").unwrap();
    let _in = fx.net.enter().unwrap();
    let sources = Sources::of_skel(&fx.turn.skel.maps).unwrap();
    let prog = &fx.turn.skel.progs.xdp_turn;
    let bytes = fx.data.len() as u64;
    let mut paths = 0;
    for row in CASES.iter().filter(|r| r.pending.is_none()) {
        let Some((dir, in_v6, out_v6)) = slot(row.key, row.kind) else {
            continue;
        };
        let inp = fx.input(row.kind).unwrap();
        let before = sources.snapshot().unwrap();
        for _ in 0..RUNS {
            let (r, _) = progtest::xdp_test_run(prog, &inp.frame, inp.ingress, 1).unwrap();
            assert_eq!(r.verdict, progtest::XDP_REDIRECT, "{}", row.key);
        }
        let after = sources.snapshot().unwrap();
        let counter = inp.counter.expect("a relay path has a counter");
        assert_eq!(
            after.counters.since(&before.counters).get(counter),
            RUNS,
            "{}: {counter}",
            row.key
        );
        for (b, a) in before.relayed.iter().zip(&after.relayed) {
            let (dp, db) = (a.packets - b.packets, a.bytes - b.bytes);
            if (a.direction, a.in_v6, a.out_v6) == (dir, in_v6, out_v6) {
                assert_eq!((dp, db), (RUNS, RUNS * bytes), "{}", row.key);
                if dir != Direction::Hairpin {
                    assert_eq!(a.path_name(), row.key);
                }
            } else {
                assert_eq!((dp, db), (0, 0), "{}: {} moved", row.key, a.path_name());
            }
        }
        paths += 1;
    }
    assert_eq!(paths, 9, "eight family pairs and the hairpin");

    // A datagram that is passed moves nothing.
    let unrelated = fx.input(Kind::Unrelated).unwrap();
    let before = sources.snapshot().unwrap();
    let (r, _) = progtest::xdp_test_run(prog, &unrelated.frame, unrelated.ingress, 1).unwrap();
    assert_eq!(r.verdict, progtest::XDP_PASS);
    let after = sources.snapshot().unwrap();
    assert_eq!(before.relayed, after.relayed);
    assert_eq!(
        after.counters.since(&before.counters).get("PASS_NOT_OURS"),
        1
    );
    // The whole table, as the status prints it: what ran, and nothing else.
    let total = find(&after, Direction::ToPeer, false, false);
    assert_eq!(total.packets, RUNS);
}
