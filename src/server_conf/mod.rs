//! The TURN server's own settings, read from the running server: its command line
//! (`/proc/PID/cmdline`) and the config file it read, parsed as coturn 4.6.1 parses them
//! ([`options`]), applied in coturn's order (the file first, then the command line, so the
//! command line wins for a single value and lists add up), on top of coturn's defaults.
//! [`effective`] then merges them with the agent's own options.

pub mod effective;
pub mod options;
pub mod peers;
pub mod profile;

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::owners::ProcFs;

use options::{ConfChoice, ParsedArgs};
use peers::PeerPolicy;

/// coturn 4.6.1's defaults (`STUN_DEFAULT_*`, `DEFAULT_STUN_PORT`).
pub const DEFAULT_LISTENING_PORT: i32 = 3478;
pub const DEFAULT_CHANNEL_LIFETIME: i32 = 600;
pub const DEFAULT_PERMISSION_LIFETIME: i32 = 300;
pub const DEFAULT_MAX_ALLOCATE_LIFETIME: i32 = 3600;
/// The config file coturn looks for when it is given none.
pub const DEFAULT_CONFIG_FILE: &str = "turnserver.conf";
/// Where coturn 4.6.1 (Debian, prefix /usr) looks for a relative config file name, in order
/// (`config_file_search_dirs` in `apputils.c`).
pub const CONFIG_SEARCH_DIRS: &[&str] = &[
    "./",
    "./turnserver/",
    "./coturn/",
    "./etc/",
    "./etc/turnserver/",
    "./etc/coturn/",
    "../etc/",
    "../etc/turnserver/",
    "../etc/coturn/",
    "/etc/",
    "/etc/turnserver/",
    "/etc/coturn/",
    "/usr/local/etc/",
    "/usr/local/etc/turnserver/",
    "/usr/local/etc/coturn/",
    "/usr/etc/",
    "/usr/etc/turnserver/",
    "/usr/etc/coturn/",
];

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// coturn's default: neither its command line nor its config file set it.
    Default,
    ConfFile,
    CommandLine,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "coturn's default",
            Source::ConfFile => "coturn's config file",
            Source::CommandLine => "coturn's command line",
        })
    }
}

/// A setting's value and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub from: Source,
}

impl<T> Setting<T> {
    const fn default(value: T) -> Setting<T> {
        Setting {
            value,
            from: Source::Default,
        }
    }
}

/// What the server runs with, as far as the agent is concerned. Numbers are what coturn's C
/// conversions made of the text (`atoi`, `strtoul`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConf {
    pub listening_port: Setting<i32>,
    /// 0 (or less): `listening-port + 1`.
    pub alt_listening_port: Setting<i32>,
    /// `no-rfc5780`: no alternate port at all.
    pub no_rfc5780: bool,
    /// `listening-ip` values (none: coturn listens on every local address).
    pub listening_ips: Vec<String>,
    /// `relay-ip` values.
    pub relay_ips: Vec<String>,
    /// `external-ip PUBLIC` (the first one; coturn refuses a second).
    pub external_ip: Option<IpAddr>,
    /// `external-ip PUBLIC/PRIVATE` pairs.
    pub external_pairs: Vec<(IpAddr, IpAddr)>,
    /// Seconds; 0 or less: coturn arms no timer and the channel never expires on its own.
    pub channel_lifetime: Setting<i32>,
    pub permission_lifetime: Setting<i32>,
    pub max_allocate_lifetime: Setting<i32>,
    /// Bytes per second per session (0: unlimited).
    pub max_bps: Setting<u64>,
    /// Bytes per second for all sessions together (0: unlimited).
    pub bps_capacity: Setting<u64>,
    pub peers: PeerPolicy,
    /// The config file read (as the server names it), if any.
    pub conf_file: Option<PathBuf>,
    /// What coturn ignores or complains about in what it was given, for the log.
    pub notes: Vec<String>,
}

