use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::cli::Cli;

use super::*;
use crate::server_conf::Source;

fn args(words: &[&str]) -> Args {
    let a = Cli::try_parse_from(std::iter::once("turn-bpf").chain(words.iter().copied()))
        .unwrap()
        .run;
    a.validate().unwrap();
    a
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// coturn (pid 42) started with `words`, with `file` as its config file, holding `ports`.
fn server(words: &[&str], file: Option<&str>, ports: &[u16]) -> ServerView {
    let argv: Vec<String> = std::iter::once("turnserver")
        .chain(words.iter().copied())
        .map(String::from)
        .collect();
    let file = file.map(|t| (PathBuf::from("/etc/turnserver.conf"), t.as_bytes()));
    ServerView {
        pid: Some(42),
        process: Some(ServerProcess {
            comm: "turnserver".into(),
            coturn: Some("4.6.1".into()),
            ..ServerProcess::default()
        }),
        conf: Some(ServerConf::from_parts(&argv, file, &|_| None)),
        ports: ports.to_vec(),
        listened: BTreeSet::new(),
        local_addrs: HashSet::from([ip("127.0.0.1"), ip("192.0.2.1"), ip("198.51.100.1")]),
    }
}

#[test]
fn without_options_everything_comes_from_the_server() {
    let s = server(
        &["--channel-lifetime=6", "--permission-lifetime=4"],
        Some("denied-peer-ip=198.51.100.2\n"),
        &[3478, 3479],
    );
    let (e, w) = merge(&args(&["eth0"]), &s).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(e.turn_ports, [3478, 3479]);
    assert_eq!((e.channel_lifetime, e.permission_lifetime), (6, 4));
    assert!(!e.peers.peer_allowed(ip("198.51.100.2")));
    assert!(e.external_ips.is_empty());
    assert_eq!(
        e.summary,
        "server profile: coturn 4.6.1 (process 'turnserver'); settings taken from the TURN \
         server (pid 42, config file /etc/turnserver.conf): UDP \
         port(s) [3478, 3479]; channel-lifetime 6 s (server: 6 s, coturn's command line); \
         permission-lifetime 4 s (server: 4 s, coturn's command line); max-allocate-lifetime \
         3600 s (coturn's default)"
    );
}

#[test]
fn a_longer_explicit_lifetime_yields_with_one_warning() {
    let s = server(
        &["--channel-lifetime=6", "--permission-lifetime=6"],
        None,
        &[3478],
    );
    let (e, w) = merge(&args(&["eth0", "--channel-lifetime", "60"]), &s).unwrap();
    assert_eq!(e.channel_lifetime, 6, "never longer than the server's");
    assert_eq!(e.permission_lifetime, 6);
    assert_eq!(
        w,
        [
            "--channel-lifetime 60 disagrees with the server's channel-lifetime of 6 s (coturn's \
          command line): using 6 s, so the fast path never relays longer than the server"
        ]
    );
    // shorter: used as given, also said once; equal: nothing said
    let (e, w) = merge(
        &args(&[
            "eth0",
            "--channel-lifetime",
            "3",
            "--permission-lifetime",
            "6",
        ]),
        &s,
    )
    .unwrap();
    assert_eq!((e.channel_lifetime, e.permission_lifetime), (3, 6));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("using 3 s as given"), "{w:?}");
}

#[test]
fn the_server_default_is_what_a_spaced_lifetime_gets() {
    // coturn started with `--channel-lifetime 6`: it runs with 600, and says so
    let s = server(&["--channel-lifetime", "6"], None, &[3478]);
    let (e, w) = merge(&args(&["eth0"]), &s).unwrap();
    assert_eq!(e.channel_lifetime, 600);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("coturn ignores \"6\" after --channel-lifetime"),
        "{w:?}"
    );
    // the agent told 60 takes 60 (shorter than coturn's real 600): one more warning
    let (e, w) = merge(&args(&["eth0", "--channel-lifetime", "60"]), &s).unwrap();
    assert_eq!(e.channel_lifetime, 60);
    assert_eq!(w.len(), 2, "{w:?}");
}

#[test]
fn a_lifetime_coturn_never_expires() {
    let s = server(&["--channel-lifetime=0"], None, &[3478]);
    let (e, w) = merge(&args(&["eth0"]), &s).unwrap();
    assert_eq!(e.channel_lifetime, 600, "coturn's default, a finite limit");
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("never expires them"), "{w:?}");
    let (e, w) = merge(&args(&["eth0", "--channel-lifetime", "30"]), &s).unwrap();
    assert_eq!(e.channel_lifetime, 30);
    assert_eq!(w.len(), 1);
}

