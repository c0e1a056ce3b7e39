//! The running offload: find the server, load the programs with their configuration, attach
//! them, then keep the mirrored state in step with the server (the sweep) until stopped.
//!
//! Open → configure → load → attach: every step checks the stop flag, and a failure or a signal
//! at any point undoes what was done (the [`Attachments`] guard).

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::path::Path;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, OpenObject};
use log::{debug, error, info, warn};

use crate::attach::{self, Attachments};
use crate::cli::Args;
use crate::far_end;
use crate::maps;
use crate::metrics::{self, RunStats};
use crate::pin::{self, Found, Globals, PinDir};
use crate::preflight;
use crate::probe;
use crate::runlock::RunLock;
use crate::server::{ServerWatch, System, UdpTable};
use crate::server_conf::effective::{self, Effective};
use crate::sizing;
use crate::skel::{Rules, Settings, TurnSkel, TurnSkelBuilder};
use crate::snapshot::{Sources, Summary};
use crate::sockdiag::DestroyWatch;
use crate::stats::Counters;
use crate::sweep::{StateMaps, Sweeper};

/// How often expired entries are swept and local addresses re-read. Correctness never waits for
/// it: the fast path checks every deadline itself.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A full sweep (every map walked, every UDP socket dumped) costs what the tables hold: it runs
/// at most once a second, and no more often than keeps its CPU under 1/FULL_SHARE of a core
/// (16 ms a second: at 100 000 allocations a pass of about half a second runs every 30 s or
/// so). Between passes the server's own teardown is seen from the kernel's destroy notices
/// (about 5 µs each), and expiry needs no sweep (the fast path checks every deadline).
pub const FULL_SHARE: u32 = 64;
/// The longest time between two full sweeps.
pub const FULL_MAX_EVERY: Duration = Duration::from_secs(60);
/// How often the pending table is swept between full sweeps: recorded requests are removed
/// within this of twice the pending lifetime (`--max-pending` is sized by that).
pub const PENDING_EVERY: Duration = Duration::from_secs(2);
/// `TURN_BPF_FULL_SWEEP_EVERY=<seconds>`: a fixed time between full sweeps instead, at most
/// [`FULL_MAX_EVERY`] (for tests that watch the notices alone do their work).
pub const FULL_EVERY_ENV: &str = "TURN_BPF_FULL_SWEEP_EVERY";

/// How often the sweep runs while no TURN server is trusted (it stopped or restarted): nothing
/// is learned until its new sockets are trusted, so they are looked for at every tick. With
/// nothing trusted nothing is committed either, so these sweeps have little to do.
pub const TICK: Duration = Duration::from_millis(200);

/// The loaded, attached programs and what keeps their state in step with the server.
pub struct Offload<'obj> {
    skel: TurnSkel<'obj>,
    attached: Attachments,
    sweeper: Sweeper,
    /// The veth far-end rule, checked again at every sweep.
    far_ends: far_end::Watch,
    start_counters: Counters,
    /// What the sweeps counted, for the metrics; and the periodic summary in the log.
    run_stats: Arc<RunStats>,
    sources: Sources,
    summary: Summary,
    /// The programs' global state (sequences, stamps), shared with a pinned state if any.
    globals: Globals,
    /// --pin-path: what is pinned stays on exit.
    pins: Option<PinDir>,
    /// When the server's sockets were last read: the alive stamp vouches for them.
    table: TableAge,
    /// The kernel's notices of destroyed sockets (None: unavailable, every sweep is full).
    destroyed: Option<DestroyWatch>,
    /// The cookie of the socket closed after the last drain, whose notice the next must hold.
    canary: Option<u64>,
    /// Notices may have been missed: no stamp from notices, and a full sweep at every tick,
    /// until one that read the sockets, at this time or later (an answer held back while notices
    /// were missing may commit until then). None: nothing missed.
    dirty_until: Option<Instant>,
    cadence: Cadence,
    /// When the pending table was last swept.
    pending_at: Instant,
}

/// When the next full sweep is due.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    last: Instant,
    /// The CPU the last full sweep took.
    cost: Duration,
    /// A fixed time between full sweeps ([`FULL_EVERY_ENV`]).
    fixed: Option<Duration>,
}

