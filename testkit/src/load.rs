//! The load generator's library: TURN ChannelData load through the lab, and its accounting.
//!
//! [`run`] makes N allocations with one channel each through coturn (the real control exchange
//! with long-term credentials, [`crate::turn_client`]), then sends ChannelData from the client
//! namespace at a fixed offered rate or flat out, in batches (UDP GSO: one `sendmsg` with
//! `UDP_SEGMENT` carries up to 64 datagrams of one allocation), for a fixed time. An echo of its
//! own in the peer namespace sends every datagram back. Both receive sides use `recvmmsg` with
//! `UDP_GRO`, so the generator is not what limits the relay.
//!
//! Every payload starts with a [`Stamp`]: flow (allocation), sequence number, send time, and the
//! echo's own per-flow sequence number for the way back. [`SeqTracker`] turns arrivals into
//! delivered / duplicate / reordered / lost counts per direction, [`Histogram`] the round-trip
//! times into percentiles, and [`CpuSnapshot`] reads `/proc/stat` and `/proc/<pid>/stat` so a
//! run reports the CPU the whole machine (user, system, softirq) and coturn spent on it.
//!
//! It runs in a lab that is up already ([`crate::lab::Lab::existing`]), and [`start_agent`]
//! starts the turn-bpf agent in its server namespace.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::agent::AgentProc;
use crate::lab::{self, Host, Lab};
use crate::turn_client::{RelayFamily, TurnClient};

// ------------------------------------------------------------------------------------------
// Payload stamp
// ------------------------------------------------------------------------------------------

/// First bytes of every generated payload ("tbLd").
pub const STAMP_MAGIC: u32 = 0x7462_4c64;
/// Bytes of a [`Stamp`]; payloads are at least this long.
pub const STAMP_LEN: usize = 40;
/// The channel every allocation binds (each allocation has its own channel space).
pub const CHANNEL: u16 = 0x4000;
/// Largest number of datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 or more).
pub const MAX_BATCH: usize = 64;
/// Bytes of the ChannelData header.
const CHAN_HDR: usize = 4;

/// What the generator writes at the start of every payload (big-endian on the wire):
/// magic (4), flow (4), seq (8), sent_ns (8), echo_seq (8), hold_ns (8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// Which allocation (index) sent it.
    pub flow: u32,
    /// Per-flow sequence number, client → peer, from 0.
    pub seq: u64,
    /// Send time (CLOCK_REALTIME, ns), taken just before the send call.
    pub sent_ns: u64,
    /// Per-flow sequence number of the echo, peer → client, from 0.
    pub echo_seq: u64,
    /// How long the datagram sat in the echo (kernel receive timestamp to the echo's send), ns;
    /// subtracted from the round trip.
    pub hold_ns: u64,
}

impl Stamp {
    /// Writes the stamp at the start of `buf` (at least [`STAMP_LEN`] bytes).
    pub fn write(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&STAMP_MAGIC.to_be_bytes());
        buf[4..8].copy_from_slice(&self.flow.to_be_bytes());
        buf[8..16].copy_from_slice(&self.seq.to_be_bytes());
        buf[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
        buf[24..32].copy_from_slice(&self.echo_seq.to_be_bytes());
        buf[32..40].copy_from_slice(&self.hold_ns.to_be_bytes());
    }

    /// Reads a stamp from the start of `buf`; `None` when it is too short or not ours.
    pub fn read(buf: &[u8]) -> Option<Stamp> {
        let b = buf.get(..STAMP_LEN)?;
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        (u32_at(0) == STAMP_MAGIC).then(|| Stamp {
            flow: u32_at(4),
            seq: u64_at(8),
            sent_ns: u64_at(16),
            echo_seq: u64_at(24),
            hold_ns: u64_at(32),
        })
    }

    /// Sets what the echo adds to a stamped payload: its sequence number and hold time.
    pub fn set_echo(buf: &mut [u8], echo_seq: u64, hold_ns: u64) {
        buf[24..32].copy_from_slice(&echo_seq.to_be_bytes());
        buf[32..40].copy_from_slice(&hold_ns.to_be_bytes());
    }
}

/// CLOCK_REALTIME in ns (the clock of the kernel's receive timestamps).
pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ------------------------------------------------------------------------------------------
// Sequence accounting
// ------------------------------------------------------------------------------------------

/// How one arrival counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First copy, in order (higher than every earlier one).
    InOrder,
    /// First copy, but a higher sequence number arrived before it.
    Reordered,
    /// A copy of a sequence number already seen.
    Duplicate,
    /// Beyond [`SeqTracker::MAX_SEQ`]: not a sequence number we sent (ignored).
    Invalid,
}

/// Arrival accounting of one flow in one direction: which sequence numbers arrived (an exact
/// bitmap, so duplicates are caught however late), how many came out of order.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    highest: Option<u64>,
    counts: SeqCounts,
}

/// Counters of one or more [`SeqTracker`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqCounts {
    /// Every arrival, duplicates included.
    pub received: u64,
    /// Distinct sequence numbers that arrived (what was delivered).
    pub unique: u64,
    /// Arrivals of a sequence number already seen.
    pub duplicates: u64,
    /// First arrivals after a higher sequence number had arrived.
    pub reordered: u64,
    /// Sequence numbers below the highest one seen that have not arrived (gaps so far).
    pub gaps: u64,
    /// Arrivals with a sequence number we never sent.
    pub invalid: u64,
}

impl SeqCounts {
    /// Field-wise sum.
    pub fn add(&mut self, o: &SeqCounts) {
        self.received += o.received;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.gaps += o.gaps;
        self.invalid += o.invalid;
    }
}

impl SeqTracker {
    /// Largest sequence number accepted (a flow never sends 2^32 datagrams in one run).
    pub const MAX_SEQ: u64 = 1 << 32;

    /// Counts one arrival of `seq`.
    pub fn record(&mut self, seq: u64) -> Arrival {
        if seq >= Self::MAX_SEQ {
            self.counts.invalid += 1;
            return Arrival::Invalid;
        }
        self.counts.received += 1;
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            // Grow geometrically: appends are amortised O(1) at a steady rate.
            let want = (word + 1).max(self.seen.len() * 2).max(16);
            self.seen.resize(want, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.counts.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.seen[word] |= 1 << bit;
        self.counts.unique += 1;
        match self.highest {
            Some(h) if seq < h => {
                self.counts.reordered += 1;
                Arrival::Reordered
            }
            _ => {
                self.highest = Some(seq);
                Arrival::InOrder
            }
        }
    }

    /// The highest sequence number seen.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// The counters; `gaps` = sequence numbers below the highest that are still missing.
    pub fn counts(&self) -> SeqCounts {
        let mut c = self.counts;
        c.gaps = self.highest.map_or(0, |h| h + 1 - c.unique);
        c
    }

    /// Sent but never arrived.
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.counts.unique)
    }
}

// ------------------------------------------------------------------------------------------
// Histogram
// ------------------------------------------------------------------------------------------

/// Sub-buckets per power of two: values are kept within 1/128 (0.8%).
const HIST_SUB_BITS: u32 = 7;
const HIST_SUB: u64 = 1 << HIST_SUB_BITS;

