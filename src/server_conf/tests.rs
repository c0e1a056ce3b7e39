use std::net::IpAddr;
use std::path::PathBuf;

use super::*;

fn no_dns(_: &str) -> Option<IpAddr> {
    None
}

fn argv(words: &[&str]) -> Vec<String> {
    std::iter::once("/usr/bin/turnserver")
        .chain(words.iter().copied())
        .map(String::from)
        .collect()
}

fn conf(words: &[&str], file: Option<&str>) -> ServerConf {
    let file = file.map(|t| (PathBuf::from("/etc/turnserver.conf"), t.as_bytes()));
    ServerConf::from_parts(&argv(words), file, &no_dns)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn defaults_are_coturn_4_6_1s() {
    let c = conf(&[], None);
    assert_eq!(c.listening_port, Setting::default(3478));
    assert_eq!(c.alt_port(), 3479);
    assert_eq!(c.channel_lifetime, Setting::default(600));
    assert_eq!(c.permission_lifetime, Setting::default(300));
    assert_eq!(c.max_allocate_lifetime, Setting::default(3600));
    assert_eq!((c.max_bps.value, c.bps_capacity.value), (0, 0));
    assert_eq!(c.peers, PeerPolicy::default());
    assert!(!c.peers.no_multicast_peers && !c.peers.allow_loopback_peers);
    assert_eq!(c.external_ip, None);
    assert!(c.notes.is_empty());
    assert_eq!(
        c.expects_alt_port(),
        None,
        "discovered addresses: only the sockets tell"
    );
}

#[test]
fn a_spaced_lifetime_is_ignored_and_only_the_equals_form_counts() {
    let spaced = conf(
        &["--channel-lifetime", "5", "--permission-lifetime", "7"],
        None,
    );
    assert_eq!(
        spaced.channel_lifetime,
        Setting {
            value: 600,
            from: Source::CommandLine
        },
        "coturn's default, set again by the option without a value"
    );
    assert_eq!(spaced.permission_lifetime.value, 300);
    assert_eq!(
        spaced.notes,
        [
            "coturn ignores \"5\" after --channel-lifetime on its command line: it takes that \
             option's value only as --channel-lifetime=5",
            "coturn ignores \"7\" after --permission-lifetime on its command line: it takes that \
             option's value only as --permission-lifetime=7",
        ]
    );
    let equals = conf(
        &[
            "--channel-lifetime=5",
            "--permission-lifetime=7",
            "--max-allocate-lifetime=60",
        ],
        None,
    );
    assert_eq!(equals.channel_lifetime.value, 5);
    assert_eq!(equals.permission_lifetime.value, 7);
    assert_eq!(equals.max_allocate_lifetime.value, 60);
    assert!(equals.notes.is_empty());
    // an empty value is the default too; 0 is kept (coturn then never expires them)
    let c = conf(&["--channel-lifetime=", "--permission-lifetime=0"], None);
    assert_eq!(c.channel_lifetime.value, 600);
    assert_eq!(c.permission_lifetime.value, 0);
}

#[test]
fn required_values_take_both_spellings_and_short_options() {
    let c = conf(
        &[
            "-p",
            "3500",
            "--alt-listening-port",
            "3600",
            "-s",
            "1000",
            "-B5000",
            "-X",
            "203.0.113.9/198.51.100.1",
            "-L",
            "192.0.2.1",
            "--listening-ip=2001:db8:1::1",
        ],
        None,
    );
    assert_eq!(c.listening_port.value, 3500);
    assert_eq!(c.alt_port(), 3600);
    assert_eq!(c.max_bps.value, 1000);
    assert_eq!(c.bps_capacity.value, 5000);
    assert_eq!(c.external_pairs, [(ip("203.0.113.9"), ip("198.51.100.1"))]);
    assert_eq!(c.listening_ips, ["192.0.2.1", "2001:db8:1::1"]);
    assert_eq!(c.expects_alt_port(), Some(true), "two listening addresses");
    assert!(
        c.peers.peer_allowed(ip("198.51.100.1")),
        "external-ip's private address is allowed"
    );
    assert_eq!(c.peers.allowed.len(), 1);
    // -p=VALUE keeps the '=' in the value: atoi gives 0
    assert_eq!(conf(&["-p=3500"], None).listening_port.value, 0);
}

#[test]
fn the_config_file_as_coturn_reads_it() {
    let file = "\
# lab\n\
listening-port 3500\n\
channel-lifetime=60\n\
permission-lifetime = 30\n\
max-allocate-lifetime\n\
no-multicast-peers\n\
allow-loopback-peers=off\n\
allowed-peer-ip=10.0.0.5\n\
denied-peer-ip=10.0.0.0-10.0.0.255\n\
denied-peer-ip=172.16.0.0/12\n\
external-ip=203.0.113.5\n\
external-ip=203.0.113.6\n\
no-rfc5780\n\
--max-bps=5\n";
    let c = conf(&[], Some(file));
    assert_eq!(c.listening_port.value, 3500);
    assert_eq!(c.listening_port.from, Source::ConfFile);
    assert_eq!(c.channel_lifetime.value, 60);
    assert_eq!(c.permission_lifetime.value, 30);
    assert_eq!(
        c.max_allocate_lifetime,
        Setting {
            value: 3600,
            from: Source::ConfFile
        }
    );
    assert!(c.peers.no_multicast_peers && !c.peers.allow_loopback_peers);
    assert_eq!(c.peers.allowed[0].text, "10.0.0.5");
    assert_eq!(c.peers.denied[0].text, "10.0.0.0-10.0.0.255");
    assert_eq!(
        c.peers.dropped,
        ["172.16.0.0/12"],
        "CIDR is dropped as coturn drops it"
    );
    assert!(c.peers.peer_allowed(ip("10.0.0.5")));
    assert!(!c.peers.peer_allowed(ip("10.0.0.6")));
    assert!(c.peers.peer_allowed(ip("172.16.0.1")));
    assert_eq!(
        c.external_ip,
        Some(ip("203.0.113.5")),
        "the first plain one"
    );
    assert!(c.no_rfc5780);
    assert_eq!(c.expects_alt_port(), Some(false));
    assert_eq!(c.max_bps.value, 0, "a line with dashes is not an option");
    assert_eq!(
        c.notes,
        [
            "external-ip 203.0.113.6: a second one, which coturn refuses",
            "/etc/turnserver.conf: coturn ignores the line \"--max-bps=5\" (Bad configuration \
             format)",
        ]
    );
    assert_eq!(
        c.conf_file.as_deref(),
        Some(std::path::Path::new("/etc/turnserver.conf"))
    );
}

#[test]
fn the_command_line_wins_over_the_file_and_lists_add_up() {
    let file =
        "channel-lifetime=60\nmax-bps=100\ndenied-peer-ip=10.0.0.1\nexternal-ip=198.51.100.7\n";
    let c = conf(
        &[
            "--channel-lifetime=20",
            "--max-bps=0",
            "--denied-peer-ip=10.0.0.2",
            "-X",
            "198.51.100.8",
        ],
        Some(file),
    );
    assert_eq!(
        c.channel_lifetime,
        Setting {
            value: 20,
            from: Source::CommandLine
        }
    );
    assert_eq!(c.max_bps.value, 0, "the command line's 0 wins");
    let denied: Vec<&str> = c.peers.denied.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(denied, ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(
        c.external_ip,
        Some(ip("198.51.100.7")),
        "a plain external-ip is taken once: the file's"
    );
    // a spaced lifetime on the command line undoes the file's value
    let c = conf(&["--channel-lifetime", "20"], Some(file));
    assert_eq!(c.channel_lifetime.value, 600);
    // the file alone
    let c = conf(&[], Some(file));
    assert_eq!(c.channel_lifetime.value, 60);
    assert_eq!(c.max_bps.value, 100);
}

#[test]
fn stray_words_and_errors_are_noted() {
    let c = conf(&["extra", "--nosuch", "--max-bps"], None);
    assert_eq!(
        c.notes,
        [
            "coturn ignores \"extra\" on its command line (Unknown argument)",
            "coturn's command line: unrecognized option '--nosuch' (coturn would exit)",
            "coturn's command line: option '--max-bps' requires an argument (coturn would exit)",
        ]
    );
}

#[test]
fn cmdline_words() {
    assert_eq!(
        split_cmdline(b"turnserver\0-c\0/etc/x.conf\0--channel-lifetime\x005\0"),
        ["turnserver", "-c", "/etc/x.conf", "--channel-lifetime", "5"]
    );
    assert_eq!(split_cmdline(b"a\0\0b\0"), ["a", "", "b"]);
    assert!(split_cmdline(b"").is_empty());
    let inode = |l: &str| crate::owners::socket_inode(std::ffi::OsStr::new(l));
    assert_eq!(inode("socket:[197917]"), Some(197917));
    assert_eq!(inode("pipe:[1]"), None);
}

/// A scratch directory standing in for a process's root and working directory.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("turn-bpf-conf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_config_file_is_found_where_coturn_looks() {
    let d = scratch("find");
    let view = ProcessView {
        root: d.join("root"),
        cwd: d.join("root/srv/run"),
    };
    std::fs::create_dir_all(&view.cwd).unwrap();
    std::fs::create_dir_all(d.join("root/etc/coturn")).unwrap();
    std::fs::create_dir_all(d.join("root/srv/etc")).unwrap();
    // nothing yet
    assert_eq!(view.find_config_file("turnserver.conf"), None);
    // /etc/coturn/ is searched (after /etc/ and /etc/turnserver/)
    std::fs::write(d.join("root/etc/coturn/turnserver.conf"), "").unwrap();
    assert_eq!(
        view.find_config_file("turnserver.conf"),
        Some((
            PathBuf::from("/etc/coturn/turnserver.conf"),
            d.join("root/etc/coturn/turnserver.conf")
        ))
    );
    // ../etc/ relative to the working directory comes before /etc/
    std::fs::write(d.join("root/srv/etc/turnserver.conf"), "").unwrap();
    assert_eq!(
        view.find_config_file("turnserver.conf").unwrap().0,
        PathBuf::from("../etc/turnserver.conf")
    );
    // ./ first of all
    std::fs::write(view.cwd.join("turnserver.conf"), "").unwrap();
    assert_eq!(
        view.find_config_file("turnserver.conf").unwrap().0,
        PathBuf::from("./turnserver.conf")
    );
    // an absolute name is looked up under the process's root only
    assert_eq!(view.find_config_file("/turnserver.conf"), None);
    assert_eq!(
        view.find_config_file("/etc/coturn/turnserver.conf")
            .unwrap()
            .1,
        d.join("root/etc/coturn/turnserver.conf")
    );
    // etc/NAME, when not found as such, is tried as NAME
    std::fs::write(d.join("root/etc/coturn/only.conf"), "").unwrap();
    assert_eq!(
        view.find_config_file("etc/only.conf").unwrap().0,
        PathBuf::from("/etc/coturn/only.conf")
    );
    // '~' is not expanded: a relative name in the working directory
    assert_eq!(view.find_config_file("~/x.conf"), None);
    std::fs::create_dir_all(view.cwd.join("~")).unwrap();
    std::fs::write(view.cwd.join("~/x.conf"), "").unwrap();
    assert_eq!(
        view.find_config_file("~/x.conf").unwrap().1,
        view.cwd.join("~/x.conf")
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn which_file_the_server_read() {
    let d = scratch("choice");
    let view = ProcessView {
        root: d.clone(),
        cwd: d.clone(),
    };
    std::fs::write(d.join("named.conf"), "").unwrap();
    std::fs::write(d.join("turnserver.conf"), "").unwrap();
    let agent = d.join("agent.conf");
    let mut notes = Vec::new();
    let named = ConfChoice::Named("named.conf".into());
    // -c names it
    let f = conf_file_of(&named, &view, None, &mut notes).unwrap();
    assert_eq!(f.0, PathBuf::from("./named.conf"));
    assert!(notes.is_empty());
    // --turnserver-conf naming another file is not read, and that is said
    let f = conf_file_of(&named, &view, Some(&agent), &mut notes).unwrap();
    assert_eq!(f.0, PathBuf::from("./named.conf"));
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("is not read: coturn reads named.conf"));
    // ... but naming the same file is fine
    notes.clear();
    conf_file_of(&named, &view, Some(&d.join("named.conf")), &mut notes).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    // no -c: --turnserver-conf, else the default file
    let f = conf_file_of(&ConfChoice::Default, &view, Some(&agent), &mut notes).unwrap();
    assert_eq!(f.1, agent);
    let f = conf_file_of(&ConfChoice::Default, &view, None, &mut notes).unwrap();
    assert_eq!(f.0, PathBuf::from("./turnserver.conf"));
    // -n: none; a -c that is not there: none, said
    assert_eq!(
        conf_file_of(&ConfChoice::NoFile, &view, None, &mut notes),
        None
    );
    let missing = ConfChoice::Named("missing.conf".into());
    assert_eq!(conf_file_of(&missing, &view, None, &mut notes), None);
    assert!(notes
        .last()
        .unwrap()
        .contains("missing.conf (its -c) is not where coturn looks"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn this_process_is_found_by_its_socket() {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = std::process::id();
    let proc_fs = crate::owners::ProcFs::default();
    let own = proc_fs.sockets_of(me).unwrap();
    assert!(!own.is_empty(), "the test holds a socket");
    let pids = socket_owner_pids(&own);
    assert!(pids.contains(&me), "{pids:?}");
    assert_eq!(
        socket_owner_pids(&BTreeSet::from([u64::MAX])),
        Vec::<u32>::new()
    );
    assert!(process_start(me).is_some());
    assert_ne!(proc_fs.comm(me), "?");
    drop(sock);
}
