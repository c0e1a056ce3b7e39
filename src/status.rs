//! `turn-bpf status [IFACE...] [--bindings]`: what a running agent is doing, found from the
//! programs attached to the interfaces, as `xdp-loader status` does for XDP. Nothing needs to be
//! pinned: the XDP program on each interface (netlink) and the TC egress filter at the agent's
//! fixed handle name their maps (`map_ids` of the program info), which are opened by id.
//!
//! What the maps cannot tell is left out and said so: the agent's log (which server process it
//! trusts and why) lives only in its output; the pid shown is the process holding the programs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, TcHookBuilder, TC_EGRESS};

use crate::attach::{self, TC_HANDLE, TC_PRIORITY, TC_PROG_NAME, XDP_PROG_NAME};
use crate::maps::{from_bytes, now_ns, show, sockaddr};
use crate::skel::types::{rodata, tb_alloc, tb_alloc_key, tb_chan};
use crate::snapshot::{human_bytes, read_binding_count, DirCount, Snapshot, Sources};

/// One of turn-bpf's programs on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub iface: String,
    pub prog_id: u32,
    /// The XDP mode (`native`, `generic`…), or None for the TC egress snooper.
    pub xdp_mode: Option<&'static str>,
}

impl Hook {
    fn describe(&self) -> String {
        match self.xdp_mode {
            Some(mode) => format!(
                "XDP {XDP_PROG_NAME} ({mode} mode), program {}",
                self.prog_id
            ),
            None => format!(
                "TC egress {TC_PROG_NAME} (handle {TC_HANDLE:#x}, priority {TC_PRIORITY:#x}), \
                 program {}",
                self.prog_id
            ),
        }
    }
}

/// What the program's `.rodata` says it was loaded with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub turn_ports: Vec<u16>,
    pub channel_lifetime_s: u64,
    pub permission_lifetime_s: u64,
    pub spill_every: u32,
    /// Loaded with `--binding-counters`.
    pub binding_counters: bool,
}

/// One allocation, as `--bindings` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocLine {
    pub client: String,
    pub server: String,
    pub relayed: Vec<String>,
    pub left: Left,
}

/// One channel, as `--bindings` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChanLine {
    pub client: String,
    pub relayed: String,
    pub peer: String,
    pub channel: u16,
    pub left: Left,
    /// What it relayed each way (None: the per-binding counters are off).
    pub counts: Option<(DirLine, DirLine)>,
}

/// One direction of a channel as `--bindings` shows it: datagrams, data bytes, and how long ago
/// the last one was relayed (None: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirLine {
    pub packets: u64,
    pub bytes: u64,
    pub last_ago_ms: Option<u64>,
}

impl DirLine {
    pub fn of(c: &DirCount, now_ns: u64) -> DirLine {
        DirLine {
            packets: c.packets,
            bytes: c.bytes,
            // the coarse clock the programs stamp with can be a tick behind this one
            last_ago_ms: (c.last_ns != 0).then(|| now_ns.saturating_sub(c.last_ns) / 1_000_000),
        }
    }
}

impl std::fmt::Display for DirLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} datagrams {} bytes, last ", self.packets, self.bytes)?;
        match self.last_ago_ms {
            Some(ms) => write!(f, "{}.{} s ago", ms / 1000, ms % 1000 / 100),
            None => write!(f, "never"),
        }
    }
}

/// Time left before a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    Secs(u64),
    /// Past its deadline, or ended (Refresh 0): the fast path no longer relays it, and the
    /// sweep removes it.
    Ended,
}

impl Left {
    pub fn of(deadline_ns: u64, now_ns: u64) -> Left {
        if deadline_ns <= now_ns {
            Left::Ended
        } else {
            Left::Secs((deadline_ns - now_ns) / 1_000_000_000)
        }
    }
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Left::Secs(s) => write!(f, "{s} s left"),
            Left::Ended => write!(f, "ended"),
        }
    }
}

/// Everything `status` prints about one running offload.
#[derive(Debug, Clone)]
pub struct Status {
    pub hooks: Vec<Hook>,
    /// Processes holding the programs: (pid, command name).
    pub holders: Vec<(u32, String)>,
    pub config: Option<Config>,
    pub snapshot: Snapshot,
    pub bindings: Option<(Vec<AllocLine>, Vec<ChanLine>)>,
}