impl Cadence {
    /// The first full sweep is due one interval from now: the start read the sockets.
    pub fn new(fixed: Option<Duration>) -> Cadence {
        Cadence {
            last: Instant::now(),
            cost: Duration::ZERO,
            fixed,
        }
    }

    /// From [`FULL_EVERY_ENV`]; a value that is not a whole number of seconds is refused.
    pub fn from_env() -> Result<Cadence> {
        let fixed = match std::env::var(FULL_EVERY_ENV) {
            Ok(v) => {
                let secs: u64 = v.trim().parse().map_err(|_| {
                    anyhow::anyhow!("{FULL_EVERY_ENV}={v}: not a whole number of seconds")
                })?;
                Some(Duration::from_secs(secs).min(FULL_MAX_EVERY))
            }
            Err(_) => None,
        };
        Ok(Cadence::new(fixed))
    }

    /// The time between two full sweeps now.
    pub fn every(&self) -> Duration {
        self.fixed
            .unwrap_or_else(|| (self.cost * FULL_SHARE).clamp(SWEEP_EVERY, FULL_MAX_EVERY))
    }

    pub fn due(&self) -> bool {
        self.last.elapsed() >= self.every()
    }

    /// A full sweep began at `at` and took `cost` of CPU.
    pub fn done(&mut self, at: Instant, cost: Duration) {
        self.last = at;
        self.cost = cost;
    }
}

/// The CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// The alive stamp says "the server's sockets were checked a moment ago", so it is renewed only
/// while the last socket table read is younger than [`TableAge::FRESH`]: a sweep that runs long
/// on an old table (or a table that cannot be read) lets the stamp age, and the fast path stops
/// within TB_AGENT_STALE_NS of the last check, as it would if the agent were gone.
#[derive(Debug, Default, Clone, Copy)]
pub struct TableAge {
    read_at: Option<Instant>,
}

impl TableAge {
    /// Under TB_AGENT_STALE_NS (5 s), with room for the sweep step between two stamps.
    pub const FRESH: Duration = Duration::from_secs(3);

    pub fn read_now(&mut self) {
        self.read_at = Some(Instant::now());
    }

    pub fn may_stamp(&self) -> bool {
        self.read_at.is_some_and(|t| t.elapsed() < Self::FRESH)
    }
}

impl<'obj> Offload<'obj> {
    /// Find the server, load and attach. `Ok(None)`: `stopped()` turned true on the way, and
    /// everything done so far has been undone.
    pub fn start(
        args: &Args,
        storage: &'obj mut MaybeUninit<OpenObject>,
        stopped: &dyn Fn() -> bool,
    ) -> Result<Option<Offload<'obj>>> {
        let ifaces = args.xdp_ifaces();
        let pins = args.pin_path.as_deref().map(PinDir::open).transpose()?;
        for iface in &ifaces {
            attach::ifindex(iface)?;
        }
        // The lock first: "a live agent" is one holding it, whatever is on the hooks.
        let lock = RunLock::acquire(&ifaces[0])?;
        let kernel = probe::require().map_err(anyhow::Error::msg)?;
        // Notices of destroyed sockets are queued from before the first read of the sockets.
        let destroyed = DestroyWatch::open()
            .map_err(|e| {
                warn!(
                    "{e:#}: the server's sockets are dumped at every sweep instead (costly with \
                     many allocations)"
                )
            })
            .ok();
        // The server's own settings, merged with ours; refuses a server with bandwidth limits.
        let settings = effective::resolve(args, &UdpTable::read()?)?;
        let server = find_server(args, &settings.turn_ports)?;
        let listening = preflight::listening(
            &UdpTable::read()?,
            &settings.turn_ports,
            &server.trusted_inodes(),
        );
        preflight::check(&ifaces, &listening, &settings.relay_ips, pins.is_some())?;
        refuse_egress_before_snooper(&ifaces[0])?;
        let listener = args.prometheus.map(metrics::bind).transpose()?;

