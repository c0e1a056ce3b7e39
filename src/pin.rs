//! `--pin-path DIR`: what outlives the agent, so that a restart or an upgrade leaves no gap.
//!
//! Under DIR (on a bpffs) the agent pins every map of the programs (by name, `data_pinned` for
//! the programs' own global state: ID sequences, the "shortened" stamps, the alive stamp), one
//! XDP link per interface (`xdp_IFACE`) and the layout version of all of it (`layout`, a
//! one-entry array holding `TB_LAYOUT_VERSION`). The snooper is the TC filter at its fixed
//! handle and priority: it stays there on exit and the next agent replaces its program in place
//! (`BPF_TC_F_REPLACE`). The next agent given the same DIR reuses the maps when their layout is
//! the same, and swaps the programs under the live links (`bpf_link_update`).
//!
//! While no agent runs, the snooper keeps learning and the fast path keeps relaying until the
//! agent's alive stamp is `TB_AGENT_STALE_NS` old; then everything goes to the server.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use log::{info, warn};

use crate::consts::TB_LAYOUT_VERSION;
use crate::skel::types::data_pinned;

/// `statfs(2)`'s `f_type` of a bpffs.
pub const BPF_FS_MAGIC: i64 = 0xcafe4a11;
/// The pin of the layout version.
const LAYOUT_PIN: &str = "layout";
/// The pin name of the programs' global state section.
pub const STATE_PIN: &str = "data_pinned";

/// The pin name of a map of the BPF object (`.data.pinned` → `data_pinned`).
pub fn map_pin_name(name: &str) -> String {
    name.trim_start_matches('.').replace('.', "_")
}

/// Whether a map of the object is kept under DIR: every map the programs share state through,
/// not the object's constant sections (`.rodata`, `.kconfig`) nor any other internal one.
pub fn kept(name: &str) -> bool {
    // libbpf names the object's own sections "<object>.rodata", "<object>.bss" (and a custom
    // one by its section name): a name from the C source has no dot. A pinned .rodata was
    // reused by the next agent with the old settings in it (its --channel-lifetime ignored).
    !name.contains('.') || name == ".data.pinned"
}

/// Maps whose contents nothing depends on (counters, scratch space, a log-once list): one that
/// no longer matches is recreated on its own (counters start again from zero) instead of making
/// the whole pinned state incompatible. A new counter changes `stats`' size, not the layout.
const DISPOSABLE: &[&str] = &["stats", "not_local", "out_scratch", "binding_counts"];

/// What a bpffs holds from its mount on (the kernel's own iterators), not ours to remove.
const PRELOADED: &[&str] = &["maps.debug", "progs.debug"];

/// The maps turn-bpf pins under DIR, by pin name (a test holds this list to the object's kept
/// maps). With the layout version and the XDP links (`xdp_IFACE`), nothing else of DIR is ours:
/// `detach` and a clean start remove only these, and a DIR holding anything else is refused.
const OUR_MAPS: &[&str] = &[
    "allocs",
    "binding_counts",
    "blind",
    "chans",
    "csum_buf",
    "data_pinned",
    "external_ips",
    "local_addrs",
    "not_local",
    "out_scratch",
    "peers",
    "pending",
    "perms",
    "recent_allocs",
    "refused_peers",
    "relay_ports",
    "relayed",
    "relays",
    "scratch",
    "server_socks",
    "stats",
    "tx_ports",
    "xmit_ifaces",
];

/// Pins earlier builds made and this one does not (removed with the rest).
const FORMERLY_OURS: &[&str] = &["turn_bpf_rodata"];

/// A pin turn-bpf makes under DIR.
pub fn ours(name: &str) -> bool {
    OUR_MAPS.contains(&name)
        || FORMERLY_OURS.contains(&name)
        || name == LAYOUT_PIN
        || name.starts_with("xdp_")
}

/// The pin of the XDP link on `iface`.
pub fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("xdp_{iface}"))
}

