//! The sizes of the state tables (`bpf/lib/maps.h`), set before load from `--max-allocations`,
//! `--max-channels`, `--max-permissions` and `--max-pending`, and the memory they take.
//!
//! `chans` and `peers` hold the same bindings seen from either side, so one size (channels)
//! sets both. Every channel relays under its peer's permission, so the permissions table is
//! never smaller than the channels table: left out, `--max-permissions` follows a larger
//! `--max-channels`; given smaller, it is refused. The other tables are sized by what they hold
//! (8 TURN ports, 64 interfaces, the server's policy …) and are not options.
//!
//! When a table is full, what does not fit stays with the server (`STATE_FULL`, or
//! `RECORD_FULL` for requests): safe, just not offloaded.

use std::ops::RangeInclusive;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapType};

use crate::consts;
use crate::skel::{OpenTurnMaps, TurnMaps};

/// The accepted ranges. Upper bounds keep a typo from asking the kernel for tens of gigabytes:
/// at the largest, the five tables take about 5.6 GiB.
pub const ALLOCATIONS: RangeInclusive<u32> = 1..=4_194_304;
pub const CHANNELS: RangeInclusive<u32> = 1..=8_388_608;
pub const PERMISSIONS: RangeInclusive<u32> = 1..=8_388_608;
pub const PENDING: RangeInclusive<u32> = 16..=1_048_576;

/// A range as clap's integer parsers take it.
pub fn range(r: &RangeInclusive<u32>) -> RangeInclusive<i64> {
    i64::from(*r.start())..=i64::from(*r.end())
}

/// The sizes of the state tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub allocations: u32,
    pub channels: u32,
    pub permissions: u32,
    pub pending: u32,
}

impl Default for Sizes {
    /// The sizes the programs are built with (`bpf/lib/shared.h`).
    fn default() -> Sizes {
        Sizes {
            allocations: consts::TB_MAX_ALLOCS as u32,
            channels: consts::TB_MAX_CHANNELS as u32,
            permissions: consts::TB_MAX_PERMS as u32,
            pending: consts::TB_MAX_PENDING as u32,
        }
    }
}

impl Sizes {
    /// The sizes from the options (each already in its range: clap checks that). Returns the
    /// one line that names an inconsistency.
    pub fn of(
        allocations: Option<u32>,
        channels: Option<u32>,
        permissions: Option<u32>,
        pending: Option<u32>,
    ) -> Result<Sizes, String> {
        let d = Sizes::default();
        let channels_n = channels.unwrap_or(d.channels);
        let permissions_n = match permissions {
            Some(p) if p < channels_n => {
                let given = if channels.is_some() {
                    ""
                } else {
                    " (its default)"
                };
                return Err(format!(
                    "--max-permissions {p} is smaller than --max-channels {channels_n}{given}: \
                     every channel relays under its peer's permission, so the permissions table \
                     must hold at least as many entries"
                ));
            }
            Some(p) => p,
            None => d.permissions.max(channels_n),
        };
        Ok(Sizes {
            allocations: allocations.unwrap_or(d.allocations),
            channels: channels_n,
            permissions: permissions_n,
            pending: pending.unwrap_or(d.pending),
        })
    }

    /// Each sized table with its size.
    fn tables(&self) -> [(&'static str, u32); 6] {
        [
            ("allocs", self.allocations),
            ("chans", self.channels),
            ("peers", self.channels),
            ("perms", self.permissions),
            ("pending", self.pending),
            // one entry per relayed address: two for a dual allocation
            ("relays", self.allocations.saturating_mul(2)),
        ]
    }

    /// Set the tables' `max_entries` in the opened object, before `load()`.
    pub fn apply(&self, maps: &mut OpenTurnMaps<'_>) -> Result<()> {
        for (name, n) in self.tables() {
            let map = match name {
                "allocs" => &mut maps.allocs,
                "chans" => &mut maps.chans,
                "peers" => &mut maps.peers,
                "perms" => &mut maps.perms,
                "relays" => &mut maps.relays,
                _ => &mut maps.pending,
            };
            map.set_max_entries(n)
                .with_context(|| format!("sizing the {name} table to {n} entries"))?;
        }
        Ok(())
    }
}

/// The kernel's bookkeeping for one element of a preallocated hash map (`struct htab_elem`
/// before the key: its list node, LRU/per-CPU pointer union and hash, 8-byte aligned).
pub const HTAB_ELEM_HEADER: u64 = 48;
/// One hash bucket (`struct bucket`: list head and spinlock).
pub const HTAB_BUCKET: u64 = 16;
/// The map itself (`struct bpf_htab`), measured on Linux 6.18 as what memlock shows beyond the
/// entries, buckets and per-CPU parts.
pub const HTAB_MAP: u64 = 832;
/// Per possible CPU: the map's lock-nesting counters (`HASHTAB_MAP_LOCK_COUNT` ints) and the
/// spare-element pointer.
pub const HTAB_PER_CPU: u64 = 8 * 4 + 8;

/// One table's estimate: what its entries take in a preallocated hash map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableMemory {
    pub entries: u32,
    /// Key + value + the kernel's per-entry header, each rounded to 8 bytes.
    pub per_entry: u64,
    /// Everything: the entries (with one spare per CPU, as the kernel preallocates), the
    /// buckets (the entries rounded up to a power of two), the per-CPU parts and the map.
    pub total: u64,
}