        let mut attached = Attachments::default();
        // The lock says this agent is the live one; what an earlier agent changed and did not
        // restore (killed, or it left its pins) is ours to restore now.
        attached.adopt_changes(lock.leftover());
        attached.lock = Some(lock);
        attached.ensure_forwarding(&ifaces, args.enable_forwarding)?;
        if let Some(lock) = &attached.lock {
            lock.record(&attached.changes())?;
        }
        if stopped() {
            return Ok(None);
        }
        let cookies = server.trusted_cookies();
        // A pinned state is only as good as the snooper that kept it: if it is not in place
        // (removed, or never attached), the server's answers went unseen.
        let snooper = attach::snooper_present(&ifaces[0]);
        let (skel, found) = load(
            args,
            &settings,
            &kernel,
            storage,
            pins.as_ref(),
            &cookies,
            snooper,
        )?;
        info!("{}", sizing::describe_loaded(&skel.maps)?);
        if args.binding_counters {
            let m = &skel.maps.binding_counts;
            let memlock = m.query_fdinfo().ok().and_then(|i| i.memlock).unwrap_or(0);
            info!(
                "per-binding counters on (--binding-counters): binding_counts {} entries × {} B \
                 per CPU; the kernel accounts {}",
                m.max_entries(),
                m.value_size(),
                crate::snapshot::human_bytes(memlock)
            );
        }
        let globals = Globals::of(&skel.maps.data_pinned)?;
        if stopped() {
            return Ok(None);
        }
        if let Some(p) = &pins {
            p.write_layout()?;
            if found == Found::Compatible && p.server_changed(&cookies) {
                let m = &skel.maps;
                pin::forget_bindings(
                    &[
                        &m.allocs, &m.chans, &m.peers, &m.perms, &m.pending, &m.relays,
                    ],
                    "the TURN server is not the one the pinned state was learned from",
                );
                globals.raise_shortened(maps::now_ns());
            }
        }
        init_maps(&skel, &settings)?;
        maps::set_server_socks(&skel.maps.server_socks, &cookies)?;
        globals.stamp_alive(maps::now_ns());
        let Some(far_ends) =
            attach_all(&skel, &ifaces, args, stopped, &mut attached, pins.as_ref())?
        else {
            return Ok(None);
        };
        if let Some(others) = server.describe_others() {
            warn!("{others}");
        }
        let unwatched = attach::unwatched_interfaces(&ifaces);
        if !unwatched.is_empty() {
            warn!(
                "interface(s) {} are up and not watched: a TURN request that reaches the server \
                 through them is not seen by the recorder (README: \"Where the recorder must \
                 run\"); attach turn-bpf there too if clients can reach the server that way",
                unwatched.join(", ")
            );
        }
        info!("{}", settings.summary);
        info!(
            "trusting the TURN server's responses: {}",
            server.describe()
        );
        info!(
            "offloading TURN port(s) {:?}; stop with Ctrl+C",
            settings.turn_ports
        );
        let start_counters = Counters::read(&skel.maps.stats)?;
        let run_stats = Arc::new(RunStats::default());
        let sources = Sources::of_skel(&skel.maps)?;
        if let Some(l) = listener {
            let info = metrics::BuildInfo::now(settings.profile.kind);
            metrics::serve(l, Sources::of_skel(&skel.maps)?, run_stats.clone(), info)?;
        }
        let summary = Summary::new(&sources.snapshot()?);
        let cadence = Cadence::from_env()?;
        let mut sweeper = Sweeper::new(server);
        if settings.profile.probes_relay_ports {
            // without the lookup every close on a relayed address ends its allocation
            match crate::sockdiag::ReceiverLookup::open() {
                Ok(mut lookup) => {
                    sweeper = sweeper.relay_ports_probed(move |at| match lookup.receiver(at) {
                        Ok(found) => found.is_some(),
                        Err(e) => {
                            warn!("looking up the socket that receives at {at}: {e:#}");
                            false
                        }
                    })
                }
                Err(e) => warn!(
                    "{e:#}: a socket closed on a relayed address ends its allocation even \
                     when it was the server's probe of the port"
                ),
            }
        }
        sweeper.new_allocs_from(globals.alloc_seq());
        Ok(Some(Offload {
            skel,
            attached,
            sweeper,
            far_ends,
            start_counters,
            run_stats,
            sources,
            summary,
            globals,
            pins,
            // the trust check at start read the server's sockets a moment ago
            table: {
                let mut t = TableAge::default();
                t.read_now();
                t
            },
            destroyed,
            canary: None,
            dirty_until: None,
            cadence,
            pending_at: Instant::now(),
        }))
    }

    /// Sweep once a second until `stopped()`; with `-v`, print the counters every
    /// `--stats-interval`.
    pub fn run(&mut self, args: &Args, stopped: &dyn Fn() -> bool) -> Result<()> {
        let stats_every = Duration::from_secs(args.stats_interval);
        let mut last_print = Instant::now();
        let mut last_counters = self.start_counters.clone();
        let mut last_sweep = Instant::now();
        while !stopped() {
            std::thread::sleep(TICK);
            if last_sweep.elapsed() < SWEEP_EVERY && !self.sweeper.waiting_for_server() {
                continue;
            }
            last_sweep = Instant::now();
            self.guard_hooks()?;
            self.sweep();
            self.far_ends.sweep(&self.skel.maps.tx_ports);
            self.refresh_local_addrs();
            if self.summary.due() {
                match self.sources.snapshot() {
                    Ok(snap) => info!("{}", self.summary.line(&snap)),
                    Err(e) => warn!("summary: {e:#}"),
                }
            }
            if args.verbose > 0 && last_print.elapsed() >= stats_every {
                let now = Counters::read(&self.skel.maps.stats)?;
                let diff = now.since(&last_counters);
                info!(
                    "counters over the last {}s:\n{}{}",
                    last_print.elapsed().as_secs(),
                    diff.render(),
                    diff.relay_summary()
                );
                last_counters = now;
                last_print = Instant::now();
            }
        }
        Ok(())
    }

    /// Fail closed when a hook went away under us: without the snooper revocations go unseen,
    /// so the fast path must stop; the server carries on alone.
    fn guard_hooks(&mut self) -> Result<()> {
        if let Err(why) = self.attached.verify() {
            error!("{why}: detaching the fast path; the server carries on alone");
            self.attached.detach_all();
            anyhow::bail!("{why}: detached the fast path (the server carries on alone)");
        }
        Ok(())
    }

    /// One last sweep (so every channel learned since the last one is in the log), detach, and
    /// print the counters of this run.
    pub fn finish(mut self) {
        self.full_sweep();
        if let Some(p) = &self.pins {
            info!(
                "stopping: leaving the fast path and the snooper pinned under {} (the snooper \
                 keeps learning; the fast path relays for {} s more unless an agent adopts them)",
                p.dir.display(),
                crate::consts::TB_AGENT_STALE_NS / 1_000_000_000
            );
            self.attached.release_pinned();
        } else {
            info!("stopping: detaching");
            self.attached.detach_all();
        }
        match Counters::read(&self.skel.maps.stats) {
            Ok(c) => {
                let run = c.since(&self.start_counters);
                println!(
                    "turn-bpf counters:\n{}{}",
                    run.render(),
                    run.relay_summary()
                )
            }
            Err(e) => error!("reading counters: {e:#}"),
        }
    }

    /// One sweep: the destroy notices since the last one, then a full sweep when one is due
    /// ([`Cadence`]), when notices may have been missed (lost, or the canary's did not come), when
    /// a trusted socket of the server was destroyed, or while no server is trusted; otherwise
    /// the pending table alone every [`PENDING_EVERY`].
    fn sweep(&mut self) {
        let Some(watch) = &self.destroyed else {
            return self.full_sweep();
        };
        self.sweeper.draining(self.globals.alloc_seq());
        let d = match watch.drain() {
            Ok(d) => d,
            Err(e) => {
                warn!("{e:#}: the server's sockets are dumped at every sweep from now on");
                self.destroyed = None;
                return self.full_sweep();
            }
        };
        let canary_came = self
            .canary
            .take()
            .is_none_or(|c| d.socks.iter().any(|s| s.cookie == c));
        if d.lost || !canary_came {
            debug!(
                "destroy notices may be missing ({}): full sweeps for a while",
                if d.lost {
                    "lost"
                } else {
                    "the canary's did not come"
                }
            );
            self.missed_notices();
        }
        self.canary = match DestroyWatch::canary() {
            Ok(c) => Some(c),
            Err(e) => {
                warn!("the destroy notices' canary: {e:#}");
                self.dirty_until.get_or_insert_with(Instant::now);
                None
            }
        };
        let server_went = self.sweeper.trusts_any(d.socks.iter().map(|s| s.cookie));
        // The notices first, also before a full sweep: it would take a socket bound on a closed
        // relay's address since for that allocation's own. A closed socket of the server ends
        // everything, once a full sweep has read the sockets: nothing is vouched for until then.
        if server_went {
            self.dirty_until.get_or_insert_with(Instant::now);
        } else if !self.notices(&d.socks) {
            self.missed_notices();
        }
        if server_went
            || self.dirty_until.is_some()
            || self.cadence.due()
            || self.sweeper.waiting_for_server()
        {
            return self.full_sweep();
        }
        if self.pending_at.elapsed() >= PENDING_EVERY {
            self.pending_at = Instant::now();
            let state = state_maps(&self.skel.maps, &|| {}, &|| {});
            let r = self
                .sweeper
                .pending_only(&state, maps::now_ns(), PENDING_EVERY);
            self.run_stats.record(&r, None);
        }
        // Every socket destroyed since the last look is accounted for: as good as a fresh read.
        self.table.read_now();
        self.globals.stamp_alive(maps::now_ns());
    }

    /// Notices may be missing: full sweeps at every tick, and no stamp without a socket read,
    /// until an answer held back then (a closed address not remembered) can no longer commit.
    fn missed_notices(&mut self) {
        self.dirty_until = Some(Instant::now() + crate::sweep::CLOSED_KEPT);
    }

    /// End the allocations of the relay sockets in these notices, and the allocations committed
    /// since the last tick on an address heard closed lately. False when that could not be done
    /// whole (the sockets must then be read whole).
    fn notices(&mut self, socks: &[crate::sockdiag::DiagSock]) -> bool {
        let closed: Vec<SocketAddr> = socks
            .iter()
            .filter(|s| s.port != 0)
            .map(|s| SocketAddr::new(s.ip, s.port))
            .collect();
        let locals = if closed.iter().any(|a| a.ip().is_unspecified()) {
            match maps::local_addresses() {
                Ok(l) => l.into_iter().collect(),
                Err(e) => {
                    warn!("{e:#}");
                    return false;
                }
            }
        } else {
            Vec::new()
        };
        let seq = self.globals.alloc_seq();
        let globals = &self.globals;
        let raise = || globals.raise_shortened(maps::now_ns());
        let state = state_maps(&self.skel.maps, &raise, &|| {});
        let now = maps::now_ns();
        let done = self
            .sweeper
            .relays_closed(&state, &closed, &locals, now)
            .and_then(|mut r| {
                let whole = self.sweeper.new_allocs_closed(&state, seq, now, &mut r)?;
                Ok((r, whole))
            });
        match done {
            Ok((r, whole)) => {
                self.run_stats.record(&r, None);
                whole
            }
            Err(e) => {
                warn!("sweep: {e:#}");
                false
            }
        }
    }

    /// A full sweep. The allocation sequence is read first, then the sockets: see
    /// [`Sweeper::sweep`].
    fn full_sweep(&mut self) {
        let began = Instant::now();
        let cpu = thread_cpu();
        // Alive, before and during the sweep as well as after it, while the server's sockets
        // were read a moment ago (TableAge): a long sweep of hundreds of thousands of entries
        // keeps the fast path on, a sweep on an old table (or none) does not, and an agent
        // stuck for good stops stamping. With notices missing only this sweep's own read of
        // the sockets vouches.
        let vouch = self.dirty_until.is_none();
        if vouch && self.table.may_stamp() {
            self.globals.stamp_alive(maps::now_ns());
        }
        let seq = self.globals.alloc_seq();
        let socks = UdpTable::read()
            .map_err(|e| warn!("the server's sockets are not checked this time: {e:#}"))
            .ok();
        if socks.is_some() {
            self.table.read_now();
            self.globals.stamp_alive(maps::now_ns());
        }
        let globals = &self.globals;
        let table = self.table;
        let vouch = vouch || socks.is_some();
        let raise = || globals.raise_shortened(maps::now_ns());
        let alive = || {
            if vouch && table.may_stamp() {
                globals.stamp_alive(maps::now_ns());
            }
        };
        let state = state_maps(&self.skel.maps, &raise, &alive);
        match self
            .sweeper
            .sweep(&state, maps::now_ns(), seq, socks.as_ref())
        {
            Ok(r) => {
                self.run_stats.record(&r, Some(began.elapsed()));
                // what notices may have missed, this sweep saw in the table (and an answer held
                // back meanwhile can no longer commit unseen)
                if socks.is_some() && self.dirty_until.is_some_and(|t| Instant::now() >= t) {
                    self.dirty_until = None;
                }
            }
            Err(e) => warn!("sweep: {e:#}"),
        }
        self.pending_at = Instant::now();
        // Alive: the fast path relays for TB_AGENT_STALE_NS from now.
        if vouch && self.table.may_stamp() {
            self.globals.stamp_alive(maps::now_ns());
        }
        self.cadence.done(began, thread_cpu().saturating_sub(cpu));
    }

    fn refresh_local_addrs(&self) {
        let synced = maps::local_addresses()
            .and_then(|l| maps::sync_local_addrs(&self.skel.maps.local_addrs, &l));
        if let Err(e) = synced {
            warn!("{e:#}");
        }
    }
}

