//! The settings the agent runs with. Precedence: the agent's explicit options, then the running
//! server's command line, then its config file, then what its sockets show (and coturn's
//! defaults). An explicit option never makes the fast path relay longer or more than the server:
//! a longer lifetime yields to the server's, a mapping of an address the server maps elsewhere
//! yields to the server's. Every disagreement is one warning at start-up, and a server that
//! limits bandwidth (`max-bps`, `bps-capacity`) is refused: those limits cannot be kept in the
//! fast path.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use anyhow::{bail, Result};
use log::{debug, warn};

use super::peers::{self, PeerPolicy};
use super::profile::{self, Profile, ServerProcess};
use super::{ServerConf, Setting};
use crate::cli::{Args, ExternalIp, MAX_TURN_PORTS};
use crate::owners::ProcFs;
use crate::server::UdpTable;

/// coturn's default listening port: where the agent looks for the server when it is given no
/// `--turn-port`.
pub const DEFAULT_TURN_PORT: u16 = 3478;

/// What the agent runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub turn_ports: Vec<u16>,
    pub channel_lifetime: u64,
    pub permission_lifetime: u64,
    pub external_ips: Vec<ExternalIp>,
    /// The server's peer policy (coturn's defaults when its settings could not be read).
    pub peers: PeerPolicy,
    /// The server's rules.
    pub profile: &'static Profile,
    /// The addresses its `relay-ip` settings name (none: it relays from its listening
    /// addresses, or from every address).
    pub relay_ips: Vec<IpAddr>,
    /// Where all this came from, for the log.
    pub summary: String,
}

/// What is known about the running server.
#[derive(Debug, Clone, Default)]
pub struct ServerView {
    /// The process that holds the TURN port's sockets, if it was found.
    pub pid: Option<u32>,
    /// What it is (its name, the pion/turn module it was built with).
    pub process: Option<ServerProcess>,
    /// Its settings, when it is coturn and they could be read.
    pub conf: Option<ServerConf>,
    /// The ports (of its listening port and, with RFC 5780, its alternate port) on which the
    /// server process holds unconnected UDP sockets.
    pub ports: Vec<u16>,
    /// The `--turn-port`s on which any process has an unconnected UDP socket.
    pub listened: BTreeSet<u16>,
    /// This host's addresses (for coturn's `external-ip PUBLIC` without a private address).
    pub local_addrs: HashSet<IpAddr>,
}

/// Find the server beside which the agent runs, read its settings and merge them with the
/// agent's options; log one warning per disagreement. Refuses a server with bandwidth limits.
pub fn resolve(args: &Args, socks: &UdpTable) -> Result<Effective> {
    let view = ServerView::find(args, socks)?;
    let (eff, warnings) = merge(args, &view)?;
    for w in &warnings {
        warn!("{w}");
    }
    debug!("peer policy mirrored from the server: {}", eff.peers);
    Ok(eff)
}

