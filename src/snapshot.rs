//! One reading of a running offload's maps: its counters, what it relayed by path, and how full
//! its tables are. `turn-bpf status` prints it and `--prometheus` serves it; both read it here.
//!
//! The maps come as [`MapHandle`]s ([`Sources`]): from the agent's own skeleton, from the
//! programs attached to interfaces (`status`), or from anywhere else that yields the same maps
//! by name.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::consts::{TB_DIR_HAIRPIN, TB_DIR_TO_CLIENT, TB_DIR_TO_PEER, TB_RELAY_SLOTS};
use crate::maps::from_bytes;
use crate::skel::types::{tb_binding_count, tb_relay_count};
use crate::stats::Counters;

/// The tables whose fill level is shown: map name and what one entry is.
pub const TABLES: &[(&str, &str)] = &[
    ("allocs", "allocations"),
    ("chans", "channels, client side"),
    ("peers", "channels, peer side"),
    ("perms", "permissions"),
    ("pending", "requests waiting for their answer"),
    ("server_socks", "server sockets trusted"),
];

/// The maps a snapshot reads, besides the tables.
const OTHERS: &[&str] = &["stats", "relayed", "binding_counts"];

/// The maps of one offload, by name.
#[derive(Debug, Default)]
pub struct Sources {
    maps: BTreeMap<String, MapHandle>,
}

impl Sources {
    /// Keep the maps a snapshot reads from `maps` (by name; the rest are dropped). `stats` must be
    /// among them.
    pub fn from_maps(maps: impl IntoIterator<Item = MapHandle>) -> Result<Sources> {
        let mut s = Sources::default();
        for m in maps {
            let name = m.name().to_string_lossy().into_owned();
            let wanted = OTHERS.contains(&name.as_str())
                || TABLES.iter().any(|(n, _)| *n == name)
                || name.ends_with(".rodata");
            if wanted {
                s.maps.insert(name, m);
            }
        }
        if !s.maps.contains_key("stats") {
            bail!("no counters map (stats) among the offload's maps");
        }
        Ok(s)
    }

    /// The same maps, from a running agent's skeleton (the handles are duplicates: the skeleton
    /// keeps its own).
    pub fn of_skel(m: &crate::skel::TurnMaps<'_>) -> Result<Sources> {
        let handles = [
            MapHandle::try_from(&m.stats),
            MapHandle::try_from(&m.relayed),
            MapHandle::try_from(&m.binding_counts),
            MapHandle::try_from(&m.allocs),
            MapHandle::try_from(&m.chans),
            MapHandle::try_from(&m.peers),
            MapHandle::try_from(&m.perms),
            MapHandle::try_from(&m.pending),
            MapHandle::try_from(&m.server_socks),
            MapHandle::try_from(&m.rodata),
        ];
        let mut out = Vec::new();
        for h in handles {
            out.push(h.context("duplicating a map handle for the metrics")?);
        }
        Sources::from_maps(out)
    }

    pub fn get(&self, name: &str) -> Option<&MapHandle> {
        self.maps.get(name)
    }

    /// The program's `.rodata` (its load-time configuration), if among the maps.
    pub fn rodata(&self) -> Option<&MapHandle> {
        self.maps
            .iter()
            .find(|(n, _)| n.ends_with(".rodata"))
            .map(|(_, m)| m)
    }

    /// Read everything once.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let counters = Counters::read(&self.maps["stats"])?;
        let relayed = match self.get("relayed") {
            Some(m) => read_relayed(m)?,
            None => Vec::new(),
        };
        let mut tables = Vec::new();
        for (name, meaning) in TABLES {
            if let Some(m) = self.get(name) {
                tables.push(TableFill::read(name, meaning, m));
            }
        }
        Ok(Snapshot {
            counters,
            relayed,
            tables,
        })
    }
}

/// A relay direction, as the metrics and the status name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    ToPeer,
    ToClient,
    Hairpin,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::ToPeer => "to_peer",
            Direction::ToClient => "to_client",
            Direction::Hairpin => "hairpin",
        }
    }

    fn of_code(code: u64) -> Option<Direction> {
        match code {
            TB_DIR_TO_PEER => Some(Direction::ToPeer),
            TB_DIR_TO_CLIENT => Some(Direction::ToClient),
            TB_DIR_HAIRPIN => Some(Direction::Hairpin),
            _ => None,
        }
    }
}

/// `ipv4` or `ipv6`.
pub fn family_name(v6: bool) -> &'static str {
    if v6 {
        "ipv6"
    } else {
        "ipv4"
    }
}