/// The maps the sweep works on.
fn state_maps<'a, 'obj>(
    m: &'a crate::skel::TurnMaps<'obj>,
    raise: &'a dyn Fn(),
    alive: &'a dyn Fn(),
) -> StateMaps<'a, libbpf_rs::Map<'obj>> {
    StateMaps {
        allocs: &m.allocs,
        chans: &m.chans,
        peers: &m.peers,
        perms: &m.perms,
        pending: &m.pending,
        not_local: &m.not_local,
        relays: &m.relays,
        recent: &m.recent_allocs,
        server_socks: &m.server_socks,
        raise_shortened: raise,
        alive,
    }
}

/// The TURN server (it must be running: everything is learned from its responses, and its
/// sockets tell when it stops or restarts) and the sockets the snooper trusts.
fn find_server(args: &Args, turn_ports: &[u16]) -> Result<ServerWatch> {
    let socks = UdpTable::read()?;
    let server = ServerWatch::start(
        turn_ports,
        args.server_name(),
        &socks,
        Box::new(System::default()),
    )?;
    Ok(server)
}

/// Anything that runs before the snooper could hide the server's answers that take state away:
/// refuse rather than learn through it (checked before anything is attached or changed).
fn refuse_egress_before_snooper(client_iface: &str) -> Result<()> {
    let before = attach::egress_before_snooper(client_iface)?;
    if !before.is_empty() {
        anyhow::bail!(
            "{} run(s) on the egress of {client_iface} before where the snooper would go (TC \
             preference {:#x}): it could hide the server's answers; remove it or move it after",
            before.join(", "),
            attach::TC_PRIORITY
        );
    }
    Ok(())
}

