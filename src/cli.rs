//! The command line: parsing and the checks that need no privileges.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

use crate::server::ServerName;
use crate::server_conf::profile::ServerKind;

/// Most TURN listening ports the BPF program matches.
pub const MAX_TURN_PORTS: usize = crate::consts::TB_MAX_TURN_PORTS as usize;

/// Transparent XDP offload of TURN ChannelData beside an unmodified TURN server.
///
/// Learns allocations and channel bindings from the server's own success responses and relays
/// ChannelData between clients and peers in the kernel. Stop it with Ctrl+C (or SIGTERM): it
/// detaches and the server carries on alone.
#[derive(Debug, Clone, Parser)]
#[command(name = "turn-bpf", version, about, long_about = None,
          args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Running the offload (no subcommand).
    #[command(flatten)]
    pub run: Args,
}

/// What `turn-bpf` does: run the offload (no subcommand), or one of these.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Remove a turn-bpf TC filter left behind on these interfaces by an agent that was killed
    /// with SIGKILL, then exit. (Its XDP links vanish with the process by themselves.)
    Detach(DetachArgs),
    /// Show what a running turn-bpf is doing: its attachments, counters and tables (found from
    /// the programs attached to the interfaces), then exit.
    Status(StatusArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The interfaces to look at [default: every interface of this network namespace].
    #[arg(value_name = "IFACE")]
    pub ifaces: Vec<String>,

    /// Also list every allocation and channel: client, relayed address, peer, time left.
    #[arg(long)]
    pub bindings: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DetachArgs {
    /// The interfaces to clean.
    #[arg(value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,
}

/// What the command line asks for, once parsed and checked.
#[derive(Debug, Clone)]
pub enum Action {
    Run(Box<Args>),
    Detach(DetachArgs),
    Status(StatusArgs),
}

impl Cli {
    /// Parse `argv` (program name first). clap stops looking for a subcommand once any option
    /// came first, so `turn-bpf -v detach eth0` would run the offload on an interface named
    /// "detach": the output options (`-v`, `-q`), the only ones a subcommand shares, are moved
    /// after the subcommand when nothing else comes before it.
    pub fn parse_from_args(argv: Vec<String>) -> Result<Cli, clap::Error> {
        let is_output_flag = |a: &str| {
            matches!(a, "--verbose" | "--quiet")
                || (a.len() > 1 && a.starts_with('-') && a[1..].chars().all(|c| c == 'v'))
                || a == "-q"
        };
        let first_word = argv
            .iter()
            .skip(1)
            .position(|a| !is_output_flag(a))
            .map(|i| i + 1);
        let mut argv = argv;
        if let Some(i) = first_word.filter(|&i| i > 1) {
            let is_sub = Cli::command_names().any(|n| n == argv[i]);
            if is_sub {
                let flags: Vec<String> = argv.drain(1..i).collect();
                argv.extend(flags);
            }
        }
        Cli::try_parse_from(argv)
    }

    fn command_names() -> impl Iterator<Item = String> {
        use clap::CommandFactory;
        Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// The action, with the checks clap cannot express done. Returns the one line that names the
    /// problem. `--detach IFACE...` is the same as `detach IFACE...`.
    pub fn action(self) -> Result<Action, String> {
        let action = match self.command {
            Some(Command::Detach(d)) => Action::Detach(d),
            Some(Command::Status(s)) => Action::Status(s),
            None if !self.run.detach.is_empty() => Action::Detach(DetachArgs {
                ifaces: self.run.detach.clone(),
            }),
            None => Action::Run(Box::new(self.run.clone())),
        };
        match &action {
            Action::Run(a) => a.validate()?,
            Action::Detach(d) => check_iface_names(&d.ifaces)?,
            Action::Status(s) => check_iface_names(&s.ifaces)?,
        }
        Ok(action)
    }
}

/// Interface names the kernel could hold, each named once.
fn check_iface_names<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
    let mut seen = HashSet::new();
    for name in names {
        if name.is_empty() || name.len() > 15 || name.contains('/') {
            return Err(format!("'{name}' is not a valid interface name"));
        }
        if !seen.insert(name.as_str()) {
            return Err(format!("interface {name} is named twice"));
        }
    }
    Ok(())
}

/// The options of running the offload.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Interface on which clients reach the TURN server (its listening address lives there).
    #[arg(value_name = "IFACE", required_unless_present = "detach")]
    pub iface: Option<String>,

    /// Interfaces that carry relay <-> peer traffic; none means IFACE serves both.
    #[arg(value_name = "RELAY_IFACE")]
    pub relay_ifaces: Vec<String>,

    /// TURN listening port (repeatable, up to 8) [default: every UDP port the server listens on
    /// for TURN: its listening port, and its alternate port when open].
    #[arg(long = "turn-port", value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub turn_ports: Vec<u16>,

    /// XDP attach mode: auto tries native (driver) mode and falls back to generic (skb).
    #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
    pub xdp_mode: XdpMode,

    /// Map a public relayed address to the local one it arrives at (as coturn's --external-ip
    /// PUBLIC/PRIVATE); repeatable [default: the server's mappings].
    #[arg(long = "external-ip", value_name = "PUBLIC=PRIVATE")]
    pub external_ips: Vec<ExternalIp>,

    /// The TURN server's pid: only its sockets' responses are trusted. Needed when the listening
    /// sockets of the TURN ports belong to several processes.
    #[arg(long, value_name = "PID", conflicts_with = "server_pidfile",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub server_pid: Option<u32>,

    /// A file holding the TURN server's pid (coturn's --pidfile), like --server-pid but read
    /// again whenever the server restarts.
    #[arg(long, value_name = "PATH")]
    pub server_pidfile: Option<PathBuf>,

    /// The TURN server's rules (see README "Servers") [default: from the process holding the
    /// TURN sockets: coturn by its name, pion/turn v2.1.0 by its Go build information, anything
    /// else rfc8656, the strict profile].
    #[arg(long, value_enum, value_name = "SERVER")]
    pub server: Option<ServerKind>,

    /// Pass every Nth datagram of a channel to the server instead of relaying it (0: never).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub spill_every: u32,

    /// Count packets, data bytes and the last packet's time of every channel binding, each
    /// way, for `status --bindings` (per-CPU; costs a map lookup per relayed datagram).
    #[arg(long)]
    pub binding_counters: bool,

    /// Channel lifetime in seconds [default: the server's channel-lifetime]. Never longer
    /// than the server's: a longer value yields to it (with a warning).
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub channel_lifetime: Option<u64>,

    /// Permission lifetime in seconds [default: the server's permission-lifetime]. Never
    /// longer than the server's: a longer value yields to it (with a warning).
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub permission_lifetime: Option<u64>,

    /// coturn's config file, when its command line names none (-c): read instead of looking
    /// in coturn's default places [default: what the server's -c names, else turnserver.conf
    /// where coturn finds it].
    #[arg(long, value_name = "PATH")]
    pub turnserver_conf: Option<PathBuf>,

    /// Enable IPv4 and IPv6 forwarding on the interfaces (needed by the fast path's FIB
    /// lookups), and accept_ra=2 where IPv6 forwarding goes on over accept_ra=1; the previous
    /// settings are restored on exit. See README "Forwarding and firewalling".
    #[arg(long)]
    pub enable_forwarding: bool,

    /// Allocations the fast path can hold; more stay with the server [default: 65536].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(crate::sizing::range(&crate::sizing::ALLOCATIONS)))]
    pub max_allocations: Option<u32>,

    /// Channel bindings the fast path can hold (sizes the client-side and the peer-side
    /// tables); more stay with the server [default: 131072].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(crate::sizing::range(&crate::sizing::CHANNELS)))]
    pub max_channels: Option<u32>,

    /// Permissions the fast path can hold, at least --max-channels [default: 131072, or
    /// --max-channels when larger].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(crate::sizing::range(&crate::sizing::PERMISSIONS)))]
    pub max_permissions: Option<u32>,

    /// TURN requests waiting for the server's answer that can be recorded; when full, new
    /// requests are not learned from [default: 65536].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(crate::sizing::range(&crate::sizing::PENDING)))]
    pub max_pending: Option<u32>,

    /// With -v, print the counters every SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stats_interval: u64,

    /// Serve Prometheus metrics on http://ADDR:PORT/metrics (e.g. 127.0.0.1:9642) [default: off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub prometheus: Option<std::net::SocketAddr>,

    /// Pin the maps, the XDP links and the programs' state under DIR (on a bpffs) and leave them,
    /// and the snooper, in place on exit: the next agent given the same DIR adopts them without a
    /// gap (README "Restarts and upgrades"). With `detach`, remove what is pinned there.
    #[arg(long, value_name = "DIR", global = true)]
    pub pin_path: Option<PathBuf>,

    /// The same as `turn-bpf detach IFACE...`.
    #[arg(long, value_name = "IFACE", num_args = 1.., conflicts_with_all = ["iface", "relay_ifaces"])]
    pub detach: Vec<String>,

    /// More output (-v: counters every --stats-interval, -vv: debug, -vvv: trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Less output (warnings and errors only).
    #[arg(short, long, conflicts_with = "verbose", global = true)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpMode {
    Auto,
    Native,
    Generic,
}

