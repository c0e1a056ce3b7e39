//! Learning through the real programs: a client's request frame into XDP on turn0, the server's
//! response frame into TC egress, then the map contents, the counters, and (where something was
//! committed) ChannelData relayed both ways. Messages are real TURN messages from the
//! `turn_client` builders, signed with MESSAGE-INTEGRITY like coturn's.
//!
//! Each row is a scenario run on freshly loaded programs; every step checks its own counter
//! deltas (all counters not named stay 0). Every request must leave XDP unmodified with
//! XDP_PASS and every response TC unmodified with TC_ACT_UNSPEC (`client_sends`/`server_sends`).
//!
//! Run: `cargo test --release --test bpf_learning -- --test-threads=1` (root; skipped otherwise).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use anyhow::{anyhow, ensure, Context, Result};
use libbpf_rs::{MapCore, MapFlags};
use turn_bpf::maps::{self, bytes_of};
use turn_bpf::skel::types;
use turn_bpf_testkit::progtest::*;
use turn_bpf_testkit::turn_client::{
    build_error_response, build_message, build_request, new_txid, Attr, Class, Family, TxId,
    ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH,
};

const C1: SocketAddrV4 = SocketAddrV4::new(CLIENT, 40000);
const C2: SocketAddrV4 = SocketAddrV4::new(CLIENT, 40001);
const R1: SocketAddrV4 = SocketAddrV4::new(RELAY, 50000);
const R2: SocketAddrV4 = SocketAddrV4::new(RELAY, 50002);
const P1: SocketAddrV4 = SocketAddrV4::new(PEER, 6000);
const P2: SocketAddrV4 = SocketAddrV4::new(PEER, 6001);
/// An address on no interface of the host: coturn's --external-ip public address.
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
const RELAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);

struct Ctx<'a> {
    p: Programs,
    net: &'a FibNet,
}

// ------------------------------------------------------------------------------------------
// Messages (requests signed; responses signed as coturn signs them).

fn req(method: u16, txid: TxId, attrs: &[Attr]) -> Vec<u8> {
    build_request(method, txid, attrs, Some(&test_auth()))
}

fn ok(method: u16, txid: TxId, attrs: &[Attr]) -> Vec<u8> {
    build_message(Class::Success, method, txid, attrs, Some(&test_auth()))
}

fn alloc_req(txid: TxId, lifetime: u32) -> Vec<u8> {
    req(
        ALLOCATE,
        txid,
        &[Attr::RequestedTransport(17), Attr::Lifetime(lifetime)],
    )
}

fn alloc_ok(txid: TxId, client: SocketAddrV4, relay: SocketAddr, lifetime: u32) -> Vec<u8> {
    ok(
        ALLOCATE,
        txid,
        &[
            Attr::XorRelayedAddress(relay),
            Attr::Lifetime(lifetime),
            Attr::XorMappedAddress(client.into()),
        ],
    )
}

fn bind_req(txid: TxId, chan: u16, peer: SocketAddr) -> Vec<u8> {
    req(
        CHANNEL_BIND,
        txid,
        &[Attr::ChannelNumber(chan), Attr::XorPeerAddress(peer)],
    )
}

fn perm_req(txid: TxId, peers: &[SocketAddr]) -> Vec<u8> {
    let attrs: Vec<Attr> = peers.iter().map(|p| Attr::XorPeerAddress(*p)).collect();
    req(CREATE_PERMISSION, txid, &attrs)
}

fn refresh_req(txid: TxId, lifetime: u32) -> Vec<u8> {
    req(REFRESH, txid, &[Attr::Lifetime(lifetime)])
}

fn refresh_ok(txid: TxId, lifetime: u32) -> Vec<u8> {
    ok(REFRESH, txid, &[Attr::Lifetime(lifetime)])
}

// ------------------------------------------------------------------------------------------
// Steps with counter checks.

/// Run `f`; the counters must move by exactly `want`.
fn step<T>(c: &Ctx, want: &[(&str, u64)], what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let c0 = c.p.counters();
    let r = f().with_context(|| what.to_string())?;
    let d = c.p.counters().since(&c0);
    expect_delta(&d, want).map_err(|e| anyhow!("{what}: {e}\n{}", d.render()))?;
    Ok(r)
}

impl Ctx<'_> {
    /// A request from `client`: passed, and remembered (PENDING_ADDED) when `recorded`.
    fn request(&self, client: SocketAddrV4, msg: &[u8], recorded: bool) -> Result<()> {
        let want: &[(&str, u64)] = if recorded {
            &[("PASS_STUN", 1), ("PENDING_ADDED", 1)]
        } else {
            &[("PASS_STUN", 1)]
        };
        step(self, want, "request", || {
            self.p.client_sends(self.net, client, msg)
        })
        .map(|_| ())
    }

    /// A response to `client`, with its counter deltas.
    fn response(&self, client: SocketAddrV4, msg: &[u8], want: &[(&str, u64)]) -> Result<()> {
        step(self, want, "response", || self.p.server_sends(client, msg)).map(|_| ())
    }

    fn allocate(&self, client: SocketAddrV4, relay: SocketAddrV4, lifetime: u32) -> Result<()> {
        let t = new_txid();
        self.request(client, &alloc_req(t, lifetime), true)?;
        self.response(
            client,
            &alloc_ok(t, client, relay.into(), lifetime),
            &[("LEARN_ALLOC", 1)],
        )
    }

    fn bind(&self, client: SocketAddrV4, chan: u16, peer: SocketAddrV4) -> Result<()> {
        let t = new_txid();
        self.request(client, &bind_req(t, chan, peer.into()), true)?;
        self.response(client, &ok(CHANNEL_BIND, t, &[]), &[("LEARN_CHANNEL", 1)])
    }

    fn counts(&self) -> MapCounts {
        self.p.map_counts()
    }

    fn nothing_committed(&self) -> Result<()> {
        let m = self.counts();
        ensure!(m.committed() == (0, 0, 0, 0), "something committed: {m}");
        Ok(())
    }

    fn alloc(&self, client: SocketAddrV4) -> Result<types::tb_alloc> {
        self.p
            .allocation(client, SERVER_EP)
            .ok_or_else(|| anyhow!("no allocation for {client}"))
    }

    /// An allocation (lifetime 600 s) and a channel on it, proven to relay both ways.
    fn live_channel(
        &self,
        client: SocketAddrV4,
        chan: u16,
        relay: SocketAddrV4,
        peer: SocketAddrV4,
    ) -> Result<()> {
        self.allocate(client, relay, 600)?;
        self.bind(client, chan, peer)?;
        self.relays_both_ways(client, chan, relay, peer)
    }

    fn relays_both_ways(
        &self,
        client: SocketAddrV4,
        chan: u16,
        relay: SocketAddrV4,
        peer: SocketAddrV4,
    ) -> Result<()> {
        self.p
            .expect_chan4_to_udp4(self.net, client, chan, relay, peer, b"client to peer")
            .context("chan4_to_udp4")?;
        self.p
            .expect_udp4_to_chan4(self.net, peer, relay, client, chan, b"peer to client")
            .context("udp4_to_chan4")
    }

    fn channel_data_passes(&self, client: SocketAddrV4, chan: u16, counter: &str) -> Result<()> {
        let f = to_server(client, &channel_data(chan, b"not offloaded", 0, 0));
        self.p
            .expect_pass(&f, self.net.turn0, counter)
            .context("ChannelData")
    }

    fn peer_data_passes(
        &self,
        peer: SocketAddrV4,
        relay: SocketAddrV4,
        counter: &str,
    ) -> Result<()> {
        let f = udp4(PEER_MAC, RELAY0_MAC, peer, relay, 64, b"not offloaded");
        self.p
            .expect_pass(&f, self.net.relay0, counter)
            .context("peer datagram")
    }
}

/// `deadline` must be `lifetime_s` from (about) now, less the 1 s safety margin.
fn expect_deadline(what: &str, deadline: u64, lifetime_s: u64) -> Result<()> {
    let now = maps::now_ns();
    let want = now + lifetime_s * 1_000_000_000 - 1_000_000_000;
    let slack = 500_000_000; // coarse clock and test run time
    ensure!(
        deadline + slack >= want && deadline <= want + slack,
        "{what} deadline {:.3} s from now, want {:.3} s",
        (deadline as f64 - now as f64) / 1e9,
        (want as f64 - now as f64) / 1e9
    );
    Ok(())
}

fn ep(a: SocketAddrV4) -> types::tb_ep {
    maps::ep(a.into())
}

fn same_ep(a: &types::tb_ep, b: &types::tb_ep) -> bool {
    maps::bytes_of(a) == maps::bytes_of(b)
}

// ------------------------------------------------------------------------------------------
// The scenarios.

fn allocate_commits(c: &Ctx) -> Result<()> {
    let t = new_txid();
    c.request(C1, &alloc_req(t, 1200), true)?;
    ensure!(c.counts().pending == 1, "pending {}", c.counts());
    c.nothing_committed()?;
    c.response(C1, &alloc_ok(t, C1, R1.into(), 1200), &[("LEARN_ALLOC", 1)])?;
    let a = c.alloc(C1)?;
    ensure!(same_ep(&a.relay[0], &ep(R1)), "relay[0] {:?}", a.relay[0]);
    ensure!(a.relay[1].family == 0, "relay[1] {:?}", a.relay[1]);
    expect_deadline("allocation", a.expires_ns, 1200)?;
    ensure!(c.p.relay_port_marked(R1.port()), "relay port not marked");
    // the answered request stays pending (marked answered): a repeated answer must find it
    let m = c.counts();
    ensure!(
        (m.allocs, m.chans, m.peers, m.perms, m.pending) == (1, 0, 0, 0, 1),
        "maps {m}"
    );
    // an allocation alone relays nothing
    c.channel_data_passes(C1, 0x4000, "PASS_NO_CHANNEL")?;
    c.peer_data_passes(P1, R1, "PASS_NO_CHANNEL")
}

/// The allocation a relayed address is indexed under (`relays`), and its ID.
fn indexed(c: &Ctx, relay: SocketAddrV4) -> Option<types::tb_relay> {
    c.p.skel
        .maps
        .relays
        .lookup(maps::bytes_of(&ep(relay)), libbpf_rs::MapFlags::ANY)
        .unwrap()
        .map(|v| maps::from_bytes(&v))
}