/// Open the BPF object, write its load-time configuration, load it.
/// With `pins`, the maps are pinned there (reused when compatible), and a compatible pinned state
/// learned from the server that runs now (`cookies`) is stamped alive before the slow load, so
/// the programs still attached keep relaying meanwhile.
fn load<'obj>(
    args: &Args,
    settings: &Effective,
    kernel: &probe::Kernel,
    storage: &'obj mut MaybeUninit<OpenObject>,
    pins: Option<&PinDir>,
    cookies: &[u64],
    snooper: bool,
) -> Result<(TurnSkel<'obj>, Found)> {
    let mut open = TurnSkelBuilder::default()
        .open(storage)
        .context("opening the BPF object")?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the BPF object has no .rodata")?;
    Settings {
        turn_ports: settings.turn_ports.clone(),
        spill_every: args.spill_every,
        channel_lifetime_s: settings.channel_lifetime,
        permission_lifetime_s: settings.permission_lifetime,
        pending_lifetime_ms: crate::consts::TB_PENDING_LIFETIME_MS,
        rules: Rules::of(settings.profile),
        binding_counters: args.binding_counters,
    }
    .apply(rodata);
    let sizes = args.sizes().map_err(anyhow::Error::msg)?;
    sizes.apply(&mut open.maps)?;
    // per-binding counters: one entry per channel, or none to speak of when they are off
    let counts = if args.binding_counters {
        sizes.channels
    } else {
        1
    };
    open.maps
        .binding_counts
        .set_max_entries(counts)
        .with_context(|| format!("sizing binding_counts to {counts} entries"))?;
    if !Path::new(VMLINUX_BTF).exists() || !kernel.drop_counters {
        let what: Vec<&str> = kernel
            .drop_counters_missing
            .iter()
            .map(|f| f.what)
            .collect();
        warn!(
            "{VMLINUX_BTF} is missing or lacks {}: frames the kernel drops after a redirect are \
             not counted (XMIT_DROPPED, XMIT_ERROR need the kernel's BTF)",
            if what.is_empty() {
                "the tracepoints".to_string()
            } else {
                what.join(", ")
            }
        );
        for prog in [
            &mut open.progs.tb_devmap_xmit,
            &mut open.progs.tb_redirect_err,
        ] {
            prog.set_autoload(false);
        }
    }
    let found = match pins {
        None => Found::Nothing,
        Some(p) => {
            let mut found = p.prepare(open.open_object_mut())?;
            if found == Found::Compatible && !snooper {
                warn!(
                    "the state pinned under {} cannot be reused (no snooper kept it: the \
                     server's answers went unseen): starting clean, the server carries the \
                     current calls",
                    p.dir.display()
                );
                p.remove_state()?;
                found = Found::Incompatible("no snooper".into());
            }
            if found == Found::Compatible {
                let g = p.pinned_globals()?;
                if p.server_changed(cookies) {
                    g.clear_alive();
                } else {
                    g.stamp_alive(maps::now_ns());
                }
            }
            found
        }
    };
    let skel = open.load().context(
        "loading the BPF programs (the kernel needs BPF, XDP links and bpf_xdp_load_bytes: \
         Linux 5.18 or later; run with -vv for the verifier's log)",
    )?;
    Ok((skel, found))
}