/// DIR exists, is a directory, and is on a bpffs; else the one line that says which.
pub fn check_bpffs(dir: &Path) -> Result<()> {
    let shown = dir.display();
    let meta = fs::metadata(dir).with_context(|| format!("--pin-path {shown}"))?;
    if !meta.is_dir() {
        bail!("--pin-path {shown} is not a directory");
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .with_context(|| format!("--pin-path {shown}: not a valid path"))?;
    // SAFETY: statfs fills the zeroed struct; c is NUL-terminated.
    let mut st: nix::libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { nix::libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("--pin-path {shown}"));
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "--pin-path {shown} is not on a bpffs (filesystem type {:#x}): mount one there first \
             (mount -t bpf bpf {shown})",
            st.f_type
        );
    }
    Ok(())
}

/// What was found under DIR before load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing pinned: everything is created and pinned anew.
    Nothing,
    /// A pinned state of this layout: its maps are reused.
    Compatible,
    /// A pinned state this agent cannot reuse (why): it was removed, and the agent starts clean.
    Incompatible(String),
}

/// The pin directory, locked (`flock` on the directory) while this process uses it: one agent
/// per DIR.
pub struct PinDir {
    pub dir: PathBuf,
    _lock: fs::File,
}

impl PinDir {
    /// `dir`, checked to be a directory on a bpffs, and locked: refused while another agent (or
    /// `detach`) uses it.
    pub fn open(dir: &Path) -> Result<PinDir> {
        check_bpffs(dir)?;
        let mut foreign: Vec<String> = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !ours(n) && !PRELOADED.contains(&n.as_str()))
            .collect();
        if !foreign.is_empty() {
            foreign.sort();
            bail!(
                "--pin-path {} holds what turn-bpf did not pin ({}): give turn-bpf a directory \
                 of its own (for example {})",
                dir.display(),
                foreign.join(", "),
                dir.join("turn-bpf").display()
            );
        }
        let lock = fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: flock on a descriptor we own.
        let rc =
            unsafe { nix::libc::flock(lock.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB) };
        if rc != 0 {
            bail!(
                "--pin-path {} is in use by another turn-bpf agent",
                dir.display()
            );
        }
        Ok(PinDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The pinned layout version, if one is pinned.
    fn layout(&self) -> Result<Option<u64>> {
        let p = self.path(LAYOUT_PIN);
        if !p.exists() {
            return Ok(None);
        }
        let m = MapHandle::from_pinned_path(&p)
            .with_context(|| format!("opening the pinned {}", p.display()))?;
        let v = m
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .context("reading the pinned layout version")?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_ne_bytes);
        Ok(Some(v.unwrap_or(0)))
    }

    /// Pin the layout version (once the maps are pinned: a state without it is never adopted).
    pub fn write_layout(&self) -> Result<()> {
        let p = self.path(LAYOUT_PIN);
        if p.exists() {
            return Ok(());
        }
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let mut m = MapHandle::create(MapType::Array, Some("tb_layout"), 4, 8, 1, &opts)
            .context("creating the layout map")?;
        m.update(
            &0u32.to_ne_bytes(),
            &TB_LAYOUT_VERSION.to_ne_bytes(),
            MapFlags::ANY,
        )
        .context("writing the layout version")?;
        m.pin(&p)
            .with_context(|| format!("pinning {}", p.display()))?;
        Ok(())
    }

