//! The sweep: it removes what expired or what the server tore down without a response we could
//! see, and logs what was learned and what went.
//!
//! Lifetimes never depend on the sweep running on time: the fast path checks every deadline
//! itself. What the fast path cannot see is teardown the server does on its own (it is stopped or
//! restarted, an administrator cancels a session): the sweep notices that from the server's
//! sockets — once a second from the kernel's notices of destroyed sockets
//! ([`Sweeper::relays_closed`]), and in a full sweep ([`Sweeper::sweep`], as often as its cost
//! allows) from all of them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use anyhow::Result;
use libbpf_rs::{MapCore, MapFlags};
use log::{debug, warn};

use crate::batch;
use crate::maps::{self, bytes_of, from_bytes, show, sockaddr};
use crate::server::{ServerWatch, UdpTable};
use crate::skel::types::{
    tb_alloc, tb_alloc_key, tb_chan, tb_chan_key, tb_ep, tb_peer_key, tb_pending, tb_perm,
    tb_perm_key, tb_relay,
};

/// Most entries of each kind one sweep deletes: bounded work per tick.
pub const SWEEP_BUDGET: usize = 4096;

/// Every key of `map`, collected before anything is deleted: the kernel's get_next_key walk
/// restarts from the first bucket when the previous key is gone, so deleting while walking is
/// quadratic (and may visit entries twice; the list is deduplicated).
/// The walk is capped at twice the map's size, so that a map being rewritten under it cannot keep
/// it going: what it misses, the next sweep sees.
pub fn collect_keys(map: &impl MapCore) -> Vec<Vec<u8>> {
    let cap = (map.max_entries() as usize).saturating_mul(2).max(64);
    let mut keys: Vec<Vec<u8>> = map.keys().take(cap).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Delete every entry of `map`; returns how many went.
fn delete_all(map: &impl MapCore) -> usize {
    batch::entries(map)
        .iter()
        .filter(|(k, _)| map.delete(k).is_ok())
        .count()
}

/// A channel binding as the operator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
    pub relay: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub channel: u16,
}

impl Binding {
    pub fn of(c: &tb_chan) -> Self {
        Binding {
            client: sockaddr(&c.client),
            server: sockaddr(&c.server),
            relay: sockaddr(&c.relay),
            peer: sockaddr(&c.peer),
            channel: u16::from_be(c.chan),
        }
    }
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |a: &Option<SocketAddr>| a.map_or_else(|| "-".into(), |a| a.to_string());
        write!(
            f,
            "client {} peer {} relay {} channel {:#06x}",
            s(&self.client),
            s(&self.peer),
            s(&self.relay),
            self.channel
        )
    }
}

/// Every channel binding in `chans` (the client-side map).
pub fn bindings(chans: &impl MapCore) -> Vec<Binding> {
    batch::entries(chans)
        .iter()
        .map(|(_, v)| Binding::of(&from_bytes::<tb_chan>(v)))
        .collect()
}

/// The maps the sweep works on, and how it voids the fast path's cached checks after removing
/// state that had not expired (raising `tb_shortened_ns`, as a shortening commit does).
pub struct StateMaps<'a, M: MapCore> {
    pub allocs: &'a M,
    pub chans: &'a M,
    pub peers: &'a M,
    pub perms: &'a M,
    pub pending: &'a M,
    pub not_local: &'a M,
    /// Allocations by relayed address (`relays`).
    pub relays: &'a M,
    /// The allocations committed last, by ID (`recent_allocs`).
    pub recent: &'a M,
    pub raise_shortened: &'a dyn Fn(),
    /// Stamps the agent alive (`tb_alive_ns`): called every [`ALIVE_EVERY`] entries the sweep
    /// goes through, so that a long sweep does not let the stamp go stale and stop the fast
    /// path (it passes everything once the stamp is `TB_AGENT_STALE_NS` old), while a sweep
    /// stuck for good stops stamping.
    pub alive: &'a dyn Fn(),
    /// The server's sockets the snooper trusts (kept from the server watch).
    pub server_socks: &'a M,
}

/// How many entries the sweep goes through between two alive stamps. At the slowest measured
/// (the per-key walk, 1.8 s for 400 000 entries) that is under 20 ms between stamps.
pub const ALIVE_EVERY: usize = 4096;

/// Counts the entries a sweep went through and stamps the agent alive every [`ALIVE_EVERY`].
struct Progress<'a> {
    alive: &'a dyn Fn(),
    entries: usize,
}

impl Progress<'_> {
    fn tick(&mut self) {
        self.entries += 1;
        if self.entries % ALIVE_EVERY == 0 {
            (self.alive)();
        }
    }
}

/// A recorded request older than this is past any answer (twice the pending lifetime): removed.
const PENDING_KEEP_NS: u64 = 2 * crate::consts::TB_PENDING_LIFETIME_MS * 1_000_000;

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Allocations removed: expired, or ended at the server (counted in `allocs_ended` too).
    pub allocs_removed: usize,
    /// Allocations whose relay socket went away at the server.
    pub allocs_ended: usize,
    pub chans_removed: usize,
    pub perms_removed: usize,
    /// Recorded requests past any answer.
    pub pending_removed: usize,
    /// Index entries (`relays`) whose allocation is gone.
    pub relays_removed: usize,
    /// Why every binding was forgotten (the server's listening socket went away or changed).
    pub forgot_all: Option<String>,
    pub learned: Vec<Binding>,
    pub gone: Vec<Binding>,
}

/// Client-side and peer-side entries of the same binding: every field that says which binding
/// it is (not the fast path's cache and counters) is equal.
fn same_binding(a: &tb_chan, b: &tb_chan) -> bool {
    a.alloc_id == b.alloc_id
        && a.chan == b.chan
        && bytes_of(&a.client) == bytes_of(&b.client)
        && bytes_of(&a.server) == bytes_of(&b.server)
        && bytes_of(&a.relay) == bytes_of(&b.relay)
        && bytes_of(&a.peer) == bytes_of(&b.peer)
}

/// The allocation `ak` (`a`, as read) ended at the server (its relay socket at `relay` is gone):
/// removed, and the fast path's cached checks voided if it was live.
fn end_at_server<M: MapCore>(
    m: &StateMaps<'_, M>,
    ak: &tb_alloc_key,
    a: &tb_alloc,
    relay: SocketAddr,
    now: u64,
    r: &mut SweepReport,
) {
    m.allocs.delete(bytes_of(ak)).ok();
    if a.expires_ns > now {
        (m.raise_shortened)();
    }
    r.allocs_removed += 1;
    r.allocs_ended += 1;
    debug!(
        "allocation ended at the server: client {} relay {relay} (its relay socket is gone)",
        show(&ak.client)
    );
}

/// Remembers what was logged, so each binding is announced once when it comes and once when it
/// goes, and each unoffloadable relayed address is reported once; and watches the server's
/// sockets.
#[derive(Default)]
pub struct Sweeper {
    known: HashMap<Vec<u8>, Binding>,
    reported_not_local: HashSet<Vec<u8>>,
    /// The TURN server's listening sockets (none: not watched).
    server: Option<ServerWatch>,
    /// The relay socket (inode) each allocation had when first seen, by (allocation ID, relayed
    /// address index): a socket on the same address:port that replaced it belongs to another
    /// allocation.
    relay_sockets: HashMap<(u64, usize), u64>,
    /// The allocation sequence read before the previous full sweep: every commit with an ID up
    /// to it was done long ago, so an index entry of such an ID whose allocation is gone is
    /// stale.
    settled_seq: u64,
    /// The addresses of the relay sockets the notices said closed in the last [`CLOSED_KEPT`],
    /// oldest first; and by address, when each of those closes was heard, with the allocation
    /// sequence read two drains before the one that brought its notice.
    closed: std::collections::VecDeque<SocketAddr>,
    closed_at: HashMap<SocketAddr, std::collections::VecDeque<(std::time::Instant, u64)>>,
    /// The allocation sequence read before each of the last three drains of the notices, the
    /// latest last.
    drain_seqs: [u64; 3],
    /// New allocations are checked against `closed` up to this ID, and the sequence read at
    /// the last check (the next checks IDs up to it: their commits are surely done).
    checked_upto: u64,
    seq_before: u64,
    /// Whether a UDP socket receives at an address now, for a server that binds and closes a
    /// socket on a port before it relays on it (None: any other server).
    receives: Option<Box<dyn FnMut(SocketAddr) -> bool>>,
}

