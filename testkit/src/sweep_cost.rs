//! What the agent's own upkeep costs at scale: the agent's sweep code (`turn_bpf::sweep`) on real
//! BPF hash maps shaped like the program's, holding N allocations of one channel (both sides)
//! and one permission each, with N real UDP relay sockets bound in a network namespace of its
//! own. Times, in the calling thread's CPU:
//! - the socket dump (`UdpTable::read`, sock_diag) and the four tables' batched read;
//! - a full sweep (`Sweeper::sweep`: the tables walked, every allocation's relay socket checked);
//! - a second's destroy notices: [`TEARDOWNS`] allocations whose relay sockets close, their
//!   notices read (`DestroyWatch`) and their allocations ended through the `relays` index
//!   (`Sweeper::relays_closed`);
//!
//! and from those the agent's CPU per second: a full sweep as often as its cost allows
//! (`offload::Cadence`), plus a second's notices. Each measurement also checks that the work was
//! done (nothing live removed, every channel learned, every ended allocation found).
//!
//! A running agent cannot hold 100,000 allocations here: no process may hold more than 20,000
//! descriptors (RLIMIT_NOFILE, no CAP_SYS_RESOURCE), coturn included; so the sockets are held by
//! child processes, [`SocketHolders::EACH`] each.

use std::mem::size_of;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use serde::{Deserialize, Serialize};
use turn_bpf::maps::{bytes_of, ep, ep_ip};
use turn_bpf::offload::{thread_cpu, Cadence};
use turn_bpf::server::UdpTable;
use turn_bpf::skel::types::{
    tb_alloc, tb_alloc_key, tb_chan, tb_chan_key, tb_ep, tb_peer_key, tb_pending, tb_pending_key,
    tb_perm, tb_perm_key, tb_relay,
};
use turn_bpf::sockdiag::DestroyWatch;
use turn_bpf::sweep::{StateMaps, Sweeper};

/// Allocations the server ends in a second: 100,000 allocations of 10 minutes each end at about
/// 170 a second.
pub const TEARDOWNS: usize = 200;
/// The server's address in every key.
const SERVER: &str = "192.0.2.1:3478";
/// A clock value past every deadline the measurement uses, and the "now" it sweeps at.
const NOW: u64 = 1_000_000_000_000;
const FAR: u64 = u64::MAX / 2;

/// `median [min, max]` of one measurement, CPU milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        Spread {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// The figures at one table size.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SweepCost {
    pub allocations: usize,
    pub repeats: usize,
    /// The UDP socket dump (sock_diag).
    pub dump_ms: Spread,
    /// The four tables read in batches (part of the full sweep).
    pub tables_read_ms: Spread,
    /// A full sweep, the dump left out.
    pub full_sweep_ms: Spread,
    /// [`TEARDOWNS`] destroy notices read and their allocations ended.
    pub notices_ms: Spread,
    /// How far apart full sweeps of this cost (dump included) run.
    pub full_every_s: f64,
    /// The agent's CPU per second: full sweeps at that interval, and a second's notices.
    pub cpu_ms_per_s: f64,
}

/// Real hash maps shaped like the program's state tables.
struct Tables {
    allocs: MapHandle,
    chans: MapHandle,
    peers: MapHandle,
    perms: MapHandle,
    pending: MapHandle,
    not_local: MapHandle,
    server_socks: MapHandle,
    relays: MapHandle,
    recent: MapHandle,
}

impl Tables {
    fn new(max: u32) -> Result<Tables> {
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let hash = |k: usize, v: usize, n: u32| {
            MapHandle::create(MapType::Hash, None::<&str>, k as u32, v as u32, n, &opts)
                .context("creating a hash map (root?)")
        };
        Ok(Tables {
            allocs: hash(size_of::<tb_alloc_key>(), size_of::<tb_alloc>(), max)?,
            chans: hash(size_of::<tb_chan_key>(), size_of::<tb_chan>(), max)?,
            peers: hash(size_of::<tb_peer_key>(), size_of::<tb_chan>(), max)?,
            perms: hash(size_of::<tb_perm_key>(), size_of::<tb_perm>(), max)?,
            pending: hash(size_of::<tb_pending_key>(), size_of::<tb_pending>(), 64)?,
            not_local: hash(size_of::<tb_ep>(), 8, 64)?,
            server_socks: hash(8, 4, 64)?,
            relays: hash(size_of::<tb_ep>(), size_of::<tb_relay>(), 2 * max)?,
            recent: MapHandle::create(
                MapType::Array,
                None::<&str>,
                4,
                size_of::<tb_relay>() as u32,
                turn_bpf::consts::TB_RECENT_ALLOCS as u32,
                &opts,
            )
            .context("creating an array map")?,
        })
    }