/// `PUBLIC=PRIVATE` (or coturn's `PUBLIC/PRIVATE`): both addresses of the same family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalIp {
    pub public: IpAddr,
    pub private: IpAddr,
}

impl FromStr for ExternalIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (public, private) = s
            .split_once('=')
            .or_else(|| s.split_once('/'))
            .ok_or_else(|| format!("'{s}' is not PUBLIC=PRIVATE"))?;
        let public: IpAddr = public
            .trim()
            .parse()
            .map_err(|_| format!("'{public}' is not an IP address"))?;
        let private: IpAddr = private
            .trim()
            .parse()
            .map_err(|_| format!("'{private}' is not an IP address"))?;
        if public.is_ipv4() != private.is_ipv4() {
            return Err(format!("'{s}': both addresses must be of the same family"));
        }
        Ok(ExternalIp { public, private })
    }
}

impl Args {
    /// Every interface the XDP program goes on: IFACE first, then the relay interfaces.
    pub fn xdp_ifaces(&self) -> Vec<String> {
        self.iface
            .iter()
            .chain(self.relay_ifaces.iter())
            .cloned()
            .collect()
    }

    /// How the TURN server is named: by --server-pid, by --server-pidfile, or not at all (the one
    /// process holding the TURN ports' listening sockets).
    pub fn server_name(&self) -> ServerName {
        match (&self.server_pid, &self.server_pidfile) {
            (Some(pid), _) => ServerName::Pid(*pid),
            (None, Some(path)) => ServerName::PidFile(path.clone()),
            (None, None) => ServerName::Owner,
        }
    }