impl Status {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut ifaces: Vec<&str> = self.hooks.iter().map(|h| h.iface.as_str()).collect();
        ifaces.dedup();
        let who = if self.holders.is_empty() {
            // An XDP program that outlives every process is held by a pinned link (--pin-path:
            // the agent left it on purpose); a lone TC filter is what a killed agent leaves.
            if self.hooks.iter().any(|h| h.xdp_mode.is_some()) {
                "held by no process: pinned by an agent that stopped (the fast path passes \
                 everything to the server once its alive stamp is 5 s old; the next agent with \
                 the same --pin-path adopts it, `turn-bpf detach --pin-path DIR IFACE...` \
                 removes it)"
                    .to_string()
            } else {
                "held by no process: a TC filter left behind (see turn-bpf detach)".to_string()
            }
        } else {
            let p: Vec<String> = self
                .holders
                .iter()
                .map(|(pid, comm)| format!("{pid} ({comm})"))
                .collect();
            format!("process {}", p.join(", "))
        };
        let _ = writeln!(s, "turn-bpf on {}: {who}", ifaces.join(", "));
        let _ = writeln!(s, "  attached:");
        let mut by_iface: BTreeMap<usize, (String, Vec<String>)> = BTreeMap::new();
        for h in &self.hooks {
            let pos = ifaces.iter().position(|i| *i == h.iface).unwrap_or(0);
            by_iface
                .entry(pos)
                .or_insert_with(|| (h.iface.clone(), Vec::new()))
                .1
                .push(h.describe());
        }
        for (iface, what) in by_iface.values() {
            let _ = writeln!(s, "    {iface:<15} {}", what.join("; "));
        }
        let socks = self.snapshot.table("server_socks").map(|t| t.entries);
        let mut server = String::from("  server: ");
        if let Some(c) = &self.config {
            let ports: Vec<String> = c.turn_ports.iter().map(u16::to_string).collect();
            let _ = write!(server, "TURN port(s) {}; ", ports.join(", "));
        }
        match socks {
            Some(n) => {
                let _ = write!(server, "{n} of its sockets trusted");
            }
            None => server.push_str("its trusted sockets not readable"),
        }
        server.push_str(" (its process: see the agent's log)");
        let _ = writeln!(s, "{server}");
        match &self.config {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "  lifetimes: channel {} s, permission {} s; spill every {}",
                    c.channel_lifetime_s,
                    c.permission_lifetime_s,
                    if c.spill_every == 0 {
                        "never".to_string()
                    } else {
                        format!("{}th datagram", c.spill_every)
                    }
                );
            }
            None => {
                let _ = writeln!(s, "  configuration: not readable from the program");
            }
        }
        self.render_relayed(&mut s);
        let _ = writeln!(s, "  counters (since the agent started; all non-zero):");
        for line in self.snapshot.counters.render().lines() {
            let _ = writeln!(s, "  {line}");
        }
        let _ = writeln!(s, "  tables:");
        for t in &self.snapshot.tables {
            let pct = if t.max_entries == 0 {
                0.0
            } else {
                t.entries as f64 * 100.0 / t.max_entries as f64
            };
            let _ = writeln!(
                s,
                "    {:<13} {:>8} / {:<8} {:>5.1}%  {:>10}  {}",
                t.name,
                t.entries,
                t.max_entries,
                pct,
                human_bytes(t.memory_bytes),
                t.meaning
            );
        }
        if let Some((allocs, chans)) = &self.bindings {
            render_bindings(&mut s, allocs, chans);
        }
        s
    }

    fn render_relayed(&self, s: &mut String) {
        let (p, b) = self.snapshot.relayed_total();
        if self.snapshot.relayed.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "  relayed in XDP: {p} datagrams, {} of data",
            human_bytes(b)
        );
        for c in self.snapshot.relayed.iter().filter(|c| c.packets > 0) {
            let _ = writeln!(
                s,
                "    {:<15} {:>12} datagrams {:>14} bytes",
                c.path_name(),
                c.packets,
                c.bytes
            );
        }
    }
}