    /// Before load: decide whether what is pinned can be reused (layout version, and each map's
    /// type, key, value, size and flags against `maps`: (name, its definition)), remove it if not,
    /// and give every kept map its pin path (libbpf then reuses the pinned map or creates and pins
    /// a new one).
    pub fn prepare(&self, object: &mut libbpf_rs::OpenObject) -> Result<Found> {
        for name in FORMERLY_OURS {
            let p = self.path(name);
            if p.exists() {
                fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
            }
        }
        let mut maps: Vec<libbpf_rs::OpenMapMut<'_>> = object
            .maps_mut()
            .filter(|m| kept(&m.name().to_string_lossy()))
            .collect();
        let pinned_maps: Vec<String> = maps
            .iter()
            .map(|m| map_pin_name(&m.name().to_string_lossy()))
            .filter(|n| self.path(n).exists())
            .collect();
        let found = match self.layout()? {
            None if pinned_maps.is_empty() => Found::Nothing,
            None => Found::Incompatible("maps are pinned without a layout version".into()),
            Some(v) if v != TB_LAYOUT_VERSION => Found::Incompatible(format!(
                "their layout is version {v}, this agent's {TB_LAYOUT_VERSION}"
            )),
            Some(_) => {
                for m in maps.iter() {
                    let name = map_pin_name(&m.name().to_string_lossy());
                    if DISPOSABLE.contains(&name.as_str()) && self.mismatch(m).is_some() {
                        info!("map {name} changed shape: it starts again from zero");
                        fs::remove_file(self.path(&name))
                            .with_context(|| format!("unpinning {name}"))?;
                    }
                }
                match maps.iter().find_map(|m| self.mismatch(m)) {
                    Some(why) => Found::Incompatible(why),
                    None => Found::Compatible,
                }
            }
        };
        if let Found::Incompatible(why) = &found {
            warn!(
                "the state pinned under {} cannot be reused ({why}): starting clean, the server \
                 carries the current calls",
                self.dir.display()
            );
            self.remove_state()?;
        }
        for m in &mut maps {
            let name = map_pin_name(&m.name().to_string_lossy());
            m.set_pin_path(self.path(&name))
                .with_context(|| format!("setting the pin path of map {name}"))?;
        }
        Ok(found)
    }

    /// Why the pinned twin of `m` is not the same map, if it is not.
    fn mismatch(&self, m: &libbpf_rs::OpenMapMut<'_>) -> Option<String> {
        let name = map_pin_name(&m.name().to_string_lossy());
        let p = self.path(&name);
        if !p.exists() {
            return None;
        }
        let info = match MapHandle::from_pinned_path(&p).and_then(|h| h.info()) {
            Ok(i) => i,
            Err(e) => return Some(format!("map {name}: {e}")),
        };
        let mut flags = info.info.map_flags;
        if matches!(m.map_type(), MapType::Devmap | MapType::DevmapHash) {
            flags &= !libbpf_sys::BPF_F_RDONLY_PROG;
        }
        let same = info.map_type() == m.map_type()
            && info.info.key_size == m.key_size()
            && info.info.value_size == m.value_size()
            && info.info.max_entries == m.max_entries()
            && flags == m.map_flags();
        (!same).then(|| {
            format!(
                "map {name} is pinned as {:?} {}/{}/{} entries, this agent's is {:?} {}/{}/{}",
                info.map_type(),
                info.info.key_size,
                info.info.value_size,
                info.info.max_entries,
                m.map_type(),
                m.key_size(),
                m.value_size(),
                m.max_entries()
            )
        })
    }

    /// Remove every pin under DIR but the XDP links (they are swapped in place, not recreated).
    pub fn remove_state(&self) -> Result<()> {
        self.remove_where(|n| !n.starts_with("xdp_"))
    }

    /// Remove every pin under DIR.
    pub fn remove_all(&self) -> Result<()> {
        self.remove_where(|_| true)
    }

    fn remove_where(&self, which: impl Fn(&str) -> bool) -> Result<()> {
        for e in
            fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?
        {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if which(&name) && ours(&name) && e.file_type()?.is_file() {
                fs::remove_file(e.path())
                    .with_context(|| format!("unpinning {}", e.path().display()))?;
            }
        }
        Ok(())
    }

    /// The pinned server sockets differ from `trusted`: the server restarted (or was replaced)
    /// while no agent ran, and what was learned from the old one is not the new one's. True also
    /// when they cannot be read.
    pub fn server_changed(&self, trusted: &[u64]) -> bool {
        let Ok(m) = MapHandle::from_pinned_path(self.path("server_socks")) else {
            return true;
        };
        let mut pinned: Vec<u64> = m
            .keys()
            .filter_map(|k| <[u8; 8]>::try_from(k.as_slice()).ok())
            .map(u64::from_ne_bytes)
            .collect();
        let mut now = trusted.to_vec();
        pinned.sort_unstable();
        now.sort_unstable();
        pinned != now
    }

