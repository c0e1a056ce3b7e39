//! The BPF counters (`enum tb_stat` in `bpf/lib/shared.h`), mirrored by name.

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};

/// `(code, name, meaning)` in code order; the codes are stable and never reused.
pub const STATS: &[(u32, &str, &str)] = &[
    (0, "CLI2REM", "ChannelData relayed client -> peer in XDP"),
    (1, "REM2CLI", "peer datagrams relayed peer -> client in XDP"),
    (2, "PASS_NOT_OURS", "not TURN traffic: passed"),
    (3, "PASS_STUN", "STUN to a TURN port: passed to the server"),
    (4, "PASS_NO_CHANNEL", "no channel binding: passed"),
    (
        5,
        "PASS_EXPIRED",
        "allocation, permission or channel expired: passed",
    ),
    (6, "PASS_FRAGMENT", "IP fragments: passed"),
    (7, "PASS_IP_OPTIONS", "IP options: passed"),
    (8, "PASS_VLAN", "VLAN-tagged frames: passed"),
    (
        9,
        "PASS_BAD_LENGTH",
        "lengths disagree (incl. GSO batches): passed",
    ),
    (10, "PASS_TTL", "TTL too low: passed"),
    (11, "PASS_MTU", "too large for the egress MTU: passed"),
    (12, "PASS_NO_NEIGH", "no neighbour entry yet: passed"),
    (
        13,
        "PASS_FWD_DISABLED",
        "forwarding disabled on the interface: passed",
    ),
    (14, "PASS_FIB_OTHER", "no usable route: passed"),
    (
        15,
        "PASS_EGRESS_UNMANAGED",
        "next hop on an interface we are not on: passed",
    ),
    (16, "PASS_SPILL", "spilled to the server on purpose"),
    (
        17,
        "PASS_UNSUPPORTED",
        "a path not offloaded (IPv6, cross-family): passed",
    ),
    (18, "PENDING_ADDED", "requests remembered"),
    (
        19,
        "PENDING_CONFLICT",
        "transaction IDs reused with other contents",
    ),
    (20, "LEARN_ALLOC", "allocations learned"),
    (21, "LEARN_REFRESH", "allocation refreshes learned"),
    (22, "LEARN_DEALLOC", "deallocations (Refresh 0) learned"),
    (23, "LEARN_PERM", "permissions learned"),
    (24, "LEARN_CHANNEL", "channel bindings learned"),
    (25, "LEARN_ERROR", "error responses (request discarded)"),
    (
        26,
        "LEARN_NO_PENDING",
        "responses without a matching request",
    ),
    (
        27,
        "LEARN_NO_ALLOC",
        "grants for an allocation we do not know",
    ),
    (28, "STATE_FULL", "maps full: binding left with the server"),
    (
        29,
        "RELAY_NOT_LOCAL",
        "relayed address not local (see --external-ip)",
    ),
    (30, "STUN_MALFORMED", "malformed STUN: nothing recorded"),
    (31, "TC_NOT_LOCAL", "forwarded 'responses' ignored"),
    (
        32,
        "ABORTED",
        "rewrite aborted after it began (never expected)",
    ),
    (
        33,
        "NOT_MIRRORED",
        "grants we cannot mirror: allocation left to the server",
    ),
    (
        34,
        "TC_FOREIGN",
        "'responses' from sockets of another user ignored",
    ),
];

/// Number of counters (`TB_STAT__MAX`).
pub const N_STATS: usize = 35;

/// Index of a counter by name (panics on an unknown name: names are compile-time facts).
pub fn code(name: &str) -> usize {
    STATS
        .iter()
        .position(|(_, n, _)| *n == name)
        .unwrap_or_else(|| panic!("no counter named {name}"))
}

/// A snapshot of all counters, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters(pub Vec<u64>);

impl Counters {
    pub fn read(map: &impl MapCore) -> Result<Self> {
        let mut out = vec![0u64; N_STATS];
        for (i, slot) in out.iter_mut().enumerate() {
            let key = (i as u32).to_ne_bytes();
            let per_cpu = map
                .lookup_percpu(&key, MapFlags::ANY)
                .with_context(|| format!("reading counter {i}"))?
                .unwrap_or_default();
            *slot = per_cpu
                .iter()
                .map(|v| u64::from_ne_bytes(v[..8].try_into().expect("8-byte counters")))
                .sum();
        }
        Ok(Counters(out))
    }

    pub fn get(&self, name: &str) -> u64 {
        self.0[code(name)]
    }

    /// `self - earlier`, counter by counter.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .zip(&earlier.0)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        )
    }

    /// The non-zero counters, one `name value` per line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (i, (_, name, meaning)) in STATS.iter().enumerate() {
            if self.0[i] != 0 {
                s.push_str(&format!("  {name:<22} {:>12}  {meaning}\n", self.0[i]));
            }
        }
        if s.is_empty() {
            s.push_str("  (all counters zero)\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust table and the C enum must not drift apart.
    #[test]
    fn mirrors_the_c_enum() {
        let header = include_str!("../bpf/lib/shared.h");
        let mut from_c = Vec::new();
        for line in header.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("TB_STAT_") {
                if rest.starts_with("_MAX") {
                    continue;
                }
                let (name, value) = rest.split_once('=').expect("explicit codes");
                let value: u32 = value
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .parse()
                    .expect("numeric code");
                from_c.push((value, name.trim().to_string()));
            }
        }
        let from_rust: Vec<(u32, String)> =
            STATS.iter().map(|(c, n, _)| (*c, n.to_string())).collect();
        assert_eq!(from_c, from_rust);
        assert_eq!(N_STATS, STATS.len());
        for (i, (c, _, _)) in STATS.iter().enumerate() {
            assert_eq!(*c as usize, i, "codes are dense and in order");
        }
    }

    #[test]
    fn since_and_render() {
        let a = Counters(vec![1; N_STATS]);
        let mut b = a.clone();
        b.0[code("CLI2REM")] += 5;
        let d = b.since(&a);
        assert_eq!(d.get("CLI2REM"), 5);
        assert_eq!(d.get("REM2CLI"), 0);
        assert!(d.render().contains("CLI2REM"));
        assert!(!d.render().contains("REM2CLI"));
    }
}
