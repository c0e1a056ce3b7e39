//! The BPF counters: `enum tb_stat` in `bpf/lib/shared.h`, whose names and meanings reach Rust
//! through the table build.rs generates from it (`crate::consts`).

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};

pub use crate::consts::{N_STATS, STATS};

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

    /// What was relayed, read together with what the kernel dropped after the program had
    /// redirected it: a redirect is a request, not a delivery.
    pub fn relay_summary(&self) -> String {
        let relayed = self.get("RELAYED_TO_PEER") + self.get("RELAYED_TO_CLIENT");
        format!(
            "  relayed in XDP {relayed} (to peer {}, to client {}); dropped by the kernel after \
             redirect {} (redirect errors {})\n",
            self.get("RELAYED_TO_PEER"),
            self.get("RELAYED_TO_CLIENT"),
            self.get("XMIT_DROPPED"),
            self.get("XMIT_ERROR"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated table and the compiled program agree: the counters map has one slot per
    /// counter, and the codes are dense and in order.
    #[test]
    fn table_matches_the_program() {
        use crate::skel::TurnSkelBuilder;
        use libbpf_rs::skel::SkelBuilder;

        let mut storage = std::mem::MaybeUninit::uninit();
        let open = TurnSkelBuilder::default()
            .open(&mut storage)
            .expect("opening the BPF object (no privileges needed)");
        assert_eq!(open.maps.stats.max_entries() as usize, N_STATS);
        assert_eq!(N_STATS, STATS.len());
        for (i, (c, _, meaning)) in STATS.iter().enumerate() {
            assert_eq!(*c as usize, i, "codes are dense and in order");
            assert!(!meaning.is_empty());
        }
    }

    #[test]
    fn since_and_render() {
        let a = Counters(vec![1; N_STATS]);
        let mut b = a.clone();
        b.0[code("RELAYED_TO_PEER")] += 5;
        let d = b.since(&a);
        assert_eq!(d.get("RELAYED_TO_PEER"), 5);
        assert_eq!(d.get("RELAYED_TO_CLIENT"), 0);
        assert!(d.render().contains("RELAYED_TO_PEER"));
        assert!(!d.render().contains("RELAYED_TO_CLIENT"));
        let mut e = d.clone();
        e.0[code("XMIT_DROPPED")] = 2;
        assert_eq!(
            e.relay_summary(),
            "  relayed in XDP 5 (to peer 5, to client 0); dropped by the kernel after redirect 2 \
             (redirect errors 0)\n"
        );
    }
}