/// A log-linear histogram of u64 values (HdrHistogram's layout, fixed precision): values below
/// 256 are exact, larger ones land in buckets 1/128 of their power of two wide.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; ((64 - HIST_SUB_BITS as usize) + 1) * HIST_SUB as usize],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        let log2 = 63 - (v | 1).leading_zeros();
        let shift = log2.saturating_sub(HIST_SUB_BITS);
        (u64::from(shift) * HIST_SUB + (v >> shift)) as usize
    }

    /// The smallest value and the width of bucket `idx`.
    fn bucket(idx: usize) -> (u64, u64) {
        let idx = idx as u64;
        if idx < 2 * HIST_SUB {
            return (idx, 1);
        }
        let shift = idx / HIST_SUB - 1;
        ((idx - shift * HIST_SUB) << shift, 1 << shift)
    }

    /// Counts one value.
    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Smallest value, if any.
    pub fn min(&self) -> Option<u64> {
        (self.total > 0).then_some(self.min)
    }

    /// Largest value, if any.
    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    /// Mean value, if any.
    pub fn mean(&self) -> Option<f64> {
        (self.total > 0).then(|| self.sum as f64 / self.total as f64)
    }

    /// The value at quantile `q` (0..=1): the smallest recorded value v such that at least
    /// `q` of all values are ≤ v, to the bucket's precision (its midpoint, within min..=max).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        // The extremes are known exactly.
        if rank == 1 {
            return Some(self.min);
        }
        if rank >= self.total {
            return Some(self.max);
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = Self::bucket(i);
                return Some((low + width / 2).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

// ------------------------------------------------------------------------------------------
// CPU accounting from /proc
// ------------------------------------------------------------------------------------------

/// The aggregate `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

/// Parses the aggregate `cpu ` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    (v.len() >= 4).then(|| CpuTicks {
        user: at(0),
        nice: at(1),
        system: at(2),
        idle: at(3),
        iowait: at(4),
        irq: at(5),
        softirq: at(6),
        steal: at(7),
    })
}

/// Clock ticks per second of `/proc` times.
pub fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .map_or(100, |hz| hz as u64)
}

/// Number of online CPUs (the `cpuN` lines of `/proc/stat`, which its totals sum over).
pub fn online_cpus() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|t| count_cpus(&t))
        .unwrap_or(0)
        .max(1)
}

/// The number of `cpuN` lines in the text of `/proc/stat`.
pub fn count_cpus(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
}

/// CPU times of one process from `/proc/<pid>/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcTimes {
    /// utime + stime (all threads).
    pub own: u64,
    /// A kernel thread (PF_KTHREAD).
    pub kthread: bool,
}

/// Parses the text of `/proc/<pid>/stat`.
pub fn parse_proc_pid_stat(stat: &str) -> Option<ProcTimes> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): flags is field 9, utime and stime fields 14 and 15.
    let n = |i: usize| -> Option<u64> { f.get(i)?.parse().ok() };
    Some(ProcTimes {
        own: n(11)? + n(12)?,
        kthread: n(6)? & PF_KTHREAD != 0,
    })
}

/// `/proc/stat` and the CPU times of every process at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    pub at: Instant,
    pub machine: CpuTicks,
    /// Online CPUs (what `machine` sums over).
    pub cpus: usize,
    pub procs: HashMap<u32, ProcTimes>,
}

impl CpuSnapshot {
    /// Reads `/proc/stat` and every `/proc/<pid>/stat` now.
    pub fn take() -> Result<CpuSnapshot> {
        let mut procs = HashMap::new();
        for e in std::fs::read_dir("/proc")
            .context("listing /proc")?
            .flatten()
        {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(t) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_proc_pid_stat(&s))
            {
                procs.insert(pid, t);
            }
        }
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Ok(CpuSnapshot {
            at: Instant::now(),
            machine: parse_proc_stat(&stat).context("no cpu line in /proc/stat")?,
            cpus: count_cpus(&stat).max(1),
            procs,
        })
    }
}

/// The processes of a run, for [`CpuUsage::between`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Roles {
    /// The load generator (client and echo): this process.
    pub generator: u32,
    pub coturn: Option<u32>,
    /// The turn-bpf agent, when attached.
    pub agent: Option<u32>,
}

/// CPU spent between two snapshots, in seconds (sums over all CPUs).
///
/// The machine's busy time is wall × CPUs minus idle, iowait and steal (idle time is exact on
/// a tickless kernel, while busy time sampled by the tick misses short bursts, which is most of
/// what a packet relay does); it is split into user, system, irq and softirq in the proportions
/// of the tick samples. The run's own time is that of every task taking part (generator,
/// coturn, agent, kernel threads), each exact (the scheduler's runtime); it includes the kernel
/// work they cause, softirqs too (this kernel has no IRQ_TIME_ACCOUNTING: a softirq is charged
/// to the task it runs in, and packet processing runs in the sender's). `other_s` is the rest of
/// the machine's busy time: other users of a shared machine, interrupts in idle context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUsage {
    /// Wall-clock time between the snapshots.
    pub wall_s: f64,
    /// Online CPUs.
    pub cpus: usize,
    /// The machine's busy time.
    pub busy_s: f64,
    /// user + nice, share of busy_s.
    pub user_s: f64,
    pub system_s: f64,
    pub softirq_s: f64,
    pub irq_s: f64,
    pub idle_s: f64,
    pub iowait_s: f64,
    /// Time the hypervisor ran someone else: neither ours nor idle.
    pub steal_s: f64,
    /// coturn's utime + stime.
    pub coturn_s: Option<f64>,
    /// The generator's utime + stime, with the kernel work its sends run inline.
    pub generator_s: f64,
    /// The agent's utime + stime.
    pub agent_s: Option<f64>,
    /// Kernel threads (ksoftirqd, kworkers).
    pub kernel_threads_s: f64,
    /// generator + coturn + agent + kernel threads: the run's CPU.
    pub run_s: f64,
    /// busy_s − run_s.
    pub other_s: f64,
}

impl CpuUsage {
    /// The difference `b - a`.
    pub fn between(a: &CpuSnapshot, b: &CpuSnapshot, roles: &Roles) -> CpuUsage {
        let hz = clock_ticks() as f64;
        let d = |x: u64, y: u64| y.saturating_sub(x) as f64 / hz;
        let (m, n) = (&a.machine, &b.machine);
        let wall_s = b.at.duration_since(a.at).as_secs_f64();
        let cpus = b.cpus;
        let idle_s = d(m.idle, n.idle);
        let iowait_s = d(m.iowait, n.iowait);
        let steal_s = d(m.steal, n.steal);
        let busy_s = (wall_s * cpus as f64 - idle_s - iowait_s - steal_s).max(0.0);
        let ticks = [
            d(m.user + m.nice, n.user + n.nice),
            d(m.system, n.system),
            d(m.softirq, n.softirq),
            d(m.irq, n.irq),
        ];
        let sum: f64 = ticks.iter().sum();
        let share = |t: f64| if sum > 0.0 { busy_s * t / sum } else { 0.0 };
        let proc_d = |pid: Option<u32>| -> Option<f64> {
            let pid = pid?;
            Some(d(a.procs.get(&pid)?.own, b.procs.get(&pid)?.own))
        };
        let kernel_threads_s: f64 = b
            .procs
            .iter()
            .filter(|(_, t)| t.kthread)
            .map(|(pid, t)| d(a.procs.get(pid).map_or(0, |x| x.own), t.own))
            .sum();
        let coturn_s = proc_d(roles.coturn);
        let generator_s = proc_d(Some(roles.generator)).unwrap_or(0.0);
        let agent_s = proc_d(roles.agent);
        let run_s =
            generator_s + coturn_s.unwrap_or(0.0) + agent_s.unwrap_or(0.0) + kernel_threads_s;
        CpuUsage {
            wall_s,
            cpus,
            busy_s,
            user_s: share(ticks[0]),
            system_s: share(ticks[1]),
            softirq_s: share(ticks[2]),
            irq_s: share(ticks[3]),
            idle_s,
            iowait_s,
            steal_s,
            coturn_s,
            generator_s,
            agent_s,
            kernel_threads_s,
            run_s,
            other_s: (busy_s - run_s).max(0.0),
        }
    }

    /// coturn's CPU as a percentage of one CPU (as `top` shows it).
    pub fn coturn_pct(&self) -> Option<f64> {
        self.coturn_s.map(|s| 100.0 * s / self.wall_s.max(1e-9))
    }