#[test]
fn unknown_server_settings_fall_back_to_options_and_the_strict_profile() {
    let s = ServerView::default();
    let (e, w) = merge(&args(&["eth0"]), &s).unwrap();
    assert_eq!(e.profile.kind, profile::ServerKind::Rfc8656);
    assert!(
        w.is_empty(),
        "the server was not found: said once already: {w:?}"
    );
    assert!(e.summary.contains("RFC 8656 (strict)"), "{}", e.summary);
    assert_eq!(e.turn_ports, [3478]);
    assert_eq!((e.channel_lifetime, e.permission_lifetime), (600, 300));
    let (e, _) = merge(
        &args(&[
            "eth0",
            "--turn-port",
            "5000",
            "--channel-lifetime",
            "60",
            "--external-ip",
            "203.0.113.1=10.0.0.1",
        ]),
        &s,
    )
    .unwrap();
    assert_eq!(e.turn_ports, [5000]);
    assert_eq!(e.channel_lifetime, 60);
    assert_eq!(e.external_ips.len(), 1);
    assert!(e.summary.contains("could not be read"), "{}", e.summary);
}

#[test]
fn explicit_ports_are_used_as_given_and_strangers_are_warned_about() {
    let mut s = server(&[], None, &[3478, 3479]);
    s.listened = BTreeSet::from([3478, 5000]);
    let (e, w) = merge(&args(&["eth0", "--turn-port", "3478"]), &s).unwrap();
    assert_eq!(e.turn_ports, [3478]);
    assert!(w.is_empty(), "{w:?}");
    let (e, w) = merge(
        &args(&[
            "eth0",
            "--turn-port",
            "3478",
            "--turn-port",
            "5000",
            "--turn-port",
            "6000",
        ]),
        &s,
    )
    .unwrap();
    assert_eq!(e.turn_ports, [3478, 5000, 6000]);
    assert_eq!(
        w,
        [
            "--turn-port 5000: the TURN server (pid 42) does not listen on UDP port 5000 (it \
          listens on [3478, 3479]); another socket does, and it is offloaded as if it were the \
          server's"
        ],
        "6000 (nobody listens) is for the server watch to refuse"
    );
}

#[test]
fn bandwidth_limits_are_refused_with_one_line() {
    for (words, file, want) in [
        (
            &["--max-bps=100000"][..],
            None,
            "max-bps=100000 (coturn's command line)",
        ),
        (
            &["-s", "5000"][..],
            None,
            "max-bps=5000 (coturn's command line)",
        ),
        (
            &[][..],
            Some("max-bps 2000\n"),
            "max-bps=2000 (coturn's config file)",
        ),
        (
            &["-B", "90000", "-s", "1000"][..],
            None,
            "max-bps=1000 (coturn's command line), bps-capacity=90000 (coturn's command line)",
        ),
    ] {
        let s = server(words, file, &[3478]);
        let err = merge(&args(&["eth0"]), &s).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "the TURN server limits bandwidth ({want}): coturn's bandwidth limits cannot be \
                 enforced in the fast path, so turn-bpf declines to bypass them and offloads \
                 nothing"
            ),
            "{words:?} {file:?}"
        );
        assert!(!err.contains('\n'));
    }
    // 0 is no limit, and the command line's 0 undoes the file's limit
    let s = server(&["--max-bps=0"], Some("max-bps=2000\n"), &[3478]);
    assert!(merge(&args(&["eth0"]), &s).is_ok());
}