fn render_bindings(s: &mut String, allocs: &[AllocLine], chans: &[ChanLine]) {
    let _ = writeln!(s, "  allocations ({}):", allocs.len());
    for a in allocs {
        let _ = writeln!(
            s,
            "    client {} server {} relayed {} ({})",
            a.client,
            a.server,
            a.relayed.join(" "),
            a.left
        );
    }
    let off = chans.iter().any(|c| c.counts.is_none());
    let _ = writeln!(
        s,
        "  channels ({}{}):",
        chans.len(),
        if off {
            "; per-binding counters off (see --binding-counters)"
        } else {
            ""
        }
    );
    for c in chans {
        let _ = write!(
            s,
            "    client {} relayed {} peer {} channel {:#06x} ({})",
            c.client, c.relayed, c.peer, c.channel, c.left
        );
        if let Some((to_peer, to_client)) = &c.counts {
            let _ = write!(s, "; to peer {to_peer}; to client {to_client}");
        }
        s.push('\n');
    }
}

/// Allocations and channels from the maps, sorted by client.
pub fn read_bindings(src: &Sources, now: u64) -> Result<(Vec<AllocLine>, Vec<ChanLine>)> {
    let mut allocs = Vec::new();
    if let Some(m) = src.get("allocs") {
        for k in m.keys() {
            let Some(v) = m.lookup(&k, MapFlags::ANY)? else {
                continue;
            };
            let key: tb_alloc_key = from_bytes(&k);
            let a: tb_alloc = from_bytes(&v);
            let relayed = a
                .relay
                .iter()
                .filter_map(sockaddr)
                .map(|r: SocketAddr| r.to_string())
                .collect();
            allocs.push(AllocLine {
                client: show(&key.client),
                server: show(&key.server),
                relayed,
                left: Left::of(a.expires_ns, now),
            });
        }
    }
    // per-binding counters: only from programs loaded with them (their .rodata says so)
    let counts_map = src
        .get("binding_counts")
        .filter(|_| read_config(src).is_some_and(|c| c.binding_counters));
    let mut chans = Vec::new();
    if let Some(m) = src.get("chans") {
        for k in m.keys() {
            let Some(v) = m.lookup(&k, MapFlags::ANY)? else {
                continue;
            };
            let c: tb_chan = from_bytes(&v);
            let counts = match counts_map {
                Some(cm) => {
                    let b = read_binding_count(cm, c.id)?;
                    Some((DirLine::of(&b.to_peer, now), DirLine::of(&b.to_client, now)))
                }
                None => None,
            };
            chans.push(ChanLine {
                client: show(&c.client),
                relayed: show(&c.relay),
                peer: show(&c.peer),
                channel: u16::from_be(c.chan),
                left: Left::of(c.chan_expires_ns, now),
                counts,
            });
        }
    }
    allocs.sort_by(|a, b| (&a.client, &a.server).cmp(&(&b.client, &b.server)));
    chans.sort_by(|a, b| (&a.client, a.channel).cmp(&(&b.client, b.channel)));
    Ok((allocs, chans))
}

/// The load-time configuration in the program's `.rodata`, if it has the layout this build
/// knows.
fn read_config(src: &Sources) -> Option<Config> {
    let m = src.rodata()?;
    let v = m.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).ok()??;
    // The section is the struct without its tail padding (84 bytes of an 88-byte struct).
    let size = std::mem::size_of::<rodata>();
    if v.len() > size || v.len() + std::mem::align_of::<rodata>() <= size {
        return None;
    }
    let mut buf = vec![0u8; size];
    buf[..v.len()].copy_from_slice(&v);
    // SAFETY: buf holds size bytes; rodata is plain integers, valid for any bit pattern.
    let ro: rodata = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    Some(Config {
        turn_ports: ro
            .cfg_turn_ports
            .iter()
            .filter(|p| **p != 0)
            .map(|p| u16::from_be(*p))
            .collect(),
        channel_lifetime_s: ro.cfg_channel_lifetime_ns / 1_000_000_000,
        permission_lifetime_s: ro.cfg_permission_lifetime_ns / 1_000_000_000,
        spill_every: ro.cfg_spill_every,
        binding_counters: ro.cfg_binding_counters != 0,
    })
}