    /// The machine's busy time as a percentage of all its CPUs.
    pub fn busy_pct(&self) -> f64 {
        100.0 * self.busy_s / (self.wall_s.max(1e-9) * self.cpus.max(1) as f64)
    }

    /// `other_s` as a percentage of all CPUs.
    pub fn other_pct(&self) -> f64 {
        100.0 * self.other_s / (self.wall_s.max(1e-9) * self.cpus.max(1) as f64)
    }
}

/// Waits (up to `max_wait`) until the machine's busy time outside `roles` stays below
/// `threshold_pct` of all CPUs for a 300 ms sample; returns the last sample's percentage. On a
/// shared machine this keeps other users' bursts (builds, tests) out of a measurement.
pub fn wait_for_quiet(roles: &Roles, threshold_pct: f64, max_wait: Duration) -> Result<f64> {
    let t0 = Instant::now();
    loop {
        let a = CpuSnapshot::take()?;
        thread::sleep(Duration::from_millis(300));
        let b = CpuSnapshot::take()?;
        let pct = CpuUsage::between(&a, &b, roles).other_pct();
        if pct < threshold_pct || t0.elapsed() >= max_wait {
            return Ok(pct);
        }
    }
}

// ------------------------------------------------------------------------------------------
// The agent
// ------------------------------------------------------------------------------------------

/// The agent's counters as it printed them on exit: name → value (non-zero ones only).
pub type AgentCounters = BTreeMap<String, u64>;

/// Start turn-bpf (`bin`) in `srv_ns` with `args` and wait until it has attached; its output
/// goes to a log file beside `bin`. Stop it with [`AgentProc::stop_counters`].
pub fn start_agent(bin: &Path, srv_ns: &str, args: &[&str]) -> Result<AgentProc> {
    let log = std::env::temp_dir().join(format!("turn-bpf-agent-{srv_ns}.log"));
    AgentProc::start_ready(bin, srv_ns, args, &log)
}

// ------------------------------------------------------------------------------------------
// Sockets: GSO sends, GRO receives
// ------------------------------------------------------------------------------------------

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Large buffers (root may exceed the sysctl limits), UDP GRO and receive timestamps on a data
/// socket.
fn tune_socket(fd: RawFd, rcvbuf: i32, sndbuf: i32) -> Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcvbuf)
        .or_else(|_| setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf))
        .context("setting SO_RCVBUF")?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, sndbuf)
        .or_else(|_| setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, sndbuf))
        .context("setting SO_SNDBUF")?;
    setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1).context("enabling UDP_GRO")?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
        .context("enabling SO_TIMESTAMPNS")?;
    Ok(())
}

/// Room for the control messages of one message: `UDP_GRO` (an int) and `SCM_TIMESTAMPNS` (a
/// timespec) on receive, `UDP_SEGMENT` (a u16) on send.
const CMSG_BUF: usize = 64;

/// Writes a `SOL_UDP/UDP_SEGMENT` control message into `buf`; returns its length.
fn put_gso_cmsg(buf: &mut [u8; CMSG_BUF], seg: u16) -> usize {
    // SAFETY: buf has room for a header and a u16 (asserted) and the pointers come from a
    // msghdr that describes exactly buf.
    unsafe {
        let space = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as usize;
        assert!(space <= CMSG_BUF);
        let mut mh: libc::msghdr = mem::zeroed();
        mh.msg_control = buf.as_mut_ptr().cast();
        mh.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&mh);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
        space
    }
}

/// One `sendmsg` of `buf` to the socket's connected peer, as datagrams of `seg` bytes each
/// (UDP GSO) when `buf` holds more than one.
fn send_gso(fd: RawFd, buf: &[u8], seg: usize) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut _,
        iov_len: buf.len(),
    };
    let mut cbuf = [0u8; CMSG_BUF];
    // SAFETY: msghdr points at live locals for the duration of the call.
    unsafe {
        let mut mh: libc::msghdr = mem::zeroed();
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        if buf.len() > seg {
            mh.msg_controllen = put_gso_cmsg(&mut cbuf, seg as u16);
            mh.msg_control = cbuf.as_mut_ptr().cast();
        }
        let n = libc::sendmsg(fd, &mh, 0);
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Buffers for `recvmmsg` with `UDP_GRO`: each message may hold many datagrams of one flow.
struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<[u8; CMSG_BUF]>,
    hdrs: Vec<libc::mmsghdr>,
}

/// One received message: its bytes, the GRO segment size (the datagram size when coalesced),
/// its source (IPv4 or IPv6, with the length the kernel wrote), and the kernel's receive time
/// (CLOCK_REALTIME ns).
struct Received<'a> {
    data: &'a mut [u8],
    seg: usize,
    from: libc::sockaddr_storage,
    from_len: libc::socklen_t,
    rx_ns: Option<u64>,
}

impl RecvBatch {
    fn new(n: usize, size: usize) -> RecvBatch {
        RecvBatch {
            bufs: vec![vec![0u8; size]; n],
            // SAFETY: plain C structs, all-zero is valid.
            iovs: vec![unsafe { mem::zeroed() }; n],
            names: vec![unsafe { mem::zeroed() }; n],
            cmsgs: vec![[0u8; CMSG_BUF]; n],
            hdrs: vec![unsafe { mem::zeroed() }; n],
        }
    }

    fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// `recvmmsg(fd, MSG_DONTWAIT)`: the number of messages (0 when none is waiting).
    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..self.bufs.len() {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_BUF;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    fn get(&mut self, i: usize) -> Received<'_> {
        let h = &self.hdrs[i].msg_hdr;
        let len = self.hdrs[i].msg_len as usize;
        let mut seg = len;
        let mut rx_ns = None;
        // SAFETY: walking the control messages the kernel wrote into our buffer.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_UDP, libc::UDP_GRO) => {
                        let s = std::ptr::read_unaligned(data.cast::<i32>());
                        if s > 0 {
                            seg = s as usize;
                        }
                    }
                    (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                        let ts = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                        rx_ns = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        Received {
            data: &mut self.bufs[i][..len],
            seg: seg.max(1),
            from: self.names[i],
            from_len: h.msg_namelen,
            rx_ns,
        }
    }
}

/// Waits until one of `fds` is readable or `timeout` passes (zero: just look); returns the
/// indexes of the readable ones in `out`.
fn poll_readable(fds: &[RawFd], timeout: Duration, out: &mut Vec<usize>) -> io::Result<()> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    out.clear();
    // SAFETY: p is a valid array of pollfd.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as _, timeout.as_millis() as i32) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(())
        } else {
            Err(e)
        };
    }
    out.extend(
        p.iter()
            .enumerate()
            .filter(|(_, q)| q.revents != 0)
            .map(|(i, _)| i),
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The run
// ------------------------------------------------------------------------------------------

/// What the client sends and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMode {
    /// Through the TURN server: allocations, channels, ChannelData.
    Turn,
    /// Plain UDP straight to the echo, routed through the server's namespace (no TURN): the
    /// floor under any relay, with a forwarder such as the baseline attached there.
    Plain,
}

/// The address family of the client, server and peer addresses (`turn-load --family 4|6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl std::str::FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Family, String> {
        match s {
            "4" => Ok(Family::V4),
            "6" => Ok(Family::V6),
            _ => Err(format!("family must be 4 or 6, not {s:?}")),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "4",
            Family::V6 => "6",
        })
    }
}