impl ServerView {
    /// The process holding the UDP sockets on the TURN ports (`--turn-port`, else coturn's
    /// default 3478), its settings when it is coturn, and the ports its sockets show.
    pub fn find(args: &Args, socks: &UdpTable) -> Result<ServerView> {
        let mut view = ServerView {
            listened: args
                .turn_ports
                .iter()
                .copied()
                .filter(|p| !socks.listeners(*p).is_empty())
                .collect(),
            local_addrs: crate::maps::local_addresses()?,
            ..ServerView::default()
        };
        let probe: Vec<u16> = if args.turn_ports.is_empty() {
            vec![DEFAULT_TURN_PORT]
        } else {
            args.turn_ports.clone()
        };
        let inodes: BTreeSet<u64> = probe
            .iter()
            .flat_map(|p| socks.listeners(*p))
            .map(|s| s.inode)
            .collect();
        if inodes.is_empty() {
            // Nothing listens: the server watch refuses to start with its own words.
            return Ok(view);
        }
        // The server named on the command line, else the one process holding the sockets (the
        // server watch refuses several owners with its own words).
        let named = args
            .server_pid
            .or_else(|| crate::owners::read_pidfile(args.server_pidfile.as_ref()?).ok());
        let Some(pid) = named.or_else(|| pick_server(&super::socket_owner_pids(&inodes))) else {
            warn!(
                "no process here holds the sockets on UDP port(s) {probe:?} (is the server in \
                 another PID namespace?): its settings cannot be read; the agent uses its own \
                 options and coturn 4.6.1's defaults{}",
                if args.turnserver_conf.is_some() {
                    " with --turnserver-conf"
                } else {
                    ""
                }
            );
            view.conf = args
                .turnserver_conf
                .as_deref()
                .map(read_conf_alone)
                .transpose()?;
            return Ok(view);
        };
        view.pid = Some(pid);
        let proc_fs = ProcFs::default();
        let process = server_process(&proc_fs, pid);
        let name = process.comm.clone();
        let go = process.go;
        view.process = Some(process);
        if name != "turnserver" || go {
            debug!(
                "the TURN port's sockets belong to pid {pid} ({name}), not to coturn: no \
                 settings to read"
            );
            return Ok(view);
        }
        let conf = ServerConf::of_process(pid, args.turnserver_conf.as_deref())?;
        let own = proc_fs.sockets_of(pid).unwrap_or_default();
        let holds = |port: u16| socks.listeners(port).iter().any(|s| own.contains(&s.inode));
        view.ports = server_ports(&conf)
            .into_iter()
            .filter(|p| holds(*p))
            .collect();
        if let Some(expected) = conf.expects_alt_port() {
            let alt = u16::try_from(conf.alt_port()).ok();
            let open = alt.is_some_and(|a| view.ports.contains(&a));
            if open != expected {
                debug!(
                    "coturn's alternate port {alt:?} is {} though its settings say it would {}",
                    if open { "open" } else { "closed" },
                    if expected { "be open" } else { "not be" }
                );
            }
        }
        view.conf = Some(conf);
        Ok(view)
    }
}

/// What the process holding the TURN sockets is: its name, and the pion/turn module its
/// executable was built with, read from the Go build information in it.
fn server_process(proc_fs: &ProcFs, pid: u32) -> ServerProcess {
    let comm = proc_fs.comm(pid);
    let exe = match std::fs::read(proc_fs.exe_file(pid)) {
        Ok(exe) => exe,
        Err(e) => {
            debug!("reading the executable of pid {pid} ({comm}): {e}");
            Vec::new()
        }
    };
    let info = crate::gobuild::parse_file(&exe);
    ServerProcess {
        comm,
        pion: info.as_ref().and_then(|i| i.pion_turn()),
        go: info.is_some(),
        coturn: profile::coturn_version(&exe),
    }
}

/// The one process to read the settings of: the only one, or the lowest pid named
/// `turnserver` among several (a forked helper may share the sockets).
fn pick_server(pids: &[u32]) -> Option<u32> {
    match pids {
        [] => None,
        [one] => Some(*one),
        several => {
            let coturn: Vec<u32> = several
                .iter()
                .copied()
                .filter(|p| ProcFs::default().comm(*p) == "turnserver")
                .collect();
            let pick = coturn.first().or(several.first()).copied();
            debug!("several processes hold the TURN port's sockets ({several:?}): reading pid {pick:?}");
            pick
        }
    }
}

/// A config file named by `--turnserver-conf`, read without a command line.
fn read_conf_alone(path: &std::path::Path) -> Result<ServerConf> {
    let text = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("reading --turnserver-conf {}: {e}", path.display()))?;
    Ok(ServerConf::from_parts(
        &[],
        Some((path.to_path_buf(), &text)),
        &peers::resolve_host,
    ))
}