/// What one relay path carried: datagrams, and their data bytes (the peer datagram's payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathCount {
    pub direction: Direction,
    /// The family the datagram came in with, and the one it left with.
    pub in_v6: bool,
    pub out_v6: bool,
    pub packets: u64,
    pub bytes: u64,
}

impl PathCount {
    /// The path's name as the fast path's units are named (`chan4_to_udp6`, `hairpin46`…).
    pub fn path_name(&self) -> String {
        let f = |v6: bool| if v6 { '6' } else { '4' };
        match self.direction {
            Direction::ToPeer => format!("chan{}_to_udp{}", f(self.in_v6), f(self.out_v6)),
            Direction::ToClient => format!("udp{}_to_chan{}", f(self.in_v6), f(self.out_v6)),
            Direction::Hairpin => format!("hairpin{}{}", f(self.in_v6), f(self.out_v6)),
        }
    }
}

/// Every slot of the `relayed` map, summed over CPUs, in slot order.
fn read_relayed(map: &MapHandle) -> Result<Vec<PathCount>> {
    let mut out = Vec::new();
    for slot in 0..TB_RELAY_SLOTS {
        let Some(direction) = Direction::of_code(slot / 4) else {
            continue;
        };
        let per_cpu = map
            .lookup_percpu(&(slot as u32).to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("reading relayed slot {slot}"))?
            .unwrap_or_default();
        let (mut packets, mut bytes) = (0u64, 0u64);
        for v in &per_cpu {
            let c: tb_relay_count = from_bytes(&v[..std::mem::size_of::<tb_relay_count>()]);
            packets += c.packets;
            bytes += c.bytes;
        }
        out.push(PathCount {
            direction,
            in_v6: slot & 2 != 0,
            out_v6: slot & 1 != 0,
            packets,
            bytes,
        });
    }
    Ok(out)
}

/// One direction of one channel binding (`--binding-counters`), summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirCount {
    pub packets: u64,
    /// Data bytes, as the `relayed` map counts them.
    pub bytes: u64,
    /// The last datagram's time (`bpf_ktime_get_coarse_ns`, CLOCK_MONOTONIC), the latest of any
    /// CPU's; 0: none yet.
    pub last_ns: u64,
}

/// Both directions of one channel binding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindingCount {
    pub to_peer: DirCount,
    pub to_client: DirCount,
}

/// The counters of the binding with this id (`tb_chan.id`) in `binding_counts`, summed over
/// CPUs; all zero when it has none (nothing relayed yet, or its entry aged out).
pub fn read_binding_count(map: &MapHandle, id: u64) -> Result<BindingCount> {
    let per_cpu = map
        .lookup_percpu(&id.to_ne_bytes(), MapFlags::ANY)
        .with_context(|| format!("reading the counters of binding {id}"))?
        .unwrap_or_default();
    let mut sum = BindingCount::default();
    for v in &per_cpu {
        let c: tb_binding_count = from_bytes(&v[..std::mem::size_of::<tb_binding_count>()]);
        for (s, d) in [
            (&mut sum.to_peer, &c.to_peer),
            (&mut sum.to_client, &c.to_client),
        ] {
            s.packets += d.packets;
            s.bytes += d.bytes;
            s.last_ns = s.last_ns.max(d.last_ns);
        }
    }
    Ok(sum)
}

/// How full one table is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFill {
    pub name: &'static str,
    pub meaning: &'static str,
    /// Entries now (counted by walking the keys: a moving table gives an approximate count).
    pub entries: u64,
    pub max_entries: u64,
    /// The kernel's own figure for the map's memory (`memlock` in its fdinfo), else
    /// max_entries × (key + value size).
    pub memory_bytes: u64,
}

impl TableFill {
    fn read(name: &'static str, meaning: &'static str, m: &MapHandle) -> TableFill {
        let max_entries = u64::from(m.max_entries());
        let estimate = max_entries * u64::from(m.key_size() + m.value_size());
        let memory_bytes = m
            .query_fdinfo()
            .ok()
            .and_then(|i| i.memlock)
            .filter(|b| *b > 0)
            .unwrap_or(estimate);
        TableFill {
            name,
            meaning,
            entries: m.keys().count() as u64,
            max_entries,
            memory_bytes,
        }
    }
}

/// One reading of the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub counters: Counters,
    /// Every relay path, also those that carried nothing (empty when the program has no
    /// `relayed` map).
    pub relayed: Vec<PathCount>,
    pub tables: Vec<TableFill>,
}