    fn state(&self) -> StateMaps<'_, MapHandle> {
        StateMaps {
            allocs: &self.allocs,
            chans: &self.chans,
            peers: &self.peers,
            perms: &self.perms,
            pending: &self.pending,
            not_local: &self.not_local,
            relays: &self.relays,
            recent: &self.recent,
            server_socks: &self.server_socks,
            raise_shortened: &|| {},
            alive: &|| {},
        }
    }

    fn put<K: Copy, V: Copy>(map: &MapHandle, k: &K, v: &V) -> Result<()> {
        map.update(bytes_of(k), bytes_of(v), MapFlags::ANY)
            .context("a map update")
    }

    /// The key of allocation `i`: client 10.x.y.z:5000.
    fn alloc_key(i: usize) -> Result<tb_alloc_key> {
        Ok(tb_alloc_key {
            client: ep(SocketAddr::from((
                [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                5000,
            ))),
            server: ep(SERVER.parse()?),
        })
    }

    /// Allocation `i` (ID i + 1), relayed at [`relay`]`(i)` and indexed there, as the snooper
    /// commits it.
    fn alloc(&self, i: usize) -> Result<tb_alloc_key> {
        let k = Self::alloc_key(i)?;
        let mut a = tb_alloc {
            id: i as u64 + 1,
            expires_ns: FAR,
            keep_until_ns: FAR,
            ..Default::default()
        };
        a.relay[0] = ep(relay(i));
        let r = tb_relay {
            alloc: k,
            alloc_id: a.id,
        };
        Self::put(&self.relays, &a.relay[0], &r)?;
        Self::put(&self.allocs, &k, &a)?;
        Ok(k)
    }

    /// Allocation `i` with one channel (both sides) to its own peer, and that peer's permission.
    fn alloc_with_channel(&self, i: usize) -> Result<()> {
        let ak = self.alloc(i)?;
        let peer = SocketAddr::from(([198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8], 7000));
        let c = tb_chan {
            client: ak.client,
            server: ak.server,
            relay: ep(relay(i)),
            peer: ep(peer),
            chan: 0x4000u16.to_be(),
            alloc_id: i as u64 + 1,
            chan_expires_ns: FAR,
            ..Default::default()
        };
        let ck = tb_chan_key {
            client: c.client,
            server: c.server,
            chan: c.chan,
            pad: [0; 2],
        };
        let pk = tb_peer_key {
            peer: c.peer,
            relay: c.relay,
        };
        Self::put(&self.chans, &ck, &c)?;
        Self::put(&self.peers, &pk, &c)?;
        let perm_key = tb_perm_key {
            relay: c.relay,
            peer: ep_ip(peer.ip()),
        };
        let perm = tb_perm {
            alloc_id: c.alloc_id,
            expires_ns: FAR,
            epoch: 0,
        };
        Self::put(&self.perms, &perm_key, &perm)
    }

    /// Allocation `i` in the ring of the allocations committed last, as the snooper writes it.
    fn recent(&self, i: usize) -> Result<()> {
        let id = i as u64 + 1;
        let slot = (id % turn_bpf::consts::TB_RECENT_ALLOCS) as u32;
        let r = tb_relay {
            alloc: Self::alloc_key(i)?,
            alloc_id: id,
        };
        Self::put(&self.recent, &slot, &r)
    }

    fn count(map: &MapHandle) -> usize {
        map.keys().count()
    }
}

/// The relayed address of allocation `i`: 50,000 ports on each of 127.0.0.1, 127.0.1.1, …
pub fn relay(i: usize) -> SocketAddr {
    SocketAddr::from((
        [127, 0, (i / 50_000) as u8, 1],
        10_000 + (i % 50_000) as u16,
    ))
}

/// A network namespace of its own that the calling thread enters; leaving it (drop) returns the
/// thread to where it was and deletes the namespace.
struct ThreadNetns {
    name: String,
    home: std::fs::File,
}