impl Default for ServerConf {
    fn default() -> ServerConf {
        ServerConf {
            listening_port: Setting::default(DEFAULT_LISTENING_PORT),
            alt_listening_port: Setting::default(0),
            no_rfc5780: false,
            listening_ips: Vec::new(),
            relay_ips: Vec::new(),
            external_ip: None,
            external_pairs: Vec::new(),
            channel_lifetime: Setting::default(DEFAULT_CHANNEL_LIFETIME),
            permission_lifetime: Setting::default(DEFAULT_PERMISSION_LIFETIME),
            max_allocate_lifetime: Setting::default(DEFAULT_MAX_ALLOCATE_LIFETIME),
            max_bps: Setting::default(0),
            bps_capacity: Setting::default(0),
            peers: PeerPolicy::default(),
            conf_file: None,
            notes: Vec::new(),
        }
    }
}

impl ServerConf {
    /// Apply one option as coturn's `set_option` does (only the options the agent reads).
    /// `resolve` looks up host names where coturn would.
    pub fn apply(
        &mut self,
        name: &str,
        value: Option<&str>,
        from: Source,
        resolve: &dyn Fn(&str) -> Option<IpAddr>,
    ) {
        let v = value.unwrap_or("");
        let int = |default: i32| Setting {
            value: options::int_value(value, default),
            from,
        };
        match name {
            "listening-port" => self.listening_port = int(0),
            "alt-listening-port" => self.alt_listening_port = int(0),
            "no-rfc5780" => self.no_rfc5780 = true,
            "listening-ip" => self.listening_ips.push(v.to_string()),
            "relay-ip" => self.relay_ips.push(v.to_string()),
            "external-ip" => self.apply_external_ip(v, resolve),
            "channel-lifetime" => self.channel_lifetime = int(DEFAULT_CHANNEL_LIFETIME),
            "permission-lifetime" => self.permission_lifetime = int(DEFAULT_PERMISSION_LIFETIME),
            "max-allocate-lifetime" => {
                self.max_allocate_lifetime = int(DEFAULT_MAX_ALLOCATE_LIFETIME)
            }
            "max-bps" => {
                self.max_bps = Setting {
                    value: options::strtoul(v),
                    from,
                }
            }
            "bps-capacity" => {
                self.bps_capacity = Setting {
                    value: options::strtoul(v),
                    from,
                }
            }
            "allowed-peer-ip" => self.peers.add(true, v, resolve),
            "denied-peer-ip" => self.peers.add(false, v, resolve),
            "no-multicast-peers" | "allow-loopback-peers" => match options::bool_value(value) {
                Some(b) if name == "no-multicast-peers" => self.peers.no_multicast_peers = b,
                Some(b) => self.peers.allow_loopback_peers = b,
                None => self
                    .notes
                    .push(format!("--{name}={v} is not a boolean (coturn would exit)")),
            },
            _ => {}
        }
    }

    /// `-X PUBLIC/PRIVATE` maps and also allows PRIVATE as a peer; `-X PUBLIC` alone is taken
    /// only once (coturn: "You cannot define external IP more than once").
    fn apply_external_ip(&mut self, v: &str, resolve: &dyn Fn(&str) -> Option<IpAddr>) {
        if let Some((public, private)) = v.split_once('/') {
            let pair = (
                peers::make_addr(public, resolve),
                peers::make_addr(private, resolve),
            );
            if let (Some(public), Some(private)) = pair {
                self.external_pairs.push((public, private));
                self.peers.add(true, private.to_string().as_str(), resolve);
            } else {
                self.notes.push(format!(
                    "external-ip {v}: not an address pair (coturn ignores it)"
                ));
            }
        } else if self.external_ip.is_some() {
            self.notes.push(format!(
                "external-ip {v}: a second one, which coturn refuses"
            ));
        } else {
            self.external_ip = peers::make_addr(v, resolve);
        }
    }

    /// The alternate port coturn uses when RFC 5780 is on (`get_alt_listener_port`).
    pub fn alt_port(&self) -> i32 {
        if self.alt_listening_port.value < 1 {
            self.listening_port.value.saturating_add(1)
        } else {
            self.alt_listening_port.value
        }
    }