/// The estimate for a preallocated `BPF_MAP_TYPE_HASH` of `entries` × (`key`, `value`) on a host
/// with `cpus` possible CPUs (the kernel's `htab_map_mem_usage`, Linux 6.4 and later).
pub fn hash_memory(entries: u32, key: u32, value: u32, cpus: u32) -> TableMemory {
    let round8 = |n: u32| u64::from(n).div_ceil(8) * 8;
    let per_entry = HTAB_ELEM_HEADER + round8(key) + round8(value);
    let buckets = u64::from(entries).next_power_of_two();
    let cpus = u64::from(cpus);
    let total = per_entry * (u64::from(entries) + cpus)
        + HTAB_BUCKET * buckets
        + HTAB_PER_CPU * cpus
        + HTAB_MAP;
    TableMemory {
        entries,
        per_entry,
        total,
    }
}

/// `12.3 MiB`, `840 KiB`, `512 B`.
pub fn human(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB {
        format!("{:.1} MiB", b / KIB / KIB)
    } else if b >= KIB {
        format!("{:.0} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// The start-up line: each sized table's entries × bytes per entry and its estimate, the total
/// estimate, and what the kernel itself accounts for these tables (`memlock` in the maps'
/// fdinfo), when it says.
pub fn memory_line(parts: &[(&str, TableMemory)], kernel_memlock: Option<u64>) -> String {
    let each: Vec<String> = parts
        .iter()
        .map(|(name, m)| {
            format!(
                "{name} {} × {} B = {}",
                m.entries,
                m.per_entry,
                human(m.total)
            )
        })
        .collect();
    let total: u64 = parts.iter().map(|(_, m)| m.total).sum();
    let kernel = kernel_memlock.map_or_else(
        || "the kernel does not say".to_string(),
        |k| format!("the kernel accounts {} (memlock in fdinfo)", human(k)),
    );
    format!(
        "state tables: {}; total {} (estimate: entries × (key + value + {HTAB_ELEM_HEADER} B \
         kernel header) + {HTAB_BUCKET} B per hash bucket + {HTAB_MAP} B per table); {kernel}",
        each.join(", "),
        human(total)
    )
}

/// The line for the loaded tables: their real sizes, and the kernel's memlock for them.
pub fn describe_loaded(maps: &TurnMaps<'_>) -> Result<String> {
    let cpus = libbpf_rs::num_possible_cpus().context("counting the possible CPUs")? as u32;
    let tables: [(&str, &dyn MapCore); 6] = [
        ("allocs", &maps.allocs),
        ("chans", &maps.chans),
        ("peers", &maps.peers),
        ("perms", &maps.perms),
        ("pending", &maps.pending),
        ("relays", &maps.relays),
    ];
    let mut parts = Vec::new();
    let mut memlock = Some(0u64);
    for (name, map) in tables {
        debug_assert_eq!(map.map_type(), MapType::Hash, "{name}");
        parts.push((
            name,
            hash_memory(map.max_entries(), map.key_size(), map.value_size(), cpus),
        ));
        let kernel = map.query_fdinfo().ok().and_then(|i| i.memlock);
        memlock = memlock.zip(kernel).map(|(a, b)| a + b);
    }
    Ok(memory_line(&parts, memlock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_built_in_sizes() {
        let s = Sizes::of(None, None, None, None).unwrap();
        assert_eq!(s, Sizes::default());
        assert_eq!(s.allocations, 65536);
        assert_eq!(s.channels, 131072);
        assert_eq!(s.permissions, 131072);
        assert_eq!(s.pending, 65536);
    }

    #[test]
    fn permissions_follow_channels_and_are_never_smaller() {
        let s = Sizes::of(Some(2), Some(4), Some(8), Some(64)).unwrap();
        assert_eq!(
            (s.allocations, s.channels, s.permissions, s.pending),
            (2, 4, 8, 64)
        );
        // left out: the default, or the channels when there are more of them
        assert_eq!(
            Sizes::of(None, Some(4), None, None).unwrap().permissions,
            131072
        );
        assert_eq!(
            Sizes::of(None, Some(500_000), None, None)
                .unwrap()
                .permissions,
            500_000
        );
        let e = Sizes::of(None, Some(500_000), Some(1000), None).unwrap_err();
        assert!(
            e.starts_with("--max-permissions 1000 is smaller than --max-channels 500000"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        // peers are sized with chans
        let t = Sizes::of(None, Some(7), None, None).unwrap().tables();
        assert_eq!(t[1], ("chans", 7));
        assert_eq!(t[2], ("peers", 7));
    }

    #[test]
    fn the_estimate_follows_the_kernels_preallocated_hash_map() {
        // 40-byte key, 44-byte value (rounded to 48): 48 + 40 + 48 per entry.
        let m = hash_memory(1000, 40, 44, 2);
        assert_eq!(m.per_entry, 136);
        assert_eq!(m.total, 136 * 1002 + 16 * 1024 + 40 * 2 + 832);
        assert_eq!(hash_memory(2, 8, 8, 1).total, 64 * 3 + 16 * 2 + 40 + 832);
        // as the kernel (6.18) accounted the agent's allocs table with 2 entries on 2 CPUs
        assert_eq!(hash_memory(2, 40, 80, 2).total, 1616);
    }

    #[test]
    fn the_memory_line_is_one_line_with_a_total() {
        let parts = [
            ("allocs", hash_memory(2, 40, 88, 2)),
            ("pending", hash_memory(64, 48, 120, 2)),
        ];
        let line = memory_line(&parts, Some(30_000));
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(
                "state tables: allocs 2 × 176 B = 2 KiB, pending 64 × 216 B = 16 KiB; "
            ),
            "{line}"
        );
        assert!(
            line.contains("; total 17 KiB (estimate: entries × (key + value + 48 B"),
            "{line}"
        );
        assert!(
            line.ends_with("the kernel accounts 29 KiB (memlock in fdinfo)"),
            "{line}"
        );
        assert!(memory_line(&parts, None).ends_with("the kernel does not say"));
        assert_eq!(human(3 * 1024 * 1024 + 300 * 1024), "3.3 MiB");
    }
}