/// The UDP ports coturn listens on for TURN: its listening port and its alternate one (which
/// it opens only in RFC 5780 mode: the sockets tell).
fn server_ports(conf: &ServerConf) -> Vec<u16> {
    let mut ports = Vec::new();
    for p in [conf.listening_port.value, conf.alt_port()] {
        if let Ok(p) = u16::try_from(p) {
            if p != 0 && !ports.contains(&p) {
                ports.push(p);
            }
        }
    }
    ports
}

/// Merge the agent's options with what is known of the server. Returns the settings and the
/// warnings (one per disagreement); refuses a server with bandwidth limits.
pub fn merge(args: &Args, server: &ServerView) -> Result<(Effective, Vec<String>)> {
    let mut w = Vec::new();
    let conf = server.conf.as_ref();
    if let Some(c) = conf {
        refuse_bandwidth_limits(c)?;
        w.extend(c.notes.iter().cloned());
    }
    let (profile, why) = profile::choose(args.server, server.process.as_ref());
    // (no process found: the view already said so, and the server watch refuses to start when
    // nothing listens at all)
    if conf.is_none() && !profile.lifetimes_readable && server.process.is_some() {
        let assumed = |name: &str, given: Option<u64>, default: u64| match given {
            Some(v) => format!("{name} {v} s (given)"),
            None => format!("{name} {default} s (the profile's)"),
        };
        w.push(format!(
            "server: {why}; its lifetimes cannot be read from it: {}, {} (give \
             --channel-lifetime/--permission-lifetime if the server uses shorter ones; a pion \
             server's InboundMTU below 1600, set in its code, is not seen either)",
            assumed(
                "channel-lifetime",
                args.channel_lifetime,
                profile.channel_lifetime_s
            ),
            assumed(
                "permission-lifetime",
                args.permission_lifetime,
                profile.permission_lifetime_s
            ),
        ));
    }
    let turn_ports = turn_ports(args, server, &mut w);
    let channel_lifetime = lifetime(
        "channel-lifetime",
        args.channel_lifetime,
        conf.map(|c| c.channel_lifetime),
        profile.channel_lifetime_s,
        &mut w,
    );
    let permission_lifetime = lifetime(
        "permission-lifetime",
        args.permission_lifetime,
        conf.map(|c| c.permission_lifetime),
        profile.permission_lifetime_s,
        &mut w,
    );
    let external_ips = external_ips(args, conf, &server.local_addrs, &mut w);
    let summary = format!(
        "server profile: {why}; {}",
        summary(server, &turn_ports, channel_lifetime, permission_lifetime)
    );
    Ok((
        Effective {
            turn_ports,
            channel_lifetime,
            permission_lifetime,
            external_ips,
            peers: conf.map(|c| c.peers.clone()).unwrap_or_default(),
            profile,
            relay_ips: conf.map(explicit_relay_ips).unwrap_or_default(),
            summary,
        },
        w,
    ))
}

/// coturn drops what exceeds `max-bps` per session and refuses allocations beyond
/// `bps-capacity`; datagrams relayed in XDP never pass through those checks.
fn refuse_bandwidth_limits(c: &ServerConf) -> Result<()> {
    let limits: Vec<String> = [("max-bps", c.max_bps), ("bps-capacity", c.bps_capacity)]
        .iter()
        .filter(|(_, s)| s.value != 0)
        .map(|(name, s)| format!("{name}={} ({})", s.value, s.from))
        .collect();
    if !limits.is_empty() {
        bail!(
            "the TURN server limits bandwidth ({}): coturn's bandwidth limits cannot be enforced \
             in the fast path, so turn-bpf declines to bypass them and offloads nothing",
            limits.join(", ")
        );
    }
    Ok(())
}