    /// The pinned global state, to stamp the agent alive before the new programs are even loaded
    /// (the old ones keep relaying meanwhile).
    pub fn pinned_globals(&self) -> Result<Globals> {
        let m = MapHandle::from_pinned_path(self.path(STATE_PIN))
            .context("opening the pinned program state")?;
        Globals::of(&m)
    }
}

/// The programs' global state (`.data.pinned`), mapped into this process. Read and written
/// through this mapping, never through the skeleton's copy: when libbpf reuses a pinned map it
/// does not map it into the skeleton.
pub struct Globals {
    base: *mut u8,
    len: usize,
}

impl Globals {
    /// Map the `.data.pinned` array map `map`.
    pub fn of(map: &impl MapCore) -> Result<Globals> {
        if (map.value_size() as usize) < std::mem::size_of::<data_pinned>() {
            bail!("the program state map is smaller than its layout");
        }
        let len = (map.value_size() as usize).next_multiple_of(4096);
        // SAFETY: a shared mapping of an mmapable array map's fd; checked for failure.
        let base = unsafe {
            nix::libc::mmap(
                std::ptr::null_mut(),
                len,
                nix::libc::PROT_READ | nix::libc::PROT_WRITE,
                nix::libc::MAP_SHARED,
                map.as_fd().as_raw_fd(),
                0,
            )
        };
        if base == nix::libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mapping the program state");
        }
        Ok(Globals {
            base: base.cast(),
            len,
        })
    }

    fn field(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: offset is a u64 field's of data_pinned (8-byte aligned in a page-aligned
        // mapping that lives as long as self); the BPF side changes these only atomically.
        unsafe { AtomicU64::from_ptr(self.base.add(offset).cast()) }
    }

    /// The allocation sequence (`tb_alloc_seq`).
    pub fn alloc_seq(&self) -> u64 {
        self.field(std::mem::offset_of!(data_pinned, tb_alloc_seq))
            .load(Ordering::SeqCst)
    }

    /// Raise `tb_shortened_ns` to `now` (never lower it): every channel's validity cache computed
    /// up to now is void, whatever its allocation's shard stamp says.
    pub fn raise_shortened(&self, now: u64) {
        self.field(std::mem::offset_of!(data_pinned, tb_shortened_ns))
            .fetch_max(now, Ordering::SeqCst);
    }

    /// Say the agent is alive at `now` (`tb_alive_ns`): the fast path relays for
    /// `TB_AGENT_STALE_NS` more.
    pub fn stamp_alive(&self, now: u64) {
        self.field(std::mem::offset_of!(data_pinned, tb_alive_ns))
            .fetch_max(now, Ordering::SeqCst);
    }

    /// Make the stamp stale at once: the fast path passes everything from now on.
    pub fn clear_alive(&self) {
        self.field(std::mem::offset_of!(data_pinned, tb_alive_ns))
            .store(0, Ordering::SeqCst);
    }
}

impl Drop for Globals {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `of`.
        unsafe { nix::libc::munmap(self.base.cast(), self.len) };
    }
}

/// Forget every binding in `maps` (the server that granted them is gone): allocations, channels,
/// permissions and pending requests.
pub fn forget_bindings(maps: &[&dyn MapCoreDyn], why: &str) {
    let n: usize = maps.iter().map(|m| m.delete_all()).sum();
    info!("{why}: forgot {n} pinned entries; new allocations will be learned again");
}

/// `MapCore` is not object safe; the one thing `forget_bindings` needs of a map.
pub trait MapCoreDyn {
    fn delete_all(&self) -> usize;
}