/// What to send, where, and for how long.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadConfig {
    /// TURN (the real thing) or plain UDP (the floor).
    pub path: PathMode,
    /// Namespace of the client side (allocations, sender, receiver).
    pub cli_ns: String,
    /// Namespace of the echo peer.
    pub peer_ns: String,
    /// The TURN server (the client's family).
    pub server: SocketAddr,
    /// Address the client sockets bind (the client namespace's).
    pub client_ip: IpAddr,
    /// Address the echo binds (the peer namespace's). The allocations ask for a relayed
    /// address of its family when it is IPv6 (REQUESTED-ADDRESS-FAMILY), coturn's default
    /// otherwise.
    pub peer_ip: IpAddr,
    pub user: String,
    pub pass: String,
    /// Allocations (each one client socket, one channel to the echo).
    pub allocations: usize,
    /// Offered client → peer datagrams per second over all allocations; `None`: flat out.
    pub rate: Option<u64>,
    /// How long to send.
    pub duration: Duration,
    /// UDP payload of the peer datagrams (the ChannelData adds 4 bytes); ≥ [`STAMP_LEN`].
    pub payload_len: usize,
    /// Most datagrams per send call (GSO segments), 1..=[`MAX_BATCH`].
    pub batch: usize,
    /// The sender wakes this often and sends what is due (at a fixed rate).
    pub tick: Duration,
    /// A receiver that found data sleeps this long before it looks again, so datagrams are taken
    /// in batches rather than one wake-up each (interrupt moderation, in user space). Round-trip
    /// times do not include it: they run from kernel receive timestamps, minus the echo's hold.
    pub moderation: Duration,
    /// Longest wait for stragglers after sending stops.
    pub max_drain: Duration,
    /// coturn's pid, for its CPU time.
    pub coturn_pid: Option<u32>,
    /// The agent's pid, if one is attached (its CPU is the run's, not foreign).
    pub agent_pid: Option<u32>,
}

impl LoadConfig {
    /// A configuration for the lab `lab` with the lab's IPv4 addresses and credentials.
    pub fn for_lab(lab: &Lab) -> LoadConfig {
        LoadConfig::for_lab_family(lab, Family::V4)
    }

    /// [`LoadConfig::for_lab`] with client, server and peer addresses of `family` (the lab
    /// has both, scripts/lab.sh).
    pub fn for_lab_family(lab: &Lab, family: Family) -> LoadConfig {
        let (server, client_ip, peer_ip) = match family {
            Family::V4 => (
                lab::TURN_SERVER_V4,
                IpAddr::V4(lab::CLIENT_V4),
                IpAddr::V4(lab::PEER_V4),
            ),
            Family::V6 => (
                lab::TURN_SERVER_V6,
                IpAddr::V6(lab::CLIENT_V6),
                IpAddr::V6(lab::PEER_V6),
            ),
        };
        LoadConfig {
            path: PathMode::Turn,
            cli_ns: lab.ns(Host::Cli),
            peer_ns: lab.ns(Host::Peer),
            server,
            client_ip,
            peer_ip,
            user: lab::TURN_USER.into(),
            pass: lab::TURN_PASS.into(),
            allocations: 16,
            rate: Some(10_000),
            duration: Duration::from_secs(3),
            payload_len: 128,
            batch: MAX_BATCH,
            tick: Duration::from_millis(1),
            moderation: Duration::from_micros(500),
            max_drain: Duration::from_secs(2),
            coturn_pid: lab.turnserver_pid(),
            agent_pid: None,
        }
    }
}

/// One direction's delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DirReport {
    /// Datagrams handed to the kernel by the sending side.
    pub sent: u64,
    /// Arrival counts at the receiving side (after the drain).
    pub arrivals: SeqCounts,
    /// sent − distinct arrivals.
    pub lost: u64,
    /// lost / sent, %.
    pub loss_pct: f64,
    /// Sent per second of the sending window.
    pub offered_pps: f64,
    /// Distinct arrivals during the sending window, per second of it.
    pub delivered_pps: f64,
}

impl DirReport {
    /// From what was sent, what arrived, and how much of it arrived within `window_s`.
    pub fn new(sent: u64, arrivals: SeqCounts, in_window: u64, window_s: f64) -> DirReport {
        let lost = sent.saturating_sub(arrivals.unique);
        let w = window_s.max(1e-9);
        DirReport {
            sent,
            arrivals,
            lost,
            loss_pct: if sent > 0 {
                100.0 * lost as f64 / sent as f64
            } else {
                0.0
            },
            offered_pps: sent as f64 / w,
            delivered_pps: in_window as f64 / w,
        }
    }
}

/// Reads a number that may have been written as `null` (serde_json writes NaN so) as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Round-trip times, µs (NaN without samples).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RttReport {
    pub samples: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub p50_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub p90_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub p99_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub p999_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub max_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_us: f64,
}