/// `--turn-port` as given (a port the server does not listen on is warned about), else every
/// port the server listens on.
fn turn_ports(args: &Args, server: &ServerView, w: &mut Vec<String>) -> Vec<u16> {
    if args.turn_ports.is_empty() {
        let mut ports = server.ports.clone();
        ports.truncate(MAX_TURN_PORTS);
        if ports.is_empty() {
            ports.push(DEFAULT_TURN_PORT);
        }
        return ports;
    }
    if let Some(pid) = server.pid.filter(|_| server.conf.is_some()) {
        for p in &args.turn_ports {
            // A port nobody listens on is refused by the server watch, in its own words.
            if !server.ports.contains(p) && server.listened.contains(p) {
                w.push(format!(
                    "--turn-port {p}: the TURN server (pid {pid}) does not listen on UDP port \
                     {p} (it listens on {:?}); another socket does, and it is offloaded as if it \
                     were the server's",
                    server.ports
                ));
            }
        }
    }
    args.turn_ports.clone()
}

/// The lifetime the fast path uses: the server's, or the explicit one when that is shorter.
/// A server value of 0 or less means coturn arms no timer (the object never expires there).
fn lifetime(
    name: &str,
    explicit: Option<u64>,
    server: Option<Setting<i32>>,
    default: u64,
    w: &mut Vec<String>,
) -> u64 {
    let Some(s) = server else {
        return explicit.unwrap_or(default);
    };
    let from = s.from;
    match (explicit, u64::try_from(s.value).ok().filter(|v| *v > 0)) {
        (Some(e), Some(v)) if e > v => {
            w.push(format!(
                "--{name} {e} disagrees with the server's {name} of {v} s ({from}): using {v} s, \
                 so the fast path never relays longer than the server"
            ));
            v
        }
        (Some(e), Some(v)) if e < v => {
            w.push(format!(
                "--{name} {e} disagrees with the server's {name} of {v} s ({from}): using {e} s \
                 as given (the fast path stops first and leaves the rest to the server)"
            ));
            e
        }
        (Some(e), Some(_)) => e,
        (Some(e), None) => {
            w.push(format!(
                "--{name} {e} disagrees with the server's {name}={} ({from}), with which coturn \
                 never expires them: using {e} s as given",
                s.value
            ));
            e
        }
        (None, Some(v)) => v,
        (None, None) => {
            w.push(format!(
                "the server's {name}={} ({from}) means coturn never expires them: the fast path \
                 stops after {default} s and leaves the rest to the server",
                s.value
            ));
            default
        }
    }
}

/// `--external-ip` as given, except that the server's mapping wins for an address it maps
/// elsewhere; the server's mappings not named are added. One warning per difference.
fn external_ips(
    args: &Args,
    conf: Option<&ServerConf>,
    locals: &HashSet<IpAddr>,
    w: &mut Vec<String>,
) -> Vec<ExternalIp> {
    let Some(conf) = conf else {
        return args.external_ips.clone();
    };
    let server = server_external_ips(conf, locals, w);
    let mut out = Vec::new();
    for e in &args.external_ips {
        match server.iter().find(|s| s.public == e.public) {
            Some(s) if s.private != e.private => {
                w.push(format!(
                    "--external-ip {}={}: the server maps {} to {}: using the server's mapping",
                    e.public, e.private, s.public, s.private
                ));
                out.push(*s);
            }
            Some(_) => out.push(*e),
            None => {
                w.push(format!(
                    "--external-ip {}={}: the server does not map {} (used as given)",
                    e.public, e.private, e.public
                ));
                out.push(*e);
            }
        }
    }
    for s in &server {
        if !out.iter().any(|o| o.public == s.public) {
            if !args.external_ips.is_empty() {
                w.push(format!(
                    "the server maps external-ip {} to {}, which --external-ip does not name: \
                     using the server's mapping",
                    s.public, s.private
                ));
            }
            out.push(*s);
        }
    }
    out
}

