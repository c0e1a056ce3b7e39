//! `turn-bpf`: argument parsing and the run loop. Everything else lives in the library modules
//! (`offload` starts, runs and stops the offload).

use std::mem::MaybeUninit;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use libbpf_rs::PrintLevel;
use log::{debug, info, warn};

use turn_bpf::attach;
use turn_bpf::cli::{Action, Args, Cli};
use turn_bpf::offload::Offload;
use turn_bpf::pin::PinDir;
use turn_bpf::runlock::RunLock;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail_line(&one_line(&e.to_string())),
    };
    init_logging(&cli.run);
    let pin_path = cli.run.pin_path.clone();
    let action = match cli.action() {
        Ok(a) => a,
        Err(msg) => return fail_line(&msg),
    };
    let done = match action {
        Action::Run(args) => run(&args),
        Action::Detach(d) => detach(&d.ifaces, pin_path.as_deref()),
    };
    match done {
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

fn need_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("turn-bpf needs root (CAP_BPF, CAP_NET_ADMIN): run it with sudo");
    }
    Ok(())
}

/// `turn-bpf detach [--pin-path DIR] IFACE...`: what is pinned under DIR goes first (the XDP
/// links with their pins), then the snooper; then the forwarding settings a killed agent recorded
/// are restored. Refused while a live agent runs on one of them.
fn detach(ifaces: &[String], pin_path: Option<&Path>) -> Result<()> {
    need_root()?;
    let pins = pin_path.map(PinDir::open).transpose()?;
    let mut locks = Vec::new();
    for iface in ifaces {
        attach::ifindex(iface)?;
        let mut lock = RunLock::open(iface)?;
        if lock.try_lock()? {
            locks.push((iface, lock));
        } else if pins.is_some() {
            bail!(
                "a turn-bpf agent is running on {iface}: left alone (stop it with SIGINT or \
                 SIGTERM, then detach)"
            );
        }
        // else: detach_leftovers below refuses that agent's snooper, naming its process.
    }
    if let Some(p) = &pins {
        p.remove_all()?;
        println!("removed everything pinned under {}", p.dir.display());
        // A link whose last pin went is released after an RCU grace period, not at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while ifaces.iter().any(|i| attach::our_xdp_attached(i))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    for iface in ifaces {
        println!("{}", attach::detach_leftovers(iface)?);
    }
    for (iface, lock) in locks {
        let changes = lock.leftover();
        if changes.is_empty() {
            continue;
        }
        let mut a = attach::Attachments::default();
        a.adopt_changes(changes);
        a.lock = Some(lock);
        a.detach_all();
        println!("{iface}: restored the forwarding settings a turn-bpf agent changed");
    }
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    need_root()?;

    // Signals first: from here on Ctrl+C and SIGTERM only set a flag, and every start-up step
    // checks it, so a signal at any point ends with everything undone.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    let stopped = || stop.load(Ordering::SeqCst);

    let mut storage = MaybeUninit::uninit();
    let Some(mut offload) = Offload::start(args, &mut storage, &stopped)? else {
        return stopped_during_start_up();
    };
    offload.run(args, &stopped)?;
    offload.finish();
    Ok(())
}