impl<M: MapCore> MapCoreDyn for M {
    fn delete_all(&self) -> usize {
        crate::sweep::collect_keys(self)
            .iter()
            .filter(|k| self.delete(k).is_ok())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a 64 of the text with comments, whitespace and the counter list removed: what the
    /// layout depends on (a new counter only resizes `stats`, which is recreated on its own).
    fn fingerprint(text: &str) -> u64 {
        let mut out = String::new();
        let without_counters = match text.split_once("enum tb_stat {") {
            Some((a, b)) => format!("{a}{}", b.split_once("};").map_or("", |(_, r)| r)),
            None => text.to_string(),
        };
        let mut rest = without_counters.as_str();
        while let Some(i) = rest.find("/*") {
            out.push_str(&rest[..i]);
            rest = rest[i..].split_once("*/").map_or("", |(_, r)| r);
        }
        out.push_str(rest);
        let code: String = out
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .flat_map(str::split_whitespace)
            .collect();
        code.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        })
    }

    /// shared.h (the structs) and maps.h (the map definitions and pinned globals), without their
    /// comments, as of TB_LAYOUT_VERSION. When this fails: if any struct, map definition or
    /// pinned global changed in layout or meaning, bump TB_LAYOUT_VERSION in shared.h; then
    /// write the new fingerprint and version here.
    const RECORDED: (u64, u64) = (3, 0xc599802a951120d5);

    #[test]
    fn layout_version_is_bumped_when_the_shared_layout_changes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf/lib");
        let text = ["shared.h", "maps.h"]
            .iter()
            .map(|f| fs::read_to_string(dir.join(f)).unwrap())
            .collect::<String>();
        // TB_LAYOUT_VERSION's own line is part of shared.h: bumping it changes the fingerprint.
        let now = (TB_LAYOUT_VERSION, fingerprint(&text));
        assert_eq!(
            now, RECORDED,
            "bpf/lib/shared.h or maps.h changed: if a struct, a map definition or a pinned global \
             changed in layout or meaning, bump TB_LAYOUT_VERSION (a new map, or a new size, \
             needs no bump: a map that is not pinned yet is created, and sizes are compared \
             map by map); then record ({}, {:#x}) here",
            now.0, now.1
        );
    }

    #[test]
    fn fingerprint_ignores_comments_and_spacing_only() {
        let a = "struct x {\n\t__u64 a; /* one */\n};";
        assert_eq!(fingerprint(a), fingerprint("struct x { __u64 a; };"));
        assert_ne!(fingerprint(a), fingerprint("struct x { __u32 a; };"));
    }

    /// OUR_MAPS is every map of the object that is pinned, no more.
    #[test]
    fn our_pins_are_the_objects_kept_maps() {
        let mut storage = std::mem::MaybeUninit::uninit();
        let open = {
            use libbpf_rs::skel::SkelBuilder;
            crate::skel::TurnSkelBuilder::default()
                .open(&mut storage)
                .expect("opening the object")
        };
        use libbpf_rs::skel::OpenSkel;
        let mut kept_maps: Vec<String> = open
            .open_object()
            .maps()
            .map(|m| m.name().to_string_lossy().into_owned())
            .filter(|n| kept(n))
            .map(|n| map_pin_name(&n))
            .collect();
        kept_maps.sort();
        assert_eq!(kept_maps, OUR_MAPS);
        assert!(ours("xdp_eth0") && ours(LAYOUT_PIN) && !ours("cilium_calls"));
    }

    #[test]
    fn pin_names() {
        assert_eq!(map_pin_name(".data.pinned"), STATE_PIN);
        assert_eq!(map_pin_name("allocs"), "allocs");
        assert!(kept("allocs") && kept(".data.pinned"));
        assert!(!kept(".rodata") && !kept(".bss") && !kept(".kconfig"));
        assert!(!kept("turn_bpf.rodata") && !kept("turn_bpf.bss"));
    }

    #[test]
    fn a_tmpfs_is_refused_in_one_line() {
        let e = check_bpffs(Path::new("/dev/shm")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("not on a bpffs") && !msg.contains('\n'),
            "{msg}"
        );
    }
}