/// Every allocation is indexed by its relayed address; one whose address a new allocation of
/// another client takes has ended at the server (it closed the socket before handing the
/// address out again) and ends here too, its channels with it.
fn a_relayed_address_taken_ends_its_allocation(c: &Ctx) -> Result<()> {
    c.live_channel(C1, 0x4000, R1, P1)?;
    let a1 = c.alloc(C1)?;
    let r = indexed(c, R1).context("R1 not indexed")?;
    ensure!(
        same_ep(&r.alloc.client, &ep(C1)) && r.alloc_id == a1.id,
        "index of R1: {r:?}"
    );
    // and it is among the allocations committed last, under its ID
    let slot = (a1.id % turn_bpf::consts::TB_RECENT_ALLOCS) as u32;
    let v =
        c.p.skel
            .maps
            .recent_allocs
            .lookup(&slot.to_ne_bytes(), libbpf_rs::MapFlags::ANY)?
            .context("recent_allocs")?;
    let recent: types::tb_relay = maps::from_bytes(&v);
    ensure!(
        recent.alloc_id == a1.id && same_ep(&recent.alloc.client, &ep(C1)),
        "recent_allocs[{slot}]: {recent:?}"
    );
    c.allocate(C2, R2, 600)?;
    ensure!(c.alloc(C1).is_ok(), "another address ends nothing");
    let t = new_txid();
    let c3 = SocketAddrV4::new(CLIENT, 40002);
    c.request(c3, &alloc_req(t, 600), true)?;
    c.response(
        c3,
        &alloc_ok(t, c3, R1.into(), 600),
        &[("LEARN_ALLOC", 1), ("RELAY_TAKEN", 1)],
    )?;
    ensure!(c.alloc(C1).is_err(), "C1's allocation still live");
    let r = indexed(c, R1).context("R1 not indexed")?;
    ensure!(same_ep(&r.alloc.client, &ep(c3)), "index of R1: {r:?}");
    c.channel_data_passes(C1, 0x4000, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_NO_CHANNEL")
        .or_else(|_| c.peer_data_passes(P1, R1, "PASS_EXPIRED"))
}

fn channel_bind_commits(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    let a = c.alloc(C1)?;
    let t = new_txid();
    c.request(C1, &bind_req(t, 0x4001, P1.into()), true)?;
    let m = c.counts();
    ensure!(
        (m.chans, m.peers, m.perms) == (0, 0, 0),
        "committed before the response: {m}"
    );
    c.response(C1, &ok(CHANNEL_BIND, t, &[]), &[("LEARN_CHANNEL", 1)])?;
    let ch =
        c.p.channel(C1, SERVER_EP, 0x4001)
            .ok_or_else(|| anyhow!("no client-side channel"))?;
    let pc =
        c.p.peer_channel(P1, R1)
            .ok_or_else(|| anyhow!("no peer-side channel"))?;
    for (side, x) in [("client side", &ch), ("peer side", &pc)] {
        ensure!(same_ep(&x.client, &ep(C1)), "{side}: client");
        ensure!(same_ep(&x.server, &ep(SERVER_EP)), "{side}: server");
        ensure!(same_ep(&x.relay, &ep(R1)), "{side}: relay");
        ensure!(same_ep(&x.peer, &ep(P1)), "{side}: peer");
        ensure!(u16::from_be(x.chan) == 0x4001, "{side}: chan");
        ensure!(x.alloc_id == a.id, "{side}: alloc id");
        expect_deadline(side, x.chan_expires_ns, 600)?;
    }
    let perm =
        c.p.permission(R1, PEER)
            .ok_or_else(|| anyhow!("no permission"))?;
    ensure!(perm.alloc_id == a.id, "permission alloc id");
    // coturn: ChannelBind gives the peer's permission the channel lifetime
    expect_deadline("permission", perm.expires_ns, 600)?;
    let m = c.counts();
    ensure!(
        (m.allocs, m.chans, m.peers, m.perms, m.pending) == (1, 1, 1, 1, 2),
        "maps {m}"
    );
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    // the permission is per address: another port of the same peer is not bound
    c.peer_data_passes(P2, R1, "PASS_NO_CHANNEL")
}

fn create_permission_commits(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    let peers: [SocketAddrV4; 3] = [
        P1,
        SocketAddrV4::new(PEER_ON_TURN0, 1),
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 9), 3),
    ];
    let t = new_txid();
    let addrs: Vec<SocketAddr> = peers.iter().map(|p| (*p).into()).collect();
    c.request(C1, &perm_req(t, &addrs), true)?;
    c.response(C1, &ok(CREATE_PERMISSION, t, &[]), &[("LEARN_PERM", 3)])?;
    for p in peers {
        let perm =
            c.p.permission(R1, *p.ip())
                .ok_or_else(|| anyhow!("no permission for {p}"))?;
        expect_deadline("permission", perm.expires_ns, 300)?;
    }
    let m = c.counts();
    ensure!((m.chans, m.peers, m.perms) == (0, 0, 3), "maps {m}");
    // a permission alone relays nothing
    c.peer_data_passes(P1, R1, "PASS_NO_CHANNEL")
}

fn create_permission_more_peers_than_kept(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    let addrs: Vec<SocketAddr> = (1..=6u8)
        .map(|i| SocketAddr::from((Ipv4Addr::new(198, 51, 100, 10 + i), 1000)))
        .collect();
    c.bind(C1, 0x4001, P1)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    let t = new_txid();
    c.request(C1, &perm_req(t, &addrs), true)?;
    // Only TB_MAX_REQ_PEERS (4) are remembered, but coturn resets the permission of every peer
    // named (which can shorten one a ChannelBind had extended): we cannot mirror that, so the
    // allocation is left to the server.
    c.response(C1, &ok(CREATE_PERMISSION, t, &[]), &[("NOT_MIRRORED", 1)])?;
    ensure!(c.alloc(C1).is_err(), "the allocation is given up");
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")
}

/// Age the permission of `peer`'s address on `relay` so that it ended a second ago.
fn expire_permission(c: &Ctx, relay: SocketAddrV4, peer: SocketAddrV4) -> Result<()> {
    use libbpf_rs::{MapCore, MapFlags};
    let mut key = types::tb_perm_key {
        relay: ep(relay),
        peer: ep(peer),
    };
    key.peer.port = 0;
    let map = &c.p.skel.maps.perms;
    let k = maps::bytes_of(&key).to_vec();
    let mut p: types::tb_perm = maps::from_bytes(&map.lookup(&k, MapFlags::ANY)?.context("perm")?);
    p.expires_ns = maps::now_ns() - 1_000_000_000;
    map.update(&k, maps::bytes_of(&p), MapFlags::ANY)?;
    // Time would have ended the channels' cached checks at that deadline: end them now.
    let ck = maps::bytes_of(&types::tb_chan_key {
        client: ep(C1),
        server: ep(SERVER_EP),
        chan: 0x4001u16.to_be(),
        pad: [0; 2],
    })
    .to_vec();
    let pk = maps::bytes_of(&types::tb_peer_key {
        peer: ep(peer),
        relay: ep(relay),
    })
    .to_vec();
    for (m, k) in [(&c.p.skel.maps.chans, ck), (&c.p.skel.maps.peers, pk)] {
        let mut ch: types::tb_chan =
            maps::from_bytes(&m.lookup(&k, MapFlags::ANY)?.context("chan")?);
        ch.cache = 0;
        m.update(&k, maps::bytes_of(&ch), MapFlags::ANY)?;
    }
    Ok(())
}

fn create_permission_on_a_bound_peer_follows_coturn(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    c.bind(C1, 0x4001, P1)?;
    // relaying fills the validity cache: the shortening must still be seen at once
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    let t = new_txid();
    c.request(C1, &perm_req(t, &[P1.into()]), true)?;
    c.response(C1, &ok(CREATE_PERMISSION, t, &[]), &[("LEARN_PERM", 1)])?;
    // coturn: the permission is reset to --permission-lifetime (300 s here), shortening the
    // channel lifetime ChannelBind gave it; the channel itself is not refreshed
    let ch = c.p.channel(C1, SERVER_EP, 0x4001).context("channel")?;
    let pc = c.p.peer_channel(P1, R1).context("peer channel")?;
    expect_deadline("client-side channel", ch.chan_expires_ns, 600)?;
    expect_deadline("peer-side channel", pc.chan_expires_ns, 600)?;
    let perm = c.p.permission(R1, PEER).context("perm")?;
    expect_deadline("permission", perm.expires_ns, 300)?;
    ensure!(
        perm.epoch == ch.perm_epoch,
        "a live permission keeps its epoch: the channel lives on under it"
    );
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    // when the permission expires, coturn deletes the peer's channels ...
    expire_permission(c, R1, P1)?;
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
    // ... so a new permission for the peer does not bring the channel back
    let t = new_txid();
    c.request(C1, &perm_req(t, &[P1.into()]), true)?;
    c.response(C1, &ok(CREATE_PERMISSION, t, &[]), &[("LEARN_PERM", 1)])?;
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
    // a new ChannelBind does
    c.bind(C1, 0x4001, P1)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

/// How a second request under R1's transaction ID goes past the recorder unseen, with what the
/// XDP program counts for it.
struct BlindWay {
    name: &'static str,
    counters: &'static [(&'static str, u64)],
    frame: fn(txid: TxId) -> Vec<u8>,
}

/// R2: ChannelBind(0x4001 -> P1) under `txid`, as a frame to the server with `edit` applied.
fn r2_frame(txid: TxId, edit: impl FnOnce(&mut Udp4Frame)) -> Vec<u8> {
    let mut f = Udp4Frame::new(
        CLIENT_MAC,
        TURN0_MAC,
        C1,
        SERVER_EP,
        &bind_req(txid, 0x4001, P1.into()),
    );
    edit(&mut f);
    f.build()
}

/// `msg` with its length field fixed after `extra` was appended.
fn appended(mut msg: Vec<u8>, extra: &[u8]) -> Vec<u8> {
    msg.extend_from_slice(extra);
    let len = (msg.len() - 20) as u16;
    msg[2..4].copy_from_slice(&len.to_be_bytes());
    msg
}

const BLIND_WAYS: &[BlindWay] = &[
    BlindWay {
        name: "wrong UDP checksum",
        counters: &[("PASS_STUN", 1), ("RECORD_BAD_CSUM", 1)],
        frame: |t| r2_frame(t, |f| f.udp_check = UdpCheck::Raw(0x1234)),
    },
    BlindWay {
        name: "wrong IP header checksum",
        counters: &[("PASS_STUN", 1), ("RECORD_BAD_CSUM", 1)],
        frame: |t| {
            let mut b = r2_frame(t, |_| {});
            b[14 + 10] ^= 0x5a;
            b
        },
    },
    BlindWay {
        name: "first fragment",
        counters: &[("PASS_FRAGMENT", 1)],
        frame: |t| {
            r2_frame(t, |f| {
                f.mf = true;
                f.df = false;
            })
        },
    },
    BlindWay {
        name: "later fragment",
        counters: &[("PASS_FRAGMENT", 1)],
        frame: |t| {
            r2_frame(t, |f| {
                f.frag_offset = 4;
                f.df = false;
            })
        },
    },
    BlindWay {
        name: "IP options NOP/EOL",
        counters: &[("PASS_IP_OPTIONS", 1)],
        frame: |t| r2_frame(t, |f| f.options = vec![1, 1, 1, 0]),
    },
    BlindWay {
        name: "IP option Router Alert",
        counters: &[("PASS_IP_OPTIONS", 1)],
        frame: |t| r2_frame(t, |f| f.options = vec![0x94, 4, 0, 0]),
    },
    BlindWay {
        name: "VLAN tag",
        counters: &[("PASS_VLAN", 1)],
        frame: |t| r2_frame(t, |f| f.vlans = vec![(0x8100, 100)]),
    },
    BlindWay {
        name: "802.1ad + 802.1Q tags",
        counters: &[("PASS_VLAN", 1)],
        frame: |t| r2_frame(t, |f| f.vlans = vec![(0x88a8, 10), (0x8100, 100)]),
    },
    BlindWay {
        name: "more attributes than the parser walks",
        counters: &[("PASS_STUN", 1), ("STUN_MALFORMED", 1)],
        frame: |t| {
            let mut attrs: Vec<Attr> = (0..30)
                .map(|i| Attr::Raw {
                    typ: 0x8050 + i,
                    value: vec![0; 4],
                })
                .collect();
            attrs.push(Attr::ChannelNumber(0x4001));
            attrs.push(Attr::XorPeerAddress(P1.into()));
            to_server(C1, &req(CHANNEL_BIND, t, &attrs))
        },
    },
    BlindWay {
        name: "peer after MESSAGE-INTEGRITY",
        counters: &[("PASS_STUN", 1), ("STUN_MALFORMED", 1)],
        frame: |t| {
            let signed = req(CHANNEL_BIND, t, &[Attr::ChannelNumber(0x4001)]);
            // XOR-PEER-ADDRESS P1, after MESSAGE-INTEGRITY and FINGERPRINT
            let x = (u32::from(*P1.ip()) ^ 0x2112_A442).to_be_bytes();
            let xp = (P1.port() ^ 0x2112).to_be_bytes();
            let attr = [&[0, 0x12, 0, 8, 0, 1][..], &xp, &x].concat();
            to_server(C1, &appended(signed, &attr))
        },
    },
    BlindWay {
        name: "longer than the recorder checks",
        counters: &[("PASS_STUN", 1), ("RECORD_BLIND", 1)],
        frame: |t| {
            let attrs = [
                Attr::Raw {
                    typ: 0x8022,
                    value: vec![b's'; 1300],
                },
                Attr::ChannelNumber(0x4001),
                Attr::XorPeerAddress(P1.into()),
            ];
            to_server(C1, &req(CHANNEL_BIND, t, &attrs))
        },
    },
];

