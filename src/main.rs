//! `turn-bpf`: argument parsing and the run loop. Everything else lives in the library modules
//! (`offload` starts, runs and stops the offload).

use std::mem::MaybeUninit;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use libbpf_rs::PrintLevel;
use log::{debug, info, warn};

use turn_bpf::attach;
use turn_bpf::cli::{Action, Args, Cli};
use turn_bpf::offload::Offload;
use turn_bpf::pin::PinDir;
use turn_bpf::runlock::RunLock;

fn main() -> ExitCode {
    let cli = match Cli::parse_from_args(std::env::args().collect()) {
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
        Action::Status(s) => {
            need_root(&INSPECT_CAPS).and_then(|()| turn_bpf::status::run(&s.ifaces, s.bindings))
        }
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
            // Probing for a TC filter that is not there yet (or for the clsact qdisc it would
            // hang from, as `status` does on every interface) is expected, not a warning.
            PrintLevel::Warn
                if msg.contains("Cannot find specified filter chain")
                    || msg.contains("Parent Qdisc doesn't exists") =>
            {
                debug!("{msg}")
            }
            // Creating the clsact qdisc where one exists already: expected too.
            PrintLevel::Warn if msg.contains("Exclusivity flag on") => debug!("{msg}"),
            PrintLevel::Warn => warn!("{msg}"),
            PrintLevel::Info => debug!("{msg}"),
            PrintLevel::Debug => log::trace!("{msg}"),
        }
    })));
}

/// Root, with `caps` (what the command does needs).
fn need_root(caps: &[Cap]) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("turn-bpf needs root (CAP_BPF, CAP_NET_ADMIN, ...): run it as root");
    }
    if let Some(missing) = effective_caps().and_then(|eff| missing_caps(caps, eff)) {
        bail!(
            "turn-bpf runs as root but lacks {missing}: it needs CAP_BPF, CAP_PERFMON, \
             CAP_NET_ADMIN, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (and CAP_SYS_ADMIN for the veth \
             check); check the capability bounding set of its container or systemd unit \
             (README: \"Installing it as a service\")"
        );
    }
    Ok(())
}

/// `turn-bpf detach [--pin-path DIR] IFACE...`: what is pinned under DIR goes first (the XDP
/// links with their pins), then the snooper; then the forwarding settings a killed agent recorded
/// are restored. Refused while a live agent runs on one of them.
fn detach(ifaces: &[String], pin_path: Option<&Path>) -> Result<()> {
    need_root(&INSPECT_CAPS)?;
    let pins = pin_path.map(PinDir::open).transpose()?;
    // An interface that is gone (renamed, its namespace deleted) has nothing attached any more:
    // said, and skipped, so that what is pinned still goes and the rest is still cleaned.
    let (present, missing): (Vec<String>, Vec<String>) = ifaces
        .iter()
        .cloned()
        .partition(|iface| attach::ifindex(iface).is_ok());
    let ifaces = &present[..];
    let mut locks = Vec::new();
    for iface in ifaces {
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
        if !a.restored {
            bail!(
                "{iface}: could not restore every forwarding setting a turn-bpf agent changed \
                 (see above); the record stays for the next `turn-bpf detach`"
            );
        }
        println!("{iface}: restored the forwarding settings a turn-bpf agent changed");
    }
    if !missing.is_empty() {
        bail!(
            "no interface named {}: skipped (the rest is done)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    need_root(&NEEDED_CAPS)?;

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

/// This process's effective capabilities (`CapEff` in `/proc/self/status`); None if unreadable,
/// and then nothing is checked up front.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// What the agent cannot run without, as the kernel grants it: each entry is satisfied by any
/// of its capabilities (CAP_SYS_ADMIN still stands in for CAP_BPF and CAP_PERFMON). Without
/// them it would fail half-way with a misleading message ("no process holds the sockets": the
/// server's `/proc/<pid>/fd` unreadable) or a refused load. CAP_SYS_ADMIN itself is optional:
/// without it the veth far-end check cannot enter other namespaces and warns about each veth.
type Cap = (&'static str, &'static [u32], &'static str);

const NEEDED_CAPS: [Cap; 5] = [
    ("CAP_BPF", &[39, 21], "loading the BPF programs and maps"),
    (
        "CAP_PERFMON",
        &[38, 21],
        "loading the programs and their tracepoints",
    ),
    (
        "CAP_NET_ADMIN",
        &[12],
        "attaching XDP and TC, setting forwarding",
    ),
    (
        "CAP_SYS_PTRACE",
        &[19],
        "reading the server's /proc/<pid>/fd",
    ),
    (
        "CAP_DAC_READ_SEARCH",
        &[2, 1],
        "listing /proc/<pid>/fd of a server running as its own user",
    ),
];

/// What `detach` and `status` need: the netlink changes and queries, and opening programs and
/// maps by id (CAP_SYS_ADMIN: how a filter's program is known to be turn-bpf's).
const INSPECT_CAPS: [Cap; 2] = [
    ("CAP_NET_ADMIN", &[12], "removing and listing TC filters"),
    (
        "CAP_SYS_ADMIN",
        &[21],
        "opening programs and maps by id to know they are turn-bpf's",
    ),
];

/// The capabilities of `caps` missing from `eff`, with what each is for; None if none is missing.
fn missing_caps(caps: &[Cap], eff: u64) -> Option<String> {
    let missing: Vec<String> = caps
        .iter()
        .filter(|(_, any_of, _)| !any_of.iter().any(|bit| eff & (1 << bit) != 0))
        .map(|(name, _, what)| format!("{name} ({what})"))
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(b: u32) -> u64 {
        1 << b
    }

    #[test]
    fn needed_capabilities() {
        let unit = [39, 38, 12, 19, 2, 21].iter().fold(0, |a, &b| a | bit(b));
        assert_eq!(missing_caps(&NEEDED_CAPS, unit), None);
        assert_eq!(
            missing_caps(&NEEDED_CAPS, unit & !bit(21)),
            None,
            "CAP_SYS_ADMIN optional"
        );
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as in the kernel.
        assert_eq!(missing_caps(&NEEDED_CAPS, unit & !bit(39) & !bit(38)), None);
        let m = missing_caps(&NEEDED_CAPS, unit & !bit(21) & !bit(39)).unwrap();
        assert!(m.starts_with("CAP_BPF (") && !m.contains(", "), "{m}");
        let m = missing_caps(&NEEDED_CAPS, unit & !bit(19)).unwrap();
        assert!(m.starts_with("CAP_SYS_PTRACE ("), "{m}");
        // CAP_DAC_OVERRIDE reads every directory too.
        assert_eq!(missing_caps(&NEEDED_CAPS, unit & !bit(2) | bit(1)), None);
        assert!(missing_caps(&NEEDED_CAPS, unit & !bit(2))
            .unwrap()
            .contains("CAP_DAC_READ_SEARCH"));
        assert_eq!(missing_caps(&NEEDED_CAPS, u64::MAX), None);
        assert_eq!(
            missing_caps(&NEEDED_CAPS, 0)
                .unwrap()
                .matches("CAP_")
                .count(),
            5
        );
        // detach and status: the netlink and by-id parts only
        assert_eq!(missing_caps(&INSPECT_CAPS, bit(12) | bit(21)), None);
        assert!(missing_caps(&INSPECT_CAPS, unit & !bit(21))
            .unwrap()
            .contains("CAP_SYS_ADMIN"));
    }
}
