//! `turn-bpf`: argument parsing and the run loop. Everything else lives in the library modules.

use std::mem::MaybeUninit;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::PrintLevel;
use log::{debug, error, info, warn};

use turn_bpf::attach::{self, Attachments};
use turn_bpf::cli::Args;
use turn_bpf::skel::{Settings, TurnSkelBuilder};
use turn_bpf::state::{self, ServerWatch, StateMaps, Sweeper, UdpTable};
use turn_bpf::stats::Counters;

/// How often expired entries are swept and local addresses re-read. Correctness never waits for
/// it: the fast path checks every deadline itself.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail_line(&one_line(&e.to_string())),
    };
    if let Err(msg) = args.validate() {
        return fail_line(&msg);
    }
    init_logging(&args);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail_line(&format!("{e:#}")),
    }
}

/// A signal arrived before the agent was running: whatever was done is undone as the caller
/// returns (the attachments' drop), and the exit is clean.
fn stopped_during_start_up() -> Result<()> {
    info!("stopped during start-up: undoing what was done");
    Ok(())
}

/// One clear line on stderr and a non-zero exit.
fn fail_line(msg: &str) -> ExitCode {
    let msg = msg.trim_start_matches("error: ");
    eprintln!("turn-bpf: error: {msg}");
    ExitCode::FAILURE
}