/// The maps the loader keeps: the external-ip mappings and this host's addresses.
fn init_maps(skel: &TurnSkel<'_>, settings: &Effective) -> Result<()> {
    let external: Vec<_> = settings
        .external_ips
        .iter()
        .map(|e| (e.public, e.private))
        .collect();
    maps::set_external_ips(&skel.maps.external_ips, &external)?;
    // coturn maps a peer that is one of its own public addresses to the private one before its
    // policy check; the fast path would send to the public address: leave such peers to it.
    let mut refused = settings.peers.refused_prefixes();
    refused.extend(settings.external_ips.iter().map(|e| {
        let len = if e.public.is_ipv4() { 32 } else { 128 };
        (e.public, len)
    }));
    maps::set_refused_peers(&skel.maps.refused_peers, &refused)?;
    let locals = maps::local_addresses()?;
    maps::sync_local_addrs(&skel.maps.local_addrs, &locals)?;
    for e in &settings.external_ips {
        if !locals.contains(&e.private) {
            warn!(
                "--external-ip {}={}: {} is not a local address",
                e.public, e.private, e.private
            );
        }
    }
    Ok(())
}

/// XDP everywhere in one mode, the veth far-end rule (refused before anything is sent out of an
/// interface whose far end cannot take it), the drop counters, then the snooper on the
/// client-facing interface. Returns None when `stopped()` turned true on the way (what was
/// attached is undone by `attached`'s drop, and by the links' when the rule refuses).
fn attach_all(
    skel: &TurnSkel<'_>,
    ifaces: &[String],
    args: &Args,
    stopped: &dyn Fn() -> bool,
    attached: &mut Attachments,
    pins: Option<&PinDir>,
) -> Result<Option<far_end::Watch>> {
    let prog = attach::prog_fd(&skel.progs.xdp_turn);
    let Some((mode, links)) =
        attach::attach_uniform(ifaces, args.xdp_mode, stopped, |iface, mode| {
            let Some(p) = pins else {
                return attach::attach_xdp(prog, iface, mode);
            };
            let path = pin::link_pin(&p.dir, iface);
            if path.exists() {
                if let Some(l) = attach::adopt_xdp(prog, iface, &path)? {
                    info!("swapped the XDP program under the pinned link on {iface}");
                    return Ok(l);
                }
            }
            let mut l = attach::attach_xdp(prog, iface, mode)?;
            l.pin(&path)?;
            Ok(l)
        })?
    else {
        return Ok(None);
    };
    let named: Vec<(String, u32)> = links.iter().map(|l| (l.iface.clone(), l.ifindex)).collect();
    let far_ends = far_end::Watch::start(mode, &named)?;
    for link in links {
        maps::add_tx_port(&skel.maps.tx_ports, link.ifindex)?;
        maps::add_xmit_iface(&skel.maps.xmit_ifaces, link.ifindex)?;
        info!(
            "attached XDP fast path to {} ({} mode)",
            link.iface, link.mode
        );
        attached.xdp.push(link);
    }
    attach_drop_counters(skel, attached);
    if stopped() {
        return Ok(None);
    }
    let client_iface = &ifaces[0];
    let snoop = attach::prog_fd(&skel.progs.tc_snoop);
    let replaced = match pins {
        Some(_) => attach::replace_tc(snoop, client_iface)?,
        None => None,
    };
    let tc = match replaced {
        Some(tc) => {
            info!("replaced the TC egress snooper's program on {client_iface} in place");
            tc
        }
        None => {
            let tc = attach::attach_tc(snoop, client_iface)?;
            info!("attached TC egress snooper to {client_iface}");
            tc
        }
    };
    attached.tc.push(tc);
    Ok((!stopped()).then_some(far_ends))
}