/// How long a closed relay socket's address is remembered: longer than an answer may wait
/// before it leaves (a neighbour's resolution: 3 s), so that an allocation committed after its
/// socket closed is still ended.
pub const CLOSED_KEPT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long after its notice a closed socket may have been the probe of an allocation committed
/// since: the server's handling of the Allocate, an answer held in a neighbour queue (about 3 s),
/// and the tick until the allocation is checked.
pub const PROBE_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);
/// Most addresses remembered: past that the oldest go (and the caller does a full sweep).
pub const CLOSED_MAX: usize = 262_144;

impl Sweeper {
    /// A sweeper that also watches the TURN server's listening sockets.
    pub fn new(server: ServerWatch) -> Sweeper {
        Sweeper {
            server: Some(server),
            ..Sweeper::default()
        }
    }

    /// For a server that binds and closes a socket on a port before it relays on it
    /// ([`crate::server_conf::profile::Profile::probes_relay_ports`]): a socket closed on a
    /// relayed address may have been the probe of the allocation there, if that allocation was
    /// committed after the drain two before the one that brought the notice (the probe closes
    /// before the allocation's answer leaves, and its notice follows within moments: one drain
    /// more is margin for a busy machine) and the notice came within [`PROBE_WINDOW`]; such
    /// an allocation ends only when no socket receives at its address any more (`receives`:
    /// whether one does now; false when that cannot be told). Any other allocation ends on the
    /// close, whatever receives there now.
    pub fn relay_ports_probed(
        mut self,
        receives: impl FnMut(SocketAddr) -> bool + 'static,
    ) -> Self {
        self.receives = Some(Box::new(receives));
        self
    }

    /// Sockets closed on `relay` (each remembered), yet the server is one that probes its relay
    /// ports, the allocation `id` there may have been probed by every one of them, and a socket
    /// receives there now: they were probes, not the allocation's socket.
    fn probe_closed(&mut self, ak: &tb_alloc_key, id: u64, relay: SocketAddr) -> bool {
        let Some(receives) = self.receives.as_mut() else {
            return false;
        };
        let probes = self.closed_at.get(&relay).is_some_and(|c| {
            c.iter()
                .all(|(at, lo)| id > *lo && at.elapsed() <= PROBE_WINDOW)
        });
        if !probes {
            return false;
        }
        let kept = receives(relay);
        if kept {
            debug!(
                "allocation kept: client {} relay {relay} (a socket on its address closed, \
                 and one receives there still: the server's probe of the port)",
                show(&ak.client)
            );
        }
        kept
    }

    /// New allocations are checked from after `alloc_seq` on (those before were committed before
    /// any notice was read: the first full sweep looks at them).
    pub fn new_allocs_from(&mut self, alloc_seq: u64) {
        self.checked_upto = alloc_seq;
        self.seq_before = alloc_seq;
        self.drain_seqs = [alloc_seq; 3];
    }

    /// The notices are about to be drained; `alloc_seq`: the allocation sequence read just
    /// before.
    pub fn draining(&mut self, alloc_seq: u64) {
        self.drain_seqs = [self.drain_seqs[1], self.drain_seqs[2], alloc_seq];
    }

    /// One of `cookies` is of a socket of the trusted server.
    pub fn trusts_any(&self, mut cookies: impl Iterator<Item = u64>) -> bool {
        self.server.as_ref().is_some_and(|w| {
            let trusted = w.trusted_cookies();
            cookies.any(|c| trusted.contains(&c))
        })
    }

    /// No TURN server is trusted now (it stopped or restarted and was not found again yet).
    pub fn waiting_for_server(&self) -> bool {
        self.server.as_ref().is_some_and(|w| !w.trusting())
    }

    /// The first relayed address of `a` whose socket is gone from `t`, if any.
    fn relay_gone(&mut self, a: &tb_alloc, t: &UdpTable) -> Option<SocketAddr> {
        for (i, relay) in a.relay.iter().enumerate() {
            let Some(addr) = sockaddr(relay) else {
                continue;
            };
            let bound = t.bound_to(addr);
            match self.relay_sockets.entry((a.id, i)) {
                std::collections::hash_map::Entry::Vacant(e) => match bound.first() {
                    Some(inode) => {
                        e.insert(*inode);
                    }
                    None => return Some(addr),
                },
                std::collections::hash_map::Entry::Occupied(e) => {
                    if !bound.contains(e.get()) {
                        return Some(addr);
                    }
                }
            }
        }
        None
    }

    /// Recorded requests past any answer (twice the pending lifetime): removed, at most
    /// [`SWEEP_BUDGET`]. Returns how many.
    fn sweep_pending<M: MapCore>(
        m: &StateMaps<'_, M>,
        now: u64,
        budget: usize,
        progress: &mut Progress<'_>,
    ) -> usize {
        let mut removed = 0;
        for (k, v) in batch::entries(m.pending).iter() {
            progress.tick();
            if removed >= budget {
                break;
            }
            let p: tb_pending = from_bytes(v);
            if p.created_ns.saturating_add(PENDING_KEEP_NS) < now {
                m.pending.delete(k).ok();
                removed += 1;
            }
        }
        removed
    }

    /// The pending table alone, between full sweeps: it must make room at the rate requests
    /// come (its size is that rate × twice the pending lifetime).
    /// `every`: how long since the last pass (the budget is [`SWEEP_BUDGET`] a second).
    pub fn pending_only<M: MapCore>(
        &mut self,
        m: &StateMaps<'_, M>,
        now: u64,
        every: std::time::Duration,
    ) -> SweepReport {
        let mut progress = Progress {
            alive: m.alive,
            entries: 0,
        };
        let budget = SWEEP_BUDGET * every.as_secs().max(1) as usize;
        SweepReport {
            pending_removed: Self::sweep_pending(m, now, budget, &mut progress),
            ..SweepReport::default()
        }
    }

    fn remember_closed(&mut self, addr: SocketAddr) {
        self.closed.push_back(addr);
        self.closed_at
            .entry(addr)
            .or_default()
            .push_back((std::time::Instant::now(), self.drain_seqs[0]));
    }

    /// Forget closed addresses older than [`CLOSED_KEPT`], and the oldest past [`CLOSED_MAX`].
    /// True when some were forgotten early (their late commits are not caught here).
    fn forget_closed(&mut self) -> bool {
        let mut early = false;
        while let Some(addr) = self.closed.front().copied() {
            // the oldest close of all is the oldest at its address
            let std::collections::hash_map::Entry::Occupied(mut at) = self.closed_at.entry(addr)
            else {
                self.closed.pop_front(); // none: both are written and forgotten together
                continue;
            };
            let full = self.closed.len() > CLOSED_MAX;
            if at
                .get()
                .front()
                .is_some_and(|(t, _)| t.elapsed() < CLOSED_KEPT)
                && !full
            {
                break;
            }
            early |= full;
            self.closed.pop_front();
            at.get_mut().pop_front();
            if at.get().is_empty() {
                at.remove();
            }
        }
        early
    }