    /// coturn keeps RFC 5780 (and its alternate port) on only with two or more listening
    /// addresses and no plain `external-ip` (`setup_listener`). `None`: coturn discovers its
    /// listening addresses itself, and only its sockets tell.
    pub fn expects_alt_port(&self) -> Option<bool> {
        if self.no_rfc5780 || self.external_ip.is_some() {
            return Some(false);
        }
        if self.listening_ips.is_empty() {
            return None;
        }
        Some(self.listening_ips.len() >= 2)
    }

    /// Build from coturn's argv and the text of the config file it read (`conf`: its name as
    /// the server gave it, and its bytes), in coturn's order.
    pub fn from_parts(
        argv: &[String],
        conf: Option<(PathBuf, &[u8])>,
        resolve: &dyn Fn(&str) -> Option<IpAddr>,
    ) -> ServerConf {
        let mut c = ServerConf::default();
        if let Some((path, text)) = conf {
            let (lines, bad) = options::parse_conf_file(text);
            for l in &lines {
                c.apply(l.name, Some(&l.value), Source::ConfFile, resolve);
            }
            for b in bad {
                c.notes.push(format!(
                    "{}: coturn ignores the line \"{b}\" (Bad configuration format)",
                    path.display()
                ));
            }
            c.conf_file = Some(path);
        }
        let parsed = options::getopt_long(argv);
        for o in &parsed.opts {
            c.apply(o.name, o.value.as_deref(), Source::CommandLine, resolve);
        }
        c.note_command_line(&parsed);
        c
    }

    fn note_command_line(&mut self, parsed: &ParsedArgs) {
        for (name, word) in &parsed.ignored_values {
            self.notes.push(format!(
                "coturn ignores \"{word}\" after --{name} on its command line: it takes that \
                 option's value only as --{name}={word}"
            ));
        }
        let spaced: BTreeSet<&String> = parsed.ignored_values.iter().map(|(_, w)| w).collect();
        for w in parsed.leftovers.iter().filter(|w| !spaced.contains(w)) {
            self.notes.push(format!(
                "coturn ignores \"{w}\" on its command line (Unknown argument)"
            ));
        }
        for e in &parsed.errors {
            self.notes
                .push(format!("coturn's command line: {e} (coturn would exit)"));
        }
    }

    /// Read the settings of the running server `pid`: its command line and the config file it
    /// names with `-c` (else `agent_conf`, else coturn's default file where coturn finds it).
    /// Paths are resolved the way the server sees them (`/proc/PID/root`, `/proc/PID/cwd`).
    pub fn of_process(pid: u32, agent_conf: Option<&Path>) -> Result<ServerConf> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let raw = std::fs::read(proc_dir.join("cmdline"))
            .with_context(|| format!("reading /proc/{pid}/cmdline"))?;
        let argv = split_cmdline(&raw);
        let view = ProcessView {
            root: proc_dir.join("root"),
            cwd: proc_dir.join("cwd"),
        };
        let mut notes = Vec::new();
        let file = conf_file_of(&options::conf_choice(&argv), &view, agent_conf, &mut notes);
        let text =
            match &file {
                Some((_, at)) => Some(std::fs::read(at).with_context(|| {
                    format!("reading the server's config file {}", at.display())
                })?),
                None => None,
            };
        if let Some((name, at)) = &file {
            if changed_since_start(at, pid) {
                notes.push(format!(
                    "{} changed after the server started: the server may run with other \
                     settings than it holds now",
                    name.display()
                ));
            }
        }
        let conf = file
            .zip(text.as_deref())
            .map(|((name, _), text)| (name, text));
        let mut c = ServerConf::from_parts(&argv, conf, &peers::resolve_host);
        c.notes.splice(0..0, notes);
        Ok(c)
    }
}