impl RttReport {
    /// Percentiles of a histogram of nanoseconds.
    pub fn of(h: &Histogram) -> RttReport {
        let us = |v: Option<u64>| v.map_or(f64::NAN, |v| v as f64 / 1000.0);
        RttReport {
            samples: h.count(),
            p50_us: us(h.quantile(0.50)),
            p90_us: us(h.quantile(0.90)),
            p99_us: us(h.quantile(0.99)),
            p999_us: us(h.quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean().map_or(f64::NAN, |m| m / 1000.0),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    pub path: PathMode,
    /// Target offered rate (client → peer datagrams/s); `None`: flat out.
    pub target_pps: Option<u64>,
    pub allocations: usize,
    pub payload_len: usize,
    pub batch: usize,
    /// The sending window, s.
    pub window_s: f64,
    /// Client → peer, counted at the echo.
    pub c2p: DirReport,
    /// Peer → client (what the echo sent back), counted at the client by the echo's sequence.
    pub p2c: DirReport,
    /// The client's datagrams that came back, by the client's sequence (the round trip).
    pub round_trip: DirReport,
    /// Client send call → client kernel receive, minus the time in the echo.
    pub rtt: RttReport,
    /// CPU during the sending window.
    pub cpu: CpuUsage,
    /// Relayed datagrams (both directions, delivered during the window) per second.
    pub relayed_pps: f64,
    /// The run's CPU time (every task taking part, with the kernel work it causes) per relayed
    /// datagram, ns (NaN when nothing was relayed).
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_ns_per_relayed: f64,
    /// The machine's whole busy time per relayed datagram, ns (other users included).
    #[serde(deserialize_with = "nan_if_null")]
    pub machine_ns_per_relayed: f64,
    /// coturn's CPU during the window, % of one CPU.
    pub coturn_cpu_pct: Option<f64>,
    /// Send calls that failed (e.g. ENOBUFS): their datagrams are not counted as sent.
    pub send_errors: u64,
    /// Datagrams at the receivers that were not ours (not ChannelData on our channel, no stamp).
    pub foreign: u64,
    /// How long the drain after the window took, s.
    pub drain_s: f64,
}

/// State shared by the run's threads.
struct Shared {
    epoch: Instant,
    stop: AtomicBool,
    /// ns since epoch when sending stopped (u64::MAX while it runs).
    window_end_ns: AtomicU64,
    /// Arrivals so far at the client and at the echo (for the drain).
    client_arrivals: AtomicU64,
    echo_arrivals: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn in_window(&self) -> bool {
        self.now_ns() <= self.window_end_ns.load(Ordering::Relaxed)
    }
}

/// What the echo thread counted.
#[derive(Default)]
struct EchoResult {
    by_flow: Vec<SeqTracker>,
    echoed: Vec<u64>,
    in_window: u64,
    foreign: u64,
    send_errors: u64,
}

/// What the client's receive thread counted.
#[derive(Default)]
struct ClientRxResult {
    round_trip: Vec<SeqTracker>,
    p2c: Vec<SeqTracker>,
    rtt: Histogram,
    rt_in_window: u64,
    p2c_in_window: u64,
    foreign: u64,
}

/// Echoes every datagram of ours back to its sender (the relayed address), stamped with a
/// per-flow sequence number and the time it was held here.
fn echo_thread(
    sock: UdpSocket,
    flows: usize,
    moderation: Duration,
    sh: Arc<Shared>,
) -> Result<EchoResult> {
    let fd = sock.as_raw_fd();
    let mut batch = RecvBatch::new(32, 65536);
    let cap = batch.capacity();
    let mut res = EchoResult {
        by_flow: vec![SeqTracker::default(); flows],
        echoed: vec![0; flows],
        ..Default::default()
    };
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(cap);
    let mut names: Vec<(libc::sockaddr_storage, libc::socklen_t)> = Vec::with_capacity(cap);
    let mut cmsgs: Vec<[u8; CMSG_BUF]> = vec![[0; CMSG_BUF]; cap];
    let mut clens: Vec<usize> = Vec::with_capacity(cap);
    let mut ready = Vec::new();
    loop {
        let n = batch.recv(fd)?;
        if n == 0 {
            if sh.stop.load(Ordering::Relaxed) {
                return Ok(res);
            }
            poll_readable(&[fd], Duration::from_millis(20), &mut ready)?;
            continue;
        }
        let now_rt = realtime_ns();
        let in_window = sh.in_window();
        iovs.clear();
        names.clear();
        clens.clear();
        let mut arrivals = 0;
        for i in 0..n {
            let r = batch.get(i);
            let seg = r.seg;
            let hold = r.rx_ns.map_or(0, |t| now_rt.saturating_sub(t));
            let mut segs = 0usize;
            let mut ours = true;
            for d in r.data.chunks_mut(seg) {
                segs += 1;
                let Some(st) = Stamp::read(d).filter(|s| (s.flow as usize) < flows) else {
                    ours = false;
                    continue;
                };
                let flow = st.flow as usize;
                arrivals += 1;
                let a = res.by_flow[flow].record(st.seq);
                if in_window && matches!(a, Arrival::InOrder | Arrival::Reordered) {
                    res.in_window += 1;
                }
                Stamp::set_echo(d, res.echoed[flow], hold);
                res.echoed[flow] += 1;
            }
            if !ours {
                res.foreign += 1;
                continue;
            }
            iovs.push(libc::iovec {
                iov_base: r.data.as_mut_ptr().cast(),
                iov_len: r.data.len(),
            });
            names.push((r.from, r.from_len));
            clens.push(if segs > 1 {
                put_gso_cmsg(&mut cmsgs[iovs.len() - 1], seg as u16)
            } else {
                0
            });
        }
        sh.echo_arrivals.fetch_add(arrivals, Ordering::Relaxed);
        // One sendmmsg for the whole batch: each message back to its sender, re-segmented the
        // way it arrived.
        let mut hdrs: Vec<libc::mmsghdr> = (0..iovs.len())
            .map(|i| {
                // SAFETY: a plain C struct; the pointers refer to vectors that outlive the call.
                let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_name = (&mut names[i].0 as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = names[i].1;
                if clens[i] > 0 {
                    h.msg_hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
                    h.msg_hdr.msg_controllen = clens[i];
                }
                h
            })
            .collect();
        let mut off = 0;
        while off < hdrs.len() {
            // SAFETY: as above.
            let sent = unsafe {
                libc::sendmmsg(fd, hdrs[off..].as_mut_ptr(), (hdrs.len() - off) as u32, 0)
            };
            if sent <= 0 {
                // Skip the message that failed (its datagrams count as lost on the way back).
                res.send_errors += 1;
                off += 1;
            } else {
                off += sent as usize;
            }
        }
        if n < cap && !moderation.is_zero() {
            thread::sleep(moderation);
        }
    }
}

/// Receives the echoed datagrams on every client socket: round trips, the way back, RTTs.
fn client_rx_thread(
    socks: &[Flow],
    path: PathMode,
    moderation: Duration,
    sh: Arc<Shared>,
) -> Result<ClientRxResult> {
    let flows = socks.len();
    let fds: Vec<RawFd> = socks.iter().map(Flow::fd).collect();
    let mut batch = RecvBatch::new(32, 65536);
    let mut res = ClientRxResult {
        round_trip: vec![SeqTracker::default(); flows],
        p2c: vec![SeqTracker::default(); flows],
        ..Default::default()
    };
    let mut ready = Vec::new();
    let mut wait = Duration::from_millis(20);
    loop {
        // Block until something arrives; after a batch, sleep, then only look (one poll call
        // tells which of the sockets have data).
        poll_readable(&fds, wait, &mut ready)?;
        if ready.is_empty() {
            if sh.stop.load(Ordering::Relaxed) {
                return Ok(res);
            }
            wait = Duration::from_millis(20);
            continue;
        }
        for &i in &ready {
            loop {
                let n = batch.recv(fds[i])?;
                if n == 0 {
                    break;
                }
                let now_rt = realtime_ns();
                let in_window = sh.in_window();
                let mut arrivals = 0;
                for m in 0..n {
                    let r = batch.get(m);
                    let rx_ns = r.rx_ns.unwrap_or(now_rt);
                    for d in r.data.chunks(r.seg) {
                        let st = match path {
                            // ChannelData on our channel (padded or not) with our stamp.
                            PathMode::Turn => {
                                let ok = d.len() >= CHAN_HDR + STAMP_LEN
                                    && u16::from_be_bytes([d[0], d[1]]) == CHANNEL
                                    && usize::from(u16::from_be_bytes([d[2], d[3]])) + CHAN_HDR
                                        <= d.len();
                                if ok {
                                    Stamp::read(&d[CHAN_HDR..])
                                } else {
                                    None
                                }
                            }
                            PathMode::Plain => Stamp::read(d),
                        };
                        let Some(st) = st.filter(|s| (s.flow as usize) < flows) else {
                            res.foreign += 1;
                            continue;
                        };
                        arrivals += 1;
                        let flow = st.flow as usize;
                        if res.round_trip[flow].record(st.seq) == Arrival::Duplicate {
                            continue;
                        }
                        res.rtt
                            .record(rx_ns.saturating_sub(st.sent_ns).saturating_sub(st.hold_ns));
                        let a = res.p2c[flow].record(st.echo_seq);
                        if in_window {
                            res.rt_in_window += 1;
                            if a != Arrival::Duplicate {
                                res.p2c_in_window += 1;
                            }
                        }
                    }
                }
                sh.client_arrivals.fetch_add(arrivals, Ordering::Relaxed);
                if n < batch.capacity() {
                    break;
                }
            }
        }
        if !moderation.is_zero() {
            thread::sleep(moderation);
        }
        wait = Duration::ZERO;
    }
}

/// What the sender did.
struct SendResult {
    sent: Vec<u64>,
    errors: u64,
    started_ns: u64,
    ended_ns: u64,
}

/// Sends stamped ChannelData round-robin over the allocations: at `rate`, every `tick` what is
/// due (spread over the flows, up to `batch` per send call), or flat out in full batches.
fn sender_thread(socks: &[Flow], cfg: LoadConfig, sh: Arc<Shared>) -> SendResult {
    // Sleep precisely: the default 50 µs timer slack would make pacing lumpy.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let flows = socks.len();
    let fds: Vec<RawFd> = socks.iter().map(Flow::fd).collect();
    let hdr = match cfg.path {
        PathMode::Turn => CHAN_HDR,
        PathMode::Plain => 0,
    };
    let frame = hdr + cfg.payload_len;
    let mut buf = vec![0u8; frame * cfg.batch];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    if hdr > 0 {
        for f in buf.chunks_mut(frame) {
            f[0..2].copy_from_slice(&CHANNEL.to_be_bytes());
            f[2..4].copy_from_slice(&(cfg.payload_len as u16).to_be_bytes());
        }
    }
    let mut seq = vec![0u64; flows];
    let mut errors = 0;
    let mut total: u64 = 0;
    let mut next_flow = 0;
    let tick_ns = cfg.tick.as_nanos().max(1) as u64;
    let start = sh.now_ns();
    let end = start + cfg.duration.as_nanos() as u64;
    let mut ticks: u64 = 0;
    loop {
        let now = sh.now_ns();
        if now >= end {
            break;
        }
        // What to send now: everything due at a fixed rate, or one full batch per flow.
        let mut due = match cfg.rate {
            None => (cfg.batch * flows) as u64,
            Some(r) => {
                let target = (u128::from(now - start) * u128::from(r) / 1_000_000_000) as u64 + 1;
                target.saturating_sub(total)
            }
        };
        let per_flow = due.div_ceil(flows as u64).clamp(1, cfg.batch as u64);
        while due > 0 {
            let k = due.min(per_flow) as usize;
            let flow = next_flow;
            next_flow = (next_flow + 1) % flows;
            let sent_ns = realtime_ns();
            for (j, f) in buf.chunks_mut(frame).take(k).enumerate() {
                Stamp {
                    flow: flow as u32,
                    seq: seq[flow] + j as u64,
                    sent_ns,
                    ..Default::default()
                }
                .write(&mut f[hdr..]);
            }
            match send_gso(fds[flow], &buf[..k * frame], frame) {
                Ok(_) => {
                    seq[flow] += k as u64;
                    total += k as u64;
                    due -= k as u64;
                }
                Err(_) => {
                    // The socket's queue is full: give the receivers the CPU, try next time.
                    errors += 1;
                    thread::yield_now();
                    break;
                }
            }
        }
        if cfg.rate.is_some() {
            ticks += 1;
            let next = start + ticks * tick_ns;
            let now = sh.now_ns();
            if next > now {
                thread::sleep(Duration::from_nanos(next - now));
            } else {
                ticks = (now - start) / tick_ns;
            }
        }
    }
    let ended = sh.now_ns();
    sh.window_end_ns.store(ended, Ordering::SeqCst);
    SendResult {
        sent: seq,
        errors,
        started_ns: start,
        ended_ns: ended,
    }
}

/// One allocation with its channel to the echo (or, for plain UDP, a socket connected to the
/// echo), ready for data.
/// One flow's socket: plain UDP to the echo, or a TURN client's own socket (one descriptor per
/// flow, shared by the sender and the receiver threads by number: this machine's descriptor
/// limit, 20,000, must hold ten thousand flows).
enum Flow {
    Plain(UdpSocket),
    Turn(Box<TurnClient>),
}

impl Flow {
    fn fd(&self) -> RawFd {
        match self {
            Flow::Plain(s) => s.as_raw_fd(),
            Flow::Turn(c) => c.socket().as_raw_fd(),
        }
    }
}

fn allocate_flows(cfg: &LoadConfig, peer: SocketAddr) -> Result<Vec<Flow>> {
    let mut flows = Vec::with_capacity(cfg.allocations);
    for i in 0..cfg.allocations {
        let ip = cfg.client_ip;
        let sock = lab::in_ns(&cfg.cli_ns, move || UdpSocket::bind((ip, 0)))
            .with_context(|| format!("binding a client socket in {}", cfg.cli_ns))?;
        if cfg.path == PathMode::Plain {
            sock.connect(peer)
                .context("connecting a client socket to the echo")?;
            tune_socket(sock.as_raw_fd(), 4 << 20, 4 << 20)?;
            flows.push(Flow::Plain(sock));
            continue;
        }
        // Connected to the server (the client sends its requests there too): the data path
        // sends with send(2) and receives only the server's datagrams.
        sock.connect(cfg.server)
            .context("connecting a client socket to the server")?;
        tune_socket(sock.as_raw_fd(), 4 << 20, 4 << 20)?;
        let mut client = TurnClient::new(sock, cfg.server, &cfg.user, &cfg.pass);
        let family = if cfg.peer_ip.is_ipv6() {
            RelayFamily::V6
        } else {
            RelayFamily::Default
        };
        client
            .allocate_family(Some(600), family)
            .with_context(|| format!("allocation {i}: Allocate"))?;
        client
            .channel_bind(CHANNEL, peer)
            .with_context(|| format!("allocation {i}: ChannelBind"))?;
        flows.push(Flow::Turn(Box::new(client)));
    }
    Ok(flows)
}

/// Runs one measurement (see the module documentation). Needs root and the lab's namespaces.
pub fn run(cfg: &LoadConfig) -> Result<LoadReport> {
    ensure!(cfg.allocations >= 1, "at least one allocation");
    ensure!(
        (STAMP_LEN..=8192).contains(&cfg.payload_len),
        "payload must be {STAMP_LEN}..=8192 bytes"
    );
    ensure!(
        (1..=MAX_BATCH).contains(&cfg.batch),
        "batch must be 1..={MAX_BATCH}"
    );
    ensure!(cfg.rate != Some(0), "rate must be > 0 (or flat out)");
    let sh = Arc::new(Shared {
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        window_end_ns: AtomicU64::new(u64::MAX),
        client_arrivals: AtomicU64::new(0),
        echo_arrivals: AtomicU64::new(0),
    });

    // The echo first: the channels bind to its address.
    let peer_ip = cfg.peer_ip;
    let echo_sock = lab::in_ns(&cfg.peer_ns, move || UdpSocket::bind((peer_ip, 0)))
        .with_context(|| format!("binding the echo socket in {}", cfg.peer_ns))?;
    tune_socket(echo_sock.as_raw_fd(), 16 << 20, 16 << 20)?;
    let peer = echo_sock.local_addr()?;
    let echo = {
        let sh = sh.clone();
        let (flows, moderation) = (cfg.allocations, cfg.moderation);
        thread::Builder::new()
            .name("load-echo".into())
            .spawn(move || echo_thread(echo_sock, flows, moderation, sh))?
    };
    let stop_all = |sh: &Shared| sh.stop.store(true, Ordering::SeqCst);

    let flows = match allocate_flows(cfg, peer) {
        Ok(f) => f,
        Err(e) => {
            stop_all(&sh);
            let _ = echo.join();
            return Err(e);
        }
    };
    // The threads use the flows' descriptors; the flows outlive them (joined below, also when
    // something fails in between: the Arc keeps the sockets open until the last user goes).
    let flows = Arc::new(flows);
    let rx = {
        let (sh, flows) = (sh.clone(), flows.clone());
        let (path, moderation) = (cfg.path, cfg.moderation);
        thread::Builder::new()
            .name("load-rx".into())
            .spawn(move || client_rx_thread(&flows, path, moderation, sh))?
    };

    let roles = Roles {
        generator: std::process::id(),
        coturn: cfg.coturn_pid,
        agent: cfg.agent_pid,
    };
    let cpu0 = CpuSnapshot::take()?;
    let tx = {
        let (sh, flows) = (sh.clone(), flows.clone());
        let cfg = cfg.clone();
        thread::Builder::new()
            .name("load-tx".into())
            .spawn(move || sender_thread(&flows, cfg, sh))?
    };
    let sent = tx.join().expect("the sender thread panicked");
    let cpu1 = CpuSnapshot::take()?;

    // Drain: wait until arrivals stop moving (at least 100 ms, at most max_drain).
    let t_drain = Instant::now();
    let mut last = (u64::MAX, u64::MAX);
    loop {
        thread::sleep(Duration::from_millis(100));
        let now = (
            sh.client_arrivals.load(Ordering::Relaxed),
            sh.echo_arrivals.load(Ordering::Relaxed),
        );
        if now == last || t_drain.elapsed() >= cfg.max_drain {
            break;
        }
        last = now;
    }
    let drain_s = t_drain.elapsed().as_secs_f64();
    stop_all(&sh);
    let echo = echo.join().expect("the echo thread panicked")?;
    let rx = rx.join().expect("the receive thread panicked")?;

    // Give the allocations back (coturn forgets them; an agent sees it).
    let flows = Arc::try_unwrap(flows)
        .map_err(|_| anyhow::anyhow!("a load thread still holds the flows after being joined"))?;
    for mut c in flows.into_iter().filter_map(|f| match f {
        Flow::Turn(c) => Some(*c),
        Flow::Plain(_) => None,
    }) {
        c.set_retransmit(2, Duration::from_millis(200));
        if let Err(e) = c.refresh(0) {
            log::debug!("deallocating: {e}");
        }
    }

    let window_s = (sent.ended_ns - sent.started_ns) as f64 / 1e9;
    let sum = |v: &[SeqTracker]| {
        let mut c = SeqCounts::default();
        for t in v {
            c.add(&t.counts());
        }
        c
    };
    let total_sent: u64 = sent.sent.iter().sum();
    let total_echoed: u64 = echo.echoed.iter().sum();
    let c2p = DirReport::new(total_sent, sum(&echo.by_flow), echo.in_window, window_s);
    let p2c = DirReport::new(total_echoed, sum(&rx.p2c), rx.p2c_in_window, window_s);
    let round_trip = DirReport::new(total_sent, sum(&rx.round_trip), rx.rt_in_window, window_s);
    let cpu = CpuUsage::between(&cpu0, &cpu1, &roles);
    let relayed_pps = c2p.delivered_pps + p2c.delivered_pps;
    let relayed = relayed_pps * window_s;
    let per = |s: f64| {
        if relayed > 0.0 {
            s * 1e9 / relayed
        } else {
            f64::NAN
        }
    };
    Ok(LoadReport {
        path: cfg.path,
        target_pps: cfg.rate,
        allocations: cfg.allocations,
        payload_len: cfg.payload_len,
        batch: cfg.batch,
        window_s,
        c2p,
        p2c,
        round_trip,
        rtt: RttReport::of(&rx.rtt),
        relayed_pps,
        cpu_ns_per_relayed: per(cpu.run_s),
        machine_ns_per_relayed: per(cpu.busy_s),
        coturn_cpu_pct: cpu.coturn_pct(),
        cpu,
        send_errors: sent.errors + echo.send_errors,
        foreign: echo.foreign + rx.foreign,
        drain_s,
    })
}

impl LoadReport {
    /// A few lines for people.
    pub fn render(&self) -> String {
        let target = self
            .target_pps
            .map_or("flat out".to_string(), |r| format!("{r} pps"));
        let coturn = self
            .coturn_cpu_pct
            .map_or("?".into(), |p| format!("{p:.1}%"));
        let c = &self.cpu;
        format!(
            "offered {target}: {} allocations, {} B payload, {:.2} s\n\
             \x20 client->peer  offered {:>9.0} pps  delivered {:>9.0} pps  loss {:.3}% \
             (dup {}, reordered {})\n\
             \x20 peer->client  offered {:>9.0} pps  delivered {:>9.0} pps  loss {:.3}% \
             (dup {}, reordered {})\n\
             \x20 round trip    loss {:.3}%  rtt p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  \
             max {:.1} us\n\
             \x20 cpu           machine {:.1}% busy: user {:.2} s, system {:.2} s, softirq {:.2} s; \
             coturn {coturn}, generator {:.2} s, kernel threads {:.2} s; not the run's {:.2} s \
             ({:.1}%)\n\
             \x20 per relayed datagram {:.0} ns of CPU by the run ({:.0} ns by the whole machine)\n",
            self.allocations,
            self.payload_len,
            self.window_s,
            self.c2p.offered_pps,
            self.c2p.delivered_pps,
            self.c2p.loss_pct,
            self.c2p.arrivals.duplicates,
            self.c2p.arrivals.reordered,
            self.p2c.offered_pps,
            self.p2c.delivered_pps,
            self.p2c.loss_pct,
            self.p2c.arrivals.duplicates,
            self.p2c.arrivals.reordered,
            self.round_trip.loss_pct,
            self.rtt.p50_us,
            self.rtt.p99_us,
            self.rtt.p999_us,
            self.rtt.max_us,
            c.busy_pct(),
            c.user_s,
            c.system_s,
            c.softirq_s,
            c.generator_s,
            c.kernel_threads_s,
            c.other_s,
            c.other_pct(),
            self.cpu_ns_per_relayed,
            self.machine_ns_per_relayed,
        )
    }
}

/// Where the turn-bpf binary is: next to the running executable (target/release), else on
/// `PATH`.
pub fn default_agent_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("turn-bpf")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("turn-bpf"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_rejects_foreign_bytes() {
        let s = Stamp {
            flow: 7,
            seq: 1 << 40,
            sent_ns: 123_456_789,
            echo_seq: 0,
            hold_ns: 0,
        };
        let mut buf = [0u8; 64];
        s.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(s));
        Stamp::set_echo(&mut buf, 99, 1234);
        let back = Stamp::read(&buf).unwrap();
        assert_eq!((back.echo_seq, back.hold_ns), (99, 1234));
        assert_eq!(
            (back.flow, back.seq, back.sent_ns),
            (7, 1 << 40, 123_456_789)
        );
        assert_eq!(Stamp::read(&buf[..STAMP_LEN - 1]), None);
        buf[0] ^= 1;
        assert_eq!(Stamp::read(&buf), None);
    }

    #[test]
    fn in_order_arrivals_have_no_gaps() {
        let mut t = SeqTracker::default();
        for s in 0..1000 {
            assert_eq!(t.record(s), Arrival::InOrder);
        }
        let c = t.counts();
        assert_eq!(
            (c.received, c.unique, c.duplicates, c.reordered, c.gaps),
            (1000, 1000, 0, 0, 0)
        );
        assert_eq!(t.lost(1000), 0);
        assert_eq!(t.lost(1010), 10);
        assert_eq!(t.highest(), Some(999));
    }

    #[test]
    fn gaps_are_losses_until_filled_late() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 2, 5, 6, 9] {
            t.record(s);
        }
        // 3, 4, 7, 8 missing below the highest (9).
        assert_eq!(t.counts().gaps, 4);
        assert_eq!(t.lost(10), 4);
        // 4 arrives late: reordered, no longer a gap or a loss.
        assert_eq!(t.record(4), Arrival::Reordered);
        let c = t.counts();
        assert_eq!((c.gaps, c.reordered, c.unique), (3, 1, 7));
        assert_eq!(t.lost(10), 3);
        // Loss past the highest is only visible against what was sent.
        assert_eq!(t.lost(12), 5);
    }

    #[test]
    fn duplicates_are_counted_once_however_late() {
        let mut t = SeqTracker::default();
        assert_eq!(t.record(0), Arrival::InOrder);
        assert_eq!(t.record(0), Arrival::Duplicate);
        for s in 1..100_000 {
            t.record(s);
        }
        // A copy of an early datagram long after: still a duplicate, not a new arrival.
        assert_eq!(t.record(3), Arrival::Duplicate);
        // A late copy of a reordered one is a duplicate too, not counted as reordered again.
        let mut u = SeqTracker::default();
        u.record(5);
        assert_eq!(u.record(2), Arrival::Reordered);
        assert_eq!(u.record(2), Arrival::Duplicate);
        let c = u.counts();
        assert_eq!(
            (c.received, c.unique, c.duplicates, c.reordered),
            (3, 2, 1, 1)
        );
        let c = t.counts();
        assert_eq!((c.received, c.unique, c.duplicates), (100_002, 100_000, 2));
        assert_eq!(t.lost(100_000), 0);
    }

    #[test]
    fn reordering_counts_each_late_first_arrival() {
        let mut t = SeqTracker::default();
        for s in [3, 2, 1, 0, 4] {
            t.record(s);
        }
        let c = t.counts();
        assert_eq!((c.unique, c.reordered, c.gaps), (5, 3, 0));
    }

    #[test]
    fn absurd_sequence_numbers_are_ignored() {
        let mut t = SeqTracker::default();
        assert_eq!(t.record(SeqTracker::MAX_SEQ), Arrival::Invalid);
        assert_eq!(t.record(u64::MAX), Arrival::Invalid);
        let c = t.counts();
        assert_eq!((c.received, c.unique, c.invalid), (0, 0, 2));
        assert_eq!(t.highest(), None);
    }

    #[test]
    fn counts_add_up_across_flows() {
        let mut a = SeqTracker::default();
        let mut b = SeqTracker::default();
        a.record(0);
        a.record(2);
        b.record(1);
        b.record(1);
        let mut sum = a.counts();
        sum.add(&b.counts());
        assert_eq!(sum.unique, 3);
        assert_eq!(sum.duplicates, 1);
        assert_eq!(sum.gaps, 1 + 1);
    }

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        let mut prev = 0;
        for v in (0..100_000u64).chain([u64::MAX / 2, u64::MAX - 1, u64::MAX]) {
            let i = Histogram::index(v);
            let (low, width) = Histogram::bucket(i);
            assert!(
                low <= v && v - low < width,
                "{v} in bucket {i} = {low}+{width}"
            );
            // Precision: a bucket is at most 1/128 of its values wide.
            assert!(width == 1 || width * 128 <= low, "{v}: {low}+{width}");
            if v < 100_000 {
                assert!(i == prev || i == prev + 1, "bucket index jumps at {v}");
                prev = i;
            }
        }
        assert!(Histogram::index(u64::MAX) < Histogram::default().counts.len());
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 1000);
        let close = |got: u64, want: u64| {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err < 0.01, "got {got}, want {want}");
        };
        close(h.quantile(0.5).unwrap(), 500_000);
        close(h.quantile(0.99).unwrap(), 990_000);
        close(h.quantile(0.999).unwrap(), 999_000);
        assert_eq!(h.quantile(1.0), Some(1_000_000));
        assert_eq!(h.quantile(0.0), Some(1000));
        assert_eq!(h.min(), Some(1000));
        assert_eq!(h.max(), Some(1_000_000));
        assert!((h.mean().unwrap() - 500_500.0).abs() < 1e-6);
    }

    #[test]
    fn percentiles_see_the_tail() {
        // 990 fast values and 10 slow ones: p99 is fast, p99.9 is slow.
        let mut h = Histogram::default();
        for _ in 0..990 {
            h.record(50);
        }
        for _ in 0..10 {
            h.record(10_000);
        }
        assert_eq!(h.quantile(0.5), Some(50));
        assert_eq!(h.quantile(0.99), Some(50));
        let p999 = h.quantile(0.999).unwrap();
        assert!((9_900..=10_000).contains(&p999), "{p999}");
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn histograms_merge() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for v in 0..100 {
            a.record(v);
            b.record(v + 100);
        }
        a.merge(&b);
        assert_eq!(a.count(), 200);
        assert_eq!(a.min(), Some(0));
        assert_eq!(a.max(), Some(199));
        assert_eq!(a.quantile(0.5), Some(99));
    }

    #[test]
    fn proc_stat_lines() {
        let text = "cpu  100 5 50 1000 10 1 20 3 0 0\ncpu0 50 2 25 500 5 0 10 1 0 0\n\
                    cpu1 50 3 25 500 5 1 10 2 0 0\nintr 1\nctxt 5\n";
        assert_eq!(
            parse_proc_stat(text).unwrap(),
            CpuTicks {
                user: 100,
                nice: 5,
                system: 50,
                idle: 1000,
                iowait: 10,
                irq: 1,
                softirq: 20,
                steal: 3
            }
        );
        assert_eq!(count_cpus(text), 2);
        assert_eq!(parse_proc_stat("intr 1\n"), None);
    }

    #[test]
    fn proc_pid_stat_fields() {
        // A command name with spaces and parentheses; utime 7, stime 3, flags 4194304.
        let user = "123 (a (b) c) S 1 123 123 0 -1 4194304 98 0 0 0 7 3 11 13 20 0 1 0 5 0 0";
        assert_eq!(
            parse_proc_pid_stat(user),
            Some(ProcTimes {
                own: 10,
                kthread: false
            })
        );
        // ksoftirqd: PF_KTHREAD (0x200000) | PF_NOFREEZE ... set in flags.
        let kthread = "14 (ksoftirqd/0) S 2 0 0 0 -1 69238848 0 0 0 0 0 24 0 0 20 0 1 0 3 0 0";
        assert!(parse_proc_pid_stat(kthread).unwrap().kthread);
        assert_eq!(parse_proc_pid_stat(kthread).unwrap().own, 24);
        assert_eq!(parse_proc_pid_stat("garbage"), None);
    }

    #[test]
    fn cpu_usage_between_snapshots() {
        let hz = clock_ticks();
        let at = Instant::now();
        let proc = |own| ProcTimes {
            own,
            kthread: false,
        };
        let machine = CpuTicks {
            user: 1000,
            system: 1000,
            idle: 1000,
            ..Default::default()
        };
        let a = CpuSnapshot {
            at,
            machine,
            cpus: 2,
            procs: HashMap::from([
                (10, proc(100)), // coturn
                (20, proc(50)),  // generator
                (
                    30,
                    ProcTimes {
                        own: 5,
                        kthread: true,
                    },
                ), // a kernel thread
                (40, proc(0)),   // someone else
            ]),
        };
        // 2 s on 2 CPUs = 4 s: idle 1 s, so 3 s busy; ticks say user:system:softirq = 1:1:1.
        let mut m = machine;
        m.idle += hz;
        m.user += hz / 2;
        m.system += hz / 2;
        m.softirq += hz / 2;
        let b = CpuSnapshot {
            at: at + Duration::from_secs(2),
            machine: m,
            cpus: 2,
            procs: HashMap::from([
                (10, proc(100 + hz / 2)),
                (20, proc(50 + hz)),
                (
                    30,
                    ProcTimes {
                        own: 5 + hz / 10,
                        kthread: true,
                    },
                ),
                (40, proc(hz)),
                (
                    50,
                    ProcTimes {
                        own: hz / 10,
                        kthread: true,
                    },
                ), // a kernel thread that appeared
            ]),
        };
        let roles = Roles {
            generator: 20,
            coturn: Some(10),
            agent: None,
        };
        let u = CpuUsage::between(&a, &b, &roles);
        let close = |x: f64, y: f64| assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        close(u.busy_s, 3.0);
        close(u.user_s, 1.0);
        close(u.system_s, 1.0);
        close(u.softirq_s, 1.0);
        close(u.coturn_s.unwrap(), 0.5);
        close(u.coturn_pct().unwrap(), 25.0);
        close(u.generator_s, 1.0);
        close(u.kernel_threads_s, 0.2);
        close(u.run_s, 1.7);
        close(u.other_s, 1.3);
        close(u.busy_pct(), 75.0);
        assert_eq!(u.agent_s, None);
    }

    #[test]
    fn rtt_without_samples_survives_json() {
        let r = RttReport::of(&Histogram::default());
        assert!(r.p50_us.is_nan());
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"p50_us\":null"), "{text}");
        let back: RttReport = serde_json::from_str(&text).unwrap();
        assert!(back.p99_us.is_nan());
        assert_eq!(back.samples, 0);
    }

    #[test]
    fn dir_report_arithmetic() {
        let arrivals = SeqCounts {
            received: 990,
            unique: 990,
            ..Default::default()
        };
        let d = DirReport::new(1000, arrivals, 900, 2.0);
        assert_eq!(d.lost, 10);
        assert!((d.loss_pct - 1.0).abs() < 1e-9);
        assert!((d.offered_pps - 500.0).abs() < 1e-9);
        assert!((d.delivered_pps - 450.0).abs() < 1e-9);
    }

    #[test]
    fn family_parses_4_and_6_only_and_defaults_to_4() {
        assert_eq!("4".parse::<Family>(), Ok(Family::V4));
        assert_eq!("6".parse::<Family>(), Ok(Family::V6));
        assert!("5".parse::<Family>().is_err());
        assert!("v6".parse::<Family>().is_err());
        assert_eq!(Family::default(), Family::V4);
        assert_eq!(Family::V6.to_string(), "6");
    }
}
