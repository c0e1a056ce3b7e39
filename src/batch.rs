//! Reading a whole state map in a few system calls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6 for hash
//! maps) instead of two per entry: what keeps the sweep's own CPU small at 100 000 allocations
//! (issue 13). Deletions stay one per key: a sweep makes few (at most [`SWEEP_BUDGET`] of each
//! kind), and a key already gone must not stop the others.
//!
//! [`SWEEP_BUDGET`]: crate::sweep::SWEEP_BUDGET
//!
//! libbpf-rs's `MapCore::lookup_batch` iterator ends silently on any error, so a kernel that
//! refuses batches could not be told from the end of the map; this calls libbpf's
//! `bpf_map_lookup_batch` itself and falls back to the per-key walk ([`entries_per_key`]) when
//! the kernel says no.

use std::os::fd::AsRawFd;

use libbpf_rs::{MapCore, MapFlags};

/// Entries read per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: u32 = 4096;

/// A snapshot of a map's entries, keys and values each in one buffer.
#[derive(Debug, Default)]
pub struct Entries {
    key_size: usize,
    value_size: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Entries {
    pub fn len(&self) -> usize {
        self.keys.len().checked_div(self.key_size).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every (key, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.keys
            .chunks_exact(self.key_size.max(1))
            .zip(self.values.chunks_exact(self.value_size.max(1)))
    }

    fn push(&mut self, k: &[u8], v: &[u8]) {
        self.keys.extend_from_slice(k);
        self.values.extend_from_slice(v);
    }
}

/// Every entry of `map`: in batches where the kernel takes them, else one key at a time.
///
/// Like any walk of a hash map that others write to, it may miss an entry added or moved
/// meanwhile (the next sweep sees it); an entry is never reported twice.
pub fn entries(map: &impl MapCore) -> Entries {
    match entries_batched(map) {
        Ok(e) => e,
        Err(errno) => {
            log::debug!(
                "map {}: batched lookup refused ({errno}): reading it one key at a time",
                map.name().to_string_lossy()
            );
            entries_per_key(map)
        }
    }
}

/// The map read with `BPF_MAP_LOOKUP_BATCH`; the kernel's errno when it refuses.
pub fn entries_batched(map: &impl MapCore) -> Result<Entries, nix::errno::Errno> {
    let key_size = map.key_size() as usize;
    let value_size = map.value_size() as usize;
    let mut out = Entries {
        key_size,
        value_size,
        keys: Vec::new(),
        values: Vec::new(),
    };
    let mut count = BATCH;
    let mut keys = vec![0u8; count as usize * key_size];
    let mut values = vec![0u8; count as usize * value_size];
    // The batch cursor: opaque to us, the size of a key (hash maps: at least 4 bytes).
    let mut next = vec![0u8; key_size.max(8)];
    let mut prev: Option<Vec<u8>> = None;
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    loop {
        let mut n = count;
        // SAFETY: the buffers hold `count` keys and values and a cursor of a key's size.
        let rc = unsafe {
            libbpf_sys::bpf_map_lookup_batch(
                map.as_fd().as_raw_fd(),
                prev.as_mut()
                    .map_or(std::ptr::null_mut(), |p| p.as_mut_ptr().cast()),
                next.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut n,
                &opts,
            )
        };
        let errno = if rc < 0 {
            nix::errno::Errno::last()
        } else {
            nix::errno::Errno::UnknownErrno
        };
        match (rc, errno) {
            (0, _) | (_, nix::errno::Errno::ENOENT) => {
                let n = (n as usize).min(count as usize);
                out.keys.extend_from_slice(&keys[..n * key_size]);
                out.values.extend_from_slice(&values[..n * value_size]);
                if rc < 0 {
                    return Ok(out); // ENOENT: that was the last batch
                }
                prev = Some(next.clone());
            }
            // One bucket holds more entries than `count`: retry the same step with room for it.
            (_, nix::errno::Errno::ENOSPC) if count < 1 << 20 => {
                count *= 2;
                keys.resize(count as usize * key_size, 0);
                values.resize(count as usize * value_size, 0);
            }
            (_, nix::errno::Errno::EINTR) => {}
            (_, e) => return Err(e),
        }
    }
}

/// The map read one key at a time (`get_next_key`, then a lookup per key): what the kernels
/// without batches for this map type take. Keys are collected first (see
/// [`crate::sweep::collect_keys`]).
pub fn entries_per_key(map: &impl MapCore) -> Entries {
    let mut out = Entries {
        key_size: map.key_size() as usize,
        value_size: map.value_size() as usize,
        ..Entries::default()
    };
    for k in crate::sweep::collect_keys(map) {
        if let Ok(Some(v)) = map.lookup(&k, MapFlags::ANY) {
            out.push(&k, &v);
        }
    }
    out
}