    /// End the allocations committed since the last call whose relayed address the notices said
    /// closed in the last [`CLOSED_KEPT`] (their answer left after the server closed the socket).
    /// `alloc_seq`: the allocation sequence now; the IDs up to the one read at the last call are
    /// checked (their commits are surely done). False when that could not be done whole (more
    /// than half of `recent_allocs` committed since, or addresses forgotten early): a full sweep
    /// must look.
    pub fn new_allocs_closed<M: MapCore>(
        &mut self,
        m: &StateMaps<'_, M>,
        alloc_seq: u64,
        now: u64,
        r: &mut SweepReport,
    ) -> Result<bool> {
        let mut whole = !self.forget_closed();
        let upto = std::mem::replace(&mut self.seq_before, alloc_seq);
        let slots = crate::consts::TB_RECENT_ALLOCS;
        if upto.saturating_sub(self.checked_upto) > slots / 2 {
            whole = false;
            self.checked_upto = upto;
        }
        let first = self.checked_upto + 1;
        self.checked_upto = self.checked_upto.max(upto);
        // a slot the snooper may be rewriting while it is read (torn): not whole
        if alloc_seq.saturating_sub(first) + 1 >= slots / 2 {
            whole = false;
        }
        if self.closed_at.is_empty() {
            return Ok(whole);
        }
        for id in first..=upto {
            let slot = (id & (slots - 1)) as u32;
            let Some(v) = m.recent.lookup(&slot.to_ne_bytes(), MapFlags::ANY)? else {
                continue;
            };
            let e: tb_relay = from_bytes(&v);
            if e.alloc_id != id {
                whole = false; // overwritten already
                continue;
            }
            let key = bytes_of(&e.alloc);
            let Some(a) = m.allocs.lookup(key, MapFlags::ANY)? else {
                continue; // not committed, or gone
            };
            let a: tb_alloc = from_bytes(&a);
            if a.id != id {
                continue;
            }
            let closed: Vec<SocketAddr> = a
                .relay
                .iter()
                .filter_map(sockaddr)
                .filter(|addr| self.closed_at.contains_key(addr))
                .collect();
            if let Some(relay) = closed
                .into_iter()
                .find(|relay| !self.probe_closed(&e.alloc, id, *relay))
            {
                end_at_server(m, &e.alloc, &a, relay, now, r);
            }
        }
        Ok(whole)
    }

    /// Remove the index entries whose allocation is gone (`ids_seen`: the IDs in `allocs` as
    /// read by this sweep). Only IDs up to the sequence read before the previous sweep count:
    /// a commit writes the index before the allocation, and one under way now must not lose
    /// its entry. The removal is atomic (lookup-and-delete): an entry a new commit wrote in
    /// the meantime comes back and is put again, unless a newer one is there already.
    fn prune_relays<M: MapCore>(
        &mut self,
        m: &StateMaps<'_, M>,
        ids_seen: &HashSet<u64>,
        alloc_seq: u64,
    ) -> Result<usize> {
        let settled = std::mem::replace(&mut self.settled_seq, alloc_seq);
        let mut removed = 0;
        for (k, v) in batch::entries(m.relays).iter() {
            let r: tb_relay = from_bytes(v);
            if r.alloc_id > settled || ids_seen.contains(&r.alloc_id) {
                continue;
            }
            match m.relays.lookup_and_delete(k)? {
                Some(now) if now[..] == v[..] => removed += 1,
                // A commit wrote it meanwhile: put it back. If another commit got there in the
                // gap, that one did not see this entry (nor end the allocation it names): end
                // it here, if it still holds the address.
                Some(now) if m.relays.update(k, &now, MapFlags::NO_EXIST).is_err() => {
                    let r: tb_relay = from_bytes(&now);
                    let ak = bytes_of(&r.alloc);
                    if let Some(a) = m.allocs.lookup(ak, MapFlags::ANY)? {
                        let a: tb_alloc = from_bytes(&a);
                        if a.relay.iter().any(|e| bytes_of(e) == k) {
                            m.allocs.delete(ak).ok();
                            (m.raise_shortened)();
                        }
                    }
                }
                Some(_) => {}
                None => {}
            }
        }
        Ok(removed)
    }

    /// The kernel says these sockets were destroyed (`closed`: their local addresses; `locals`:
    /// this host's addresses, for a socket bound to a wildcard address). An allocation relaying
    /// on one of them has ended at the server: it is removed now, as a full sweep would find
    /// it (its relay socket is gone from the table). An allocation that took the address
    /// after the notice was sent is removed too: the safe side (its traffic goes to the server).
    pub fn relays_closed<M: MapCore>(
        &mut self,
        m: &StateMaps<'_, M>,
        closed: &[SocketAddr],
        locals: &[std::net::IpAddr],
        now: u64,
    ) -> Result<SweepReport> {
        let mut r = SweepReport::default();
        for addr in closed {
            if addr.port() == 0 {
                continue; // never bound: no relay socket
            }
            let candidates: Vec<SocketAddr> = if addr.ip().is_unspecified() {
                // `::` takes IPv4 too unless it is IPv6-only, which a notice does not say: both
                // (anyone may bind an IPv6-only `::` on an IPv4 relay's port and close it, and
                // so end that allocation here: it only goes to the server)
                locals
                    .iter()
                    .filter(|ip| addr.is_ipv6() || ip.is_ipv4())
                    .map(|ip| SocketAddr::new(*ip, addr.port()))
                    .collect()
            } else {
                vec![*addr]
            };
            for relay in candidates {
                self.remember_closed(relay);
                let ep = maps::ep(relay);
                let Some(v) = m.relays.lookup(bytes_of(&ep), MapFlags::ANY)? else {
                    continue;
                };
                let ir: tb_relay = from_bytes(&v);
                let key = bytes_of(&ir.alloc);
                let Some(a) = m.allocs.lookup(key, MapFlags::ANY)? else {
                    continue;
                };
                let a: tb_alloc = from_bytes(&a);
                if !a.relay.iter().any(|e| bytes_of(e) == bytes_of(&ep))
                    || self.probe_closed(&ir.alloc, a.id, relay)
                {
                    continue;
                }
                end_at_server(m, &ir.alloc, &a, relay, now, &mut r);
            }
        }
        Ok(r)
    }