#[test]
fn external_ips_from_the_server_and_the_options() {
    // PUBLIC/PRIVATE pairs, and a plain PUBLIC mapped to the one relay-ip of its family
    let s = server(
        &[
            "-X",
            "203.0.113.1/198.51.100.1",
            "-X",
            "203.0.113.9",
            "--relay-ip=198.51.100.7",
            "--relay-ip=2001:db8::7",
        ],
        None,
        &[3478],
    );
    let (e, w) = merge(&args(&["eth0"]), &s).unwrap();
    assert!(w.is_empty(), "{w:?}");
    let pairs: Vec<(IpAddr, IpAddr)> = e
        .external_ips
        .iter()
        .map(|x| (x.public, x.private))
        .collect();
    assert_eq!(
        pairs,
        [
            (ip("203.0.113.1"), ip("198.51.100.1")),
            (ip("203.0.113.9"), ip("198.51.100.7")),
        ]
    );
    // explicit: a different private for a public the server maps yields to the server's;
    // one the server does not map is kept; one of the server's not named is added
    let (e, w) = merge(
        &args(&[
            "eth0",
            "--external-ip",
            "203.0.113.1=198.51.100.99",
            "--external-ip",
            "203.0.113.50=198.51.100.50",
        ]),
        &s,
    )
    .unwrap();
    let pairs: Vec<(IpAddr, IpAddr)> = e
        .external_ips
        .iter()
        .map(|x| (x.public, x.private))
        .collect();
    assert_eq!(
        pairs,
        [
            (ip("203.0.113.1"), ip("198.51.100.1")),
            (ip("203.0.113.50"), ip("198.51.100.50")),
            (ip("203.0.113.9"), ip("198.51.100.7")),
        ]
    );
    assert_eq!(w.len(), 3, "{w:?}");
    // a plain external-ip with discovered relays: the one local non-loopback address per
    // family; with two, it cannot be mirrored
    let s = server(&["-X", "203.0.113.9"], None, &[3478]);
    let (e, w) = merge(&args(&["eth0"]), &s).unwrap();
    assert!(e.external_ips.is_empty());
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("maps to 2 relay addresses"), "{w:?}");
    let mut s = server(&["-X", "203.0.113.9"], None, &[3478]);
    s.local_addrs = HashSet::from([ip("127.0.0.1"), ip("10.0.0.4"), ip("169.254.1.1")]);
    let (e, _) = merge(&args(&["eth0"]), &s).unwrap();
    assert_eq!(e.external_ips[0].private, ip("10.0.0.4"));
}

#[test]
fn server_ports_are_the_listening_and_alternate_ports() {
    let c = ServerConf::from_parts(&[], None, &|_| None);
    assert_eq!(server_ports(&c), [3478, 3479]);
    let c = ServerConf::from_parts(
        &[
            "t".into(),
            "-p".into(),
            "5000".into(),
            "--alt-listening-port=6000".into(),
        ],
        None,
        &|_| None,
    );
    assert_eq!(server_ports(&c), [5000, 6000]);
    assert_eq!(c.listening_port.from, Source::CommandLine);
    let c = ServerConf::from_parts(&["t".into(), "-p=1".into()], None, &|_| None);
    assert_eq!(server_ports(&c), [1], "port 0 is no port");
}

/// A server that is not coturn (pid 42, holding 3478): nothing to read.
fn other_server(comm: &str, pion: Option<(u32, &str)>) -> ServerView {
    ServerView {
        pid: Some(42),
        process: Some(ServerProcess {
            comm: comm.into(),
            pion: pion.map(|(m, v)| (m, v.to_string())),
            go: pion.is_some(),
            coturn: None,
        }),
        conf: None,
        ports: vec![],
        listened: BTreeSet::from([3478]),
        local_addrs: HashSet::from([ip("127.0.0.1"), ip("192.0.2.1")]),
    }
}

#[test]
fn a_server_that_is_not_coturn_gets_its_profile_and_says_what_it_assumes() {
    let pion = other_server("turn-server", Some((2, "v2.1.0")));
    let (e, w) = merge(&args(&["eth0"]), &pion).unwrap();
    assert_eq!(e.profile.kind, profile::ServerKind::Pion);
    assert_eq!((e.channel_lifetime, e.permission_lifetime), (600, 300));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("pion/turn v2.1.0")
            && w[0].contains("channel-lifetime 600 s (the profile's)"),
        "{w:?}"
    );
    // explicit lifetimes are the only source: used as given
    let (e, w) = merge(&args(&["eth0", "--channel-lifetime", "20"]), &pion).unwrap();
    assert_eq!((e.channel_lifetime, e.permission_lifetime), (20, 300));
    assert!(w[0].contains("channel-lifetime 20 s (given)"), "{w:?}");

    // a newer pion, or something else: the strict profile
    for s in [
        other_server("livekit-server", Some((4, "v4.0.0"))),
        other_server("eturnal", None),
    ] {
        let (e, _) = merge(&args(&["eth0"]), &s).unwrap();
        assert_eq!(e.profile.kind, profile::ServerKind::Rfc8656, "{s:?}");
        assert!(e.profile.channel_needs_permission);
    }
    // --server names it
    let (e, _) = merge(
        &args(&["eth0", "--server", "pion"]),
        &other_server("x", None),
    )
    .unwrap();
    assert_eq!(e.profile.kind, profile::ServerKind::Pion);
}