/// clap's message without its usage/help footer, folded into one line.
fn one_line(s: &str) -> String {
    s.lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn init_logging(args: &Args) {
    let level = if args.quiet {
        "warn"
    } else {
        match args.verbose {
            0 | 1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
    libbpf_rs::set_print(Some((PrintLevel::Debug, |level, msg| {
        let msg = msg.trim_end();
        match level {
            // Probing for a TC filter that is not there yet is expected, not a warning.
            PrintLevel::Warn if msg.contains("Cannot find specified filter chain") => {
                debug!("{msg}")
            }
            PrintLevel::Warn => warn!("{msg}"),
            PrintLevel::Info => debug!("{msg}"),
            PrintLevel::Debug => log::trace!("{msg}"),
        }
    })));
}

fn run(args: &Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("turn-bpf needs root (CAP_BPF, CAP_NET_ADMIN): run it with sudo");
    }
    if !args.detach.is_empty() {
        for iface in &args.detach {
            println!("{}", attach::detach_leftovers(iface)?);
        }
        return Ok(());
    }

    // Signals first: from here on Ctrl+C and SIGTERM only set a flag, and every start-up step
    // checks it, so a signal at any point ends with everything undone.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    let stopped = || stop.load(Ordering::SeqCst);

    let ifaces = args.xdp_ifaces();
    let client_iface = ifaces[0].clone();
    for iface in &ifaces {
        attach::ifindex(iface)?;
    }
    // The server must already be running: everything is learned from its responses, and its
    // sockets tell when it stops or restarts.
    let socks = UdpTable::read()?;
    let server = ServerWatch::new(&args.turn_ports, &socks)?;
    debug!(
        "watching the TURN server's sockets: {}",
        server.describe(&socks)
    );
    let server_uid = match server.uid(&socks) {
        Ok(uid) => Some(uid),
        Err(uids) => {
            warn!(
                "the sockets on the TURN port(s) belong to several users ({uids:?}): the snooper \
                 trusts responses from any local socket"
            );
            None
        }
    };

    let mut attached = Attachments::default();
    attached.ensure_forwarding(&ifaces, args.enable_forwarding)?;
    if stopped() {
        return stopped_during_start_up();
    }

    // Open, configure, load.
    let mut storage = MaybeUninit::uninit();
    let mut open = TurnSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    {
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("the BPF object has no .rodata")?;
        // Only responses sent from the server's user's sockets are trusted.
        Settings {
            turn_ports: args.turn_ports.clone(),
            spill_every: args.spill_every,
            channel_lifetime_s: args.channel_lifetime,
            permission_lifetime_s: args.permission_lifetime,
            server_uid,
        }
        .apply(rodata);
    }
    let mut skel = open.load().context(
        "loading the BPF programs (the kernel needs BPF, XDP links and bpf_xdp_load_bytes: \
         Linux 5.18 or later; run with -vv for the verifier's log)",
    )?;
    if stopped() {
        return stopped_during_start_up();
    }
    // The allocation sequence the BPF program draws allocation IDs from, in its mmap-ed .bss.
    let alloc_seq_ptr: *mut u64 = skel
        .maps
        .bss_data
        .as_deref_mut()
        .map(|b| std::ptr::addr_of_mut!(b.tb_alloc_seq))
        .context("the BPF object has no mmap-ed .bss")?;
    // SAFETY: the pointer is into the .bss mapping, which lives as long as `skel` (this whole
    // function); it is 8-byte aligned (the mapping is page-aligned and tb_alloc_seq is a u64),
    // and the BPF side only ever changes it atomically.
    let alloc_seq = || unsafe { AtomicU64::from_ptr(alloc_seq_ptr) }.load(Ordering::SeqCst);

    let external: Vec<_> = args
        .external_ips
        .iter()
        .map(|e| (e.public, e.private))
        .collect();
    state::set_external_ips(&skel.maps.external_ips, &external)?;
    let locals = state::local_addresses()?;
    state::sync_local_addrs(&skel.maps.local_addrs, &locals)?;
    for e in &args.external_ips {
        if !locals.contains(&e.private) {
            warn!(
                "--external-ip {}={}: {} is not a local address",
                e.public, e.private, e.private
            );
        }
    }

    // Attach: XDP everywhere in one mode, then the snooper. A failure or a signal undoes what
    // was done (drop).
    let prog = attach::prog_fd(&skel.progs.xdp_turn);
    let Some((_, links)) =
        attach::attach_uniform(&ifaces, args.xdp_mode, &stopped, |iface, mode| {
            attach::attach_xdp(prog, iface, mode)
        })?
    else {
        return stopped_during_start_up();
    };
    for link in links {
        state::add_tx_port(&skel.maps.tx_ports, link.ifindex)?;
        info!(
            "attached XDP fast path to {} ({} mode)",
            link.iface, link.mode
        );
        attached.xdp.push(link);
    }
    if stopped() {
        return stopped_during_start_up();
    }
    let tc = attach::attach_tc(attach::prog_fd(&skel.progs.tc_snoop), &client_iface)?;
    info!("attached TC egress snooper to {client_iface}");
    attached.tc.push(tc);
    if stopped() {
        return stopped_during_start_up();
    }
    info!(
        "offloading TURN port(s) {:?}; stop with Ctrl+C",
        args.turn_ports
    );

    let maps = StateMaps {
        allocs: &skel.maps.allocs,
        chans: &skel.maps.chans,
        peers: &skel.maps.peers,
        perms: &skel.maps.perms,
        not_local: &skel.maps.not_local,
    };
    let mut sweeper = Sweeper::new(server);
    // The sequence first, then the sockets: see Sweeper::sweep.
    let sweep = |sweeper: &mut Sweeper| {
        let seq = alloc_seq();
        let socks = UdpTable::read()
            .map_err(|e| warn!("the server's sockets are not checked this time: {e:#}"))
            .ok();
        if let Err(e) = sweeper.sweep(&maps, state::now_ns(), seq, socks.as_ref()) {
            warn!("sweep: {e:#}");
        }
    };
    let start_counters = Counters::read(&skel.maps.stats)?;
    let mut last_print = Instant::now();
    let mut last_counters = start_counters.clone();
    let stats_every = Duration::from_secs(args.stats_interval);
    let mut last_sweep = Instant::now();
    while !stopped() {
        std::thread::sleep(Duration::from_millis(200));
        if last_sweep.elapsed() < SWEEP_EVERY {
            continue;
        }
        last_sweep = Instant::now();
        sweep(&mut sweeper);
        match state::local_addresses() {
            Ok(l) => {
                if let Err(e) = state::sync_local_addrs(&skel.maps.local_addrs, &l) {
                    warn!("{e:#}");
                }
            }
            Err(e) => warn!("{e:#}"),
        }
        if args.verbose > 0 && last_print.elapsed() >= stats_every {
            let now = Counters::read(&skel.maps.stats)?;
            info!(
                "counters over the last {}s:\n{}",
                last_print.elapsed().as_secs(),
                now.since(&last_counters).render()
            );
            last_counters = now;
            last_print = Instant::now();
        }
    }

    // One last look, so every channel learned since the last sweep is in the log.
    sweep(&mut sweeper);
    info!("stopping: detaching");
    attached.detach_all();
    match Counters::read(&skel.maps.stats) {
        Ok(c) => println!("turn-bpf counters:\n{}", c.since(&start_counters).render()),
        Err(e) => error!("reading counters: {e:#}"),
    }
    Ok(())
}