    /// One sweep.
    ///
    /// `alloc_seq` is the BPF program's allocation sequence (`tb_alloc_seq`) read *before* this
    /// call, and `socks` the UDP socket table read after it (None: unreadable this time, so the
    /// server checks are skipped). Anything of an allocation with a higher ID was committed
    /// during the sweep and is left alone; an allocation with an ID up to `alloc_seq` was
    /// committed before the table was read, after its relay socket was bound, so a relay socket
    /// missing from the table really went away.
    pub fn sweep<M: MapCore>(
        &mut self,
        m: &StateMaps<'_, M>,
        now: u64,
        alloc_seq: u64,
        socks: Option<&UdpTable>,
    ) -> Result<SweepReport> {
        let mut r = SweepReport::default();
        let mut progress = Progress {
            alive: m.alive,
            entries: 0,
        };

        // The server stopped or restarted: everything learned from it is gone there. Then
        // (never before: a grant of the new server must not be wiped) its sockets are trusted.
        if let (Some(server), Some(t)) = (self.server.as_mut(), socks) {
            let w = server.check(t);
            if let Some(why) = w.forget {
                // every cached check void first: the deletions take a while at scale
                (m.raise_shortened)();
                r.allocs_removed = delete_all(m.allocs);
                let chans = delete_all(m.chans);
                r.chans_removed = chans + delete_all(m.peers);
                r.perms_removed = delete_all(m.perms);
                r.relays_removed = delete_all(m.relays);
                (m.raise_shortened)();
                warn!(
                    "the TURN server's {why}: forgetting every binding ({} allocations, {chans} \
                     channels, {} permissions); new allocations will be learned again",
                    r.allocs_removed, r.perms_removed
                );
                r.gone.extend(self.known.drain().map(|(_, b)| b));
                self.relay_sockets.clear();
                r.forgot_all = Some(why);
            }
            if let Some(cookies) = &w.trust {
                maps::set_server_socks(m.server_socks, cookies)?;
            }
            if r.forgot_all.is_some() {
                return Ok(r);
            }
        }

        // Allocations past their deadline, or whose relay socket the server closed.
        let mut live_allocs: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut ids_seen = HashSet::new();
        for (k, v) in batch::entries(m.allocs).iter() {
            progress.tick();
            let a: tb_alloc = from_bytes(v);
            ids_seen.insert(a.id);
            let key: tb_alloc_key = from_bytes(k);
            let ended = match socks {
                Some(t) if a.id <= alloc_seq => self.relay_gone(&a, t),
                _ => None,
            };
            let budget = r.allocs_removed < SWEEP_BUDGET;
            // An allocation that ended (deadline passed, or ended here: 0) stays, dead, until
            // the server surely holds it no more, so that a retransmitted Allocate is known.
            if a.keep_until_ns <= now && budget {
                m.allocs.delete(k).ok();
                r.allocs_removed += 1;
                debug!(
                    "allocation ended: client {} relay {}",
                    show(&key.client),
                    show(&a.relay[0])
                );
            } else if let Some(relay) = ended {
                // Not bounded by the budget: the server ended it, and until it is gone here the
                // fast path relays its channels (a mass teardown must not take N / budget
                // seconds to be seen).
                end_at_server(m, &key, &a, relay, now, &mut r);
            } else if a.expires_ns > now {
                live_allocs.insert(k.to_vec(), a.id);
            }
        }
        self.relay_sockets
            .retain(|(id, _), _| ids_seen.contains(id));
        r.relays_removed = self.prune_relays(m, &ids_seen, alloc_seq)?;
        let alloc_live = |client: &tb_ep, server: &tb_ep, id: u64| {
            let key = tb_alloc_key {
                client: *client,
                server: *server,
            };
            live_allocs.get(bytes_of(&key)) == Some(&id)
        };

        // Channels whose allocation went or whose own lifetime ended.
        let mut seen = HashSet::new();
        let chans = batch::entries(m.chans);
        // Client-side entries as read, and those this sweep removed: what the peer-side walk
        // below checks twins against before it asks the kernel.
        let mut chans_read: HashMap<&[u8], &[u8]> = HashMap::with_capacity(chans.len());
        let mut chans_deleted: HashSet<&[u8]> = HashSet::new();
        for (k, v) in chans.iter() {
            progress.tick();
            chans_read.insert(k, v);
            let c: tb_chan = from_bytes(v);
            // An allocation committed during the sweep is not in `live_allocs`: leave its
            // channels alone.
            let dead = c.alloc_id <= alloc_seq
                && (c.chan_expires_ns <= now || !alloc_live(&c.client, &c.server, c.alloc_id));
            if dead && r.chans_removed < SWEEP_BUDGET {
                m.chans.delete(k).ok();
                chans_deleted.insert(k);
                // Its peer-side twin, if that entry is still this binding (the peer may have
                // been bound again meanwhile, to another channel or allocation).
                let pk = tb_peer_key {
                    peer: c.peer,
                    relay: c.relay,
                };
                if let Some(pv) = m.peers.lookup(bytes_of(&pk), MapFlags::ANY)? {
                    if same_binding(&from_bytes::<tb_chan>(&pv), &c) {
                        m.peers.delete(bytes_of(&pk)).ok();
                    }
                }
                r.chans_removed += 1;
                continue;
            }
            seen.insert(k);
            if !self.known.contains_key(k) {
                let b = Binding::of(&c);
                self.known.insert(k.to_vec(), b.clone());
                r.learned.push(b);
            }
        }
        // Peer-side entries left without their client-side twin.
        for (k, v) in batch::entries(m.peers).iter() {
            progress.tick();
            if r.chans_removed >= SWEEP_BUDGET {
                break;
            }
            let c: tb_chan = from_bytes(v);
            if c.alloc_id > alloc_seq {
                continue;
            }
            let ck = tb_chan_key {
                client: c.client,
                server: c.server,
                chan: c.chan,
                pad: [0; 2],
            };
            let ck = bytes_of(&ck);
            let read_twin = !chans_deleted.contains(ck)
                && chans_read
                    .get(ck)
                    .is_some_and(|t| same_binding(&from_bytes::<tb_chan>(t), &c));
            // Not among the entries read (or removed since): the twin may have been committed
            // after the read, so the kernel is asked.
            let twin = read_twin
                || m.chans
                    .lookup(ck, MapFlags::ANY)?
                    .is_some_and(|t| same_binding(&from_bytes::<tb_chan>(&t), &c));
            if !twin {
                m.peers.delete(k).ok();
                r.chans_removed += 1;
            }
        }
        let gone: Vec<Vec<u8>> = self
            .known
            .keys()
            .filter(|k| !seen.contains(&k[..]))
            .cloned()
            .collect();
        for k in gone {
            if let Some(b) = self.known.remove(&k) {
                r.gone.push(b);
            }
        }

        // Permissions of allocations that went, or past their deadline.
        let live_ids: HashSet<u64> = live_allocs.values().copied().collect();
        for (k, v) in batch::entries(m.perms).iter() {
            progress.tick();
            if r.perms_removed >= SWEEP_BUDGET {
                break;
            }
            let p: tb_perm = from_bytes(v);
            if p.alloc_id <= alloc_seq && (p.expires_ns <= now || !live_ids.contains(&p.alloc_id)) {
                let _: tb_perm_key = from_bytes(k);
                m.perms.delete(k).ok();
                r.perms_removed += 1;
            }
        }

        r.pending_removed = Self::sweep_pending(m, now, SWEEP_BUDGET, &mut progress);

        // Relayed addresses we could not offload: say so once each.
        for (k, _) in batch::entries(m.not_local).iter() {
            if !self.reported_not_local.contains(k) {
                self.reported_not_local.insert(k.to_vec());
                let e: tb_ep = from_bytes(k);
                warn!(
                    "relayed address {} is not local and not mapped by --external-ip: its \
                     allocations stay with the server",
                    sockaddr(&e).map_or_else(|| "?".into(), |a| a.ip().to_string())
                );
            }
        }

        for b in &r.learned {
            debug!("channel learned: {b}");
        }
        for b in &r.gone {
            debug!("channel gone: {b}");
        }
        if r.allocs_removed + r.chans_removed + r.perms_removed > 0 {
            debug!(
                "sweep removed {} allocations ({} ended at the server), {} channel entries, {} \
                 permissions",
                r.allocs_removed, r.allocs_ended, r.chans_removed, r.perms_removed
            );
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{ep, ep_ip};
    use crate::server::tests::{FakeInfo, FakeProc, COOKIE};
    use crate::server::{ServerName, UdpSock};
    use crate::skel::types::tb_pending_key;
    use std::net::IpAddr;

    fn sock(addr: &str, inode: u64) -> UdpSock {
        UdpSock::unconnected(addr.parse().unwrap(), 0, inode)
    }

    /// Real BPF hash maps shaped like the program's, for the sweep (needs root: skipped
    /// without it).
    struct Maps {
        allocs: libbpf_rs::MapHandle,
        chans: libbpf_rs::MapHandle,
        peers: libbpf_rs::MapHandle,
        perms: libbpf_rs::MapHandle,
        pending: libbpf_rs::MapHandle,
        not_local: libbpf_rs::MapHandle,
        server_socks: libbpf_rs::MapHandle,
        relays: libbpf_rs::MapHandle,
        recent: libbpf_rs::MapHandle,
    }

    impl Maps {
        fn new(max: u32) -> Option<Maps> {
            use std::mem::size_of;
            if !nix::unistd::geteuid().is_root() {
                eprintln!("skipped: creating BPF maps needs root");
                return None;
            }
            let opts = libbpf_sys::bpf_map_create_opts {
                sz: size_of::<libbpf_sys::bpf_map_create_opts>() as _,
                ..Default::default()
            };
            let sized = |k: usize, v: usize, max: u32| {
                libbpf_rs::MapHandle::create(
                    libbpf_rs::MapType::Hash,
                    None::<&str>,
                    k as u32,
                    v as u32,
                    max,
                    &opts,
                )
                .expect("creating a hash map")
            };
            let hash = |k: usize, v: usize| sized(k, v, max);
            Some(Maps {
                allocs: hash(size_of::<tb_alloc_key>(), size_of::<tb_alloc>()),
                chans: hash(size_of::<tb_chan_key>(), size_of::<tb_chan>()),
                peers: hash(size_of::<tb_peer_key>(), size_of::<tb_chan>()),
                perms: hash(size_of::<tb_perm_key>(), size_of::<tb_perm>()),
                pending: hash(size_of::<tb_pending_key>(), size_of::<tb_pending>()),
                not_local: hash(size_of::<tb_ep>(), 8),
                server_socks: hash(8, 4),
                relays: sized(size_of::<tb_ep>(), size_of::<tb_relay>(), 2 * max),
                recent: libbpf_rs::MapHandle::create(
                    libbpf_rs::MapType::Array,
                    None::<&str>,
                    4,
                    size_of::<tb_relay>() as u32,
                    crate::consts::TB_RECENT_ALLOCS as u32,
                    &opts,
                )
                .expect("creating an array map"),
            })
        }

        fn state(&self) -> StateMaps<'_, libbpf_rs::MapHandle> {
            StateMaps {
                allocs: &self.allocs,
                chans: &self.chans,
                peers: &self.peers,
                perms: &self.perms,
                pending: &self.pending,
                not_local: &self.not_local,
                relays: &self.relays,
                recent: &self.recent,
                raise_shortened: &|| {},
                alive: &|| {},
                server_socks: &self.server_socks,
            }
        }

        /// Index allocation `ak` (`a`) by its relayed addresses, as the commit does.
        fn index(&self, ak: &tb_alloc_key, a: &tb_alloc) {
            for relay in a.relay.iter().filter(|e| e.family != 0) {
                let r = tb_relay {
                    alloc: *ak,
                    alloc_id: a.id,
                };
                Self::put(&self.relays, relay, &r);
            }
        }

        /// The cookies in `server_socks`, sorted.
        fn trusted(&self) -> Vec<u64> {
            let mut v: Vec<u64> = self
                .server_socks
                .keys()
                .map(|k| u64::from_ne_bytes(k[..].try_into().unwrap()))
                .collect();
            v.sort_unstable();
            v
        }

        fn counts(&self) -> (usize, usize, usize, usize) {
            (
                self.allocs.keys().count(),
                self.chans.keys().count(),
                self.peers.keys().count(),
                self.perms.keys().count(),
            )
        }

        /// Writes the commit of allocation `ak` with ID `id` into the ring, as the snooper does.
        fn recent_commit(&self, ak: &tb_alloc_key, id: u64) {
            let slot = (id % crate::consts::TB_RECENT_ALLOCS) as u32;
            let r = tb_relay {
                alloc: *ak,
                alloc_id: id,
            };
            Maps::put(&self.recent, &slot, &r);
        }

        fn put<K: Copy, V: Copy>(map: &libbpf_rs::MapHandle, k: &K, v: &V) {
            map.update(bytes_of(k), bytes_of(v), MapFlags::ANY)
                .expect("map update");
        }

        /// An allocation of client `192.0.2.<n>:5000`, relayed at `relay`.
        fn alloc(&self, n: u8, relay: &str, id: u64, expires_ns: u64) -> tb_alloc_key {
            let k = tb_alloc_key {
                client: ep(SocketAddr::from(([192, 0, 2, n], 5000))),
                server: ep(SERVER.parse().unwrap()),
            };
            let mut a = tb_alloc {
                id,
                expires_ns,
                keep_until_ns: expires_ns,
                ..Default::default()
            };
            a.relay[0] = ep(relay.parse().unwrap());
            self.index(&k, &a);
            Self::put(&self.allocs, &k, &a);
            k
        }

        /// Allocation number `i` of many (client 10.x.y.z:5000, ID i + 1), relayed at `relay`.
        fn nth_alloc(&self, i: usize, relay: Option<SocketAddr>, expires_ns: u64) -> tb_alloc_key {
            let k = tb_alloc_key {
                client: ep(SocketAddr::from((
                    [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                    5000,
                ))),
                server: ep(SERVER.parse().unwrap()),
            };
            let mut a = tb_alloc {
                id: i as u64 + 1,
                expires_ns,
                keep_until_ns: expires_ns,
                ..Default::default()
            };
            if let Some(relay) = relay {
                a.relay[0] = ep(relay);
            }
            self.index(&k, &a);
            Self::put(&self.allocs, &k, &a);
            k
        }

        /// A channel (both sides) and its permission, for allocation `ak` (`id`, `relay`).
        fn chan(&self, ak: &tb_alloc_key, id: u64, relay: &str, peer: &str, chan: u16) -> tb_chan {
            let c = tb_chan {
                client: ak.client,
                server: ak.server,
                relay: ep(relay.parse().unwrap()),
                peer: ep(peer.parse().unwrap()),
                chan: chan.to_be(),
                alloc_id: id,
                chan_expires_ns: FAR,
                ..Default::default()
            };
            self.put_chan(&c);
            let pk = tb_perm_key {
                relay: c.relay,
                peer: ep_ip(c.peer_ip()),
            };
            let pv = tb_perm {
                alloc_id: id,
                expires_ns: FAR,
                epoch: 0,
            };
            Self::put(&self.perms, &pk, &pv);
            c
        }

        fn put_chan(&self, c: &tb_chan) {
            Self::put(&self.chans, &chan_key(c), c);
            Self::put(&self.peers, &peer_key(c), c);
        }
    }

    trait PeerIp {
        fn peer_ip(&self) -> IpAddr;
    }
    impl PeerIp for tb_chan {
        fn peer_ip(&self) -> IpAddr {
            sockaddr(&self.peer).unwrap().ip()
        }
    }

    fn chan_key(c: &tb_chan) -> tb_chan_key {
        tb_chan_key {
            client: c.client,
            server: c.server,
            chan: c.chan,
            pad: [0; 2],
        }
    }

    fn peer_key(c: &tb_chan) -> tb_peer_key {
        tb_peer_key {
            peer: c.peer,
            relay: c.relay,
        }
    }

    const SERVER: &str = "192.0.2.1:3478";
    const NOW: u64 = 1_000_000_000_000;
    const FAR: u64 = u64::MAX / 2;

    /// A watch on the server of `t` (listening socket inode 1, held by pid 100 in a fake /proc).
    fn watch(p: &FakeProc, t: &UdpTable) -> ServerWatch {
        p.process(100, "turnserver", "/usr/bin/turnserver", &[1]);
        let info = Box::new(FakeInfo(p.procfs()));
        ServerWatch::start(&[3478], ServerName::Owner, t, info).unwrap()
    }

    fn relays(addrs: &[(&str, u64)]) -> UdpTable {
        UdpTable::from_sockets(
            std::iter::once(sock(SERVER, 1)).chain(addrs.iter().map(|(a, i)| sock(a, *i))),
        )
    }

    #[test]
    fn sweep_leaves_state_of_allocations_committed_during_it_alone() {
        let Some(m) = Maps::new(64) else { return };
        // A channel and permission of allocation 5, which the sweep's scan did not see (it was
        // committed after the allocations were read).
        let ak = tb_alloc_key {
            client: ep("192.0.2.2:5000".parse().unwrap()),
            server: ep(SERVER.parse().unwrap()),
        };
        m.chan(&ak, 5, "198.51.100.1:50000", "198.51.100.2:7000", 0x4000);
        let mut s = Sweeper::default();
        let r = s.sweep(&m.state(), NOW, 4, None).unwrap();
        assert_eq!((r.chans_removed, r.perms_removed), (0, 0));
        assert_eq!(
            m.counts(),
            (0, 1, 1, 1),
            "allocation 5 is newer than the sequence read"
        );
        // Once the sequence covers it, its allocation's absence means it is gone.
        let r = s.sweep(&m.state(), NOW, 5, None).unwrap();
        assert_eq!((r.chans_removed, r.perms_removed), (1, 1));
        assert_eq!(m.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn sweep_keeps_the_peer_entry_of_another_binding() {
        let Some(m) = Maps::new(64) else { return };
        let relay = "198.51.100.1:50000";
        let ak = m.alloc(2, relay, 1, FAR);
        // Channel 0x4000 to the peer expired; the same allocation bound the peer again on 0x4001,
        // which overwrote the peer-side entry.
        let mut old = m.chan(&ak, 1, relay, "198.51.100.2:7000", 0x4000);
        old.chan_expires_ns = NOW - 1;
        m.put_chan(&old);
        let new = m.chan(&ak, 1, relay, "198.51.100.2:7000", 0x4001);
        assert_eq!(m.counts(), (1, 2, 1, 1));
        let r = Sweeper::default().sweep(&m.state(), NOW, 1, None).unwrap();
        assert_eq!(r.chans_removed, 1, "only the old client-side entry");
        assert_eq!(m.counts(), (1, 1, 1, 1));
        let pv = m
            .peers
            .lookup(bytes_of(&peer_key(&new)), MapFlags::ANY)
            .unwrap()
            .expect("the peer entry of channel 0x4001 stays");
        assert_eq!(u16::from_be(from_bytes::<tb_chan>(&pv).chan), 0x4001);
        // When that one ends too, both of its entries go.
        let mut gone = new;
        gone.chan_expires_ns = NOW - 1;
        m.put_chan(&gone);
        Sweeper::default().sweep(&m.state(), NOW, 1, None).unwrap();
        assert_eq!(m.counts(), (1, 0, 0, 1));
    }

    #[test]
    fn sweep_ends_allocations_whose_relay_socket_went_away() {
        let Some(m) = Maps::new(64) else { return };
        let a1 = m.alloc(2, "198.51.100.1:50001", 1, FAR);
        let a2 = m.alloc(3, "198.51.100.1:50002", 2, FAR);
        let a3 = m.alloc(4, "198.51.100.1:50003", 3, FAR);
        let a4 = m.alloc(5, "198.51.100.1:50004", 4, FAR);
        m.chan(&a1, 1, "198.51.100.1:50001", "198.51.100.2:7001", 0x4000);
        m.chan(&a2, 2, "198.51.100.1:50002", "198.51.100.2:7002", 0x4000);
        m.chan(&a3, 3, "198.51.100.1:50003", "198.51.100.2:7003", 0x4000);
        m.chan(&a4, 4, "198.51.100.1:50004", "198.51.100.2:7004", 0x4000);
        let p = FakeProc::new("sweep-relays");
        let mut s = Sweeper::new(watch(&p, &relays(&[])));
        // 1 has its socket, 2 a wildcard one, 3 none, 4 none but is newer than the sequence.
        let t = relays(&[("198.51.100.1:50001", 101), ("0.0.0.0:50002", 102)]);
        let r = s.sweep(&m.state(), NOW, 3, Some(&t)).unwrap();
        assert_eq!((r.allocs_removed, r.allocs_ended), (1, 1));
        assert_eq!((r.chans_removed, r.perms_removed), (1, 1));
        assert_eq!(m.counts(), (3, 3, 3, 3));
        assert!(m
            .allocs
            .lookup(bytes_of(&a3), MapFlags::ANY)
            .unwrap()
            .is_none());
        // Next time 4 is covered by the sequence and goes too; 1's socket was replaced by
        // another one on the same address (another allocation's): 1 ended as well.
        let t = relays(&[("198.51.100.1:50001", 201), ("0.0.0.0:50002", 102)]);
        let r = s.sweep(&m.state(), NOW, 4, Some(&t)).unwrap();
        assert_eq!((r.allocs_removed, r.allocs_ended), (2, 2));
        assert_eq!(m.counts(), (1, 1, 1, 1));
        assert!(m
            .allocs
            .lookup(bytes_of(&a2), MapFlags::ANY)
            .unwrap()
            .is_some());
        // Without a socket table nothing is judged.
        let r = s.sweep(&m.state(), NOW, 4, None).unwrap();
        assert_eq!(r.allocs_removed, 0);
    }

    /// A destroyed relay socket ends its allocation at once, found through the index: by exact
    /// address, or for a socket bound to a wildcard address by each local address; nothing
    /// else goes, and the fast path's cached checks are voided for a live one.
    #[test]
    fn a_destroyed_relay_socket_ends_its_allocation() {
        let Some(m) = Maps::new(64) else { return };
        let a1 = m.alloc(2, "198.51.100.1:50001", 1, FAR);
        let a2 = m.alloc(3, "198.51.100.1:50002", 2, FAR);
        let a3 = m.alloc(4, "198.51.100.1:50003", 3, FAR);
        let a4 = m.alloc(5, "198.51.100.1:50004", 4, 0); // ended here, kept for a while
        let raised = std::cell::Cell::new(0);
        let raise = || raised.set(raised.get() + 1);
        let state = StateMaps {
            raise_shortened: &raise,
            ..m.state()
        };
        let mut s = Sweeper::default();
        let locals: Vec<IpAddr> = vec!["198.51.100.1".parse().unwrap(), "::1".parse().unwrap()];
        let gone = |k: &tb_alloc_key| {
            m.allocs
                .lookup(bytes_of(k), MapFlags::ANY)
                .unwrap()
                .is_none()
        };
        // other sockets: another address, another port, a port on no allocation
        let closed: Vec<SocketAddr> = ["198.51.100.9:50001", "198.51.100.1:40000", "[::1]:50001"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        let r = s.relays_closed(&state, &closed, &locals, NOW).unwrap();
        assert_eq!((r.allocs_removed, raised.get()), (0, 0));
        // exact
        let r = s
            .relays_closed(
                &state,
                &["198.51.100.1:50001".parse().unwrap()],
                &locals,
                NOW,
            )
            .unwrap();
        assert_eq!((r.allocs_removed, r.allocs_ended, raised.get()), (1, 1, 1));
        assert!(gone(&a1) && !gone(&a2) && !gone(&a3));
        // a socket never bound (port 0) is nobody's relay
        let closed: Vec<SocketAddr> = ["0.0.0.0:0", "198.51.100.1:0", "[::]:0"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        let r = s.relays_closed(&state, &closed, &locals, NOW).unwrap();
        assert_eq!((r.allocs_removed, raised.get()), (0, 1));
        // wildcards: IPv4, and IPv6 (which takes IPv4 too unless IPv6-only: the safe side)
        let closed: Vec<SocketAddr> = ["0.0.0.0:50002", "[::]:50003"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        let r = s.relays_closed(&state, &closed, &locals, NOW).unwrap();
        assert_eq!((r.allocs_removed, raised.get()), (2, 3));
        assert!(gone(&a2) && gone(&a3));
        // an allocation that ended here goes too, without voiding anything
        let r = s
            .relays_closed(
                &state,
                &["198.51.100.1:50004".parse().unwrap()],
                &locals,
                NOW,
            )
            .unwrap();
        assert_eq!((r.allocs_removed, raised.get()), (1, 3));
        assert!(gone(&a4));
        // a stale index entry (its address now another allocation's, not indexed here) ends
        // nothing
        let a5 = m.alloc(6, "198.51.100.1:50005", 5, FAR);
        let stale = tb_relay {
            alloc: a5,
            alloc_id: 5,
        };
        Maps::put(
            &m.relays,
            &ep("198.51.100.1:50006".parse().unwrap()),
            &stale,
        );
        let r = s
            .relays_closed(
                &state,
                &["198.51.100.1:50006".parse().unwrap()],
                &locals,
                NOW,
            )
            .unwrap();
        assert_eq!(r.allocs_removed, 0);
        assert!(!gone(&a5));
    }

    /// An allocation committed after the notice of its relay socket's close (its answer held
    /// back on the way out) is ended at the next check of new allocations; one on another
    /// address is not; and the check says when it could not see every new allocation.
    #[test]
    fn an_allocation_committed_after_its_socket_closed_is_ended() {
        let Some(m) = Maps::new(64) else { return };
        let state = m.state();
        let mut s = Sweeper::default();
        let recent = |ak: &tb_alloc_key, id: u64| m.recent_commit(ak, id);
        let a1 = m.alloc(2, "198.51.100.1:50001", 1, FAR);
        recent(&a1, 1);
        // the socket of 198.51.100.1:50002 closes before its allocation is committed
        let closed = ["198.51.100.1:50002".parse().unwrap()];
        let r = s.relays_closed(&state, &closed, &[], NOW).unwrap();
        assert_eq!(r.allocs_removed, 0, "nothing to end yet");
        let a2 = m.alloc(3, "198.51.100.1:50002", 2, FAR);
        recent(&a2, 2);
        let mut r = SweepReport::default();
        // the first check only reads the sequence: commits up to it may be under way
        assert!(s.new_allocs_closed(&state, 2, NOW, &mut r).unwrap());
        assert_eq!(r.allocs_removed, 0);
        assert!(s.new_allocs_closed(&state, 2, NOW, &mut r).unwrap());
        assert_eq!((r.allocs_removed, r.allocs_ended), (1, 1));
        let live = |k: &tb_alloc_key| {
            m.allocs
                .lookup(bytes_of(k), MapFlags::ANY)
                .unwrap()
                .is_some()
        };
        assert!(live(&a1) && !live(&a2));
        // a slot overwritten before it was read: not whole
        let a3 = m.alloc(4, "198.51.100.1:50003", 3, FAR);
        recent(&a3, 3 + crate::consts::TB_RECENT_ALLOCS);
        assert!(s.new_allocs_closed(&state, 3, NOW, &mut r).unwrap());
        assert!(!s.new_allocs_closed(&state, 3, NOW, &mut r).unwrap());
        // nor when more than half the slots were committed since: those to read may be
        // rewritten while they are read, and then they are past
        let far = 3 + crate::consts::TB_RECENT_ALLOCS;
        assert!(!s.new_allocs_closed(&state, far, NOW, &mut r).unwrap());
        assert!(!s.new_allocs_closed(&state, far, NOW, &mut r).unwrap());
        assert!(s.new_allocs_closed(&state, far, NOW, &mut r).unwrap());
    }

    /// Beside a server that probes its relay ports, a closed socket on a relayed address ends
    /// the allocation only when nothing receives there any more: through the index (the
    /// notice read after the commit) and through the check of new allocations (read before);
    /// beside any other server every such close ends it.
    #[test]
    fn a_probed_port_ends_an_allocation_only_when_nothing_receives_there() {
        let Some(m) = Maps::new(64) else { return };
        let state = m.state();
        let receiving: std::rc::Rc<std::cell::RefCell<Vec<SocketAddr>>> = Default::default();
        let asked: std::rc::Rc<std::cell::RefCell<Vec<SocketAddr>>> = Default::default();
        let (r2, a2) = (receiving.clone(), asked.clone());
        let mut s = Sweeper::default().relay_ports_probed(move |at| {
            a2.borrow_mut().push(at);
            r2.borrow().contains(&at)
        });
        let live = |k: &tb_alloc_key| {
            m.allocs
                .lookup(bytes_of(k), MapFlags::ANY)
                .unwrap()
                .is_some()
        };
        let recent = |ak: &tb_alloc_key, id: u64| m.recent_commit(ak, id);
        let at = |a: &str| -> SocketAddr { a.parse().unwrap() };
        // committed, then the probe's notice read; the relay socket receives there
        let a1 = m.alloc(2, "198.51.100.1:50002", 1, FAR);
        recent(&a1, 1);
        receiving.borrow_mut().push(at("198.51.100.1:50002"));
        let r = s
            .relays_closed(&state, &[at("198.51.100.1:50002")], &[], NOW)
            .unwrap();
        assert_eq!(r.allocs_removed, 0);
        assert!(live(&a1));
        assert_eq!(asked.borrow().as_slice(), &[at("198.51.100.1:50002")]);
        // the probe's notice read first, the allocation committed after
        let r = s
            .relays_closed(&state, &[at("198.51.100.1:50004")], &[], NOW)
            .unwrap();
        assert_eq!(r.allocs_removed, 0, "nothing to end yet");
        let a2 = m.alloc(3, "198.51.100.1:50004", 2, FAR);
        recent(&a2, 2);
        receiving.borrow_mut().push(at("198.51.100.1:50004"));
        let mut r = SweepReport::default();
        assert!(s.new_allocs_closed(&state, 2, NOW, &mut r).unwrap());
        assert!(s.new_allocs_closed(&state, 2, NOW, &mut r).unwrap());
        assert_eq!(r.allocs_removed, 0);
        assert!(live(&a1) && live(&a2));
        assert_eq!(
            asked.borrow().last(),
            Some(&at("198.51.100.1:50004")),
            "the check of new allocations asked"
        );
        // the relay socket itself closes: nothing receives there, the allocation ends
        receiving.borrow_mut().clear();
        let r = s
            .relays_closed(&state, &[at("198.51.100.1:50002")], &[], NOW)
            .unwrap();
        assert_eq!((r.allocs_removed, r.allocs_ended), (1, 1));
        assert!(!live(&a1) && live(&a2));
        // committed after its socket closed, and nothing receives there: ended at the check
        let r = s
            .relays_closed(&state, &[at("198.51.100.1:50006")], &[], NOW)
            .unwrap();
        assert_eq!(r.allocs_removed, 0);
        let a3 = m.alloc(4, "198.51.100.1:50006", 3, FAR);
        recent(&a3, 3);
        let mut r = SweepReport::default();
        assert!(s.new_allocs_closed(&state, 3, NOW, &mut r).unwrap());
        assert!(s.new_allocs_closed(&state, 3, NOW, &mut r).unwrap());
        assert_eq!((r.allocs_removed, r.allocs_ended), (1, 1));
        assert!(!live(&a3) && live(&a2));
        // an allocation committed before the drain two before the close's was live before the
        // probe could have been made: the close is its socket's, whatever receives there now
        s.draining(3);
        s.draining(4);
        s.draining(5);
        let a4 = m.alloc(5, "198.51.100.1:50008", 3, FAR);
        recent(&a4, 3);
        receiving.borrow_mut().push(at("198.51.100.1:50008"));
        let n = asked.borrow().len();
        let r = s
            .relays_closed(&state, &[at("198.51.100.1:50008")], &[], NOW)
            .unwrap();
        assert_eq!((r.allocs_removed, r.allocs_ended), (1, 1));
        assert!(!live(&a4));
        assert_eq!(asked.borrow().len(), n, "not even asked");
        // any other server: a close on the address ends it, whatever receives there now
        receiving.borrow_mut().push(at("198.51.100.1:50004"));
        let mut strict = Sweeper::default();
        let r = strict
            .relays_closed(&state, &[at("198.51.100.1:50004")], &[], NOW)
            .unwrap();
        assert_eq!(r.allocs_removed, 1);
        assert!(!live(&a2));
    }

    /// The full sweep removes index entries whose allocation is gone, once their commit is
    /// surely done (an ID up to the sequence read before the previous sweep), and keeps the
    /// live ones.
    #[test]
    fn the_sweep_prunes_the_index_of_allocations_gone() {
        let Some(m) = Maps::new(64) else { return };
        let a1 = m.alloc(2, "198.51.100.1:50001", 1, FAR);
        m.alloc(3, "198.51.100.1:50002", 2, FAR);
        m.allocs.delete(bytes_of(&a1)).unwrap();
        // an entry of a commit under way: ID 3, not in allocs yet
        let a3 = tb_alloc_key {
            client: ep("192.0.2.9:5000".parse().unwrap()),
            server: ep(SERVER.parse().unwrap()),
        };
        let under_way = tb_relay {
            alloc: a3,
            alloc_id: 3,
        };
        Maps::put(
            &m.relays,
            &ep("198.51.100.1:50003".parse().unwrap()),
            &under_way,
        );
        let mut s = Sweeper::default();
        let indexed = || m.relays.keys().count();
        // the first sweep has no earlier sequence to go by: nothing removed
        let r = s.sweep(&m.state(), NOW, 3, None).unwrap();
        assert_eq!((r.relays_removed, indexed()), (0, 3));
        // the next: 1 is gone, 2 is live, 3 is still not in allocs but its commit is done
        let r = s.sweep(&m.state(), NOW, 3, None).unwrap();
        assert_eq!((r.relays_removed, indexed()), (2, 1));
        assert!(m
            .relays
            .lookup(
                bytes_of(&ep("198.51.100.1:50002".parse().unwrap())),
                MapFlags::ANY
            )
            .unwrap()
            .is_some());
    }

    /// A mass teardown at the server is seen in one sweep: allocations whose relay socket went
    /// away are not held back by the budget (until removed here, their channels relay on).
    #[test]
    fn a_mass_teardown_at_the_server_is_not_held_back_by_the_budget() {
        const N: usize = SWEEP_BUDGET + 100;
        let Some(m) = Maps::new(2 * N as u32) else {
            return;
        };
        for i in 0..N {
            let relay = SocketAddr::from(([198, 51, 100, 1], 20000 + i as u16));
            m.nth_alloc(i, Some(relay), FAR);
        }
        let p = FakeProc::new("sweep-teardown");
        let mut s = Sweeper::new(watch(&p, &relays(&[])));
        // every relay socket gone at once
        let r = s
            .sweep(&m.state(), NOW, u64::MAX, Some(&relays(&[])))
            .unwrap();
        assert_eq!((r.allocs_removed, r.allocs_ended), (N, N));
        assert_eq!(m.counts().0, 0);
    }

    #[test]
    fn sweep_forgets_everything_when_the_server_goes_or_restarts() {
        let Some(m) = Maps::new(64) else { return };
        let relay = "198.51.100.1:50001";
        let fill = || {
            let ak = m.alloc(2, relay, 1, FAR);
            m.chan(&ak, 1, relay, "198.51.100.2:7001", 0x4000);
        };
        fill();
        let t = relays(&[(relay, 101)]);
        let p = FakeProc::new("sweep-forget");
        let mut s = Sweeper::new(watch(&p, &t));
        let r = s.sweep(&m.state(), NOW, 1, Some(&t)).unwrap();
        assert_eq!((r.forgot_all.as_deref(), r.learned.len()), (None, 1));
        // Another process's socket on the TURN port comes and goes: nothing is forgotten.
        p.process(200, "squatter", "/usr/bin/python3", &[7]);
        let squat = relays(&[(relay, 101), ("127.0.0.1:3478", 7)]);
        for t in [&squat, &t, &squat, &t] {
            let r = s.sweep(&m.state(), NOW, 1, Some(t)).unwrap();
            assert_eq!(r.forgot_all, None);
        }
        assert_eq!(m.counts(), (1, 1, 1, 1));
        // Restarted: another listening socket of another process of the same program and user,
        // the relay sockets gone. Its socket is trusted once everything was forgotten.
        m.server_socks
            .update(
                &(1 + COOKIE).to_ne_bytes(),
                &1u32.to_ne_bytes(),
                MapFlags::ANY,
            )
            .unwrap();
        std::fs::remove_dir_all(p.root.join("100")).unwrap();
        p.process(101, "turnserver", "/usr/bin/turnserver", &[2]);
        let t = UdpTable::from_sockets([sock(SERVER, 2)]);
        let r = s.sweep(&m.state(), NOW, 1, Some(&t)).unwrap();
        assert_eq!(
            r.forgot_all.as_deref(),
            Some("socket on port 3478 changed (the server restarted)")
        );
        assert_eq!(r.gone.len(), 1, "the channel it knew is reported gone");
        assert_eq!(m.counts(), (0, 0, 0, 0));
        assert_eq!(m.trusted(), [2 + COOKIE]);
        // Stopped: nothing listens any more, nothing is trusted.
        fill();
        let r = s
            .sweep(&m.state(), NOW, 1, Some(&UdpTable::default()))
            .unwrap();
        assert_eq!(
            r.forgot_all.as_deref(),
            Some("socket on port 3478 went away")
        );
        assert_eq!(m.counts(), (0, 0, 0, 0));
        assert!(m.trusted().is_empty());
    }

    #[test]
    fn sweep_work_is_bounded_and_linear() {
        const N: usize = 3 * SWEEP_BUDGET / 2;
        let Some(m) = Maps::new(2 * N as u32) else {
            return;
        };
        // N expired allocations among N live ones.
        for i in 0..2 * N {
            m.nth_alloc(i, None, if i % 2 == 0 { NOW - 1 } else { FAR });
        }
        let mut s = Sweeper::default();
        let t0 = std::time::Instant::now();
        let r = s.sweep(&m.state(), NOW, u64::MAX, None).unwrap();
        let took = t0.elapsed();
        assert_eq!(
            r.allocs_removed, SWEEP_BUDGET,
            "at most the budget per sweep"
        );
        let r = s.sweep(&m.state(), NOW, u64::MAX, None).unwrap();
        assert_eq!(r.allocs_removed, N - SWEEP_BUDGET, "the rest next time");
        assert_eq!(m.counts().0, N);
        // Deleting while walking restarts the kernel's walk at the first bucket after every
        // deletion: quadratic work (19 s for this map on the development machine). Collected
        // first, it is about 40 ms.
        assert!(
            took < std::time::Duration::from_secs(2),
            "one sweep took {took:?}"
        );
    }

    /// `n` live allocations (`bench_relay(i)`), each with one channel (both sides) and the
    /// permission of its peer.
    fn fill_live(m: &Maps, n: usize) {
        for i in 0..n {
            let relay = bench_relay(i);
            let ak = m.nth_alloc(i, Some(relay), FAR);
            let peer = format!("198.51.{}.{}:7000", (i >> 8) as u8, i as u8);
            let peer = if i < 65536 {
                peer
            } else {
                format!("203.0.{}.{}:{}", (i >> 8) as u8, i as u8, 7000 + (i >> 16))
            };
            m.chan(&ak, i as u64 + 1, &relay.to_string(), &peer, 0x4000);
        }
    }

    /// A long sweep keeps the agent alive: it stamps every [`ALIVE_EVERY`] entries, not once at
    /// the end (a sweep longer than TB_AGENT_STALE_NS would otherwise stop the fast path).
    #[test]
    fn sweep_stamps_alive_while_it_works() {
        const N: usize = 2 * ALIVE_EVERY + 100;
        let Some(m) = Maps::new(N as u32 + 64) else {
            return;
        };
        fill_live(&m, N);
        let stamps = std::cell::Cell::new(0usize);
        let alive = || stamps.set(stamps.get() + 1);
        let state = StateMaps {
            alive: &alive,
            ..m.state()
        };
        let r = Sweeper::default()
            .sweep(&state, NOW, u64::MAX, None)
            .unwrap();
        assert_eq!(r.learned.len(), N, "it went through every channel");
        // Allocations, both sides of each channel, permissions.
        assert!(
            stamps.get() >= 4 * N / ALIVE_EVERY,
            "{} stamps over {} entries",
            stamps.get(),
            4 * N
        );
    }

    /// The relayed address of allocation `i` of many: 50 000 ports on each of
    /// 127.0.0.1, 127.0.1.1, …
    fn bench_relay(i: usize) -> SocketAddr {
        SocketAddr::from((
            [127, 0, (i / 50_000) as u8, 1],
            10_000 + (i % 50_000) as u16,
        ))
    }
}