/// The interfaces to look at: those named, or every interface of this network namespace.
fn interfaces(named: &[String]) -> Result<Vec<(String, u32)>> {
    if !named.is_empty() {
        return named
            .iter()
            .map(|n| Ok((n.clone(), attach::ifindex(n)?)))
            .collect();
    }
    let all = nix::net::if_::if_nameindex().context("listing interfaces")?;
    Ok(all
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .collect())
}

/// The program id of the TC egress filter at turn-bpf's handle and priority on `ifindex`.
fn tc_prog(ifindex: u32) -> Option<u32> {
    // bpf_tc_query identifies the filter by handle and priority; the fd is not used.
    // SAFETY: the placeholder fd is never read.
    let placeholder = unsafe { BorrowedFd::borrow_raw(0) };
    let mut hook = TcHookBuilder::new(placeholder)
        .ifindex(ifindex as i32)
        .replace(false)
        .handle(TC_HANDLE)
        .priority(TC_PRIORITY)
        .hook(TC_EGRESS);
    hook.query().ok()
}

/// The ids of the maps program `id` uses.
fn prog_map_ids(id: u32) -> Result<Vec<u32>> {
    // SAFETY: plain syscall wrappers; the fd is owned right away.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd))
            .with_context(|| format!("opening BPF program {id}"));
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let info_of = |ids: &mut Vec<u32>| -> Result<u32> {
        let mut info = libbpf_sys::bpf_prog_info {
            nr_map_ids: ids.len() as u32,
            map_ids: ids.as_mut_ptr() as u64,
            ..Default::default()
        };
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: info is properly sized; map_ids points at nr_map_ids u32s.
        let rc =
            unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
        if rc < 0 {
            return Err(io::Error::from_raw_os_error(-rc))
                .with_context(|| format!("reading BPF program {id}'s information"));
        }
        Ok(info.nr_map_ids)
    };
    let mut ids = Vec::new();
    let n = info_of(&mut ids)?;
    ids = vec![0; n as usize];
    let n2 = info_of(&mut ids)?;
    ids.truncate(n2.min(n) as usize);
    Ok(ids)
}

/// One running offload, as found from its programs.
pub struct Found {
    pub hooks: Vec<Hook>,
    /// Its maps, opened by id: a snapshot reads them like the agent's own.
    pub sources: Sources,
    /// Its programs' ids.
    pub progs: Vec<u32>,
}

/// Programs that share a counters map, and their maps' ids.
#[derive(Default)]
struct Group {
    hooks: Vec<Hook>,
    map_ids: Vec<u32>,
    progs: Vec<u32>,
}

/// turn-bpf's programs on `ifaces` (or every interface), grouped by the offload they belong to
/// (the counters map they share), each with its maps opened.
pub fn find(named: &[String]) -> Result<Vec<Found>> {
    let mut hooks = Vec::new();
    for (iface, idx) in interfaces(named)? {
        if let Some((id, mode)) = attach::xdp_attached(idx)? {
            if attach::prog_name(id).as_deref() == Some(XDP_PROG_NAME) {
                hooks.push(Hook {
                    iface: iface.clone(),
                    prog_id: id,
                    xdp_mode: Some(mode),
                });
            }
        }
        if let Some(id) = tc_prog(idx) {
            if attach::prog_name(id).as_deref() == Some(TC_PROG_NAME) {
                hooks.push(Hook {
                    iface,
                    prog_id: id,
                    xdp_mode: None,
                });
            }
        }
    }
    // Group by the counters map: one offload's programs all use the same one.
    let mut groups: BTreeMap<u32, Group> = BTreeMap::new();
    for h in hooks {
        let map_ids = prog_map_ids(h.prog_id)?;
        let mut stats_id = None;
        for id in &map_ids {
            if let Ok(m) = MapHandle::from_map_id(*id) {
                if m.name() == "stats" {
                    stats_id = Some(*id);
                }
            }
        }
        let Some(stats_id) = stats_id else { continue };
        let g = groups.entry(stats_id).or_default();
        g.map_ids.extend(&map_ids);
        g.progs.push(h.prog_id);
        g.hooks.push(h);
    }
    let mut out = Vec::new();
    for Group {
        hooks,
        mut map_ids,
        mut progs,
    } in groups.into_values()
    {
        map_ids.sort_unstable();
        map_ids.dedup();
        let handles = map_ids
            .iter()
            .filter_map(|id| MapHandle::from_map_id(*id).ok());
        let sources = Sources::from_maps(handles)?;
        progs.sort_unstable();
        progs.dedup();
        out.push(Found {
            hooks,
            sources,
            progs,
        });
    }
    Ok(out)
}