/// The R1/R2 attack through every blind spot of the recorder: R1 = ChannelBind(0x4001 -> P2, the
/// address the server would refuse) is recorded but never reaches the server; R2 =
/// ChannelBind(0x4001 -> P1) under the same transaction ID reaches the server unseen, and the
/// server grants it. The grant must commit nothing: the allocation is left to the server. Then,
/// as the control, a ChannelBind recorded after the blind spot commits as usual.
fn blind_spots_commit_nothing(c: &Ctx) -> Result<()> {
    for way in BLIND_WAYS {
        let run = || -> Result<()> {
            if c.alloc(C1).is_err() {
                c.allocate(C1, R1, 600)?;
            }
            let t = new_txid();
            c.request(C1, &bind_req(t, 0x4001, P2.into()), true)?;
            let frame = (way.frame)(t);
            step(c, way.counters, "R2", || {
                let r = c.p.xdp(&frame, c.net.turn0)?;
                ensure!(
                    r.verdict == XDP_PASS && r.out == frame,
                    "R2 not passed unmodified"
                );
                Ok(())
            })?;
            c.response(
                C1,
                &ok(CHANNEL_BIND, t, &[]),
                &[("LEARN_STALE", 1), ("NOT_MIRRORED", 1)],
            )?;
            ensure!(
                c.p.channel(C1, SERVER_EP, 0x4001).is_none() && c.p.peer_channel(P2, R1).is_none(),
                "a channel was committed"
            );
            c.channel_data_passes(C1, 0x4001, "PASS_NO_CHANNEL")?;
            // control: a pending lifetime past the blind spot, learning goes on
            std::thread::sleep(PAST_BLIND);
            c.allocate(C1, R1, 600)?;
            c.bind(C1, 0x4002, P1)?;
            c.relays_both_ways(C1, 0x4002, R1, P1)?;
            // leave no allocation for the next way
            let t = new_txid();
            c.request(C1, &refresh_req(t, 0), true)?;
            c.response(C1, &refresh_ok(t, 0), &[("LEARN_DEALLOC", 1)])
        };
        run().with_context(|| way.name)?;
    }
    Ok(())
}