/// Where the kernel's BTF is read from: the drop counters' tracing programs need it.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The tracing programs that count frames the kernel drops after xdp_turn returned. One that
/// cannot be attached is warned about; the offload goes on without it.
fn attach_drop_counters(skel: &TurnSkel<'_>, attached: &mut Attachments) {
    let progs = [
        ("xdp:xdp_devmap_xmit", &skel.progs.tb_devmap_xmit),
        ("xdp:xdp_redirect_err", &skel.progs.tb_redirect_err),
    ];
    for (tp, prog) in progs {
        if !prog.autoload() {
            continue;
        }
        match prog.attach() {
            Ok(link) => attached.tracing.push((tp, link)),
            Err(e) => warn!(
                "cannot attach to the tracepoint {tp} ({e}): frames the kernel drops there \
                 after a redirect are not counted"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sweeps_take_a_bounded_share_of_a_core() {
        let mut c = Cadence::new(None);
        assert!(!c.due(), "the start read the sockets");
        assert_eq!(c.every(), SWEEP_EVERY, "cheap: every second");
        c.done(Instant::now(), Duration::from_millis(5));
        assert_eq!(c.every(), SWEEP_EVERY);
        // half a second of CPU: 32 s apart, 1/64 of a core
        c.done(Instant::now(), Duration::from_millis(500));
        assert_eq!(c.every(), Duration::from_secs(32));
        c.done(Instant::now(), Duration::from_secs(5));
        assert_eq!(c.every(), FULL_MAX_EVERY, "never further apart than this");
        let mut c = Cadence::new(Some(Duration::from_secs(30)));
        c.done(Instant::now(), Duration::from_secs(5));
        assert_eq!(c.every(), Duration::from_secs(30), "fixed");
        c.last = Instant::now() - Duration::from_secs(31);
        assert!(c.due());
        // the environment's value is capped
        std::env::set_var(FULL_EVERY_ENV, "3600");
        let capped = Cadence::from_env().unwrap().every();
        std::env::set_var(FULL_EVERY_ENV, "soon");
        let refused = Cadence::from_env().is_err();
        std::env::remove_var(FULL_EVERY_ENV);
        assert_eq!(capped, FULL_MAX_EVERY);
        assert!(refused);
    }

    #[test]
    fn the_alive_stamp_vouches_only_for_a_fresh_socket_table() {
        let mut t = TableAge::default();
        assert!(!t.may_stamp(), "never read: no stamp");
        t.read_now();
        assert!(t.may_stamp());
        t.read_at = Instant::now().checked_sub(TableAge::FRESH + Duration::from_millis(1));
        assert!(!t.may_stamp(), "read too long ago: no stamp");
    }
}