/// The config file the server read: what its `-c` names (where coturn finds it), none with
/// `-n`, else the agent's `--turnserver-conf`, else coturn's default file where coturn finds it.
fn conf_file_of(
    choice: &ConfChoice,
    view: &ProcessView,
    agent_conf: Option<&Path>,
    notes: &mut Vec<String>,
) -> Option<(PathBuf, PathBuf)> {
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    match (choice, agent_conf) {
        (ConfChoice::NoFile, agent) => {
            if let Some(p) = agent {
                notes.push(format!(
                    "--turnserver-conf {} is not read: coturn runs with -n (no config file)",
                    p.display()
                ));
            }
            None
        }
        (ConfChoice::Named(name), agent) => {
            let found = view.find_config_file(name);
            if found.is_none() {
                notes.push(format!(
                    "coturn's config file {name} (its -c) is not where coturn looks for it: \
                     coturn runs without one"
                ));
            }
            if let Some(p) = agent.filter(|p| found.as_ref().is_none_or(|f| !same(p, &f.1))) {
                notes.push(format!(
                    "--turnserver-conf {} is not read: coturn reads {name} (its -c)",
                    p.display()
                ));
            }
            found
        }
        (ConfChoice::Default, Some(p)) => Some((p.to_path_buf(), p.to_path_buf())),
        (ConfChoice::Default, None) => view.find_config_file(DEFAULT_CONFIG_FILE),
    }
}

/// Whether `file` was modified after process `pid` started (by more than the 2 s the two
/// clocks can differ by: the boot time is in whole seconds).
fn changed_since_start(file: &Path, pid: u32) -> bool {
    let started = process_start(pid);
    let modified = std::fs::metadata(file).and_then(|m| m.modified()).ok();
    matches!((started, modified),
        (Some(s), Some(m)) if m > s + std::time::Duration::from_secs(2))
}

/// When process `pid` started: `/proc/PID/stat`'s start time (clock ticks since boot) after
/// `/proc/stat`'s `btime`.
fn process_start(pid: u32) -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields resume after the command name's last ')': state is field 3, starttime field 22
    let ticks: u64 = stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .unwrap_or(100) as u64;
    let since_boot = std::time::Duration::from_millis(ticks * 1000 / hz);
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(btime) + since_boot)
}

/// `/proc/PID/cmdline`: NUL-terminated words.
pub fn split_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// A process's view of the file system, seen from the agent.
#[derive(Debug, Clone)]
pub struct ProcessView {
    /// Its root directory (`/proc/PID/root`).
    pub root: PathBuf,
    /// Its working directory (`/proc/PID/cwd`).
    pub cwd: PathBuf,
}

impl ProcessView {
    /// Where the process finds `path`: under its root when absolute, else under its working
    /// directory (a leading `~` is not expanded by `fopen`).
    fn locate(&self, path: &str) -> PathBuf {
        match path.strip_prefix('/') {
            Some(rel) => self.root.join(rel),
            None => self.cwd.join(path),
        }
    }

    /// coturn's `find_config_file`: an absolute name (or one starting with `~`) as is, a
    /// relative one in each of [`CONFIG_SEARCH_DIRS`] in turn, and `etc/NAME` once more as
    /// `NAME`. Returns the name as the server sees it and the path to read it from here.
    pub fn find_config_file(&self, name: &str) -> Option<(PathBuf, PathBuf)> {
        let readable = |p: &Path| std::fs::File::open(p).is_ok();
        if name.is_empty() {
            return None;
        }
        if name.starts_with('/') || name.starts_with('~') {
            let at = self.locate(name);
            return readable(&at).then(|| (PathBuf::from(name), at));
        }
        for dir in CONFIG_SEARCH_DIRS {
            let full = format!("{dir}{name}");
            let at = self.locate(&full);
            if readable(&at) {
                return Some((PathBuf::from(full), at));
            }
        }
        name.strip_prefix("etc/")
            .and_then(|rest| self.find_config_file(rest))
    }
}

/// The pids of the processes holding any of the sockets `inodes`, lowest first.
pub fn socket_owner_pids(inodes: &BTreeSet<u64>) -> Vec<u32> {
    let owners = ProcFs::default().owners(inodes).unwrap_or_default();
    let pids: BTreeSet<u32> = owners.into_values().flatten().collect();
    pids.into_iter().collect()
}

#[cfg(test)]
mod tests;