/// Only a request whose checksums verify is recorded (over IPv4 a zero UDP checksum is "none"):
/// the kernel drops the others before the server sees them, so their answer, if any, is not theirs.
fn requests_are_recorded_only_with_good_checksums(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    for (name, edit) in [
        (
            "wrong UDP checksum",
            (|f: &mut Vec<u8>| f[14 + 20 + 6] ^= 0x40) as fn(&mut Vec<u8>),
        ),
        ("wrong IP header checksum", |f: &mut Vec<u8>| {
            f[14 + 10] ^= 0x40
        }),
    ] {
        let t = new_txid();
        let mut frame = to_server(C1, &bind_req(t, 0x4001, P2.into()));
        edit(&mut frame);
        let pending = c.counts().pending;
        step(c, &[("PASS_STUN", 1), ("RECORD_BAD_CSUM", 1)], name, || {
            let r = c.p.xdp(&frame, c.net.turn0)?;
            ensure!(
                r.verdict == XDP_PASS && r.out == frame,
                "not passed unmodified"
            );
            Ok(())
        })?;
        ensure!(
            c.counts().pending == pending,
            "{name}: recorded: {}",
            c.counts()
        );
        // whatever answers this transaction ID, it was not this request: nothing is added
        c.response(
            C1,
            &ok(CHANNEL_BIND, t, &[]),
            &[("LEARN_NO_PENDING", 1), ("NOT_MIRRORED", 1)],
        )
        .context(name)?;
        c.nothing_committed()?;
        std::thread::sleep(PAST_BLIND);
        c.allocate(C1, R1, 600)?;
    }
    // UDP checksum 0: "no checksum", recorded and committed
    let t = new_txid();
    let frame = r2_frame(t, |f| f.udp_check = UdpCheck::Zero);
    step(
        c,
        &[("PASS_STUN", 1), ("PENDING_ADDED", 1)],
        "zero checksum",
        || c.p.xdp(&frame, c.net.turn0),
    )?;
    c.response(C1, &ok(CHANNEL_BIND, t, &[]), &[("LEARN_CHANNEL", 1)])?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

/// Defence in depth behind the recorder: a grant for a peer the server's static policy refuses
/// (here a denied-peer-ip address) is never mirrored, whatever the answer says.
fn refused_peers_are_never_mirrored(c: &Ctx) -> Result<()> {
    use libbpf_rs::MapCore;
    let map = &c.p.skel.maps.refused_peers;
    maps::set_refused_peers(map, &[(IpAddr::V4(PEER), 32)])?;
    c.allocate(C1, R1, 600)?;
    let t = new_txid();
    c.request(C1, &bind_req(t, 0x4001, P1.into()), true)?;
    c.response(C1, &ok(CHANNEL_BIND, t, &[]), &[("PEER_REFUSED", 1)])?;
    let t = new_txid();
    c.request(C1, &perm_req(t, &[P2.into()]), true)?;
    c.response(C1, &ok(CREATE_PERMISSION, t, &[]), &[("PEER_REFUSED", 1)])?;
    let m = c.counts();
    ensure!((m.chans, m.peers, m.perms) == (0, 0, 0), "mirrored: {m}");
    c.channel_data_passes(C1, 0x4001, "PASS_NO_CHANNEL")?;
    c.peer_data_passes(P1, R1, "PASS_NO_CHANNEL")?;
    // control: without the policy entry the same grant is mirrored
    for k in map.keys().collect::<Vec<_>>() {
        map.delete(&k)?;
    }
    c.bind(C1, 0x4001, P1)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

/// An answer later than the pending lifetime after its request was first seen commits nothing
/// (and a copy of the request does not make it younger).
fn stale_pending_commits_nothing(c: &Ctx) -> Result<()> {
    use libbpf_rs::{MapCore, MapFlags};
    c.allocate(C1, R1, 600)?;
    let t = new_txid();
    let r = bind_req(t, 0x4001, P1.into());
    c.request(C1, &r, true)?;
    let map = &c.p.skel.maps.pending;
    for k in map.keys().collect::<Vec<_>>() {
        let key: types::tb_pending_key = maps::from_bytes(&k);
        if key.txid != t {
            continue;
        }
        let mut v: types::tb_pending =
            maps::from_bytes(&map.lookup(&k, MapFlags::ANY)?.context("pending")?);
        v.created_ns = maps::now_ns() - PAST_BLIND.as_nanos() as u64;
        map.update(&k, maps::bytes_of(&v), MapFlags::ANY)?;
    }
    c.request(C1, &r, false)?;
    c.response(
        C1,
        &ok(CHANNEL_BIND, t, &[]),
        &[("LEARN_STALE", 1), ("NOT_MIRRORED", 1)],
    )?;
    c.nothing_committed()?;
    // control: a fresh request commits
    c.allocate(C1, R1, 600)?;
    c.bind(C1, 0x4001, P1)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

/// The same ChannelBind and Allocate twice (a retransmission, or the network duplicating it):
/// the server answers both; the first answer commits, the second changes nothing.
fn duplicated_requests_stay_offloaded(c: &Ctx) -> Result<()> {
    let t = new_txid();
    let a = alloc_req(t, 600);
    c.request(C1, &a, true)?;
    c.request(C1, &a, false)?;
    c.response(C1, &alloc_ok(t, C1, R1.into(), 600), &[("LEARN_ALLOC", 1)])?;
    let first = c.alloc(C1)?;
    c.response(
        C1,
        &alloc_ok(t, C1, R1.into(), 600),
        &[("LEARN_DUPLICATE", 1)],
    )?;
    let again = c.alloc(C1)?;
    ensure!(
        (again.id, again.expires_ns) == (first.id, first.expires_ns),
        "the repeated answer changed the allocation"
    );
    let t = new_txid();
    let b = bind_req(t, 0x4001, P1.into());
    c.request(C1, &b, true)?;
    c.request(C1, &b, false)?;
    c.response(C1, &ok(CHANNEL_BIND, t, &[]), &[("LEARN_CHANNEL", 1)])?;
    c.response(C1, &ok(CHANNEL_BIND, t, &[]), &[("LEARN_DUPLICATE", 1)])?;
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    // a repeated Refresh answer applies again, but only to shorten
    let t = new_txid();
    c.request(C1, &refresh_req(t, 1200), true)?;
    c.response(C1, &refresh_ok(t, 1200), &[("LEARN_REFRESH", 1)])?;
    c.response(C1, &refresh_ok(t, 1200), &[("LEARN_DUPLICATE", 1)])?;
    expect_deadline(
        "after a repeated Refresh answer",
        c.alloc(C1)?.expires_ns,
        1200,
    )?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

fn refresh_updates_expiry(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    c.bind(C1, 0x4001, P1)?;
    let before = c.alloc(C1)?;
    expect_deadline("allocation", before.expires_ns, 600)?;
    let t = new_txid();
    c.request(C1, &refresh_req(t, 3600), true)?;
    c.response(C1, &refresh_ok(t, 3600), &[("LEARN_REFRESH", 1)])?;
    let after = c.alloc(C1)?;
    expect_deadline("refreshed allocation", after.expires_ns, 3600)?;
    ensure!(
        after.id == before.id,
        "a refresh must keep the allocation id"
    );
    ensure!(same_ep(&after.relay[0], &before.relay[0]), "relay changed");
    // and a refresh to a shorter lifetime shortens it (the server's answer is what counts)
    let t = new_txid();
    c.request(C1, &refresh_req(t, 3600), true)?;
    c.response(C1, &refresh_ok(t, 120), &[("LEARN_REFRESH", 1)])?;
    expect_deadline("shortened allocation", c.alloc(C1)?.expires_ns, 120)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

/// A Refresh asking for less than coturn's 600 s minimum is granted 600 s: what the recorder
/// takes away before the answer is what coturn grants at least, so the allocation lives on to
/// the answer (a deadline of 1 s less our margin would have ended it, and nothing revives it).
fn short_refresh_raised_by_coturn_keeps_the_allocation(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    c.bind(C1, 0x4001, P1)?;
    let t = new_txid();
    c.request(C1, &refresh_req(t, 1), true)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    c.response(C1, &refresh_ok(t, 600), &[("LEARN_REFRESH", 1)])?;
    expect_deadline("allocation", c.alloc(C1)?.expires_ns, 600)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

/// Under pion's rules the same Refresh is granted as asked (1 s): the allocation ends here as
/// soon as the request is seen, and its answer does not bring it back.
fn short_refresh_granted_as_asked_ends_the_allocation(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    c.bind(C1, 0x4001, P1)?;
    let t = new_txid();
    c.request(C1, &refresh_req(t, 1), true)?;
    c.response(C1, &refresh_ok(t, 1), &[("LEARN_NO_ALLOC", 1)])?;
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")
}

/// pion grants a Refresh without LIFETIME, or asking for an hour or more, its default 600 s
/// (util.go allocationLifeTime): under its rules a recorded one takes a longer allocation down
/// to 600 s before the answer is seen (the answer could be lost on its way out, and pion would
/// end the allocation at 600 s); under coturn's nothing is assumed for those.
fn refresh_without_lifetime_takes_pions_default(c: &Ctx) -> Result<()> {
    refresh_without_lifetime(c, 600)
}

fn refresh_without_lifetime_assumes_nothing_at_coturn(c: &Ctx) -> Result<()> {
    refresh_without_lifetime(c, 3000)
}

fn refresh_without_lifetime(c: &Ctx, want: u64) -> Result<()> {
    c.allocate(C1, R1, 3000)?;
    expect_deadline("allocation", c.alloc(C1)?.expires_ns, 3000)?;
    for asked in [None, Some(3600), Some(86_400)] {
        let t = new_txid();
        let attrs: Vec<Attr> = asked.map(Attr::Lifetime).into_iter().collect();
        c.request(C1, &req(REFRESH, t, &attrs), true)?;
        expect_deadline(
            &format!("allocation after a recorded Refresh {asked:?}"),
            c.alloc(C1)?.expires_ns,
            want,
        )?;
    }
    Ok(())
}

/// A refused ChannelBind's record stays: a copy of it the server still held may succeed once
/// an allocation came meanwhile, and a new request under the same transaction ID naming another
/// peer must not take that success for its own (it would relay to a peer the server never
/// bound). The same for CreatePermission.
fn refused_request_copy_granted_later_commits_nothing_else(c: &Ctx) -> Result<()> {
    for method in [CHANNEL_BIND, CREATE_PERMISSION] {
        let (x, y) = {
            let t = new_txid();
            if method == CHANNEL_BIND {
                (
                    bind_req(t, 0x4001, P1.into()),
                    bind_req(t, 0x4001, P2.into()),
                )
            } else {
                (perm_req(t, &[P1.into()]), perm_req(t, &[P2.into()]))
            }
        };
        let t: TxId = x[8..20].try_into().unwrap();
        // two copies of X (no allocation yet): the first refused
        c.request(C1, &x, true)?;
        c.request(C1, &x, false)?;
        c.response(
            C1,
            &build_error_response(method, t, 437),
            &[("LEARN_ERROR", 1)],
        )?;
        c.allocate(C1, R1, 600)?;
        // Y under the same ID names P2: it meets X's record and poisons it; the server's
        // success (for X's second copy) is then unmatched, and leaves the allocation to it
        step(
            c,
            &[("PASS_STUN", 1), ("PENDING_CONFLICT", 1)],
            "request Y",
            || c.p.client_sends(c.net, C1, &y),
        )?;
        c.response(
            C1,
            &ok(method, t, &[]),
            &[("LEARN_NO_PENDING", 1), ("NOT_MIRRORED", 1)],
        )?;
        let m = c.counts();
        ensure!(
            m.chans == 0 && m.perms == 0 && m.allocs == 0,
            "{method:#x}: committed: {m}"
        );
        c.peer_data_passes(P2, R1, "PASS_NO_CHANNEL")
            .with_context(|| format!("{method:#x}"))?;
    }
    Ok(())
}

fn refresh_zero_deallocates(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    c.bind(C1, 0x4001, P1)?;
    // relaying fills the channel's validity cache: the deallocation must still be seen at once
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    let t = new_txid();
    c.request(C1, &refresh_req(t, 0), true)?;
    c.response(C1, &refresh_ok(t, 0), &[("LEARN_DEALLOC", 1)])?;
    ensure!(
        c.p.allocation(C1, SERVER_EP).is_none(),
        "allocation still there"
    );
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
    // a second Refresh 0 (retransmission answered again) finds nothing
    let t = new_txid();
    c.request(C1, &refresh_req(t, 0), true)?;
    c.response(C1, &refresh_ok(t, 0), &[("LEARN_NO_ALLOC", 1)])
}

fn new_allocation_orphans_old_channels(c: &Ctx) -> Result<()> {
    c.live_channel(C1, 0x4001, R1, P1)?;
    let t = new_txid();
    c.request(C1, &refresh_req(t, 0), true)?;
    c.response(C1, &refresh_ok(t, 0), &[("LEARN_DEALLOC", 1)])?;
    // the same 5-tuple allocates again (same relayed address, as a port can be reused)
    c.allocate(C1, R1, 600)?;
    // the old binding belongs to the old allocation: it must not relay
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
    c.bind(C1, 0x4001, P1)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

fn allocate_answered_again_keeps_its_channels(c: &Ctx) -> Result<()> {
    // The allocation's own Allocate transaction, kept to be sent again.
    let t = new_txid();
    let first = alloc_req(t, 600);
    c.request(C1, &first, true)?;
    c.response(C1, &alloc_ok(t, C1, R1.into(), 600), &[("LEARN_ALLOC", 1)])?;
    c.bind(C1, 0x4001, P1)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    let before = c.alloc(C1)?;
    // The client sends that Allocate again (its retransmission timer, a duplicated packet);
    // the server answers it again, rebuilt, and changes nothing (its LIFETIME may even read the
    // default when less than a second is left): the channels keep being offloaded, and the
    // deadline does not move.
    c.request(C1, &first, false)?;
    c.response(
        C1,
        &alloc_ok(t, C1, R1.into(), 600),
        &[("LEARN_DUPLICATE", 1)],
    )?;
    ensure!(c.counts().pending >= 1, "the answered request is kept");
    let after = c.alloc(C1)?;
    ensure!(
        (after.id, after.expires_ns) == (before.id, before.expires_ns),
        "a retransmitted Allocate changed the allocation"
    );
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    // Another transaction granted on the live allocation (coturn answers that with 437): we
    // cannot tell what the server holds, so the allocation is left to it.
    let t = new_txid();
    c.request(C1, &alloc_req(t, 600), true)?;
    c.response(C1, &alloc_ok(t, C1, R2.into(), 600), &[("NOT_MIRRORED", 1)])?;
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
    // Once ended here, a new allocation on the same 5-tuple is learned afresh, and the old
    // channel stays dead.
    c.allocate(C1, R2, 600)?;
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.bind(C1, 0x4002, P1)?;
    c.relays_both_ways(C1, 0x4002, R2, P1)
}

fn error_responses_commit_nothing(c: &Ctx) -> Result<()> {
    let cases: [(u16, Vec<u8>, Vec<u8>, u16); 6] = {
        let t: Vec<TxId> = (0..6).map(|_| new_txid()).collect();
        [
            (
                ALLOCATE,
                alloc_req(t[0], 600),
                alloc_ok(t[0], C1, R1.into(), 600),
                401,
            ),
            (
                ALLOCATE,
                alloc_req(t[1], 600),
                alloc_ok(t[1], C1, R1.into(), 600),
                437,
            ),
            (
                CHANNEL_BIND,
                bind_req(t[2], 0x4001, P1.into()),
                ok(CHANNEL_BIND, t[2], &[]),
                403,
            ),
            (
                CREATE_PERMISSION,
                perm_req(t[3], &[P1.into()]),
                ok(CREATE_PERMISSION, t[3], &[]),
                403,
            ),
            (REFRESH, refresh_req(t[4], 0), refresh_ok(t[4], 0), 437),
            (
                CHANNEL_BIND,
                bind_req(t[5], 0x4002, P2.into()),
                ok(CHANNEL_BIND, t[5], &[]),
                400,
            ),
        ]
    };
    for (method, request, success, code) in cases {
        // an allocation for every case (437 to a Refresh takes the one before away)
        if c.alloc(C1).is_err() {
            c.allocate(C1, R1, 600)?;
        }
        let base = c.counts();
        let txid: TxId = request[8..20].try_into().unwrap();
        c.request(C1, &request, true)?;
        // 437 to a Refresh: the server has no allocation for this 5-tuple any more
        let gone = method == REFRESH && code == 437;
        let want: &[(&str, u64)] = if gone {
            &[("LEARN_ERROR", 1), ("LEARN_DEALLOC", 1)]
        } else {
            &[("LEARN_ERROR", 1)]
        };
        c.response(C1, &build_error_response(method, txid, code), want)
            .with_context(|| format!("{code} to method {method:#x}"))?;
        // A refused Allocate's record is deleted (kept, every client's refused first Allocate
        // would hold a slot for twice the pending lifetime, and a burst of clients fills the
        // table); any other stays, answered: a later answer to it changes nothing.
        let kept = usize::from(method != ALLOCATE);
        ensure!(
            c.counts().pending == base.pending + kept,
            "pending after {code}: {}",
            c.counts()
        );
        if gone {
            ensure!(
                c.alloc(C1).is_err(),
                "437 to a Refresh removes the allocation"
            );
        } else {
            let (now, want) = (c.counts(), base);
            ensure!(
                (now.allocs, now.chans, now.peers, now.perms)
                    == (want.allocs, want.chans, want.peers, want.perms),
                "committed after {code}: {now}"
            );
        }
        // A late success for the same transaction: to a refused Allocate it answers nothing
        // recorded any more, and names another transaction than the live allocation's, which
        // is left to the server; to anything else it is a second answer to an answered
        // request, and adds nothing.
        let late: &[(&str, u64)] = if method == ALLOCATE {
            &[("LEARN_NO_PENDING", 1), ("NOT_MIRRORED", 1)]
        } else {
            &[("LEARN_DUPLICATE", 1)]
        };
        c.response(C1, &success, late)?;
        ensure!(
            c.alloc(C1).is_err() == (gone || method == ALLOCATE),
            "after {code}: {}",
            c.counts()
        );
        ensure!(
            c.counts().chans == 0 && c.counts().perms == 0,
            "{}",
            c.counts()
        );
    }
    Ok(())
}

fn unmatched_transaction_id(c: &Ctx) -> Result<()> {
    let t = new_txid();
    c.request(C1, &alloc_req(t, 600), true)?;
    let mut other = t;
    other[11] ^= 1;
    c.response(
        C1,
        &alloc_ok(other, C1, R1.into(), 600),
        &[("LEARN_NO_PENDING", 1)],
    )?;
    c.nothing_committed()?;
    ensure!(
        c.counts().pending == 1,
        "the real request must stay pending"
    );
    // the matching response still commits
    c.response(C1, &alloc_ok(t, C1, R1.into(), 600), &[("LEARN_ALLOC", 1)])?;
    c.alloc(C1).map(|_| ())
}

fn response_to_other_five_tuple(c: &Ctx) -> Result<()> {
    let t = new_txid();
    c.request(C1, &alloc_req(t, 600), true)?;
    // same transaction ID, to another port of the same client
    c.response(
        C2,
        &alloc_ok(t, C2, R1.into(), 600),
        &[("LEARN_NO_PENDING", 1)],
    )?;
    c.nothing_committed()?;
    // and from another (server) address: a packet the host originates from 192.0.2.1:3479 is
    // not from the TURN port at all, so TC does not even parse it
    let f = udp4(
        TURN0_MAC,
        CLIENT_MAC,
        SocketAddrV4::new(SERVER, 3479),
        C1,
        64,
        &alloc_ok(t, C1, R1.into(), 600),
    );
    let r = c.p.tc(&f)?;
    ensure!(r.verdict == TC_ACT_UNSPEC && r.out == f, "tc changed it");
    c.nothing_committed()?;
    ensure!(c.counts().pending == 1, "pending {}", c.counts());
    Ok(())
}

fn client_only_packets(c: &Ctx) -> Result<()> {
    // requests that are never answered
    c.request(C1, &alloc_req(new_txid(), 600), true)?;
    c.request(C1, &bind_req(new_txid(), 0x4001, P1.into()), true)?;
    c.request(C1, &perm_req(new_txid(), &[P1.into()]), true)?;
    c.request(C1, &refresh_req(new_txid(), 600), true)?;
    // a client sending "success responses" to the server: XDP never commits
    let t = new_txid();
    c.request(C1, &alloc_req(t, 600), true)?;
    for forged in [
        alloc_ok(t, C1, R1.into(), 600),
        alloc_ok(new_txid(), C1, R1.into(), 600),
        ok(CHANNEL_BIND, new_txid(), &[]),
        ok(CREATE_PERMISSION, new_txid(), &[]),
    ] {
        c.request(C1, &forged, false)?;
    }
    // ... nor does a "response" the host forwards (it came in on an interface)
    let f = from_server(C1, &alloc_ok(t, C1, R1.into(), 600));
    step(c, &[("TC_NOT_LOCAL", 1)], "forwarded response", || {
        let r = c.p.tc_from(&f, c.net.relay0)?;
        ensure!(r.verdict == TC_ACT_UNSPEC && r.out == f, "tc changed it");
        Ok(())
    })?;
    c.nothing_committed()?;
    ensure!(c.counts().pending == 5, "pending {}", c.counts());
    c.channel_data_passes(C1, 0x4001, "PASS_NO_CHANNEL")
}

fn conflicting_transaction_id(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    let t = new_txid();
    c.request(C1, &bind_req(t, 0x4001, P1.into()), true)?;
    // the same transaction ID with other contents: poisons the transaction
    step(
        c,
        &[("PASS_STUN", 1), ("PENDING_CONFLICT", 1)],
        "conflict",
        || c.p.client_sends(c.net, C1, &bind_req(t, 0x4002, P2.into())),
    )?;
    // the server's answer is unmatched: nothing is committed and the allocation is given up
    c.response(
        C1,
        &ok(CHANNEL_BIND, t, &[]),
        &[("LEARN_NO_PENDING", 1), ("NOT_MIRRORED", 1)],
    )?;
    let m = c.counts();
    ensure!(
        (m.allocs, m.chans, m.peers, m.perms, m.pending) == (0, 0, 0, 0, 2),
        "maps {m}"
    );
    // a plain retransmission (same contents) is no conflict
    c.allocate(C1, R1, 600)?;
    let t = new_txid();
    let r = bind_req(t, 0x4001, P1.into());
    c.request(C1, &r, true)?;
    c.request(C1, &r, false)?;
    c.response(C1, &ok(CHANNEL_BIND, t, &[]), &[("LEARN_CHANNEL", 1)])?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

fn method_mismatch(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    let t = new_txid();
    c.request(C1, &bind_req(t, 0x4001, P1.into()), true)?;
    c.response(
        C1,
        &ok(CREATE_PERMISSION, t, &[]),
        &[("LEARN_NO_PENDING", 1), ("NOT_MIRRORED", 1)],
    )?;
    let m = c.counts();
    ensure!(
        (m.allocs, m.chans, m.perms, m.pending) == (0, 0, 0, 2),
        "maps {m}"
    );
    Ok(())
}

fn relay_not_local(c: &Ctx) -> Result<()> {
    let t = new_txid();
    let public = SocketAddrV4::new(PUBLIC, 50000);
    c.request(C1, &alloc_req(t, 600), true)?;
    c.response(
        C1,
        &alloc_ok(t, C1, public.into(), 600),
        &[("RELAY_NOT_LOCAL", 1)],
    )?;
    c.nothing_committed()?;
    let reported = Programs::count(&c.p.skel.maps.not_local);
    ensure!(reported == 1, "not_local has {reported} entries");
    let b = c.p.channel(C1, SERVER_EP, 0x4001);
    ensure!(b.is_none(), "channel");
    // the ChannelBind that follows has no allocation to attach to
    let t = new_txid();
    c.request(C1, &bind_req(t, 0x4001, P1.into()), true)?;
    c.response(C1, &ok(CHANNEL_BIND, t, &[]), &[("LEARN_NO_ALLOC", 1)])?;
    c.nothing_committed()
}

fn external_ip_mapping(c: &Ctx) -> Result<()> {
    c.p.map_external_ip(PUBLIC, RELAY)?;
    let t = new_txid();
    let public = SocketAddrV4::new(PUBLIC, 50000);
    c.request(C1, &alloc_req(t, 600), true)?;
    c.response(
        C1,
        &alloc_ok(t, C1, public.into(), 600),
        &[("LEARN_ALLOC", 1)],
    )?;
    let a = c.alloc(C1)?;
    ensure!(
        same_ep(&a.relay[0], &ep(R1)),
        "relay must be the private address, got {:?}",
        maps::sockaddr(&a.relay[0])
    );
    c.bind(C1, 0x4001, P1)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

fn bind_without_allocation(c: &Ctx) -> Result<()> {
    let t = new_txid();
    c.request(C1, &bind_req(t, 0x4001, P1.into()), true)?;
    c.response(C1, &ok(CHANNEL_BIND, t, &[]), &[("LEARN_NO_ALLOC", 1)])?;
    let t = new_txid();
    c.request(C1, &perm_req(t, &[P1.into()]), true)?;
    c.response(C1, &ok(CREATE_PERMISSION, t, &[]), &[("LEARN_NO_ALLOC", 1)])?;
    let t = new_txid();
    c.request(C1, &refresh_req(t, 600), true)?;
    c.response(C1, &refresh_ok(t, 600), &[("LEARN_NO_ALLOC", 1)])?;
    c.nothing_committed()?;
    ensure!(c.counts().pending == 3, "pending {}", c.counts());
    c.channel_data_passes(C1, 0x4001, "PASS_NO_CHANNEL")
}

fn allocate_success_missing_attributes(c: &Ctx) -> Result<()> {
    let t = new_txid();
    c.request(C1, &alloc_req(t, 600), true)?;
    c.response(
        C1,
        &ok(ALLOCATE, t, &[Attr::XorRelayedAddress(R1.into())]),
        &[("STUN_MALFORMED", 1)],
    )?;
    let t = new_txid();
    c.request(C1, &alloc_req(t, 600), true)?;
    c.response(
        C1,
        &ok(ALLOCATE, t, &[Attr::Lifetime(600)]),
        &[("STUN_MALFORMED", 1)],
    )?;
    c.nothing_committed()?;
    ensure!(c.counts().pending == 2, "pending {}", c.counts());
    Ok(())
}

fn dual_allocation(c: &Ctx) -> Result<()> {
    let r6: SocketAddr = (IpAddr::V6(RELAY6), 50002).into();
    let t = new_txid();
    let request = req(
        ALLOCATE,
        t,
        &[
            Attr::RequestedTransport(17),
            Attr::AdditionalAddressFamily(Family::V6),
        ],
    );
    c.request(C1, &request, true)?;
    c.response(
        C1,
        &ok(
            ALLOCATE,
            t,
            &[
                Attr::XorRelayedAddress(R1.into()),
                Attr::XorRelayedAddress(r6),
                Attr::Lifetime(600),
            ],
        ),
        &[("LEARN_ALLOC", 1)],
    )?;
    let a = c.alloc(C1)?;
    ensure!(same_ep(&a.relay[0], &ep(R1)), "relay[0]");
    ensure!(
        maps::sockaddr(&a.relay[1]) == Some(r6),
        "relay[1] {:?}",
        maps::sockaddr(&a.relay[1])
    );
    // an IPv6 peer binds on the IPv6 relayed address, and is relayed to over IPv6
    let p6: SocketAddr = "[2001:db8:2::2]:6000".parse().unwrap();
    let t = new_txid();
    c.request(C1, &bind_req(t, 0x4006, p6), true)?;
    c.response(C1, &ok(CHANNEL_BIND, t, &[]), &[("LEARN_CHANNEL", 1)])?;
    let ch = c.p.channel(C1, SERVER_EP, 0x4006).context("v6 channel")?;
    ensure!(maps::sockaddr(&ch.relay) == Some(r6), "v6 channel relay");
    let f = to_server(C1, &channel_data(0x4006, b"to an IPv6 peer", 0, 0));
    step(c, &[("RELAYED_TO_PEER", 1)], "chan4_to_udp6", || {
        let r = c.p.xdp(&f, c.net.turn0)?;
        ensure!(r.verdict == XDP_REDIRECT, "verdict {}", r.verdict);
        ensure!(verify_udp(&r.out)? == b"to an IPv6 peer", "payload");
        Ok(())
    })?;
    // the IPv4 side works too
    c.bind(C1, 0x4001, P1)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

fn channel_lifetime_ends(c: &Ctx) -> Result<()> {
    // loaded with --channel-lifetime 2: with the 1 s margin the channel relays for about 1 s
    c.live_channel(C1, 0x4001, R1, P1)?;
    std::thread::sleep(std::time::Duration::from_millis(1300));
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
    // ChannelBind refresh brings it back
    c.bind(C1, 0x4001, P1)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

fn two_clients_one_peer(c: &Ctx) -> Result<()> {
    let r2 = SocketAddrV4::new(RELAY, 50001);
    c.allocate(C1, R1, 600)?;
    c.allocate(C2, r2, 600)?;
    c.bind(C1, 0x4001, P1)?;
    c.bind(C2, 0x4001, P1)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    c.relays_both_ways(C2, 0x4001, r2, P1)?;
    // one deallocates; the other keeps relaying
    let t = new_txid();
    c.request(C1, &refresh_req(t, 0), true)?;
    c.response(C1, &refresh_ok(t, 0), &[("LEARN_DEALLOC", 1)])?;
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.relays_both_ways(C2, 0x4001, r2, P1)
}

// ------------------------------------------------------------------------------------------
// Which channels a shortening voids. A is C1's allocation (R1, 0x4001 -> P1), B is C2's (R2,
// 0x4001 -> P2): separate allocations, so separate shards of the shortened stamp. A channel's
// validity cache is one word in each of its entries (`chans`, `peers`): a packet that finds it
// void re-checks the allocation and permission and writes it anew (a new computation time), one
// that finds it valid leaves it as it is.

const P3: SocketAddrV4 = SocketAddrV4::new(PEER, 6002);

/// The validity cache words of a binding: its client side and its peer side.
fn cache_words(
    c: &Ctx,
    client: SocketAddrV4,
    chan: u16,
    relay: SocketAddrV4,
    peer: SocketAddrV4,
) -> Result<(u64, u64)> {
    let ch =
        c.p.channel(client, SERVER_EP, chan)
            .context("client side")?;
    let pc = c.p.peer_channel(peer, relay).context("peer side")?;
    Ok((ch.cache, pc.cache))
}

/// How long a cache word says it holds from its computation, in ns (rounded down to its units).
fn cache_span_ns(word: u64) -> u64 {
    (word & ((1 << 20) - 1)) << 20
}

/// A and B, each relaying both ways (every cache word filled); their cache words.
fn a_and_b_live(c: &Ctx) -> Result<((u64, u64), (u64, u64))> {
    c.live_channel(C1, 0x4001, R1, P1)?;
    c.live_channel(C2, 0x4001, R2, P2)?;
    let a = cache_words(c, C1, 0x4001, R1, P1)?;
    let b = cache_words(c, C2, 0x4001, R2, P2)?;
    ensure!(
        a.0 != 0 && a.1 != 0 && b.0 != 0 && b.1 != 0,
        "relaying left a cache empty"
    );
    Ok((a, b))
}

/// Past the unit of the cache (2^20 ns) and a tick of the coarse clock (4 ms at HZ=250): a cache
/// written anew from here on differs from one written before.
fn next_cache_unit() {
    std::thread::sleep(std::time::Duration::from_millis(12));
}

/// `shorten` commits a shortening of A's state only; afterwards `check_a` sees A's side of it.
/// B's cached checks must still hold (B relays both ways without a re-check: its cache words
/// unchanged), and the global stamp must not have moved.
fn shortening_in_a_spares_b(
    c: &Ctx,
    shorten: impl FnOnce(&Ctx) -> Result<()>,
    check_a: impl FnOnce(&Ctx, (u64, u64)) -> Result<()>,
) -> Result<()> {
    let (a0, b0) = a_and_b_live(c)?;
    let global = c.p.shortened_ns()?;
    shorten(c).context("the shortening")?;
    next_cache_unit();
    check_a(c, a0).context("A after the shortening")?;
    c.relays_both_ways(C2, 0x4001, R2, P2)
        .context("B after the shortening")?;
    let b1 = cache_words(c, C2, 0x4001, R2, P2)?;
    ensure!(
        b1 == b0,
        "B's cached checks were voided by a shortening in A: {b0:#x?} before, {b1:#x?} after"
    );
    ensure!(c.p.shortened_ns()? == global, "the global stamp moved");
    Ok(())
}

/// A relays both ways again, after re-checking (its cache words written anew), and its cached
/// checks now end within `within_s`.
fn a_rechecked(c: &Ctx, a0: (u64, u64), within_s: u64) -> Result<()> {
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    let a1 = cache_words(c, C1, 0x4001, R1, P1)?;
    ensure!(
        a1.0 != a0.0 && a1.1 != a0.1,
        "A's cached checks survived the shortening: {a0:#x?} before, {a1:#x?} after"
    );
    for w in [a1.0, a1.1] {
        ensure!(
            cache_span_ns(w) <= within_s * 1_000_000_000,
            "A's cache holds for {} s, past the shortened {within_s} s",
            cache_span_ns(w) / 1_000_000_000
        );
    }
    Ok(())
}

/// A's client refreshes with LIFETIME `lifetime`, granted as asked; `learned`: the counter its
/// answer moves.
fn a_refreshes(c: &Ctx, lifetime: u32, learned: &str) -> Result<()> {
    let t = new_txid();
    c.request(C1, &refresh_req(t, lifetime), true)?;
    c.response(C1, &refresh_ok(t, lifetime), &[(learned, 1)])
}

/// A no longer relays, either way.
fn a_passes(c: &Ctx) -> Result<()> {
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")
}

fn permission_cut_in_a_voids_a_not_b(c: &Ctx) -> Result<()> {
    shortening_in_a_spares_b(
        c,
        |c| {
            // coturn cuts the bound peer's permission from the channel lifetime to 300 s
            let t = new_txid();
            c.request(C1, &perm_req(t, &[P1.into()]), true)?;
            c.response(C1, &ok(CREATE_PERMISSION, t, &[]), &[("LEARN_PERM", 1)])
        },
        |c, a0| a_rechecked(c, a0, 300),
    )
}

fn refresh_cut_in_a_voids_a_not_b(c: &Ctx) -> Result<()> {
    shortening_in_a_spares_b(
        c,
        |c| a_refreshes(c, 120, "LEARN_REFRESH"),
        |c, a0| a_rechecked(c, a0, 120),
    )
}

fn refresh_zero_of_a_leaves_bs_caches(c: &Ctx) -> Result<()> {
    shortening_in_a_spares_b(
        c,
        |c| a_refreshes(c, 0, "LEARN_DEALLOC"),
        |c, _| a_passes(c),
    )
}

fn mobility_answer_for_a_leaves_bs_caches(c: &Ctx) -> Result<()> {
    shortening_in_a_spares_b(
        c,
        |c| {
            // another Allocate for A's 5-tuple answered with a MOBILITY-TICKET: A is left to the
            // server from now on
            let t = new_txid();
            c.request(C1, &alloc_req(t, 600), true)?;
            let attrs = [
                Attr::XorRelayedAddress(R1.into()),
                Attr::Lifetime(600),
                Attr::XorMappedAddress(C1.into()),
                Attr::Raw {
                    typ: 0x8030,
                    value: vec![1, 2, 3, 4],
                },
            ];
            c.response(C1, &ok(ALLOCATE, t, &attrs), &[("NOT_MIRRORED", 1)])
        },
        |c, _| a_passes(c),
    )
}

fn new_allocation_replacing_a_leaves_bs_caches(c: &Ctx) -> Result<()> {
    shortening_in_a_spares_b(
        c,
        |c| {
            // A's deadline passed (its cached checks end with it), and the same 5-tuple
            // allocates again: the old allocation is replaced
            expire_allocation(c, 1)?;
            c.allocate(C1, R1, 600)
        },
        |c, _| a_passes(c),
    )
}

fn rebinding_in_a_leaves_bs_caches(c: &Ctx) -> Result<()> {
    shortening_in_a_spares_b(
        c,
        |c| c.bind(C1, 0x4001, P3),
        |c, _| {
            c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
            c.relays_both_ways(C1, 0x4001, R1, P3)
        },
    )
}

/// With --permission-lifetime 2: a CreatePermission cuts A's bound peer to 2 s (1 s with the
/// margin). A relayed a moment before, its cache good for the channel lifetime; it must stop when
/// the new permission ends, not when the cache would have.
fn permission_cut_ends_a_cached_channel(c: &Ctx) -> Result<()> {
    let (_, b0) = a_and_b_live(c)?;
    let t = new_txid();
    c.request(C1, &perm_req(t, &[P1.into()]), true)?;
    c.response(C1, &ok(CREATE_PERMISSION, t, &[]), &[("LEARN_PERM", 1)])?;
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    std::thread::sleep(std::time::Duration::from_millis(1300));
    a_passes(c)?;
    c.relays_both_ways(C2, 0x4001, R2, P2)?;
    ensure!(
        cache_words(c, C2, 0x4001, R2, P2)? == b0,
        "B's cached checks were voided"
    );
    Ok(())
}

/// The global stamp (the sweep's, the agent's on restart) still voids every allocation's cached
/// checks: state changed behind the caches' back (both allocations ended in the map, as only
/// userland does) goes on relaying from the caches until the stamp is raised, then nothing does.
fn global_stamp_voids_every_allocation(c: &Ctx) -> Result<()> {
    let (a0, b0) = a_and_b_live(c)?;
    for client in [C1, C2] {
        let k = types::tb_alloc_key {
            client: ep(client),
            server: ep(SERVER_EP),
        };
        let mut a = c.alloc(client)?;
        a.expires_ns = Deadlines::ago(1);
        c.p.skel
            .maps
            .allocs
            .update(maps::bytes_of(&k), maps::bytes_of(&a), MapFlags::ANY)?;
    }
    // positive control: the caches are what relays
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    c.relays_both_ways(C2, 0x4001, R2, P2)?;
    ensure!(
        cache_words(c, C1, 0x4001, R1, P1)? == a0 && cache_words(c, C2, 0x4001, R2, P2)? == b0,
        "a cache was rewritten without a shortening"
    );
    let before = c.p.shortened_ns()?;
    turn_bpf::pin::Globals::of(&c.p.skel.maps.data_pinned)?.raise_shortened(maps::now_ns());
    ensure!(
        c.p.shortened_ns()? > before,
        "the global stamp did not move"
    );
    a_passes(c)?;
    c.channel_data_passes(C2, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P2, R2, "PASS_EXPIRED")
}

/// A dual (IPv4 + IPv6) allocation for C1 with LIFETIME `lifetime`.
fn allocate_dual(c: &Ctx, lifetime: u32) -> Result<()> {
    let t = new_txid();
    let request = req(
        ALLOCATE,
        t,
        &[
            Attr::RequestedTransport(17),
            Attr::AdditionalAddressFamily(Family::V6),
            Attr::Lifetime(lifetime),
        ],
    );
    c.request(C1, &request, true)?;
    let r6: SocketAddr = (IpAddr::V6(RELAY6), 50002).into();
    c.response(
        C1,
        &ok(
            ALLOCATE,
            t,
            &[
                Attr::XorRelayedAddress(R1.into()),
                Attr::XorRelayedAddress(r6),
                Attr::Lifetime(lifetime),
            ],
        ),
        &[("LEARN_ALLOC", 1)],
    )
}

fn refresh_family(c: &Ctx, family: Family, asked: u32, granted: u32, want: &str) -> Result<()> {
    let t = new_txid();
    let request = req(
        REFRESH,
        t,
        &[Attr::Lifetime(asked), Attr::RequestedAddressFamily(family)],
    );
    c.request(C1, &request, true)?;
    c.response(C1, &refresh_ok(t, granted), &[(want, 1)])
}

fn dual_refresh_of_one_family_does_not_extend(c: &Ctx) -> Result<()> {
    // coturn 4.6.1: a Refresh naming IPv6 refreshes only the IPv6 relayed address; the IPv4
    // one keeps its old deadline although the response carries the new LIFETIME
    allocate_dual(c, 600)?;
    c.bind(C1, 0x4001, P1)?;
    refresh_family(c, Family::V6, 3600, 3600, "LEARN_REFRESH")?;
    expect_deadline(
        "allocation after Refresh(IPv6, 3600)",
        c.alloc(C1)?.expires_ns,
        600,
    )?;
    // the same with coturn's 0x8032 as the selector
    let t = new_txid();
    let request = req(
        REFRESH,
        t,
        &[
            Attr::Lifetime(3600),
            Attr::AdditionalAddressFamily(Family::V6),
        ],
    );
    c.request(C1, &request, true)?;
    c.response(C1, &refresh_ok(t, 3600), &[("LEARN_REFRESH", 1)])?;
    expect_deadline(
        "allocation after Refresh(0x8032 IPv6, 3600)",
        c.alloc(C1)?.expires_ns,
        600,
    )?;
    // a family-selective Refresh may shorten it
    refresh_family(c, Family::V4, 60, 60, "LEARN_REFRESH")?;
    expect_deadline(
        "allocation after Refresh(IPv4, 60)",
        c.alloc(C1)?.expires_ns,
        60,
    )?;
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    // a plain Refresh refreshes both
    let t = new_txid();
    c.request(C1, &refresh_req(t, 1200), true)?;
    c.response(C1, &refresh_ok(t, 1200), &[("LEARN_REFRESH", 1)])?;
    expect_deadline(
        "allocation after Refresh(1200)",
        c.alloc(C1)?.expires_ns,
        1200,
    )
}

fn dual_refresh_zero_of_one_family_removes_all(c: &Ctx) -> Result<()> {
    // coturn removes only the IPv6 side; removing everything here is the safe side
    allocate_dual(c, 600)?;
    c.bind(C1, 0x4001, P1)?;
    refresh_family(c, Family::V6, 0, 0, "LEARN_DEALLOC")?;
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")
}

/// Set C1's allocation deadline to `ago_s` seconds in the past.
fn expire_allocation(c: &Ctx, ago_s: u64) -> Result<()> {
    use libbpf_rs::{MapCore, MapFlags};
    let k = types::tb_alloc_key {
        client: ep(C1),
        server: ep(SERVER_EP),
    };
    let mut a = c.alloc(C1)?;
    a.expires_ns = Deadlines::ago(ago_s);
    c.p.skel
        .maps
        .allocs
        .update(maps::bytes_of(&k), maps::bytes_of(&a), MapFlags::ANY)?;
    Ok(())
}

fn dual_expired_is_not_revived(c: &Ctx) -> Result<()> {
    // once the deadline has passed, one family may be gone at the server while a Refresh
    // still succeeds for the other: no Refresh revives it (the sweep may not have run yet)
    allocate_dual(c, 600)?;
    c.bind(C1, 0x4001, P1)?;
    expire_allocation(c, 2)?;
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    let t = new_txid();
    c.request(C1, &refresh_req(t, 600), true)?;
    c.response(C1, &refresh_ok(t, 600), &[("LEARN_NO_ALLOC", 1)])?;
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")
}

fn single_refresh_naming_its_family(c: &Ctx) -> Result<()> {
    // with one relayed address, naming its family is a plain Refresh (coturn: 443 for the
    // other family, which commits nothing)
    c.allocate(C1, R1, 600)?;
    refresh_family(c, Family::V4, 3600, 3600, "LEARN_REFRESH")?;
    expect_deadline("allocation", c.alloc(C1)?.expires_ns, 3600)?;
    let t = new_txid();
    c.request(
        C1,
        &req(
            REFRESH,
            t,
            &[
                Attr::Lifetime(600),
                Attr::RequestedAddressFamily(Family::V6),
            ],
        ),
        true,
    )?;
    c.response(
        C1,
        &build_error_response(REFRESH, t, 443),
        &[("LEARN_ERROR", 1)],
    )?;
    // What a Refresh takes away is applied when it is recorded (its answer could be lost on its
    // way out): the 600 s it asked for shortened ours, and a refusal does not give it back.
    expect_deadline("allocation", c.alloc(C1)?.expires_ns, 600)?;
    // an allocation that expired here a moment before the server's own deadline is revived
    // by a Refresh the server still granted (single family: nothing else can be gone)
    expire_allocation(c, 0)?;
    let t = new_txid();
    c.request(C1, &refresh_req(t, 600), true)?;
    c.response(C1, &refresh_ok(t, 600), &[("LEARN_REFRESH", 1)])?;
    expect_deadline("revived allocation", c.alloc(C1)?.expires_ns, 600)
}

fn peer_after_integrity_commits_nothing(c: &Ctx) -> Result<()> {
    // coturn 4.6.1 binds the channel to the LAST XOR-PEER-ADDRESS, also one after
    // MESSAGE-INTEGRITY (checked): committing the first would relay to a peer the server
    // never permitted
    c.allocate(C1, R1, 600)?;
    let t = new_txid();
    let signed = bind_req(t, 0x4001, P1.into());
    let fp = signed.len() - 8;
    let mut m = signed[..fp].to_vec();
    let x = (u32::from(*P2.ip()) ^ 0x2112_A442).to_be_bytes();
    let xp = (P2.port() ^ 0x2112).to_be_bytes();
    m.extend_from_slice(&[
        0x00, 0x12, 0x00, 0x08, 0x00, 0x01, xp[0], xp[1], x[0], x[1], x[2], x[3],
    ]);
    let len = (m.len() + 8 - 20) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m.extend_from_slice(&signed[fp..]); // (stale FINGERPRINT: coturn would want it fixed)
    step(
        c,
        &[("PASS_STUN", 1), ("STUN_MALFORMED", 1)],
        "request",
        || c.p.client_sends(c.net, C1, &m),
    )?;
    // the server's answer is unmatched: nothing committed, the allocation left to the server
    c.response(
        C1,
        &ok(CHANNEL_BIND, t, &[]),
        &[("LEARN_NO_PENDING", 1), ("NOT_MIRRORED", 1)],
    )?;
    let m = c.counts();
    ensure!(
        (m.allocs, m.chans, m.peers, m.perms) == (0, 0, 0, 0),
        "committed: {m}"
    );
    c.channel_data_passes(C1, 0x4001, "PASS_NO_CHANNEL")
}

/// The cookie of a real UDP socket of this process (in the test namespace), found the way the
/// agent finds the server's: its inode from /proc/self/fd, its cookie from sock_diag.
fn cookie_of(sock: &std::net::UdpSocket) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", sock.as_raw_fd()))?;
    let inode = turn_bpf::owners::socket_inode(link.as_os_str()).context("not a socket")?;
    turn_bpf::sockdiag::udp_cookies(&[inode].into())?
        .get(&inode)
        .copied()
        .context("sock_diag does not list our socket")
}

fn responses_from_a_socket_that_is_not_the_servers_are_ignored(c: &Ctx) -> Result<()> {
    // this row runs without the harness's trust in the test run's socket: server_socks holds
    // another socket's cookie, and every test run's socket is a new one with its own cookie
    let other = std::net::UdpSocket::bind((SERVER, 0))?;
    maps::set_server_socks(&c.p.skel.maps.server_socks, &[cookie_of(&other)?])?;
    let t = new_txid();
    c.request(C1, &alloc_req(t, 600), true)?;
    c.response(C1, &alloc_ok(t, C1, R1.into(), 600), &[("TC_FOREIGN", 1)])?;
    ensure!(c.alloc(C1).is_err(), "committed from a foreign socket");
    ensure!(c.counts().pending == 1, "the request stays pending");
    // nor can it take anything away: a Refresh 0 or an error answered from it is ignored too
    c.response(C1, &refresh_ok(t, 0), &[("TC_FOREIGN", 1)])?;
    c.response(
        C1,
        &build_error_response(ALLOCATE, t, 437),
        &[("TC_FOREIGN", 1)],
    )?;
    ensure!(c.counts().pending == 1, "the request stays pending");
    let m = c.counts();
    ensure!(m.committed() == (0, 0, 0, 0), "committed: {m}");
    Ok(())
}

fn responses_from_the_servers_socket_commit(c: &Ctx) -> Result<()> {
    // this row runs with the harness's trust in the test run's socket (standing in for one of
    // the server's sockets): the same responses are committed
    c.live_channel(C1, 0x4001, R1, P1)
}

fn refresh_zero_without_a_matching_request_deallocates(c: &Ctx) -> Result<()> {
    c.live_channel(C1, 0x4001, R1, P1)?;
    // Refresh(600) and Refresh(0) under one transaction ID: a conflict, so neither answer is
    // matched; the server answers both, and its Refresh 0 still takes the allocation away.
    let t = new_txid();
    c.request(C1, &refresh_req(t, 600), true)?;
    step(
        c,
        &[("PASS_STUN", 1), ("PENDING_CONFLICT", 1)],
        "conflicting Refresh",
        || c.p.client_sends(c.net, C1, &refresh_req(t, 0)),
    )?;
    c.response(C1, &refresh_ok(t, 600), &[("LEARN_NO_PENDING", 1)])?;
    expect_deadline("unchanged", c.alloc(C1)?.expires_ns, 600)?;
    c.response(
        C1,
        &refresh_ok(t, 0),
        &[("LEARN_NO_PENDING", 1), ("LEARN_DEALLOC", 1)],
    )?;
    ensure!(c.alloc(C1).is_err(), "deallocated although unmatched");
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
    // and a Refresh 0 whose request was never seen at all
    c.live_channel(C1, 0x4002, R1, P1)?;
    c.response(
        C1,
        &refresh_ok(new_txid(), 0),
        &[("LEARN_NO_PENDING", 1), ("LEARN_DEALLOC", 1)],
    )?;
    c.channel_data_passes(C1, 0x4002, "PASS_EXPIRED")
}

fn unmatched_refresh_shortens_but_never_extends(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    // an unmatched Refresh success with a longer lifetime changes nothing ...
    c.response(
        C1,
        &refresh_ok(new_txid(), 3600),
        &[("LEARN_NO_PENDING", 1)],
    )?;
    expect_deadline(
        "after an unmatched longer Refresh",
        c.alloc(C1)?.expires_ns,
        600,
    )?;
    // ... a shorter one applies
    c.response(C1, &refresh_ok(new_txid(), 60), &[("LEARN_NO_PENDING", 1)])?;
    expect_deadline(
        "after an unmatched shorter Refresh",
        c.alloc(C1)?.expires_ns,
        60,
    )
}

fn refresh_437_removes_the_allocation(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    c.bind(C1, 0x4001, P1)?;
    let t = new_txid();
    c.request(C1, &refresh_req(t, 600), true)?;
    c.response(
        C1,
        &build_error_response(REFRESH, t, 437),
        &[("LEARN_ERROR", 1), ("LEARN_DEALLOC", 1)],
    )?;
    ensure!(
        c.alloc(C1).is_err(),
        "437: the server has no such allocation"
    );
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")
}

fn allocate_with_mobility_ticket_is_not_offloaded(c: &Ctx) -> Result<()> {
    let t = new_txid();
    c.request(C1, &alloc_req(t, 600), true)?;
    let mut attrs = vec![
        Attr::XorRelayedAddress(R1.into()),
        Attr::Lifetime(600),
        Attr::XorMappedAddress(C1.into()),
    ];
    attrs.push(Attr::Raw {
        typ: 0x8030,
        value: vec![1, 2, 3, 4],
    });
    c.response(C1, &ok(ALLOCATE, t, &attrs), &[("NOT_MIRRORED", 1)])?;
    ensure!(
        c.alloc(C1).is_err(),
        "a mobile allocation stays with the server"
    );
    Ok(())
}

fn create_permission(c: &Ctx, peer: SocketAddrV4) -> Result<()> {
    let t = new_txid();
    c.request(C1, &perm_req(t, &[peer.into()]), true)?;
    c.response(C1, &ok(CREATE_PERMISSION, t, &[]), &[("LEARN_PERM", 1)])
}

/// Loaded with --channel-lifetime 2 (the agent stops at 1 s, coturn at 2 s).
fn expired_channel_not_revived_by_permission(c: &Ctx) -> Result<()> {
    c.live_channel(C1, 0x4001, R1, P1)?;
    std::thread::sleep(std::time::Duration::from_millis(2100));
    // the channel is gone at the server too; a CreatePermission for the peer now grants a
    // permission only (coturn refreshes channels it still has, and it has none)
    create_permission(c, P1)?;
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
    expect_deadline(
        "permission",
        c.p.permission(R1, PEER).context("perm")?.expires_ns,
        300,
    )
}

/// Loaded with --channel-lifetime 2.
fn rebound_channel_number_not_revived_by_permission(c: &Ctx) -> Result<()> {
    c.allocate(C1, R1, 600)?;
    c.bind(C1, 0x4001, P1)?;
    std::thread::sleep(std::time::Duration::from_millis(2100));
    // channel 0x4001 expired everywhere; the client binds the number to another peer
    c.bind(C1, 0x4001, P2)?;
    let p2_expiry =
        c.p.channel(C1, SERVER_EP, 0x4001)
            .context("chan")?
            .chan_expires_ns;
    c.relays_both_ways(C1, 0x4001, R1, P2)?;
    // a permission for the first peer: coturn sends its datagrams as Data indications; they
    // must not reach the client as ChannelData on the number that now means P2
    create_permission(c, P1)?;
    // the rebind killed P1's side of the old binding
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
    let now =
        c.p.channel(C1, SERVER_EP, 0x4001)
            .context("chan")?
            .chan_expires_ns;
    ensure!(
        now == p2_expiry,
        "the permission for P1 moved P2's channel deadline by {:.3} s",
        (now as f64 - p2_expiry as f64) / 1e9
    );
    c.relays_both_ways(C1, 0x4001, R1, P2)
}

/// A channel number re-pointed to another peer while our copy of the old binding still lives (a
/// server whose channel ended earlier than we knew grants it): the old peer's side goes in the
/// same commit. A datagram from the first peer must not reach the client as ChannelData on the
/// number that now means the second one (the server sends it as a Data indication, or drops it).
fn rebinding_a_live_channel_number_removes_the_old_peer(c: &Ctx) -> Result<()> {
    c.live_channel(C1, 0x4001, R1, P1)?;
    let stale =
        c.p.peer_channel(P1, R1)
            .context("P1's side before the rebind")?;
    c.bind(C1, 0x4001, P2)?;
    // dead in place (the sweep deletes it): not deleted by the commit, whose own insert would
    // reuse the element under a fast path still holding it
    let dead = c.p.peer_channel(P1, R1).context("P1's side")?;
    ensure!(
        dead.chan_expires_ns == 0 && dead.cache == 0,
        "P1's side outlived the rebind"
    );
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
    c.relays_both_ways(C1, 0x4001, R1, P2)?;
    let m = c.counts();
    ensure!((m.chans, m.peers) == (1, 2), "maps {m}");
    // an entry that outlived it anyway (written back here, its cached check included) is caught
    // when its cache is refreshed: the channel number no longer names P1
    let k = types::tb_peer_key {
        peer: maps::ep(P1.into()),
        relay: maps::ep(R1.into()),
    };
    c.p.skel
        .maps
        .peers
        .update(bytes_of(&k), bytes_of(&stale), MapFlags::ANY)?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
    c.relays_both_ways(C1, 0x4001, R1, P2)
}

/// A peer bound on another channel number: the number that named it before stops relaying.
fn rebinding_a_peer_to_another_number_removes_the_old_number(c: &Ctx) -> Result<()> {
    c.live_channel(C1, 0x4001, R1, P1)?;
    c.bind(C1, 0x4002, P1)?;
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.relays_both_ways(C1, 0x4002, R1, P1)?;
    let m = c.counts();
    ensure!(
        (m.chans, m.peers) == (2, 1),
        "maps {m}: the old number's entry, dead, stays"
    );
    // refreshing a binding as it is removes nothing
    c.bind(C1, 0x4002, P1)?;
    c.relays_both_ways(C1, 0x4002, R1, P1)
}

/// Loaded with pion/turn v2.1.0's rules: a ChannelBind gives the peer's permission the
/// permission lifetime (300 s), not the channel's, and a channel relays whatever its permission
/// (pion relays ChannelData on the channel alone, both ways: allocation.go, turn.go).
fn pion_channels_outlive_their_permission(c: &Ctx) -> Result<()> {
    c.live_channel(C1, 0x4001, R1, P1)?;
    let ch = c.p.channel(C1, SERVER_EP, 0x4001).context("channel")?;
    expect_deadline("channel", ch.chan_expires_ns, 600)?;
    let perm = c.p.permission(R1, PEER).context("perm")?;
    expect_deadline("permission a ChannelBind gives", perm.expires_ns, 300)?;
    expire_permission(c, R1, P1)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)?;
    // a CreatePermission for the bound peer refreshes the permission, never the channel
    create_permission(c, P1)?;
    let after = c.p.channel(C1, SERVER_EP, 0x4001).context("channel")?;
    ensure!(
        after.chan_expires_ns == ch.chan_expires_ns,
        "a CreatePermission moved the channel's deadline"
    );
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

/// Loaded with the strict RFC 8656 rules: a ChannelBind's permission lasts the permission
/// lifetime, and a channel stops with its permission.
fn rfc8656_channels_stop_with_their_permission(c: &Ctx) -> Result<()> {
    c.live_channel(C1, 0x4001, R1, P1)?;
    let perm = c.p.permission(R1, PEER).context("perm")?;
    expect_deadline("permission a ChannelBind gives", perm.expires_ns, 300)?;
    expire_permission(c, R1, P1)?;
    c.channel_data_passes(C1, 0x4001, "PASS_EXPIRED")?;
    c.peer_data_passes(P1, R1, "PASS_EXPIRED")?;
    c.bind(C1, 0x4001, P1)?;
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

/// The largest datagram the server relays whole: under pion's rules (1600-byte buffers) a
/// ChannelData with more than 1596 bytes of data, or a peer datagram over 1600 bytes, goes to
/// the server (which drops or cuts it); one byte less takes the normal way (here on to the MTU
/// check, the lab's links being 1500 bytes). `coturn`: the same sizes are not limited.
fn size_limits(c: &Ctx, coturn: bool) -> Result<()> {
    c.live_channel(C1, 0x4001, R1, P1)?;
    let big = if coturn { "PASS_MTU" } else { "PASS_TOO_BIG" };
    for (len, want) in [(1596, "PASS_MTU"), (1597, big)] {
        let f = to_server(C1, &channel_data(0x4001, &vec![7u8; len], 0, 0));
        c.p.expect_pass(&f, c.net.turn0, want)
            .with_context(|| format!("ChannelData of {len} bytes"))?;
    }
    for (len, want) in [(1600, "PASS_MTU"), (1601, big)] {
        let f = udp4(PEER_MAC, RELAY0_MAC, P1, R1, 64, &vec![7u8; len]);
        c.p.expect_pass(&f, c.net.relay0, want)
            .with_context(|| format!("peer datagram of {len} bytes"))?;
    }
    c.relays_both_ways(C1, 0x4001, R1, P1)
}

fn pion_size_limits(c: &Ctx) -> Result<()> {
    size_limits(c, false)
}

fn coturn_size_limits(c: &Ctx) -> Result<()> {
    size_limits(c, true)
}

type Scenario = fn(&Ctx) -> Result<()>;

#[test]
fn learning_table() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let short_channels = Config {
        channel_lifetime_s: 2,
        ..Config::default()
    };
    let with_rules = |p: &turn_bpf::server_conf::profile::Profile| Config {
        rules: turn_bpf::skel::Rules::of(p),
        ..Config::default()
    };
    use turn_bpf::server_conf::profile::{PION, RFC8656};
    let rows: Vec<(&str, Scenario, Config)> = vec![
        (
            "Allocate success commits relay and lifetime",
            allocate_commits,
            Config::default(),
        ),
        (
            "ChannelBind success commits both directions + permission",
            channel_bind_commits,
            Config::default(),
        ),
        (
            "rebinding a live channel number to another peer removes the old peer's side",
            rebinding_a_live_channel_number_removes_the_old_peer,
            Config::default(),
        ),
        (
            "binding a peer on another channel number removes the old number",
            rebinding_a_peer_to_another_number_removes_the_old_number,
            Config::default(),
        ),
        (
            "pion v2.1.0: a channel outlives its permission, CreatePermission never refreshes it",
            pion_channels_outlive_their_permission,
            with_rules(&PION),
        ),
        (
            "RFC 8656 (strict): a channel stops with its permission",
            rfc8656_channels_stop_with_their_permission,
            with_rules(&RFC8656),
        ),
        (
            "pion v2.1.0: datagrams larger than its buffers go to the server",
            pion_size_limits,
            with_rules(&PION),
        ),
        (
            "coturn: the same sizes are not limited",
            coturn_size_limits,
            Config::default(),
        ),
        (
            "coturn: a Refresh below 600 s (raised to 600 s) keeps the allocation to its answer",
            short_refresh_raised_by_coturn_keeps_the_allocation,
            Config::default(),
        ),
        (
            "pion v2.1.0: a Refresh of 1 s (granted as asked) ends the allocation at once",
            short_refresh_granted_as_asked_ends_the_allocation,
            with_rules(&PION),
        ),
        (
            "pion v2.1.0: a Refresh without LIFETIME or of an hour takes the allocation to 600 s",
            refresh_without_lifetime_takes_pions_default,
            with_rules(&PION),
        ),
        (
            "coturn: a Refresh without LIFETIME or of an hour assumes nothing before its answer",
            refresh_without_lifetime_assumes_nothing_at_coturn,
            Config::default(),
        ),
        (
            "a refused ChannelBind's copy granted later commits no other request's peer",
            refused_request_copy_granted_later_commits_nothing_else,
            Config::default(),
        ),
        (
            "CreatePermission commits every XOR-PEER-ADDRESS",
            create_permission_commits,
            Config::default(),
        ),
        (
            "CreatePermission with more peers than kept leaves the allocation to the server",
            create_permission_more_peers_than_kept,
            Config::default(),
        ),
        (
            "CreatePermission on a bound peer resets its permission, never the channel",
            create_permission_on_a_bound_peer_follows_coturn,
            Config::default(),
        ),
        (
            "R1/R2 through every blind spot of the recorder commits nothing",
            blind_spots_commit_nothing,
            Config::default(),
        ),
        (
            "requests are recorded only with good checksums",
            requests_are_recorded_only_with_good_checksums,
            Config::default(),
        ),
        (
            "peers the server's static policy refuses are never mirrored",
            refused_peers_are_never_mirrored,
            Config::default(),
        ),
        (
            "an answer past the pending lifetime commits nothing",
            stale_pending_commits_nothing,
            Config::default(),
        ),
        (
            "duplicated ChannelBind, Allocate and Refresh stay offloaded",
            duplicated_requests_stay_offloaded,
            Config::default(),
        ),
        (
            "Allocate answered again (same relay) keeps channels; another relay does not",
            allocate_answered_again_keeps_its_channels,
            Config::default(),
        ),
        (
            "responses from a socket that is not the server's are ignored",
            responses_from_a_socket_that_is_not_the_servers_are_ignored,
            Config {
                trust_test_run: false,
                ..Config::default()
            },
        ),
        (
            "responses from the server's socket commit",
            responses_from_the_servers_socket_commit,
            Config::default(),
        ),
        (
            "Refresh 0 answered to an unrecorded request still deallocates",
            refresh_zero_without_a_matching_request_deallocates,
            Config::default(),
        ),
        (
            "unmatched Refresh success shortens, never extends",
            unmatched_refresh_shortens_but_never_extends,
            Config::default(),
        ),
        (
            "437 to a Refresh removes the allocation",
            refresh_437_removes_the_allocation,
            Config::default(),
        ),
        (
            "Allocate with MOBILITY-TICKET is left to the server",
            allocate_with_mobility_ticket_is_not_offloaded,
            Config::default(),
        ),
        (
            "Refresh success updates the expiry",
            refresh_updates_expiry,
            Config::default(),
        ),
        (
            "Refresh LIFETIME 0 deallocates; data then passes",
            refresh_zero_deallocates,
            Config::default(),
        ),
        (
            "a new allocation orphans the old one's channels",
            new_allocation_orphans_old_channels,
            Config::default(),
        ),
        (
            "error responses commit nothing, discard pending",
            error_responses_commit_nothing,
            Config::default(),
        ),
        (
            "unmatched transaction ID commits nothing",
            unmatched_transaction_id,
            Config::default(),
        ),
        (
            "response to another 5-tuple commits nothing",
            response_to_other_five_tuple,
            Config::default(),
        ),
        (
            "client-only packets commit nothing",
            client_only_packets,
            Config::default(),
        ),
        (
            "conflicting transaction ID commits nothing",
            conflicting_transaction_id,
            Config::default(),
        ),
        (
            "response of another method commits nothing",
            method_mismatch,
            Config::default(),
        ),
        (
            "relayed address not local: RELAY_NOT_LOCAL",
            relay_not_local,
            Config::default(),
        ),
        (
            "--external-ip mapping commits the private address",
            external_ip_mapping,
            Config::default(),
        ),
        (
            "grants for an allocation never learned: LEARN_NO_ALLOC",
            bind_without_allocation,
            Config::default(),
        ),
        (
            "Allocate success without LIFETIME/relay: malformed",
            allocate_success_missing_attributes,
            Config::default(),
        ),
        (
            "dual allocation (0x8032) commits both relays",
            dual_allocation,
            Config::default(),
        ),
        (
            "a channel stops relaying when its lifetime ends",
            channel_lifetime_ends,
            short_channels.clone(),
        ),
        (
            "a relayed address taken ends the allocation that held it",
            a_relayed_address_taken_ends_its_allocation,
            Config::default(),
        ),
        (
            "two clients bound to one peer",
            two_clients_one_peer,
            Config::default(),
        ),
        (
            "CreatePermission shortening A's bound peer voids A's cached checks, not B's",
            permission_cut_in_a_voids_a_not_b,
            Config::default(),
        ),
        (
            "a Refresh shortening A voids A's cached checks, not B's",
            refresh_cut_in_a_voids_a_not_b,
            Config::default(),
        ),
        (
            "Refresh 0 of A: A passes at once, B's cached checks hold",
            refresh_zero_of_a_leaves_bs_caches,
            Config::default(),
        ),
        (
            "a MOBILITY-TICKET answer for A: A passes at once, B's cached checks hold",
            mobility_answer_for_a_leaves_bs_caches,
            Config::default(),
        ),
        (
            "a new Allocate replacing A: A's channels pass, B's cached checks hold",
            new_allocation_replacing_a_leaves_bs_caches,
            Config::default(),
        ),
        (
            "re-pointing A's channel: the old peer passes, B's cached checks hold",
            rebinding_in_a_leaves_bs_caches,
            Config::default(),
        ),
        (
            "a permission cut to 2 s ends A's cached channel then, B relays on",
            permission_cut_ends_a_cached_channel,
            Config {
                permission_lifetime_s: 2,
                ..Config::default()
            },
        ),
        (
            "the global stamp voids every allocation's cached checks",
            global_stamp_voids_every_allocation,
            Config::default(),
        ),
        (
            "dual: Refresh naming one family never extends",
            dual_refresh_of_one_family_does_not_extend,
            Config::default(),
        ),
        (
            "dual: Refresh 0 naming one family removes all",
            dual_refresh_zero_of_one_family_removes_all,
            Config::default(),
        ),
        (
            "dual: an expired allocation is not revived",
            dual_expired_is_not_revived,
            Config::default(),
        ),
        (
            "single: Refresh naming its own family refreshes",
            single_refresh_naming_its_family,
            Config::default(),
        ),
        (
            "ChannelBind with a peer after MESSAGE-INTEGRITY",
            peer_after_integrity_commits_nothing,
            Config::default(),
        ),
        (
            "CreatePermission does not revive an expired channel",
            expired_channel_not_revived_by_permission,
            short_channels.clone(),
        ),
        (
            "CreatePermission does not revive a rebound channel",
            rebound_channel_number_not_revived_by_permission,
            short_channels.clone(),
        ),
    ];
    let net = FibNet::new("tbt-learning").unwrap();
    let _in = net.enter().unwrap();
    let n = rows.len();
    let mut failed = Vec::new();
    for (name, f, cfg) in rows {
        let local: Vec<IpAddr> = vec![SERVER.into(), RELAY.into(), RELAY6.into()];
        let p = Programs::load(&cfg, &local, &[net.turn0, net.relay0]).unwrap();
        let c = Ctx { p, net: &net };
        match f(&c) {
            Ok(()) => println!("ok    {name:<60} {}", c.counts()),
            Err(e) => {
                println!(
                    "FAIL  {name}: {e:#}\n  counters:\n{}",
                    c.p.counters().render()
                );
                failed.push(name);
            }
        }
    }
    println!(
        "{n} scenarios, {} passed, {} failed",
        n - failed.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "failed: {failed:#?}");
}