impl ThreadNetns {
    fn enter(name: &str) -> Result<ThreadNetns> {
        use std::process::{Command, Stdio};
        let home = std::fs::File::open("/proc/thread-self/ns/net").context("own netns")?;
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        let ok = |args: &[&str]| -> Result<()> {
            let st = Command::new("ip")
                .args(args)
                .status()
                .context("running ip")?;
            ensure!(st.success(), "ip {args:?}: {st}");
            Ok(())
        };
        ok(&["netns", "add", name])?;
        let ns = ThreadNetns {
            name: name.into(),
            home,
        };
        ok(&["-n", name, "link", "set", "lo", "up"])?;
        let f = std::fs::File::open(format!("/run/netns/{name}")).context("the netns")?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).context("entering it")?;
        Ok(ns)
    }
}

impl Drop for ThreadNetns {
    fn drop(&mut self) {
        let _ = nix::sched::setns(&self.home, nix::sched::CloneFlags::CLONE_NEWNET);
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Child processes holding UDP sockets bound to [`relay`]`(from..to)` in the calling thread's
/// network namespace, [`Self::EACH`] each. Killed on drop (their sockets close).
struct SocketHolders {
    children: Vec<(nix::unistd::Pid, std::os::fd::OwnedFd)>,
}

impl SocketHolders {
    /// Under RLIMIT_NOFILE (20,000 here).
    const EACH: usize = 19_000;

    fn open(from: usize, to: usize) -> Result<SocketHolders> {
        use nix::libc;
        use std::os::fd::AsRawFd;
        let mut h = SocketHolders { children: vec![] };
        for first in (from..to).step_by(Self::EACH) {
            let last = to.min(first + Self::EACH);
            let (hold_r, hold_w) = nix::unistd::pipe()?;
            let (ready_r, ready_w) = nix::unistd::pipe()?;
            // SAFETY: the child makes only system calls (no allocation, no locks) and leaves
            // with _exit.
            match unsafe { nix::unistd::fork() }.context("fork")? {
                nix::unistd::ForkResult::Child => unsafe {
                    for i in first..last {
                        let SocketAddr::V4(a) = relay(i) else {
                            libc::_exit(2)
                        };
                        let sin = libc::sockaddr_in {
                            sin_family: libc::AF_INET as u16,
                            sin_port: a.port().to_be(),
                            sin_addr: libc::in_addr {
                                s_addr: u32::from(*a.ip()).to_be(),
                            },
                            sin_zero: [0; 8],
                        };
                        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                        let p = (&sin as *const libc::sockaddr_in).cast();
                        if fd < 0 || libc::bind(fd, p, size_of_val(&sin) as u32) != 0 {
                            libc::_exit(1);
                        }
                    }
                    let b = [1u8];
                    libc::write(ready_w.as_raw_fd(), b.as_ptr().cast(), 1);
                    let mut r = [0u8];
                    drop(hold_w);
                    libc::read(hold_r.as_raw_fd(), r.as_mut_ptr().cast(), 1);
                    libc::_exit(0);
                },
                nix::unistd::ForkResult::Parent { child } => {
                    drop(ready_w);
                    drop(hold_r);
                    h.children.push((child, hold_w));
                    let mut b = [0u8];
                    let got = nix::unistd::read(&ready_r, &mut b).unwrap_or(0);
                    ensure!(got == 1, "a socket holder failed to bind its sockets");
                }
            }
        }
        Ok(h)
    }
}

impl Drop for SocketHolders {
    fn drop(&mut self) {
        // each child also holds the pipe ends of the ones forked before it: killed, not asked
        for (pid, w) in self.children.drain(..) {
            drop(w);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

/// CPU milliseconds of `f`, and its result.
fn cpu_ms<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t0 = thread_cpu();
    let r = f()?;
    Ok(((thread_cpu() - t0).as_secs_f64() * 1e3, r))
}

/// Measure at each of `sizes`, `repeats` times each (interleaved), in network namespace `ns`
/// (created and deleted here). Runs on a thread of its own, which enters the namespace.
pub fn measure(sizes: &[usize], repeats: usize, ns: &str) -> Result<Vec<SweepCost>> {
    ensure!(repeats > 0, "at least one repeat");
    let (sizes, ns) = (sizes.to_vec(), ns.to_string());
    std::thread::spawn(move || -> Result<Vec<SweepCost>> {
        let _in = ThreadNetns::enter(&ns)?;
        sizes.iter().map(|&n| measure_one(n, repeats)).collect()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))?
}

fn measure_one(n: usize, repeats: usize) -> Result<SweepCost> {
    let t = Tables::new((n + repeats * TEARDOWNS) as u32 + 64)?;
    for i in 0..n {
        t.alloc_with_channel(i)?;
    }
    let _live = SocketHolders::open(0, n)?;
    let mut s = Sweeper::default();
    let table = UdpTable::read()?;
    ensure!(table.bound_to(relay(n - 1)).len() == 1, "the relay sockets");
    // the first sweep learns every channel and records every relay socket
    let r = s.sweep(&t.state(), NOW, u64::MAX, Some(&table))?;
    ensure!(
        (r.allocs_removed, r.learned.len()) == (0, n),
        "first sweep: {} removed, {} learned of {n}",
        r.allocs_removed,
        r.learned.len()
    );
    let notices = DestroyWatch::open()?;
    let mut seq = n as u64;
    let (mut dump, mut read, mut full, mut tick) = (vec![], vec![], vec![], vec![]);
    for rep in 0..repeats {
        let (ms, table) = cpu_ms(UdpTable::read)?;
        dump.push(ms);
        let (ms, _) =
            cpu_ms(|| {
                Ok([&t.allocs, &t.chans, &t.peers, &t.perms]
                    .map(|m| turn_bpf::batch::entries(m).len()))
            })?;
        read.push(ms);
        let (ms, r) = cpu_ms(|| s.sweep(&t.state(), NOW, u64::MAX, Some(&table)))?;
        ensure!(
            (r.allocs_removed, r.chans_removed) == (0, 0),
            "a full sweep removed live state: {r:?}"
        );
        full.push(ms);
        // a second's teardown at the server: TEARDOWNS more allocations whose sockets close
        let first = n + rep * TEARDOWNS;
        for i in first..first + TEARDOWNS {
            t.alloc(i)?;
            t.recent(i)?;
            seq = i as u64 + 1;
        }
        let ending = SocketHolders::open(first, first + TEARDOWNS)?;
        notices.drain()?;
        drop(ending);
        // the notices come from a work queue: let them all arrive, then time their handling
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut handling = 0.0;
        let mut ended = 0;
        while ended < TEARDOWNS {
            if Instant::now() > deadline {
                bail!("{ended} of {TEARDOWNS} ended allocations found after 5 s");
            }
            std::thread::sleep(Duration::from_millis(100));
            let (ms, r) = cpu_ms(|| {
                let d = notices.drain()?;
                ensure!(!d.lost, "notices lost");
                let closed: Vec<SocketAddr> = d
                    .socks
                    .iter()
                    .map(|s| SocketAddr::new(s.ip, s.port))
                    .collect();
                let mut r = s.relays_closed(&t.state(), &closed, &[], NOW)?;
                // and the check of the allocations committed since the last tick (the ring)
                s.new_allocs_closed(&t.state(), seq, NOW, &mut r)?;
                Ok(r)
            })?;
            handling += ms;
            ended += r.allocs_ended;
        }
        ensure!(
            ended == TEARDOWNS,
            "{ended} allocations ended, not {TEARDOWNS}"
        );
        tick.push(handling);
    }
    ensure!(
        Tables::count(&t.allocs) == n && Tables::count(&t.chans) == n,
        "the live state is intact"
    );
    // The timed full sweep does its work: with every relay socket closed (and no notice
    // handled), one full sweep ends every allocation.
    drop(_live);
    let r = s.sweep(&t.state(), NOW, u64::MAX, Some(&UdpTable::read()?))?;
    ensure!(
        r.allocs_ended == n,
        "a full sweep ended {} of {n} allocations whose sockets closed",
        r.allocs_ended
    );
    let (dump, read, full, notices) = (
        Spread::of(dump),
        Spread::of(read),
        Spread::of(full),
        Spread::of(tick),
    );
    let pass = dump.median + full.median;
    let mut c = Cadence::new(None);
    c.done(Instant::now(), Duration::from_secs_f64(pass / 1e3));
    let every = c.every().as_secs_f64();
    Ok(SweepCost {
        allocations: n,
        repeats,
        dump_ms: dump,
        tables_read_ms: read,
        full_sweep_ms: full,
        notices_ms: notices,
        full_every_s: every,
        cpu_ms_per_s: pass / every + notices.median,
    })
}

/// The figures as a table (markdown).
pub fn render(costs: &[SweepCost]) -> String {
    let f = |s: &Spread| format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max);
    let mut out = format!(
        "| allocations | socket dump, ms | tables read, ms | full sweep, ms | {TEARDOWNS} notices handled, ms | full sweeps every | agent CPU, ms per s |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for c in costs {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} s | {:.1} |\n",
            c.allocations,
            f(&c.dump_ms),
            f(&c.tables_read_ms),
            f(&c.full_sweep_ms),
            f(&c.notices_ms),
            c.full_every_s,
            c.cpu_ms_per_s
        ));
    }
    out
}
