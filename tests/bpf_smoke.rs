//! Smoke test of the BPF_PROG_TEST_RUN harness: one packet each way through an installed channel.
use std::net::SocketAddrV4;
use turn_bpf_testkit::progtest::*;

#[test]
fn one_packet_each_way() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let net = FibNet::new("tbt-smoke").unwrap();
    let _in = net.enter().unwrap();
    let p = Programs::load_for(&net, &Config::default()).unwrap();
    let client = SocketAddrV4::new(CLIENT, 40000);
    let server = SocketAddrV4::new(SERVER, TURN_PORT);
    let relay = SocketAddrV4::new(RELAY, 50000);
    let peer = SocketAddrV4::new(PEER, 6000);
    p.install_channel(client, relay, peer, 0x4000, 60).unwrap();

    let data = b"hello, peer";
    let frame = udp4(
        CLIENT_MAC,
        TURN0_MAC,
        client,
        server,
        64,
        &channel_data(0x4000, data, 1, 0),
    );
    let r = p.xdp(&frame, net.turn0).unwrap();
    assert_eq!(
        r.verdict,
        XDP_REDIRECT,
        "counters: {}",
        p.counters().render()
    );
    let want = udp4(RELAY0_MAC, PEER_MAC, relay, peer, 63, data);
    assert_eq!(verify_udp4(&r.out).unwrap(), data);
    // identical but for the IP ID / checksum which etherparse sets to 0 / computes
    assert_eq!(r.out.len(), want.len());

    let back = b"hi client";
    let frame = udp4(PEER_MAC, RELAY0_MAC, peer, relay, 64, back);
    let r = p.xdp(&frame, net.relay0).unwrap();
    assert_eq!(
        r.verdict,
        XDP_REDIRECT,
        "counters: {}",
        p.counters().render()
    );
    assert_eq!(
        verify_udp4(&r.out).unwrap(),
        channel_data(0x4000, back, 0, 0)
    );
    let c = p.counters();
    assert_eq!(c.get("RELAYED_TO_PEER"), 1);
    assert_eq!(c.get("RELAYED_TO_CLIENT"), 1);
}