/// The server's public → private mappings: each `external-ip PUBLIC/PRIVATE`, and a plain
/// `external-ip PUBLIC` mapped (as coturn's `main` does) to each relay address of its family
/// other than 127.0.0.1 and ::1, which the agent can mirror only when there is exactly one.
fn server_external_ips(
    conf: &ServerConf,
    locals: &HashSet<IpAddr>,
    w: &mut Vec<String>,
) -> Vec<ExternalIp> {
    let mut out: Vec<ExternalIp> = Vec::new();
    for (public, private) in &conf.external_pairs {
        if public.is_ipv4() != private.is_ipv4() {
            w.push(format!(
                "the server's external-ip {public}/{private} mixes address families: not mirrored"
            ));
        } else if !out.iter().any(|o| o.public == *public) {
            out.push(ExternalIp {
                public: *public,
                private: *private,
            });
        }
    }
    let Some(public) = conf.external_ip else {
        return out;
    };
    let candidates: Vec<IpAddr> = relay_addrs(conf, locals)
        .into_iter()
        .filter(|r| r.is_ipv4() == public.is_ipv4())
        .filter(|r| {
            let s = r.to_string();
            !s.starts_with("127.0.0.1") && !s.starts_with("::1")
        })
        .collect();
    match candidates.as_slice() {
        [private] if !out.iter().any(|o| o.public == public) => out.push(ExternalIp {
            public,
            private: *private,
        }),
        [_] => {}
        _ => w.push(format!(
            "the server's external-ip {public} maps to {} relay addresses ({candidates:?}): \
             the agent cannot tell which one an allocation uses, so allocations on {public} \
             stay with the server (give --external-ip {public}=PRIVATE to choose)",
            candidates.len()
        )),
    }
    out
}

/// The addresses of coturn's `relay-ip` settings alone.
fn explicit_relay_ips(conf: &ServerConf) -> Vec<IpAddr> {
    conf.relay_ips
        .iter()
        .filter_map(|s| peers::make_addr(s, &peers::resolve_host))
        .collect()
}

/// coturn's relay addresses: `relay-ip`, else the `listening-ip`s, else (discovered) every
/// local address that is not loopback, link-local or unspecified.
fn relay_addrs(conf: &ServerConf, locals: &HashSet<IpAddr>) -> Vec<IpAddr> {
    let parse = |v: &Vec<String>| -> Vec<IpAddr> {
        v.iter()
            .filter_map(|s| peers::make_addr(s, &peers::resolve_host))
            .collect()
    };
    if !conf.relay_ips.is_empty() {
        return parse(&conf.relay_ips);
    }
    if !conf.listening_ips.is_empty() {
        return parse(&conf.listening_ips);
    }
    let mut found: Vec<IpAddr> = locals
        .iter()
        .copied()
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .filter(|a| {
            let s = a.to_string();
            !s.starts_with("169.254.") && !s.starts_with("fe80")
        })
        .collect();
    found.sort();
    found
}

fn summary(server: &ServerView, ports: &[u16], channel: u64, permission: u64) -> String {
    let Some(c) = &server.conf else {
        return format!(
            "settings: UDP port(s) {ports:?}, channel-lifetime {channel} s, \
             permission-lifetime {permission} s (the server's own could not be read)"
        );
    };
    let file = c
        .conf_file
        .as_ref()
        .map_or("no config file".to_string(), |f| {
            format!("config file {}", f.display())
        });
    format!(
        "settings taken from the TURN server (pid {}, {file}): UDP port(s) {ports:?}; \
         channel-lifetime {channel} s (server: {} s, {}); permission-lifetime {permission} s \
         (server: {} s, {}); max-allocate-lifetime {} s ({})",
        server.pid.map_or("?".into(), |p| p.to_string()),
        c.channel_lifetime.value,
        c.channel_lifetime.from,
        c.permission_lifetime.value,
        c.permission_lifetime.from,
        c.max_allocate_lifetime.value,
        c.max_allocate_lifetime.from,
    )
}

#[cfg(test)]
mod tests;