/// `turn-bpf status`: print every offload found; an error when none is attached.
pub fn run(named: &[String], bindings: bool) -> Result<()> {
    let found = find(named)?;
    if found.is_empty() {
        let where_ = if named.is_empty() {
            "any interface of this network namespace".to_string()
        } else {
            named.join(", ")
        };
        bail!("no turn-bpf program is attached to {where_}");
    }
    for (i, f) in found.iter().enumerate() {
        let (hooks, sources, progs) = (&f.hooks, &f.sources, &f.progs);
        let mut holders: Vec<u32> = progs
            .iter()
            .flat_map(|p| attach::prog_holders(*p))
            .collect();
        holders.sort_unstable();
        holders.dedup();
        let holders = holders
            .into_iter()
            .map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                (pid, comm)
            })
            .collect();
        let status = Status {
            hooks: hooks.clone(),
            holders,
            config: read_config(sources),
            snapshot: sources.snapshot()?,
            bindings: if bindings {
                Some(read_bindings(sources, now_ns())?)
            } else {
                None
            },
        };
        if i > 0 {
            println!();
        }
        print!("{}", status.render());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Direction, PathCount, TableFill};
    use crate::stats::{code, Counters, N_STATS};

    fn status() -> Status {
        let mut c = Counters(vec![0; N_STATS]);
        c.0[code("RELAYED_TO_PEER")] = 100;
        c.0[code("XMIT_DROPPED")] = 2;
        Status {
            hooks: vec![
                Hook {
                    iface: "turn0".into(),
                    prog_id: 41,
                    xdp_mode: Some("native"),
                },
                Hook {
                    iface: "turn0".into(),
                    prog_id: 42,
                    xdp_mode: None,
                },
                Hook {
                    iface: "relay0".into(),
                    prog_id: 41,
                    xdp_mode: Some("native"),
                },
            ],
            holders: vec![(4242, "turn-bpf".into())],
            config: Some(Config {
                turn_ports: vec![3478],
                channel_lifetime_s: 600,
                permission_lifetime_s: 300,
                spill_every: 0,
                binding_counters: true,
            }),
            snapshot: Snapshot {
                counters: c,
                relayed: vec![
                    PathCount {
                        direction: Direction::ToPeer,
                        in_v6: false,
                        out_v6: false,
                        packets: 100,
                        bytes: 12_800,
                    },
                    PathCount {
                        direction: Direction::ToClient,
                        in_v6: false,
                        out_v6: false,
                        packets: 0,
                        bytes: 0,
                    },
                ],
                tables: vec![
                    TableFill {
                        name: "allocs",
                        meaning: "allocations",
                        entries: 1,
                        max_entries: 65536,
                        memory_bytes: 5 * 1024 * 1024,
                    },
                    TableFill {
                        name: "server_socks",
                        meaning: "server sockets trusted",
                        entries: 2,
                        max_entries: 256,
                        memory_bytes: 4096,
                    },
                ],
            },
            bindings: Some((
                vec![AllocLine {
                    client: "192.0.2.10:40000".into(),
                    server: "192.0.2.1:3478".into(),
                    relayed: vec!["198.51.100.1:50000".into()],
                    left: Left::Secs(598),
                }],
                vec![ChanLine {
                    client: "192.0.2.10:40000".into(),
                    relayed: "198.51.100.1:50000".into(),
                    peer: "203.0.113.5:7000".into(),
                    channel: 0x4000,
                    left: Left::Ended,
                    counts: Some((
                        DirLine {
                            packets: 200,
                            bytes: 25_600,
                            last_ago_ms: Some(1_234),
                        },
                        DirLine {
                            packets: 0,
                            bytes: 0,
                            last_ago_ms: None,
                        },
                    )),
                }],
            )),
        }
    }

    #[test]
    fn renders_every_part() {
        let out = status().render();
        let expect = [
            "turn-bpf on turn0, relay0: process 4242 (turn-bpf)",
            "    turn0           XDP xdp_turn (native mode), program 41; TC egress tc_snoop \
             (handle 0x7462, priority 0x7462), program 42",
            "    relay0          XDP xdp_turn (native mode), program 41",
            "  server: TURN port(s) 3478; 2 of its sockets trusted (its process: see the \
             agent's log)",
            "  lifetimes: channel 600 s, permission 300 s; spill every never",
            "  relayed in XDP: 100 datagrams, 12.5 KiB of data",
            "    chan4_to_udp4            100 datagrams          12800 bytes",
            "    allocs               1 / 65536      0.0%     5.0 MiB  allocations",
            "    server_socks         2 / 256        0.8%     4.0 KiB  server sockets trusted",
            "  allocations (1):",
            "    client 192.0.2.10:40000 server 192.0.2.1:3478 relayed 198.51.100.1:50000 (598 s \
             left)",
            "  channels (1):",
            "    client 192.0.2.10:40000 relayed 198.51.100.1:50000 peer 203.0.113.5:7000 channel \
             0x4000 (ended); to peer 200 datagrams 25600 bytes, last 1.2 s ago; to client 0 \
             datagrams 0 bytes, last never",
        ];
        for line in expect {
            assert!(out.lines().any(|l| l == line), "missing\n{line}\nin\n{out}");
        }
        // counters: the non-zero ones with their meaning, redirect drops included
        assert!(out.contains("RELAYED_TO_PEER"), "{out}");
        assert!(out.contains("XMIT_DROPPED"), "{out}");
        assert!(!out.contains("PASS_STUN"), "{out}");
        // a path that carried nothing is left out
        assert!(!out.contains("udp4_to_chan4"), "{out}");
    }

    #[test]
    fn without_holders_bindings_or_configuration() {
        let mut s = status();
        s.holders.clear();
        s.bindings = None;
        s.config = None;
        let out = s.render();
        assert!(
            out.starts_with(
                "turn-bpf on turn0, relay0: held by no process: pinned by an agent that stopped"
            ),
            "{out}"
        );
        assert!(out.contains("configuration: not readable"), "{out}");
        assert!(!out.contains("allocations ("), "{out}");
        // the TC filter alone: what a killed agent leaves
        s.hooks.retain(|h| h.xdp_mode.is_none());
        let out = s.render();
        assert!(
            out.contains("held by no process: a TC filter left behind"),
            "{out}"
        );
    }

    #[test]
    fn counters_off_is_said_once() {
        let mut s = status();
        if let Some((_, chans)) = &mut s.bindings {
            chans[0].counts = None;
            let second = chans[0].clone();
            chans.push(second);
        }
        let out = s.render();
        assert_eq!(out.matches("counters off").count(), 1, "{out}");
        assert!(out.contains("  channels (2; per-binding counters off (see --binding-counters)):"));
        assert!(!out.contains("datagrams 0 bytes"), "no zeros: {out}");
    }

    #[test]
    fn last_packet_ago() {
        let d = |last_ns| {
            DirLine::of(
                &DirCount {
                    packets: 1,
                    bytes: 2,
                    last_ns,
                },
                5_000_000_000,
            )
        };
        assert_eq!(d(0).last_ago_ms, None, "never");
        assert_eq!(d(3_750_000_000).last_ago_ms, Some(1_250));
        assert_eq!(
            d(5_001_000_000).last_ago_ms,
            Some(0),
            "a coarse stamp a tick ahead"
        );
        assert_eq!(
            d(3_750_000_000).to_string(),
            "1 datagrams 2 bytes, last 1.2 s ago"
        );
    }

    #[test]
    fn time_left() {
        assert_eq!(Left::of(10_500_000_000, 500_000_000), Left::Secs(10));
        assert_eq!(Left::of(5, 5), Left::Ended);
        assert_eq!(Left::of(0, 5), Left::Ended);
        assert_eq!(Left::Secs(3).to_string(), "3 s left");
    }
}