impl Snapshot {
    pub fn table(&self, name: &str) -> Option<&TableFill> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Entries of a table (0 when it is not read).
    pub fn entries(&self, name: &str) -> u64 {
        self.table(name).map_or(0, |t| t.entries)
    }

    /// Datagrams and data bytes relayed on every path together.
    pub fn relayed_total(&self) -> (u64, u64) {
        self.relayed
            .iter()
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes))
    }
}

/// How often the log gets a summary line.
pub const SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The periodic summary in the log: table sizes, and what was relayed since the last one.
#[derive(Debug)]
pub struct Summary {
    last: std::time::Instant,
    relayed: (u64, u64),
    dropped: u64,
}

impl Summary {
    pub fn new(start: &Snapshot) -> Summary {
        Summary {
            last: std::time::Instant::now(),
            relayed: start.relayed_total(),
            dropped: start.counters.get("XMIT_DROPPED"),
        }
    }

    /// Time for the next line?
    pub fn due(&self) -> bool {
        self.last.elapsed() >= SUMMARY_EVERY
    }

    /// The line for `now`, and the start of the next period.
    pub fn line(&mut self, now: &Snapshot) -> String {
        let secs = self.last.elapsed().as_secs();
        let (p, b) = now.relayed_total();
        let dropped = now.counters.get("XMIT_DROPPED");
        let line = summary_line(
            now,
            secs,
            p.saturating_sub(self.relayed.0),
            b.saturating_sub(self.relayed.1),
            dropped.saturating_sub(self.dropped),
        );
        self.last = std::time::Instant::now();
        self.relayed = (p, b);
        self.dropped = dropped;
        line
    }
}

fn summary_line(now: &Snapshot, secs: u64, packets: u64, bytes: u64, dropped: u64) -> String {
    format!(
        "allocations {}, channels {}, permissions {}; relayed in XDP in the last {secs} s: \
         {packets} datagrams, {} of data; dropped by the kernel after redirect: {dropped}",
        now.entries("allocs"),
        now.entries("chans"),
        now.entries("perms"),
        human_bytes(bytes)
    )
}

/// `n` bytes the way people read them (KiB, MiB).
pub fn human_bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_names_follow_the_units() {
        let p = |direction, in_v6, out_v6| PathCount {
            direction,
            in_v6,
            out_v6,
            packets: 0,
            bytes: 0,
        };
        assert_eq!(
            p(Direction::ToPeer, false, true).path_name(),
            "chan4_to_udp6"
        );
        assert_eq!(
            p(Direction::ToClient, true, false).path_name(),
            "udp6_to_chan4"
        );
        assert_eq!(p(Direction::Hairpin, false, false).path_name(), "hairpin44");
        assert_eq!(Direction::of_code(TB_DIR_HAIRPIN), Some(Direction::Hairpin));
        assert_eq!(Direction::of_code(3), None);
    }

    #[test]
    fn the_summary_line() {
        let snap = Snapshot {
            counters: Counters(vec![0; crate::stats::N_STATS]),
            relayed: Vec::new(),
            tables: vec![TableFill {
                name: "allocs",
                meaning: "allocations",
                entries: 2,
                max_entries: 10,
                memory_bytes: 0,
            }],
        };
        assert_eq!(
            summary_line(&snap, 60, 1000, 2048, 1),
            "allocations 2, channels 0, permissions 0; relayed in XDP in the last 60 s: 1000 \
             datagrams, 2.0 KiB of data; dropped by the kernel after redirect: 1"
        );
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 * 1024 * 1024), "10.0 MiB");
    }

    /// The relayed map of the compiled program has one slot per path and the value layout the
    /// snapshot decodes.
    #[test]
    fn relayed_map_matches_the_program() {
        use crate::skel::TurnSkelBuilder;
        use libbpf_rs::skel::SkelBuilder;

        let mut storage = std::mem::MaybeUninit::uninit();
        let open = TurnSkelBuilder::default()
            .open(&mut storage)
            .expect("opening the BPF object (no privileges needed)");
        assert_eq!(u64::from(open.maps.relayed.max_entries()), TB_RELAY_SLOTS);
        assert_eq!(
            open.maps.relayed.value_size() as usize,
            std::mem::size_of::<tb_relay_count>()
        );
        assert_eq!(open.maps.binding_counts.key_size(), 8, "a binding's id");
        assert_eq!(
            open.maps.binding_counts.value_size() as usize,
            std::mem::size_of::<tb_binding_count>()
        );
    }
}