    /// The state tables' sizes (see `sizing`).
    pub fn sizes(&self) -> Result<crate::sizing::Sizes, String> {
        crate::sizing::Sizes::of(
            self.max_allocations,
            self.max_channels,
            self.max_permissions,
            self.max_pending,
        )
    }

    /// Checks clap cannot express. Returns the one line that names the problem.
    pub fn validate(&self) -> Result<(), String> {
        check_iface_names(&self.xdp_ifaces())?;
        self.sizes()?;
        let ports: HashSet<u16> = self.turn_ports.iter().copied().collect();
        if ports.len() != self.turn_ports.len() {
            return Err("a --turn-port is named twice".into());
        }
        if ports.len() > MAX_TURN_PORTS {
            return Err(format!(
                "at most {MAX_TURN_PORTS} --turn-port values are supported"
            ));
        }
        let mut publics = HashSet::new();
        for e in &self.external_ips {
            if !publics.insert(e.public) {
                return Err(format!("--external-ip {} is mapped twice", e.public));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(args: &[&str]) -> Result<Action, String> {
        let argv = std::iter::once("turn-bpf")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        Cli::parse_from_args(argv)
            .map_err(|e| e.to_string())?
            .action()
    }

    fn parse(args: &[&str]) -> Result<Args, String> {
        match action(args)? {
            Action::Run(a) => Ok(*a),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let a = parse(&["eth0"]).unwrap();
        assert_eq!(a.iface.as_deref(), Some("eth0"));
        assert!(a.relay_ifaces.is_empty());
        assert!(a.turn_ports.is_empty(), "the server's ports");
        assert_eq!(a.xdp_mode, XdpMode::Auto);
        assert_eq!(a.spill_every, 0);
        assert!(!a.binding_counters);
        assert_eq!(a.channel_lifetime, None, "the server's");
        assert_eq!(a.permission_lifetime, None, "the server's");
        assert_eq!(a.turnserver_conf, None);
        assert!(!a.enable_forwarding);
        assert_eq!(a.xdp_ifaces(), vec!["eth0"]);
        assert_eq!(a.server_name(), ServerName::Owner);
        assert_eq!(a.sizes().unwrap(), crate::sizing::Sizes::default());
    }

    #[test]
    fn the_server_named_by_pid_or_pid_file() {
        let a = parse(&["eth0", "--server-pid", "4119"]).unwrap();
        assert_eq!(a.server_name(), ServerName::Pid(4119));
        let a = parse(&["eth0", "--server-pidfile", "/run/turnserver/turnserver.pid"]).unwrap();
        assert_eq!(
            a.server_name(),
            ServerName::PidFile("/run/turnserver/turnserver.pid".into())
        );
    }

    #[test]
    fn relay_interfaces_and_options() {
        let a = parse(&[
            "eth0",
            "eth1",
            "eth2",
            "--turn-port",
            "3478",
            "--turn-port",
            "3479",
            "--xdp-mode",
            "generic",
            "--external-ip",
            "203.0.113.5=10.0.0.5",
            "--external-ip",
            "2001:db8::1/fd00::1",
            "--spill-every",
            "100",
            "--channel-lifetime",
            "60",
            "--permission-lifetime",
            "30",
            "--turnserver-conf",
            "/etc/coturn/turnserver.conf",
            "--enable-forwarding",
            "-vv",
        ])
        .unwrap();
        assert_eq!(a.xdp_ifaces(), vec!["eth0", "eth1", "eth2"]);
        assert_eq!(a.turn_ports, vec![3478, 3479]);
        assert_eq!(a.xdp_mode, XdpMode::Generic);
        assert_eq!(a.external_ips.len(), 2);
        assert_eq!(
            a.external_ips[0].public,
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            a.external_ips[1].private,
            "fd00::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(a.spill_every, 100);
        assert_eq!(a.channel_lifetime, Some(60));
        assert_eq!(a.permission_lifetime, Some(30));
        assert_eq!(
            a.turnserver_conf.as_deref(),
            Some(std::path::Path::new("/etc/coturn/turnserver.conf"))
        );
        assert!(a.enable_forwarding);
        assert_eq!(a.verbose, 2);
    }

    #[test]
    fn rejects_bad_input_with_one_clear_reason() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "IFACE"),
            (&["eth0", "eth0"], "named twice"),
            (&["eth0", "--turn-port", "0"], "0"),
            (&["eth0", "--turn-port", "70000"], "70000"),
            (
                &["eth0", "--turn-port", "3478", "--turn-port", "3478"],
                "twice",
            ),
            (&["eth0", "--xdp-mode", "turbo"], "turbo"),
            (&["eth0", "--external-ip", "1.2.3.4"], "PUBLIC=PRIVATE"),
            (&["eth0", "--external-ip", "1.2.3.4=::1"], "same family"),
            (&["eth0", "--external-ip", "x=1.2.3.4"], "not an IP"),
            (&["eth0", "--channel-lifetime", "0"], "0"),
            (&["eth0", "--permission-lifetime", "86401"], "86401"),
            (&["eth0", "-v", "-q"], "cannot be used"),
            (&["this-name-is-far-too-long"], "not a valid interface"),
            (&["eth0", "--detach", "eth1"], "cannot be used"),
            (&["eth0", "--server-pid", "0"], "0"),
            (&["eth0", "--server-pid", "x"], "x"),
            (
                &["eth0", "--max-allocations", "0"],
                "0 is not in 1..=4194304",
            ),
            (
                &["eth0", "--max-channels", "8388609"],
                "8388609 is not in 1..=8388608",
            ),
            (
                &["eth0", "--max-pending", "15"],
                "15 is not in 16..=1048576",
            ),
            (
                &["eth0", "--max-channels", "9", "--max-permissions", "8"],
                "--max-permissions 8 is smaller than --max-channels 9",
            ),
            (
                &["eth0", "--server-pid", "1", "--server-pidfile", "/p"],
                "cannot be used",
            ),
        ];
        for (args, needle) in cases {
            let err = parse(args).expect_err(&format!("{args:?} must be refused"));
            assert!(err.contains(needle), "{args:?}: '{err}' lacks '{needle}'");
        }
        let many: Vec<String> = (1..=9)
            .flat_map(|p| ["--turn-port".into(), p.to_string()])
            .collect();
        let mut args = vec!["eth0"];
        args.extend(many.iter().map(String::as_str));
        assert!(parse(&args).unwrap_err().contains("at most 8"));
    }

    #[test]
    fn detach_as_a_subcommand_or_an_option() {
        for args in [
            &["detach", "eth0", "eth1"][..],
            &["--detach", "eth0", "eth1"],
        ] {
            match action(args).unwrap() {
                Action::Detach(d) => assert_eq!(d.ifaces, vec!["eth0", "eth1"], "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        let cases: &[(&[&str], &str)] = &[
            (&["detach"], "IFACE"),
            (&["detach", "eth0", "eth0"], "named twice"),
            (
                &["detach", "this-name-is-far-too-long"],
                "not a valid interface",
            ),
            (&["--detach", "eth0", "--detach", "eth0"], "named twice"),
            (
                &["detach", "eth0", "--turn-port", "3478"],
                "unexpected argument",
            ),
        ];
        for (args, needle) in cases {
            let err = action(args).expect_err(&format!("{args:?} must be refused"));
            assert!(err.contains(needle), "{args:?}: '{err}' lacks '{needle}'");
        }
        // -v and -q go after a subcommand, and before it
        for args in [
            &["detach", "eth0", "-v"][..],
            &["-v", "detach", "eth0"],
            &["-vv", "detach", "eth0"],
            &["--quiet", "detach", "eth0"],
        ] {
            match action(args) {
                Ok(Action::Detach(d)) => assert_eq!(d.ifaces, vec!["eth0"], "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        let both = action(&["-v", "-q", "detach", "eth0"]).unwrap_err();
        assert!(both.contains("cannot be used"), "{both}");
        // an interface named like a subcommand after another option is an interface
        match action(&["--xdp-mode", "generic", "detach"]) {
            Ok(Action::Run(a)) => assert_eq!(a.iface.as_deref(), Some("detach")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn status_and_prometheus() {
        match action(&["status"]).unwrap() {
            Action::Status(s) => {
                assert!(s.ifaces.is_empty(), "every interface");
                assert!(!s.bindings);
            }
            other => panic!("{other:?}"),
        }
        match action(&["status", "eth0", "eth1", "--bindings"]).unwrap() {
            Action::Status(s) => {
                assert_eq!(s.ifaces, vec!["eth0", "eth1"]);
                assert!(s.bindings);
            }
            other => panic!("{other:?}"),
        }
        assert!(action(&["status", "eth0", "eth0"])
            .unwrap_err()
            .contains("named twice"));
        assert_eq!(parse(&["eth0"]).unwrap().prometheus, None, "off by default");
        let a = parse(&["eth0", "--prometheus", "127.0.0.1:9642"]).unwrap();
        assert_eq!(a.prometheus, Some("127.0.0.1:9642".parse().unwrap()));
        let a = parse(&["eth0", "--prometheus", "[::1]:9642"]).unwrap();
        assert_eq!(a.prometheus, Some("[::1]:9642".parse().unwrap()));
        for bad in ["9642", "localhost:9642", "127.0.0.1"] {
            assert!(
                parse(&["eth0", "--prometheus", bad]).is_err(),
                "--prometheus {bad} must be refused"
            );
        }
    }

    #[test]
    fn pin_path_is_global() {
        for args in [
            &["turn-bpf", "--pin-path", "/run/p", "eth0"][..],
            &["turn-bpf", "detach", "--pin-path", "/run/p", "eth0"],
            &["turn-bpf", "--pin-path", "/run/p", "detach", "eth0"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(
                cli.run.pin_path.as_deref(),
                Some(std::path::Path::new("/run/p")),
                "{args:?}"
            );
        }
        let cli = Cli::try_parse_from(["turn-bpf", "eth0"]).unwrap();
        assert_eq!(cli.run.pin_path, None);
    }

    /// The table sizes' defaults that `--help` and the README's option table print are the ones
    /// the agent uses (`sizing::Sizes::default()`, from the C headers): a default changed in
    /// one place only is caught here.
    #[test]
    fn table_size_defaults_in_help_and_readme_are_the_real_ones() {
        use clap::CommandFactory;
        let d = crate::sizing::Sizes::default();
        let readme = include_str!("../README.md");
        let cmd = Cli::command();
        for (long, value) in [
            ("max-allocations", d.allocations),
            ("max-channels", d.channels),
            ("max-permissions", d.permissions),
            ("max-pending", d.pending),
        ] {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .unwrap_or_else(|| panic!("--{long} is an option"));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(
                help.contains(&format!("[default: {value}]"))
                    || help.contains(&format!("[default: {value},")),
                "--{long}: the help says {help:?}, the default is {value}"
            );
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long} ")))
                .unwrap_or_else(|| panic!("--{long} has a README row"));
            let cell = row.split(" | ").nth(1).unwrap_or("");
            let digits: String = cell.chars().take_while(|c| c.is_ascii_digit()).collect();
            assert!(
                digits == value.to_string(),
                "--{long}: the README's table says {cell:?}, the default is {value}"
            );
        }
    }

    /// `--help` and the README's option table name the same options and subcommands: the
    /// README is the manual page.
    #[test]
    fn every_option_is_in_the_readme_table_and_every_row_is_an_option() {
        use clap::CommandFactory;
        let readme = include_str!("../README.md");
        let rows: Vec<&str> = readme
            .lines()
            .filter(|l| {
                l.starts_with("| `--")
                    || l.starts_with("| `-")
                    || l.starts_with("| `status")
                    || l.starts_with("| `detach")
            })
            .collect();
        let first_cell = |row: &str| -> String {
            row.trim_start_matches("| ")
                .split(" | ")
                .next()
                .unwrap_or("")
                .to_string()
        };
        let cells: Vec<String> = rows.iter().map(|r| first_cell(r)).collect();
        let mut cmd = Cli::command();
        let mut seen = Vec::new();
        let mut check = |long: &str| {
            let want = format!("--{long}");
            let names = |r: &str| {
                r.match_indices(&want).any(|(i, _)| {
                    let after = r[i + want.len()..].chars().next();
                    let before = r[..i].chars().next_back();
                    matches!(before, Some('`' | '[' | ' '))
                        && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
                })
            };
            assert!(
                rows.iter().any(|r| names(r)),
                "--{long} is an option but not in the README's option table"
            );
            seen.push(format!("--{long}"));
        };
        for a in cmd.get_arguments() {
            if let Some(long) = a.get_long() {
                if long != "help" && long != "version" {
                    check(long);
                }
            }
        }
        for sub in cmd.get_subcommands_mut() {
            let name = sub.get_name().to_string();
            assert!(
                cells.iter().any(|c| c.starts_with(&format!("`{name}"))),
                "subcommand {name} is not in the README's option table"
            );
            for a in sub.get_arguments() {
                if let Some(long) = a.get_long() {
                    if long != "help" && long != "version" {
                        check(long);
                    }
                }
            }
        }
        // and every --option the table names exists
        for c in &cells {
            for word in c.split(['`', ' ', '[', ']']) {
                if let Some(long) = word.strip_prefix("--") {
                    assert!(
                        seen.iter().any(|s| s == &format!("--{long}")),
                        "the README's option table names --{long}, which turn-bpf does not have"
                    );
                }
            }
        }
    }
}
